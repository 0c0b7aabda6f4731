//! The test site: ONE transport-independent service for HTTP/3 and HTTP/2 alike.
//!
//! [`Site::handle`] maps `(http::Request, RequestInfo)` to an `http::Response` with a streaming
//! body. The HTTP/3 loop (`h3`) and hyper (`h2`) only translate between their stream types
//! and these; everything a client can observe about the site is decided here, so a comparison
//! of the two transports compares transports, not two sites.
//!
//! | module | what it holds |
//! |--------|---------------|
//! | `routes` | the router and the built-in pages (`/bytes/N`, `/echo`, `/headers`, `/conn`, ...) |
//! | `httpbin` | httpbin-compatible endpoints (`/get`, `/anything`, redirects, cookies, `/drip`, ...) |
//! | `coding` | content coding negotiated by `Accept-Encoding` (gzip, deflate, br, zstd) |
//! | `session` | `/session` (a server-side session found by a cookie) and `/cookie-attributes` |
//! | `cache_demo` | `/cache-demo`: caching policies shown from the browser's and the server's side |
//! | `mqtt_page` | `/mqtt.html`: a browser MQTT client over the `/mqtt` WebSocket |
//! | `files` | representations, validators, conditional and range requests; static files under `--root` (looked up off the async threads) |
//! | `body` | bodies and small helpers both of the above use (empty, whole, pattern, chained; reading and draining request bodies) |
//! | `h3` | the HTTP/3 connection loop (h3 over h3-quinn), with 0-RTT detection |
//! | `h2` | HTTP/2 and HTTP/1.1 over TLS/TCP (hyper), with graceful shutdown |
//! | `ws` | WebSocket on the TLS/TCP listener (HTTP/1.1 Upgrade, HTTP/2 extended CONNECT): `/ws` echo, `/mqtt` handed to the broker |
//!
//! The listeners do not know this module: [`crate::server`] registers `h3` on the QUIC
//! endpoint and `h2` on the TLS/TCP listener.

mod body;
mod cache_demo;
pub mod coding;
pub(crate) mod files;
pub(crate) mod h2;
pub(crate) mod h3;
mod httpbin;
mod mqtt_page;
pub(crate) mod routes;
mod session;
pub(crate) mod ws;

pub use routes::pattern_byte;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;

use crate::config::Limits;
use crate::conn::RequestInfo;

/// Errors a body stream can carry (transport resets, limits).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body, for requests and responses on both transports.
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// Response header marking answers to requests that arrived in 0-RTT early data.
pub const EARLY_DATA_HEADER: &str = "quiclab-early-data";

/// Methods served from early data: safe ones, whose replay changes nothing (RFC 9110 §9.2.1).
fn is_replay_safe(m: &http::Method) -> bool {
    matches!(*m, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS)
}

/// The test site.
#[derive(Debug, Clone)]
pub struct Site {
    limits: Limits,
    /// Canonical static-file root, if any.
    root: Option<std::path::PathBuf>,
    /// When the site started: `Last-Modified` of the built-in pages.
    started: std::time::SystemTime,
    /// Server-side sessions of `/session` (bounded: `session::MAX_SESSIONS`).
    sessions: Arc<session::Sessions>,
    /// What `/cache-demo` resources received (bounded: `cache_demo::MAX_RUNS`).
    cache_log: Arc<cache_demo::CacheDemoLog>,
}

impl Site {
    /// A site enforcing `limits`, serving files from `root` if given.
    /// Blocking: resolves `root` on the file system.
    pub fn new(limits: Limits, root: Option<&std::path::Path>) -> std::io::Result<Arc<Site>> {
        let root = match root {
            Some(r) => Some(r.canonicalize()?),
            None => None,
        };
        Ok(Arc::new(Site {
            limits,
            root,
            started: std::time::SystemTime::now(),
            sessions: Default::default(),
            cache_log: Default::default(),
        }))
    }

    /// The canonical static-file root.
    pub fn root(&self) -> Option<&std::path::Path> {
        self.root.as_deref()
    }

    /// When the site started.
    pub fn started(&self) -> std::time::SystemTime {
        self.started
    }

    /// The server-side sessions of `/session`.
    pub(crate) fn sessions(&self) -> &session::Sessions {
        &self.sessions
    }

    /// What the `/cache-demo` resources received.
    fn cache_log(&self) -> &cache_demo::CacheDemoLog {
        &self.cache_log
    }

    /// The limits this site enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Serve one request.
    ///
    /// Requests that arrived in 0-RTT early data may be replays (RFC 9001 §9.2, RFC 8470): only
    /// safe methods (GET, HEAD, OPTIONS) are served from early data; any other method gets
    /// `425 Too Early` (RFC 8470 §5.2), which a client retries after the handshake. Every
    /// answer to an early request carries `quiclab-early-data: 1`.
    pub async fn handle(&self, req: Request<Body>, info: RequestInfo) -> Response<Body> {
        let early = info.early_data;
        let mut resp = if early && !is_replay_safe(req.method()) {
            tracing::info!(method = %req.method(), path = req.uri().path(), remote = %info.conn.remote(),
                "425 Too Early: unsafe method in 0-RTT early data");
            let path = req.uri().path().to_string();
            body::drain_in_background(req.into_body(), self.limits.max_body, path);
            body::text(http::StatusCode::TOO_EARLY, "too early: retry after the handshake\n")
        } else {
            routes::route(self, req, &info).await
        };
        if early {
            resp.headers_mut().insert(EARLY_DATA_HEADER, http::HeaderValue::from_static("1"));
        }
        resp
    }
}
