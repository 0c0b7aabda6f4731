//! MQTT over QUIC 0-RTT over the lab's link (25 ms each way, so early data really arrives
//! before the handshake completes), docs/mqtt-over-quic.md §6.7–6.11. A timing binary: it
//! asserts when answers arrive, in RTTs of the emulated link; one test.
//!
//! * A resumed connection sends CONNECT (clean session, unknown id), SUBSCRIBE and a QoS 1
//!   PUBLISH in its first flight. CONNACK and SUBACK come back after about one RTT (acted on at
//!   once); the PUBACK only after the client's Finished reached the server (held), about two.
//! * That first flight, captured by a UDP relay in the client's namespace, is replayed from
//!   another socket, twice: while its client id has a live session (a takeover, if it were
//!   acted on) and while it has a stored persistent session (a wipe). The server's ServerHello
//!   to the replay carries no pre_shared_key: rustls' single-use session store refused the
//!   resumption, so the 0-RTT packets are never decrypted. Nothing is published, taken over or
//!   wiped. The original connection's ServerHello carries it (the positive control).

#[path = "common/lab.rs"]
mod lab_common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiclab::mqtt::client::{Client, ClientOptions, EarlyData, MqttUrl, QuicSetup, StreamMode, Transport};
use quiclab::mqtt::codec::{self, Decoder, Packet, Pid, Publish, QoS, QosPid, Subscribe};
use quiclab::tls::Trust;
use tokio::net::UdpSocket;

const ONE_WAY: Duration = Duration::from_millis(25);
const RTT: Duration = Duration::from_millis(50);

/// A UDP relay between the client (front, loopback) and the server (back): it records the
/// client's first flight of a new connection (its long-header datagrams, Initial and 0-RTT,
/// before the server's first answer) and the server's first answer (its first long-header
/// datagram). Established connections through the relay send only short-header packets.
#[derive(Default)]
struct Capture {
    first_flight: Vec<Vec<u8>>,
    first_answer: Option<Vec<u8>>,
}

struct Relay {
    front: SocketAddr,
    capture: Arc<Mutex<Capture>>,
}

impl Relay {
    async fn start(server: SocketAddr) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("0.0.0.0:0").await.unwrap());
        let capture = Arc::new(Mutex::new(Capture::default()));
        let client = Arc::new(Mutex::new(None::<SocketAddr>));
        {
            let (front, back, capture, client) = (front.clone(), back.clone(), capture.clone(), client.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *client.lock().unwrap() = Some(from);
                    {
                        let mut c = capture.lock().unwrap();
                        if c.first_answer.is_none() && n > 0 && buf[0] & 0x80 != 0 {
                            c.first_flight.push(buf[..n].to_vec());
                        }
                    }
                    let _ = back.send_to(&buf[..n], server).await;
                }
            });
        }
        {
            let (front, capture) = (front.clone(), capture.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, _)) = back.recv_from(&mut buf).await {
                    if n > 0 && buf[0] & 0x80 != 0 {
                        capture.lock().unwrap().first_answer.get_or_insert_with(|| buf[..n].to_vec());
                    }
                    let to = *client.lock().unwrap();
                    if let Some(to) = to {
                        let _ = front.send_to(&buf[..n], to).await;
                    }
                }
            });
        }
        Relay { front: front.local_addr().unwrap(), capture }
    }

    /// Forget the previous connection's capture.
    fn reset(&self) {
        *self.capture.lock().unwrap() = Capture::default();
    }

    fn take(&self) -> Capture {
        std::mem::take(&mut *self.capture.lock().unwrap())
    }
}

/// Send a captured first flight again, from a socket of its own, and return the server's first
/// answer.
async fn replay(flight: &[Vec<u8>], server: SocketAddr) -> Vec<u8> {
    let sock = UdpSocket::bind("0.0.0.0:0").await.unwrap();
    for d in flight {
        sock.send_to(d, server).await.unwrap();
    }
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), sock.recv_from(&mut buf))
        .await
        .expect("the server answers a replayed ClientHello")
        .unwrap();
    buf.truncate(n);
    buf
}

/// QUIC variable-length integer at `*i` (RFC 9000 §16).
fn varint(b: &[u8], i: &mut usize) -> u64 {
    let first = b[*i];
    let len = 1usize << (first >> 6);
    let mut v = u64::from(first & 0x3f);
    for k in 1..len {
        v = (v << 8) | u64::from(b[*i + k]);
    }
    *i += len;
    v
}

/// The extension types of the ServerHello in the server's Initial packet, decrypted with the
/// Initial keys derived from the client's original Destination Connection ID (RFC 9001 §5.2;
/// anyone on the path can do this).
fn server_hello_extensions(first_flight: &[Vec<u8>], answer: &[u8]) -> Vec<u16> {
    // The client's Initial: its DCID names the Initial keys.
    let ci = &first_flight[0];
    assert_eq!(ci[0] & 0xb0, 0x80, "the first datagram is a long-header Initial");
    let dcid = &ci[6..6 + ci[5] as usize];
    let rustls::SupportedCipherSuite::Tls13(suite) = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
    else {
        unreachable!("a TLS 1.3 suite")
    };
    let keys =
        rustls::quic::Keys::initial(rustls::quic::Version::V1, suite, suite.quic.unwrap(), dcid, rustls::Side::Client);
    // The server's Initial packet (the first in its datagram).
    let mut p = answer.to_vec();
    assert_eq!(p[0] & 0xb0, 0x80, "the server answers with an Initial");
    let mut i = 5;
    i += 1 + p[i] as usize; // DCID
    i += 1 + p[i] as usize; // SCID
    let token = varint(&p, &mut i) as usize;
    i += token;
    let length = varint(&p, &mut i) as usize;
    let pn_offset = i;
    let sample = p[pn_offset + 4..pn_offset + 20].to_vec();
    let (head, rest) = p.split_at_mut(pn_offset);
    keys.remote.header.decrypt_in_place(&sample, &mut head[0], &mut rest[..4]).unwrap();
    let pn_len = (p[0] & 0x03) as usize + 1;
    let pn = p[pn_offset..pn_offset + pn_len].iter().fold(0u64, |a, b| (a << 8) | u64::from(*b));
    let (header, payload) = p.split_at_mut(pn_offset + pn_len);
    let payload = &mut payload[..length - pn_len];
    let plain = keys.remote.packet.decrypt_in_place(pn, header, payload).expect("Initial decrypts").to_vec();
    // Frames: PADDING, PING, ACK, CRYPTO.
    let mut crypto = Vec::new();
    let mut j = 0;
    while j < plain.len() {
        match varint(&plain, &mut j) {
            0x00 | 0x01 => {}
            0x02 | 0x03 => {
                let _largest = varint(&plain, &mut j);
                let _delay = varint(&plain, &mut j);
                let ranges = varint(&plain, &mut j);
                let _first = varint(&plain, &mut j);
                for _ in 0..ranges * 2 {
                    varint(&plain, &mut j);
                }
            }
            0x06 => {
                let offset = varint(&plain, &mut j) as usize;
                let len = varint(&plain, &mut j) as usize;
                assert_eq!(offset, crypto.len(), "CRYPTO frames in order");
                crypto.extend_from_slice(&plain[j..j + len]);
                j += len;
            }
            other => panic!("unexpected frame type {other:#x} in the server's Initial"),
        }
    }
    // ServerHello (RFC 8446 §4.1.3).
    assert_eq!(crypto[0], 2, "ServerHello");
    let mut k = 4 + 2 + 32;
    k += 1 + crypto[k] as usize; // legacy_session_id_echo
    k += 2 + 1; // cipher_suite, legacy_compression_method
    let ext_end = k + 2 + u16::from_be_bytes([crypto[k], crypto[k + 1]]) as usize;
    k += 2;
    let mut types = Vec::new();
    while k < ext_end {
        let t = u16::from_be_bytes([crypto[k], crypto[k + 1]]);
        let len = u16::from_be_bytes([crypto[k + 2], crypto[k + 3]]) as usize;
        types.push(t);
        k += 4 + len;
    }
    types
}

const PRE_SHARED_KEY: u16 = 41;

fn encode(packets: &[Packet]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in packets {
        codec::encode(p, quiclab::mqtt::codec::Version::V3, &mut out).unwrap();
    }
    out
}

#[test]
fn early_mqtt_packets_follow_the_hold_rules_and_a_replayed_flight_is_refused() {
    // RUST_LOG=quiclab=debug shows the server's side.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let link = lab_common::delay_link(ONE_WAY, 7);
    let server = lab_common::start_server(&link, |cfg| {
        // A replay never completes its handshake: the server gives up on it after 1 s, so the
        // next replay (same connection IDs) is a new connection again.
        cfg.limits.handshake_timeout = Duration::from_secs(1);
        // ... and its closed connection drains in 3 PTOs, which without an RTT sample start from
        // the initial RTT estimate: close to the link's, not quinn's 333 ms.
        cfg.transport.initial_rtt = RTT * 2;
    });
    let broker = server.mqtt().expect("MQTT on").broker.clone();
    let quic = server.quic_addr();
    let ca = server.ca.clone();
    let t = link
        .spawn_in_client_ns("mqtt-0rtt-test", move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let relay = Relay::start(quic).await;
                let trust = Trust::CaFile(ca.clone());
                let setup = QuicSetup::new(&trust).unwrap();
                let url = MqttUrl { transport: Transport::Quic, host: "localhost".into(), port: relay.front.port() };
                let opts = |id: &str| ClientOptions {
                    client_id: id.into(),
                    trust: trust.clone(),
                    quic: Some(setup.clone()),
                    zero_rtt: true,
                    streams: StreamMode::Single,
                    ..ClientOptions::default()
                };
                // A watcher on the topic the early PUBLISH goes to.
                let mut watcher = Client::connect(&url, &opts("watcher")).await.unwrap();
                watcher.subscribe(&[("early/p", QoS::Level1)]).await.unwrap();
                // A connection that leaves a ticket behind (and shows resumption works).
                let c = Client::connect(&url, &opts("ticket")).await.unwrap();
                assert_ne!(c.early_data(), EarlyData::Rejected);
                c.disconnect().await.unwrap();

                // The resumed connection's first flight: CONNECT, SUBSCRIBE, PUBLISH.
                relay.reset();
                let before = broker.stats().core;
                let t0 = Instant::now();
                let connecting =
                    setup.endpoint().connect_with(setup.config().clone(), relay.front, "localhost").unwrap();
                let (conn, accepted) = connecting.into_0rtt().unwrap_or_else(|_| panic!("no 0-RTT ticket"));
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                let filter = codec::TopicFilter::try_from("early/s").unwrap();
                let publish = Publish::new(
                    QosPid::Level1(Pid::try_from(2).unwrap()),
                    codec::TopicName::try_from("early/p").unwrap(),
                    bytes::Bytes::from_static(b"sent in 0-RTT"),
                );
                let flight = encode(&[
                    Packet::connect(quiclab::mqtt::codec::connect_v3("keeper", 60)),
                    Packet::Subscribe(Subscribe::new(
                        Pid::try_from(1).unwrap(),
                        vec![(filter, quiclab::mqtt::codec::v3_options(QoS::Level1))],
                    )),
                    Packet::Publish(publish),
                ]);
                send.write_all(&flight).await.unwrap();
                let mut at = std::collections::HashMap::new();
                let mut decoder = Decoder::new(1 << 20);
                while at.len() < 3 {
                    let chunk = tokio::time::timeout(Duration::from_secs(5), recv.read_chunk(1 << 16, true))
                        .await
                        .expect("replies within 5 s")
                        .unwrap()
                        .expect("stream open");
                    let mut out = Vec::new();
                    decoder.feed(&chunk.bytes, &mut out).unwrap();
                    for p in out {
                        let name = match p {
                            Packet::Connack(_) => "CONNACK",
                            Packet::Suback(_) => "SUBACK",
                            Packet::Puback(_) => "PUBACK",
                            other => panic!("unexpected {other:?}"),
                        };
                        at.insert(name, t0.elapsed());
                    }
                }
                assert!(accepted.await, "the server accepted 0-RTT");
                let capture = relay.take();
                let rtt = RTT.as_secs_f64();
                let in_rtts = |name: &str| at[name].as_secs_f64() / rtt;
                eprintln!(
                    "CONNACK {:.2} RTT, SUBACK {:.2} RTT, PUBACK {:.2} RTT",
                    in_rtts("CONNACK"),
                    in_rtts("SUBACK"),
                    in_rtts("PUBACK")
                );
                // Acted on at once: the answer leaves with the server's first flight (~1 RTT).
                // Held: it waits for the client's Finished (~2 RTT). 1.5 RTT splits them.
                assert!(in_rtts("CONNACK") < 1.5, "early CONNECT acted on at once: {at:?}");
                assert!(in_rtts("SUBACK") < 1.5, "early SUBSCRIBE acted on at once: {at:?}");
                assert!(in_rtts("PUBACK") >= 1.5, "early PUBLISH held until the handshake completed: {at:?}");
                let after = broker.stats().core;
                assert!(after.early_acted >= before.early_acted + 2, "{after:?}");
                assert!(after.early_held > before.early_held, "{after:?}");
                let m = watcher.recv_timeout(Duration::from_secs(5)).await.unwrap().expect("the PUBLISH applied");
                assert_eq!(&m.payload[..], b"sent in 0-RTT");
                // The original ServerHello resumed the session (positive control).
                let answer = capture.first_answer.clone().expect("the server answered");
                assert!(
                    server_hello_extensions(&capture.first_flight, &answer).contains(&PRE_SHARED_KEY),
                    "the original handshake resumed with the ticket"
                );

                // The original connection goes, and quinn forgets its Initial connection ID once
                // it has drained (a replay before that would be routed to it and dropped).
                send.write_all(&encode(&[Packet::disconnect(
                    quiclab::mqtt::codec::DisconnectReasonCode::NormalDisconnect,
                )]))
                .await
                .unwrap();
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                tokio::time::sleep(Duration::from_millis(1500)).await;

                // Replay 1: "keeper" has a live session (a takeover, if the replay were acted on).
                let live = ClientOptions { zero_rtt: false, ..opts("keeper") };
                let mut live = Client::connect(&url, &live).await.unwrap();
                let published = broker.stats().core.published;
                let takeovers = broker.stats().core.takeovers;
                let answer = replay(&capture.first_flight, quic).await;
                let ext = server_hello_extensions(&capture.first_flight, &answer);
                assert!(!ext.contains(&PRE_SHARED_KEY), "rustls refused the replayed ticket: {ext:?}");
                tokio::time::sleep(RTT * 4).await;
                assert_eq!(broker.stats().core.published, published, "the replay published nothing");
                assert_eq!(broker.stats().core.takeovers, takeovers, "the replay took nothing over");
                live.ping().await.expect("the live session is untouched");
                live.disconnect().await.unwrap();

                // Replay 2: "keeper" now has a stored persistent session. (First the server gives
                // up on replay 1's half-open connection and forgets its connection IDs.)
                tokio::time::sleep(Duration::from_millis(3000)).await;
                let keeper = ClientOptions { clean_session: false, zero_rtt: false, ..opts("keeper") };
                let mut k = Client::connect(&url, &keeper).await.unwrap();
                k.subscribe(&[("keep/#", QoS::Level1)]).await.unwrap();
                k.disconnect().await.unwrap();
                let stored = broker.session("keeper").expect("stored session");
                assert!(!stored.online && !stored.clean && stored.subscriptions == 1, "{stored:?}");
                let answer = replay(&capture.first_flight, quic).await;
                let ext = server_hello_extensions(&capture.first_flight, &answer);
                assert!(!ext.contains(&PRE_SHARED_KEY), "rustls refused the replayed ticket again: {ext:?}");
                tokio::time::sleep(RTT * 4).await;
                assert_eq!(broker.session("keeper"), Some(stored), "the stored session is intact (not wiped)");
                assert_eq!(broker.stats().core.published, published, "still nothing published");
                assert_eq!(watcher.recv_timeout(Duration::from_millis(200)).await.unwrap(), None);
                watcher.disconnect().await.unwrap();
            })
        })
        .unwrap();
    t.join();
    drop(server);
}
