//! Client certificates on MQTT over TLS and QUIC (docs/mqtt.md "Client certificates"), on
//! loopback with quiclab's client and raw quinn connections:
//! * `require_certificate`: no certificate, one from another CA, or one without clientAuth is
//!   refused on TLS (handshake), the dedicated QUIC listener (handshake) and the QUIC port
//!   shared with HTTP/3 (connection closed with PROTOCOL_ERROR, "client certificate
//!   required"); a certificate from `issue_client_cert` (what `quiclab certs --client` runs) is
//!   accepted and its CN reaches the broker core;
//! * a client CA alone makes a certificate optional but verified;
//! * HTTP/3 on the shared endpoint, and HTTP/2, work without a certificate meanwhile;
//! * 0-RTT still works with a client certificate, and the resumed connection has its identity;
//!   HTTP/3 0-RTT without one is unchanged.

mod common;

use std::time::Duration;

use common::{mqtt_quic_url, TestServer};
use quiclab::client::HttpVersion;
use quiclab::mqtt::client::{Client, ClientOptions, EarlyData, MqttUrl, QuicConnection, QuicSetup};
use quiclab::mqtt::codec::Packet;
use quiclab::mqtt::quic::code;
use quiclab::tls::{issue_client_cert, ClientIdentity, Trust};

/// The three listeners that can ask for a certificate: TLS, QUIC shared with HTTP/3, dedicated
/// QUIC.
fn urls(ts: &TestServer) -> [(&'static str, MqttUrl); 3] {
    [("tls", ts.mqtt_tls_url()), ("quic-shared", ts.mqtt_quic_url()), ("quic-dedicated", ts.mqtt_quic_dedicated_url())]
}

fn opts(ts: &TestServer, id: &str, cert: Option<&ClientIdentity>) -> ClientOptions {
    ClientOptions {
        client_id: id.into(),
        trust: Trust::CaFile(ts.ca()),
        client_cert: cert.cloned(),
        connect_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

/// Client identities: `alice` from the server's development CA, `mallory` from another CA,
/// and the server's own leaf (signed by the right CA, but for serverAuth only).
struct Ids {
    alice: ClientIdentity,
    mallory: ClientIdentity,
    server_leaf: ClientIdentity,
    _other_ca: tempfile::TempDir,
}

fn ids(ts: &TestServer) -> Ids {
    let certs = ts.dir.path().join("certs");
    let a = issue_client_cert(&certs, "alice").expect("issue alice");
    assert!(a.created && !a.created_ca, "the server created the CA, the call created the client files");
    let other = tempfile::tempdir().unwrap();
    let m = issue_client_cert(other.path(), "mallory").expect("issue mallory");
    Ids {
        alice: ClientIdentity::load(&a.cert, &a.key).unwrap(),
        mallory: ClientIdentity::load(&m.cert, &m.key).unwrap(),
        server_leaf: ClientIdentity::load(&certs.join("cert.pem"), &certs.join("key.pem")).unwrap(),
        _other_ca: other,
    }
}

async fn start(require: bool, client_ca: bool) -> TestServer {
    TestServer::start_with(|c| {
        c.mqtt_quic_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        c.mqtt.require_certificate = require;
        if client_ca {
            c.mqtt.client_ca = Some(c.certs_dir.join("ca.pem"));
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_certificate_on_tls_and_both_quic_listeners() {
    let ts = start(true, false).await;
    let ids = ids(&ts);
    for (k, (name, url)) in urls(&ts).into_iter().enumerate() {
        let refused =
            [("no certificate", None), ("another CA", Some(&ids.mallory)), ("serverAuth only", Some(&ids.server_leaf))];
        for (what, cert) in refused {
            let r = Client::connect(&url, &opts(&ts, &format!("{name}-x"), cert)).await;
            assert!(r.is_err(), "{name}: {what} must be refused");
        }
        assert_eq!(ts.broker().stats().core.connects_accepted, k as u64, "{name}: nothing refused got a CONNACK");
        let id = format!("{name}-alice");
        let c = Client::connect(&url, &opts(&ts, &id, Some(&ids.alice))).await.expect("alice is let in");
        let s = ts.broker().session(&id).expect("alice's session");
        assert_eq!(s.identity.as_deref(), Some("alice"), "{name}: the core has the certificate's CN");
        c.disconnect().await.unwrap();
        assert_eq!(ts.broker().stats().core.connects_accepted, k as u64 + 1, "{name}");
    }
    ts.stop().await;
}

/// TLS: the handshake itself fails (the server's alert reaches the client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_a_certificate_gets_certificate_required() {
    let ts = start(true, false).await;
    let url = ts.mqtt_tls_url();
    let e = Client::connect(&url, &opts(&ts, "none", None)).await.err().expect("refused");
    // RFC 8446 §4.4.2.4: certificate_required alert.
    assert!(e.to_string().contains("CertificateRequired"), "{e}");
    ts.stop().await;
}

/// The QUIC port shared with HTTP/3 cannot insist in the handshake; the MQTT connection is
/// closed with PROTOCOL_ERROR and the reason, before any CONNECT is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_quic_port_closes_with_protocol_error() {
    let ts = start(true, false).await;
    let url = ts.mqtt_quic_url();
    let quic = QuicConnection::connect(&url, None, &Trust::CaFile(ts.ca())).await.expect("the handshake succeeds");
    // A CONNECT sent anyway is never answered.
    if let Ok((mut send, _recv)) = quic.open_stream().await {
        let connect = Packet::connect(quiclab::mqtt::codec::connect_v3("sneaky", 60));
        let mut buf = Vec::new();
        quiclab::mqtt::codec::encode(&connect, quiclab::mqtt::codec::Version::V3, &mut buf).unwrap();
        let _ = send.write_all(&buf).await;
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), quic.connection().closed()).await.expect("closed");
    match closed {
        quinn::ConnectionError::ApplicationClosed(a) => {
            assert_eq!(a.error_code, quinn::VarInt::from_u32(code::PROTOCOL_ERROR));
            assert_eq!(&a.reason[..], b"client certificate required");
        }
        other => panic!("expected an application close, got {other}"),
    }
    assert!(ts.broker().session("sneaky").is_none());
    assert_eq!(ts.broker().stats().core.connects_accepted, 0);
    ts.stop().await;
}

/// The dedicated listener serves MQTT only: no certificate, no handshake (TLS alert
/// certificate_required, 116, as QUIC error 0x100 + 116, RFC 9001 §4.8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_quic_listener_refuses_in_the_handshake() {
    let ts = start(true, false).await;
    let url = ts.mqtt_quic_dedicated_url();
    let err = match QuicConnection::connect(&url, None, &Trust::CaFile(ts.ca())).await {
        // The client may finish its side of the handshake before the server's verdict arrives.
        Ok(quic) => tokio::time::timeout(Duration::from_secs(5), quic.connection().closed()).await.expect("closed"),
        Err(e) => {
            let s = e.to_string();
            assert!(s.contains("116") || s.contains("certificate"), "{s}");
            ts.stop().await;
            return;
        }
    };
    match err {
        quinn::ConnectionError::ConnectionClosed(c) => {
            assert_eq!(c.error_code, quinn::TransportErrorCode::crypto(116), "{c}")
        }
        other => panic!("expected a TLS alert, got {other}"),
    }
    ts.stop().await;
}

/// With a client CA but no requirement, a certificate is optional but verified when sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ca_alone_makes_the_certificate_optional_but_verified() {
    let ts = start(false, true).await;
    let ids = ids(&ts);
    for (name, url) in urls(&ts) {
        let anon = format!("{name}-anon");
        let c = Client::connect(&url, &opts(&ts, &anon, None)).await.expect("no certificate is fine");
        assert_eq!(ts.broker().session(&anon).unwrap().identity, None, "{name}");
        c.disconnect().await.unwrap();
        let id = format!("{name}-alice");
        let c = Client::connect(&url, &opts(&ts, &id, Some(&ids.alice))).await.expect("alice");
        assert_eq!(ts.broker().session(&id).unwrap().identity.as_deref(), Some("alice"), "{name}");
        c.disconnect().await.unwrap();
        let r = Client::connect(&url, &opts(&ts, &format!("{name}-mallory"), Some(&ids.mallory))).await;
        assert!(r.is_err(), "{name}: a certificate from another CA is refused even when optional");
    }
    ts.stop().await;
}

/// One TLS configuration serves HTTP/3 and MQTT on the shared port: asking for a client
/// certificate must not lock HTTP/3 clients out. HTTP/2 never asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_still_works_without_a_certificate() {
    let ts = start(true, true).await;
    for version in [HttpVersion::H3, HttpVersion::H2] {
        let (conn, _) = ts.connect(version).await;
        let r = common::send(&conn, "GET", &ts.url(version, "/bytes/10"), &[], b"").await;
        assert_eq!(r.status, 200, "{version:?}");
        assert_eq!(r.body.len(), 10);
    }
    ts.stop().await;
}

/// HTTP/3 0-RTT on the shared endpoint is unchanged by the CertificateRequest (a client without
/// a certificate resumes a session that has none, in 0-RTT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_zero_rtt_still_works_with_a_client_ca() {
    use quiclab::client::h3::ZeroRtt;
    let ts = start(true, true).await;
    let opts = quiclab::client::ClientOptions { trust: Trust::CaFile(ts.ca()), ..Default::default() };
    let client = quiclab::client::Client::new(HttpVersion::H3, &opts).unwrap();
    let url = ts.url(HttpVersion::H3, "/bytes/100");
    let fetch = || async {
        let target = quiclab::client::Target::parse(&url).unwrap();
        let req = quiclab::client::request(&target, "GET".parse().unwrap(), bytes::Bytes::new()).unwrap();
        let fo = quiclab::client::FetchOptions { zero_rtt: true, rebind_after: None };
        quiclab::client::fetch_with(&client, &target, req, &fo).await.expect("fetch")
    };
    assert_eq!(fetch().await.zero_rtt, Some(ZeroRtt::NotAttempted));
    let f = fetch().await;
    assert_eq!(f.zero_rtt, Some(ZeroRtt::Accepted));
    assert_eq!(f.response.status(), 200);
    ts.stop().await;
}

/// 0-RTT with client authentication: the resumed session carries the certificate verified in
/// the first connection, so the early CONNECT is accepted and has its identity at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_works_with_a_client_certificate() {
    let ts = start(true, false).await;
    let ids = ids(&ts);
    for port in [ts.server.quic_addr().port(), ts.server.mqtt_quic_addr().unwrap().port()] {
        let url = mqtt_quic_url(port);
        let setup = QuicSetup::with_identity(&Trust::CaFile(ts.ca()), Some(&ids.alice)).unwrap();
        let zero =
            |id: &str| ClientOptions { zero_rtt: true, quic: Some(setup.clone()), ..opts(&ts, id, Some(&ids.alice)) };
        let c = Client::connect(&url, &zero(&format!("first-{port}"))).await.unwrap();
        assert_eq!(c.early_data(), EarlyData::NoTicket);
        c.disconnect().await.unwrap();
        let id = format!("second-{port}");
        let c = Client::connect(&url, &zero(&id)).await.unwrap();
        assert_eq!(c.early_data(), EarlyData::Accepted, "port {port}: 0-RTT with a client certificate");
        assert_eq!(ts.broker().session(&id).unwrap().identity.as_deref(), Some("alice"), "port {port}");
        c.disconnect().await.unwrap();
    }
    ts.stop().await;
}
