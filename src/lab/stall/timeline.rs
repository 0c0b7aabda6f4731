//! The bookkeeping shared by both protocols: in-order reassembly of one byte sequence with
//! first-arrival times (a TCP connection's bytes, or one QUIC stream's offsets), per-stream
//! accumulators, and interval unions.

use std::collections::BTreeMap;

use super::{Limits, MAX_PENDING_BYTES, MAX_PENDING_RANGES, MAX_STALL_INTERVALS};

/// Bytes that became deliverable: `[start, end)` of the sequence, first arrived at `arrival`
/// (ms); `data` holds them when the reassembly keeps bytes (TCP), else it is empty.
pub(crate) struct Chunk {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) arrival: f64,
    pub(crate) data: Vec<u8>,
}

/// In-order reassembly of one sequence. Out-of-order pieces are clipped against what is
/// already held, so every byte keeps the time it FIRST arrived; at most [`MAX_PENDING_RANGES`]
/// pieces and [`MAX_PENDING_BYTES`] bytes are held (a piece past either bound is not kept and
/// is counted: its bytes count as arriving with their next copy).
#[derive(Default)]
pub(crate) struct Reasm {
    /// Everything below is deliverable.
    pub(crate) next: u64,
    pending: BTreeMap<u64, (u64, f64, Vec<u8>)>,
    pending_bytes: usize,
}

impl Reasm {
    /// `[start, end)` arrived at `now`; `data` (when kept) is exactly those bytes. Returns what
    /// became deliverable, in order, all at `now`.
    pub(crate) fn insert(
        &mut self,
        start: u64,
        end: u64,
        data: Option<&[u8]>,
        now: f64,
        lim: &mut Limits,
    ) -> Vec<Chunk> {
        let s = start.max(self.next);
        if s >= end {
            return Vec::new();
        }
        let mut pieces = Vec::new();
        let mut cur = s;
        for (&ps, &(pe, _, _)) in self.pending.range(..end) {
            if pe <= cur {
                continue;
            }
            if ps > cur {
                pieces.push((cur, ps.min(end)));
            }
            cur = cur.max(pe);
            if cur >= end {
                break;
            }
        }
        if cur < end {
            pieces.push((cur, end));
        }
        for (a, b) in pieces {
            let bytes = match data {
                Some(d) => {
                    let (i, j) = ((a - start) as usize, (b - start) as usize);
                    match d.get(i..j) {
                        Some(x) => x.to_vec(),
                        None => continue,
                    }
                }
                None => Vec::new(),
            };
            if a != self.next
                && (self.pending.len() >= MAX_PENDING_RANGES || self.pending_bytes + bytes.len() > MAX_PENDING_BYTES)
            {
                lim.pending_ranges += 1;
                continue;
            }
            self.pending_bytes += bytes.len();
            self.pending.insert(a, (b, now, bytes));
        }
        let mut out = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > self.next {
                break;
            }
            let (ps, (pe, arrival, data)) = entry.remove_entry();
            self.pending_bytes -= data.len();
            if pe > self.next {
                out.push(Chunk { start: ps, end: pe, arrival, data });
                self.next = pe;
            }
        }
        out
    }
}

/// A bounded list of time intervals (ms) and the length of their union.
#[derive(Default)]
pub(crate) struct Intervals(Vec<(f64, f64)>);

impl Intervals {
    pub(crate) fn push(&mut self, a: f64, b: f64, lim: &mut Limits) {
        if b <= a {
            return;
        }
        if self.0.len() >= MAX_STALL_INTERVALS {
            lim.stall_intervals += 1;
            return;
        }
        self.0.push((a, b));
    }

    pub(crate) fn extend_from(&mut self, other: &Intervals, lim: &mut Limits) {
        for &(a, b) in &other.0 {
            self.push(a, b, lim);
        }
    }

    /// The length of the union.
    pub(crate) fn union_len(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(|x, y| x.0.total_cmp(&y.0));
        let mut total = 0.0;
        let mut cur: Option<(f64, f64)> = None;
        for (a, b) in v {
            match cur {
                Some((ca, cb)) if a <= cb => cur = Some((ca, cb.max(b))),
                Some((ca, cb)) => {
                    total += cb - ca;
                    cur = Some((a, b));
                }
                None => cur = Some((a, b)),
            }
        }
        if let Some((ca, cb)) = cur {
            total += cb - ca;
        }
        total
    }
}

/// What is gathered for one stream while the packets are walked.
#[derive(Default)]
pub(crate) struct StreamAcc {
    pub(crate) delivered: u64,
    pub(crate) stalled_bytes: u64,
    pub(crate) lost_bytes: u64,
    /// Union of the units' [arrival, deliverable) intervals.
    pub(crate) stall: Intervals,
    /// The parts of those intervals during which a missing blocking byte belonged to this stream.
    pub(crate) own: Intervals,
    pub(crate) first_arrival: Option<f64>,
    pub(crate) last_deliverable: Option<f64>,
    /// H2: the latest arrival of this stream's bytes so far.
    pub(crate) own_until: f64,
    /// H3: the reassembly of the stream's offsets, and its final size once a FIN is seen.
    pub(crate) reasm: Reasm,
    pub(crate) final_size: Option<u64>,
    pub(crate) complete: Option<f64>,
}

impl StreamAcc {
    /// A unit of `bytes` bytes of this stream arrived at `a` and became deliverable at `d`;
    /// during `[a, own_until)` a missing blocking byte was this stream's own.
    pub(crate) fn unit(&mut self, bytes: u64, a: f64, d: f64, own_until: f64, lim: &mut Limits) {
        self.delivered += bytes;
        if d > a {
            self.stalled_bytes += bytes;
            self.stall.push(a, d, lim);
            self.own.push(a, d.min(own_until), lim);
        }
        self.first_arrival = Some(self.first_arrival.map_or(a, |f| f.min(a)));
        self.last_deliverable = Some(self.last_deliverable.map_or(d, |f| f.max(d)));
    }
}
