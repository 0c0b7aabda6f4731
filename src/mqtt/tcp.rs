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

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::codec::{self, Decoder, Packet};
use super::driver::{Attachment, Broker, Outbox};
use super::CONTROL_CHANNEL;

/// Size of the per-thread read buffer for plain TCP and of a TLS connection's read buffer.
const READ_CHUNK: usize = 16 * 1024;
/// Most packets encoded into one write.
const WRITE_BATCH: usize = 512;

/// Accept MQTT connections on `listener` (plain TCP, or TLS when `tls` is given) until
/// `shutdown` is cancelled; one task per connection, spawned on `tracker`. TCP_NODELAY is set
/// on every socket. On shutdown each connection task stops and closes its socket.
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
            _ = shutdown.cancelled() => break,
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
        let shutdown = shutdown.clone();
        match &tls {
            None => {
                tracker.spawn(conn_loop(Wire::Plain(sock), att, shutdown));
            }
            Some(acceptor) => {
                // Boxed so the plain-TCP task's future does not carry the TLS handshake's state.
                tracker.spawn(Box::pin(tls_conn(sock, peer, acceptor.clone(), att, shutdown)));
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
            tracing::debug!(%peer, "mqtt+tls: handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "mqtt+tls: handshake not finished within {limit:?}");
            return;
        }
    };
    let wire = Wire::Tls(Box::new(TlsWire { stream, buf: vec![0; READ_CHUNK], got: None }));
    conn_loop(wire, att, shutdown).await
}

struct TlsWire {
    stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
    /// Bytes read into `buf` by `wait_read` and not yet taken.
    got: Option<usize>,
}

enum Wire {
    Plain(TcpStream),
    Tls(Box<TlsWire>),
}

thread_local! {
    static READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_CHUNK]);
}

impl Wire {
    /// Wait until a read can make progress. Cancel-safe.
    async fn wait_read(&mut self) -> io::Result<()> {
        match self {
            Wire::Plain(s) => s.readable().await,
            Wire::Tls(t) => {
                if t.got.is_none() {
                    let n = t.stream.read(&mut t.buf).await?;
                    t.got = Some(n);
                }
                Ok(())
            }
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
            Wire::Tls(t) => match t.got.take() {
                Some(n) => Ok(Some((n, f(&t.buf[..n])))),
                None => Ok(None),
            },
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Wire::Plain(s) => s.write_all(data).await,
            Wire::Tls(t) => {
                t.stream.write_all(data).await?;
                t.stream.flush().await
            }
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Wire::Plain(s) => s.shutdown().await,
            Wire::Tls(t) => t.stream.shutdown().await,
        };
    }
}

/// Write what the outbox holds (one batch). `Ok(true)`: the broker asked to close.
async fn flush(wire: &mut Wire, outbox: &Outbox) -> io::Result<bool> {
    let mut batch: Vec<Packet> = Vec::new();
    let close = outbox.drain(&mut batch, WRITE_BATCH);
    if !batch.is_empty() {
        let mut buf = Vec::with_capacity(batch.len() * 32);
        for p in &batch {
            if let Err(e) = codec::encode(p, &mut buf) {
                tracing::warn!("mqtt: cannot encode {:?}: {e}", p.get_type());
            }
        }
        drop(batch);
        wire.write_all(&buf).await?;
    }
    if let Some(reason) = close {
        tracing::debug!("mqtt: closing connection: {reason}");
        return Ok(true);
    }
    Ok(false)
}

async fn conn_loop(mut wire: Wire, att: Attachment, shutdown: CancellationToken) {
    let conn = att.conn_id();
    let mut decoder = Decoder::new(att.broker().config().max_packet_size);
    let outbox = att.outbox().clone();
    let mut reading = true;
    loop {
        if outbox.ready() {
            match flush(&mut wire, &outbox).await {
                Ok(true) => {
                    wire.shutdown().await;
                    break;
                }
                Ok(false) => continue,
                Err(e) => {
                    tracing::debug!(conn, "mqtt: write failed: {e}");
                    break;
                }
            }
        }
        if !reading {
            // The input was bad and the core has asked to close; nothing more is read. If it
            // did not ask (it already had), stop here.
            if outbox.ready() {
                continue;
            }
            break;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                wire.shutdown().await;
                break;
            }
            _ = outbox.wait() => continue,
            r = wire.wait_read() => {
                if let Err(e) = r {
                    tracing::debug!(conn, "mqtt: read failed: {e}");
                    break;
                }
            }
        }
        let mut packets = Vec::new();
        let got = wire.take(|bytes| decoder.feed(bytes, &mut packets));
        match got {
            Ok(None) => continue,
            Ok(Some((0, _))) => {
                if decoder.buffered() > 0 {
                    tracing::debug!(conn, "mqtt: connection closed in the middle of a packet");
                }
                break;
            }
            Ok(Some((_, decoded))) => {
                let err = decoded.err();
                if err.is_some() {
                    reading = false;
                }
                att.handle(CONTROL_CHANNEL, &mut packets, err.as_ref());
            }
            Err(e) => {
                tracing::debug!(conn, "mqtt: read failed: {e}");
                break;
            }
        }
    }
    // Dropping the attachment tells the core; it publishes the will unless DISCONNECT came.
    drop(att);
}

/// A listener address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {proto} {addr}: {source}")]
pub struct BindError {
    pub proto: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// Bind a TCP listener; `[::]` is dual-stack (IPV6_V6ONLY off), like the HTTP listeners.
/// Backlog 4096: a benchmark connecting thousands of clients at once is not refused.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    TcpListener::from_std(sock.into())
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

/// Start a broker with `cfg` and its listeners: plain TCP on `cfg.tcp_listen`, TLS on
/// `cfg.tls_listen` with `tls` (e.g. `tls::tcp_server_config(&store, &[ALPN_MQTT])`). Both stop
/// when `shutdown` is cancelled; connection tasks run on `tracker`. Call within a runtime.
pub fn start(
    cfg: &super::MqttConfig,
    tls: Option<rustls::ServerConfig>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<MqttListeners, BindError> {
    let broker = Broker::new(cfg.clone());
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
