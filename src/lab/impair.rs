//! The impairment models of the link, sans-IO: a seeded random generator, loss models, the
//! rate limiter with its tail-drop queue, and delay with jitter.
//!
//! Nothing in here touches a clock or a socket. Time comes in as nanoseconds since the link's
//! epoch, so every model is deterministic and tested without sleeping; [`super::link`] drives
//! them from the relay threads.
//!
//! # Order of the stages (per direction)
//!
//! 1. **loss**: one decision per packet entering the relay, in arrival order, from the
//!    direction's own loss stream. Deciding before the queue keeps the decisions a pure function
//!    of the seed and the packet sequence (a queue drop depends on timing, a loss draw must not);
//! 2. **bottleneck**: a rate limit with a finite tail-drop queue (the packet leaves the
//!    bottleneck when its last bit is serialized);
//! 3. **propagation**: a fixed delay plus uniform jitter, then release into the other namespace.

use std::collections::VecDeque;

use serde::Serialize;

/// SplitMix64 (Steele, Lea & Flood, OOPSLA 2014): expands one 64-bit seed into a state.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small, fast, seeded generator: xoshiro256** 1.0 (Blackman & Vigna, "Scrambled linear
/// pseudorandom number generators", ACM TOMS 2021).
///
/// Implemented here rather than taken from a crate so that a recorded seed reproduces the same
/// draws whatever dependency versions a later build resolves to.
#[derive(Debug, Clone)]
pub(crate) struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// Stream `stream` of seed `seed`. Different streams of one seed are independent for every
    /// practical purpose (each is seeded through SplitMix64 from a distinct 64-bit value).
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut st = seed;
        let mixed = splitmix64(&mut st) ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut st = mixed;
        let mut s = [0u64; 4];
        for x in &mut s {
            *x = splitmix64(&mut st);
        }
        if s == [0; 4] {
            s[0] = 1; // the all-zero state is the one xoshiro cannot leave
        }
        Rng { s }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A uniform draw in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Which way a packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client namespace to server namespace.
    Up,
    /// Server namespace to client namespace.
    Down,
}

impl Direction {
    /// Both directions, up first.
    pub const BOTH: [Direction; 2] = [Direction::Up, Direction::Down];

    /// 0 for up, 1 for down (array index).
    pub fn index(self) -> usize {
        match self {
            Direction::Up => 0,
            Direction::Down => 1,
        }
    }

    /// The opposite direction.
    pub fn other(self) -> Direction {
        match self {
            Direction::Up => Direction::Down,
            Direction::Down => Direction::Up,
        }
    }

    /// `"up"` or `"down"`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// What a random stream is used for; part of the stream number so that, for example, changing
/// the jitter never changes the loss decisions.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    /// Loss decisions.
    Loss = 1,
    /// Jitter draws.
    Jitter = 2,
}

/// The stream number for a direction, a purpose and a phase (0 = the run itself, 1.. = self-check
/// attempts, others for tools): `phase << 16 | direction << 8 | purpose`.
pub fn stream_id(dir: Direction, purpose: Purpose, phase: u32) -> u64 {
    (u64::from(phase) << 16) | ((dir.index() as u64) << 8) | purpose as u64
}

/// How packets are lost in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum LossModel {
    /// No random loss.
    #[default]
    None,
    /// Independent (Bernoulli) loss with probability `p` per packet.
    Random {
        /// Loss probability per packet, `0..=1`.
        p: f64,
    },
    /// The Gilbert–Elliott two-state model (Gilbert 1960, Elliott 1963), with parameters named as
    /// in netem's `gemodel` and RFC 6534's bursty loss discussion: in state Good a packet is lost
    /// with probability `loss_good` (netem's 1-k), in Bad with `loss_bad` (1-h); after each
    /// packet Good turns Bad with probability `p` and Bad turns Good with probability `r`.
    GilbertElliott {
        /// P(Good → Bad) per packet.
        p: f64,
        /// P(Bad → Good) per packet.
        r: f64,
        /// Loss probability in Bad (1-h; 1 for the simple Gilbert model).
        loss_bad: f64,
        /// Loss probability in Good (1-k; 0 for the simple Gilbert model).
        loss_good: f64,
    },
}

/// `z` for a two-sided 99.9% normal interval.
const Z_999: f64 = 3.290_526_731_491_926;

/// Why an impairment (of one direction) is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidImpairment {
    /// A loss probability outside 0..=1.
    #[error("{name} must be between 0 and 100%, got {value}")]
    Probability {
        /// Which probability (`loss`, `burst-loss p`, ...).
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// A rate limit of 0.
    #[error("rate must be above 0")]
    ZeroRate,
    /// A queue limit without a rate limit to queue for.
    #[error("a queue limit needs a rate (--rate)")]
    QueueWithoutRate,
    /// A queue limit of 0.
    #[error("queue limit must be above 0")]
    ZeroQueue,
    /// A delay or jitter above 60 s.
    #[error("delay and jitter are limited to 60 s")]
    TooLong,
}

impl LossModel {
    /// The long-run fraction of packets lost.
    pub fn mean_loss(&self) -> f64 {
        match *self {
            LossModel::None => 0.0,
            LossModel::Random { p } => p,
            LossModel::GilbertElliott { p, r, loss_bad, loss_good } => {
                if p + r == 0.0 {
                    return loss_good; // never leaves Good
                }
                let pi_bad = p / (p + r);
                pi_bad * loss_bad + (1.0 - pi_bad) * loss_good
            }
        }
    }

    /// Check that every probability is in `0..=1`.
    pub fn validate(&self) -> Result<(), InvalidImpairment> {
        let check = |name: &'static str, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(InvalidImpairment::Probability { name, value })
            }
        };
        match *self {
            LossModel::None => Ok(()),
            LossModel::Random { p } => check("loss", p),
            LossModel::GilbertElliott { p, r, loss_bad, loss_good } => {
                check("burst-loss p", p)?;
                check("burst-loss r", r)?;
                check("burst-loss loss in Bad", loss_bad)?;
                check("burst-loss loss in Good", loss_good)
            }
        }
    }

    /// The range of loss counts among `n` packets that this model produces with probability
    /// 99.9% (two-sided), as `(lowest, highest)` accepted count.
    ///
    /// Independent loss: exact binomial quantiles. Gilbert–Elliott: losses are correlated, so a
    /// normal approximation whose variance includes the chain's autocorrelation: with
    /// λ = 1 − p − r and stationary π_B = p/(p+r), Cov(X_i, X_j) = (l_B − l_G)² π_B π_G λ^|i−j|,
    /// so Var(ΣX)/n → m(1−m) + 2 (l_B − l_G)² π_B π_G λ/(1−λ); widened by the bias of starting in
    /// Good rather than in the stationary state.
    pub fn interval_999(&self, n: u64) -> (u64, u64) {
        match *self {
            LossModel::None => (0, 0),
            LossModel::Random { p } => binomial_interval(n, p, 0.999),
            LossModel::GilbertElliott { p, r, loss_bad, loss_good } => {
                if p + r == 0.0 {
                    return binomial_interval(n, loss_good, 0.999);
                }
                let m = self.mean_loss();
                let pi_b = p / (p + r);
                let lambda = 1.0 - p - r;
                let d = loss_bad - loss_good;
                let var = m * (1.0 - m) + 2.0 * d * d * pi_b * (1.0 - pi_b) * lambda / (1.0 - lambda);
                let nf = n as f64;
                let half = Z_999 * (nf * var.max(0.0)).sqrt();
                // Starting in Good: the expected total falls short of n·m by about π_B·d/(1−λ).
                let bias = (pi_b * d / (1.0 - lambda)).abs();
                let lo = (nf * m - half - bias - 1.0).floor().max(0.0) as u64;
                let hi = ((nf * m + half + 1.0).ceil() as u64).min(n);
                (lo, hi)
            }
        }
    }
}

/// The two-sided `confidence` interval of a Binomial(n, p) count, as exact quantiles:
/// `(lo, hi)` such that P(X < lo) ≤ α/2 and P(X > hi) ≤ α/2 with α = 1 − confidence.
///
/// Computed from the probability mass function outward from the mode (ratios of successive
/// terms), so it neither underflows for large `n` nor needs a log-gamma function.
pub(crate) fn binomial_interval(n: u64, p: f64, confidence: f64) -> (u64, u64) {
    if n == 0 || p <= 0.0 {
        return (0, 0);
    }
    if p >= 1.0 {
        return (n, n);
    }
    let alpha = (1.0 - confidence) / 2.0;
    let mode = (((n + 1) as f64 * p).floor() as u64).min(n);
    let ratio_up = |k: u64| (n - k) as f64 / (k + 1) as f64 * p / (1.0 - p); // P(k+1)/P(k)
                                                                             // Relative weights around the mode; stop once a term is negligible.
    let mut below = Vec::new(); // weights of mode-1, mode-2, ...
    let mut w = 1.0f64;
    let mut k = mode;
    while k > 0 {
        w /= ratio_up(k - 1);
        if w < 1e-18 {
            break;
        }
        below.push(w);
        k -= 1;
    }
    let lo_k = mode - below.len() as u64;
    let mut weights: Vec<f64> = below.into_iter().rev().collect();
    weights.push(1.0);
    let mut w = 1.0f64;
    let mut k = mode;
    while k < n {
        w *= ratio_up(k);
        if w < 1e-18 {
            break;
        }
        weights.push(w);
        k += 1;
    }
    let total: f64 = weights.iter().sum();
    // Lower bound: first k whose cumulative probability exceeds α/2.
    let mut cum = 0.0;
    let mut lo = lo_k;
    for (i, w) in weights.iter().enumerate() {
        cum += w / total;
        if cum > alpha {
            lo = lo_k + i as u64;
            break;
        }
    }
    let mut cum = 0.0;
    let mut hi = lo_k + weights.len() as u64 - 1;
    for (i, w) in weights.iter().enumerate().rev() {
        cum += w / total;
        if cum > alpha {
            hi = lo_k + i as u64;
            break;
        }
    }
    (lo, hi)
}

/// Draws loss decisions for one direction from its own stream.
#[derive(Debug, Clone)]
pub struct LossGen {
    model: LossModel,
    rng: Rng,
    bad: bool,
}

impl LossGen {
    /// A generator for `model` on stream `stream` of `seed`, starting in Good.
    pub fn new(model: LossModel, seed: u64, stream: u64) -> LossGen {
        LossGen { model, rng: Rng::new(seed, stream), bad: false }
    }

    /// The model this generator draws from.
    pub fn model(&self) -> LossModel {
        self.model
    }

    /// Decide the next packet: `true` means drop it. Random loss takes one draw per packet,
    /// Gilbert–Elliott two (loss in the current state, then the state transition), so the
    /// decisions depend only on the seed and the number of packets seen.
    pub fn drop_next(&mut self) -> bool {
        match self.model {
            LossModel::None => false,
            LossModel::Random { p } => self.rng.next_f64() < p,
            LossModel::GilbertElliott { p, r, loss_bad, loss_good } => {
                let loss = if self.bad { loss_bad } else { loss_good };
                let lost = self.rng.next_f64() < loss;
                let flip = if self.bad { r } else { p };
                if self.rng.next_f64() < flip {
                    self.bad = !self.bad;
                }
                lost
            }
        }
    }
}

/// A limit on the bottleneck queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueLimit {
    /// At most this many bytes (IP datagram lengths) waiting or in transmission.
    Bytes(u64),
    /// At most this many packets waiting or in transmission.
    Packets(u64),
}

impl QueueLimit {
    /// The default for a link of `rate_bps`: 100 ms worth of bytes, and at least 16 full-size
    /// packets. 100 ms is about one bandwidth-delay product of the paths the lab emulates
    /// (RTTs of 20–100 ms), the rule of thumb that lets a single Reno/Cubic flow keep the link
    /// busy (Villamizar & Song 1994) without the seconds of bufferbloat of a deep buffer.
    pub fn default_for(rate_bps: u64) -> QueueLimit {
        QueueLimit::Bytes((rate_bps / 8 / 10).max(16 * 1500))
    }
}

impl std::fmt::Display for QueueLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueLimit::Bytes(b) => write!(f, "{b} bytes"),
            QueueLimit::Packets(p) => write!(f, "{p} packets"),
        }
    }
}

/// A rate-limited bottleneck with a finite tail-drop queue, in virtual time.
///
/// A packet admitted at `now` starts serializing when the packets ahead of it are done and
/// leaves (its last bit sent) `size · 8 / rate` later. The queue holds every packet that has not
/// left yet, the one being serialized included; a packet that would overflow the limit is
/// dropped (tail drop). An empty queue always admits, so a limit smaller than one packet still
/// passes traffic one packet at a time.
#[derive(Debug, Clone)]
pub(crate) struct Bottleneck {
    rate_bps: u64,
    limit: QueueLimit,
    busy_until: u64,
    in_queue: VecDeque<(u64, u32)>,
    queued_bytes: u64,
}

impl Bottleneck {
    /// A bottleneck of `rate_bps` bits per second (must be > 0) with queue `limit`.
    pub fn new(rate_bps: u64, limit: QueueLimit) -> Bottleneck {
        assert!(rate_bps > 0, "a bottleneck needs a rate");
        Bottleneck { rate_bps, limit, busy_until: 0, in_queue: VecDeque::new(), queued_bytes: 0 }
    }

    /// Nanoseconds to serialize `size` bytes.
    pub fn serialization_ns(&self, size: u32) -> u64 {
        (u128::from(size) * 8 * 1_000_000_000 / u128::from(self.rate_bps)) as u64
    }

    /// Bytes and packets in the queue at `now` (including the one being serialized).
    pub fn backlog(&mut self, now: u64) -> (u64, u64) {
        while let Some(&(leave, size)) = self.in_queue.front() {
            if leave > now {
                break;
            }
            self.in_queue.pop_front();
            self.queued_bytes -= u64::from(size);
        }
        (self.queued_bytes, self.in_queue.len() as u64)
    }

    /// Offer a packet of `size` bytes at `now`: `Some(departure)` (ns) or `None` (tail drop).
    pub fn admit(&mut self, now: u64, size: u32) -> Option<u64> {
        let (bytes, packets) = self.backlog(now);
        let full = match self.limit {
            QueueLimit::Bytes(limit) => bytes + u64::from(size) > limit,
            QueueLimit::Packets(limit) => packets + 1 > limit,
        };
        if full && packets > 0 {
            return None;
        }
        let start = self.busy_until.max(now);
        let leave = start + self.serialization_ns(size);
        self.busy_until = leave;
        self.in_queue.push_back((leave, size));
        self.queued_bytes += u64::from(size);
        Some(leave)
    }
}

/// Propagation delay with uniform jitter, in order unless reordering is allowed.
#[derive(Debug, Clone)]
pub(crate) struct DelayModel {
    delay_ns: u64,
    jitter_ns: u64,
    reorder: bool,
    last_release: u64,
    rng: Rng,
}

impl DelayModel {
    /// `delay` plus a uniform draw in `[−jitter, +jitter]` per packet (never below zero), from
    /// stream `stream` of `seed`. Without `reorder`, a packet is never released before the one
    /// ahead of it (its release is raised to the previous one's), as on a real single path.
    pub fn new(delay_ns: u64, jitter_ns: u64, reorder: bool, seed: u64, stream: u64) -> DelayModel {
        DelayModel { delay_ns, jitter_ns, reorder, last_release: 0, rng: Rng::new(seed, stream) }
    }

    /// The release time of a packet that left the bottleneck at `depart` (ns). Draws exactly one
    /// random number per packet when jitter is configured.
    pub fn release(&mut self, depart: u64) -> u64 {
        let mut t = depart + self.delay_ns;
        if self.jitter_ns > 0 {
            let j = (self.rng.next_f64() * 2.0 - 1.0) * self.jitter_ns as f64;
            t = (t as i128 + j.round() as i128).max(depart as i128) as u64;
        }
        if !self.reorder {
            t = t.max(self.last_release);
            self.last_release = t;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One-way delays of `draws` isolated packets (no reordering clamp) from a fixed stream.
    fn isolated_delays(delay_ns: u64, jitter_ns: u64, draws: usize, stream: u64) -> Vec<u64> {
        let mut m = DelayModel::new(delay_ns, jitter_ns, true, 0x5e1f_c4ec, stream);
        (0..draws).map(|_| m.release(0)).collect()
    }

    #[test]
    fn rng_streams_are_reproducible_and_distinct() {
        let mut a = Rng::new(42, 1);
        let mut b = Rng::new(42, 1);
        let mut c = Rng::new(42, 2);
        let va: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let vb: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        let vc: Vec<u64> = (0..100).map(|_| c.next_u64()).collect();
        assert_eq!(va, vb);
        assert_ne!(va, vc);
        let mut d = Rng::new(7, 0);
        let mean: f64 = (0..100_000).map(|_| d.next_f64()).sum::<f64>() / 100_000.0;
        assert!((mean - 0.5).abs() < 0.005, "{mean}");
    }

    #[test]
    fn binomial_interval_matches_known_quantiles() {
        // Binomial(20000, 0.02): mean 400, sd 19.8; 99.9% two-sided ≈ 400 ± 3.29·19.8 ≈ [335, 466].
        let (lo, hi) = binomial_interval(20_000, 0.02, 0.999);
        assert!((333..=338).contains(&lo), "{lo}");
        assert!((463..=468).contains(&hi), "{hi}");
        assert_eq!(binomial_interval(100, 0.0, 0.999), (0, 0));
        assert_eq!(binomial_interval(100, 1.0, 0.999), (100, 100));
        // Small n: Binomial(10, 0.5) 99.9% = [0..10] minus the extreme tails of 1/1024 each.
        assert_eq!(binomial_interval(10, 0.5, 0.999), (0, 10));
        // P(X ≤ 3) = 0.0013 and P(X ≤ 4) = 0.0059 for Binomial(20, 0.5): the 99% interval starts at 4.
        assert_eq!(binomial_interval(20, 0.5, 0.99), (4, 16));
        // Large n, large p: no underflow.
        let (lo, hi) = binomial_interval(1_000_000, 0.3, 0.999);
        assert!(lo < 300_000 && hi > 300_000 && hi - lo < 3_200);
    }

    #[test]
    fn random_loss_is_seeded_and_near_its_rate() {
        let model = LossModel::Random { p: 0.02 };
        let mut a = LossGen::new(model, 9, stream_id(Direction::Up, Purpose::Loss, 0));
        let mut b = LossGen::new(model, 9, stream_id(Direction::Up, Purpose::Loss, 0));
        let da: Vec<bool> = (0..20_000).map(|_| a.drop_next()).collect();
        let db: Vec<bool> = (0..20_000).map(|_| b.drop_next()).collect();
        assert_eq!(da, db);
        let lost = da.iter().filter(|d| **d).count() as u64;
        let (lo, hi) = model.interval_999(20_000);
        assert!(lo <= lost && lost <= hi, "{lost} not in [{lo}, {hi}]");
        let mut other = LossGen::new(model, 10, stream_id(Direction::Up, Purpose::Loss, 0));
        let dc: Vec<bool> = (0..20_000).map(|_| other.drop_next()).collect();
        assert_ne!(da, dc);
    }

    #[test]
    fn gilbert_elliott_mean_and_burstiness() {
        let model = LossModel::GilbertElliott { p: 0.01, r: 0.3, loss_bad: 1.0, loss_good: 0.0 };
        assert!((model.mean_loss() - 0.01 / 0.31).abs() < 1e-12);
        let mut fails = 0;
        for seed in 0..20 {
            let mut g = LossGen::new(model, seed, 1);
            let drops: Vec<bool> = (0..100_000).map(|_| g.drop_next()).collect();
            let lost = drops.iter().filter(|d| **d).count() as u64;
            let (lo, hi) = model.interval_999(100_000);
            if !(lo..=hi).contains(&lost) {
                fails += 1;
            }
            // Bursts: mean run of consecutive losses ≈ 1/r.
            let mut runs = 0;
            let mut prev = false;
            for &d in &drops {
                if d && !prev {
                    runs += 1;
                }
                prev = d;
            }
            let mean_burst = lost as f64 / runs as f64;
            assert!((mean_burst - 1.0 / 0.3).abs() < 0.5, "mean burst {mean_burst}");
        }
        assert!(fails <= 1, "{fails} of 20 seeds outside the 99.9% interval");
    }

    #[test]
    fn bottleneck_holds_its_rate_and_tail_drops() {
        // 10 Mbit/s, 1500-byte packets: 1.2 ms each.
        let mut b = Bottleneck::new(10_000_000, QueueLimit::Packets(4));
        assert_eq!(b.serialization_ns(1500), 1_200_000);
        let departs: Vec<Option<u64>> = (0..6).map(|_| b.admit(0, 1500)).collect();
        assert_eq!(departs[0], Some(1_200_000));
        assert_eq!(departs[3], Some(4_800_000));
        assert_eq!(departs[4], None);
        assert_eq!(departs[5], None);
        // After the first has left there is room for one more, queued behind the rest.
        assert_eq!(b.admit(1_200_000, 1500), Some(6_000_000));
        // Byte limit: 3000 bytes holds two full packets.
        let mut b = Bottleneck::new(10_000_000, QueueLimit::Bytes(3000));
        assert!(b.admit(0, 1500).is_some());
        assert!(b.admit(0, 1500).is_some());
        assert!(b.admit(0, 100).is_none());
        // An empty queue admits even an oversized packet.
        let mut b = Bottleneck::new(1_000_000, QueueLimit::Bytes(100));
        assert!(b.admit(0, 1500).is_some());
        // Long-run rate: a saturating sender gets exactly the configured rate.
        let mut b = Bottleneck::new(10_000_000, QueueLimit::Bytes(64 << 10));
        let mut now = 0;
        let mut bytes = 0u64;
        let mut last = 0;
        while now < 10_000_000_000 {
            if let Some(d) = b.admit(now, 1200) {
                bytes += 1200;
                last = d;
            }
            now += 500_000; // a packet every 0.5 ms offered: 19.2 Mbit/s
        }
        let rate = bytes as f64 * 8.0 / (last as f64 / 1e9);
        assert!((rate - 10e6).abs() / 10e6 < 1e-3, "{rate}");
    }

    #[test]
    fn delay_keeps_order_without_reorder() {
        let mut d = DelayModel::new(20_000_000, 5_000_000, false, 1, 2);
        let mut prev = 0;
        for i in 0..10_000u64 {
            let r = d.release(i * 100_000);
            assert!(r >= prev);
            assert!(r >= i * 100_000 + 15_000_000);
            prev = r;
        }
        let mut d = DelayModel::new(20_000_000, 5_000_000, true, 1, 2);
        let rel: Vec<u64> = (0..10_000u64).map(|i| d.release(i * 100_000)).collect();
        assert!(rel.windows(2).any(|w| w[1] < w[0]), "reordering expected");
        assert!(rel.iter().enumerate().all(|(i, r)| {
            let base = i as u64 * 100_000 + 20_000_000;
            *r >= base - 5_000_000 && *r <= base + 5_000_000
        }));
        // Jitter larger than the delay is clipped at zero.
        let v = isolated_delays(1_000_000, 3_000_000, 10_000, 1);
        assert!(v.iter().all(|&x| x <= 4_000_000));
        assert!(v.iter().filter(|&&x| x == 0).count() > 2_000);
    }
}
