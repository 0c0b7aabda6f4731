//! The QUIC endpoint: one quinn endpoint on one UDP port, dispatching connections by ALPN.
//!
//! quinn fixes a connection's transport parameters when it is accepted, before the ALPN is
//! known, so every ALPN served on this endpoint shares [`transport_config`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Congestion, TransportConfig};
use crate::stats::{ConnInfo, Protocol};
use crate::web::Site;

/// Application close code for a connection whose ALPN has no handler. rustls already refuses
/// ALPNs the endpoint does not offer (`no_application_protocol`, RFC 9001 §8.1); this only
/// covers an offered ALPN whose service is switched off. 0x0101 is H3_GENERAL_PROTOCOL_ERROR
/// (RFC 9114 §8.1), the closest generic code.
pub const CLOSE_UNKNOWN_ALPN: u32 = 0x0101;

/// Resolves when the connection's handshake completes; polled without waiting it tells whether a
/// request accepted now arrived in 0-RTT (see [`crate::web::h3`]).
pub type HandshakeDone =
    futures_util::future::Shared<futures_util::future::BoxFuture<'static, bool>>;

/// quinn transport parameters from quiclab's configuration.
pub fn transport_config(t: &TransportConfig) -> Result<quinn::TransportConfig, String> {
    let varint = |v: u64, what: &str| {
        quinn::VarInt::from_u64(v).map_err(|_| format!("{what} {v} is too large"))
    };
    let mut tc = quinn::TransportConfig::default();
    tc.stream_receive_window(varint(t.stream_window, "stream window")?)
        .receive_window(varint(t.conn_window, "connection window")?)
        .max_concurrent_bidi_streams(t.max_streams.into())
        .initial_rtt(t.initial_rtt)
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(t.idle_timeout)
                .map_err(|_| "idle timeout too large".to_string())?,
        ));
    match t.congestion {
        Congestion::Cubic => {
            tc.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
        }
        Congestion::NewReno => {
            tc.congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default()))
        }
        Congestion::Bbr => {
            tc.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        }
    };
    Ok(tc)
}

/// Bind a UDP socket; an unspecified IPv6 address is bound dual-stack (IPv4-mapped too).
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol as SockProto, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(SockProto::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)?;
    }
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// What every QUIC connection handler needs.
pub struct QuicContext {
    /// The test site (ALPN `h3`).
    pub site: Arc<Site>,
    /// The endpoint's bound address (its port is every connection's local port).
    pub local: SocketAddr,
    /// Fires on graceful shutdown.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
}

/// Accept connections until shutdown, each in its own task.
pub async fn accept_loop(endpoint: quinn::Endpoint, ctx: Arc<QuicContext>) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = ctx.shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        let ctx2 = ctx.clone();
        ctx.tracker
            .spawn(async move { handle_incoming(incoming, ctx2).await });
    }
}

async fn handle_incoming(incoming: quinn::Incoming, ctx: Arc<QuicContext>) {
    let remote = incoming.remote_address();
    let mut connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "QUIC connection refused");
            return;
        }
    };
    // The ALPN is known once the ClientHello is processed, before the handshake completes.
    let alpn = match connecting.handshake_data().await {
        Ok(hd) => hd
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .ok()
            .and_then(|hd| hd.protocol),
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
    let alpn_str = alpn
        .as_deref()
        .map(|a| String::from_utf8_lossy(a).into_owned());
    match alpn.as_deref() {
        Some(config::ALPN_H3) => {
            tracing::debug!(%remote, "HTTP/3 connection");
            let info = Arc::new(ConnInfo::quic(conn.clone(), local, alpn_str, Protocol::H3));
            crate::web::h3::serve_connection(
                ctx.site.clone(),
                info,
                conn,
                handshake_done,
                ctx.shutdown.clone(),
            )
            .await;
        }
        other => {
            tracing::info!(%remote, alpn = ?other.map(String::from_utf8_lossy), "no handler for this ALPN; closing");
            conn.close(CLOSE_UNKNOWN_ALPN.into(), b"unsupported ALPN");
        }
    }
}
