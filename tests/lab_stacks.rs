//! The stacks' facts read over the lab's link (src/lab/stacks.rs): Linux's initial window is
//! 10 × MSS, quinn's initial window read back from a connection equals the one configured
//! (set to Linux's), HyStart's state is read, `/conn` shows the TCP connection's cipher suite
//! and the HTTP/3 response carries its QUIC stream id, and Cubic and BBR are set and read back
//! on both ends of TCP and on both ends of QUIC.
//!
//! Needs root or user namespaces (`unshare -rn cargo test --test lab_stacks`); the tests run one
//! at a time and talk only to the link's own addresses.

#[path = "common/lab.rs"]
mod lab_common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use quiclab::client::{self, Client, ClientOptions, HttpVersion, StreamId, Target};
use quiclab::config::{Congestion, TransportConfig};
use quiclab::lab::stacks;
use quiclab::tls::Trust;

fn target(addr: SocketAddr, path: &str) -> Target {
    let uri: http::Uri = format!("https://localhost:{}{path}", addr.port()).parse().unwrap();
    Target { host: "localhost".into(), port: addr.port(), uri, addr: Some(addr) }
}

/// What one connection of each version showed: `/conn`'s answer, the client's read-back of
/// the controller and cipher suite, and the response's stream id.
struct Seen {
    conn: serde_json::Value,
    client_cc: Option<String>,
    client_cipher: Option<String>,
    stream: Option<StreamId>,
}

fn equalized_run(cc: Congestion) {
    let _g = lab_common::serial();
    let link = lab_common::delay_link(Duration::from_millis(5), 11);
    let linux = stacks::linux_congestion_name(cc);
    assert_eq!(stacks::probe_congestion(&link, linux).unwrap(), (linux.to_string(), linux.to_string()));

    let window = stacks::equalized_initial_window(&link).unwrap();
    let transport = TransportConfig { congestion: cc, initial_window: Some(window), ..Default::default() };
    let t = transport.clone();
    let server = lab_common::start_server(&link, move |cfg| {
        cfg.transport = t;
        cfg.tcp_congestion = Some(linux.to_string());
    });
    let (quic, tcp, ca) = (server.quic_addr(), server.tcp_addr(), server.ca.clone());
    let t = transport.clone();
    let seen = link
        .run_in_client_ns(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let opts = ClientOptions {
                    trust: Trust::CaFile(ca),
                    transport: t,
                    tcp_congestion: Some(linux.to_string()),
                    ..Default::default()
                };
                let mut out = Vec::new();
                for (version, addr) in [(HttpVersion::H2, tcp), (HttpVersion::H3, quic)] {
                    let c = Client::new(version, &opts).unwrap();
                    let tg = target(addr, "/conn");
                    let conn = c.connect(&tg).await.unwrap();
                    let req = client::request(&tg, http::Method::GET, Bytes::new()).unwrap();
                    let resp = conn.send(req).await.unwrap();
                    let stream = resp.extensions().get::<StreamId>().copied();
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    out.push(Seen {
                        conn: serde_json::from_slice(&body).unwrap(),
                        client_cc: conn.congestion(),
                        client_cipher: conn.cipher_suite(),
                        stream,
                    });
                    conn.close().await;
                }
                out
            })
        })
        .unwrap();
    let (h2, h3) = (&seen[0], &seen[1]);

    // TCP: Linux's initial window is 10 segments of the MSS (RFC 6928), read before any data.
    let e = &h2.conn["established"];
    let mss = e["mss"].as_u64().unwrap();
    assert_eq!(e["cwnd_segments"], 10, "{e}");
    assert_eq!(e["cwnd_bytes"].as_u64(), Some(10 * mss), "{e}");
    assert_eq!(window, 10 * mss);
    assert_eq!(e["congestion"], linux, "{e}");
    assert!(e["rto_ms"].as_f64().unwrap() >= 200.0, "{e}");
    let suite = e["cipher_suite"].as_str().unwrap();
    assert!(suite.starts_with("TLS13_"), "{suite}");
    assert_eq!(h2.client_cipher.as_deref(), Some(suite));
    assert_eq!(h2.client_cc.as_deref(), Some(linux));
    assert_eq!(h2.stream, None, "hyper does not expose HTTP/2 stream ids");
    // Existing keys are kept.
    assert_eq!(h2.conn["transport"], "tcp");
    assert_eq!(h2.conn["cwnd_unit"], "segments");

    // QUIC: the initial window read back from the connection is the one configured.
    let e = &h3.conn["established"];
    assert_eq!(e["initial_window"].as_u64(), Some(window), "{e}");
    assert_eq!(e["cwnd_bytes"].as_u64(), Some(window), "{e}");
    assert_eq!(e["congestion"], cc.to_string(), "{e}");
    assert_eq!(e["cipher_suite"], serde_json::Value::Null);
    assert_eq!(h3.client_cc.as_deref(), Some(cc.to_string().as_str()));
    assert_eq!(h3.stream, Some(StreamId(0)), "the first request stream is client bidi stream 0");
    assert_eq!(h3.conn["transport"], "quic");

    // The facts gathered from the link, the kernel and the two `/conn` answers.
    let facts = stacks::read(&link, cc, &transport, &[h2.conn.clone(), h3.conn.clone()]).unwrap();
    assert_eq!(facts.linux.congestion_server.value.as_deref(), Some(linux));
    assert_eq!(facts.linux.congestion_client.value.as_deref(), Some(linux));
    let hy = std::fs::read_to_string("/sys/module/tcp_cubic/parameters/hystart").unwrap();
    assert_eq!(facts.linux.hystart.value.as_ref().map(|h| h.enabled), Some(hy.trim() == "1"));
    assert_eq!(facts.quinn.initial_window.value, window);
    assert_eq!(facts.linux.cipher_suite.value.as_deref(), Some(suite));
    let diffs = facts.remaining_differences();
    assert!(
        !diffs.iter().any(|d| d.contains("initial windows differ") || d.contains("controllers differ")),
        "{diffs:?}"
    );
    let md = facts.markdown();
    eprintln!("{md}\nremaining differences: {diffs:#?}");
    assert!(md.contains(&format!("{window} B")), "{md}");
    drop(server);
}

#[test]
fn cubic_equalized_and_read_back() {
    equalized_run(Congestion::Cubic);
}

#[test]
fn bbr_set_and_read_back_on_both_sides() {
    equalized_run(Congestion::Bbr);
}
