//! The test site: ONE transport-independent service for HTTP/3 and HTTP/2 alike.
//!
//! [`Site::handle`] maps `(http::Request, RequestInfo)` to an `http::Response` with a streaming
//! body. The HTTP/3 loop ([`h3`]) and hyper ([`h2`]) only translate between their stream types
//! and these; everything a client can observe about the site is decided here, so a comparison
//! of the two transports compares transports, not two sites.

pub mod files;
pub mod h2;
pub mod h3;
pub mod routes;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;

use crate::config::Limits;
use crate::stats::RequestInfo;

/// Errors a body stream can carry (transport resets, limits).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body, for requests and responses on both transports.
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// The test site.
#[derive(Debug, Clone)]
pub struct Site {
    limits: Limits,
    /// Canonical static-file root, if any.
    root: Option<std::path::PathBuf>,
    /// When the site started: `Last-Modified` of the built-in pages.
    started: std::time::SystemTime,
}

impl Site {
    /// A site enforcing `limits`, serving files from `root` if given.
    pub fn new(limits: Limits, root: Option<&std::path::Path>) -> std::io::Result<Arc<Site>> {
        let root = match root {
            Some(r) => Some(
                r.canonicalize().map_err(|e| std::io::Error::new(e.kind(), format!("--root {}: {e}", r.display())))?,
            ),
            None => None,
        };
        Ok(Arc::new(Site { limits, root, started: std::time::SystemTime::now() }))
    }

    /// The canonical static-file root.
    pub fn root(&self) -> Option<&std::path::Path> {
        self.root.as_deref()
    }

    /// When the site started.
    pub fn started(&self) -> std::time::SystemTime {
        self.started
    }

    /// The limits this site enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Serve one request.
    pub async fn handle(&self, req: Request<Body>, info: RequestInfo) -> Response<Body> {
        routes::route(self, req, &info).await
    }
}
