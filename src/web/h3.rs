//! The HTTP/3 connection loop: h3 over h3-quinn, each request handed to the [`Site`].
//!
//! **Which requests arrived in 0-RTT.** The endpoint accepts connections through
//! `Connecting::into_0rtt()`; on the server its `ZeroRttAccepted` future resolves exactly when
//! the handshake completes (quinn handles the `Connected` event before it wakes stream
//! acceptors for the packets that follow). Each request is accepted eagerly, and at that moment
//! a shared copy of the future is polled once without waiting: still pending means the stream
//! was opened by early data (RFC 9001 §4.6.1). The only error is toward "not early", if a
//! request sat unaccepted past the handshake, which the eager accept loop avoids.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::future::FutureExt;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio_util::sync::CancellationToken;

use super::{Body, BodyError, Site};
use crate::conn::{ConnInfo, RequestInfo};

type H3Conn = h3::server::Connection<h3_quinn::Connection, Bytes>;
type SendHalf = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type RecvHalf = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// Serve HTTP/3 on an accepted QUIC connection until the peer closes it, the connection fails,
/// or `shutdown` fires (then GOAWAY, RFC 9114 §5.2, and the requests in flight finish).
pub(crate) async fn serve_connection(
    site: Arc<Site>,
    conn: Arc<ConnInfo>,
    quic: quinn::Connection,
    handshake_done: crate::conn::HandshakeDone,
    shutdown: CancellationToken,
) {
    let remote = quic.remote_address();
    let h3conn_quic = quic.clone();
    // Set-up and shutdown futures are boxed so the connection's long-lived state stays small.
    let mut builder = h3::server::builder();
    builder.max_field_section_size(site.limits().max_header_bytes as u64);
    // Extended CONNECT (RFC 9220) stays off: h3 0.0.8 cannot parse `:protocol = websocket`, so
    // advertising it would invite WebSocket clients only to reset their streams (docs/site.md).
    let mut h3conn: H3Conn = match Box::pin(builder.build(h3_quinn::Connection::new(quic))).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "HTTP/3 connection setup failed");
            return;
        }
    };
    // Request tasks of this connection, so a graceful shutdown knows when they are done.
    let requests = tokio_util::task::TaskTracker::new();
    let mut draining = false;
    loop {
        let accepted = tokio::select! {
            r = h3conn.accept() => r,
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                requests.close();
                // RFC 9114 §5.2: GOAWAY names the first request id that will not be served;
                // requests already accepted finish.
                if let Err(e) = Box::pin(h3conn.shutdown(0)).await {
                    tracing::debug!(%remote, error = %e, "sending GOAWAY failed");
                    return;
                }
                continue;
            }
            _ = requests.wait(), if draining => {
                // RFC 9114 §5.2: once the requests in flight are done, close the connection.
                // The last responses may still be in flight, unacknowledged, and a close
                // discards what is unsent: give them a few RTTs, or until the client closes.
                let linger = (h3conn_quic.rtt() * 3).clamp(Duration::from_millis(20), Duration::from_secs(1));
                tokio::select! {
                    _ = h3conn_quic.closed() => {}
                    _ = tokio::time::sleep(linger) => {}
                }
                quic_close(&h3conn_quic, "server shutting down");
                break;
            }
        };
        match accepted {
            Ok(Some(resolver)) => {
                // Read the 0-RTT signal now, at accept time (see the module doc).
                let early_data = handshake_done.clone().now_or_never().is_none();
                let info = RequestInfo { conn: conn.clone(), early_data };
                let site = site.clone();
                // Both halves boxed, so the task's own future is about 1 KB (mostly the
                // resolver) instead of 11 KB: tokio copies it when spawning and again when
                // storing the output, and those copies were 4–7% of the server's CPU at 1 KiB
                // responses (docs/BENCHMARKS.md, flame graphs).
                requests.spawn(async move {
                    match Box::pin(resolver.resolve_request()).await {
                        Ok((req, stream)) => Box::pin(serve_request(site, req, stream, info)).await,
                        Err(e) => log_stream_error("reading request headers", &e),
                    }
                });
            }
            Ok(None) => break,
            Err(e) => {
                if !e.is_h3_no_error() {
                    tracing::debug!(%remote, error = %e, "HTTP/3 connection ended");
                }
                break;
            }
        }
    }
}

/// Close with H3_NO_ERROR (RFC 9114 §8.1).
fn quic_close(conn: &quinn::Connection, reason: &str) {
    conn.close(quinn::VarInt::from_u32(0x100), reason.as_bytes());
}

fn log_stream_error(what: &str, e: &h3::error::StreamError) {
    tracing::debug!(error = %e, "HTTP/3 stream error while {what}");
}

async fn serve_request(
    site: Arc<Site>,
    req: Request<()>,
    stream: h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    info: RequestInfo,
) {
    let (mut send, recv) = stream.split();
    let req = req.map(|()| recv_body(recv));
    let conn = info.conn.clone();
    // Notice a client address change at the request, too (the accept loop sees none on a
    // connection busy with one long download).
    conn.remote();
    let resp = site.handle(req, info).await;
    if let Err(e) = send_response(&mut send, resp, &conn).await {
        log_stream_error("sending the response", &e);
    }
}

async fn send_response(
    send: &mut SendHalf,
    resp: Response<Body>,
    conn: &ConnInfo,
) -> Result<(), h3::error::StreamError> {
    let (mut parts, mut body) = resp.into_parts();
    // What hyper adds on HTTP/2 and HTTP/1.1, so both transports answer alike:
    // Date (RFC 9110 §6.6.1) and, for a body of known size, Content-Length (RFC 9110 §8.6).
    if !parts.headers.contains_key(http::header::DATE) {
        if let Ok(v) = http::HeaderValue::from_str(&httpdate::fmt_http_date(std::time::SystemTime::now())) {
            parts.headers.insert(http::header::DATE, v);
        }
    }
    if !parts.headers.contains_key(http::header::CONTENT_LENGTH) && !body_must_be_empty(parts.status) {
        if let Some(n) = http_body::Body::size_hint(&body).exact() {
            parts.headers.insert(http::header::CONTENT_LENGTH, n.into());
        }
    }
    send.send_response(Response::from_parts(parts, ())).await?;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => {
                    send.send_data(data).await?;
                    // quinn raises no event on migration: look at the path once per chunk.
                    conn.remote();
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        send.send_trailers(trailers).await?;
                        return Ok(());
                    }
                }
            },
            Err(e) => {
                // The response cannot be completed: reset so the client does not take a
                // truncated body for a whole one (RFC 9114 §4.1.1).
                tracing::warn!(error = %e, "response body failed; resetting the stream");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return Ok(());
            }
        }
    }
    send.finish().await
}

/// RFC 9110 §6.4.1: 1xx, 204 and 304 responses carry no content (and no Content-Length for 204).
fn body_must_be_empty(status: http::StatusCode) -> bool {
    status.is_informational() || status == http::StatusCode::NO_CONTENT || status == http::StatusCode::NOT_MODIFIED
}

/// The receive half of a request stream as a [`Body`].
fn recv_body(recv: RecvHalf) -> Body {
    let stream = futures_util::stream::unfold(Some(recv), |state| async move {
        let mut recv = state?;
        match recv.recv_data().await {
            Ok(Some(mut buf)) => {
                let data = buf.copy_to_bytes(buf.remaining());
                Some((Ok(Frame::data(data)), Some(recv)))
            }
            Ok(None) => None,
            Err(e) => Some((Err(Box::new(e) as BodyError), None)),
        }
    });
    StreamBody::new(stream).boxed_unsync()
}
