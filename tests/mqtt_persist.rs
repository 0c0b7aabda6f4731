//! Issue 18, first part: what the broker acknowledged survives `kill -9` (`--data-dir`). So far
//! the store keeps retained messages; a store that is not the broker's is refused and left as
//! it is.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::mqtt_quic_url;
use common::proc::{free_tcp_port, free_udp_port, loopback, mqtt_accepts, spawn_ready, ChildServer, ProcError};
use quiclab::mqtt::client::{Client, ClientOptions, MqttUrl};
use quiclab::mqtt::codec::QoS;
use quiclab::tls::Trust;

/// `quiclab mqtt broker --data-dir DATA` in its own process, with TCP and QUIC listeners.
struct Broker {
    /// Killed with SIGKILL when dropped.
    _proc: ChildServer,
    tcp: SocketAddr,
    quic: SocketAddr,
}

async fn start(data: &Path, certs: &Path) -> Broker {
    const WHAT: &str = "quiclab mqtt broker --data-dir";
    let spawn = || {
        let (tcp, quic) = (loopback(free_tcp_port()?), loopback(free_udp_port()?));
        let child = Command::new(env!("CARGO_BIN_EXE_quiclab"))
            .args(["mqtt", "broker", "--tcp", &tcp.to_string(), "--quic", &quic.to_string(), "--certs"])
            .arg(certs)
            .arg("--data-dir")
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| ProcError::Spawn { what: WHAT.into(), source })?;
        Ok((child, (tcp, quic)))
    };
    let trust = Trust::CaFile(certs.join("ca.pem"));
    let ready = |(tcp, quic): (SocketAddr, SocketAddr)| {
        let trust = trust.clone();
        async move {
            mqtt_accepts(&MqttUrl::tcp(tcp), &trust).await && mqtt_accepts(&mqtt_quic_url(quic.port()), &trust).await
        }
    };
    let (proc, (tcp, quic)) =
        spawn_ready(WHAT, Duration::from_secs(20), spawn, ready).await.expect("the broker starts");
    Broker { _proc: proc, tcp, quic }
}

fn opts(id: &str, certs: &Path) -> ClientOptions {
    ClientOptions { client_id: id.into(), trust: Trust::CaFile(certs.join("ca.pem")), ..Default::default() }
}

/// Retained messages published at QoS 1 and 2 over TCP and QUIC, and one retained message
/// cleared, are as they were after the broker is killed with SIGKILL right after the last
/// acknowledgement, and after a second kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_retained_messages_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, certs) = (dir.path().join("data"), dir.path().join("certs"));
    let b = start(&data, &certs).await;
    let mut tcp = Client::connect(&MqttUrl::tcp(b.tcp), &opts("pub-tcp", &certs)).await.expect("connect over TCP");
    let mut quic =
        Client::connect(&mqtt_quic_url(b.quic.port()), &opts("pub-quic", &certs)).await.expect("connect over QUIC");
    // Each `publish` returns once the broker acknowledged it (PUBACK, or PUBCOMP for QoS 2).
    tcp.publish("keep/tcp", QoS::Level1, true, "one").await.expect("PUBLISH over TCP");
    tcp.publish("keep/tcp", QoS::Level1, true, "two").await.expect("PUBLISH over TCP");
    quic.publish("keep/quic", QoS::Level2, true, "q2").await.expect("PUBLISH over QUIC");
    tcp.publish("keep/gone", QoS::Level1, true, "soon cleared").await.expect("PUBLISH");
    tcp.publish("keep/gone", QoS::Level1, true, "").await.expect("PUBLISH clearing it");
    // QoS 0 is not acknowledged; a QoS 1 publish after it on the same connection is, and the
    // broker handles one connection's packets in order.
    tcp.publish("keep/qos0", QoS::Level0, true, "zero").await.expect("PUBLISH QoS 0");
    tcp.publish("keep/tcp", QoS::Level1, true, "three").await.expect("PUBLISH over TCP");
    drop(b); // SIGKILL, at once after the last acknowledgement
    drop((tcp, quic));

    for round in 0..2 {
        let b = start(&data, &certs).await;
        let mut sub =
            Client::connect(&MqttUrl::tcp(b.tcp), &opts(&format!("sub-{round}"), &certs)).await.expect("connect");
        sub.subscribe(&[("keep/#", QoS::Level2)]).await.expect("SUBSCRIBE");
        let mut got = Vec::new();
        while let Some(m) = sub.recv_timeout(Duration::from_secs(2)).await.expect("recv") {
            assert!(m.retain, "a retained message is delivered with RETAIN set: {m:?}");
            got.push((m.topic.to_string(), String::from_utf8_lossy(&m.payload).into_owned()));
        }
        got.sort();
        let want = [("keep/qos0", "zero"), ("keep/quic", "q2"), ("keep/tcp", "three")];
        let want: Vec<(String, String)> = want.iter().map(|(t, p)| (t.to_string(), p.to_string())).collect();
        assert_eq!(got, want, "round {round}: the retained messages after kill -9");
        drop(b);
    }
}

/// A file at the store's place that is not the store stops the broker with an error naming
/// it, and is left byte for byte as it was.
#[test]
fn a_foreign_store_file_is_refused_and_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let file = data.join("mqtt.redb");
    let content = b"someone else's file, not to be wiped\n".repeat(100);
    std::fs::write(&file, &content).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_quiclab"))
        .args(["mqtt", "broker", "--tcp", "127.0.0.1:0", "--certs"])
        .arg(dir.path().join("certs"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("run quiclab");
    assert!(!out.status.success(), "the broker must not start on a foreign store");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mqtt.redb") && err.contains("left as it is"), "stderr names the file: {err}");
    assert_eq!(std::fs::read(&file).expect("read back"), content, "the file is untouched");
}
