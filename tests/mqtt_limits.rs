//! Issue 13: what a hostile client can make the broker do. The deep-SUBSCRIBE kill switch
//! (a filter of ~8,300 levels once overflowed a worker's stack when the subscription was
//! matched or removed) over TCP and QUIC, with the level limit on and with it raised out of the
//! way (the trie itself must survive); and a QUIC client that sends 100,000 PINGREQ and
//! 100,000 QoS 1 PUBLISH without ever reading, against a broker in its own process whose
//! resident memory is measured.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::proc::{free_tcp_port, free_udp_port, loopback, mqtt_accepts, spawn_ready, ChildServer, ProcError};
use common::{mqtt_quic_url, TestServer};
use quiclab::mqtt::client::{Client, ClientOptions, MqttUrl, QuicConnection};
use quiclab::mqtt::codec::{self, Decoder, Packet, Pid, Publish, QoS, QosPid, Subscribe, TopicFilter};
use quiclab::tls::Trust;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The filter of the reproduction: 8,300 `+` levels and a last empty one (~17 KB).
fn deep_filter() -> String {
    "+/".repeat(8_300)
}

/// A topic name the deep filter matches: 8,301 levels.
fn deep_topic() -> String {
    "a/".repeat(8_300)
}

fn bytes_of(packets: &[Packet]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in packets {
        codec::encode(p, quiclab::mqtt::codec::Version::V3, &mut out).expect("encodable");
    }
    out
}

fn connect(id: &str, clean: bool) -> Packet {
    let mut c = quiclab::mqtt::codec::connect_v3(id, 60);
    c.clean_start = clean;
    Packet::connect(c)
}

fn pid(n: u16) -> Pid {
    Pid::try_from(n).expect("non-zero")
}

fn subscribe(filter: &str) -> Packet {
    Packet::Subscribe(Subscribe::new(
        pid(1),
        vec![(TopicFilter::try_from(filter).expect("valid filter"), quiclab::mqtt::codec::v3_options(QoS::Level1))],
    ))
}

fn publish(topic: &str, qos: QosPid, retain: bool, payload: &'static [u8]) -> Packet {
    let mut p = Publish::new(qos, codec::TopicName::try_from(topic).expect("valid topic"), Bytes::from_static(payload));
    p.retain = retain;
    Packet::Publish(p)
}

/// Read packets until the peer closes (or 5 s pass); returns them and whether it closed.
async fn read_until_closed(mut read: impl FnMut() -> ReadFut) -> (Vec<Packet>, bool) {
    let mut d = Decoder::new(1 << 20);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, read()).await {
            Ok(Some(bytes)) => d.feed(&bytes, &mut out).expect("well-formed packets from the broker"),
            Ok(None) => return (out, true),
            Err(_) => return (out, false),
        }
    }
}

type ReadFut = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Vec<u8>>> + Send>>;

/// One raw MQTT/TCP connection: write packets, read what comes back.
struct RawTcp(Arc<tokio::sync::Mutex<tokio::net::TcpStream>>);

impl RawTcp {
    async fn connect(ts: &TestServer) -> RawTcp {
        let s = tokio::net::TcpStream::connect(ts.server.mqtt_tcp_addr().expect("MQTT/TCP listener")).await.unwrap();
        RawTcp(Arc::new(tokio::sync::Mutex::new(s)))
    }

    async fn send(&self, packets: &[Packet]) {
        self.0.lock().await.write_all(&bytes_of(packets)).await.expect("write");
    }

    fn reader(&self) -> impl FnMut() -> ReadFut {
        let s = self.0.clone();
        move || {
            let s = s.clone();
            Box::pin(async move {
                let mut buf = vec![0; 1 << 16];
                match s.lock().await.read(&mut buf).await {
                    Ok(0) | Err(_) => None,
                    Ok(n) => Some(buf[..n].to_vec()),
                }
            })
        }
    }
}

/// One raw MQTT-over-QUIC control stream.
struct RawQuic {
    _quic: QuicConnection,
    send: quinn::SendStream,
    recv: Arc<tokio::sync::Mutex<quinn::RecvStream>>,
}

impl RawQuic {
    async fn connect(ts: &TestServer) -> RawQuic {
        let url = ts.mqtt_quic_url();
        let quic = QuicConnection::connect(&url, None, &Trust::CaFile(ts.ca())).await.expect("QUIC connection");
        let (send, recv) = quic.open_stream().await.expect("control stream");
        RawQuic { _quic: quic, send, recv: Arc::new(tokio::sync::Mutex::new(recv)) }
    }

    async fn send(&mut self, packets: &[Packet]) {
        self.send.write_all(&bytes_of(packets)).await.expect("write");
    }

    fn reader(&self) -> impl FnMut() -> ReadFut {
        let r = self.recv.clone();
        move || {
            let r = r.clone();
            Box::pin(async move {
                match r.lock().await.read_chunk(1 << 16, true).await {
                    Ok(Some(c)) => Some(c.bytes.to_vec()),
                    _ => None,
                }
            })
        }
    }
}

/// The broker still serves: a subscriber and a publisher over `url` exchange a message.
async fn still_serves(ts: &TestServer, url: &MqttUrl, tag: &str) {
    let opts = |id: &str| ClientOptions { client_id: id.into(), trust: Trust::CaFile(ts.ca()), ..Default::default() };
    let mut s = Client::connect(url, &opts(&format!("s-{tag}"))).await.expect("the broker accepts connections");
    s.subscribe(&[(&format!("alive/{tag}"), QoS::Level1)]).await.expect("SUBSCRIBE");
    let mut p = Client::connect(url, &opts(&format!("p-{tag}"))).await.expect("connect");
    p.publish(&format!("alive/{tag}"), QoS::Level1, false, "yes").await.expect("PUBLISH");
    let m = s.recv_timeout(Duration::from_secs(5)).await.expect("recv").expect("delivered within 5 s");
    assert_eq!(&m.payload[..], b"yes");
}

fn urls(ts: &TestServer) -> [(&'static str, MqttUrl); 2] {
    [("tcp", ts.mqtt_tcp_url()), ("quic", ts.mqtt_quic_url())]
}

/// With the default limit (128 levels) the deep SUBSCRIBE closes that client, no SUBACK, over
/// TCP and QUIC; the broker counts it and keeps serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_subscribe_closes_the_client_not_the_broker() {
    let ts = TestServer::start().await;
    let broker = ts.server.mqtt_broker().expect("broker").clone();
    let deep = deep_filter();

    let tcp = RawTcp::connect(&ts).await;
    tcp.send(&[connect("evil-tcp", false), subscribe(&deep)]).await;
    let (got, closed) = read_until_closed(tcp.reader()).await;
    assert!(closed, "TCP: the broker closes the client");
    assert!(matches!(got.as_slice(), [Packet::Connack(_)]), "TCP: CONNACK and no SUBACK: {got:?}");

    let mut quic = RawQuic::connect(&ts).await;
    quic.send(&[connect("evil-quic", false), subscribe(&deep)]).await;
    let (got, closed) = read_until_closed(quic.reader()).await;
    assert!(closed, "QUIC: the broker closes the client");
    assert!(matches!(got.as_slice(), [Packet::Connack(_)]), "QUIC: CONNACK and no SUBACK: {got:?}");

    let stats = broker.stats().core;
    assert_eq!(stats.limit_topic_levels, 2, "{stats:?}");
    assert_eq!(broker.session("evil-tcp").map(|s| s.subscriptions), Some(0), "nothing of it applied");
    for (tag, url) in urls(&ts) {
        still_serves(&ts, &url, tag).await;
    }
    ts.stop().await;
}

/// The reproduction with the limit raised out of the way: the broker grants the
/// 8,301-level filter, matches a PUBLISH against it, stores and clears a retained message that
/// deep, and removes the subscription when the client goes: every walk that used to overflow
/// the stack, over TCP and QUIC, and the broker still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trie_survives_the_reproduction_without_the_limit() {
    let ts = TestServer::start_with(|c| c.mqtt.max_topic_levels = 100_000).await;
    let broker = ts.server.mqtt_broker().expect("broker").clone();
    let (deep, topic) = (deep_filter(), deep_topic());

    // TCP: subscribe (persistent session), be matched by our own QoS 1 PUBLISH, retain and
    // clear, then close the socket (the session stays, with its subscription).
    let tcp = RawTcp::connect(&ts).await;
    tcp.send(&[
        connect("deep-tcp", false),
        subscribe(&deep),
        publish(&topic, QosPid::Level1(pid(2)), true, b"kept"),
        publish(&topic, QosPid::Level0, true, b""),
        Packet::disconnect(quiclab::mqtt::codec::DisconnectReasonCode::NormalDisconnect),
    ])
    .await;
    let (got, closed) = read_until_closed(tcp.reader()).await;
    assert!(
        closed,
        "TCP: not closed within the deadline; got {:?}",
        got.iter().map(|p| p.get_type()).collect::<Vec<_>>()
    );
    let kinds: Vec<_> = got.iter().map(|p| format!("{:?}", p.get_type())).collect();
    assert_eq!(kinds, ["Connack", "Suback", "Publish", "Puback", "Publish"], "{got:?}");
    assert_eq!(broker.stats().core.retained, 0, "cleared");
    assert_eq!(broker.session("deep-tcp").map(|s| s.subscriptions), Some(1));
    // A clean session takes the id over: the old session and its deep subscription go.
    let tcp = RawTcp::connect(&ts).await;
    tcp.send(&[
        connect("deep-tcp", true),
        Packet::disconnect(quiclab::mqtt::codec::DisconnectReasonCode::NormalDisconnect),
    ])
    .await;
    let _ = read_until_closed(tcp.reader()).await;

    // QUIC: the same, and the connection's end removes the clean session's subscription.
    let mut quic = RawQuic::connect(&ts).await;
    quic.send(&[
        connect("deep-quic", true),
        subscribe(&deep),
        publish(&topic, QosPid::Level1(pid(2)), true, b"kept"),
        publish(&topic, QosPid::Level0, true, b""),
        Packet::disconnect(quiclab::mqtt::codec::DisconnectReasonCode::NormalDisconnect),
    ])
    .await;
    let (got, closed) = read_until_closed(quic.reader()).await;
    assert!(
        closed,
        "QUIC: not closed within the deadline; got {:?}",
        got.iter().map(|p| p.get_type()).collect::<Vec<_>>()
    );
    let kinds: Vec<_> = got.iter().map(|p| format!("{:?}", p.get_type())).collect();
    assert_eq!(kinds, ["Connack", "Suback", "Publish", "Puback", "Publish"], "{got:?}");

    let stats = broker.stats().core;
    assert_eq!((stats.subscriptions, stats.retained, stats.limit_topic_levels), (0, 0, 0), "{stats:?}");
    for (tag, url) in urls(&ts) {
        still_serves(&ts, &url, tag).await;
    }
    ts.stop().await;
}

/// `quiclab mqtt broker` in its own process, for its resident memory; ready once MQTT over QUIC
/// accepts a CONNECT (`common::proc`).
struct BrokerProcess {
    proc: ChildServer,
    quic: SocketAddr,
    dir: tempfile::TempDir,
}

impl BrokerProcess {
    async fn start() -> BrokerProcess {
        const WHAT: &str = "quiclab mqtt broker";
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        let trust = Trust::CaFile(certs.join("ca.pem"));
        let spawn = || {
            let (tcp, quic) = (loopback(free_tcp_port()?), loopback(free_udp_port()?));
            let child = Command::new(env!("CARGO_BIN_EXE_quiclab"))
                .args(["mqtt", "broker", "--tcp", &tcp.to_string(), "--quic", &quic.to_string(), "--certs"])
                .arg(&certs)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|source| ProcError::Spawn { what: WHAT.into(), source })?;
            Ok((child, quic))
        };
        let ready = |quic: SocketAddr| {
            let trust = trust.clone();
            async move { mqtt_accepts(&mqtt_quic_url(quic.port()), &trust).await }
        };
        let (proc, quic) = spawn_ready(WHAT, Duration::from_secs(20), spawn, ready).await.expect("the broker starts");
        BrokerProcess { proc, quic, dir }
    }

    /// Resident memory now, KiB (`VmRSS` of /proc/PID/status).
    fn rss_kib(&self) -> u64 {
        self.proc.rss_kib().expect("VmRSS of the broker")
    }

    fn alive(&mut self) -> bool {
        self.proc.is_running()
    }
}

/// A QUIC client with a small receive window (16 KiB per stream), so that the broker's answers
/// back up as soon as it stops reading them.
async fn stingy_client(b: &BrokerProcess) -> quinn::Connection {
    let trust = Trust::CaFile(b.dir.path().join("certs/ca.pem"));
    let tls = quiclab::tls::client_config(&trust, &[b"mqtt"], true).expect("TLS client config");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS config");
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(16 << 10));
    transport.receive_window(quinn::VarInt::from_u32(64 << 10));
    cfg.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("client endpoint");
    QuicConnection::connect_on(&endpoint, &cfg, b.quic, "localhost").await.expect("QUIC connection")
}

/// Write `data` until done or until no byte has been taken for 2 s (flow control stopped us);
/// returns the bytes taken.
async fn write_until_stalled(send: &mut quinn::SendStream, data: &[u8]) -> usize {
    let mut done = 0;
    while done < data.len() {
        let end = (done + 16_384).min(data.len());
        match tokio::time::timeout(Duration::from_secs(2), send.write(&data[done..end])).await {
            Ok(Ok(n)) => done += n,
            Ok(Err(e)) => panic!("write failed after {done} bytes: {e}"),
            Err(_) => break,
        }
    }
    done
}

/// Issue 13 item 2: 100,000 PINGREQ on the control stream and 100,000 QoS 1 PUBLISH on a data
/// stream from a client that never reads. The broker stops reading each stream once its outbox
/// is full, so QUIC flow control stops the client; its resident memory grows by less than the
/// stated bound (docs/mqtt.md "Bounds": outboxes, one read and one write batch per stream, and
/// quinn's windows), and it keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_client_that_never_reads_is_bounded() {
    const N: usize = 100_000;
    /// Stated bound on the broker's growth (docs/mqtt.md): 2 streams × (1.25 MB receive window
    /// + outbox + one write batch) plus allocator slack.
    const BOUND_KIB: u64 = 12 * 1024;
    let mut b = BrokerProcess::start().await;
    let conn = stingy_client(&b).await;
    let (mut ctl, mut ctl_r) = conn.open_bi().await.expect("control stream");
    ctl.write_all(&bytes_of(&[connect("never-reads", true)])).await.expect("CONNECT");
    let mut d = Decoder::new(1 << 20);
    let mut got = Vec::new();
    while got.is_empty() {
        let c = tokio::time::timeout(Duration::from_secs(5), ctl_r.read_chunk(64, true))
            .await
            .expect("CONNACK within 5 s")
            .expect("read")
            .expect("open");
        d.feed(&c.bytes, &mut got).expect("CONNACK decodes");
    }
    assert!(matches!(got[0], Packet::Connack(_)), "{got:?}");
    let (mut data, _data_r) = conn.open_bi().await.expect("data stream");
    // The baseline once the broker has answered a PINGREQ: everything before it is handled.
    ctl.write_all(&bytes_of(&[Packet::Pingreq])).await.expect("PINGREQ");
    while !got.iter().any(|p| matches!(p, Packet::Pingresp)) {
        let c = tokio::time::timeout(Duration::from_secs(5), ctl_r.read_chunk(64, true))
            .await
            .expect("PINGRESP within 5 s")
            .expect("read")
            .expect("open");
        d.feed(&c.bytes, &mut got).expect("PINGRESP decodes");
    }
    let before = b.rss_kib();

    let pings = bytes_of(&vec![Packet::Pingreq; N]);
    let publishes: Vec<Packet> = (0..N)
        .map(|i| publish("flood", QosPid::Level1(pid((i % 65_535) as u16 + 1)), false, b"0123456789abcdef"))
        .collect();
    let publishes = bytes_of(&publishes);
    let (sent_pings, sent_pubs) =
        tokio::join!(write_until_stalled(&mut ctl, &pings), write_until_stalled(&mut data, &publishes));
    // Both writers saw 2 s without progress: the broker has stopped reading and holds what it
    // took.
    let after = b.rss_kib();
    let growth = after.saturating_sub(before);
    eprintln!(
        "broker RSS {before} KiB -> {after} KiB (+{growth} KiB; bound {BOUND_KIB} KiB); client wrote {sent_pings} of {} \
         PINGREQ bytes and {sent_pubs} of {} PUBLISH bytes",
        pings.len(),
        publishes.len()
    );
    assert!(b.alive(), "the broker process is alive");
    assert!(sent_pubs < publishes.len(), "flow control stopped the PUBLISH flood ({sent_pubs} bytes taken)");
    assert!(growth < BOUND_KIB, "broker RSS grew by {growth} KiB (bound {BOUND_KIB} KiB)");

    // Everyone else is still served.
    let url = mqtt_quic_url(b.quic.port());
    let opts = |id: &str| ClientOptions {
        client_id: id.into(),
        trust: Trust::CaFile(b.dir.path().join("certs/ca.pem")),
        ..Default::default()
    };
    let mut s = Client::connect(&url, &opts("bystander-s")).await.expect("connect while the flood is held");
    s.subscribe(&[("calm", QoS::Level1)]).await.expect("SUBSCRIBE");
    let mut p = Client::connect(&url, &opts("bystander-p")).await.expect("connect");
    p.publish("calm", QoS::Level1, false, "ok").await.expect("PUBLISH");
    let m = s.recv_timeout(Duration::from_secs(5)).await.expect("recv").expect("delivered");
    assert_eq!(&m.payload[..], b"ok");
    drop(conn);
}
