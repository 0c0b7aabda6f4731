//! MQTT over QUIC (docs/mqtt-over-quic.md) against the same broker as MQTT over TCP:
//! single-stream and per-topic mode with quiclab's client (QoS 0/1/2, retained, wildcards, will,
//! takeover, where each topic's packets travel),
//! the same scripted session over TCP and QUIC giving identical outcomes, and the multi-stream
//! mapping driven by hand over quinn (acks on the publishing stream, deliveries on the
//! subscribing stream, a first flight with CONNECT + SUBSCRIBE + PUBLISH, refused
//! unidirectional streams, the control stream's end, packets not allowed on data streams).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::TestServer;
use quiclab::mqtt::client::{Client, ClientOptions, QuicConnection, StreamMode};
use quiclab::mqtt::codec::{self, Decoder, Packet, Pid, Publish, QoS, QosPid, Subscribe};
use quiclab::mqtt::quic::code;
use quiclab::mqtt::Message;
use quiclab::tls::Trust;

fn opts(ts: &TestServer, id: &str) -> ClientOptions {
    ClientOptions { client_id: id.into(), trust: Trust::CaFile(ts.ca()), ..ClientOptions::default() }
}

fn opts_mode(ts: &TestServer, id: &str, streams: StreamMode) -> ClientOptions {
    ClientOptions { streams, ..opts(ts, id) }
}

const MODES: [StreamMode; 2] = [StreamMode::Single, StreamMode::PerTopic];

async fn recv(c: &mut Client) -> Message {
    c.recv_timeout(Duration::from_secs(5)).await.expect("recv").expect("a message within 5 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_qos_retained_wildcards_in_both_stream_modes() {
    let ts = TestServer::start().await;
    let url = ts.mqtt_quic_url();
    for mode in MODES {
        let tag = format!("{mode:?}");
        let mut p = Client::connect(&url, &opts_mode(&ts, &format!("p-{tag}"), mode)).await.expect("connect");
        p.publish(&format!("{tag}/kitchen/t"), QoS::Level1, true, "21").await.unwrap();
        let mut s = Client::connect(&url, &opts_mode(&ts, &format!("s-{tag}"), mode)).await.unwrap();
        s.subscribe(&[(&format!("{tag}/+/t"), QoS::Level2), (&format!("alerts-{tag}/#"), QoS::Level1)]).await.unwrap();
        let m = recv(&mut s).await;
        assert_eq!(
            (&*m.topic, &m.payload[..], m.retain),
            (&*format!("{tag}/kitchen/t"), &b"21"[..], true),
            "{tag}: retained on subscribe"
        );
        for (i, qos) in [QoS::Level0, QoS::Level1, QoS::Level2].into_iter().enumerate() {
            p.publish(&format!("alerts-{tag}/x/{i}"), qos, false, format!("m{i}")).await.unwrap();
            let m = recv(&mut s).await;
            let granted = if qos == QoS::Level2 { QoS::Level1 } else { qos };
            assert_eq!(
                (&*m.topic, &m.payload[..], m.qos),
                (&*format!("alerts-{tag}/x/{i}"), format!("m{i}").as_bytes(), granted),
                "{tag}"
            );
        }
        // QoS 2 granted end to end.
        s.subscribe(&[(&format!("q2-{tag}"), QoS::Level2)]).await.unwrap();
        p.publish(&format!("q2-{tag}"), QoS::Level2, false, "exactly once").await.unwrap();
        let m = recv(&mut s).await;
        assert_eq!((&m.payload[..], m.qos), (&b"exactly once"[..], QoS::Level2), "{tag}");
        assert_eq!(s.recv_timeout(Duration::from_millis(300)).await.unwrap(), None, "{tag}: delivered once");
        // Streams: the control stream only, or one more per topic / filter.
        let (ps, ss) = (p.streams_opened(), s.streams_opened());
        match mode {
            StreamMode::Single => assert_eq!((ps, ss), (1, 1), "{tag}"),
            StreamMode::PerTopic => {
                assert_eq!((ps, ss), (1 + 5, 1 + 3), "{tag}: publisher 5 topics, subscriber 3 filters")
            }
        }
        p.disconnect().await.unwrap();
        s.disconnect().await.unwrap();
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_and_takeover_in_both_stream_modes() {
    let ts = TestServer::start().await;
    let url = ts.mqtt_quic_url();
    for mode in MODES {
        let tag = format!("{mode:?}");
        let mut watcher = Client::connect(&url, &opts_mode(&ts, &format!("w-{tag}"), mode)).await.unwrap();
        watcher.subscribe(&[(&format!("wills-{tag}/#"), QoS::Level1)]).await.unwrap();
        let mut o = opts_mode(&ts, &format!("dev1-{tag}"), mode);
        o.will = Some(Message::new(
            codec::TopicName::try_from(format!("wills-{tag}/dev1").as_str()).unwrap(),
            Bytes::from_static(b"gone"),
            QoS::Level1,
            false,
        ));
        let mut first = Client::connect(&url, &o).await.unwrap();
        first.subscribe(&[("anything", QoS::Level1)]).await.unwrap();
        // A second connection with the same id takes the session over (§3.1.4-2): the first is
        // closed and, being closed without DISCONNECT, its will is published.
        let second = Client::connect(&url, &opts_mode(&ts, &format!("dev1-{tag}"), mode)).await.unwrap();
        let m = recv(&mut watcher).await;
        assert_eq!((&*m.topic, &m.payload[..]), (&*format!("wills-{tag}/dev1"), &b"gone"[..]), "{tag}");
        let closed = first.recv_timeout(Duration::from_secs(5)).await;
        assert!(closed.is_err(), "{tag}: the taken-over connection is closed, got {closed:?}");
        second.disconnect().await.unwrap();
        watcher.disconnect().await.unwrap();
    }
    ts.stop().await;
}

/// Per-topic mode puts each topic on its own data stream: the SUBACK and the deliveries of a
/// subscription arrive on the stream of its SUBSCRIBE, the PUBACK on the publishing stream
/// (the client matches replies by stream), and the broker counts the streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_topic_mode_keeps_each_topic_on_its_stream() {
    let ts = TestServer::start().await;
    let url = ts.mqtt_quic_url();
    let mut s = Client::connect(&url, &opts_mode(&ts, "pt-sub", StreamMode::PerTopic)).await.unwrap();
    s.subscribe(&[("a", QoS::Level1), ("b/#", QoS::Level1), ("c", QoS::Level0)]).await.unwrap();
    let streams: Vec<u64> =
        ["a", "b/#", "c"].iter().map(|f| s.stream_of(f).expect("a data stream per filter")).collect();
    assert_eq!(streams, vec![4, 8, 12], "client-initiated bidirectional streams after the control stream 0");
    let mut p = Client::connect(&url, &opts_mode(&ts, "pt-pub", StreamMode::PerTopic)).await.unwrap();
    for round in 0..3 {
        for topic in ["c", "b/x", "a"] {
            p.publish(topic, QoS::Level1, false, format!("{topic}:{round}")).await.unwrap();
        }
    }
    let mut got = Vec::new();
    for _ in 0..9 {
        let (stream, m) =
            tokio::time::timeout(Duration::from_secs(5), s.recv_with_stream()).await.expect("in time").unwrap();
        got.push((stream.unwrap(), String::from_utf8(m.payload.to_vec()).unwrap()));
    }
    for (stream, payload) in &got {
        let want = match payload.split(':').next().unwrap() {
            "a" => streams[0],
            "b/x" => streams[1],
            _ => streams[2],
        };
        assert_eq!(*stream, want, "{payload} arrived on its subscription's stream");
    }
    // Per stream, in order.
    for topic in ["a", "b/x", "c"] {
        let seq: Vec<&String> = got.iter().map(|(_, p)| p).filter(|p| p.starts_with(&format!("{topic}:"))).collect();
        assert_eq!(seq, (0..3).map(|r| format!("{topic}:{r}")).collect::<Vec<_>>().iter().collect::<Vec<_>>());
    }
    assert_eq!(p.streams_opened(), 4);
    p.disconnect().await.unwrap();
    s.disconnect().await.unwrap();
    ts.stop().await;
}

/// Per-topic mode needs QUIC: over TCP the client says so instead of connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_topic_mode_over_tcp_is_refused_with_a_clear_error() {
    let ts = TestServer::start().await;
    let err = match Client::connect(&ts.mqtt_tcp_url(), &opts_mode(&ts, "x", StreamMode::PerTopic)).await {
        Ok(_) => panic!("per-topic over TCP must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("mqtt+quic://"), "{err}");
    ts.stop().await;
}

/// The same scripted session over TCP and over QUIC: the subscriber sees the same messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_quic_single_stream_give_identical_outcomes() {
    let ts = TestServer::start().await;
    let mut outcomes = Vec::new();
    for (tag, url) in [("tcp", ts.mqtt_tcp_url()), ("quic", ts.mqtt_quic_url())] {
        let mut s = Client::connect(&url, &opts(&ts, &format!("s-{tag}"))).await.unwrap();
        s.subscribe(&[(&format!("{tag}/#"), QoS::Level2)]).await.unwrap();
        let mut p = Client::connect(&url, &opts(&ts, &format!("p-{tag}"))).await.unwrap();
        let mut seen = Vec::new();
        for i in 0..30u32 {
            let qos = [QoS::Level0, QoS::Level1, QoS::Level2][(i % 3) as usize];
            p.publish(&format!("{tag}/{}", i % 4), qos, i % 5 == 0, format!("{i}")).await.unwrap();
            let m = recv(&mut s).await;
            let topic = m.topic.to_string().replacen(tag, "T", 1);
            seen.push((topic, m.payload.clone(), m.qos as u8, m.retain));
        }
        outcomes.push(seen);
        p.disconnect().await.unwrap();
        s.disconnect().await.unwrap();
    }
    assert_eq!(outcomes[0], outcomes[1]);
    ts.stop().await;
}

/// A hand-driven multi-stream client: the library's QUIC connection (ALPN `mqtt`), raw quinn
/// streams and quiclab's codec.
async fn raw_connect(ts: &TestServer) -> QuicConnection {
    QuicConnection::connect(&ts.mqtt_quic_url(), None, &Trust::CaFile(ts.ca())).await.expect("QUIC connection")
}

fn bytes_of(packets: &[Packet]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in packets {
        codec::encode(p, quiclab::mqtt::codec::Version::V3, &mut out).unwrap();
    }
    out
}

fn connect_packet(id: &str) -> Packet {
    Packet::connect(quiclab::mqtt::codec::connect_v3(id, 60))
}

async fn read_packets(recv: &mut quinn::RecvStream, want: usize) -> Vec<Packet> {
    let mut d = Decoder::new(1 << 20);
    let mut out = Vec::new();
    while out.len() < want {
        let chunk = tokio::time::timeout(Duration::from_secs(5), recv.read_chunk(1 << 16, true))
            .await
            .expect("packets within 5 s")
            .unwrap()
            .expect("stream open");
        d.feed(&chunk.bytes, &mut out).unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_stream_acks_and_deliveries_follow_their_streams() {
    let ts = TestServer::start().await;
    let quic = raw_connect(&ts).await;
    let c = quic.connection();
    // First flight: CONNECT on the control stream, SUBSCRIBE on data stream A and PUBLISH on
    // data stream B, all written before CONNACK (spec §2.7).
    let (mut ctl_s, mut ctl_r) = c.open_bi().await.unwrap();
    ctl_s.write_all(&bytes_of(&[connect_packet("multi")])).await.unwrap();
    let (mut a_s, mut a_r) = c.open_bi().await.unwrap();
    let sub = Subscribe::new(
        Pid::try_from(1).unwrap(),
        vec![(codec::TopicFilter::try_from("t/#").unwrap(), quiclab::mqtt::codec::v3_options(QoS::Level1))],
    );
    a_s.write_all(&bytes_of(&[Packet::Subscribe(sub)])).await.unwrap();
    let (mut b_s, mut b_r) = c.open_bi().await.unwrap();
    let publ = Publish::new(
        QosPid::Level1(Pid::try_from(1).unwrap()),
        codec::TopicName::try_from("t/x").unwrap(),
        Bytes::from_static(b"hi"),
    );
    // Same packet id 1 on two streams: inbound flows are keyed by (stream, id) (spec §2.6).
    // Give the SUBSCRIBE a head start so the PUBLISH finds it.
    let ctl = read_packets(&mut ctl_r, 1).await;
    assert!(matches!(ctl[0], Packet::Connack(_)), "{ctl:?}");
    let suback = read_packets(&mut a_r, 1).await;
    assert!(matches!(suback[0], Packet::Suback(_)), "SUBACK on the SUBSCRIBE's stream: {suback:?}");
    b_s.write_all(&bytes_of(&[Packet::Publish(publ)])).await.unwrap();
    let puback = read_packets(&mut b_r, 1).await;
    assert!(matches!(puback[0], Packet::Puback(_)), "PUBACK on the PUBLISH's stream: {puback:?}");
    let delivery = read_packets(&mut a_r, 1).await;
    match &delivery[0] {
        Packet::Publish(p) => assert_eq!((&*p.topic_name, &p.payload[..]), ("t/x", &b"hi"[..])),
        other => panic!("expected the delivery on the subscribing stream, got {other:?}"),
    }
    // A unidirectional stream is refused with STOP_SENDING 0x10 (spec §2.8).
    let mut uni = c.open_uni().await.unwrap();
    uni.write_all(b"x").await.unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(5), uni.stopped()).await.unwrap().unwrap();
    assert_eq!(stopped, Some(quinn::VarInt::from_u32(code::UNI_STREAM_REFUSED)));
    // The control stream's end closes the connection with 0x1 (spec §3.1).
    ctl_s.finish().unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), c.closed()).await.unwrap();
    match err {
        quinn::ConnectionError::ApplicationClosed(a) => {
            assert_eq!(a.error_code, quinn::VarInt::from_u32(code::CONTROL_STREAM_CLOSED))
        }
        other => panic!("{other:?}"),
    }
    ts.stop().await;
}

/// Spec §6.1: a data stream the client finishes is finished back once what was queued on it
/// is written, also when nothing is queued at the FIN (the writer learns of the end from the
/// channel's outbox going away), and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_data_stream_is_finished_back_and_the_connection_goes_on() {
    let ts = TestServer::start().await;
    let quic = raw_connect(&ts).await;
    let c = quic.connection();
    let (mut ctl_s, mut ctl_r) = c.open_bi().await.unwrap();
    ctl_s.write_all(&bytes_of(&[connect_packet("fin-back")])).await.unwrap();
    assert!(matches!(read_packets(&mut ctl_r, 1).await[0], Packet::Connack(_)));
    let (mut a_s, mut a_r) = c.open_bi().await.unwrap();
    let sub = Subscribe::new(
        Pid::try_from(1).unwrap(),
        vec![(codec::TopicFilter::try_from("fin/#").unwrap(), quiclab::mqtt::codec::v3_options(QoS::Level1))],
    );
    a_s.write_all(&bytes_of(&[Packet::Subscribe(sub)])).await.unwrap();
    assert!(matches!(read_packets(&mut a_r, 1).await[0], Packet::Suback(_)));
    // Nothing is queued on A now: its FIN must still be answered with the server's FIN.
    a_s.finish().unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), a_r.read_chunk(1 << 16, true))
        .await
        .expect("the server finishes its side within 5 s");
    assert!(matches!(end, Ok(None)), "the server's side of A ends with a FIN: {end:?}");
    // The subscription moved to the control stream (spec §6.1); the connection serves on.
    let publ = Publish::new(QosPid::Level0, codec::TopicName::try_from("fin/x").unwrap(), Bytes::from_static(b"on"));
    ctl_s.write_all(&bytes_of(&[Packet::Publish(publ)])).await.unwrap();
    match &read_packets(&mut ctl_r, 1).await[0] {
        Packet::Publish(p) => assert_eq!(&p.payload[..], b"on"),
        other => panic!("expected the delivery on the control stream, got {other:?}"),
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_on_a_data_stream_is_a_protocol_error() {
    let ts = TestServer::start().await;
    let quic = raw_connect(&ts).await;
    let c = quic.connection();
    let (mut ctl_s, mut ctl_r) = c.open_bi().await.unwrap();
    ctl_s.write_all(&bytes_of(&[connect_packet("bad")])).await.unwrap();
    assert!(matches!(read_packets(&mut ctl_r, 1).await[0], Packet::Connack(_)));
    let (mut d_s, _d_r) = c.open_bi().await.unwrap();
    d_s.write_all(&bytes_of(&[connect_packet("again")])).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), c.closed()).await.unwrap();
    match err {
        quinn::ConnectionError::ApplicationClosed(a) => {
            assert_eq!(a.error_code, quinn::VarInt::from_u32(code::PROTOCOL_ERROR))
        }
        other => panic!("{other:?}"),
    }
    // Others are served as usual.
    let mut ok = Client::connect(&ts.mqtt_quic_url(), &opts(&ts, "fine")).await.unwrap();
    ok.ping().await.unwrap();
    ts.stop().await;
}
