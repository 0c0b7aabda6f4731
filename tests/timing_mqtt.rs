//! Timing-sensitive MQTT-over-QUIC check, in its own test binary: the dedicated listener's
//! QUIC keep-alive outlasting its idle timeout (generous ratios: PINGs every 300 ms, 1 s idle).

mod common;

use std::time::Duration;

use common::TestServer;
use quiclab::mqtt::client::{Client, ClientOptions, StreamMode};
use quiclab::mqtt::codec::QoS;
use quiclab::tls::Trust;

fn opts(ts: &TestServer, id: &str) -> ClientOptions {
    ClientOptions { client_id: id.into(), trust: Trust::CaFile(ts.ca()), ..ClientOptions::default() }
}

async fn recv(c: &mut Client) -> quiclab::mqtt::Message {
    c.recv_timeout(Duration::from_secs(5)).await.expect("recv").expect("a message within 5 s")
}

/// Spec §4: on the dedicated listener the server's QUIC keep-alive PINGs keep an MQTT session
/// alive past the QUIC idle timeout (here 1 s idle, PINGs every 300 ms, MQTT keepalive 60 s,
/// 3 s of silence from the client), in single-stream and per-topic mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_beyond_the_quic_idle_timeout_on_the_dedicated_listener() {
    let ts = TestServer::start_with(|c| {
        c.mqtt_quic_listen = Some("127.0.0.1:0".parse().unwrap());
        c.mqtt_quic_idle_timeout = Duration::from_secs(1);
        c.mqtt_quic_keep_alive = Duration::from_millis(300);
    })
    .await;
    let url = ts.mqtt_quic_dedicated_url();
    // Both stream modes, quiet side by side.
    let mut quiet = Vec::new();
    for streams in [StreamMode::Single, StreamMode::PerTopic] {
        let mut s = Client::connect(&url, &ClientOptions { streams, ..opts(&ts, &format!("quiet-{streams:?}")) })
            .await
            .unwrap();
        s.subscribe(&[("k/#", QoS::Level1)]).await.unwrap();
        quiet.push(s);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut p = Client::connect(&url, &opts(&ts, "talker")).await.unwrap();
    p.publish("k/1", QoS::Level1, false, "still here").await.unwrap();
    for s in &mut quiet {
        let m = recv(s).await;
        assert_eq!(&m.payload[..], b"still here", "the quiet subscriber's connection survived");
    }
    ts.stop().await;
}
