//! MQTT over QUIC (docs/mqtt-over-quic.md) against the same broker as MQTT over TCP:
//! single-stream mode with quiclab's client (QoS 0/1/2, retained, wildcards, will, takeover),
//! the same scripted session over TCP and QUIC giving identical outcomes, and the multi-stream
//! mapping driven by hand over quinn (acks on the publishing stream, deliveries on the
//! subscribing stream, a first flight with CONNECT + SUBSCRIBE + PUBLISH, refused
//! unidirectional streams, the control stream's end, packets not allowed on data streams).

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::TestServer;
use quiclab::mqtt::client::{Client, ClientOptions, MqttUrl, Transport};
use quiclab::mqtt::codec::{self, Connect, Decoder, Packet, Pid, Publish, QoS, QosPid, Subscribe};
use quiclab::mqtt::quic::code;
use quiclab::mqtt::Message;
use quiclab::tls::Trust;

fn quic_url(ts: &TestServer) -> MqttUrl {
    MqttUrl { transport: Transport::Quic, host: "localhost".into(), port: ts.server.quic_addr().port() }
}

fn tcp_url(ts: &TestServer) -> MqttUrl {
    MqttUrl::tcp(ts.server.mqtt_tcp_addr().unwrap())
}

fn opts(ts: &TestServer, id: &str) -> ClientOptions {
    ClientOptions { client_id: id.into(), trust: Trust::CaFile(ts.ca()), ..ClientOptions::default() }
}

async fn recv(c: &mut Client) -> Message {
    c.recv_timeout(Duration::from_secs(5)).await.expect("recv").expect("a message within 5 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_stream_every_qos_retained_wildcards() {
    let ts = TestServer::start().await;
    let url = quic_url(&ts);
    let mut p = Client::connect(&url, &opts(&ts, "p")).await.expect("connect over QUIC");
    p.publish("home/kitchen/t", QoS::Level1, true, "21").await.unwrap();
    let mut s = Client::connect(&url, &opts(&ts, "s")).await.unwrap();
    s.subscribe(&[("home/+/t", QoS::Level2), ("alerts/#", QoS::Level1)]).await.unwrap();
    let m = recv(&mut s).await;
    assert_eq!((&*m.topic, &m.payload[..], m.retain), ("home/kitchen/t", &b"21"[..], true), "retained on subscribe");
    for (i, qos) in [QoS::Level0, QoS::Level1, QoS::Level2].into_iter().enumerate() {
        p.publish(&format!("alerts/x/{i}"), qos, false, format!("m{i}")).await.unwrap();
        let m = recv(&mut s).await;
        let granted = if qos == QoS::Level2 { QoS::Level1 } else { qos };
        assert_eq!(
            (&*m.topic, &m.payload[..], m.qos),
            (&*format!("alerts/x/{i}"), format!("m{i}").as_bytes(), granted)
        );
    }
    p.disconnect().await.unwrap();
    s.disconnect().await.unwrap();
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_and_takeover_over_quic() {
    let ts = TestServer::start().await;
    let url = quic_url(&ts);
    let mut watcher = Client::connect(&url, &opts(&ts, "w")).await.unwrap();
    watcher.subscribe(&[("wills/#", QoS::Level1)]).await.unwrap();
    let mut o = opts(&ts, "dev1");
    o.will = Some(Message {
        topic: codec::TopicName::try_from("wills/dev1").unwrap(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::Level1,
        retain: false,
    });
    let first = Client::connect(&url, &o).await.unwrap();
    // A second connection with the same id takes the session over (§3.1.4-2): the first is closed
    // and, being closed without DISCONNECT, its will is published.
    let second = Client::connect(&url, &opts(&ts, "dev1")).await.unwrap();
    let m = recv(&mut watcher).await;
    assert_eq!((&*m.topic, &m.payload[..]), ("wills/dev1", &b"gone"[..]));
    drop(first);
    second.disconnect().await.unwrap();
    watcher.disconnect().await.unwrap();
    ts.stop().await;
}

/// The same scripted session over TCP and over QUIC: the subscriber sees the same messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_quic_single_stream_give_identical_outcomes() {
    let ts = TestServer::start().await;
    let mut outcomes = Vec::new();
    for (tag, url) in [("tcp", tcp_url(&ts)), ("quic", quic_url(&ts))] {
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

/// A hand-driven multi-stream client: raw quinn streams and quiclab's codec.
struct Raw {
    conn: quinn::Connection,
    _ep: quinn::Endpoint,
}

impl Raw {
    async fn connect(ts: &TestServer) -> Raw {
        let tls =
            quiclab::tls::client_config(&Trust::CaFile(ts.ca()), &[quiclab::mqtt::config::ALPN_MQTT], true).unwrap();
        let cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = ep.connect_with(cfg, ts.server.quic_addr(), "localhost").unwrap().await.unwrap();
        Raw { conn, _ep: ep }
    }
}

fn bytes_of(packets: &[Packet]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in packets {
        codec::encode(p, &mut out).unwrap();
    }
    out
}

fn connect_packet(id: &str) -> Packet {
    Packet::Connect(Connect::new(id.into(), 60))
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
    let c = Raw::connect(&ts).await;
    // First flight: CONNECT on the control stream, SUBSCRIBE on data stream A and PUBLISH on
    // data stream B, all written before CONNACK (spec §2.7).
    let (mut ctl_s, mut ctl_r) = c.conn.open_bi().await.unwrap();
    ctl_s.write_all(&bytes_of(&[connect_packet("multi")])).await.unwrap();
    let (mut a_s, mut a_r) = c.conn.open_bi().await.unwrap();
    let sub =
        Subscribe::new(Pid::try_from(1).unwrap(), vec![(codec::TopicFilter::try_from("t/#").unwrap(), QoS::Level1)]);
    a_s.write_all(&bytes_of(&[Packet::Subscribe(sub)])).await.unwrap();
    let (mut b_s, mut b_r) = c.conn.open_bi().await.unwrap();
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
    let mut uni = c.conn.open_uni().await.unwrap();
    uni.write_all(b"x").await.unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(5), uni.stopped()).await.unwrap().unwrap();
    assert_eq!(stopped, Some(quinn::VarInt::from_u32(code::UNI_STREAM_REFUSED)));
    // The control stream's end closes the connection with 0x1 (spec §3.1).
    ctl_s.finish().unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), c.conn.closed()).await.unwrap();
    match err {
        quinn::ConnectionError::ApplicationClosed(a) => {
            assert_eq!(a.error_code, quinn::VarInt::from_u32(code::CONTROL_STREAM_CLOSED))
        }
        other => panic!("{other:?}"),
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_on_a_data_stream_is_a_protocol_error() {
    let ts = TestServer::start().await;
    let c = Raw::connect(&ts).await;
    let (mut ctl_s, mut ctl_r) = c.conn.open_bi().await.unwrap();
    ctl_s.write_all(&bytes_of(&[connect_packet("bad")])).await.unwrap();
    assert!(matches!(read_packets(&mut ctl_r, 1).await[0], Packet::Connack(_)));
    let (mut d_s, _d_r) = c.conn.open_bi().await.unwrap();
    d_s.write_all(&bytes_of(&[connect_packet("again")])).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), c.conn.closed()).await.unwrap();
    match err {
        quinn::ConnectionError::ApplicationClosed(a) => {
            assert_eq!(a.error_code, quinn::VarInt::from_u32(code::PROTOCOL_ERROR))
        }
        other => panic!("{other:?}"),
    }
    // Others are served as usual.
    let mut ok = Client::connect(&quic_url(&ts), &opts(&ts, "fine")).await.unwrap();
    ok.ping().await.unwrap();
    ts.stop().await;
}
