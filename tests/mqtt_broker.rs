//! MQTT broker over real sockets (TCP and TLS on loopback, ephemeral ports) with quiclab's own
//! client: every QoS both ways, retained, persistent sessions, wills, takeover, bad input,
//! bounded queues for slow subscribers, shutdown.

mod common;

use std::time::Duration;

use bytes::Bytes;
use quiclab::mqtt::client::{self, connect_raw, Client, ClientOptions, MqttUrl};
use quiclab::mqtt::codec::{Packet, Publish, QoS, QosPid, SubscribeReasonCode};
use quiclab::mqtt::tcp::{self, MqttListeners};
use quiclab::mqtt::{Message, MqttConfig, MqttError};
use quiclab::tls::{CertStore, Trust};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct TestBroker {
    l: MqttListeners,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    dir: tempfile::TempDir,
}

impl TestBroker {
    async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut MqttConfig)) -> TestBroker {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::load_or_create(&dir.path().join("certs")).unwrap();
        let tls = quiclab::tls::tcp_server_config(&store, &[quiclab::mqtt::config::ALPN_MQTT]).unwrap();
        let mut cfg = MqttConfig::ephemeral();
        tweak(&mut cfg);
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let l = tcp::start(&cfg, Some(tls), &shutdown, &tracker).unwrap();
        TestBroker { l, shutdown, tracker, dir }
    }

    fn tcp_url(&self) -> MqttUrl {
        MqttUrl::tcp(self.l.tcp.unwrap())
    }

    fn tls_url(&self) -> MqttUrl {
        MqttUrl::tls_localhost(self.l.tls.unwrap().port())
    }

    fn opts(&self, id: &str) -> ClientOptions {
        ClientOptions {
            client_id: id.into(),
            trust: Trust::CaFile(self.dir.path().join("certs/ca.pem")),
            connect_timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        }
    }

    async fn client(&self, id: &str) -> Client {
        Client::connect(&self.tcp_url(), &self.opts(id)).await.expect("connect")
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await.expect("tasks end on shutdown");
    }
}

async fn recv(c: &mut Client) -> Message {
    c.recv_timeout(Duration::from_secs(5)).await.expect("recv").expect("a message within 5 s")
}

async fn nothing(c: &mut Client) {
    if let Some(m) = c.recv_timeout(Duration::from_millis(200)).await.expect("recv") {
        panic!("unexpected message {m:?}");
    }
}

async fn pubsub_all_qos(url: MqttUrl, b: &TestBroker) {
    let mut sub = Client::connect(&url, &b.opts("sub")).await.unwrap();
    let codes = sub.subscribe(&[("a/#", QoS::Level2)]).await.unwrap();
    assert_eq!(codes, vec![SubscribeReasonCode::GrantedQoS2]);
    let mut publ = Client::connect(&url, &b.opts("pub")).await.unwrap();
    for (i, qos) in [QoS::Level0, QoS::Level1, QoS::Level2].into_iter().enumerate() {
        publ.publish(&format!("a/{i}"), qos, false, format!("m{i}")).await.unwrap();
        let m = recv(&mut sub).await;
        assert_eq!(
            (&*m.topic, &m.payload[..], m.qos, m.retain),
            (&*format!("a/{i}"), format!("m{i}").as_bytes(), qos, false)
        );
    }
    publ.disconnect().await.unwrap();
    sub.disconnect().await.unwrap();
}

#[tokio::test]
async fn pubsub_every_qos_over_tcp_and_tls() {
    let b = TestBroker::start().await;
    pubsub_all_qos(b.tcp_url(), &b).await;
    pubsub_all_qos(b.tls_url(), &b).await;
    let s = b.l.broker.stats();
    assert!(s.core.delivered >= 6, "{s:?}");
    b.stop().await;
}

#[tokio::test]
async fn retained_messages() {
    let b = TestBroker::start().await;
    let mut p = b.client("p").await;
    p.publish("r/1", QoS::Level1, true, "one").await.unwrap();
    p.publish("r/2", QoS::Level0, true, "two").await.unwrap();
    p.publish("r/2", QoS::Level0, true, "two again").await.unwrap();
    let mut s = b.client("s").await;
    s.subscribe(&[("r/+", QoS::Level1)]).await.unwrap();
    let mut got = [recv(&mut s).await, recv(&mut s).await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!((&*got[0].topic, &got[0].payload[..], got[0].retain), ("r/1", &b"one"[..], true));
    assert_eq!((&*got[1].topic, &got[1].payload[..], got[1].retain), ("r/2", &b"two again"[..], true));
    // Live forwarding has RETAIN 0; an empty retained message clears.
    p.publish("r/1", QoS::Level0, true, "").await.unwrap();
    let m = recv(&mut s).await;
    assert!(!m.retain && m.payload.is_empty());
    let mut s2 = b.client("s2").await;
    s2.subscribe(&[("r/#", QoS::Level0)]).await.unwrap();
    assert_eq!(&*recv(&mut s2).await.topic, "r/2");
    nothing(&mut s2).await;
    b.stop().await;
}

#[tokio::test]
async fn persistent_session_across_reconnect() {
    let b = TestBroker::start().await;
    let mut o = b.opts("dev");
    o.clean_session = false;
    let mut d = Client::connect(&b.tcp_url(), &o).await.unwrap();
    assert!(!d.session_present());
    d.subscribe(&[("cmd/#", QoS::Level2)]).await.unwrap();
    d.disconnect().await.unwrap();

    let mut p = b.client("p").await;
    p.publish("cmd/1", QoS::Level1, false, "one").await.unwrap();
    p.publish("cmd/2", QoS::Level2, false, "two").await.unwrap();
    p.publish("cmd/0", QoS::Level0, false, "zero").await.unwrap();
    p.ping().await.unwrap(); // the broker handles a connection's packets in order
    let info = b.l.broker.session("dev").unwrap();
    assert_eq!((info.online, info.queued), (false, 3));

    let mut d = Client::connect(&b.tcp_url(), &o).await.unwrap();
    assert!(d.session_present());
    let got: Vec<_> = [recv(&mut d).await, recv(&mut d).await, recv(&mut d).await]
        .iter()
        .map(|m| (m.topic.to_string(), m.qos))
        .collect();
    assert_eq!(got, vec![("cmd/1".into(), QoS::Level1), ("cmd/2".into(), QoS::Level2), ("cmd/0".into(), QoS::Level0)]);
    d.disconnect().await.unwrap();
    b.stop().await;
}

#[tokio::test]
async fn unacked_qos1_is_redelivered_with_dup_after_reconnect() {
    let b = TestBroker::start().await;
    let mut o = b.opts("slowpoke");
    o.clean_session = false;
    let mut d = Client::connect(&b.tcp_url(), &o).await.unwrap();
    d.subscribe(&[("x", QoS::Level1)]).await.unwrap();
    // Continue by hand: read the PUBLISH and never acknowledge it.
    let (mut r, w) = d.into_parts();
    let mut p = b.client("p").await;
    p.publish("x", QoS::Level1, false, "ack me").await.unwrap();
    let first = match r.next().await.unwrap().unwrap() {
        Packet::Publish(p) => p,
        other => panic!("{other:?}"),
    };
    assert!(!first.dup);
    drop((r, w));
    common::wait_until("the broker sees the connection go", Duration::from_secs(5), || {
        b.l.broker.session("slowpoke").is_some_and(|s| !s.online)
    })
    .await;
    let (mut r, mut w) = connect_raw(&b.tcp_url(), &Trust::WebPki, Duration::from_secs(5), 1 << 20).await.unwrap();
    w.send(&o.connect_packet().unwrap()).await.unwrap();
    assert!(matches!(r.next().await.unwrap(), Some(Packet::Connack(c)) if c.session_present));
    match r.next().await.unwrap().unwrap() {
        // MQTT 3.1.1 §4.4: same packet id, DUP set.
        Packet::Publish(p) => {
            assert!(p.dup);
            assert_eq!(p.qos_pid, first.qos_pid);
            assert_eq!(&p.payload[..], b"ack me");
            w.send(&Packet::puback(p.qos_pid.pid().unwrap())).await.unwrap();
        }
        other => panic!("{other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn will_on_abrupt_close_and_takeover() {
    let b = TestBroker::start().await;
    let mut watch = b.client("watch").await;
    watch.subscribe(&[("status/#", QoS::Level1)]).await.unwrap();
    let mut o = b.opts("dev1");
    o.will =
        Some(Message::new(client::topic("status/dev1").unwrap(), Bytes::from_static(b"offline"), QoS::Level1, false));
    let dev = Client::connect(&b.tcp_url(), &o).await.unwrap();
    dev.abort();
    let m = recv(&mut watch).await;
    assert_eq!((&*m.topic, &m.payload[..]), ("status/dev1", &b"offline"[..]));

    // Takeover (§3.1.4-2): the first connection is closed, its will published.
    let mut first = Client::connect(&b.tcp_url(), &o).await.unwrap();
    let mut second = b.client("dev1").await;
    assert!(matches!(first.recv_timeout(Duration::from_secs(5)).await, Err(MqttError::Closed)));
    assert_eq!(&recv(&mut watch).await.payload[..], b"offline");
    second.ping().await.unwrap();
    // A clean DISCONNECT publishes nothing.
    second.disconnect().await.unwrap();
    nothing(&mut watch).await;
    b.stop().await;
}

#[tokio::test]
async fn keepalive_expiry_publishes_the_will() {
    let b = TestBroker::start().await;
    let mut watch = b.client("watch").await;
    watch.subscribe(&[("gone", QoS::Level0)]).await.unwrap();
    // Connect by hand with keepalive 1 s and then stay silent.
    let (mut r, mut w) = connect_raw(&b.tcp_url(), &Trust::WebPki, Duration::from_secs(5), 1 << 20).await.unwrap();
    let mut c = quiclab::mqtt::codec::connect_v3("sleepy", 1);
    c.last_will = Some(quiclab::mqtt::codec::LastWill::new(
        QoS::Level0,
        client::topic("gone").unwrap(),
        Bytes::from_static(b"sleepy"),
    ));
    w.send(&Packet::connect(c)).await.unwrap();
    assert!(matches!(r.next().await.unwrap(), Some(Packet::Connack(_))));
    let t0 = std::time::Instant::now();
    // The broker closes after 1.5 × keepalive.
    let end = tokio::time::timeout(Duration::from_secs(5), r.next()).await.expect("closed in time");
    assert!(matches!(end, Ok(None)), "{end:?}");
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(1400), "closed too early: {waited:?}");
    assert_eq!(&recv(&mut watch).await.payload[..], b"sleepy");
    assert_eq!(b.l.broker.stats().core.keepalive_timeouts, 1);
    b.stop().await;
}

/// Send raw bytes after an optional CONNECT and check the broker closes the connection.
async fn closed_after(b: &TestBroker, connect_first: bool, bytes: &[u8]) {
    let (mut r, mut w) = connect_raw(&b.tcp_url(), &Trust::WebPki, Duration::from_secs(5), 1 << 20).await.unwrap();
    if connect_first {
        w.send(&Packet::connect(quiclab::mqtt::codec::connect_v3("bad", 0))).await.unwrap();
        assert!(matches!(r.next().await.unwrap(), Some(Packet::Connack(_))));
    }
    w.queue_raw(bytes);
    w.flush().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match r.next().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("closed within 5 s");
    assert!(!matches!(end, Ok(Some(_))), "{bytes:02x?}: {end:?}");
}

#[tokio::test]
async fn bad_input_closes_only_that_connection() {
    let b = TestBroker::start_with(|c| c.max_packet_size = 1024).await;
    let mut bystander = b.client("bystander").await;
    bystander.subscribe(&[("ok", QoS::Level1)]).await.unwrap();
    let cases: &[(&str, bool, &[u8])] = &[
        ("anything before CONNECT", false, &[0xc0, 0x00]),
        ("bad remaining length", true, &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
        ("reserved flags", true, &[0x41, 0x02, 0x00, 0x01]),
        ("invalid UTF-8", true, &[0x30, 0x04, 0x00, 0x02, 0xc3, 0x28]),
        ("NUL in topic", true, &[0x30, 0x03, 0x00, 0x01, 0x00]),
        ("wildcard in PUBLISH topic", true, &[0x30, 0x03, 0x00, 0x01, b'#']),
        ("packet id 0", true, &[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00]),
        ("second CONNECT", true, &[0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 0, 0, 1, b'x']),
        ("oversized packet", true, &[0x30, 0x80, 0x10]),
        ("server-to-client packet", true, &[0x20, 0x02, 0x00, 0x00]),
    ];
    for (what, connect_first, bytes) in cases {
        eprintln!("case: {what}");
        closed_after(&b, *connect_first, bytes).await;
    }
    // The bystander's session was not affected.
    let mut p = b.client("p").await;
    p.publish("ok", QoS::Level1, false, "still here").await.unwrap();
    assert_eq!(&recv(&mut bystander).await.payload[..], b"still here");
    assert!(b.l.broker.stats().core.violations >= cases.len() as u64);
    b.stop().await;
}

#[tokio::test]
async fn unsupported_protocol_level_gets_connack_0x01() {
    let b = TestBroker::start().await;
    let (mut r, mut w) = connect_raw(&b.tcp_url(), &Trust::WebPki, Duration::from_secs(5), 1 << 20).await.unwrap();
    // Level 6: no MQTT version this broker speaks (5 is MQTT 5).
    w.queue_raw(&[0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 0, 0, 1, b'x']);
    w.flush().await.unwrap();
    match r.next().await.unwrap() {
        Some(Packet::Connack(c)) => {
            assert_eq!(c.reason_code, quiclab::mqtt::codec::ConnectReasonCode::UnsupportedProtocolVersion)
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(r.next().await, Ok(None)));
    b.stop().await;
}

#[tokio::test]
async fn slow_subscriber_cannot_grow_broker_memory() {
    let b = TestBroker::start_with(|c| {
        c.channel_queue = 50;
        c.max_queued_messages = 100;
        c.max_inflight = 10;
    })
    .await;
    // A subscriber that never reads.
    let (mut r, mut w) = connect_raw(&b.tcp_url(), &Trust::WebPki, Duration::from_secs(5), 1 << 20).await.unwrap();
    let mut c = quiclab::mqtt::codec::connect_v3("stuck", 0);
    c.clean_start = false;
    w.send(&Packet::connect(c)).await.unwrap();
    assert!(matches!(r.next().await.unwrap(), Some(Packet::Connack(_))));
    w.send(&Packet::Subscribe(quiclab::mqtt::codec::Subscribe::new(
        quiclab::mqtt::codec::Pid::try_from(1u16).unwrap(),
        vec![(client::filter("flood/#").unwrap(), quiclab::mqtt::codec::v3_options(QoS::Level1))],
    )))
    .await
    .unwrap();
    assert!(matches!(r.next().await.unwrap(), Some(Packet::Suback(_))));

    // 20,000 QoS 0 messages of 4 KiB (80 MiB, far beyond the socket buffers) and 300 QoS 1.
    let (mut pr, mut pw) = connect_raw(&b.tcp_url(), &Trust::WebPki, Duration::from_secs(5), 1 << 20).await.unwrap();
    pw.send(&Packet::connect(quiclab::mqtt::codec::connect_v3("flooder", 0))).await.unwrap();
    assert!(matches!(pr.next().await.unwrap(), Some(Packet::Connack(_))));
    let payload = Bytes::from(vec![7u8; 4096]);
    for i in 0..20_000u32 {
        let p = Publish::new(QosPid::Level0, client::topic("flood/0").unwrap(), payload.clone());
        pw.queue(&Packet::Publish(p)).unwrap();
        if i % 100 == 0 {
            pw.flush().await.unwrap();
        }
    }
    for i in 1..=300u16 {
        let p = Publish::new(QosPid::Level1(i.try_into().unwrap()), client::topic("flood/1").unwrap(), payload.clone());
        pw.queue(&Packet::Publish(p)).unwrap();
    }
    pw.flush().await.unwrap();
    // The publisher is never held up: all 300 PUBACKs arrive.
    let mut acks = 0;
    while acks < 300 {
        match tokio::time::timeout(Duration::from_secs(10), pr.next()).await.expect("PUBACKs keep coming") {
            Ok(Some(Packet::Puback(_))) => acks += 1,
            other => panic!("{other:?}"),
        }
    }
    let s = b.l.broker.stats();
    assert!(s.dropped_qos0_channel_full > 10_000, "{s:?}");
    let info = b.l.broker.session("stuck").unwrap();
    assert_eq!(info.inflight, 10);
    assert_eq!(info.queued, 100, "{info:?}");
    assert_eq!(info.dropped, 190);
    drop((r, w));
    b.stop().await;
}

#[tokio::test]
async fn shutdown_closes_connections() {
    let b = TestBroker::start().await;
    let mut c = b.client("c").await;
    let tracker = b.tracker.clone();
    b.shutdown.cancel();
    assert!(matches!(c.recv_timeout(Duration::from_secs(5)).await, Err(MqttError::Closed)));
    tracker.close();
    tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await.unwrap();
}

#[tokio::test]
async fn url_parsing() {
    let u: MqttUrl = "mqtt://localhost".parse().unwrap();
    assert_eq!((u.host.as_str(), u.port), ("localhost", 1883));
    let u: MqttUrl = "mqtts://[::1]:9999".parse().unwrap();
    assert_eq!((u.host.as_str(), u.port, u.transport), ("::1", 9999, quiclab::mqtt::client::Transport::Tls));
    let u: MqttUrl = "mqtt+quic://example.org".parse().unwrap();
    assert_eq!(u.port, 14567);
    assert!("http://x".parse::<MqttUrl>().is_err());
    assert!("mqtt://x/path".parse::<MqttUrl>().is_err());
    assert_eq!(u.to_string(), "mqtt+quic://example.org:14567");
}
