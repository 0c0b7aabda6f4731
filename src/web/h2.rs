//! HTTP/2 and HTTP/1.1 over TLS/TCP: hyper serving the same [`Site`] as HTTP/3.
//!
//! The protocol is the one the TLS handshake settled on (ALPN `h2`, else HTTP/1.1; the
//! listener's service in [`crate::server`] reads it into [`ConnInfo::protocol`]).
//! Every response of the site carries `Alt-Svc: h3=":PORT"` (RFC 7838 §3) advertising the QUIC endpoint.
//! WebSocket opening handshakes (`/ws`, `/mqtt`: HTTP/1.1 Upgrade, HTTP/2 extended CONNECT) are
//! answered by [`super::ws`] before the site sees the request.

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{HeaderValue, ALT_SVC};
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::{BodyError, Site};
use crate::config::TransportConfig;
use crate::conn::{ConnInfo, Protocol, RequestInfo};

/// How the TLS/TCP listener serves HTTP on a connection.
#[derive(Debug, Clone)]
pub(crate) struct H2Options {
    /// Value of the `Alt-Svc` header, e.g. `h3=":4433"`.
    pub alt_svc: Option<HeaderValue>,
    /// Windows and stream limit, kept equal to the QUIC ones so the comparison is fair.
    pub transport: TransportConfig,
    /// Largest request header section accepted.
    pub max_header_bytes: u32,
    /// The WebSocket endpoints (`/ws`, `/mqtt`), served before the site sees a request.
    pub ws: Arc<super::ws::WsOptions>,
}

/// Run a hyper connection (HTTP/2 or HTTP/1.1: two types with the same method) to its end;
/// when `shutdown` fires first, start its graceful shutdown (HTTP/2 GOAWAY or HTTP/1.1
/// `Connection: close`) and let the requests in flight finish. A macro, not a generic
/// function: behind a generic function rustc cannot prove hyper's connection future `Send`
/// (a higher-ranked lifetime limitation), which the listener's task needs.
macro_rules! until_shutdown {
    ($conn:expr, $shutdown:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = $shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }};
}

/// Serve HTTP/2 (or HTTP/1.1) on a TLS stream until the client is done, or `shutdown`
/// fires: then HTTP/2 GOAWAY (RFC 9113 §6.8) or `Connection: close`, and in-flight requests finish.
pub(crate) async fn serve_connection<IO>(
    site: Arc<Site>,
    conn: Arc<ConnInfo>,
    io: IO,
    opts: Arc<H2Options>,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = conn.remote();
    let protocol = conn.protocol;
    let svc_opts = opts.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let site = site.clone();
        let info = RequestInfo::new(conn.clone());
        let alt_svc = svc_opts.alt_svc.clone();
        // WebSocket opening handshakes (and every extended CONNECT) are answered here.
        let ws = super::ws::intercept(req, &conn, &svc_opts.ws);
        async move {
            let req = match ws {
                Ok(resp) => return Ok::<_, Infallible>(resp),
                Err(req) => req,
            };
            let req = req.map(|b| b.map_err(|e| Box::new(e) as BodyError).boxed_unsync());
            let mut resp = site.handle(req, info).await;
            if let Some(v) = alt_svc {
                resp.headers_mut().insert(ALT_SVC, v);
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let io = TokioIo::new(io);
    let result = match protocol {
        Protocol::H2 => {
            let t = &opts.transport;
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_concurrent_streams(t.max_streams)
                .initial_stream_window_size(window(t.stream_window))
                .initial_connection_window_size(window(t.conn_window))
                .max_header_list_size(opts.max_header_bytes)
                // RFC 8441 §3: SETTINGS_ENABLE_CONNECT_PROTOCOL, for WebSockets over HTTP/2.
                .enable_connect_protocol();
            until_shutdown!(b.serve_connection(io, service), shutdown)
        }
        _ => {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .max_buf_size((opts.max_header_bytes as usize).max(8192))
                .header_read_timeout(std::time::Duration::from_secs(30));
            // `with_upgrades`: after a WebSocket's 101 the connection is handed to `ws`.
            until_shutdown!(b.serve_connection(io, service).with_upgrades(), shutdown)
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, %protocol, error = %e, "connection ended with an error");
    }
}

/// HTTP/2 windows are 31-bit (RFC 9113 §6.9.1).
fn window(bytes: u64) -> u32 {
    bytes.min((1u64 << 31) - 1) as u32
}
