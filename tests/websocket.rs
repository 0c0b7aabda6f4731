//! WebSocket on the TLS/TCP listener, with tokio-tungstenite as the client: the `/ws` echo over
//! HTTP/1.1 (Upgrade) and HTTP/2 (hyper's extended CONNECT, RFC 8441), its limits and close
//! codes, refused handshakes, and MQTT over WebSocket (`/mqtt`) on the same broker as MQTT/TCP.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::TestServer;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use quiclab::mqtt::client::{self, Client, ClientOptions};
use quiclab::mqtt::codec::{self, Decoder, Packet, Pid, Publish, QoS, QosPid, Subscribe};
use quiclab::tls::Trust;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(10);
/// The server's message limit in these tests (`ServerConfig::ws_max_message`).
const LIMIT: usize = 64 << 10;

async fn start() -> TestServer {
    TestServer::start_with(|c| c.ws_max_message = LIMIT).await
}

/// A TLS connection to the HTTP listener offering one ALPN.
async fn tls(ts: &TestServer, alpn: &[u8]) -> TlsStream<TcpStream> {
    let cfg = quiclab::tls::client_config(&Trust::CaFile(ts.ca()), &[alpn], false).expect("client TLS config");
    let tcp = TcpStream::connect(ts.server.tcp_addr()).await.expect("connect");
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    tls
}

/// The client's own limits: large enough never to be the side that refuses.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(64 << 20)).max_frame_size(Some(64 << 20))
}

/// A WebSocket over HTTP/1.1 (tungstenite's client handshake checks Sec-WebSocket-Accept and,
/// when one is offered, that the server selected the subprotocol).
async fn ws_h1(ts: &TestServer, path: &str, subprotocol: Option<&str>) -> WebSocketStream<TlsStream<TcpStream>> {
    let url = format!("wss://localhost:{}{path}", ts.server.tcp_addr().port());
    handshake_h1(&url, subprotocol, tls(ts, b"http/1.1").await).await
}

/// The HTTP/1.1 opening handshake for `url` on `io`, offering `subprotocol`; asserts 101 and the
/// subprotocol's selection.
async fn handshake_h1<S>(url: &str, subprotocol: Option<&str>, io: S) -> WebSocketStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = subprotocol {
        req.headers_mut().insert("sec-websocket-protocol", p.parse().unwrap());
    }
    let (ws, resp) =
        tokio::time::timeout(WAIT, tokio_tungstenite::client_async_with_config(req, io, Some(client_config())))
            .await
            .expect("handshake in time")
            .expect("WebSocket handshake");
    assert_eq!(resp.status(), 101);
    if let Some(p) = subprotocol {
        assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), p);
    }
    ws
}

type H2Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// An HTTP/2 connection (hyper's client) to the HTTP listener.
async fn h2_conn(ts: &TestServer) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let io = TokioIo::new(tls(ts, b"h2").await);
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.expect("h2 handshake");
    tokio::spawn(conn);
    // One ordinary request first: its answer comes after the server's SETTINGS, which must
    // have enabled extended CONNECT (RFC 8441 §3) before the client may use it.
    let url = format!("https://localhost:{}/", ts.server.tcp_addr().port());
    let resp = send.send_request(http::Request::get(url).body(Empty::new()).unwrap()).await.expect("GET /");
    assert_eq!(resp.status(), 200);
    send
}

/// An extended CONNECT (RFC 8441 §4) for `path`: the response, upgradable on 200.
async fn h2_connect(
    send: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    ts: &TestServer,
    path: &str,
    subprotocol: Option<&str>,
) -> http::Response<hyper::body::Incoming> {
    let url = format!("https://localhost:{}{path}", ts.server.tcp_addr().port());
    let mut b = http::Request::connect(url).header("sec-websocket-version", "13");
    if let Some(p) = subprotocol {
        b = b.header("sec-websocket-protocol", p);
    }
    let mut req = b.body(Empty::new()).unwrap();
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    tokio::time::timeout(WAIT, send.send_request(req)).await.expect("CONNECT answered in time").expect("CONNECT")
}

async fn ws_h2(ts: &TestServer, path: &str, subprotocol: Option<&str>) -> H2Ws {
    let mut send = h2_conn(ts).await;
    let resp = h2_connect(&mut send, ts, path, subprotocol).await;
    assert_eq!(resp.status(), 200, "extended CONNECT refused");
    if let Some(p) = subprotocol {
        assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), p);
    }
    let up = hyper::upgrade::on(resp).await.expect("upgrade");
    WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Client, Some(client_config())).await
}

/// The next message that is not a ping or pong.
async fn next<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = tokio::time::timeout(WAIT, ws.next()).await.expect("a message in time");
        match m {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return m,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// The close code the server sends next.
async fn close_code<S>(ws: &mut WebSocketStream<S>) -> u16
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match next(ws).await {
        Message::Close(Some(f)) => u16::from(f.code),
        other => panic!("expected Close, got {other:?}"),
    }
}

/// Text, binary, ping, a fragmented message, the size limit, invalid UTF-8 and the close
/// handshake, on any WebSocket to `/ws` (each `open()` is a new one).
async fn echo_suite<S, F, Fut>(open: F)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = WebSocketStream<S>>,
{
    let mut ws = open().await;
    ws.send(Message::text("hello, WebSocket")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("hello, WebSocket"));
    let bin: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    ws.send(Message::binary(bin.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(bin));
    // RFC 6455 §5.5.3: a Pong with the Ping's payload.
    ws.send(Message::Ping(Bytes::from_static(b"are you there"))).await.unwrap();
    let pong = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    assert!(matches!(&pong, Some(Ok(Message::Pong(p))) if &p[..] == b"are you there"), "{pong:?}");
    // RFC 6455 §5.4: a message in three fragments, a Ping between two of them; one message back.
    ws.send(Message::Frame(Frame::message(Bytes::from_static(b"frag"), OpCode::Data(Data::Text), false)))
        .await
        .unwrap();
    ws.send(Message::Ping(Bytes::from_static(b"mid"))).await.unwrap();
    ws.send(Message::Frame(Frame::message(Bytes::from_static(b"men"), OpCode::Data(Data::Continue), false)))
        .await
        .unwrap();
    ws.send(Message::Frame(Frame::message(Bytes::from_static(b"ted"), OpCode::Data(Data::Continue), true)))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, Message::text("fragmented"));
    // Exactly the limit is echoed.
    let at_limit = vec![b'x'; LIMIT];
    ws.send(Message::binary(at_limit.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(at_limit));
    // The client's close code comes back (RFC 6455 §5.5.1).
    ws.send(Message::Close(Some(CloseFrame { code: CloseCode::from(4000), reason: "bye".into() }))).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 4000);

    // One byte over the limit: 1009. Also as fragments that only together exceed it.
    let mut ws = open().await;
    ws.send(Message::binary(vec![0u8; LIMIT + 1])).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1009);
    let mut ws = open().await;
    let half = Bytes::from(vec![b'y'; LIMIT / 2 + 1]);
    ws.send(Message::Frame(Frame::message(half.clone(), OpCode::Data(Data::Binary), false))).await.unwrap();
    ws.send(Message::Frame(Frame::message(half, OpCode::Data(Data::Continue), true))).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1009);

    // Invalid UTF-8 in a text message: 1007 (RFC 6455 §8.1).
    let mut ws = open().await;
    ws.send(Message::Frame(Frame::message(Bytes::from_static(b"ok \xff\xfe"), OpCode::Data(Data::Text), true)))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, 1007);

    // A continuation with no message begun: 1002.
    let mut ws = open().await;
    ws.send(Message::Frame(Frame::message(Bytes::from_static(b"orphan"), OpCode::Data(Data::Continue), true)))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, 1002);
}

#[tokio::test]
async fn echo_over_http11() {
    let ts = start().await;
    echo_suite(|| ws_h1(&ts, "/ws", None)).await;
    ts.stop().await;
}

#[tokio::test]
async fn echo_over_http2_extended_connect() {
    let ts = start().await;
    echo_suite(|| ws_h2(&ts, "/ws", None)).await;
    // Several WebSockets share one HTTP/2 connection, each a stream.
    let mut send = h2_conn(&ts).await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let resp = h2_connect(&mut send, &ts, "/ws", None).await;
        assert_eq!(resp.status(), 200);
        let up = hyper::upgrade::on(resp).await.unwrap();
        sockets.push(WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Client, None).await);
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.send(Message::text(format!("stream {i}"))).await.unwrap();
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        assert_eq!(next(ws).await, Message::text(format!("stream {i}")));
    }
    ts.stop().await;
}

/// Send a raw HTTP/1.1 request over TLS; the status and the response head.
async fn raw_h1(ts: &TestServer, request: &str) -> (u16, String) {
    let (status, head, _) = raw_h1_io(ts, request).await;
    (status, head)
}

/// [`raw_h1`], keeping the connection (after a 101, the WebSocket's bytes follow on it).
async fn raw_h1_io(ts: &TestServer, request: &str) -> (u16, String, TlsStream<TcpStream>) {
    let mut io = tls(ts, b"http/1.1").await;
    io.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, io.read(&mut byte)).await.expect("answer in time").unwrap();
        assert!(n > 0, "connection closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    (status, head, io)
}

fn upgrade_request(method: &str, path: &str, extra: &[&str], skip: &str) -> String {
    let mut lines = vec![
        format!("{method} {path} HTTP/1.1"),
        "Host: localhost".into(),
        "Upgrade: websocket".into(),
        "Connection: Upgrade".into(),
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==".into(),
        "Sec-WebSocket-Version: 13".into(),
        "Content-Length: 0".into(),
    ];
    if !skip.is_empty() {
        lines.retain(|l| !l.to_ascii_lowercase().starts_with(skip));
    }
    lines.extend(extra.iter().map(|s| s.to_string()));
    lines.join("\r\n") + "\r\n\r\n"
}

#[tokio::test]
async fn bad_handshakes_are_refused() {
    let ts = start().await;
    // The RFC 6455 §1.3 example key gets the example's accept value.
    let (status, head) = raw_h1(&ts, &upgrade_request("GET", "/ws", &[], "")).await;
    assert_eq!(status, 101, "{head}");
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    for (what, req, want) in [
        ("no key", upgrade_request("GET", "/ws", &[], "sec-websocket-key"), 400),
        ("a short key", upgrade_request("GET", "/ws", &["Sec-WebSocket-Key: c2hvcnQ="], "sec-websocket-key"), 400),
        ("no Upgrade", upgrade_request("GET", "/ws", &[], "upgrade"), 400),
        ("no Connection: Upgrade", upgrade_request("GET", "/ws", &[], "connection"), 400),
        ("no version", upgrade_request("GET", "/ws", &[], "sec-websocket-version"), 400),
        ("version 8", upgrade_request("GET", "/ws", &["Sec-WebSocket-Version: 8"], "sec-websocket-version"), 426),
        ("POST", upgrade_request("POST", "/ws", &[], ""), 400),
        ("MQTT without its subprotocol", upgrade_request("GET", "/mqtt", &[], ""), 400),
    ] {
        let (status, head) = raw_h1(&ts, &req).await;
        assert_eq!(status, want, "{what}: {head}");
        if want == 426 {
            assert!(head.contains("sec-websocket-version: 13"), "{what}: {head}");
        }
    }
    // HTTP/2: a GET to /ws, and an extended CONNECT to a path with no WebSocket.
    let mut send = h2_conn(&ts).await;
    let url = format!("https://localhost:{}/ws", ts.server.tcp_addr().port());
    let resp = send.send_request(http::Request::get(url).body(Empty::new()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(h2_connect(&mut send, &ts, "/nowhere", None).await.status(), 404);
    assert_eq!(h2_connect(&mut send, &ts, "/mqtt", None).await.status(), 400);
    // The server still serves.
    let mut ws = ws_h1(&ts, "/ws", None).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("still here"));
    ts.stop().await;
}

/// MQTT packets over a WebSocket: encoded with quiclab's codec, decoded from binary messages.
struct WsMqtt<S> {
    ws: WebSocketStream<S>,
    decoder: Decoder,
    got: std::collections::VecDeque<Packet>,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> WsMqtt<S> {
    fn new(ws: WebSocketStream<S>) -> Self {
        WsMqtt { ws, decoder: Decoder::new(1 << 20), got: Default::default() }
    }

    /// Send packets in one binary message, or one byte per message with `split`.
    async fn send(&mut self, packets: &[Packet], split: bool) {
        let mut bytes = Vec::new();
        for p in packets {
            codec::encode(p, quiclab::mqtt::codec::Version::V3, &mut bytes).unwrap();
        }
        if split {
            for b in bytes {
                self.ws.feed(Message::binary(vec![b])).await.unwrap();
            }
            self.ws.flush().await.unwrap();
        } else {
            self.ws.send(Message::binary(bytes)).await.unwrap();
        }
    }

    async fn recv(&mut self) -> Packet {
        loop {
            if let Some(p) = self.got.pop_front() {
                return p;
            }
            match next(&mut self.ws).await {
                Message::Binary(b) => {
                    let mut out = Vec::new();
                    self.decoder.feed(&b, &mut out).expect("valid MQTT from the broker");
                    self.got.extend(out);
                }
                other => panic!("expected a binary message, got {other:?}"),
            }
        }
    }
}

/// Subscribe over a WebSocket, publish over MQTT/TCP and over a WebSocket (a CONNECT and a
/// PUBLISH in one message), receive both; QoS 1 is acknowledged.
async fn mqtt_suite<S, F, Fut>(ts: &TestServer, open: F)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = WebSocketStream<S>>,
{
    let mut sub = WsMqtt::new(open().await);
    // CONNECT split over one message per byte (MQTT 3.1.1 §6.0 allows any split).
    sub.send(&[Packet::connect(quiclab::mqtt::codec::connect_v3("ws-sub", 30))], true).await;
    assert!(matches!(sub.recv().await, Packet::Connack(c) if c.reason_code == codec::ConnectReasonCode::Success));
    let pid = Pid::try_from(1u16).unwrap();
    sub.send(
        &[Packet::Subscribe(Subscribe::new(
            pid,
            vec![(client::filter("ws/#").unwrap(), quiclab::mqtt::codec::v3_options(QoS::Level1))],
        ))],
        false,
    )
    .await;
    assert!(matches!(sub.recv().await, Packet::Suback(_)));

    // From MQTT over TCP, QoS 1.
    let opts = ClientOptions { client_id: "tcp-pub".into(), connect_timeout: WAIT, ..ClientOptions::default() };
    let mut tcp = Client::connect(&ts.mqtt_tcp_url(), &opts).await.expect("MQTT/TCP connect");
    tcp.publish("ws/a", QoS::Level1, false, "from tcp").await.unwrap();
    match sub.recv().await {
        Packet::Publish(p) => {
            assert_eq!(&p.payload[..], b"from tcp");
            assert_eq!(&p.topic_name[..], "ws/a");
            sub.send(&[Packet::puback(p.qos_pid.pid().expect("QoS 1"))], false).await;
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }

    // From another WebSocket: CONNECT, PUBLISH and DISCONNECT in one message.
    let mut publ = WsMqtt::new(open().await);
    let publish = Publish::new(QosPid::Level0, client::topic("ws/b").unwrap(), Bytes::from_static(b"from ws"));
    publ.send(&[Packet::connect(quiclab::mqtt::codec::connect_v3("ws-pub", 30)), Packet::Publish(publish)], false)
        .await;
    assert!(matches!(publ.recv().await, Packet::Connack(_)));
    match sub.recv().await {
        Packet::Publish(p) => assert_eq!(&p.payload[..], b"from ws"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    // DISCONNECT: the broker ends the connection and the WebSocket closes normally.
    publ.send(&[Packet::disconnect(quiclab::mqtt::codec::DisconnectReasonCode::NormalDisconnect)], false).await;
    assert_eq!(close_code(&mut publ.ws).await, 1000);

    // A text message breaks MQTT 3.1.1 §6.0: 1003.
    sub.ws.send(Message::text("not MQTT")).await.unwrap();
    assert_eq!(close_code(&mut sub.ws).await, 1003);
    tcp.disconnect().await.unwrap();
}

#[tokio::test]
async fn mqtt_over_websocket_http11() {
    let ts = start().await;
    mqtt_suite(&ts, || ws_h1(&ts, "/mqtt", Some("mqtt"))).await;
    ts.stop().await;
}

#[tokio::test]
async fn mqtt_over_websocket_http2() {
    let ts = start().await;
    mqtt_suite(&ts, || ws_h2(&ts, "/mqtt", Some("mqtt"))).await;
    ts.stop().await;
}

/// Shutdown closes open WebSockets with 1001 (going away).
#[tokio::test]
async fn shutdown_closes_with_going_away() {
    let ts = start().await;
    let mut ws = ws_h1(&ts, "/ws", None).await;
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("x"));
    let stop = tokio::spawn(ts.stop());
    assert_eq!(close_code(&mut ws).await, 1001);
    drop(ws);
    stop.await.unwrap();
}

/// One raw frame: `first` is FIN, RSV and the opcode; client frames are masked unless `masked`
/// is false (RFC 6455 §5.2, §5.3).
fn raw_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut f = vec![first];
    match payload.len() {
        n @ 0..=125 => f.push(mask_bit | n as u8),
        n @ 126..=65535 => {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x37, 0xfa, 0x21, 0x3d];
    if masked {
        f.extend_from_slice(&key);
    }
    f.extend(payload.iter().enumerate().map(|(i, b)| if masked { b ^ key[i % 4] } else { *b }));
    f
}

/// The code of the server's next Close frame on a raw connection (frames before it skipped).
async fn raw_close_code(io: &mut TlsStream<TcpStream>) -> u16 {
    loop {
        let mut h = [0u8; 2];
        tokio::time::timeout(WAIT, io.read_exact(&mut h)).await.expect("a frame in time").expect("a frame");
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked (RFC 6455 §5.1)");
        let len = match h[1] & 0x7f {
            126 => io.read_u16().await.unwrap() as usize,
            127 => io.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        io.read_exact(&mut payload).await.unwrap();
        if h[0] & 0x0f == 0x8 {
            return if len >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 };
        }
    }
}

/// The framing cases of the Autobahn fuzzing client that a server must fail (sections 1-7:
/// masking, reserved bits and opcodes, control frame rules, close codes and payloads,
/// interleaved messages), sent as raw bytes over HTTP/1.1, each on its own WebSocket. The
/// Autobahn suite itself cannot run here: `wstest` needs Python 2 (docs/site.md, "WebSocket").
#[tokio::test]
async fn framing_violations_get_the_close_code_rfc_6455_names() {
    let ts = start().await;
    let close = |code: u16, reason: &[u8]| {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        raw_frame(0x88, &p, true)
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("an unmasked client frame (§5.1)", raw_frame(0x81, b"hi", false), 1002),
        ("RSV1 without an extension (§5.2)", raw_frame(0xC1, b"hi", true), 1002),
        ("RSV3 on a ping", raw_frame(0x99, b"", true), 1002),
        ("reserved data opcode 0x3", raw_frame(0x83, b"", true), 1002),
        ("reserved control opcode 0xB", raw_frame(0x8B, b"", true), 1002),
        ("a ping of 126 bytes (§5.5: at most 125)", raw_frame(0x89, &[0u8; 126], true), 1002),
        ("a fragmented ping (§5.5)", raw_frame(0x09, b"x", true), 1002),
        ("a continuation with no message begun", raw_frame(0x80, b"x", true), 1002),
        (
            "a new text message inside a fragmented one",
            [raw_frame(0x01, b"a", true), raw_frame(0x81, b"b", true)].concat(),
            1002,
        ),
        ("a close payload of one byte (§5.5.1)", raw_frame(0x88, &[0x03], true), 1002),
        ("close code 999", close(999, b""), 1002),
        ("close code 1005 on the wire (§7.4.1)", close(1005, b""), 1002),
        ("close code 1006 on the wire", close(1006, b""), 1002),
        ("close code 1004 (reserved)", close(1004, b""), 1002),
        ("close code 5000", close(5000, b""), 1002),
        ("a close reason that is not UTF-8 (§5.5.1)", close(1000, &[0xff, 0xfe]), 1007),
        ("a text message that is not UTF-8 (§8.1)", raw_frame(0x81, &[0xce, 0xba, 0xe1, 0xbd], true), 1007),
        (
            "text split inside a code point, then invalid",
            [raw_frame(0x01, &[0xce], true), raw_frame(0x80, &[0xff], true)].concat(),
            1007,
        ),
        // What a server must accept: the client's code comes back (§5.5.1).
        ("close 1000", close(1000, b"bye"), 1000),
        ("close 3000 (registered range)", close(3000, b""), 3000),
        ("close 4999 (private range)", close(4999, b""), 4999),
    ];
    for (what, bytes, want) in cases {
        let (status, head, mut io) = raw_h1_io(&ts, &upgrade_request("GET", "/ws", &[], "")).await;
        assert_eq!(status, 101, "{what}: {head}");
        io.write_all(&bytes).await.unwrap();
        assert_eq!(raw_close_code(&mut io).await, want, "{what}");
    }
    // A text message in fragments with a ping between them is one message (§5.4).
    let (_, _, mut io) = raw_h1_io(&ts, &upgrade_request("GET", "/ws", &[], "")).await;
    let frames = [raw_frame(0x01, b"frag", true), raw_frame(0x89, b"p", true), raw_frame(0x80, b"ment", true)].concat();
    io.write_all(&frames).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 + 1 + 2 + 8 {
        let mut b = [0u8; 64];
        let n = tokio::time::timeout(WAIT, io.read(&mut b)).await.expect("frames in time").unwrap();
        assert!(n > 0);
        got.extend_from_slice(&b[..n]);
    }
    assert_eq!(&got[..3], &[0x8A, 1, b'p'], "the pong comes first, with the ping's payload");
    assert_eq!(&got[3..13], &[0x81, 8, b'f', b'r', b'a', b'g', b'm', b'e', b'n', b't']);
    // The server still serves.
    let mut ws = ws_h1(&ts, "/ws", None).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("still here"));
    ts.stop().await;
}

/// A WebSocket over plaintext HTTP/1.1 to the `--mqtt-ws` listener.
async fn ws_plain(addr: std::net::SocketAddr, path: &str, subprotocol: Option<&str>) -> WebSocketStream<TcpStream> {
    let url = format!("ws://127.0.0.1:{}{path}", addr.port());
    handshake_h1(&url, subprotocol, TcpStream::connect(addr).await.expect("connect")).await
}

/// `--mqtt-ws`: MQTT over plaintext WebSocket (`ws://…/mqtt`) on the same broker, the echo, and
/// nothing else: any other request gets 404.
#[tokio::test]
async fn plaintext_listener_serves_mqtt_and_the_echo_only() {
    let ts = TestServer::start_with(|c| {
        c.ws_max_message = LIMIT;
        c.mqtt_ws_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let addr = ts.server.mqtt_ws_addr().expect("the plaintext listener is bound");
    mqtt_suite(&ts, || ws_plain(addr, "/mqtt", Some("mqtt"))).await;

    let mut ws = ws_plain(addr, "/ws", None).await;
    ws.send(Message::text("plain echo")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("plain echo"));

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer)).await.expect("answer in time").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("serves only WebSockets"), "{answer}");
    // Without the subprotocol: 400, as on the HTTPS port.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(upgrade_request("GET", "/mqtt", &[], "").as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 12];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut answer)).await.expect("answer in time").unwrap();
    assert_eq!(&answer, b"HTTP/1.1 400");
    ts.stop().await;
}
