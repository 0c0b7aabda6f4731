//! Unit tests: RFC 9001 A.5, and synthetic HTTP/2 and HTTP/3 connections with known holes.

use std::net::Ipv4Addr;

use super::build::*;
use super::crypto::{expand_label, HpKey, QuicKeys, Suite, TlsKeys};
use super::quic::{decode_pn, open, unprotect, walk_frames};
use super::*;

fn unhex(s: &str) -> Vec<u8> {
    hex(s).expect("hex")
}

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// RFC 9001 Appendix A.5: ChaCha20-Poly1305 short header packet.
#[test]
fn rfc9001_a5_chacha20_short_header() {
    let secret = unhex("9ac312a7f877468ebe69422748ad00a15443f18203a07d6060f688f30f21632b");
    let s = Suite::ChaCha20Poly1305;
    assert_eq!(
        expand_label(s, &secret, b"quic key", 32),
        Some(unhex("c6d98ff3441c3fe1b2182094f69caa2ed4b716b65488960a7a984979fb23e1c8"))
    );
    assert_eq!(expand_label(s, &secret, b"quic iv", 12), Some(unhex("e0459b3474bdd0e44a41c144")));
    assert_eq!(
        expand_label(s, &secret, b"quic hp", 32),
        Some(unhex("25a282b9e82f06f21f488917a4fc8f1b73573685608597d0efcb076b0ab7a7a4"))
    );
    assert_eq!(
        expand_label(s, &secret, b"quic ku", 32),
        Some(unhex("1223504755036d556342ee9361d253421a826c9ecdf3c7148684b36b714881f9"))
    );
    let pkt = unhex("4cfe4189655e5cd55c41f69080575d7999c25a5bfb");
    let hp = HpKey::new(s, &secret).expect("hp key");
    assert_eq!(hp.mask(&pkt[5..21]), Some(unhex("aefefe7d03").try_into().expect("5 bytes")));
    let u = unprotect(&pkt, 0, &hp).expect("unprotect");
    assert_eq!(u.header, unhex("4200bff4"));
    let pn = decode_pn(Some(654_360_563), u.truncated_pn, u.pn_len);
    assert_eq!(pn, 654_360_564);
    let keys = QuicKeys::new(s, &secret).expect("keys");
    let plain = open(&pkt, &u, &keys, pn).expect("authenticates");
    assert_eq!(plain, vec![0x01]);
    let mut frames = Vec::new();
    assert_eq!(walk_frames(&plain, &mut frames), Ok(()));
    assert!(frames.is_empty());
}

#[test]
fn packet_number_decoding_rfc9000_a3() {
    // The example of RFC 9000 A.3.
    assert_eq!(decode_pn(Some(0xa82f30ea), 0x9b32, 2), 0xa82f9b32);
}

#[test]
fn key_log_tolerates_junk() {
    let cr = "07".repeat(32);
    let text = format!(
        "# comment\n\nnonsense\nCLIENT_RANDOM zz 00\nSERVER_TRAFFIC_SECRET_0 {cr} {}\nX {cr} 0g\n",
        "ab".repeat(32)
    );
    let k = KeyLog::parse(&text);
    assert_eq!(k.len(), 1);
    assert_eq!(k.get(&[7; 32], "SERVER_TRAFFIC_SECRET_0"), Some(&[0xab; 32][..]));
    assert_eq!(k.get(&[7; 32], "X"), None);
}

fn pkt(ms: u64, direction: Direction, fate: Fate, data: Vec<u8>) -> TapPacket {
    TapPacket { at_ns: ms * 1_000_000, direction, fate, data }
}

fn stream(c: &ConnStall, id: u64) -> &StreamStall {
    c.streams.iter().find(|s| s.id == id).unwrap_or_else(|| panic!("stream {id} in {c:#?}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// One synthetic HTTP/2-over-TLS-1.3 connection as the tap sees it: the key log for client
/// random `cr`, the handshake and application keys, and builders of its packets.
struct H2Tap {
    cr: [u8; 32],
    keys: KeyLog,
    hk: TlsKeys,
    ak: TlsKeys,
    cport: u16,
    sport: u16,
    isn: u32,
}

impl H2Tap {
    fn new(cr: [u8; 32], hs: [u8; 32], app: [u8; 32], cport: u16, isn: u32) -> H2Tap {
        let keys = KeyLog::parse(
            &(key_line("SERVER_HANDSHAKE_TRAFFIC_SECRET", &cr, &hs) + &key_line("SERVER_TRAFFIC_SECRET_0", &cr, &app)),
        );
        let hk = TlsKeys::new(Suite::Aes128Gcm, &hs).expect("keys");
        let ak = TlsKeys::new(Suite::Aes128Gcm, &app).expect("keys");
        H2Tap { cr, keys, hk, ak, cport, sport: 443, isn }
    }

    /// The SYN-ACK at 1 ms and the ClientHello (carrying the client random) at 2 ms.
    fn start(&self) -> Vec<TapPacket> {
        let (sport, cport) = (self.sport, self.cport);
        let mut hello = vec![22, 3, 1, 0, 47, 1, 0, 0, 43, 3, 3];
        hello.extend_from_slice(&self.cr);
        hello.extend_from_slice(&[0; 11]);
        vec![
            pkt(1, Direction::Down, Fate::Forwarded, ipv4(SERVER, CLIENT, 6, &tcp(sport, cport, self.isn, 0x12, &[]))),
            pkt(2, Direction::Up, Fate::Forwarded, ipv4(CLIENT, SERVER, 6, &tcp(cport, sport, 1, 0x18, &hello))),
        ]
    }

    /// ServerHello, the handshake's Finished and the server's SETTINGS (application record 0).
    fn handshake_records(&self) -> [Vec<u8>; 3] {
        [
            vec![22, 3, 3, 0, 4, 2, 0, 0, 0],
            tls_record(&self.hk, 0, 22, &[20, 0, 0, 0]),
            tls_record(&self.ak, 0, 23, &h2_frame(4, 0, 0)),
        ]
    }

    /// A server → client segment at sequence number `seq`.
    fn down(&self, seq: u32, payload: &[u8]) -> Vec<u8> {
        ipv4(SERVER, CLIENT, 6, &tcp(self.sport, self.cport, seq, 0x18, payload))
    }
}

/// HTTP/2: a segment carrying a record of stream 1 is lost; stream 1's next record and stream
/// 3's records arrive and wait for its retransmission: own stall for 1, collateral for 3.
#[test]
fn h2_loss_of_stream_1_stalls_stream_3_collaterally() {
    let (cport, isn) = (40000u16, 1000u32);
    let h = H2Tap::new([7; 32], [1; 32], [2; 32], cport, isn);
    let ak = &h.ak;
    let mut records = h.handshake_records().to_vec();
    records.extend([
        tls_record(ak, 1, 23, &h2_frame(0, 1, 100)),
        tls_record(ak, 2, 23, &h2_frame(0, 1, 100)),
        tls_record(ak, 3, 23, &h2_frame(0, 3, 100)),
        tls_record(ak, 4, 23, &h2_frame(0, 3, 100)),
    ]);
    let down = |seq: u32, payload: &[u8]| h.down(seq, payload);
    let mut packets = h.start();
    let mut seq = isn + 1;
    let mut lost_len = 0;
    for (i, r) in records.iter().enumerate() {
        let t = 10 + i as u64;
        if i == 3 {
            packets.push(pkt(t, Direction::Down, Fate::DroppedLoss, down(seq, r)));
            packets.push(pkt(50, Direction::Down, Fate::Forwarded, down(seq, r)));
            lost_len = r.len() as u64;
        } else {
            packets.push(pkt(t, Direction::Down, Fate::Forwarded, down(seq, r)));
        }
        seq += r.len() as u32;
    }
    let a = analyze(&packets, &h.keys, SERVER);
    assert_eq!(a.connections.len(), 1, "{a:#?}");
    let c = &a.connections[0];
    assert_eq!(c.protocol, Protocol::H2);
    assert_eq!(c.client_port, cport);
    assert_eq!(c.cipher_suite, Some("TLS13_AES_128_GCM_SHA256"));
    assert_eq!(c.undecryptable, 0);
    // Records go out at 10 + i ms; record 3 (stream 1) is lost at 13 and retransmitted at 50.
    assert!(close(c.stall_ms, 36.0), "{c:#?}");
    let s1 = stream(c, 1);
    assert!(close(s1.stall_ms, 36.0), "{s1:#?}");
    assert!(close(s1.collateral_stall_ms, 0.0), "{s1:#?}");
    assert_eq!(s1.delivered_bytes, 2 * 109);
    assert_eq!(s1.stalled_bytes, 109);
    // The frame's 109 bytes; the record's header and tag belong to no stream.
    assert_eq!(s1.lost_bytes, 109);
    assert!(lost_len > 109);
    assert_eq!(s1.complete_ms, Some(50.0));
    let s3 = stream(c, 3);
    assert!(close(s3.stall_ms, 35.0), "{s3:#?}");
    assert!(close(s3.collateral_stall_ms, 35.0), "{s3:#?}");
    assert_eq!(s3.lost_bytes, 0);
    assert_eq!(s3.first_arrival_ms, Some(15.0));
    let s0 = stream(c, 0);
    assert!(close(s0.stall_ms, 0.0));
}

/// HTTP/2: ONE record carries a frame of stream 1 and then one of stream 3, in three segments;
/// the first is lost and comes back at 60 ms. The later segments arrived at 11 and 12 ms and
/// waited although their record could not be complete: stream 1's bytes in them for their own
/// stream's missing bytes, stream 3's only for stream 1's (collateral). Counting a record only
/// once its last byte arrived would show no stall at all here.
#[test]
fn h2_segments_after_a_loss_inside_one_record_wait() {
    let (cport, isn) = (40001u16, 5000u32);
    let h = H2Tap::new([9; 32], [3; 32], [4; 32], cport, isn);
    let mut two = h2_frame(0, 1, 1000);
    two.extend_from_slice(&h2_frame(0, 3, 1000));
    let big = tls_record(&h.ak, 1, 23, &two);
    assert_eq!(big.len(), 5 + 2018 + 1 + 16);
    let down = |seq: u32, payload: &[u8]| h.down(seq, payload);
    let mut packets = h.start();
    let mut seq = isn + 1;
    for r in &h.handshake_records() {
        packets.push(pkt(5, Direction::Down, Fate::Forwarded, down(seq, r)));
        seq += r.len() as u32;
    }
    // Record offsets: stream 1's frame is plaintext [0, 1009) = record [5, 1014), stream 3's
    // record [1014, 2023). Segments: [0, 700) lost, [700, 1400) at 11, [1400, 2040) at 12.
    let (a, b) = (&big[..700], &big[700..1400]);
    packets.push(pkt(10, Direction::Down, Fate::DroppedLoss, down(seq, a)));
    packets.push(pkt(11, Direction::Down, Fate::Forwarded, down(seq + 700, b)));
    packets.push(pkt(12, Direction::Down, Fate::Forwarded, down(seq + 1400, &big[1400..])));
    packets.push(pkt(60, Direction::Down, Fate::Forwarded, down(seq, a)));
    let an = analyze(&packets, &h.keys, SERVER);
    let c = &an.connections[0];
    assert_eq!((c.protocol, c.undecryptable), (Protocol::H2, 0), "{c:#?}");
    assert!(close(c.stall_ms, 49.0), "{c:#?}");
    let s1 = stream(c, 1);
    assert!(close(s1.stall_ms, 49.0), "{s1:#?}");
    assert!(close(s1.collateral_stall_ms, 0.0), "its own bytes were missing: {s1:#?}");
    assert_eq!(s1.lost_bytes, 695, "record offsets 5..700 are stream 1's");
    assert_eq!(s1.stalled_bytes, 1009 - 695);
    let s3 = stream(c, 3);
    assert!(close(s3.stall_ms, 49.0), "{s3:#?}");
    assert!(close(s3.collateral_stall_ms, 49.0), "only stream 1's bytes were missing: {s3:#?}");
    assert_eq!((s3.lost_bytes, s3.stalled_bytes, s3.delivered_bytes), (0, 1009, 1009));
}

/// HTTP/3: stream 4 loses a packet, stream 8's data (sent after it) never waits; a key update
/// in the middle is followed.
#[test]
fn h3_loss_on_stream_4_never_stalls_stream_8() {
    let cr = [9u8; 32];
    let secret = [3u8; 32];
    let other = [4u8; 32];
    let keys = KeyLog::parse(
        &(key_line("SERVER_TRAFFIC_SECRET_0", &[8; 32], &other) + &key_line("SERVER_TRAFFIC_SECRET_0", &cr, &secret)),
    );
    let s = Suite::ChaCha20Poly1305;
    let k0 = QuicKeys::new(s, &secret).expect("keys");
    let k1 = k0.next().expect("next");
    let hp = HpKey::new(s, &secret).expect("hp");
    let dcid = [0xd1; 8];
    let (cport, sport) = (50000u16, 4433u16);
    let dg = |pn: u64, phase: bool, k: &QuicKeys, frames: Vec<u8>| {
        ipv4(SERVER, CLIENT, 17, &udp(sport, cport, &quic_packet(k, &hp, &dcid, pn, phase, &frames)))
    };
    let packets = vec![
        pkt(10, Direction::Down, Fate::Forwarded, dg(0, false, &k0, stream_frame(4, 0, 100, false))),
        pkt(11, Direction::Down, Fate::DroppedLoss, dg(1, false, &k0, stream_frame(4, 100, 100, false))),
        pkt(12, Direction::Down, Fate::Forwarded, dg(2, false, &k0, stream_frame(4, 200, 100, false))),
        pkt(13, Direction::Down, Fate::Forwarded, dg(3, false, &k0, stream_frame(8, 0, 100, false))),
        pkt(14, Direction::Down, Fate::Forwarded, dg(4, false, &k0, stream_frame(8, 100, 100, true))),
        pkt(40, Direction::Down, Fate::Forwarded, dg(5, true, &k1, stream_frame(4, 100, 100, false))),
        pkt(41, Direction::Down, Fate::Forwarded, dg(6, true, &k1, stream_frame(4, 300, 0, true))),
    ];
    let a = analyze(&packets, &keys, SERVER);
    assert_eq!(a.connections.len(), 1, "{a:#?}");
    let c = &a.connections[0];
    assert_eq!(c.protocol, Protocol::H3);
    assert_eq!(c.cipher_suite, Some("TLS13_CHACHA20_POLY1305_SHA256"));
    assert_eq!(c.client_port, cport);
    assert_eq!((c.packets, c.undecryptable, c.frame_errors), (7, 0, 0), "{c:#?}");
    let s4 = stream(c, 4);
    assert!(close(s4.stall_ms, 28.0), "{s4:#?}");
    assert!(close(s4.collateral_stall_ms, 0.0), "{s4:#?}");
    assert_eq!((s4.delivered_bytes, s4.stalled_bytes, s4.lost_bytes), (300, 100, 100));
    assert_eq!(s4.complete_ms, Some(41.0));
    let s8 = stream(c, 8);
    assert!(close(s8.stall_ms, 0.0), "{s8:#?}");
    assert!(close(s8.collateral_stall_ms, 0.0));
    assert_eq!((s8.delivered_bytes, s8.lost_bytes), (200, 0));
    assert_eq!(s8.complete_ms, Some(14.0));
    assert!(close(c.stall_ms, 28.0));
    assert_eq!(a.limits.quic_unattributed, 0);
}

/// The tap records a dropped packet when the relay refuses it and a forwarded one when it
/// leaves the delay line, so after a burst of queue drops a packet number far ahead comes before
/// earlier ones in the time line; the earlier ones decode a truncation window off unless the
/// neighbouring windows are tried. Every packet here must open.
#[test]
fn h3_packet_numbers_far_apart_in_the_tap_still_open() {
    let cr = [5u8; 32];
    let secret = [6u8; 32];
    let keys = KeyLog::parse(&key_line("SERVER_TRAFFIC_SECRET_0", &cr, &secret));
    let s = Suite::ChaCha20Poly1305;
    let k0 = QuicKeys::new(s, &secret).expect("keys");
    let hp = HpKey::new(s, &secret).expect("hp");
    let dcid = [0xd2; 8];
    let dg = |pn: u64, frames: Vec<u8>| {
        ipv4(SERVER, CLIENT, 17, &udp(4433, 50001, &quic_packet(&k0, &hp, &dcid, pn, false, &frames)))
    };
    let packets = vec![
        pkt(10, Direction::Down, Fate::Forwarded, dg(0, stream_frame(4, 0, 100, false))),
        pkt(11, Direction::Down, Fate::DroppedQueue, dg(40_000, stream_frame(4, 200, 100, true))),
        pkt(30, Direction::Down, Fate::Forwarded, dg(1, stream_frame(4, 100, 100, false))),
        pkt(60, Direction::Down, Fate::Forwarded, dg(40_001, stream_frame(4, 200, 100, true))),
    ];
    let a = analyze(&packets, &keys, SERVER);
    assert_eq!(a.connections.len(), 1, "{a:#?}");
    let c = &a.connections[0];
    assert_eq!((c.packets, c.undecryptable), (4, 0), "{c:#?}");
    let s4 = stream(c, 4);
    assert_eq!((s4.delivered_bytes, s4.lost_bytes), (300, 100), "{s4:#?}");
    assert_eq!(s4.complete_ms, Some(60.0));
}

#[test]
fn garbage_never_panics() {
    let keys = KeyLog::parse(&key_line("SERVER_TRAFFIC_SECRET_0", &[1; 32], &[2; 32]));
    let mut packets = Vec::new();
    for len in 0..80usize {
        let body: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
        for proto in [6u8, 17] {
            packets.push(pkt(len as u64, Direction::Down, Fate::Forwarded, ipv4(SERVER, CLIENT, proto, &body)));
        }
        packets.push(pkt(len as u64, Direction::Down, Fate::Forwarded, body));
    }
    let a = analyze(&packets, &keys, SERVER);
    assert!(a.connections.iter().all(|c| c.cipher_suite.is_none() && c.streams.is_empty()), "{a:#?}");
}

/// The lab's own pcap files (forwarded and `.dropped`) as tap packets, times from the first.
fn tap_from_pcap(path: &std::path::Path, server: Ipv4Addr) -> Vec<TapPacket> {
    let mut out = Vec::new();
    for (file, fate) in
        [(path.to_path_buf(), Fate::Forwarded), (crate::lab::pcap::dropped_path(path), Fate::DroppedLoss)]
    {
        for r in crate::lab::pcap::read(&file).expect("pcap").records {
            let up = r.data.get(16..20) == Some(&server.octets()[..]);
            let direction = if up { Direction::Up } else { Direction::Down };
            out.push(TapPacket { at_ns: r.ts_ns, direction, fate, data: r.data });
        }
    }
    let t0 = out.iter().map(|p| p.at_ns).min().unwrap_or(0);
    for p in &mut out {
        p.at_ns -= t0;
    }
    out
}

/// Over the real lab link with 2% loss each way: a few responses over HTTP/2 and over HTTP/3
/// (one connection each), captured by the relay, decrypted with the process's key log. Every
/// response's stream is found with at least its body's bytes delivered, and both connections
/// name their cipher suite. Needs the lab's namespaces (root or user namespaces).
#[test]
fn end_to_end_over_the_lab_link() {
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::BodyExt;

    use crate::client::{self, Client, ClientOptions, HttpVersion, Target};
    use crate::lab::{Impairment, LabServer, Link, LinkConfig, LossModel};
    use crate::tls::{self, Trust};

    let imp = Impairment { loss: LossModel::Random { p: 0.02 }, ..Impairment::delay(Duration::from_millis(10)) };
    let link = Link::start(LinkConfig::symmetric(imp, 15)).expect("the lab link (needs root or user namespaces)");
    let dir = tempfile::tempdir().expect("temporary directory");
    let certs = dir.path().join("certs");
    let server = LabServer::start_default(&link, &certs, |_| {}).expect("server");
    let (quic, tcp) = (server.quic_addr(), server.tcp_addr());
    let (cap, keys) = (dir.path().join("run.pcap"), dir.path().join("keys.log"));
    tls::set_key_log_file(&keys).expect("key log");
    link.start_capture(&cap).expect("capture");
    const SIZES: [usize; 3] = [30_000, 60_000, 90_000];
    let ca = certs.join("ca.pem");
    link.run_in_client_ns(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            for (version, addr) in [(HttpVersion::H3, quic), (HttpVersion::H2, tcp)] {
                let opts = ClientOptions { trust: Trust::CaFile(ca.clone()), ..Default::default() };
                let c = Client::new(version, &opts).expect("client");
                let uri = |n: usize| -> http::Uri {
                    format!("https://localhost:{}/bytes/{n}", addr.port()).parse().expect("uri")
                };
                let t = Target { host: "localhost".into(), port: addr.port(), uri: uri(0), addr: Some(addr) };
                let conn = c.connect(&t).await.expect("connect");
                // The three requests together, on the one connection.
                let fetches = SIZES.map(|n| {
                    let t = Target { uri: uri(n), ..t.clone() };
                    let conn = &conn;
                    async move {
                        let req = client::request(&t, http::Method::GET, Bytes::new()).expect("request");
                        let resp = conn.send(req).await.expect("response");
                        let body = resp.into_body().collect().await.expect("body").to_bytes();
                        assert_eq!(body.len(), n, "{version:?}");
                    }
                });
                futures_util::future::join_all(fetches).await;
                conn.close().await;
            }
        })
    })
    .expect("client namespace");
    std::thread::sleep(Duration::from_millis(300));
    let summary = link.stop_capture().expect("a capture was running");
    assert_eq!(summary.overflow, 0);
    tls::clear_key_log_file();
    drop(server);

    let server_ip = link.server_ip();
    let packets = tap_from_pcap(&cap, server_ip);
    let log = KeyLog::parse(&std::fs::read_to_string(&keys).expect("key log"));
    let a = analyze(&packets, &log, server_ip);
    eprintln!("{}", serde_json::to_string_pretty(&a).unwrap_or_default());
    for proto in [Protocol::H2, Protocol::H3] {
        let c = a
            .connections
            .iter()
            .find(|c| c.protocol == proto && c.cipher_suite.is_some())
            .unwrap_or_else(|| panic!("no decrypted {proto:?} connection: {a:#?}"));
        assert_eq!(c.undecryptable, 0, "{c:#?}");
        // HTTP/2: streams 1, 3, 5; HTTP/3: the client's bidirectional streams 0, 4, 8.
        let ids: [u64; 3] = if proto == Protocol::H2 { [1, 3, 5] } else { [0, 4, 8] };
        for (id, n) in ids.into_iter().zip(SIZES) {
            let s = stream(c, id);
            assert!(s.delivered_bytes >= n as u64, "{proto:?} stream {id}: {s:#?}");
            assert!(s.collateral_stall_ms <= s.stall_ms + 1e-9);
            if proto == Protocol::H3 {
                assert_eq!(s.collateral_stall_ms, 0.0);
            }
        }
    }
}
