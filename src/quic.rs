//! The QUIC endpoint: one quinn endpoint on one UDP port, handing each connection to the
//! service registered for the ALPN its handshake settled on.
//!
//! This module knows no application protocol: [`crate::server`] registers the services
//! (`QuicService`) in a `QuicContext`; the endpoint enforces what is common to them
//! (connection limit, Retry, handshake deadline, per-connection qlog) and tells each service
//! when the handshake completes ([`HandshakeDone`]). quinn fixes a connection's transport
//! parameters when it is accepted, before the ALPN is known, so every ALPN served on one
//! endpoint shares [`transport_config`]. `FollowDestination` is the UDP socket under an
//! endpoint that advertises a preferred address.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Congestion, TransportConfig};
use crate::conn::HandshakeDone;

/// Application close code for a connection whose ALPN has no service. rustls already refuses
/// ALPNs the endpoint does not offer (`no_application_protocol`, RFC 9001 §8.1); this only
/// covers an offered ALPN with no service registered. 0x0101 is H3_GENERAL_PROTOCOL_ERROR
/// (RFC 9114 §8.1), the closest generic code.
pub(crate) const CLOSE_UNKNOWN_ALPN: u32 = 0x0101;

/// Why quiclab's transport settings cannot be quinn's, or a connection's qlog cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// A flow-control window is beyond what a QUIC variable-length integer holds (2^62 - 1).
    #[error("{what} {value} is too large")]
    WindowTooLarge {
        /// Which window (`stream window`, `connection window`).
        what: &'static str,
        /// The value asked for, in bytes.
        value: u64,
    },
    /// The idle timeout is beyond what QUIC's `max_idle_timeout` parameter holds.
    #[error("idle timeout {0:?} is too large")]
    IdleTimeoutTooLarge(Duration),
    /// A connection's qlog file could not be created.
    #[error("cannot create qlog file {path}")]
    QlogFile {
        /// The file asked for.
        path: PathBuf,
        /// Why it could not be created.
        #[source]
        source: io::Error,
    },
}

/// quinn transport parameters from quiclab's configuration.
pub fn transport_config(t: &TransportConfig) -> Result<quinn::TransportConfig, QuicError> {
    let varint =
        |value: u64, what| quinn::VarInt::from_u64(value).map_err(|_| QuicError::WindowTooLarge { what, value });
    let mut tc = quinn::TransportConfig::default();
    tc.stream_receive_window(varint(t.stream_window, "stream window")?)
        .receive_window(varint(t.conn_window, "connection window")?)
        .max_concurrent_bidi_streams(t.max_streams.into())
        .max_concurrent_uni_streams(t.max_uni_streams.into())
        .initial_rtt(t.initial_rtt)
        .keep_alive_interval(t.keep_alive)
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(t.idle_timeout).map_err(|_| QuicError::IdleTimeoutTooLarge(t.idle_timeout))?,
        ));
    // The initial window, when set, goes to whichever controller is chosen (each has its own
    // config type with the same `initial_window` knob).
    match t.congestion {
        Congestion::Cubic => {
            let mut c = quinn::congestion::CubicConfig::default();
            if let Some(w) = t.initial_window {
                c.initial_window(w);
            }
            tc.congestion_controller_factory(Arc::new(c))
        }
        Congestion::NewReno => {
            let mut c = quinn::congestion::NewRenoConfig::default();
            if let Some(w) = t.initial_window {
                c.initial_window(w);
            }
            tc.congestion_controller_factory(Arc::new(c))
        }
        Congestion::Bbr => {
            let mut c = quinn::congestion::BbrConfig::default();
            if let Some(w) = t.initial_window {
                c.initial_window(w);
            }
            tc.congestion_controller_factory(Arc::new(c))
        }
    };
    Ok(tc)
}

/// Bind a UDP socket with large buffers; an unspecified IPv6 address is bound dual-stack
/// (IPv4-mapped too).
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol as SockProto, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(SockProto::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)?;
    }
    // Room for bursts: many handshakes at once, or a window's worth of datagrams arriving
    // while the endpoint task is busy (best effort: capped by net.core.rmem_max/wmem_max).
    let _ = sock.set_recv_buffer_size(UDP_BUFFER);
    let _ = sock.set_send_buffer_size(UDP_BUFFER);
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// Socket buffer size asked for on QUIC sockets.
const UDP_BUFFER: usize = 4 << 20;

/// An application protocol served on the endpoint, registered for its ALPN.
pub(crate) trait QuicService: Send + Sync {
    /// Serve `conn` until it ends. `local` is the server's address on the connection;
    /// `handshake_done` resolves when the handshake completes: until then, what arrives on
    /// the connection is 0-RTT early data. The endpoint closes a connection whose handshake
    /// does not complete within its deadline.
    fn serve(
        &self,
        conn: quinn::Connection,
        local: SocketAddr,
        handshake_done: HandshakeDone,
    ) -> BoxFuture<'static, ()>;
}

/// The services of one endpoint: ALPN → service.
pub(crate) type QuicServices = Vec<(&'static [u8], Arc<dyn QuicService>)>;

/// What the endpoint's accept loop needs.
pub(crate) struct QuicContext {
    /// The services, by ALPN.
    pub(crate) services: QuicServices,
    /// The endpoint's bound address (its port is every connection's local port).
    pub(crate) local: SocketAddr,
    /// Fires on graceful shutdown: the accept loop stops.
    pub(crate) shutdown: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    /// One permit per connection (`max_connections`).
    pub(crate) permits: Arc<tokio::sync::Semaphore>,
    /// Stateless Retry for every new client.
    pub(crate) retry: bool,
    /// Per-connection qlog files, with the server configuration to clone for each.
    pub(crate) qlog: Option<QlogSetup>,
    /// How long the handshake may take.
    pub(crate) handshake_timeout: Duration,
}

/// What is needed to give each connection its own qlog (quinn takes the qlog writer in the
/// TransportConfig, so each connection needs its own config through `Incoming::accept_with`).
pub(crate) struct QlogSetup {
    /// The directory the files go to (it exists).
    pub(crate) dir: PathBuf,
    /// The endpoint's server configuration, cloned for each connection.
    pub(crate) server_config: quinn::ServerConfig,
    /// The transport parameters, rebuilt for each connection around its qlog writer.
    pub(crate) transport: TransportConfig,
    /// Numbers the files of connections that start in the same millisecond.
    pub(crate) counter: AtomicU64,
}

impl QlogSetup {
    /// A server configuration writing `remote`'s qlog to a new file. The file is created on a
    /// blocking thread, off the accept path.
    async fn config_for(&self, remote: SocketAddr) -> Result<Arc<quinn::ServerConfig>, QuicError> {
        let mut tc = transport_config(&self.transport)?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let stamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let name = format!("{stamp}-{n}-{}.qlog", remote.to_string().replace([':', '[', ']'], "_"));
        let path = self.dir.join(name);
        let create = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || std::fs::File::create(path))
        };
        let file = match create.await {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(e)),
        }
        .map_err(|source| QuicError::QlogFile { path, source })?;
        let mut q = quinn::QlogConfig::default();
        q.writer(Box::new(std::io::BufWriter::new(file)))
            .title(Some(format!("quiclab server, client {remote}")))
            .start_time(std::time::Instant::now());
        tc.qlog_stream(q.into_stream());
        let mut sc = self.server_config.clone();
        sc.transport_config(Arc::new(tc));
        Ok(Arc::new(sc))
    }
}

/// Accept connections until shutdown, each in its own task.
pub(crate) async fn accept_loop(endpoint: quinn::Endpoint, ctx: Arc<QuicContext>) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = ctx.shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        let ctx2 = ctx.clone();
        ctx.tracker.spawn(handle_incoming(incoming, ctx2));
    }
}

async fn handle_incoming(incoming: quinn::Incoming, ctx: Arc<QuicContext>) {
    let remote = incoming.remote_address();
    let Ok(_permit) = ctx.permits.clone().try_acquire_owned() else {
        tracing::warn!(%remote, limit = ctx.permits.available_permits(), "connection limit reached; refusing");
        incoming.refuse(); // RFC 9000 §20.1 CONNECTION_REFUSED
        return;
    };
    if ctx.retry && !incoming.remote_address_validated() {
        // RFC 9000 §8.1.2: the client comes back with the token; nothing is kept meanwhile.
        if let Err(e) = incoming.retry() {
            tracing::debug!(%remote, error = %e, "Retry failed");
        }
        return;
    }
    let accepted = match &ctx.qlog {
        Some(q) => match q.config_for(remote).await {
            Ok(cfg) => incoming.accept_with(cfg),
            Err(e) => {
                let cause = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default();
                tracing::warn!(%remote, error = %e, %cause, "cannot write qlog; accepting without it");
                incoming.accept()
            }
        },
        None => incoming.accept(),
    };
    let mut connecting = match accepted {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "QUIC connection refused");
            return;
        }
    };
    // The ALPN is known once the ClientHello is processed, before the handshake completes.
    let alpn = match connecting.handshake_data().await {
        Ok(hd) => hd.downcast::<quinn::crypto::rustls::HandshakeData>().ok().and_then(|hd| hd.protocol),
        Err(e) => {
            tracing::debug!(%remote, error = %e, "QUIC handshake failed");
            return;
        }
    };
    // On the server `into_0rtt` always succeeds; its future resolves when the handshake completes.
    let (conn, handshake_done): (_, HandshakeDone) = match connecting.into_0rtt() {
        Ok((conn, accepted)) => (conn, accepted.boxed().shared()),
        Err(connecting) => match connecting.await {
            Ok(c) => (c, futures_util::future::ready(true).boxed().shared()),
            Err(e) => {
                tracing::debug!(%remote, error = %e, "QUIC handshake failed");
                return;
            }
        },
    };
    let local = SocketAddr::new(conn.local_ip().unwrap_or(ctx.local.ip()), ctx.local.port());
    let service = ctx.services.iter().find(|(a, _)| Some(*a) == alpn.as_deref()).map(|(_, s)| s);
    let Some(service) = service else {
        tracing::info!(%remote, alpn = ?alpn.as_deref().map(String::from_utf8_lossy), "no service for this ALPN; closing");
        conn.close(CLOSE_UNKNOWN_ALPN.into(), b"unsupported ALPN");
        return;
    };
    // A client that never completes its handshake is closed after the deadline.
    let deadline = {
        let (conn, done, t) = (conn.clone(), handshake_done.clone(), ctx.handshake_timeout);
        async move {
            if tokio::time::timeout(t, done).await.is_err() {
                tracing::info!(%remote, timeout = ?t, "QUIC handshake did not finish in time; closing");
                conn.close(quinn::VarInt::from_u32(0x100), b"handshake timeout");
            }
            std::future::pending::<()>().await
        }
    };
    // Boxed by the service: the handshake-stage state above is not carried through the
    // connection's whole life (memory per idle connection).
    let serve = service.serve(conn, local, handshake_done);
    tokio::select! {
        _ = serve => {}
        _ = deadline => {}
    }
}

/// The UDP socket under an endpoint that advertises a preferred address (RFC 9000 §9.6).
///
/// quinn 0.11 fixes a connection's local IP when the connection is created and answers from
/// it ever after, so a client that moves to the preferred address (another IP on the same
/// socket) would get its answers from the old address and drop them. This wrapper remembers,
/// per client address, which preferred IP the client last sent to, and sends from that IP.
#[derive(Debug)]
pub(crate) struct FollowDestination {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    preferred: Vec<std::net::IpAddr>,
    /// Client address → the preferred IP it last sent to. Bounded: cleared when it grows past
    /// `MAX_ENTRIES` (entries only exist for clients that moved).
    moved: std::sync::Mutex<std::collections::HashMap<SocketAddr, std::net::IpAddr>>,
}

impl FollowDestination {
    const MAX_ENTRIES: usize = 65_536;

    /// Wrap `socket`; `preferred` are the advertised addresses.
    pub(crate) fn new(socket: Arc<dyn quinn::AsyncUdpSocket>, preferred: &[SocketAddr]) -> Self {
        FollowDestination {
            inner: socket,
            preferred: preferred.iter().map(|a| a.ip().to_canonical()).collect(),
            moved: Default::default(),
        }
    }
}

impl quinn::AsyncUdpSocket for FollowDestination {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> io::Result<()> {
        let src = self.moved.lock().unwrap_or_else(|e| e.into_inner()).get(&transmit.destination).copied();
        match src {
            Some(ip) if transmit.src_ip != Some(ip) => {
                let t = quinn::udp::Transmit { src_ip: Some(ip), ..*transmit };
                self.inner.try_send(&t)
            }
            _ => self.inner.try_send(transmit),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<io::Result<usize>> {
        let res = self.inner.poll_recv(cx, bufs, meta);
        if let std::task::Poll::Ready(Ok(n)) = &res {
            for m in &meta[..*n] {
                let Some(dst) = m.dst_ip else { continue };
                let mut moved = self.moved.lock().unwrap_or_else(|e| e.into_inner());
                if self.preferred.contains(&dst.to_canonical()) {
                    if moved.len() >= Self::MAX_ENTRIES {
                        moved.clear();
                    }
                    moved.insert(m.addr, dst);
                } else if !moved.is_empty() {
                    moved.remove(&m.addr);
                }
            }
        }
        res
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_config_refuses_what_quic_cannot_carry() {
        let t = TransportConfig { stream_window: 1 << 62, ..Default::default() };
        let e = transport_config(&t).err();
        assert!(matches!(e, Some(QuicError::WindowTooLarge { what: "stream window", value }) if value == 1 << 62));
        let t = TransportConfig { idle_timeout: Duration::from_secs(u64::MAX), ..Default::default() };
        assert!(matches!(transport_config(&t).err(), Some(QuicError::IdleTimeoutTooLarge(_))));
        assert!(transport_config(&TransportConfig::default()).is_ok());
    }
}
