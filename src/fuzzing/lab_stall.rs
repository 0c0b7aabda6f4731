//! The `lab_stall` target: the per-stream stall analysis (`lab::stall::analyze`) fed arbitrary
//! packet sequences under a fixed key log. Packets are built from a menu so that most of them
//! get past the parsers and the AEADs: raw bytes, SYN-ACKs, ClientHellos, TCP segments of raw
//! bytes or of sealed TLS records (plaintext, handshake keys, application keys, KeyUpdates,
//! HTTP/2 frames), QUIC 1-RTT packets sealed with any of three key generations and either key
//! phase (STREAM frames or raw frame bytes), long headers coalesced before them, and re-sends
//! of earlier packets at other times with other fates (retransmissions, reordering, loss).

use std::net::Ipv4Addr;

use arbitrary::{Arbitrary, Unstructured};

use crate::lab::stall::build::{h2_frame, ipv4, key_line, quic_packet, stream_frame, tcp, tls_record, udp};
use crate::lab::stall::crypto::{HpKey, QuicKeys, Suite, TlsKeys};
use crate::lab::stall::{analyze, KeyLog, Protocol, MAX_CONNECTIONS, MAX_STREAMS};
use crate::lab::tap::{Fate, TapPacket};
use crate::lab::Direction;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const TLS_CR: [u8; 32] = [7; 32];
const QUIC_CR: [u8; 32] = [9; 32];
const ISN: u32 = 0xffff_ff00; // wraps within the first segments
const DCID: [u8; 8] = [0xd1; 8];

struct Keys {
    hs: TlsKeys,
    app: [TlsKeys; 2],
    quic: [QuicKeys; 3],
    hp: HpKey,
}

fn keys() -> Option<(KeyLog, Keys)> {
    let (hs, app, q) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    let log = KeyLog::parse(
        &(key_line("SERVER_HANDSHAKE_TRAFFIC_SECRET", &TLS_CR, &hs)
            + &key_line("SERVER_TRAFFIC_SECRET_0", &TLS_CR, &app)
            + &key_line("SERVER_TRAFFIC_SECRET_0", &QUIC_CR, &q)
            + "junk line\n"),
    );
    let app0 = TlsKeys::new(Suite::Aes128Gcm, &app)?;
    let app1 = app0.next()?;
    let q0 = QuicKeys::new(Suite::ChaCha20Poly1305, &q)?;
    let q1 = q0.next()?;
    let q2 = q1.next()?;
    Some((
        log,
        Keys {
            hs: TlsKeys::new(Suite::Aes128Gcm, &hs)?,
            app: [app0, app1],
            quic: [q0, q1, q2],
            hp: HpKey::new(Suite::ChaCha20Poly1305, &q)?,
        },
    ))
}

/// Arbitrary bytes, at most `max` long.
fn bytes(u: &mut Unstructured, max: usize) -> arbitrary::Result<Vec<u8>> {
    let n = u.int_in_range(0..=max)?;
    Ok(u.bytes(n)?.to_vec())
}

fn tls_payload(u: &mut Unstructured, k: &Keys, seq: &mut [u64; 3]) -> arbitrary::Result<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..u.int_in_range(1..=3)? {
        match u.int_in_range(0u8..=5)? {
            0 => out.extend_from_slice(&[22, 3, 3, 0, 4, 2, 0, 0, 0]),
            1 => {
                out.extend(tls_record(&k.hs, seq[0], 22, &bytes(u, 40)?));
                seq[0] += 1;
            }
            2 | 3 => {
                let mut inner = Vec::new();
                for _ in 0..u.int_in_range(0..=3)? {
                    let ty = *u.choose(&[0u8, 1, 4, 8, 9])?;
                    let stream = *u.choose(&[0u32, 1, 3, 5, 0x8000_0001])?;
                    inner.extend(h2_frame(ty, stream, u.int_in_range(0..=300)?));
                }
                let gen = usize::from(bool::arbitrary(u)?);
                out.extend(tls_record(&k.app[gen], seq[1 + gen], 23, &inner));
                seq[1 + gen] += 1;
            }
            4 => {
                // A KeyUpdate under the first application keys.
                out.extend(tls_record(&k.app[0], seq[1], 22, &[24, 0, 0, 1, 0]));
                seq[1] += 1;
            }
            _ => out.extend(bytes(u, 64)?),
        }
    }
    Ok(out)
}

fn quic_datagram(u: &mut Unstructured, k: &Keys, pn: &mut u64) -> arbitrary::Result<Vec<u8>> {
    let mut d = Vec::new();
    if u.ratio(1u8, 4)? {
        // A long header (Handshake) with a Length, then the short packet.
        let body = bytes(u, 40)?;
        d.extend_from_slice(&[0xe0, 0, 0, 0, 1, 8]);
        d.extend_from_slice(&DCID);
        d.push(0);
        d.push(body.len() as u8);
        d.extend(body);
    }
    let mut frames = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        if u.ratio(3u8, 4)? {
            let id = *u.choose(&[0u64, 3, 4, 8, 1 << 40])?;
            frames.extend(stream_frame(id, u.int_in_range(0..=3000)?, u.int_in_range(0..=400)?, bool::arbitrary(u)?));
        } else {
            frames.extend(bytes(u, 24)?);
        }
    }
    let gen = u.int_in_range(0..=2)?;
    let phase = if u.ratio(1u8, 8)? { gen % 2 == 0 } else { gen % 2 == 1 };
    *pn += u.int_in_range(1..=3)?;
    let dcid: &[u8] = if u.ratio(1u8, 8)? { &[0xd2; 4] } else { &DCID };
    d.extend(quic_packet(&k.quic[gen], &k.hp, dcid, *pn, phase, &frames));
    Ok(d)
}

fn run(u: &mut Unstructured, log: &KeyLog, k: &Keys) -> arbitrary::Result<Vec<TapPacket>> {
    let mut packets: Vec<TapPacket> = Vec::new();
    let (mut tls_seq, mut tcp_next, mut pn) = ([0u64; 3], 0u32, 0u64);
    let _ = log;
    for _ in 0..u.int_in_range(0..=120)? {
        let at_ns = u64::from(u.int_in_range(0u32..=2_000)?) * 100_000;
        let fate =
            *u.choose(&[Fate::Forwarded, Fate::Forwarded, Fate::Forwarded, Fate::DroppedLoss, Fate::DroppedQueue])?;
        let port = *u.choose(&[40000u16, 40001])?;
        let (direction, data) = match u.int_in_range(0u8..=7)? {
            0 => (Direction::Down, bytes(u, 200)?),
            1 => (Direction::Down, ipv4(SERVER, CLIENT, 6, &tcp(443, port, ISN, 0x12, &[]))),
            2 => {
                let mut hello = vec![22, 3, 1, 0, 47, 1, 0, 0, 43, 3, 3];
                hello.extend_from_slice(&TLS_CR);
                hello.extend_from_slice(&[0; 11]);
                (Direction::Up, ipv4(CLIENT, SERVER, 6, &tcp(port, 443, 1, 0x18, &hello)))
            }
            3 => {
                let off = if bool::arbitrary(u)? { tcp_next } else { u32::from(u.arbitrary::<u16>()?) };
                let p = bytes(u, 300)?;
                (
                    Direction::Down,
                    ipv4(SERVER, CLIENT, 6, &tcp(443, port, ISN.wrapping_add(1).wrapping_add(off), 0x18, &p)),
                )
            }
            4 => {
                let p = tls_payload(u, k, &mut tls_seq)?;
                let seg = tcp(443, port, ISN.wrapping_add(1).wrapping_add(tcp_next), 0x18, &p);
                tcp_next = tcp_next.wrapping_add(p.len() as u32);
                (Direction::Down, ipv4(SERVER, CLIENT, 6, &seg))
            }
            5 if !packets.is_empty() => {
                let i = u.choose_index(packets.len())?;
                (packets[i].direction, packets[i].data.clone())
            }
            6 => (Direction::Down, ipv4(SERVER, CLIENT, 17, &udp(4433, port, &quic_datagram(u, k, &mut pn)?))),
            _ => (Direction::Down, ipv4(SERVER, CLIENT, 17, &udp(4433, port, &bytes(u, 100)?))),
        };
        packets.push(TapPacket { at_ns, direction, fate, data });
    }
    Ok(packets)
}

/// Never panics; connections and streams within their bounds; every figure finite and
/// consistent (collateral ≤ stall, stalled ≤ delivered bytes); HTTP/3 streams never show
/// collateral stall.
pub fn lab_stall(data: &[u8]) {
    let Some((log, k)) = keys() else { panic!("the fixed keys derive") };
    let mut u = Unstructured::new(data);
    let packets = run(&mut u, &log, &k).unwrap_or_default();
    let a = analyze(&packets, &log, SERVER);
    for proto in [Protocol::H2, Protocol::H3] {
        assert!(a.connections.iter().filter(|c| c.protocol == proto).count() <= MAX_CONNECTIONS);
    }
    for c in &a.connections {
        assert!(c.streams.len() <= MAX_STREAMS);
        assert!(c.stall_ms.is_finite() && c.stall_ms >= 0.0, "{c:?}");
        assert!(c.stalled_bytes <= c.delivered_bytes, "{c:?}");
        for s in &c.streams {
            assert!(s.stall_ms.is_finite() && s.stall_ms >= 0.0, "{s:?}");
            assert!(s.collateral_stall_ms >= 0.0 && s.collateral_stall_ms <= s.stall_ms + 1e-9, "{s:?}");
            assert!(s.stalled_bytes <= s.delivered_bytes, "{s:?}");
            assert!(s.stall_ms <= c.stall_ms + 1e-9 || c.protocol == Protocol::H2, "{c:?}");
            if c.protocol == Protocol::H3 {
                assert!(s.collateral_stall_ms == 0.0, "collateral stall on an HTTP/3 stream: {s:?}");
            }
        }
    }
}
