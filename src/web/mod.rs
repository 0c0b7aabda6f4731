//! The test site: ONE transport-independent service for HTTP/3 and HTTP/2 alike.
//!
//! [`Site::handle`] maps `(http::Request, RequestInfo)` to an `http::Response` with a streaming
//! body. The HTTP/3 loop ([`h3`]) and hyper ([`h2`]) only translate between their stream types
//! and these; everything a client can observe about the site is decided here, so a comparison
//! of the two transports compares transports, not two sites.

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
}

impl Site {
    /// A site enforcing `limits`.
    pub fn new(limits: Limits) -> Arc<Site> {
        Arc::new(Site { limits })
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
