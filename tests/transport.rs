//! Transport features seen from quiclab's client on loopback: 0-RTT resumption (accepted,
//! 425 Too Early and its retry, rejection and fallback) and connection migration.
//!
//! Whether a request is *early* on the server races the client's Finished on loopback, so the
//! server-side proofs of 0-RTT run over the lab's delayed link (tests/lab_*.rs); here the
//! assertions are the ones loopback makes deterministic.

mod common;

use bytes::Bytes;
use common::{assert_pattern, send, TestServer};
use http_body_util::BodyExt;
use quiclab::client::h3::ZeroRtt;
use quiclab::client::{self, Client, ClientOptions, FetchOptions, HttpConnection, HttpVersion, Target};
use quiclab::tls::Trust;

fn h3_client(ts: &TestServer) -> Client {
    let opts = ClientOptions { trust: Trust::CaFile(ts.ca()), ..Default::default() };
    Client::new(HttpVersion::H3, &opts).unwrap()
}

async fn fetch_0rtt(client: &Client, url: &str, method: &str, body: &[u8]) -> client::Fetched {
    let target = Target::parse(url).unwrap();
    let req = client::request(&target, method.parse().unwrap(), Bytes::copy_from_slice(body)).unwrap();
    let opts = FetchOptions { zero_rtt: true, rebind_after: None };
    match client::fetch_with(client, &target, req, &opts).await {
        Ok(f) => f,
        Err(e) => panic!("fetch {url}: {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_resumes_each_connection_from_the_previous() {
    let ts = TestServer::start().await;
    let client = h3_client(&ts);
    let url = ts.url(HttpVersion::H3, "/bytes/1000");
    let first = fetch_0rtt(&client, &url, "GET", b"").await;
    assert_eq!(first.zero_rtt, Some(ZeroRtt::NotAttempted), "nothing to resume yet");
    for i in 2..=5 {
        let f = fetch_0rtt(&client, &url, "GET", b"").await;
        assert_eq!(f.zero_rtt, Some(ZeroRtt::Accepted), "connection {i}");
        assert_eq!(f.response.status(), 200);
        assert_pattern(&f.body, 0);
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_in_early_data_is_answered_or_retried_never_lost() {
    let ts = TestServer::start().await;
    let client = h3_client(&ts);
    let url = ts.url(HttpVersion::H3, "/echo");
    fetch_0rtt(&client, &url, "POST", b"warm-up").await;
    for _ in 0..3 {
        let f = fetch_0rtt(&client, &url, "POST", b"not replay-safe").await;
        // Either the server saw it early (425, then the client's retry after the handshake),
        // or the handshake won the race on loopback: both end in exactly one 200 echo.
        assert!(matches!(f.zero_rtt, Some(ZeroRtt::Accepted | ZeroRtt::AcceptedRetried)), "{:?}", f.zero_rtt);
        assert_eq!(f.response.status(), 200);
        assert_eq!(&f.body[..], b"not replay-safe");
        assert!(
            !f.response.headers().contains_key("quiclab-early-data"),
            "a 200 to a POST never comes from early data"
        );
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_zero_rtt_falls_back_to_one_rtt() {
    // A ticket from one server process, presented to a new one on the same port: the new
    // server's session cache does not know it, so 0-RTT is rejected.
    let ts = TestServer::start().await;
    let client = h3_client(&ts);
    let (quic, tcp) = (ts.server.quic_addr(), ts.server.tcp_addr());
    let url = ts.url(HttpVersion::H3, "/bytes/5000");
    fetch_0rtt(&client, &url, "GET", b"").await;
    let certs = ts.dir.path().join("certs");
    ts.server.shutdown().await;
    let mut cfg = quiclab::config::ServerConfig::ephemeral(&certs);
    cfg.quic_listen = quic;
    cfg.tcp_listen = tcp;
    // The old endpoint's socket closes when its driver task ends, a moment after shutdown.
    let mut tries = 0;
    let second = loop {
        match quiclab::server::Server::start(cfg.clone()).await {
            Ok(s) => break s,
            Err(e) if tries < 100 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("restart on the same port: {e}"),
        }
    };
    let f = fetch_0rtt(&client, &url, "GET", b"").await;
    assert_eq!(f.zero_rtt, Some(ZeroRtt::Rejected));
    assert_eq!(f.response.status(), 200);
    assert_eq!(f.body.len(), 5000);
    assert_pattern(&f.body, 0);
    // And the next connection resumes from the new server's ticket.
    let f = fetch_0rtt(&client, &url, "GET", b"").await;
    assert_eq!(f.zero_rtt, Some(ZeroRtt::Accepted));
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_mid_download_keeps_the_connection() {
    let ts = TestServer::start().await;
    let client = h3_client(&ts);
    let target = Target::parse(&ts.url(HttpVersion::H3, "/bytes/20M")).unwrap();
    let conn = client.connect(&target).await.unwrap();
    let HttpConnection::H3(h3) = &conn else { unreachable!() };
    let before = h3.quic().stable_id();
    let r = send(&conn, "GET", &ts.url(HttpVersion::H3, "/conn"), &[], b"").await;
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let old_remote = j["remote"].as_str().unwrap().to_string();

    let req = client::request(&target, http::Method::GET, Bytes::new()).unwrap();
    let mut body = conn.send(req).await.unwrap().into_body();
    let mut got = bytes::BytesMut::new();
    let mut moved = false;
    while let Some(frame) = body.frame().await {
        got.extend_from_slice(&frame.unwrap().into_data().unwrap_or_default());
        if !moved && got.len() >= 2 << 20 {
            client::rebind(&client, &conn).unwrap();
            moved = true;
        }
    }
    assert!(moved);
    assert_eq!(got.len(), 20 << 20);
    assert_pattern(&got, 0);

    // Same connection (no new handshake), new address, exactly one path change seen.
    let r = send(&conn, "GET", &ts.url(HttpVersion::H3, "/conn"), &[], b"").await;
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(j["path_changes"], 1, "{j}");
    assert_ne!(j["remote"].as_str().unwrap(), old_remote);
    let HttpConnection::H3(h3) = &conn else { unreachable!() };
    assert_eq!(h3.quic().stable_id(), before);
    assert_eq!(h3.quic().stats().path.lost_packets, 0);
    ts.stop().await;
}
