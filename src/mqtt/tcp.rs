//! MQTT over TCP and over TLS: bytes ↔ packets ↔ [`Broker`].
//!
//! One task per connection. It writes its outbox whenever there is something in it, and reads
//! only when the outbox is empty, so what a client's own packets make the broker answer (acks,
//! SUBACK, PINGRESP) is bounded by one read. An idle plain-TCP connection holds no buffer: it
//! waits for readiness, then reads into a per-thread buffer and keeps only an incomplete frame.
//! TLS connections keep a read buffer (rustls holds its own buffers anyway).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::codec::{self, Decoder, Packet};
use super::driver::{Attachment, Broker};
use super::CONTROL_CHANNEL;

/// Size of the per-thread read buffer for plain TCP and of a TLS connection's read buffer.
const READ_CHUNK: usize = 16 * 1024;
/// Most packets encoded into one write.
const WRITE_BATCH: usize = 512;

/// Accept MQTT connections on `listener` (plain TCP, or TLS when `tls` is given) until
/// `shutdown` is cancelled; one task per connection, spawned on `tracker`. TCP_NODELAY is set
/// on every socket. On shutdown the broker closes every connection ([`Broker::shutdown`]): each
/// connection task writes what is queued, closes its socket and ends. (The connection tasks do
/// not watch `shutdown` themselves: one waiter less per idle connection.)
pub async fn serve_tcp(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    broker: Broker,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let proto = if tls.is_some() { "mqtt+tls" } else { "mqtt+tcp" };
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => {
                broker.shutdown();
                break;
            }
            r = listener.accept() => r,
        };
        let (sock, peer) = match accepted {
            Ok(v) => v,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("{proto}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Nagle would hold small MQTT packets behind the peer's delayed ACK.
        let _ = sock.set_nodelay(true);
        let att = match broker.attach(Some(peer)) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(%peer, "{proto}: {e}; closing");
                continue;
            }
        };
        match &tls {
            None => {
                tracker.spawn(conn_loop(Wire::Plain(sock), att));
            }
            Some(acceptor) => {
                // Boxed so the plain-TCP task's future does not carry the TLS handshake's state.
                tracker.spawn(Box::pin(tls_conn(sock, peer, acceptor.clone(), att, shutdown.clone())));
            }
        }
    }
}

async fn tls_conn(
    sock: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    att: Attachment,
    shutdown: CancellationToken,
) {
    let limit = att.broker().config().connect_timeout;
    let handshake = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = tokio::time::timeout(limit, acceptor.accept(sock)) => r,
    };
    let stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            // Refusals for a client certificate are the operator's business (INFO); other
            // handshake failures (scanners, wrong CA on the client's side) stay at DEBUG.
            match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                Some(rustls::Error::NoCertificatesPresented) => {
                    tracing::info!(%peer, "mqtt+tls: no client certificate; refused (client certificate required)")
                }
                Some(rustls::Error::InvalidCertificate(why)) => {
                    tracing::info!(%peer, "mqtt+tls: client certificate rejected: {why:?}")
                }
                _ => tracing::debug!(%peer, "mqtt+tls: handshake failed: {e}"),
            }
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "mqtt+tls: handshake not finished within {limit:?}");
            return;
        }
    };
    // The verified client certificate, if any (a required one was checked by the handshake,
    // tls::ClientAuth::Required), reaches the core before any packet does.
    if let Some(identity) = super::cert_identity(stream.get_ref().1.peer_certificates(), peer, "mqtt+tls") {
        att.set_cert_identity(Some(&identity));
    }
    let wire = Wire::Tls(Box::new(BufWire::new(stream)));
    conn_loop(wire, att).await
}

/// MQTT on an in-memory byte stream: the pipe behind a WebSocket (`mqtt::ws`). The same
/// connection handler as TCP and TLS; `att` is already attached to the broker.
pub(crate) fn serve_stream(
    io: tokio::io::DuplexStream,
    att: Attachment,
) -> impl std::future::Future<Output = ()> + Send {
    conn_loop(Wire::Pipe(Box::new(BufWire::new(io))), att)
}

/// A stream read through a buffer of its own (TLS, the WebSocket pipe).
struct BufWire<S> {
    stream: S,
    buf: Vec<u8>,
    /// Bytes read into `buf` by `poll_read_ready` and not yet taken.
    got: Option<usize>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> BufWire<S> {
    fn new(stream: S) -> Self {
        BufWire { stream, buf: vec![0; READ_CHUNK], got: None }
    }

    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.got.is_none() {
            let mut rb = ReadBuf::new(&mut self.buf);
            ready!(Pin::new(&mut self.stream).poll_read(cx, &mut rb))?;
            self.got = Some(rb.filled().len());
        }
        Poll::Ready(Ok(()))
    }

    fn take<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<(usize, R)> {
        self.got.take().map(|n| (n, f(&self.buf[..n])))
    }
}

enum Wire {
    Plain(TcpStream),
    Tls(Box<BufWire<TlsStream<TcpStream>>>),
    Pipe(Box<BufWire<tokio::io::DuplexStream>>),
}

thread_local! {
    static READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_CHUNK]);
}

impl Wire {
    /// Ready when a read can make progress (for TLS and the pipe: when it has read into its
    /// buffer). Polled directly rather than through `readable()`, whose future would make every
    /// idle connection's task 150 bytes larger.
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Wire::Plain(s) => s.poll_read_ready(cx),
            Wire::Tls(t) => t.poll_read_ready(cx),
            Wire::Pipe(p) => p.poll_read_ready(cx),
        }
    }

    /// Take the bytes available now and give them to `f`: `Ok(None)` if there were none after
    /// all, `Ok(Some((0, _)))` at end of stream.
    fn take<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> io::Result<Option<(usize, R)>> {
        match self {
            Wire::Plain(s) => READ_BUF.with(|cell| {
                let mut buf = cell.borrow_mut();
                match s.try_read(&mut buf) {
                    Ok(n) => Ok(Some((n, f(&buf[..n])))),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                    Err(e) => Err(e),
                }
            }),
            Wire::Tls(t) => Ok(t.take(f)),
            Wire::Pipe(p) => Ok(p.take(f)),
        }
    }

    /// Write `data[*pos..]`, advancing `pos`; `Ready(Ok)` once all is written (TLS: into the
    /// TLS layer, see [`Wire::poll_flush`]).
    fn poll_write_all(&mut self, cx: &mut Context<'_>, data: &[u8], pos: &mut usize) -> Poll<io::Result<()>> {
        while *pos < data.len() {
            let n = match self {
                Wire::Plain(s) => ready!(Pin::new(s).poll_write(cx, &data[*pos..]))?,
                Wire::Tls(t) => ready!(Pin::new(&mut t.stream).poll_write(cx, &data[*pos..]))?,
                Wire::Pipe(p) => ready!(Pin::new(&mut p.stream).poll_write(cx, &data[*pos..]))?,
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *pos += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Whether writes must be flushed (TLS buffers records; the pipe is flushed for symmetry).
    fn is_tls(&self) -> bool {
        !matches!(self, Wire::Plain(_))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Wire::Plain(_) => Poll::Ready(Ok(())),
            Wire::Tls(t) => Pin::new(&mut t.stream).poll_flush(cx),
            Wire::Pipe(p) => Pin::new(&mut p.stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Wire::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Wire::Tls(t) => Pin::new(&mut t.stream).poll_shutdown(cx),
            Wire::Pipe(p) => Pin::new(&mut p.stream).poll_shutdown(cx),
        }
    }
}

/// Buffers a connection needs only while data waits in them (an incomplete frame read, bytes
/// the socket did not take yet): allocated then, freed when empty, so an idle connection holds
/// none. Everything else goes through per-thread scratch buffers.
#[derive(Default)]
struct Bufs {
    decoder: Option<Decoder>,
    out: Vec<u8>,
    pos: usize,
}

#[derive(Default)]
struct Scratch {
    packets: Vec<Packet>,
    out: Vec<u8>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

fn take_scratch() -> Scratch {
    SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()))
}

fn put_scratch(mut sc: Scratch) {
    sc.packets.clear();
    sc.out.clear();
    if sc.out.capacity() > 1 << 20 {
        sc.out = Vec::new();
    }
    SCRATCH.with(|s| *s.borrow_mut() = sc);
}

/// One connection's task, as a hand-written state machine: a small future (the task is
/// allocated once per connection; tokio rounds task allocations to 128 bytes).
struct ConnTask {
    wire: Wire,
    att: Attachment,
    bufs: Option<Box<Bufs>>,
    /// Cleared after bad input: nothing more is read, what is queued is written, then close.
    reading: bool,
    /// The broker asked to close once the pending bytes are written.
    closing: bool,
    /// TLS: bytes were handed to the TLS layer and must still be flushed to the socket.
    flush_pending: bool,
}

enum Step {
    Continue,
    Done,
}

impl ConnTask {
    /// Drop the buffers once nothing is pending in them.
    fn release(&mut self) {
        if let Some(b) = &self.bufs {
            if b.out.is_empty() && b.decoder.as_ref().is_none_or(|d| d.buffered() == 0) {
                self.bufs = None;
            }
        }
    }

    /// Write bytes left over from an earlier batch, and flush TLS. `Ready(Continue)` when done.
    fn poll_pending_out(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        if let Some(b) = self.bufs.as_deref_mut() {
            if !b.out.is_empty() {
                if let Err(e) = ready!(self.wire.poll_write_all(cx, &b.out, &mut b.pos)) {
                    tracing::debug!(conn = self.att.conn_id(), "mqtt: write failed: {e}");
                    return Poll::Ready(Step::Done);
                }
                b.out = Vec::new();
                b.pos = 0;
            }
        }
        if self.flush_pending {
            if let Err(e) = ready!(self.wire.poll_flush(cx)) {
                tracing::debug!(conn = self.att.conn_id(), "mqtt: write failed: {e}");
                return Poll::Ready(Step::Done);
            }
            self.flush_pending = false;
        }
        Poll::Ready(Step::Continue)
    }

    /// Encode one batch of the outbox and write it; whatever the socket does not take now is
    /// kept in `bufs`.
    fn write_batch(&mut self, cx: &mut Context<'_>) -> Step {
        let mut sc = take_scratch();
        let close = self.att.drain(CONTROL_CHANNEL, &mut sc.packets, WRITE_BATCH);
        for p in sc.packets.drain(..) {
            if let Err(e) = codec::encode(&p, self.att.version(), &mut sc.out) {
                tracing::warn!("mqtt: cannot encode {:?}: {e}", p.get_type());
            }
        }
        if let Some(reason) = close {
            tracing::debug!(conn = self.att.conn_id(), "mqtt: closing connection: {reason}");
            self.closing = true;
        }
        let mut pos = 0;
        let step = match self.wire.poll_write_all(cx, &sc.out, &mut pos) {
            Poll::Ready(Err(e)) => {
                tracing::debug!(conn = self.att.conn_id(), "mqtt: write failed: {e}");
                Step::Done
            }
            Poll::Ready(Ok(())) => Step::Continue,
            Poll::Pending => {
                let b = self.bufs.get_or_insert_with(Default::default);
                b.out.extend_from_slice(&sc.out[pos..]);
                b.pos = 0;
                Step::Continue
            }
        };
        if !sc.out.is_empty() && self.wire.is_tls() {
            self.flush_pending = true;
        }
        put_scratch(sc);
        step
    }

    /// Read what is available and hand the packets to the broker.
    fn read(&mut self) -> Step {
        let mut sc = take_scratch();
        // Decode straight from the read buffer; a decoder is kept only for an incomplete frame.
        let mut decoder = match self.bufs.as_mut().and_then(|b| b.decoder.take()) {
            Some(d) => d,
            None => self.att.decoder(),
        };
        let got = self.wire.take(|bytes| decoder.feed(bytes, &mut sc.packets));
        let step = match got {
            Ok(None) => Step::Continue,
            Ok(Some((0, _))) => {
                if decoder.buffered() > 0 {
                    tracing::debug!(conn = self.att.conn_id(), "mqtt: connection closed in the middle of a packet");
                }
                Step::Done
            }
            Ok(Some((_, decoded))) => {
                self.att.learn_version(&decoder);
                let err = decoded.err();
                if err.is_some() {
                    self.reading = false;
                }
                self.att.handle(CONTROL_CHANNEL, &mut sc.packets, err.as_ref());
                Step::Continue
            }
            Err(e) => {
                tracing::debug!(conn = self.att.conn_id(), "mqtt: read failed: {e}");
                Step::Done
            }
        };
        if decoder.buffered() > 0 {
            self.bufs.get_or_insert_with(Default::default).decoder = Some(decoder);
        }
        put_scratch(sc);
        self.release();
        step
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            // 1. Pending output first: a client cannot make the broker buffer answers to input
            //    it sends faster than it reads.
            if let Step::Done = ready!(self.poll_pending_out(cx)) {
                return Poll::Ready(());
            }
            if self.closing {
                let _ = ready!(self.wire.poll_shutdown(cx));
                return Poll::Ready(());
            }
            // 2. More to write?
            if self.att.poll_outbox(CONTROL_CHANNEL, cx).is_ready() {
                if let Step::Done = self.write_batch(cx) {
                    return Poll::Ready(());
                }
                continue;
            }
            self.release();
            if !self.reading {
                // Bad input and the core has already closed (or is closing) the connection.
                return Poll::Ready(());
            }
            // 3. Input. (The outbox waker is registered above.) Not while the store holds back
            //    `channel_queue` answers already: releasing them wakes the outbox.
            if self.att.holding_full(CONTROL_CHANNEL) {
                return Poll::Pending;
            }
            if let Err(e) = ready!(self.wire.poll_read_ready(cx)) {
                tracing::debug!(conn = self.att.conn_id(), "mqtt: read failed: {e}");
                return Poll::Ready(());
            }
            if let Step::Done = self.read() {
                return Poll::Ready(());
            }
        }
    }
}

/// The connection's future: the task state itself (no async-fn wrapper around it). When it
/// ends, dropping the attachment tells the core; it publishes the will unless DISCONNECT came.
fn conn_loop(wire: Wire, att: Attachment) -> impl std::future::Future<Output = ()> + Send {
    let mut task = ConnTask { wire, att, bufs: None, reading: true, closing: false, flush_pending: false };
    std::future::poll_fn(move |cx| task.poll(cx))
}

/// A listener address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {proto} {addr}")]
pub struct BindError {
    pub proto: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// Backlog of the MQTT listeners: a benchmark connecting thousands of clients at once is not
/// refused.
const BACKLOG: i32 = 4096;

/// Bind an MQTT listener: [`crate::tcp::bind_tcp`] (`[::]` dual-stack, like the HTTP
/// listener) with a backlog of [`BACKLOG`].
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    crate::tcp::bind_tcp(addr, BACKLOG)
}

/// A running broker and the addresses its listeners are bound to.
#[derive(Debug, Clone)]
pub struct MqttListeners {
    pub broker: Broker,
    /// MQTT over TCP, if enabled.
    pub tcp: Option<SocketAddr>,
    /// MQTT over TLS, if enabled.
    pub tls: Option<SocketAddr>,
}

/// Why [`start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The store of `cfg.data_dir` could not be opened (it is left as it is).
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
    #[error("cannot start the MQTT store's thread")]
    StoreThread(#[source] io::Error),
}

/// Start a broker with `cfg` and its listeners: plain TCP on `cfg.tcp_listen`, TLS on
/// `cfg.tls_listen` with `tls` (e.g. `tls::tcp_server_config(&store, &[ALPN_MQTT])`). Both stop
/// when `shutdown` is cancelled; connection tasks run on `tracker`. With `cfg.data_dir`, the
/// broker opens its store there first and starts from what it holds. Call within a runtime.
pub fn start(
    cfg: &super::MqttConfig,
    tls: Option<rustls::ServerConfig>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<MqttListeners, StartError> {
    let broker = match &cfg.data_dir {
        Some(dir) => Broker::with_store(cfg.clone(), super::store::open(dir)?).map_err(StartError::StoreThread)?,
        None => Broker::new(cfg.clone()),
    };
    let mut out = MqttListeners { broker: broker.clone(), tcp: None, tls: None };
    let bind_err = |proto, addr| move |source| BindError { proto, addr, source };
    let mut listeners = Vec::new();
    if let Some(addr) = cfg.tcp_listen {
        let l = bind(addr).map_err(bind_err("MQTT/TCP", addr))?;
        out.tcp = Some(l.local_addr().map_err(bind_err("MQTT/TCP", addr))?);
        listeners.push((l, None));
    }
    if let (Some(addr), Some(tls)) = (cfg.tls_listen, tls) {
        let l = bind(addr).map_err(bind_err("MQTT/TLS", addr))?;
        out.tls = Some(l.local_addr().map_err(bind_err("MQTT/TLS", addr))?);
        listeners.push((l, Some(TlsAcceptor::from(std::sync::Arc::new(tls)))));
    }
    for (l, acceptor) in listeners {
        tracker.spawn(serve_tcp(l, acceptor, broker.clone(), shutdown.clone(), tracker.clone()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    /// An idle connection's cost is dominated by its task: tokio allocates each task with its
    /// future inline, rounded up to 128 bytes. Keep the connection future small (a regression
    /// here shows up as broker RSS per idle client; see docs/mqtt.md).
    #[tokio::test]
    async fn connection_future_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let broker = super::Broker::new(crate::mqtt::MqttConfig::default());
        let att = broker.attach(None).unwrap();
        let fut = super::conn_loop(super::Wire::Plain(c), att);
        let size = std::mem::size_of_val(&fut);
        let limit = if cfg!(debug_assertions) { 160 } else { 96 };
        assert!(size <= limit, "connection future is {size} bytes (limit {limit})");
    }
}
