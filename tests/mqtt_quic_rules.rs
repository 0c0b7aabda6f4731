//! MQTT over QUIC beyond EMQX (docs/mqtt-over-quic.md §6), over real QUIC on loopback with
//! quiclab's client and, where the client must misbehave, raw quinn streams:
//! * a data stream that ends (FIN, RESET_STREAM, STOP_SENDING) in the middle of QoS 1 and QoS 2
//!   flows loses no acknowledged message, and QoS 2 is delivered exactly once;
//! * a persistent session resumed over QUIC gets what it missed on the control stream, its
//!   subscriptions honoured, until it subscribes again on a data stream;
//! * a client that moves to a new UDP socket in the middle of a 1,000-message QoS 1 flow keeps
//!   its session: one path change, no reconnect, every message in order;
//! * a subscriber that stops reading one data stream still gets its other streams' messages;
//! * an early CONNECT the server refuses (a ticket it does not know) is sent again after the
//!   handshake, once.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::TestServer;
use quiclab::mqtt::client::{Client, ClientOptions, EarlyData, QuicConnection, StreamEnd, StreamMode};
use quiclab::mqtt::codec::{self, Decoder, Packet, Pid, QoS, Subscribe};
use quiclab::mqtt::Message;
use quiclab::tls::Trust;

fn opts(ts: &TestServer, id: &str, streams: StreamMode) -> ClientOptions {
    ClientOptions { client_id: id.into(), trust: Trust::CaFile(ts.ca()), streams, ..ClientOptions::default() }
}

async fn recv_one(c: &mut Client) -> (Option<u64>, String) {
    let r = tokio::time::timeout(Duration::from_secs(10), c.recv_with_stream()).await.expect("a message within 10 s");
    let (stream, m): (Option<u64>, Message) = r.expect("recv");
    (stream, String::from_utf8(m.payload.to_vec()).unwrap())
}

/// Exactly `k` deliveries, with the stream each came on.
async fn take(c: &mut Client, k: usize) -> Vec<(Option<u64>, String)> {
    let mut got = Vec::new();
    for _ in 0..k {
        got.push(recv_one(c).await);
    }
    got
}

/// Receive until `seen` holds `total` distinct payloads (10 s at most), then whatever else
/// arrives within 300 ms (a duplicate on its way); returns every delivery, duplicates
/// included, with its stream.
async fn collect(
    c: &mut Client,
    seen: &mut std::collections::HashSet<String>,
    total: usize,
) -> Vec<(Option<u64>, String)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < total {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(r) = tokio::time::timeout(left, c.recv_with_stream()).await else {
            panic!("only {} of {total} messages within 10 s: {got:?}", seen.len());
        };
        let (stream, m) = r.expect("recv");
        let p = String::from_utf8(m.payload.to_vec()).unwrap();
        seen.insert(p.clone());
        got.push((stream, p));
    }
    while let Ok(Ok((stream, m))) = tokio::time::timeout(Duration::from_millis(300), c.recv_with_stream()).await {
        got.push((stream, String::from_utf8(m.payload.to_vec()).unwrap()));
    }
    got
}

/// Spec §6.1–6.4: the subscriber's data stream ends in the middle of QoS 1 and QoS 2 flows
/// (messages in flight, unacknowledged, and queued behind the in-flight window). Every message
/// the broker acknowledged to the publisher reaches the subscriber; QoS 2 exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_stream_ending_mid_flow_loses_no_acknowledged_message() {
    let ts = TestServer::start().await;
    let url = ts.mqtt_quic_url();
    const N: usize = 40; // more than the in-flight window (20): some wait in the queue
    for how in [StreamEnd::Finish, StreamEnd::Reset, StreamEnd::StopSending] {
        for qos in [QoS::Level1, QoS::Level2] {
            let case = format!("{how:?}-q{}", qos as u8);
            let filter = format!("end/{case}");
            let mut sub =
                Client::connect(&url, &opts(&ts, &format!("sub-{case}"), StreamMode::PerTopic)).await.unwrap();
            sub.subscribe(&[(&filter, qos)]).await.unwrap();
            let data_stream = sub.stream_of(&filter).unwrap();
            let mut publ = Client::connect(&url, &opts(&ts, &format!("pub-{case}"), StreamMode::Single)).await.unwrap();
            for i in 0..N {
                // Returns once the broker acknowledged it (PUBACK, or PUBCOMP for QoS 2).
                publ.publish(&filter, qos, false, format!("{i}")).await.unwrap();
            }
            // The subscriber takes (and acknowledges) a few, then ends the stream with the rest
            // in flight or queued.
            let first = take(&mut sub, 5).await;
            assert!(first.iter().all(|(s, _)| *s == Some(data_stream)), "{case}: {first:?}");
            let moved_before = ts.broker().stats().core.moved_channel_closed;
            sub.end_stream(&filter, how).await.unwrap();
            let mut seen = first.iter().map(|(_, p)| p.clone()).collect();
            let rest = collect(&mut sub, &mut seen, N).await;
            let all: Vec<&String> = first.iter().chain(&rest).map(|(_, p)| p).collect();
            let mut counts: HashMap<&String, usize> = HashMap::new();
            for p in &all {
                *counts.entry(p).or_default() += 1;
            }
            for i in 0..N {
                let n = counts.get(&format!("{i}")).copied().unwrap_or(0);
                assert!(n >= 1, "{case}: message {i} lost ({all:?})");
                if qos == QoS::Level2 {
                    assert_eq!(n, 1, "{case}: QoS 2 message {i} delivered {n} times");
                }
            }
            // The rest came on the control stream (no other data stream matches).
            assert!(rest.iter().any(|(s, _)| *s == Some(0)), "{case}: re-sent on the control stream: {rest:?}");
            let stats = ts.broker().stats();
            assert!(stats.core.moved_channel_closed > moved_before, "{case}: messages moved, {stats:?}");
            assert_eq!(stats.core.dropped_queue_full, 0, "{case}");
            // Settled: nothing left in flight or queued for the subscriber.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let s = ts.broker().session(&format!("sub-{case}")).unwrap();
                if (s.inflight, s.queued, s.dropped) == (0, 0, 0) {
                    break;
                }
                assert!(Instant::now() < deadline, "{case}: session not settled: {s:?}");
                let _ = sub.recv_timeout(Duration::from_millis(50)).await;
            }
            publ.disconnect().await.unwrap();
            sub.disconnect().await.unwrap();
        }
    }
    ts.stop().await;
}

/// Spec §6.6: a persistent session resumed over QUIC gets the messages it missed on the
/// control stream, without subscribing again; once it subscribes again on a data stream, new
/// messages follow that stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_resumes_over_quic_with_nothing_lost() {
    let ts = TestServer::start().await;
    let url = ts.mqtt_quic_url();
    let persistent = ClientOptions { clean_session: false, ..opts(&ts, "dev-p", StreamMode::PerTopic) };
    let mut sub = Client::connect(&url, &persistent).await.unwrap();
    sub.subscribe(&[("p/#", QoS::Level1), ("q2", QoS::Level2)]).await.unwrap();
    sub.disconnect().await.unwrap();
    let mut publ = Client::connect(&url, &opts(&ts, "pub-p", StreamMode::Single)).await.unwrap();
    for i in 0..30 {
        let topic = if i % 3 == 0 { "q2" } else { "p/x" };
        let qos = if i % 3 == 0 { QoS::Level2 } else { QoS::Level1 };
        publ.publish(topic, qos, false, format!("{i}")).await.unwrap();
    }
    let mut sub = Client::connect(&url, &persistent).await.unwrap();
    assert!(sub.session_present(), "the stored session resumed");
    let got = collect(&mut sub, &mut Default::default(), 30).await;
    let payloads: Vec<&str> = got.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(payloads, (0..30).map(|i| i.to_string()).collect::<Vec<_>>(), "all of them, once, in order");
    assert!(got.iter().all(|(s, _)| *s == Some(0)), "delivered on the control stream: {got:?}");
    // Subscribing again on a data stream takes the subscription there.
    sub.subscribe(&[("p/#", QoS::Level1)]).await.unwrap();
    let data = sub.stream_of("p/#").unwrap();
    assert_ne!(data, 0);
    publ.publish("p/y", QoS::Level1, false, "after").await.unwrap();
    publ.publish("q2", QoS::Level2, false, "still parked").await.unwrap();
    let got = collect(&mut sub, &mut Default::default(), 2).await;
    assert!(got.contains(&(Some(data), "after".to_string())), "{got:?}");
    assert!(got.contains(&(Some(0), "still parked".to_string())), "{got:?}");
    assert_eq!(got.len(), 2, "no duplicate through the parked subscription: {got:?}");
    publ.disconnect().await.unwrap();
    sub.disconnect().await.unwrap();
    ts.stop().await;
}

/// Spec §6.14 and issue 8: the subscriber moves to a new UDP socket in the middle of a
/// 1,000-message QoS 1 flow. One path change on the broker, no reconnect, all messages in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_moves_keeps_its_session_and_every_message() {
    let ts = TestServer::start().await;
    let url = ts.mqtt_quic_url();
    for mode in [StreamMode::Single, StreamMode::PerTopic] {
        let tag = format!("{mode:?}");
        let mut sub = Client::connect(&url, &opts(&ts, &format!("mover-{tag}"), mode)).await.unwrap();
        sub.subscribe(&[(&format!("flow/{tag}"), QoS::Level1)]).await.unwrap();
        let before = ts.broker().stats();
        let publisher = {
            let (url, o, topic) = (url.clone(), opts(&ts, &format!("src-{tag}"), mode), format!("flow/{tag}"));
            tokio::spawn(async move {
                let mut p = Client::connect(&url, &o).await.unwrap();
                for i in 0..1000 {
                    p.publish(&topic, QoS::Level1, false, format!("{i}")).await.unwrap();
                }
                p.disconnect().await.unwrap();
            })
        };
        let mut got = Vec::new();
        while got.len() < 1000 {
            let m = sub.recv_timeout(Duration::from_secs(10)).await.unwrap().expect("the flow goes on");
            got.push(String::from_utf8(m.payload.to_vec()).unwrap());
            if got.len() == 500 {
                let (old, new) = sub.rebind().unwrap();
                assert_ne!(old.port(), new.port());
            }
        }
        publisher.await.unwrap();
        assert_eq!(got, (0..1000).map(|i| i.to_string()).collect::<Vec<_>>(), "{tag}: every message, in order");
        let after = ts.broker().stats();
        assert_eq!(after.quic_path_changes - before.quic_path_changes, 1, "{tag}: one path change");
        assert_eq!(
            after.core.connects_accepted - before.core.connects_accepted,
            1,
            "{tag}: no reconnect (only the publisher connected)"
        );
        sub.disconnect().await.unwrap();
    }
    ts.stop().await;
}

/// A hand-driven subscriber: quinn streams and quiclab's codec, so one stream can be left
/// unread while another is read.
struct RawStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: Decoder,
    packets: std::collections::VecDeque<Packet>,
}

impl RawStream {
    async fn open(conn: &quinn::Connection) -> RawStream {
        let (send, recv) = conn.open_bi().await.unwrap();
        RawStream { send, recv, decoder: Decoder::new(1 << 20), packets: Default::default() }
    }

    async fn send(&mut self, p: &Packet) {
        let mut buf = Vec::new();
        codec::encode(p, quiclab::mqtt::codec::Version::V3, &mut buf).unwrap();
        self.send.write_all(&buf).await.unwrap();
    }

    async fn next(&mut self, limit: Duration) -> Option<Packet> {
        loop {
            if let Some(p) = self.packets.pop_front() {
                return Some(p);
            }
            let chunk = tokio::time::timeout(limit, self.recv.read_chunk(1 << 16, true)).await.ok()?.unwrap()?;
            let mut out = Vec::new();
            self.decoder.feed(&chunk.bytes, &mut out).unwrap();
            self.packets.extend(out);
        }
    }
}

/// Issue 8, head-of-line independence (spec §6.12): a subscriber stops reading one data stream
/// until its flow-control window is full and the broker's window for it is full of
/// unacknowledged messages; deliveries on its other data stream go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_data_stream_does_not_hold_up_another() {
    let ts = TestServer::start().await;
    let link = QuicConnection::connect(&ts.mqtt_quic_url(), None, &Trust::CaFile(ts.ca())).await.unwrap();
    let conn = link.connection();
    let mut control = RawStream::open(conn).await;
    control.send(&Packet::connect(quiclab::mqtt::codec::connect_v3("hol-sub", 60))).await;
    assert!(matches!(control.next(Duration::from_secs(5)).await, Some(Packet::Connack(_))));
    let mut a = RawStream::open(conn).await;
    let mut b = RawStream::open(conn).await;
    for (s, f, id) in [(&mut a, "hol/a", 1u16), (&mut b, "hol/b", 2)] {
        let sub = Subscribe::new(
            Pid::try_from(id).unwrap(),
            vec![(codec::TopicFilter::try_from(f).unwrap(), quiclab::mqtt::codec::v3_options(QoS::Level1))],
        );
        s.send(&Packet::Subscribe(sub)).await;
        assert!(matches!(s.next(Duration::from_secs(5)).await, Some(Packet::Suback(_))), "SUBACK on its own stream");
    }
    // Fill stream A: 4 MB of QoS 1 messages, never read (the stream window is 1.25 MB).
    let url = ts.mqtt_quic_url();
    let mut publ = Client::connect(&url, &opts(&ts, "hol-pub", StreamMode::PerTopic)).await.unwrap();
    let big = vec![b'a'; 16 * 1024];
    for _ in 0..256 {
        publ.publish("hol/a", QoS::Level1, false, big.clone()).await.unwrap();
    }
    let s = ts.broker().session("hol-sub").unwrap();
    assert!(s.inflight >= 20 && s.queued > 0, "stream A is stalled with a full window and a queue: {s:?}");
    // Stream B still delivers, at once.
    for i in 0..50u32 {
        publ.publish("hol/b", QoS::Level1, false, format!("b{i}")).await.unwrap();
        match b.next(Duration::from_secs(5)).await {
            Some(Packet::Publish(p)) => {
                assert_eq!(&p.payload[..], format!("b{i}").as_bytes());
                b.send(&Packet::puback(p.qos_pid.pid().unwrap())).await;
            }
            other => panic!("message b{i} held up behind stream A: {other:?}"),
        }
    }
    // Stream A has not gone anywhere: reading it now gets its messages.
    match a.next(Duration::from_secs(5)).await {
        Some(Packet::Publish(p)) => assert_eq!(p.payload.len(), big.len()),
        other => panic!("stream A: {other:?}"),
    }
    publ.disconnect().await.unwrap();
    conn.close(0u32.into(), b"done");
    ts.stop().await;
}

/// 0-RTT refused: a ticket from one server is useless at another (same certificate, its own
/// session store), so the early CONNECT is lost with its stream; the client says so, sends
/// CONNECT again after the handshake, and the session works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_early_connect_is_sent_again_after_the_handshake() {
    let a = TestServer::start().await;
    let certs = a.dir.path().join("certs");
    let b = TestServer::start_with(|c| c.certs_dir = certs).await;
    let setup = quiclab::mqtt::client::QuicSetup::new(&Trust::CaFile(a.ca())).unwrap();
    let zero =
        |id: &str| ClientOptions { zero_rtt: true, quic: Some(setup.clone()), ..opts(&a, id, StreamMode::Single) };
    let c = Client::connect(&a.mqtt_quic_url(), &zero("first")).await.unwrap();
    assert_eq!(c.early_data(), EarlyData::NoTicket);
    c.disconnect().await.unwrap();
    let c = Client::connect(&a.mqtt_quic_url(), &zero("second")).await.unwrap();
    assert_eq!(c.early_data(), EarlyData::Accepted, "the ticket works where it came from");
    c.disconnect().await.unwrap();
    let mut c = Client::connect(&b.mqtt_quic_url(), &zero("elsewhere")).await.unwrap();
    assert_eq!(c.early_data(), EarlyData::Rejected, "another server's store does not know the ticket");
    c.subscribe(&[("after/rejection", QoS::Level1)]).await.unwrap();
    let mut p = Client::connect(&b.mqtt_quic_url(), &opts(&a, "pub", StreamMode::Single)).await.unwrap();
    p.publish("after/rejection", QoS::Level1, false, "fine").await.unwrap();
    assert_eq!(recv_one(&mut c).await.1, "fine");
    assert_eq!(b.broker().stats().core.connects_accepted, 2, "one CONNECT per connection, none doubled");
    p.disconnect().await.unwrap();
    c.disconnect().await.unwrap();
    b.stop().await;
    a.stop().await;
}
