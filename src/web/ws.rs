//! WebSocket (RFC 6455) on the TLS/TCP listener: `/ws` echoes, `/mqtt` carries MQTT. With
//! `--mqtt-ws` the same endpoints are also served without TLS ([`plain_accept_loop`]).
//!
//! Both ways a WebSocket opens over TCP are served, on the same paths:
//!
//! * HTTP/1.1: `GET` with `Upgrade: websocket` (RFC 6455 §4.2.1), answered `101 Switching
//!   Protocols` with `Sec-WebSocket-Accept` (§4.2.2); hyper hands the connection over.
//! * HTTP/2: extended CONNECT with `:protocol = websocket` (RFC 8441 §4, §5), answered `200`;
//!   the stream becomes the WebSocket's byte stream.
//!
//! HTTP/3 (RFC 9220) is not served: h3 0.0.8 knows only the `:protocol` values `webtransport`
//! and `connect-udp` (`h3::ext::Protocol` is a closed enum), so a request with
//! `:protocol = websocket` fails to parse inside h3, which resets the stream with
//! `H3_MESSAGE_ERROR` before quiclab sees it (docs/site.md, "WebSocket").
//!
//! The framing (masking, fragmentation, control frames, UTF-8 checks, the close handshake) is
//! tokio-tungstenite's; this module does the opening handshake (hyper owns the HTTP side, so
//! tungstenite's own handshake cannot be used), the size limit, and maps tungstenite's errors to
//! close codes (RFC 6455 §7.4.1): too big → 1009, invalid UTF-8 → 1007, any other protocol
//! violation → 1002.
//!
//! Bounds: at most [`WsOptions::sessions`] WebSocket sessions at once (503 beyond), each
//! reassembling at most `max_message` bytes of one message (a frame may be no larger either).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::body;
use super::Body;
use crate::conn::{ConnInfo, Protocol};

/// The echo endpoint.
pub const ECHO_PATH: &str = "/ws";
/// MQTT over WebSocket (the path EMQX, mosquitto and HiveMQ clients use by default).
pub const MQTT_PATH: &str = "/mqtt";
/// The subprotocol MQTT over WebSocket must negotiate (MQTT 3.1.1 §6.0, MQTT 5.0 §6).
pub const MQTT_SUBPROTOCOL: &str = "mqtt";

/// RFC 6455 §1.3: the GUID appended to the client's key before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// How long a closing side waits for the peer's Close frame before it drops the connection.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// What the WebSocket endpoints need, shared by every connection of the TLS/TCP listener.
#[derive(Debug)]
pub(crate) struct WsOptions {
    /// Largest message (and frame) accepted; a larger one is answered with close code 1009.
    pub max_message: usize,
    /// One permit per open WebSocket session (both endpoints), so upgraded connections, which
    /// leave the TLS/TCP listener's own count when hyper hands them over, stay bounded.
    pub sessions: Arc<Semaphore>,
    /// The MQTT broker `/mqtt` attaches to; `None` with MQTT off (then `/mqtt` is the site's).
    pub broker: Option<crate::mqtt::Broker>,
    /// Fires on graceful shutdown: open sessions close with 1001 (going away).
    pub shutdown: CancellationToken,
    /// Tracks the sessions' tasks so a graceful shutdown waits for them.
    pub tracker: TaskTracker,
}

impl WsOptions {
    fn config(&self) -> WebSocketConfig {
        WebSocketConfig::default().max_message_size(Some(self.max_message)).max_frame_size(Some(self.max_message))
    }
}

/// Which endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Echo,
    Mqtt,
}

/// Take the request if it is for a WebSocket endpoint (or an extended CONNECT, which only this
/// module serves) and answer it: `Ok(response)`. Any other request is handed back: `Err(req)`.
#[allow(clippy::result_large_err)]
pub(crate) fn intercept(
    mut req: Request<Incoming>,
    conn: &ConnInfo,
    opts: &Arc<WsOptions>,
) -> Result<Response<Body>, Request<Incoming>> {
    let extended_connect = req.extensions().get::<hyper::ext::Protocol>().is_some();
    let endpoint = match req.uri().path() {
        ECHO_PATH => Endpoint::Echo,
        MQTT_PATH if opts.broker.is_some() => Endpoint::Mqtt,
        _ if extended_connect => {
            // RFC 8441 §5: an extended CONNECT names a resource like any request.
            return Ok(refuse(StatusCode::NOT_FOUND, "no WebSocket endpoint at this path (try /ws or /mqtt)", false));
        }
        _ => return Err(req),
    };
    let remote = conn.remote();
    let path = req.uri().path().to_string();
    let subprotocol = match check(&req, conn.protocol, endpoint) {
        Ok(p) => p,
        Err(r) => {
            tracing::info!(%remote, %path, protocol = %conn.protocol, "WebSocket refused ({}): {}", r.status, r.why);
            return Ok(refuse(r.status, r.why, r.status == StatusCode::UPGRADE_REQUIRED));
        }
    };
    let Ok(permit) = opts.sessions.clone().try_acquire_owned() else {
        tracing::warn!(%remote, %path, "WebSocket refused: session limit reached");
        return Ok(refuse(StatusCode::SERVICE_UNAVAILABLE, "too many WebSocket sessions; try again later", false));
    };
    let mqtt = match (endpoint, &opts.broker) {
        (Endpoint::Mqtt, Some(broker)) => {
            if broker.config().require_certificate {
                // This listener asks for no client certificate (HTTP clients have none).
                tracing::info!(%remote, "mqtt+ws: refused: the broker requires a client certificate");
                return Ok(refuse(
                    StatusCode::FORBIDDEN,
                    "the broker requires a client certificate, which MQTT over WebSocket cannot present here; use MQTT over TLS or QUIC",
                    false,
                ));
            }
            match broker.attach(Some(remote)) {
                Ok(att) => Some(att),
                Err(e) => {
                    tracing::info!(%remote, "mqtt+ws: {e}; refused");
                    return Ok(refuse(StatusCode::SERVICE_UNAVAILABLE, "too many MQTT connections", false));
                }
            }
        }
        _ => None,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let config = opts.config();
    let shutdown = opts.shutdown.clone();
    let protocol = conn.protocol;
    opts.tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%remote, %protocol, "WebSocket upgrade did not complete: {e}");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        tracing::debug!(%remote, %protocol, %path, "WebSocket open");
        match mqtt {
            Some(att) => crate::mqtt::ws::serve_websocket(ws, att, shutdown).await,
            None => echo(ws, remote, shutdown).await,
        }
        drop(permit);
    });
    Ok(accept(&req, subprotocol))
}

/// Why an opening handshake is refused.
struct Refusal {
    status: StatusCode,
    why: &'static str,
}

fn bad(why: &'static str) -> Refusal {
    Refusal { status: StatusCode::BAD_REQUEST, why }
}

/// Check an opening handshake; `Ok` carries the subprotocol to select.
fn check<B>(req: &Request<B>, protocol: Protocol, endpoint: Endpoint) -> Result<Option<&'static str>, Refusal> {
    let h = req.headers();
    if protocol == Protocol::H2 || req.version() == Version::HTTP_2 {
        // RFC 8441 §4: CONNECT with `:protocol`; §5: no Upgrade, Connection or Sec-WebSocket-Key.
        if req.method() != Method::CONNECT {
            return Err(bad("over HTTP/2 a WebSocket opens with an extended CONNECT (RFC 8441 §4)"));
        }
        match req.extensions().get::<hyper::ext::Protocol>() {
            Some(p) if p.as_str().eq_ignore_ascii_case("websocket") => {}
            Some(_) => return Err(bad("unsupported :protocol (only websocket is served)")),
            None => return Err(bad("CONNECT without :protocol = websocket (RFC 8441 §4)")),
        }
    } else {
        // RFC 6455 §4.2.1.
        if req.method() != Method::GET {
            return Err(bad("a WebSocket opening handshake is a GET request (RFC 6455 §4.2.1)"));
        }
        if req.version() < Version::HTTP_11 {
            return Err(bad("a WebSocket needs HTTP/1.1 or later (RFC 6455 §4.2.1)"));
        }
        if !has_token(h, header::UPGRADE, "websocket") {
            return Err(bad("missing Upgrade: websocket (RFC 6455 §4.2.1)"));
        }
        if !has_token(h, header::CONNECTION, "upgrade") {
            return Err(bad("missing Connection: Upgrade (RFC 6455 §4.2.1)"));
        }
        let mut keys = h.get_all(header::SEC_WEBSOCKET_KEY).iter();
        let valid = match (keys.next(), keys.next()) {
            (Some(k), None) => base64::engine::general_purpose::STANDARD
                .decode(k.as_bytes().trim_ascii())
                .is_ok_and(|nonce| nonce.len() == 16),
            _ => false,
        };
        if !valid {
            return Err(bad("Sec-WebSocket-Key must be one base64-encoded 16-byte value (RFC 6455 §4.1)"));
        }
    }
    // RFC 6455 §4.2.2: a version other than 13 gets 426 naming the version served.
    let mut versions = h.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (None, _) => return Err(bad("missing Sec-WebSocket-Version (RFC 6455 §4.1)")),
        (Some(v), None) if v.as_bytes().trim_ascii() == b"13" => {}
        _ => {
            return Err(Refusal {
                status: StatusCode::UPGRADE_REQUIRED,
                why: "unsupported Sec-WebSocket-Version: this server speaks version 13 (RFC 6455 §4.2.2)",
            })
        }
    }
    match endpoint {
        // The echo selects no subprotocol whatever is offered (RFC 6455 §4.2.2 allows none).
        Endpoint::Echo => Ok(None),
        Endpoint::Mqtt if has_token(h, header::SEC_WEBSOCKET_PROTOCOL, MQTT_SUBPROTOCOL) => Ok(Some(MQTT_SUBPROTOCOL)),
        Endpoint::Mqtt => Err(bad("MQTT over WebSocket needs the subprotocol mqtt (MQTT 3.1.1 §6.0)")),
    }
}

/// Whether a comma-separated header (any of its lines) lists `token`, ignoring case.
fn has_token(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2 item 5.4): base64(SHA-1(key + GUID)).
pub(crate) fn accept_key(key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// The answer that opens the WebSocket: 101 on HTTP/1.1, 200 on HTTP/2 (RFC 8441 §5).
fn accept<B>(req: &Request<B>, subprotocol: Option<&'static str>) -> Response<Body> {
    let mut resp = Response::new(body::empty());
    if req.headers().contains_key(header::SEC_WEBSOCKET_KEY) {
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    }
    let h = resp.headers_mut();
    if let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) {
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(v) = HeaderValue::from_str(&accept_key(key.as_bytes().trim_ascii())) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
    }
    if let Some(p) = subprotocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    resp
}

/// The plaintext WebSocket listener (`--mqtt-ws`, `ws://HOST:PORT/mqtt`, EMQX's port 8083
/// convention): HTTP/1.1 without TLS, and nothing but the WebSocket endpoints; any other request
/// gets 404. Connections are bounded by `permits` until they upgrade, WebSocket sessions by
/// [`WsOptions::sessions`] (shared with the HTTPS listener). Runs until shutdown.
pub(crate) async fn plain_accept_loop(
    listener: tokio::net::TcpListener,
    opts: Arc<WsOptions>,
    permits: Arc<Semaphore>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = opts.shutdown.cancelled() => break,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: log, pause briefly, keep serving.
                tracing::warn!(error = %e, "ws:// accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "ws:// connection limit reached; closing");
            continue;
        };
        let opts2 = opts.clone();
        opts.tracker.spawn(async move {
            plain_connection(stream, remote, opts2).await;
            drop(permit);
        });
    }
}

/// One plaintext HTTP/1.1 connection of [`plain_accept_loop`], until it upgrades or ends.
async fn plain_connection(stream: tokio::net::TcpStream, remote: SocketAddr, opts: Arc<WsOptions>) {
    use std::os::fd::AsFd;
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%remote, error = %e, "TCP_NODELAY failed");
    }
    let Ok(local) = stream.local_addr() else { return };
    let fd = match stream.as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "could not duplicate the socket");
            return;
        }
    };
    let conn = Arc::new(ConnInfo::tcp(fd, local, remote, None, Protocol::Http11, false));
    let svc_opts = opts.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let resp = match intercept(req, &conn, &svc_opts) {
            Ok(resp) => resp,
            Err(req) => {
                tracing::info!(%remote, path = req.uri().path(), "ws:// listener: not a WebSocket endpoint (404)");
                refuse(
                    StatusCode::NOT_FOUND,
                    "this plaintext listener serves only WebSockets: /mqtt (subprotocol mqtt) and /ws",
                    false,
                )
            }
        };
        std::future::ready(Ok::<_, std::convert::Infallible>(resp))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
    // `with_upgrades`: after a 101 the connection is handed to the WebSocket task.
    let served = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
    tokio::pin!(served);
    let result = tokio::select! {
        r = served.as_mut() => r,
        _ = opts.shutdown.cancelled() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "ws:// connection ended with an error");
    }
}

/// A refused opening handshake: the status and a line saying why.
fn refuse(status: StatusCode, why: &'static str, version_hint: bool) -> Response<Body> {
    let mut resp = Response::new(body::full(format!("{why}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if version_hint {
        resp.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    }
    resp
}

/// Send a Close frame, wait (bounded) for the peer's, then shut the byte stream down.
pub(crate) async fn close<S>(ws: &mut WebSocketStream<S>, code: CloseCode, why: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame { code, reason: why.into() };
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        if ws.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
    finish(ws).await;
}

/// Shut the byte stream down (TLS close_notify on HTTP/1.1, END_STREAM on HTTP/2), bounded.
pub(crate) async fn finish<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_WAIT, ws.get_mut().shutdown()).await;
}

/// `/ws`: send every text and binary message back as it came. tungstenite answers pings and
/// echoes the peer's Close frame (RFC 6455 §5.5.1-2); a malformed or oversized message closes
/// the connection with its code.
async fn echo<S>(mut ws: WebSocketStream<S>, remote: SocketAddr, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = shutdown.cancelled() => {
                close(&mut ws, CloseCode::Away, "server shutting down").await;
                return;
            }
        };
        let reply = match msg {
            None => break,
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => m,
            // Pings are answered by tungstenite; pongs need nothing.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            // tungstenite has queued the echo of the peer's Close; reading on sends it and ends.
            Some(Ok(Message::Close(frame))) => {
                tracing::debug!(%remote, ?frame, "WebSocket closed by the peer");
                continue;
            }
            Some(Err(e)) => {
                match crate::mqtt::ws::close_code(&e) {
                    Some((code, why)) => {
                        tracing::info!(%remote, "WebSocket /ws: {e}; closing with {}", u16::from(code));
                        close(&mut ws, code, why).await;
                    }
                    None => tracing::debug!(%remote, "WebSocket /ws ended: {e}"),
                }
                return;
            }
        };
        if let Err(e) = ws.send(reply).await {
            tracing::debug!(%remote, "WebSocket /ws: send failed: {e}");
            return;
        }
    }
    finish(&mut ws).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of RFC 6455 §1.3.
    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    fn h1(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/ws").version(Version::HTTP_11);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    const GOOD: &[(&str, &str)] = &[
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];

    #[test]
    fn handshake_checks() {
        assert!(check(&h1(GOOD), Protocol::Http11, Endpoint::Echo).is_ok());
        let without = |name: &str| {
            let hs: Vec<_> = GOOD.iter().copied().filter(|(k, _)| *k != name).collect();
            check(&h1(&hs), Protocol::Http11, Endpoint::Echo).err().map(|r| r.status)
        };
        for name in ["upgrade", "connection", "sec-websocket-key", "sec-websocket-version"] {
            assert_eq!(without(name), Some(StatusCode::BAD_REQUEST), "without {name}");
        }
        let with = |name: &str, value: &str| {
            let mut hs: Vec<_> = GOOD.iter().copied().filter(|(k, _)| *k != name).collect();
            hs.push((name, value));
            check(&h1(&hs), Protocol::Http11, Endpoint::Echo).err().map(|r| r.status)
        };
        assert_eq!(with("sec-websocket-version", "8"), Some(StatusCode::UPGRADE_REQUIRED));
        assert_eq!(with("sec-websocket-key", "c2hvcnQ="), Some(StatusCode::BAD_REQUEST));
        assert_eq!(with("sec-websocket-key", "not base64!"), Some(StatusCode::BAD_REQUEST));
        // MQTT needs the subprotocol.
        assert_eq!(
            check(&h1(GOOD), Protocol::Http11, Endpoint::Mqtt).err().map(|r| r.status),
            Some(StatusCode::BAD_REQUEST)
        );
        let mut hs = GOOD.to_vec();
        hs.push(("sec-websocket-protocol", "mqttv3.1, mqtt"));
        assert!(matches!(check(&h1(&hs), Protocol::Http11, Endpoint::Mqtt), Ok(Some("mqtt"))));
        // Wrong method.
        let mut post = h1(GOOD);
        *post.method_mut() = Method::POST;
        assert_eq!(
            check(&post, Protocol::Http11, Endpoint::Echo).err().map(|r| r.status),
            Some(StatusCode::BAD_REQUEST)
        );
    }
}
