//! HTTP/2 over TLS 1.3 over TCP: the server's byte stream reassembled from the SYN-ACK on, cut
//! into TLS records, decrypted, and walked as HTTP/2 frames.

use std::collections::{BTreeMap, HashMap};

use super::crypto::{Suite, TlsKeys};
use super::timeline::{Chunk, Intervals, Reasm, StreamAcc};
use super::{
    finish_streams, ConnStall, KeyLog, Limits, Protocol, MAX_CONNECTIONS, MAX_DROPPED_RANGES, MAX_RECORD, MAX_STREAMS,
};

const HEADER: usize = 5;

struct TcpHeader<'a> {
    src_port: u16,
    dst_port: u16,
    seq: u32,
    syn_ack: bool,
    payload: &'a [u8],
}

fn tcp_header(b: &[u8]) -> Option<TcpHeader<'_>> {
    let off = usize::from(*b.get(12)? >> 4) * 4;
    let flags = *b.get(13)?;
    Some(TcpHeader {
        src_port: u16::from_be_bytes([b[0], b[1]]),
        dst_port: u16::from_be_bytes([b[2], b[3]]),
        seq: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        syn_ack: flags & 0x12 == 0x12,
        payload: b.get(off.max(20)..)?,
    })
}

enum Phase {
    /// Before the first encrypted record (ServerHello, ChangeCipherSpec).
    Plain,
    Handshake(TlsKeys, u64),
    App(TlsKeys, u64),
    /// A record did not open or was oversized: nothing further is attributed.
    Failed,
}

/// The HTTP/2 frame walker (9-byte headers, RFC 9113 §4.1).
#[derive(Default)]
struct H2Walk {
    hdr: [u8; 9],
    have: usize,
    remaining: u64,
    stream: u64,
}

/// A run of a record's plaintext that belongs to one stream: (stream, offset, length).
type Span = (u64, u64, u64);

fn push_span(spans: &mut Vec<Span>, id: u64, at: u64, n: u64) {
    if n == 0 {
        return;
    }
    match spans.last_mut() {
        Some(last) if last.0 == id && last.1 + last.2 == at => last.2 += n,
        _ => spans.push((id, at, n)),
    }
}

impl H2Walk {
    /// Attribute each byte of one record's plaintext `d` to a stream, as spans in `d`'s offsets.
    /// A frame header's bytes go to the frame's stream; the part of a header that ends a record
    /// before the header is complete goes to stream 0.
    fn walk(&mut self, mut d: &[u8], spans: &mut Vec<Span>) {
        let mut at = 0u64;
        while !d.is_empty() {
            if self.remaining > 0 {
                let take = (d.len() as u64).min(self.remaining);
                push_span(spans, self.stream, at, take);
                self.remaining -= take;
                at += take;
                d = &d[take as usize..];
                continue;
            }
            let take = (9 - self.have).min(d.len());
            self.hdr[self.have..self.have + take].copy_from_slice(&d[..take]);
            self.have += take;
            d = &d[take..];
            if self.have == 9 {
                let h = self.hdr;
                let len = u64::from(u32::from_be_bytes([0, h[0], h[1], h[2]]));
                let sid = u64::from(u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff);
                // DATA, HEADERS, CONTINUATION carry a stream's bytes; everything else is the connection's.
                self.stream = if matches!(h[3], 0x0 | 0x1 | 0x9) { sid } else { 0 };
                push_span(spans, self.stream, at, take as u64);
                self.remaining = len;
                self.have = 0;
            } else {
                push_span(spans, 0, at, take as u64);
            }
            at += take as u64;
        }
    }
}

/// A piece of the record being assembled that TCP delivered in one go: its offsets in the
/// record, when its bytes first reached the client, and when every TCP byte up to its end had.
#[derive(Debug, Clone, Copy)]
struct Piece {
    start: u64,
    end: u64,
    arrival: f64,
    deliverable: f64,
}

struct Conn {
    client_port: u16,
    isn: u32,
    reasm: Reasm,
    /// The record being assembled, its TCP offset, and the pieces its bytes arrived in
    /// (at most one per byte, so bounded by [`MAX_RECORD`]).
    buf: Vec<u8>,
    buf_pos: u64,
    pieces: Vec<Piece>,
    phase: Phase,
    suite: Option<Suite>,
    h2: H2Walk,
    streams: BTreeMap<u64, StreamAcc>,
    stall: Intervals,
    stalled_bytes: u64,
    delivered_bytes: u64,
    lost_bytes: u64,
    /// Dropped TCP ranges not yet attributed to a record.
    dropped: Vec<(u64, u64)>,
    packets: u64,
    undecryptable: u64,
}

/// Every TCP connection seen, and the client randoms of the ClientHellos by client port.
#[derive(Default)]
pub(crate) struct Tcp {
    conns: Vec<Conn>,
    by_port: HashMap<u16, usize>,
    client_randoms: HashMap<u16, [u8; 32]>,
}

impl Tcp {
    /// A client → server segment: remember the ClientHello's random.
    pub(crate) fn up(&mut self, seg: &[u8]) {
        let Some(h) = tcp_header(seg) else { return };
        let p = h.payload;
        if p.len() >= 43 && p[0] == 22 && p[5] == 1 {
            if self.client_randoms.len() >= MAX_CONNECTIONS && !self.client_randoms.contains_key(&h.src_port) {
                return;
            }
            let mut cr = [0u8; 32];
            cr.copy_from_slice(&p[11..43]);
            self.client_randoms.insert(h.src_port, cr);
        }
    }

    /// A server → client segment.
    pub(crate) fn down(&mut self, seg: &[u8], now: f64, forwarded: bool, keys: &KeyLog, lim: &mut Limits) {
        let Some(h) = tcp_header(seg) else {
            lim.unparsed_packets += 1;
            return;
        };
        let port = h.dst_port;
        let _ = h.src_port;
        if h.syn_ack {
            let same = self.by_port.get(&port).is_some_and(|&ci| self.conns[ci].isn == h.seq);
            if !same {
                if self.conns.len() >= MAX_CONNECTIONS {
                    lim.connections += 1;
                    return;
                }
                self.conns.push(Conn::new(port, h.seq));
                self.by_port.insert(port, self.conns.len() - 1);
            }
            return;
        }
        let Some(&ci) = self.by_port.get(&port) else {
            lim.tcp_without_syn += 1;
            return;
        };
        let cr = self.client_randoms.get(&port).copied();
        let c = &mut self.conns[ci];
        c.packets += 1;
        if h.payload.is_empty() {
            return;
        }
        let rel = u64::from(h.seq.wrapping_sub(c.isn.wrapping_add(1)));
        if rel >= 1 << 31 {
            return; // before the stream's start (or wrapped): not this analysis's business
        }
        let end = rel + h.payload.len() as u64;
        if !forwarded {
            c.lost_bytes += h.payload.len() as u64;
            if c.dropped.len() >= MAX_DROPPED_RANGES {
                lim.dropped_ranges += 1;
            } else {
                c.dropped.push((rel, end));
            }
            return;
        }
        for ch in c.reasm.insert(rel, end, Some(h.payload), now, lim) {
            c.feed(ch, now, cr.as_ref(), keys, lim);
        }
    }

    pub(crate) fn finish(self, lim: &mut Limits) -> Vec<ConnStall> {
        self.conns
            .into_iter()
            .map(|c| {
                let stall_ms = c.stall.union_len();
                let mut all = Intervals::default();
                let streams = finish_streams(c.streams, &mut all, lim);
                ConnStall {
                    protocol: Protocol::H2,
                    client_port: c.client_port,
                    cipher_suite: c.suite.map(Suite::name),
                    streams,
                    stall_ms,
                    stalled_bytes: c.stalled_bytes,
                    delivered_bytes: c.delivered_bytes,
                    lost_bytes: c.lost_bytes,
                    packets: c.packets,
                    undecryptable: c.undecryptable,
                    frame_errors: 0,
                }
            })
            .collect()
    }
}

/// Open a record body with `k` as record `seq`: the inner content type and the content.
fn open_record(k: &TlsKeys, seq: u64, rec: &[u8]) -> Option<(u8, Vec<u8>)> {
    let mut body = rec.get(HEADER..)?.to_vec();
    let n = k.aead.open(seq, rec.get(..HEADER)?, &mut body)?;
    body.truncate(n);
    while body.last() == Some(&0) {
        body.pop();
    }
    let ty = body.pop()?;
    Some((ty, body))
}

/// Whether a run of handshake messages holds a KeyUpdate (type 24).
fn has_key_update(mut m: &[u8]) -> bool {
    while m.len() >= 4 {
        if m[0] == 24 {
            return true;
        }
        let len = usize::from(m[1]) << 16 | usize::from(m[2]) << 8 | usize::from(m[3]);
        m = m.get(4 + len..).unwrap_or(&[]);
    }
    false
}

impl Conn {
    fn new(client_port: u16, isn: u32) -> Conn {
        Conn {
            client_port,
            isn,
            reasm: Reasm::default(),
            buf: Vec::new(),
            buf_pos: 0,
            pieces: Vec::new(),
            phase: Phase::Plain,
            suite: None,
            h2: H2Walk::default(),
            streams: BTreeMap::new(),
            stall: Intervals::default(),
            stalled_bytes: 0,
            delivered_bytes: 0,
            lost_bytes: 0,
            dropped: Vec::new(),
            packets: 0,
            undecryptable: 0,
        }
    }

    /// In-order bytes that became deliverable at `now`.
    fn feed(&mut self, ch: Chunk, now: f64, cr: Option<&[u8; 32]>, keys: &KeyLog, lim: &mut Limits) {
        let mut d = &ch.data[..];
        while !d.is_empty() {
            if matches!(self.phase, Phase::Failed) {
                self.delivered_bytes += d.len() as u64;
                return;
            }
            let need = if self.buf.len() < HEADER {
                HEADER - self.buf.len()
            } else {
                HEADER + usize::from(u16::from_be_bytes([self.buf[3], self.buf[4]])) - self.buf.len()
            };
            let take = need.min(d.len());
            if self.buf.is_empty() {
                self.buf_pos = ch.start + (ch.data.len() - d.len()) as u64;
            }
            let at = self.buf.len() as u64;
            self.buf.extend_from_slice(&d[..take]);
            d = &d[take..];
            let piece = Piece { start: at, end: at + take as u64, arrival: ch.arrival, deliverable: now };
            match self.pieces.last_mut() {
                Some(p) if p.end == at && p.arrival == ch.arrival && p.deliverable == now => p.end = piece.end,
                _ => self.pieces.push(piece),
            }
            if self.buf.len() >= HEADER {
                let len = usize::from(u16::from_be_bytes([self.buf[3], self.buf[4]]));
                if len > MAX_RECORD {
                    lim.oversized_records += 1;
                    self.phase = Phase::Failed;
                    self.pieces.clear();
                    continue;
                }
                if self.buf.len() == HEADER + len {
                    let rec = std::mem::take(&mut self.buf);
                    let pieces = std::mem::take(&mut self.pieces);
                    self.record(&rec, &pieces, cr, keys, lim);
                }
            }
        }
    }

    fn keys_for(&self, label: &str, cr: Option<&[u8; 32]>, keys: &KeyLog, rec: &[u8]) -> Option<TlsKeys> {
        let secret = keys.get(cr?, label)?;
        let suites: Vec<Suite> = match self.suite {
            Some(s) => vec![s],
            None => Suite::for_secret_len(secret.len()).to_vec(),
        };
        suites.into_iter().filter_map(|s| TlsKeys::new(s, secret)).find(|k| open_record(k, 0, rec).is_some())
    }

    /// A complete record `rec` (header included) and the pieces its bytes arrived in.
    fn record(&mut self, rec: &[u8], pieces: &[Piece], cr: Option<&[u8; 32]>, keys: &KeyLog, lim: &mut Limits) {
        let (start, end) = (self.buf_pos, self.buf_pos + rec.len() as u64);
        let mut spans: Vec<Span> = Vec::new();
        if rec.first() == Some(&23) {
            let phase = std::mem::replace(&mut self.phase, Phase::Failed);
            let (opened, next) = match phase {
                Phase::Plain => match self.keys_for("SERVER_HANDSHAKE_TRAFFIC_SECRET", cr, keys, rec) {
                    Some(k) => (open_record(&k, 0, rec), Some((k, 1, false))),
                    None => match self.keys_for("SERVER_TRAFFIC_SECRET_0", cr, keys, rec) {
                        Some(k) => (open_record(&k, 0, rec), Some((k, 1, true))),
                        None => (None, None),
                    },
                },
                Phase::Handshake(k, seq) => match open_record(&k, seq, rec) {
                    Some(p) => (Some(p), Some((k, seq + 1, false))),
                    None => match self.keys_for("SERVER_TRAFFIC_SECRET_0", cr, keys, rec) {
                        Some(k) => (open_record(&k, 0, rec), Some((k, 1, true))),
                        None => (None, None),
                    },
                },
                Phase::App(k, seq) => match open_record(&k, seq, rec) {
                    Some(p) => (Some(p), Some((k, seq + 1, true))),
                    None => (None, None),
                },
                Phase::Failed => (None, None),
            };
            match (opened, next) {
                (Some((ty, content)), Some((k, seq, app))) => {
                    self.suite = Some(k.suite);
                    self.phase = if app { Phase::App(k, seq) } else { Phase::Handshake(k, seq) };
                    if app && ty == 23 {
                        self.h2.walk(&content, &mut spans);
                    } else if app && ty == 22 && has_key_update(&content) {
                        let next = match &self.phase {
                            Phase::App(k, _) => k.next(),
                            _ => None,
                        };
                        self.phase = next.map_or(Phase::Failed, |k| Phase::App(k, 0));
                    }
                }
                _ => self.undecryptable += 1,
            }
        }
        self.delivered_bytes += rec.len() as u64;
        for p in pieces {
            if p.deliverable > p.arrival {
                self.stalled_bytes += p.end - p.start;
            }
            self.stall.push(p.arrival, p.deliverable, lim);
        }
        // Units: each piece's share of each stream, in the record's order, so a stream's bytes
        // are taken in TCP order; plaintext byte i sits at record offset HEADER + i.
        for p in pieces {
            let (ps, pe) = (p.start.saturating_sub(HEADER as u64), p.end.saturating_sub(HEADER as u64));
            for &(id, at, n) in &spans {
                let bytes = pe.min(at + n).saturating_sub(ps.max(at));
                if bytes == 0 {
                    continue;
                }
                if !self.streams.contains_key(&id) && self.streams.len() >= MAX_STREAMS {
                    lim.streams += 1;
                    continue;
                }
                let s = self.streams.entry(id).or_default();
                // Until the latest arrival of this stream's earlier bytes, one of them was missing.
                let own_until = s.own_until;
                s.unit(bytes, p.arrival, p.deliverable, own_until, lim);
                s.own_until = s.own_until.max(p.arrival);
            }
        }
        // The streams' bytes among the record's bytes that were dropped on the way (a range
        // dropped twice counts twice; the record's header and tag belong to no stream).
        for &(x, y) in &self.dropped {
            let (ls, le) = (x.max(start), y.min(end));
            if le <= ls {
                continue;
            }
            let (ps, pe) = ((ls - start).saturating_sub(HEADER as u64), (le - start).saturating_sub(HEADER as u64));
            for &(id, at, n) in &spans {
                let bytes = pe.min(at + n).saturating_sub(ps.max(at));
                if let (true, Some(s)) = (bytes > 0, self.streams.get_mut(&id)) {
                    s.lost_bytes += bytes;
                }
            }
        }
        self.dropped.retain(|&(_, y)| y > end);
    }
}
