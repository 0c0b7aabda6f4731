//! HTTP/3 over QUIC: 1-RTT packets of the server → client direction, attributed to connections
//! by trial decryption, their STREAM frames reassembled per stream.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::crypto::{HpKey, QuicKeys, Suite};
use super::quic::{decode_pn, long_header, open, unprotect, walk_frames, StreamFrame};
use super::timeline::{Intervals, StreamAcc};
use super::{finish_streams, ConnStall, KeyLog, Limits, Protocol, MAX_CONNECTIONS, MAX_STREAMS};

/// Largest connection ID (RFC 9000 §17.2).
const MAX_CID: usize = 20;
/// The DCID length quinn uses by default, tried first for unknown DCIDs.
const QUINN_CID_LEN: usize = 8;
/// Unknown DCIDs remembered as undecryptable (further ones are tried again, then dropped).
const MAX_FAILED_DCIDS: usize = 4096;

struct Conn {
    client_random: [u8; 32],
    suite: Suite,
    hp: HpKey,
    generation: u64,
    cur: QuicKeys,
    prev: Option<QuicKeys>,
    next: Option<QuicKeys>,
    largest: Option<u64>,
    client_port: u16,
    streams: BTreeMap<u64, StreamAcc>,
    packets: u64,
    undecryptable: u64,
    frame_errors: u64,
    lost_bytes: u64,
}

impl Conn {
    fn new(client_random: [u8; 32], suite: Suite, secret: &[u8], client_port: u16) -> Option<Conn> {
        Some(Conn {
            client_random,
            suite,
            hp: HpKey::new(suite, secret)?,
            generation: 0,
            cur: QuicKeys::new(suite, secret)?,
            prev: None,
            next: None,
            largest: None,
            client_port,
            streams: BTreeMap::new(),
            packets: 0,
            undecryptable: 0,
            frame_errors: 0,
            lost_bytes: 0,
        })
    }

    /// Open `pkt` (a short-header packet with a DCID of `dcid_len` bytes); follows key updates.
    ///
    /// The packet number is decoded against the largest one opened so far (RFC 9000 A.3), but
    /// the tap's time line is not the server's send order: a dropped packet is recorded when the
    /// relay refused it, a forwarded one when it left the delay line, up to a queue's drain time
    /// plus the one-way delay later. After a burst of queue drops the nearest candidate can be a
    /// whole truncation window off, so when it does not open, the neighbouring windows are tried
    /// (the AEAD tag tells the right one).
    fn open(&mut self, pkt: &[u8], dcid_len: usize) -> Option<Vec<u8>> {
        let u = unprotect(pkt, dcid_len, &self.hp)?;
        let pn = decode_pn(self.largest, u.truncated_pn, u.pn_len);
        let win = 1u64 << (8 * u.pn_len as u32);
        let candidates =
            [Some(pn), pn.checked_sub(win), pn.checked_add(win), pn.checked_sub(2 * win), pn.checked_add(2 * win)];
        let (pn, plain) = candidates.into_iter().flatten().find_map(|pn| self.open_at(pkt, &u, pn).map(|p| (pn, p)))?;
        self.largest = Some(self.largest.map_or(pn, |l| l.max(pn)));
        Some(plain)
    }

    /// Open `pkt` as packet number `pn` with the current, next or previous keys.
    fn open_at(&mut self, pkt: &[u8], u: &super::quic::Unprotected, pn: u64) -> Option<Vec<u8>> {
        let cur_phase = self.generation & 1 == 1;
        let plain = if u.key_phase == cur_phase {
            open(pkt, u, &self.cur, pn)
        } else {
            if self.next.is_none() {
                self.next = self.cur.next();
            }
            match self.next.as_ref().and_then(|k| open(pkt, u, k, pn)) {
                Some(p) => {
                    let next = self.next.take()?;
                    self.prev = Some(std::mem::replace(&mut self.cur, next));
                    self.generation += 1;
                    Some(p)
                }
                None => self.prev.as_ref().and_then(|k| open(pkt, u, k, pn)),
            }
        }?;
        Some(plain)
    }
}

/// Every QUIC connection seen.
#[derive(Default)]
pub(crate) struct Quic {
    conns: Vec<Conn>,
    by_dcid: HashMap<Vec<u8>, usize>,
    /// DCID lengths seen in long headers (tried first for an unknown DCID).
    dcid_lens: BTreeSet<usize>,
    /// DCIDs no key opened (not retried), at most [`MAX_FAILED_DCIDS`].
    failed: BTreeSet<Vec<u8>>,
    /// Key-log secrets not yet matched to a connection, with their derived keys.
    candidates: Vec<Conn>,
    candidates_built: bool,
}

impl Quic {
    pub(crate) fn down(&mut self, udp: &[u8], now: f64, forwarded: bool, keys: &KeyLog, lim: &mut Limits) {
        let (Some(ports), Some(mut rest)) = (udp.get(0..4), udp.get(8..)) else {
            lim.unparsed_packets += 1;
            return;
        };
        let client_port = u16::from_be_bytes([ports[2], ports[3]]);
        while let Some(&first) = rest.first() {
            if first & 0x80 != 0 {
                let Some(h) = long_header(rest) else { return };
                if h.dcid.len() <= MAX_CID {
                    self.dcid_lens.insert(h.dcid.len());
                }
                match h.len {
                    Some(n) => rest = &rest[n..],
                    None => return,
                }
            } else {
                self.short(rest, now, forwarded, client_port, keys, lim);
                return;
            }
        }
    }

    fn short(&mut self, pkt: &[u8], now: f64, forwarded: bool, port: u16, keys: &KeyLog, lim: &mut Limits) {
        let mut found = None;
        for (dcid, &ci) in &self.by_dcid {
            if pkt.get(1..1 + dcid.len()) == Some(dcid.as_slice()) {
                found = Some((ci, dcid.len()));
                break;
            }
        }
        let (ci, plain) = match found {
            Some((ci, dl)) => {
                let c = &mut self.conns[ci];
                c.packets += 1;
                match c.open(pkt, dl) {
                    Some(p) => (ci, p),
                    None => {
                        c.undecryptable += 1;
                        return;
                    }
                }
            }
            None => match self.trial(pkt, port, keys, lim) {
                Some(x) => x,
                None => {
                    lim.quic_unattributed += 1;
                    return;
                }
            },
        };
        let c = &mut self.conns[ci];
        let mut frames = Vec::new();
        if walk_frames(&plain, &mut frames).is_err() {
            c.frame_errors += 1;
        }
        for f in frames {
            c.frame(f, now, forwarded, lim);
        }
    }

    /// Find the keys of a packet with an unknown DCID: each DCID length seen in a long header
    /// (and quinn's default, 8), against the known connections, then against every unused
    /// SERVER_TRAFFIC_SECRET_0 of the key log with every suite its length allows (those
    /// candidates are derived once, on the first unknown DCID). A DCID nothing opens is
    /// remembered and not tried again.
    fn trial(&mut self, pkt: &[u8], port: u16, keys: &KeyLog, lim: &mut Limits) -> Option<(usize, Vec<u8>)> {
        if !self.candidates_built {
            self.candidates_built = true;
            for (cr, secret) in keys.with_label("SERVER_TRAFFIC_SECRET_0") {
                for &suite in Suite::for_secret_len(secret.len()) {
                    if self.candidates.len() >= MAX_CONNECTIONS {
                        lim.connections += 1;
                        break;
                    }
                    self.candidates.extend(Conn::new(*cr, suite, secret, port));
                }
            }
        }
        let mut lens: Vec<usize> = self.dcid_lens.iter().copied().collect();
        if !lens.contains(&QUINN_CID_LEN) {
            lens.push(QUINN_CID_LEN);
        }
        for &l in &lens {
            let Some(dcid) = pkt.get(1..1 + l) else { continue };
            if self.failed.contains(dcid) {
                continue;
            }
            for ci in 0..self.conns.len() {
                if let Some(p) = self.conns[ci].open(pkt, l) {
                    self.conns[ci].packets += 1;
                    self.bind(dcid, ci);
                    return Some((ci, p));
                }
            }
            for k in 0..self.candidates.len() {
                if let Some(p) = self.candidates[k].open(pkt, l) {
                    if self.conns.len() >= MAX_CONNECTIONS {
                        lim.connections += 1;
                        return None;
                    }
                    let mut c = self.candidates.swap_remove(k);
                    // The same client random under another suite is not a candidate any more.
                    self.candidates.retain(|o| o.client_random != c.client_random);
                    c.client_port = port;
                    c.packets += 1;
                    self.conns.push(c);
                    let ci = self.conns.len() - 1;
                    self.bind(dcid, ci);
                    return Some((ci, p));
                }
            }
        }
        for &l in &lens {
            if let Some(d) = pkt.get(1..1 + l) {
                if self.failed.len() < MAX_FAILED_DCIDS {
                    self.failed.insert(d.to_vec());
                }
            }
        }
        None
    }

    fn bind(&mut self, dcid: &[u8], ci: usize) {
        if self.by_dcid.len() < MAX_CONNECTIONS * 8 {
            self.by_dcid.insert(dcid.to_vec(), ci);
        }
    }

    pub(crate) fn finish(self, lim: &mut Limits) -> Vec<ConnStall> {
        self.conns
            .into_iter()
            .map(|c| {
                let mut all = Intervals::default();
                let stalled_bytes = c.streams.values().map(|s| s.stalled_bytes).sum();
                let delivered_bytes = c.streams.values().map(|s| s.delivered).sum();
                let streams = finish_streams(c.streams, &mut all, lim);
                ConnStall {
                    protocol: Protocol::H3,
                    client_port: c.client_port,
                    cipher_suite: Some(c.suite.name()),
                    streams,
                    stall_ms: all.union_len(),
                    stalled_bytes,
                    delivered_bytes,
                    lost_bytes: c.lost_bytes,
                    packets: c.packets,
                    undecryptable: c.undecryptable,
                    frame_errors: c.frame_errors,
                }
            })
            .collect()
    }
}

impl Conn {
    fn frame(&mut self, f: StreamFrame, now: f64, forwarded: bool, lim: &mut Limits) {
        if !self.streams.contains_key(&f.id) && self.streams.len() >= MAX_STREAMS {
            lim.streams += 1;
            return;
        }
        let s = self.streams.entry(f.id).or_default();
        let end = f.offset + f.len;
        if !forwarded {
            s.lost_bytes += f.len;
            self.lost_bytes += f.len;
            return;
        }
        if f.fin {
            s.final_size = Some(end);
        }
        for ch in s.reasm.insert(f.offset, end, None, now, lim) {
            // Every byte before `ch.start` belongs to this stream: the blocking bytes are its own.
            s.unit(ch.end - ch.start, ch.arrival, now, now, lim);
        }
        if s.complete.is_none() && s.final_size.is_some_and(|fs| s.reasm.next >= fs) {
            s.complete = Some(now);
        }
    }
}
