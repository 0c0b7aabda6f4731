//! Bodies and the small helpers every part of the site shares: empty and whole bodies, a
//! plain-text response, reading a request body under a limit or draining one nobody reads,
//! the `/bytes/N` pattern as a streaming body, bodies played one after the other, JSON answers
//! and the HEAD form of an answer.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};

use super::{Body, BodyError};

/// Period of the `/bytes/N` pattern: a prime, so a chunk delivered at the wrong offset (chunk
/// sizes are powers of two) never matches by accident.
pub(crate) const PATTERN_PERIOD: u64 = 251;

/// Byte `i` of the `/bytes/N` pattern.
pub fn pattern_byte(i: u64) -> u8 {
    (i % PATTERN_PERIOD) as u8
}

/// An empty body.
pub(crate) fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|never: Infallible| match never {}).boxed_unsync()
}

/// A body holding `data`.
pub(crate) fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never: Infallible| match never {}).boxed_unsync()
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// A JSON response (pretty-printed with two-space indents, as httpbin sends it).
pub(crate) fn json(value: &serde_json::Value) -> Response<Body> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// RFC 9110 §9.3.2: the answer to HEAD has the header fields GET's has, and no content.
pub(crate) fn head_response(resp: Response<Body>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    if let Some(n) = http_body::Body::size_hint(&body).exact() {
        parts.headers.entry(http::header::CONTENT_LENGTH).or_insert(n.into());
    }
    Response::from_parts(parts, empty())
}

/// A request body was larger than the limit.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub(crate) struct BodyTooLarge(pub(crate) u64);

/// Read a body to its end, refusing more than `limit` bytes.
pub(crate) async fn read_body(mut body: Body, limit: u64) -> Result<Bytes, BodyError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if buf.len() as u64 + data.len() as u64 > limit {
                // Keep reading and discarding the rest in the background (up to `limit` more
                // bytes), so a client still sending gets the 413 instead of a stream stopped under
                // it: quinn stops an unread stream with code 0, which clients report as a failed
                // request rather than as the answer.
                drain_in_background(body, limit, "(a request body over the limit)".into());
                return Err(Box::new(BodyTooLarge(limit)));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Read and discard a request body in the background, up to `limit` bytes.
pub(crate) fn drain_in_background(mut body: Body, limit: u64, path: String) {
    use futures_util::FutureExt;
    if http_body::Body::is_end_stream(&body) {
        return;
    }
    // Most requests that ignore their body have none, and its end has already arrived with the
    // headers: look once without waiting before paying for a task.
    let mut seen = 0u64;
    match body.frame().now_or_never() {
        Some(None) => return,
        Some(Some(Err(_))) => return,
        Some(Some(Ok(f))) => seen += f.into_data().map(|d| d.len() as u64).unwrap_or(0),
        None => {}
    }
    tokio::spawn(async move {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Ok(data) = f.into_data() {
                        seen += data.len() as u64;
                        if seen > limit {
                            tracing::warn!(%path, limit, "request body over the limit on a route that ignores it; stopped reading");
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(%path, error = %e, "request body ended with an error");
                    return;
                }
            }
        }
    });
}

/// Chunk size of pattern bodies: 64 KiB, a few QUIC/TLS records, large enough to amortise
/// per-frame costs.
const CHUNK: usize = 64 << 10;

/// `PATTERN_PERIOD + CHUNK` bytes of the pattern; any chunk is a zero-copy slice of it.
fn pattern_source() -> &'static Bytes {
    static SRC: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    SRC.get_or_init(|| (0..PATTERN_PERIOD + CHUNK as u64).map(pattern_byte).collect::<Vec<u8>>().into())
}

/// A body streaming pattern bytes `[start, end)`, one chunk at a time, never buffered whole.
#[derive(Debug)]
pub(crate) struct PatternBody {
    pos: u64,
    end: u64,
}

impl PatternBody {
    /// Pattern bytes from offset `start` (inclusive) to `end` (exclusive).
    pub(crate) fn new(start: u64, end: u64) -> Self {
        PatternBody { pos: start, end: end.max(start) }
    }
}

impl http_body::Body for PatternBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.pos >= self.end {
            return Poll::Ready(None);
        }
        let len = (self.end - self.pos).min(CHUNK as u64) as usize;
        let off = (self.pos % PATTERN_PERIOD) as usize;
        self.pos += len as u64;
        Poll::Ready(Some(Ok(Frame::data(pattern_source().slice(off..off + len)))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.end - self.pos)
    }
}

/// Bodies played one after the other.
pub(super) struct Chain {
    bodies: std::collections::VecDeque<Body>,
}

impl Chain {
    pub(super) fn new(bodies: Vec<Body>) -> Self {
        Chain { bodies: bodies.into() }
    }
}

impl http_body::Body for Chain {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        while let Some(front) = self.bodies.front_mut() {
            match Pin::new(front).poll_frame(cx) {
                Poll::Ready(None) => {
                    self.bodies.pop_front();
                }
                other => return other,
            }
        }
        Poll::Ready(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pattern_body_is_the_pattern() {
        let body = PatternBody::new(0, 200_000).boxed_unsync();
        let data = read_body(body, u64::MAX).await.unwrap();
        assert_eq!(data.len(), 200_000);
        assert!(data.iter().enumerate().all(|(i, b)| *b == pattern_byte(i as u64)));
        let tail = read_body(PatternBody::new(70_000, 70_010).boxed_unsync(), u64::MAX).await.unwrap();
        assert_eq!(&tail[..], &(70_000..70_010).map(pattern_byte).collect::<Vec<_>>()[..]);
    }

    #[tokio::test]
    async fn read_body_enforces_limit() {
        let err = read_body(full(vec![0u8; 11]), 10).await.unwrap_err();
        assert!(err.is::<BodyTooLarge>());
        assert_eq!(read_body(full(vec![1u8; 10]), 10).await.unwrap().len(), 10);
    }
}
