//! TCP plumbing: the one way quiclab binds a listening socket (`bind_tcp`, for HTTP and MQTT
//! alike), `TCP_CONGESTION`, and the TLS/TCP listener that accepts, sets TCP_NODELAY,
//! completes TLS within a deadline and hands each connection to its `TcpService` (which
//! [`crate::server`] registers; this module knows no application protocol).

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Set a TCP socket's congestion control algorithm (`TCP_CONGESTION`, e.g. `cubic`, `reno`).
/// A listener's setting is inherited by the sockets it accepts.
pub(crate) fn set_congestion(fd: std::os::fd::RawFd, name: &str) -> io::Result<()> {
    // SAFETY: `name` outlives the call and its length is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("TCP_CONGESTION={name}: {e}")))
    }
}

/// Bind a TCP listener with SO_REUSEADDR and a backlog of `backlog` connections; an
/// unspecified IPv6 address is bound dual-stack (IPV6_V6ONLY off). Call within a runtime.
pub(crate) fn bind_tcp(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol as SockProto, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(SockProto::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(backlog)?;
    TcpListener::from_std(sock.into())
}

/// A TLS/TCP connection as the listener hands it over.
pub(crate) struct TlsConn {
    /// The TLS stream, handshake done.
    pub(crate) stream: TlsStream<TcpStream>,
    /// A duplicate of the socket's descriptor, for `TCP_INFO` while the stream is in use.
    pub(crate) fd: OwnedFd,
    /// The server's address on the connection.
    pub(crate) local: SocketAddr,
    /// The client's address.
    pub(crate) remote: SocketAddr,
    /// The ALPN the handshake settled on.
    pub(crate) alpn: Option<Vec<u8>>,
    /// Whether TLS resumed a session.
    pub(crate) resumed: bool,
    /// The socket's state at establishment and the negotiated cipher suite.
    pub(crate) established: crate::conn::Established,
}

/// The application protocol a TLS/TCP listener serves.
pub(crate) trait TcpService: Send + Sync + 'static {
    /// Serve one connection until it ends.
    fn serve(&self, conn: TlsConn) -> impl std::future::Future<Output = ()> + Send + 'static;
}

/// What the TLS/TCP accept loop needs.
pub(crate) struct TcpContext<S> {
    /// Serves every connection.
    pub(crate) service: S,
    /// TLS for every connection.
    pub(crate) tls: tokio_rustls::TlsAcceptor,
    /// How long the TLS handshake may take.
    pub(crate) handshake_timeout: Duration,
    /// Fires on graceful shutdown: the accept loop stops.
    pub(crate) shutdown: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    /// One permit per connection (`max_connections`).
    pub(crate) permits: Arc<tokio::sync::Semaphore>,
}

/// Accept connections until shutdown, each in its own task.
pub(crate) async fn accept_loop<S: TcpService>(listener: TcpListener, ctx: Arc<TcpContext<S>>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = ctx.shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, remote)) => {
                let Ok(permit) = ctx.permits.clone().try_acquire_owned() else {
                    tracing::warn!(%remote, "connection limit reached; closing");
                    drop(stream);
                    continue;
                };
                let ctx2 = ctx.clone();
                ctx.tracker.spawn(async move {
                    handle(stream, remote, ctx2).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and friends: log, pause briefly, keep serving.
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle<S: TcpService>(stream: TcpStream, remote: SocketAddr, ctx: Arc<TcpContext<S>>) {
    // Without TCP_NODELAY the first request waits behind the ACK of the handshake (Nagle).
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%remote, error = %e, "TCP_NODELAY failed");
    }
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let fd = {
        use std::os::fd::AsFd;
        match stream.as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(%remote, error = %e, "could not duplicate the socket");
                return;
            }
        }
    };
    // The initial window, MSS and RTO before the TLS handshake's segments are acknowledged.
    let mut established = {
        use std::os::fd::AsRawFd;
        crate::conn::Established::tcp(fd.as_raw_fd())
    };
    let tls = match tokio::time::timeout(ctx.handshake_timeout, ctx.tls.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%remote, timeout = ?ctx.handshake_timeout, "TLS handshake did not finish in time; closing");
            return;
        }
    };
    let alpn = tls.get_ref().1.alpn_protocol().map(|a| a.to_vec());
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    established.cipher_suite = tls.get_ref().1.negotiated_cipher_suite().map(|cs| format!("{:?}", cs.suite()));
    ctx.service.serve(TlsConn { stream: tls, fd, local, remote, alpn, resumed, established }).await;
}
