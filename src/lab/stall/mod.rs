//! Per-stream stall time from the relay's packets: how long bytes that had reached the client
//! waited because an earlier byte was missing — of the same TCP connection for HTTP/2 over TLS,
//! of the same stream for HTTP/3 over QUIC (issue 15, item 2).
//!
//! The lab owns every key (the process-wide TLS key log, NSS format, [`KeyLog`]) and every
//! packet (the relay's tap, [`TapPacket`]: forwarded ones stamped when written into the client's
//! namespace, dropped ones with their drop time). [`analyze`] decrypts the server → client
//! direction of every connection and computes, exactly:
//!
//! * **HTTP/2** (`h2.rs`): the server's TCP byte stream is reassembled from the SYN-ACK's ISN
//!   on, cut into TLS records (plaintext ServerHello/CCS, then application_data records opened
//!   with SERVER_HANDSHAKE_TRAFFIC_SECRET until the first that opens with
//!   SERVER_TRAFFIC_SECRET_0; KeyUpdate followed), the client random read from the ClientHello
//!   in the other direction. HTTP/2 frames walked over the decrypted data attribute each byte
//!   to a stream (DATA/HEADERS/CONTINUATION to theirs, every other frame to stream 0). The unit
//!   is a stream's share of a piece of the byte stream that TCP delivered in one go (a segment,
//!   or the part of it inside one record): it ARRIVES when its bytes first reach the client and
//!   is DELIVERABLE when every TCP byte up to its end has. So the segments after a lost one
//!   count as waiting even inside the same record, as the packets after a lost one do for
//!   HTTP/3. The further wait for the REST of a record before it can be decrypted is not
//!   counted: it waits for later bytes, not earlier ones, and is TLS's, as a QUIC packet's
//!   AEAD is QUIC's. (Until this was changed the unit was a whole record, arriving with its
//!   last byte, which hid every wait inside a record: HTTP/2's stall was a lower bound.)
//! * **HTTP/3** (`h3.rs`): 1-RTT short-header packets, keys found by trial decryption against
//!   every SERVER_TRAFFIC_SECRET_0 and cached per DCID, header protection removed, packet
//!   numbers recovered (RFC 9000 A.3), key updates followed ("quic ku"); every frame walked
//!   (`quic.rs`). The unit is the newly arrived part of a STREAM frame; it is deliverable when
//!   every earlier offset of its stream has arrived. Long-header packets are skipped.
//!
//! Stall of a unit = deliverable − arrival (0 if in order). Per stream, `stall_ms` is the
//! length of the union of its units' stall intervals; `collateral_stall_ms` the part of it
//! during which no missing blocking byte belonged to the stream. Each unit carries, beside its
//! stall interval, the part of it during which one of ITS stream's bytes was still missing
//! (HTTP/2: until the latest arrival of the stream's earlier bytes;
//! HTTP/3: the whole interval, since a stream's units wait only for the stream's own earlier
//! offsets), and collateral = |union of stall intervals| − |union of those parts|. For HTTP/3
//! that is 0 by construction; the unit tests, the end-to-end test and the `lab_stall` fuzz
//! target check that the figure comes out 0. `lost_bytes` counts the stream's bytes in dropped
//! packets (those are decrypted too; for HTTP/2 a dropped segment's bytes are mapped through
//! the records it overlaps to the frames they carry, so a record's header and tag count for no
//! stream). A byte never delivered (its retransmission not in the packets) gives
//! its waiting units no stall interval: the analysis counts only stalls that ended.
//!
//! Why hand-written: no maintained crate parses QUIC 1-RTT frames from a capture (quinn-proto's
//! frame code is private) or reassembles and decrypts TLS records from one; the walkers here
//! are small and read only what the analysis needs.
//!
//! **Bounds** (the packets are input; every hit is counted in [`Limits`]):
//! [`MAX_CONNECTIONS`] connections per protocol, [`MAX_STREAMS`] streams per connection,
//! [`MAX_PENDING_RANGES`] out-of-order pieces and [`MAX_PENDING_BYTES`] bytes held per
//! reassembly (a TCP connection or a QUIC stream), [`MAX_RECORD`] bytes buffered for one TLS
//! record, [`MAX_STALL_INTERVALS`] stall intervals kept per stream, [`MAX_DROPPED_RANGES`]
//! dropped TCP ranges waiting for their records. Held bytes are copies of packet bytes, each
//! kept at most once (pieces are clipped against what is held), so they never exceed the input.
//! An unknown QUIC DCID is tried against each DCID length seen in a long header and quinn's 8
//! (not all 21 lengths: the trial costs an AEAD per key-log entry), and at most 4096 DCIDs
//! nothing opened are remembered. Nothing panics on packet bytes.
//!
//! Pure functions, no I/O; times are milliseconds since the link started.

pub(crate) mod build;
pub(crate) mod crypto;
mod h2;
mod h3;
mod quic;
mod timeline;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Serialize;

use super::impair::Direction;
use super::tap::{Fate, TapPacket};

/// Connections tracked per protocol; packets of further ones are counted and ignored.
pub(crate) const MAX_CONNECTIONS: usize = 1024;
/// Streams tracked per connection; bytes of further ones are counted and ignored.
pub(crate) const MAX_STREAMS: usize = 4096;
/// Out-of-order pieces held per reassembly.
pub(crate) const MAX_PENDING_RANGES: usize = 4096;
/// Out-of-order bytes held per TCP reassembly (QUIC reassemblies keep no bytes).
pub(crate) const MAX_PENDING_BYTES: usize = 16 << 20;
/// Largest TLS record accepted: 2^14 bytes of plaintext + 256 of expansion (RFC 8446 §5.2).
pub(crate) const MAX_RECORD: usize = 16384 + 256;
/// Stall intervals kept per stream (and per HTTP/2 connection).
pub(crate) const MAX_STALL_INTERVALS: usize = 65536;
/// Dropped TCP ranges held until the records they fall in are parsed.
pub(crate) const MAX_DROPPED_RANGES: usize = 4096;

/// An NSS key log: client random → label → secret.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyLog {
    entries: BTreeMap<[u8; 32], BTreeMap<String, Vec<u8>>>,
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

impl KeyLog {
    /// Parse `LABEL CLIENT_RANDOM SECRET` lines (hex); comments, blank and malformed lines are
    /// skipped.
    pub(crate) fn parse(text: &str) -> KeyLog {
        let mut k = KeyLog::default();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(label), Some(cr), Some(secret), None) = (it.next(), it.next(), it.next(), it.next()) else {
                continue;
            };
            if label.starts_with('#') {
                continue;
            }
            let (Some(cr), Some(secret)) = (hex(cr), hex(secret)) else { continue };
            let Ok(cr) = <[u8; 32]>::try_from(cr.as_slice()) else { continue };
            k.entries.entry(cr).or_default().insert(label.to_string(), secret);
        }
        k
    }

    pub(crate) fn get(&self, client_random: &[u8; 32], label: &str) -> Option<&[u8]> {
        self.entries.get(client_random)?.get(label).map(Vec::as_slice)
    }

    /// Every (client random, secret) with this label.
    pub(crate) fn with_label<'a>(&'a self, label: &'a str) -> impl Iterator<Item = (&'a [u8; 32], &'a [u8])> + 'a {
        self.entries.iter().filter_map(move |(cr, m)| m.get(label).map(|s| (cr, s.as_slice())))
    }

    /// Number of client randoms.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// HTTP/2 over TLS over TCP, or HTTP/3 over QUIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Protocol {
    H2,
    H3,
}

/// One stream's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StreamStall {
    /// HTTP/2 stream id (0: the connection's own frames) or QUIC stream id.
    pub(crate) id: u64,
    /// Bytes that became deliverable (HTTP/2: frame bytes incl. headers; HTTP/3: STREAM data).
    pub(crate) delivered_bytes: u64,
    /// Length of the union of the stream's stall intervals.
    pub(crate) stall_ms: f64,
    /// Bytes that arrived before they were deliverable.
    pub(crate) stalled_bytes: u64,
    /// The part of `stall_ms` during which none of the missing blocking bytes were this stream's.
    pub(crate) collateral_stall_ms: f64,
    /// This stream's bytes in dropped packets.
    pub(crate) lost_bytes: u64,
    /// First arrival of any of its bytes.
    pub(crate) first_arrival_ms: Option<f64>,
    /// When its last byte became deliverable (HTTP/3: the FIN's offset; else the last unit).
    pub(crate) complete_ms: Option<f64>,
}

/// One connection's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConnStall {
    pub(crate) protocol: Protocol,
    /// The client's port as the server saw it.
    pub(crate) client_port: u16,
    /// The suite whose keys authenticated the connection's packets (None: nothing decrypted).
    pub(crate) cipher_suite: Option<&'static str>,
    pub(crate) streams: Vec<StreamStall>,
    /// Union of every unit's stall interval on the connection.
    pub(crate) stall_ms: f64,
    pub(crate) stalled_bytes: u64,
    pub(crate) delivered_bytes: u64,
    /// Bytes (TCP payload, or STREAM data) in dropped packets.
    pub(crate) lost_bytes: u64,
    /// Server → client packets seen (forwarded and dropped).
    pub(crate) packets: u64,
    /// Packets (QUIC) or TLS records (HTTP/2) that did not decrypt.
    pub(crate) undecryptable: u64,
    /// QUIC: packets whose frame walk stopped at an unknown type or a malformed frame.
    pub(crate) frame_errors: u64,
}

/// Bounds reached, and input that could not be attributed.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Limits {
    pub(crate) connections: u64,
    pub(crate) streams: u64,
    pub(crate) pending_ranges: u64,
    pub(crate) stall_intervals: u64,
    pub(crate) dropped_ranges: u64,
    pub(crate) oversized_records: u64,
    /// Not IPv4, fragmented, or truncated.
    pub(crate) unparsed_packets: u64,
    /// TCP segments of a connection whose SYN-ACK was not seen.
    pub(crate) tcp_without_syn: u64,
    /// QUIC 1-RTT packets no key in the key log opened.
    pub(crate) quic_unattributed: u64,
}

/// What [`analyze`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct StallAnalysis {
    pub(crate) connections: Vec<ConnStall>,
    pub(crate) limits: Limits,
}

/// A parsed IPv4 datagram's transport part.
pub(crate) struct Ip<'a> {
    pub(crate) src: Ipv4Addr,
    pub(crate) dst: Ipv4Addr,
    pub(crate) proto: u8,
    pub(crate) payload: &'a [u8],
}

fn parse_ipv4(d: &[u8]) -> Option<Ip<'_>> {
    let v = *d.first()?;
    if v >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(v & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*d.get(2)?, *d.get(3)?]));
    if ihl < 20 || total < ihl || total > d.len() {
        return None;
    }
    let frag = u16::from_be_bytes([d[6], d[7]]);
    if frag & 0x3fff != 0 {
        return None; // a fragment (MF set or an offset)
    }
    let src = Ipv4Addr::new(d[12], d[13], d[14], d[15]);
    let dst = Ipv4Addr::new(d[16], d[17], d[18], d[19]);
    Some(Ip { src, dst, proto: d[9], payload: &d[ihl..total] })
}

/// Analyze every TCP (HTTP/2 over TLS 1.3) and QUIC (HTTP/3) connection to `server` in
/// `packets`, server → client.
pub(crate) fn analyze(packets: &[TapPacket], keys: &KeyLog, server: Ipv4Addr) -> StallAnalysis {
    let mut order: Vec<usize> = (0..packets.len()).collect();
    order.sort_by_key(|&i| packets[i].at_ns);
    let mut lim = Limits::default();
    let mut tcp = h2::Tcp::default();
    let mut udp = h3::Quic::default();
    for i in order {
        let p = &packets[i];
        let Some(ip) = parse_ipv4(&p.data) else {
            lim.unparsed_packets += 1;
            continue;
        };
        let now = p.at_ns as f64 / 1e6;
        let forwarded = p.fate == Fate::Forwarded;
        let down = p.direction == Direction::Down && ip.src == server;
        let up = p.direction == Direction::Up && ip.dst == server;
        match (ip.proto, down, up) {
            (6, true, _) => tcp.down(ip.payload, now, forwarded, keys, &mut lim),
            (6, _, true) => tcp.up(ip.payload),
            (17, true, _) => udp.down(ip.payload, now, forwarded, keys, &mut lim),
            _ => {}
        }
    }
    let mut connections = tcp.finish(&mut lim);
    connections.extend(udp.finish(&mut lim));
    StallAnalysis { connections, limits: lim }
}

/// Per-stream results from the accumulators.
pub(crate) fn finish_streams(
    streams: BTreeMap<u64, timeline::StreamAcc>,
    conn: &mut timeline::Intervals,
    lim: &mut Limits,
) -> Vec<StreamStall> {
    streams
        .into_iter()
        .map(|(id, s)| {
            conn.extend_from(&s.stall, lim);
            let stall_ms = s.stall.union_len();
            let own = s.own.union_len();
            StreamStall {
                id,
                delivered_bytes: s.delivered,
                stall_ms,
                stalled_bytes: s.stalled_bytes,
                collateral_stall_ms: (stall_ms - own).max(0.0),
                lost_bytes: s.lost_bytes,
                first_arrival_ms: s.first_arrival,
                complete_ms: s.complete.or(s.last_deliverable),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
