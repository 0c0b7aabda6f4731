//! The TLS/TCP listener: accepts, sets TCP_NODELAY, completes TLS within a deadline, and
//! dispatches by ALPN (`h2` → HTTP/2, `http/1.1` or none → HTTP/1.1).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config;
use crate::stats::{ConnInfo, Protocol};
use crate::web::h2::H2Options;
use crate::web::Site;

/// Set a TCP socket's congestion control algorithm (`TCP_CONGESTION`, e.g. `cubic`, `reno`).
/// A listener's setting is inherited by the sockets it accepts.
pub fn set_congestion(fd: std::os::fd::RawFd, name: &str) -> io::Result<()> {
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

/// Bind a TCP listener; an unspecified IPv6 address is bound dual-stack.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol as SockProto, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(SockProto::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

/// What every TLS/TCP connection handler needs.
pub struct TcpContext {
    pub site: Arc<Site>,
    pub tls: tokio_rustls::TlsAcceptor,
    pub h2: Arc<H2Options>,
    pub handshake_timeout: Duration,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// One permit per connection (`max_connections`).
    pub permits: Arc<tokio::sync::Semaphore>,
}

/// Accept connections until shutdown, each in its own task.
pub async fn accept_loop(listener: TcpListener, ctx: Arc<TcpContext>) {
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

async fn handle(stream: tokio::net::TcpStream, remote: SocketAddr, ctx: Arc<TcpContext>) {
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
    let protocol = match alpn.as_deref() {
        Some(config::ALPN_H2) => Protocol::H2,
        _ => Protocol::Http11,
    };
    let alpn = alpn.map(|a| String::from_utf8_lossy(&a).into_owned());
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let info = Arc::new(ConnInfo::tcp(fd, local, remote, alpn, protocol, resumed));
    crate::web::h2::serve_connection(ctx.site.clone(), info, tls, ctx.h2.clone(), ctx.shutdown.clone()).await;
}
