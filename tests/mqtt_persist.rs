//! Issue 18: what the broker acknowledged survives `kill -9` (`--data-dir`): retained messages,
//! persistent sessions with their subscriptions, their queued and in-flight messages, inbound
//! QoS 2 state. A store that is not the broker's is refused and left as it is.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::broker::{PersistentBroker, Raw};
use common::mqtt_quic_url;
use quiclab::mqtt::client::{Client, ClientOptions, MqttUrl};
use quiclab::mqtt::codec::{Packet, Pid, Publish, QoS, QosPid, Subscribe, TopicFilter, TopicName};
use quiclab::tls::Trust;

fn opts(id: &str, certs: &Path) -> ClientOptions {
    ClientOptions { client_id: id.into(), trust: Trust::CaFile(certs.join("ca.pem")), ..Default::default() }
}

/// A temporary directory (removed when dropped) with the store's and the certificates' paths
/// in it.
fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, certs) = (dir.path().join("data"), dir.path().join("certs"));
    (dir, data, certs)
}

/// Retained messages published at QoS 1 and 2 over TCP and QUIC, and one retained message
/// cleared, are as they were after the broker is killed with SIGKILL right after the last
/// acknowledgement, and after a second kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_retained_messages_survive_kill_9() {
    let (_dir, data, certs) = dirs();
    let b = PersistentBroker::start(&data, &certs).await;
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
        let b = PersistentBroker::start(&data, &certs).await;
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

/// A persistent session (clean session 0) made over TCP or QUIC and its subscriptions (one
/// added, one removed again) survive kill -9 right after the SUBACK / UNSUBACK: on reconnection
/// the session is present and a message published after the restart reaches it, while the
/// unsubscribed filter gets nothing. A clean-session CONNECT then removes it for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_sessions_and_their_subscriptions_survive_kill_9() {
    let (_dir, data, certs) = dirs();
    let persistent = |id: &str| ClientOptions { clean_session: false, ..opts(id, &certs) };
    let b = PersistentBroker::start(&data, &certs).await;
    let urls = [("tcp", MqttUrl::tcp(b.tcp)), ("quic", mqtt_quic_url(b.quic.port()))];
    for (name, url) in &urls {
        let mut c = Client::connect(url, &persistent(&format!("keeper-{name}"))).await.expect("connect");
        assert!(!c.session_present(), "a new session");
        c.subscribe(&[(&format!("sess/{name}/#"), QoS::Level1), (&format!("drop/{name}"), QoS::Level1)])
            .await
            .expect("SUBSCRIBE");
        c.unsubscribe(&[&format!("drop/{name}")]).await.expect("UNSUBSCRIBE");
        drop(c); // gone without DISCONNECT; the session stays
    }
    drop(b); // SIGKILL

    let b = PersistentBroker::start(&data, &certs).await;
    let mut p = Client::connect(&MqttUrl::tcp(b.tcp), &opts("publisher", &certs)).await.expect("connect");
    for name in ["tcp", "quic"] {
        p.publish(&format!("drop/{name}"), QoS::Level1, false, "unsubscribed").await.expect("PUBLISH");
        p.publish(&format!("sess/{name}/x"), QoS::Level1, false, "after the restart").await.expect("PUBLISH");
    }
    let urls = [("tcp", MqttUrl::tcp(b.tcp)), ("quic", mqtt_quic_url(b.quic.port()))];
    for (name, url) in &urls {
        let mut c = Client::connect(url, &persistent(&format!("keeper-{name}"))).await.expect("reconnect");
        assert!(c.session_present(), "{name}: the session survived kill -9");
        let m = c.recv_timeout(Duration::from_secs(5)).await.expect("recv").expect("the queued message");
        assert_eq!((m.topic.to_string(), &m.payload[..]), (format!("sess/{name}/x"), &b"after the restart"[..]));
        assert!(c.recv_timeout(Duration::from_millis(500)).await.expect("recv").is_none(), "{name}: nothing else");
    }
    // A clean-session CONNECT ends the session, durably.
    let c = Client::connect(&MqttUrl::tcp(b.tcp), &opts("keeper-tcp", &certs)).await.expect("connect clean");
    drop(c);
    drop(b);
    let b = PersistentBroker::start(&data, &certs).await;
    let c = Client::connect(&MqttUrl::tcp(b.tcp), &persistent("keeper-tcp")).await.expect("connect");
    assert!(!c.session_present(), "the clean-session CONNECT removed the stored session");
    let c = Client::connect(&mqtt_quic_url(b.quic.port()), &persistent("keeper-quic")).await.expect("connect");
    assert!(c.session_present(), "the other session is still there");
}

/// Messages published at QoS 1 and 2 for an offline persistent session (acknowledged to the
/// publisher) survive kill -9, come in order after the restart, and arrive once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_of_a_persistent_session_survive_kill_9() {
    let (_dir, data, certs) = dirs();
    let persistent = |id: &str| ClientOptions { clean_session: false, ..opts(id, &certs) };
    let b = PersistentBroker::start(&data, &certs).await;
    let mut c = Client::connect(&MqttUrl::tcp(b.tcp), &persistent("away")).await.expect("connect");
    c.subscribe(&[("q/#", QoS::Level2)]).await.expect("SUBSCRIBE");
    drop(c);
    let mut p = Client::connect(&mqtt_quic_url(b.quic.port()), &opts("pub", &certs)).await.expect("connect");
    let mut sent = Vec::new();
    for i in 0..50 {
        let qos = if i % 2 == 0 { QoS::Level1 } else { QoS::Level2 };
        let body = format!("m{i:02}");
        p.publish(&format!("q/{}", i % 3), qos, false, body.clone()).await.expect("PUBLISH acknowledged");
        sent.push(body);
    }
    drop(b); // SIGKILL right after the last acknowledgement
    drop(p);
    let b = PersistentBroker::start(&data, &certs).await;
    let mut c = Client::connect(&MqttUrl::tcp(b.tcp), &persistent("away")).await.expect("reconnect");
    assert!(c.session_present());
    let mut got = Vec::new();
    while let Some(m) = c.recv_timeout(Duration::from_secs(3)).await.expect("recv") {
        got.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    assert_eq!(got, sent, "every acknowledged message, once, in order");
}

fn pid(n: u16) -> Pid {
    Pid::try_from(n).expect("a packet id")
}

/// Inbound QoS 2 across kill -9: a PUBLISH answered with PUBREC is forwarded once, when its
/// PUBREL comes after the restart. Outbound in flight across kill -9: a QoS 1 delivery the
/// subscriber never acknowledged is sent again after the restart, DUP set, same packet id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_and_in_flight_state_survive_kill_9() {
    let (_dir, data, certs) = dirs();
    let trust = Trust::CaFile(certs.join("ca.pem"));
    let b = PersistentBroker::start(&data, &certs).await;
    // The subscriber: persistent, online, never acknowledging.
    let (mut sub, _) = Raw::connect(&b.tcp_url(), &trust, "raw-sub", false).await.expect("connect");
    let filter = TopicFilter::try_from("x/#").expect("filter");
    sub.send(Packet::Subscribe(Subscribe::new(pid(1), vec![(filter, quiclab::mqtt::codec::v3_options(QoS::Level2))])))
        .await
        .expect("send");
    assert!(matches!(sub.next(Duration::from_secs(5)).await, Some(Packet::Suback(_))));
    // The publisher: QoS 2, stops after PUBREC.
    let (mut publ, _) = Raw::connect(&b.tcp_url(), &trust, "raw-pub", false).await.expect("connect");
    let topic = TopicName::try_from("x/once").expect("topic");
    publ.send(Packet::Publish(Publish::new(QosPid::Level2(pid(5)), topic, Bytes::from_static(b"exactly once"))))
        .await
        .expect("send");
    assert_eq!(publ.next(Duration::from_secs(5)).await, Some(Packet::pubrec(pid(5))));
    // A QoS 1 message that reaches the subscriber, which does not acknowledge it.
    let mut p = Client::connect(&MqttUrl::tcp(b.tcp), &opts("plain", &certs)).await.expect("connect");
    p.publish("x/unacked", QoS::Level1, false, "again").await.expect("PUBLISH");
    let first = match sub.next(Duration::from_secs(5)).await {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected the delivery, got {other:?}"),
    };
    assert_eq!((&*first.topic_name, first.dup), ("x/unacked", false));
    drop(b); // SIGKILL
    drop((sub, publ, p));

    let b = PersistentBroker::start(&data, &certs).await;
    let (mut sub, present) = Raw::connect(&b.tcp_url(), &trust, "raw-sub", false).await.expect("connect");
    assert!(present);
    match sub.next(Duration::from_secs(5)).await {
        Some(Packet::Publish(again)) => {
            assert_eq!((&*again.topic_name, again.qos_pid, again.dup), ("x/unacked", first.qos_pid, true));
            if let QosPid::Level1(id) = again.qos_pid {
                sub.send(Packet::puback(id)).await.expect("send");
            }
        }
        other => panic!("expected the unacknowledged delivery again, got {other:?}"),
    }
    let (mut publ, present) = Raw::connect(&b.tcp_url(), &trust, "raw-pub", false).await.expect("connect");
    assert!(present);
    publ.send(Packet::pubrel(pid(5))).await.expect("send");
    assert_eq!(publ.next(Duration::from_secs(5)).await, Some(Packet::pubcomp(pid(5))));
    // The QoS 2 message reaches the subscriber now, once.
    let (mut deliveries, mut sub_extra) = (0, Vec::new());
    while let Some(p) = sub.next(Duration::from_secs(5)).await {
        match p {
            Packet::Publish(m) if &*m.topic_name == "x/once" => {
                deliveries += 1;
                if let QosPid::Level2(id) = m.qos_pid {
                    sub.send(Packet::pubrec(id)).await.expect("send");
                }
            }
            Packet::Pubrel(rel) => sub.send(Packet::pubcomp(rel.pid)).await.expect("send"),
            other => panic!("unexpected {other:?}"),
        }
        if deliveries == 1 && !sub.has_buffered() {
            // Give a second (wrong) delivery half a second to show.
            match sub.next(Duration::from_millis(500)).await {
                Some(p) => sub_extra.push(p),
                None => break,
            }
        }
    }
    assert!(
        sub_extra.iter().all(|p| !matches!(p, Packet::Publish(m) if &*m.topic_name == "x/once")),
        "a second delivery of the QoS 2 message: {sub_extra:?}"
    );
    assert_eq!(deliveries, 1, "the QoS 2 message is forwarded exactly once across the restart");
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

/// The retained messages a fresh subscriber gets from the broker at `b` (topic, payload),
/// sorted.
async fn retained(b: &PersistentBroker, certs: &Path, filter: &str) -> Vec<(String, String)> {
    let mut sub = Client::connect(&MqttUrl::tcp(b.tcp), &opts("look", certs)).await.expect("connect");
    sub.subscribe(&[(filter, QoS::Level1)]).await.expect("SUBSCRIBE");
    let mut got = Vec::new();
    while let Some(m) = sub.recv_timeout(Duration::from_secs(2)).await.expect("recv") {
        got.push((m.topic.to_string(), String::from_utf8_lossy(&m.payload).into_owned()));
    }
    got.sort();
    got
}

/// `--sync DURATION` trades durability for CPU, as documented: an acknowledged change is
/// committed in memory only, and a SIGKILL before the next fsync loses it; a clean stop
/// (SIGTERM) syncs it. (`--sync always`, the default, is what every other test here runs. The
/// SIGTERM half cannot tell the store's closing fsync from redb's own at close.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_sync_acknowledges_before_the_disk_and_a_clean_stop_syncs() {
    let (_dir, data, certs) = dirs();
    let b = PersistentBroker::start_with(&data, &certs, &["--sync", "3600s"]).await;
    let mut c = Client::connect(&MqttUrl::tcp(b.tcp), &opts("pub", &certs)).await.expect("connect");
    c.publish("sync/lost", QoS::Level1, true, "acked, never synced").await.expect("PUBLISH");
    drop(b); // SIGKILL within the hour (--sync 3600s)
    drop(c);
    let b = PersistentBroker::start_with(&data, &certs, &["--sync", "3600s"]).await;
    assert_eq!(retained(&b, &certs, "sync/#").await, vec![], "the unsynced change is gone after kill -9");
    let mut c = Client::connect(&MqttUrl::tcp(b.tcp), &opts("pub", &certs)).await.expect("connect");
    c.publish("sync/kept", QoS::Level1, true, "synced at the stop").await.expect("PUBLISH");
    drop(c);
    b.terminate();
    let b = PersistentBroker::start(&data, &certs).await;
    let want = vec![("sync/kept".to_string(), "synced at the stop".to_string())];
    assert_eq!(retained(&b, &certs, "sync/#").await, want, "SIGTERM syncs before the exit");
}
