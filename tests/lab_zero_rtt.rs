//! 0-RTT proved from the server's side, over the lab's link (10 ms each way, so the client's
//! Finished cannot overtake its early request as it can on loopback): a resumed connection's
//! GET is accepted in early data and the server says so (`quiclab-early-data: 1`, `/conn`'s
//! `early_data`); a POST in early data gets 425 and succeeds on the retry after the handshake;
//! a full handshake's request is not early.

#[path = "common/lab.rs"]
mod lab_common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use quiclab::client::h3::ZeroRtt;
use quiclab::client::{self, Client, ClientOptions, FetchOptions, HttpVersion, Target};
use quiclab::tls::Trust;

fn target(addr: SocketAddr, path: &str) -> Target {
    let uri: http::Uri = format!("https://localhost:{}{path}", addr.port()).parse().unwrap();
    Target { host: "localhost".into(), port: addr.port(), uri, addr: Some(addr) }
}

#[test]
fn early_data_is_early_on_the_server_and_unsafe_methods_wait() {
    let link = lab_common::delay_link(Duration::from_millis(10), 3);
    let server = lab_common::start_server(&link, |_| {});
    let quic = server.quic_addr();
    let ca = server.ca.clone();
    let t = link
        .spawn_in_client_ns("zero-rtt-test", move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let opts = ClientOptions { trust: Trust::CaFile(ca), ..Default::default() };
                let c = Client::new(HttpVersion::H3, &opts).unwrap();
                let zero = FetchOptions { zero_rtt: true, rebind_after: None };
                let fetch = |method: &'static str, path: &'static str, opts: FetchOptions| {
                    let c = &c;
                    async move {
                        let t = target(quic, path);
                        let req = client::request(&t, method.parse().unwrap(), Bytes::from_static(b"payload")).unwrap();
                        client::fetch_with(c, &t, req, &opts).await.unwrap()
                    }
                };
                // A full handshake: nothing early.
                let f = fetch("GET", "/conn", zero.clone()).await;
                assert_eq!(f.zero_rtt, Some(ZeroRtt::NotAttempted));
                let j: serde_json::Value = serde_json::from_slice(&f.body).unwrap();
                assert_eq!(j["early_data"], false);
                assert!(!f.response.headers().contains_key("quiclab-early-data"));
                // Resumed connections: the GET arrives in early data and the server knows it.
                for i in 0..3 {
                    let f = fetch("GET", "/conn", zero.clone()).await;
                    assert_eq!(f.zero_rtt, Some(ZeroRtt::Accepted), "run {i}");
                    assert_eq!(f.response.headers()["quiclab-early-data"], "1", "run {i}");
                    let j: serde_json::Value = serde_json::from_slice(&f.body).unwrap();
                    assert_eq!(j["early_data"], true, "run {i}: {j}");
                }
                // A POST in early data: 425 Too Early, then the retry after the handshake.
                let f = fetch("POST", "/echo", zero.clone()).await;
                assert_eq!(f.zero_rtt, Some(ZeroRtt::AcceptedRetried));
                assert_eq!(f.response.status(), 200);
                assert_eq!(&f.body[..], b"payload");
                assert!(!f.response.headers().contains_key("quiclab-early-data"));
            })
        })
        .unwrap();
    t.join();
    drop(server);
}
