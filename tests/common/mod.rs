//! Shared helpers for the integration tests: an in-process server on ephemeral loopback ports
//! with its own certificates, clients that trust its CA, its HTTP and MQTT URLs, and waiting for
//! a condition with a deadline.
//!
//! | module | what it holds |
//! |--------|---------------|
//! | this file | [`TestServer`], HTTP requests ([`send`]), URLs, [`wait_until`] |
//! | [`proc`] | child server processes: free ports, readiness by connecting, `/proc` figures (also used by `benches/mqtt.rs`) |
//! | [`broker`] | `quiclab mqtt broker --data-dir` as a child to kill and restart, and a raw MQTT client |
//! | [`rng`] | a seeded pseudo-random sequence for repeatable schedules (also used by `benches/mqtt.rs`) |
#![allow(dead_code)]

pub mod broker;
pub mod proc;
pub mod rng;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use quiclab::client::{self, Client, ClientOptions, HttpConnection, HttpVersion, Target};
use quiclab::config::ServerConfig;
use quiclab::mqtt::client::{MqttUrl, Transport};
use quiclab::server::Server;
use quiclab::tls::Trust;

pub struct TestServer {
    pub server: Server,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        // RUST_LOG=debug cargo test ... shows the server's log lines with the test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = ServerConfig::ephemeral(dir.path().join("certs"));
        tweak(&mut cfg);
        let server = Server::start(cfg).await.expect("server starts");
        TestServer { server, dir }
    }

    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("certs/ca.pem")
    }

    /// `https://localhost:PORT{path}` for the given protocol's listener.
    pub fn url(&self, version: HttpVersion, path: &str) -> String {
        let port = match version {
            HttpVersion::H3 => self.server.quic_addr().port(),
            HttpVersion::H2 => self.server.tcp_addr().port(),
        };
        format!("https://localhost:{port}{path}")
    }

    pub fn client(&self, version: HttpVersion) -> Client {
        let opts = ClientOptions { trust: Trust::CaFile(self.ca()), ..Default::default() };
        Client::new(version, &opts).expect("client")
    }

    pub async fn connect(&self, version: HttpVersion) -> (HttpConnection, Target) {
        let target = Target::parse(&self.url(version, "/")).unwrap();
        let conn = self.client(version).connect(&target).await.expect("connect");
        (conn, target)
    }

    /// MQTT over TCP (the server's MQTT/TCP listener).
    pub fn mqtt_tcp_url(&self) -> MqttUrl {
        MqttUrl::tcp(self.server.mqtt_tcp_addr().expect("an MQTT/TCP listener"))
    }

    /// MQTT over TLS, server name `localhost`.
    pub fn mqtt_tls_url(&self) -> MqttUrl {
        MqttUrl::tls_localhost(self.server.mqtt_tls_addr().expect("an MQTT/TLS listener").port())
    }

    /// MQTT over QUIC on the QUIC port shared with HTTP/3.
    pub fn mqtt_quic_url(&self) -> MqttUrl {
        mqtt_quic_url(self.server.quic_addr().port())
    }

    /// MQTT over QUIC on the dedicated listener (`mqtt_quic_listen`).
    pub fn mqtt_quic_dedicated_url(&self) -> MqttUrl {
        mqtt_quic_url(self.server.mqtt_quic_addr().expect("a dedicated MQTT/QUIC listener").port())
    }

    /// The server's MQTT broker.
    pub fn broker(&self) -> &quiclab::mqtt::Broker {
        self.server.mqtt_broker().expect("MQTT is on")
    }

    pub async fn stop(self) {
        self.server.shutdown().await;
    }
}

/// A finished response: status, headers, body.
pub struct Resp {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send a request on an open connection and read the whole response.
pub async fn send(conn: &HttpConnection, method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let target = Target::parse(url).unwrap();
    let mut req = client::request(&target, method.parse().unwrap(), Bytes::copy_from_slice(body)).unwrap();
    for (k, v) in headers {
        req.headers_mut()
            .append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), http::HeaderValue::from_str(v).unwrap());
    }
    let resp = conn.send(req).await.expect("request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Resp { status: parts.status, headers: parts.headers, body }
}

/// Both protocols, for tests that must hold for each.
pub const BOTH: [HttpVersion; 2] = [HttpVersion::H3, HttpVersion::H2];

/// Check that `body` is the `/bytes` pattern from offset `start`.
pub fn assert_pattern(body: &[u8], start: u64) {
    for (i, b) in body.iter().enumerate() {
        let want = quiclab::web::pattern_byte(start + i as u64);
        assert_eq!(*b, want, "byte {} (offset {}) is {b}, want {want}", i, start + i as u64);
    }
}

/// `mqtt+quic://localhost:PORT`: MQTT over QUIC, server name `localhost`.
pub fn mqtt_quic_url(port: u16) -> MqttUrl {
    MqttUrl { transport: Transport::Quic, host: "localhost".into(), port }
}

/// Wait until `cond` holds, checking every 10 ms; panics naming `what` if it does not within
/// `timeout`. For states that have no event to wait on (a broker noticing a closed socket).
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
