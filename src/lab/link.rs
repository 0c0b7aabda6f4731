//! The link emulator: two network namespaces joined only by a TUN relay inside this process.
//!
//! ```text
//!  client namespace                 quiclab relay                  server namespace
//!  198.18.0.1/15 ── qlab0 ══ up:   loss → rate/queue → delay ══▶ qlab0 ── 198.19.0.1/15
//!                          ◀══ down: loss → rate/queue → delay ══
//! ```
//!
//! Each namespace has one TUN device whose /15 prefix covers the other side's address, so the
//! kernel routes everything for the other side into the device: kernel TCP, QUIC over UDP and
//! ICMP all cross the very same relay. The addresses come from 198.18.0.0/15, the block RFC 2544
//! (and RFC 6890) reserves for benchmarking network devices; they exist only inside the two
//! namespaces.
//!
//! Per direction the relay runs two threads:
//!
//! * a **reader** that takes each datagram from the source device, applies the NAT (rebinding),
//!   the loss model, the bottleneck (rate and tail-drop queue) and computes the release time
//!   (delay and jitter) from the models in [`super::impair`];
//! * a **delay line** that holds packets in a heap ordered by release time and writes each into
//!   the other namespace when it is due. It sleeps on a condition variable with the thread's timer
//!   slack at 1 ns (`PR_SET_TIMERSLACK`) until shortly before the next release, then spins for the
//!   last stretch ([`LinkConfig::spin`]): tokio's timers (1 ms granularity, ~1.2 ms late per hop
//!   here) would be far too coarse. How late each packet was released is recorded, so every run
//!   can be judged ([`DirStats::lateness_us`]).
//!
//! All counters are per direction and measured in wire bytes: the length of the IP datagram the
//! relay read (the TUN carries no link-layer header).
//!
//! [`Link::start_capture`] records what the relay forwards (each datagram as the delay line writes
//! it into the other namespace, after NAT) to a pcap file, and what it drops to a second one; see
//! [`super::pcap`]. [`Link::start_tap`] keeps the same datagrams, at the same points, in memory
//! ([`super::tap`]), bounded by a byte limit; the two may run together.
//!
//! Loss is counted honestly per direction ([`DirStats`]): `realized_loss` is every drop (loss
//! model, queue, stale NAT) over the IPv4 datagrams offered, `model_loss` the loss model's own
//! rate, `queue_loss` the tail drops. [`LATENESS_P99_LIMIT_US`] gates the delay line's timing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::impair::{
    stream_id, Bottleneck, DelayModel, Direction, InvalidImpairment, LossGen, LossModel, Purpose, QueueLimit,
};
use super::netns::{NetNs, NsThread};
use super::packet::{Ipv4Info, Nat, NatMapping, NatVerdict, RebindMode};
use super::pcap::{Capture, CaptureSummary, Stream};
use super::report::{new_histogram, ser_duration_ms, Percentiles, HISTOGRAM_MAX_NS};
use super::tap::{Fate, Tap, TapPacket};
use super::tun::{self, Tun};
use super::LabError;

/// The client's address inside the client namespace.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The server's address inside the server namespace.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// Prefix length on both devices: 198.18.0.0/15 holds both sides (and the client's rebinding
/// aliases 198.18.0.2, ...).
pub(crate) const PREFIX_LEN: u8 = 15;
/// Name of the TUN device in each namespace.
pub(crate) const DEVICE: &str = "qlab0";
/// Width of the egress-rate buckets.
pub(crate) const BUCKET: Duration = Duration::from_millis(100);
/// Most buckets kept per direction (one hour); later traffic is still counted in the totals.
const MAX_BUCKETS: usize = 36_000;
/// The relay-lateness gate: a direction whose release lateness p99 exceeds this many
/// microseconds is flagged ([`DirStats::lateness_ok`]); experiments leave such runs out.
///
/// 1000 µs. On this 2-core VM an idle relay releases within a few µs at p50 and below ~100 µs
/// at p99; with two compilers on the two cores p99 rose to a few ms (docs/lab.md, "Timing").
/// 1 ms is ten times the unloaded p99 yet small beside the delays the experiments configure
/// (10–50 ms one way), so a cell past it ran on a machine too busy to trust its timing.
pub const LATENESS_P99_LIMIT_US: f64 = 1000.0;

fn mutex<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The impairments of one direction.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Impairment {
    /// One-way propagation delay.
    #[serde(rename = "delay_ms", serialize_with = "ser_duration_ms")]
    pub delay: Duration,
    /// Uniform jitter: each packet's delay is `delay ± jitter` (never below zero).
    #[serde(rename = "jitter_ms", serialize_with = "ser_duration_ms")]
    pub jitter: Duration,
    /// Allow jitter to reorder packets (otherwise a packet never overtakes the one ahead).
    pub reorder: bool,
    /// Random or bursty loss.
    pub loss: LossModel,
    /// Bottleneck rate in bits per second (IP datagram bytes × 8); `None` = unlimited.
    pub rate_bps: Option<u64>,
    /// The bottleneck's tail-drop queue; `None` = [`QueueLimit::default_for`] the rate.
    pub queue: Option<QueueLimit>,
}

impl Impairment {
    /// No impairment at all: the relay only forwards.
    pub fn none() -> Impairment {
        Impairment::default()
    }

    /// A fixed one-way delay and nothing else.
    pub fn delay(delay: Duration) -> Impairment {
        Impairment { delay, ..Impairment::default() }
    }

    /// Check the values make sense together.
    pub fn validate(&self) -> Result<(), InvalidImpairment> {
        self.loss.validate()?;
        if self.rate_bps == Some(0) {
            return Err(InvalidImpairment::ZeroRate);
        }
        if self.queue.is_some() && self.rate_bps.is_none() {
            return Err(InvalidImpairment::QueueWithoutRate);
        }
        if matches!(self.queue, Some(QueueLimit::Bytes(0) | QueueLimit::Packets(0))) {
            return Err(InvalidImpairment::ZeroQueue);
        }
        if self.delay > Duration::from_secs(60) || self.jitter > Duration::from_secs(60) {
            return Err(InvalidImpairment::TooLong);
        }
        Ok(())
    }

    /// The queue limit in force (the default when none was given), if there is a rate.
    pub fn effective_queue(&self) -> Option<QueueLimit> {
        self.rate_bps.map(|r| self.queue.unwrap_or_else(|| QueueLimit::default_for(r)))
    }

    /// One line for banners: `delay 25 ms ± 2 ms, loss 2%, rate 10 Mbit/s (queue 125000 bytes)`.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("delay {}", fmt_ms(self.delay))];
        if !self.jitter.is_zero() {
            parts[0].push_str(&format!(" ± {}", fmt_ms(self.jitter)));
            if self.reorder {
                parts.push("reordering".into());
            }
        }
        match self.loss {
            LossModel::None => {}
            LossModel::Random { p } => parts.push(format!("loss {}%", p * 100.0)),
            LossModel::GilbertElliott { p, r, loss_bad, loss_good } => parts.push(format!(
                "Gilbert-Elliott loss p={}% r={}% bad={}% good={}% (mean {:.3}%)",
                p * 100.0,
                r * 100.0,
                loss_bad * 100.0,
                loss_good * 100.0,
                self.loss.mean_loss() * 100.0
            )),
        }
        if let Some(rate) = self.rate_bps {
            parts.push(format!("rate {} (queue {})", fmt_rate(rate as f64), self.effective_queue().unwrap()));
        }
        parts.join(", ")
    }
}

fn fmt_ms(d: Duration) -> String {
    format!("{} ms", d.as_secs_f64() * 1000.0)
}

/// `10 Mbit/s`, `1.5 Gbit/s`, `640 kbit/s`.
pub(crate) fn fmt_rate(bps: f64) -> String {
    if bps >= 1e9 {
        format!("{:.4} Gbit/s", bps / 1e9)
    } else if bps >= 1e6 {
        format!("{:.4} Mbit/s", bps / 1e6)
    } else {
        format!("{:.4} kbit/s", bps / 1e3)
    }
    .replace(".0000 ", " ")
}

/// Everything a [`Link`] is built from.
#[derive(Debug, Clone, Serialize)]
pub struct LinkConfig {
    /// Client → server.
    pub up: Impairment,
    /// Server → client.
    pub down: Impairment,
    /// Seed of every random stream (loss and jitter, per direction).
    pub seed: u64,
    /// What a rebinding changes.
    pub rebind: RebindMode,
    /// MTU of both devices. 1500: Ethernet's, what the experiments' papers assume.
    pub mtu: u32,
    /// How long before a release the delay line stops sleeping and spins. 100 µs: a sleeping
    /// thread (timer slack 1 ns) woke ~40 µs late at the median on this 2-core VM, so 100 µs
    /// gives a release within a few µs of its time while spinning at most 100 µs per wake-up
    /// (about 8% of a core at 10 Mbit/s of full-size packets).
    #[serde(rename = "spin_us", serialize_with = "super::report::ser_duration_us")]
    pub spin: Duration,
}

impl LinkConfig {
    /// A link with the same impairment both ways.
    pub fn symmetric(imp: Impairment, seed: u64) -> LinkConfig {
        LinkConfig {
            up: imp.clone(),
            down: imp,
            seed,
            rebind: RebindMode::Port,
            mtu: 1500,
            spin: Duration::from_micros(100),
        }
    }

    /// The impairment of one direction.
    pub fn get(&self, d: Direction) -> &Impairment {
        match d {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }

    /// Check both directions.
    pub fn validate(&self) -> Result<(), LabError> {
        for d in Direction::BOTH {
            self.get(d).validate().map_err(|source| LabError::Impairment { direction: d.name(), source })?;
        }
        if !(576..=9000).contains(&self.mtu) {
            return Err(LabError::Config(format!("MTU {} outside 576..=9000", self.mtu)));
        }
        Ok(())
    }
}

/// A rebinding that happened.
#[derive(Debug, Clone, Serialize)]
pub struct RebindEvent {
    /// When, since the link started.
    #[serde(rename = "at_ms", serialize_with = "ser_duration_ms")]
    pub at: Duration,
    /// The NAT generation it started (1 = first rebinding).
    pub generation: u32,
}

/// The models of one direction, rebuilt for every phase.
struct Pipeline {
    loss: LossGen,
    bottleneck: Option<Bottleneck>,
    delay: DelayModel,
}

impl Pipeline {
    fn new(imp: &Impairment, seed: u64, d: Direction, phase: u32) -> Pipeline {
        Pipeline {
            loss: LossGen::new(imp.loss, seed, stream_id(d, Purpose::Loss, phase)),
            bottleneck: imp.rate_bps.map(|r| Bottleneck::new(r, imp.effective_queue().unwrap())),
            delay: DelayModel::new(
                imp.delay.as_nanos() as u64,
                imp.jitter.as_nanos() as u64,
                imp.reorder,
                seed,
                stream_id(d, Purpose::Jitter, phase),
            ),
        }
    }
}

/// A packet waiting in the delay line.
struct Pending {
    release: u64,
    seq: u64,
    data: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.release, self.seq) == (o.release, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.release, self.seq).cmp(&(o.release, o.seq))
    }
}

#[derive(Default)]
struct Counters {
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    non_ipv4: AtomicU64,
    stale: AtomicU64,
    considered: AtomicU64,
    lost: AtomicU64,
    queue_drops: AtomicU64,
    packets_out: AtomicU64,
    bytes_out: AtomicU64,
    write_errors: AtomicU64,
    largest: AtomicU64,
}

impl Counters {
    fn reset(&self) {
        for c in [
            &self.packets_in,
            &self.bytes_in,
            &self.non_ipv4,
            &self.stale,
            &self.considered,
            &self.lost,
            &self.queue_drops,
            &self.packets_out,
            &self.bytes_out,
            &self.write_errors,
            &self.largest,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// What the delay line records about the packets it released.
struct Egress {
    lateness: Histogram<u64>,
    buckets: Vec<u64>,
}

struct DirShared {
    dir: Direction,
    pipeline: Mutex<Pipeline>,
    line: Mutex<BinaryHeap<Reverse<Pending>>>,
    wake: Condvar,
    seq: AtomicU64,
    counters: Counters,
    egress: Mutex<Egress>,
}

struct Shared {
    epoch: Instant,
    /// Wall-clock time of `epoch`, in nanoseconds since the Unix epoch (for capture timestamps).
    wall_epoch_ns: u64,
    /// Whether `capture` holds a capture (checked before taking its lock).
    capturing: AtomicBool,
    capture: RwLock<Option<Capture>>,
    /// Whether `tap` holds a running tap (checked before taking its lock).
    tapping: AtomicBool,
    tap: Mutex<Option<TapState>>,
    stop: AtomicBool,
    dirs: [DirShared; 2],
    nat: Mutex<Nat>,
    nat_active: AtomicBool,
    /// Nanoseconds since the epoch of the next scheduled rebinding (`u64::MAX`: none).
    next_rebind: AtomicU64,
    schedule: Mutex<Vec<u64>>,
    rebinds: Mutex<Vec<RebindEvent>>,
    phase_start: AtomicU64,
    spin_ns: u64,
}

/// Records per chunk of a running tap.
const TAP_CHUNK: usize = 4096;

/// A running tap: what it kept and the bound on it. Records are kept in fixed-capacity chunks
/// so a push never reallocates (and copies) everything kept so far while the relay holds the
/// lock; [`Link::take_tap`] joins them, off the relay's threads.
struct TapState {
    chunks: Vec<Vec<TapPacket>>,
    overflow: u64,
    /// Bytes of datagram data kept so far.
    kept_bytes: usize,
    /// Most bytes of datagram data kept; later datagrams are only counted (`tap.overflow`).
    limit_bytes: usize,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Hand a packet to the tap, if one runs: kept while within the byte limit, else counted.
    fn tap(&self, direction: Direction, fate: Fate, at_ns: u64, data: &[u8]) {
        if !self.tapping.load(Ordering::Relaxed) {
            return;
        }
        let mut slot = mutex(&self.tap);
        let Some(t) = slot.as_mut() else { return };
        if t.kept_bytes.saturating_add(data.len()) > t.limit_bytes {
            t.overflow += 1;
            return;
        }
        t.kept_bytes += data.len();
        if t.chunks.last().is_none_or(|c| c.len() == TAP_CHUNK) {
            t.chunks.push(Vec::with_capacity(TAP_CHUNK));
        }
        if let Some(c) = t.chunks.last_mut() {
            c.push(TapPacket { at_ns, direction, fate, data: data.to_vec() });
        }
    }

    /// Hand a packet to the capture, if one runs. Never blocks on the writer.
    fn capture(&self, stream: Stream, at_ns: u64, data: impl FnOnce() -> Vec<u8>) {
        if !self.capturing.load(Ordering::Relaxed) {
            return;
        }
        if let Some(c) = self.capture.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            c.record(stream, at_ns, data());
        }
    }

    fn rebind(&self, now: u64) {
        let mut nat = mutex(&self.nat);
        nat.rebind();
        self.nat_active.store(true, Ordering::SeqCst);
        mutex(&self.rebinds).push(RebindEvent { at: Duration::from_nanos(now), generation: nat.generation() });
    }

    /// Apply every scheduled rebinding that is due at `now`.
    fn maybe_rebind(&self, now: u64) {
        if now < self.next_rebind.load(Ordering::Relaxed) {
            return;
        }
        let mut sched = mutex(&self.schedule);
        while sched.last().is_some_and(|&t| t <= now) {
            sched.pop();
            self.rebind(now);
        }
        self.next_rebind.store(sched.last().copied().unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Run one datagram read from direction `d`'s source through NAT, loss, bottleneck and delay.
    fn process(&self, d: Direction, buf: &mut [u8], now: u64) {
        let ds = &self.dirs[d.index()];
        let c = &ds.counters;
        c.packets_in.fetch_add(1, Ordering::Relaxed);
        c.bytes_in.fetch_add(buf.len() as u64, Ordering::Relaxed);
        c.largest.fetch_max(buf.len() as u64, Ordering::Relaxed);
        let Some(info) = Ipv4Info::parse(buf) else {
            c.non_ipv4.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let pkt = &mut buf[..info.total_len];
        self.maybe_rebind(now);
        if self.nat_active.load(Ordering::Relaxed) {
            let mut nat = mutex(&self.nat);
            let verdict = match d {
                Direction::Up => nat.outbound(pkt, &info),
                Direction::Down => nat.inbound(pkt, &info),
            };
            // Each drop and forward is counted after its capture: a count seen means a packet captured.
            if verdict == NatVerdict::Stale {
                self.tap(d, Fate::DroppedStaleNat, now, pkt);
                self.capture(Stream::Dropped, now, || pkt.to_vec());
                c.stale.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let release = {
            let mut p = mutex(&ds.pipeline);
            c.considered.fetch_add(1, Ordering::Relaxed);
            if p.loss.drop_next() {
                drop(p);
                self.tap(d, Fate::DroppedLoss, now, pkt);
                self.capture(Stream::Dropped, now, || pkt.to_vec());
                c.lost.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let depart = match p.bottleneck.as_mut() {
                None => now,
                Some(b) => match b.admit(now, pkt.len() as u32) {
                    Some(t) => t,
                    None => {
                        drop(p);
                        self.tap(d, Fate::DroppedQueue, now, pkt);
                        self.capture(Stream::Dropped, now, || pkt.to_vec());
                        c.queue_drops.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                },
            };
            p.delay.release(depart)
        };
        let seq = ds.seq.fetch_add(1, Ordering::Relaxed);
        let mut line = mutex(&ds.line);
        let is_head = line.peek().is_none_or(|h| release < h.0.release);
        line.push(Reverse(Pending { release, seq, data: pkt.to_vec() }));
        drop(line);
        if is_head {
            ds.wake.notify_one();
        }
    }
}

/// Relay counters and timing for one direction, since the current phase began.
#[derive(Debug, Clone, Serialize)]
pub struct DirStats {
    /// `up` (client → server) or `down`.
    pub direction: Direction,
    /// Datagrams read from the source device.
    pub packets_in: u64,
    /// Their bytes (IP datagram lengths).
    pub bytes_in: u64,
    /// Datagrams dropped for not being IPv4 (IPv6 is switched off on the devices).
    pub dropped_non_ipv4: u64,
    /// Datagrams to a NAT mapping that a rebinding removed.
    pub dropped_stale_nat: u64,
    /// Datagrams that met the loss model.
    pub loss_draws: u64,
    /// Of those, dropped by the loss model.
    pub dropped_loss: u64,
    /// Dropped by the bottleneck's full queue (tail drop).
    pub dropped_queue: u64,
    /// Datagrams written into the other namespace.
    pub packets_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Writes the kernel refused.
    pub write_errors: u64,
    /// The largest datagram read: at most the MTU, since the devices take no offloads.
    pub largest_packet: u64,
    /// IPv4 datagrams that entered the direction's pipeline (`packets_in − dropped_non_ipv4`):
    /// the denominator of every loss fraction below except `model_loss`.
    pub offered: u64,
    /// Every drop over what was offered: `(dropped_loss + dropped_queue + dropped_stale_nat) /
    /// offered` (0 when nothing was offered). The loss the traffic actually met.
    pub realized_loss: f64,
    /// What the loss model did: `dropped_loss / loss_draws` (0 without draws). This is what the
    /// self-check compares with the configured rate; it leaves out queue and NAT drops.
    pub model_loss: f64,
    /// Tail drops at the bottleneck's queue over what was offered: `dropped_queue / offered`.
    pub queue_loss: f64,
    /// How late the delay line released packets against their scheduled time, in microseconds.
    pub lateness_us: Percentiles,
    /// Bytes written into the other namespace per 100 ms bucket, from the current phase's start
    /// ([`Link::begin_phase`]; the link's start before any phase).
    pub egress_bytes_per_100ms: Vec<u64>,
}

impl DirStats {
    /// Whether the relay released this direction's packets on time: lateness p99 at most
    /// [`LATENESS_P99_LIMIT_US`] (true when nothing was released).
    pub fn lateness_ok(&self) -> bool {
        self.lateness_us.p99 <= LATENESS_P99_LIMIT_US || self.packets_out == 0
    }

    /// The egress rate over the longest run of buckets in which the direction carried at least
    /// `min_fraction` of `rate_bps`, skipping `skip` buckets at each end of that run (slow start
    /// and the tail). Returns `(rate, seconds measured)`.
    pub fn busy_rate_bps(&self, rate_bps: f64, min_fraction: f64, skip: usize) -> (f64, f64) {
        let threshold = rate_bps * min_fraction * BUCKET.as_secs_f64() / 8.0;
        let (mut best, mut start) = ((0, 0), None);
        let v = &self.egress_bytes_per_100ms;
        for i in 0..=v.len() {
            let busy = i < v.len() && v[i] as f64 >= threshold;
            match (busy, start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    if i - s > best.1 - best.0 {
                        best = (s, i);
                    }
                    start = None;
                }
                _ => {}
            }
        }
        let (a, b) = (best.0 + skip, best.1.saturating_sub(skip));
        if b <= a {
            return (0.0, 0.0);
        }
        let bytes: u64 = v[a..b].iter().sum();
        let secs = (b - a) as f64 * BUCKET.as_secs_f64();
        (bytes as f64 * 8.0 / secs, secs)
    }
}

/// A snapshot of the relay's counters.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStats {
    /// When the current phase began, since the link started.
    #[serde(rename = "phase_start_ms", serialize_with = "ser_duration_ms")]
    pub phase_start: Duration,
    /// When this snapshot was taken, since the link started.
    #[serde(rename = "taken_at_ms", serialize_with = "ser_duration_ms")]
    pub taken_at: Duration,
    /// Client → server.
    pub up: DirStats,
    /// Server → client.
    pub down: DirStats,
    /// Rebindings so far.
    pub rebinds: Vec<RebindEvent>,
    /// NAT mappings set up by rebindings.
    pub nat_mappings: Vec<NatMapping>,
    /// Whether the CPUs were held out of deep idle while the link ran (root; see
    /// `hold_cpu_latency`): without it expect more release lateness in a VM.
    pub cpu_latency_qos: bool,
}

impl LinkStats {
    /// Both directions pass the lateness gate ([`DirStats::lateness_ok`]).
    pub fn lateness_ok(&self) -> bool {
        self.up.lateness_ok() && self.down.lateness_ok()
    }

    /// One direction.
    pub fn get(&self, d: Direction) -> &DirStats {
        match d {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }
}

/// The emulated link: two namespaces, their devices and the relay threads between them.
/// Dropping it stops the relay and closes the devices; the namespaces vanish once no thread or
/// process is left inside them.
pub struct Link {
    shared: Arc<Shared>,
    config: Mutex<LinkConfig>,
    client: NetNs,
    server: NetNs,
    threads: Vec<JoinHandle<()>>,
    stop_event: OwnedFd,
    phase: AtomicU32,
    /// The PM QoS request that keeps the CPUs out of deep idle while the link runs
    /// ([`hold_cpu_latency`]); dropping it ends the request.
    cpu_latency: Option<std::fs::File>,
}

/// Ask the kernel to keep every CPU out of idle states with an exit latency above 0 µs, for as
/// long as the returned file stays open (the PM QoS interface, `/dev/cpu_dma_latency`). In a VM
/// whose idle CPUs halt, a delay line woken from an idle CPU was sometimes milliseconds late; with
/// the request the guest polls instead of halting. Needs root; `None` otherwise (the run says so
/// in [`LinkStats::cpu_latency_qos`]).
fn hold_cpu_latency() -> Option<std::fs::File> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open("/dev/cpu_dma_latency").ok()?;
    f.write_all(&0i32.to_ne_bytes()).ok()?;
    Some(f)
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("client", &self.client).field("server", &self.server).finish_non_exhaustive()
    }
}

/// Create a namespace with its TUN device configured, IPv6 off and loopback up.
fn make_side(label: &'static str, addr: Ipv4Addr, mtu: u32) -> Result<(NetNs, Tun), LabError> {
    NetNs::create_with(label, move || {
        tun::disable_ipv6("all")?;
        tun::disable_ipv6("default")?;
        tun::set_up("lo")?;
        let dev = Tun::create(DEVICE)?;
        tun::disable_ipv6(DEVICE)?;
        // txqueuelen 1000: the device queue only has to absorb the relay's scheduling hiccups;
        // the emulated queue is the bottleneck's.
        tun::configure_ipv4(DEVICE, addr, PREFIX_LEN, mtu, 1000)?;
        tun::set_up(DEVICE)?;
        Ok(dev)
    })
}

fn eventfd() -> Result<OwnedFd, LabError> {
    // SAFETY: plain eventfd creation; the fd is ours.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(LabError::Io(std::io::Error::last_os_error()));
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn reader_loop(shared: Arc<Shared>, d: Direction, src: Arc<Tun>, stop_fd: i32) {
    let mut buf = vec![0u8; 65_536];
    let mut fds = [
        libc::pollfd { fd: src.raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: stop_fd, events: libc::POLLIN, revents: 0 },
    ];
    while !shared.stop.load(Ordering::Relaxed) {
        // SAFETY: fds is a valid array of two pollfd.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::error!(direction = d.name(), "relay poll: {e}");
                return;
            }
            continue;
        }
        if fds[1].revents != 0 {
            return;
        }
        // Drain what is waiting (bounded, so the stop flag is seen under any load).
        for _ in 0..256 {
            match src.recv(&mut buf) {
                Ok(Some(n)) => {
                    let now = shared.now_ns();
                    shared.process(d, &mut buf[..n], now);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(direction = d.name(), "relay read: {e}");
                    return;
                }
            }
        }
    }
}

fn set_timer_slack_1ns() {
    // SAFETY: PR_SET_TIMERSLACK affects only the calling thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

fn delay_line_loop(shared: Arc<Shared>, d: Direction, dst: Arc<Tun>) {
    set_timer_slack_1ns();
    let ds = &shared.dirs[d.index()];
    let spin = shared.spin_ns;
    let mut line = mutex(&ds.line);
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let Some(head) = line.peek() else {
            line = ds.wake.wait(line).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        let release = head.0.release;
        let now = shared.now_ns();
        if release > now + spin {
            let wait = Duration::from_nanos(release - now - spin);
            line = ds.wake.wait_timeout(line, wait).unwrap_or_else(|e| e.into_inner()).0;
            continue;
        }
        if release > now {
            drop(line);
            while shared.now_ns() < release {
                std::hint::spin_loop();
            }
            line = mutex(&ds.line);
            continue; // an earlier packet may have arrived meanwhile (reordering)
        }
        let Reverse(pkt) = line.pop().expect("peeked");
        drop(line);
        let sent_at = shared.now_ns();
        let c = &ds.counters;
        match dst.send(&pkt.data) {
            Ok(()) => {
                let len = pkt.data.len() as u64;
                let mut eg = mutex(&ds.egress);
                let _ = eg.lateness.record((sent_at - pkt.release).max(1));
                // Buckets count from the current phase's start (they are cleared with it), so a
                // run's record holds its own time line, not zeros for everything before it.
                let since_phase = sent_at.saturating_sub(shared.phase_start.load(Ordering::Relaxed));
                let bucket = (since_phase / BUCKET.as_nanos() as u64) as usize;
                if bucket < MAX_BUCKETS {
                    if eg.buckets.len() <= bucket {
                        eg.buckets.resize(bucket + 1, 0);
                    }
                    eg.buckets[bucket] += pkt.data.len() as u64;
                }
                drop(eg);
                shared.tap(d, Fate::Forwarded, sent_at, &pkt.data);
                shared.capture(Stream::Forwarded, sent_at, || pkt.data);
                c.packets_out.fetch_add(1, Ordering::Relaxed);
                c.bytes_out.fetch_add(len, Ordering::Relaxed);
            }
            Err(e) => {
                if c.write_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(direction = d.name(), "relay write: {e}");
                }
            }
        }
        line = mutex(&ds.line);
    }
}

impl Link {
    /// Create both namespaces and devices and start the relay. Needs root (or rootless mode,
    /// see [`super::prepare_process`]).
    pub fn start(config: LinkConfig) -> Result<Link, LabError> {
        config.validate()?;
        let (client, client_tun) = make_side("client", CLIENT_IP, config.mtu)?;
        let (server, server_tun) = make_side("server", SERVER_IP, config.mtu)?;
        let (client_tun, server_tun) = (Arc::new(client_tun), Arc::new(server_tun));
        let dir_shared = |d: Direction| DirShared {
            dir: d,
            pipeline: Mutex::new(Pipeline::new(config.get(d), config.seed, d, 0)),
            line: Mutex::new(BinaryHeap::new()),
            wake: Condvar::new(),
            seq: AtomicU64::new(0),
            counters: Counters::default(),
            egress: Mutex::new(Egress { lateness: new_histogram(HISTOGRAM_MAX_NS), buckets: Vec::new() }),
        };
        let wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            wall_epoch_ns: wall.as_nanos() as u64,
            capturing: AtomicBool::new(false),
            capture: RwLock::new(None),
            tapping: AtomicBool::new(false),
            tap: Mutex::new(None),
            stop: AtomicBool::new(false),
            dirs: [dir_shared(Direction::Up), dir_shared(Direction::Down)],
            nat: Mutex::new(Nat::new(config.rebind, CLIENT_IP)),
            nat_active: AtomicBool::new(false),
            next_rebind: AtomicU64::new(u64::MAX),
            schedule: Mutex::new(Vec::new()),
            rebinds: Mutex::new(Vec::new()),
            phase_start: AtomicU64::new(0),
            spin_ns: config.spin.as_nanos() as u64,
        });
        let stop_event = eventfd()?;
        let mut link = Link {
            shared: shared.clone(),
            config: Mutex::new(config),
            client,
            server,
            threads: Vec::new(),
            stop_event,
            phase: AtomicU32::new(0),
            cpu_latency: hold_cpu_latency(),
        };
        for (d, src, dst) in [
            (Direction::Up, client_tun.clone(), server_tun.clone()),
            (Direction::Down, server_tun.clone(), client_tun.clone()),
        ] {
            let (s, stop_fd) = (shared.clone(), link.stop_event.as_raw_fd());
            let reader = std::thread::Builder::new()
                .name(format!("relay-{}-rx", d.name()))
                .spawn(move || reader_loop(s, d, src, stop_fd))
                .map_err(LabError::Io)?;
            link.threads.push(reader);
            let s = shared.clone();
            let sender = std::thread::Builder::new()
                .name(format!("relay-{}-tx", d.name()))
                .spawn(move || delay_line_loop(s, d, dst))
                .map_err(LabError::Io)?;
            link.threads.push(sender);
        }
        Ok(link)
    }

    /// The configuration in force.
    pub fn config(&self) -> LinkConfig {
        mutex(&self.config).clone()
    }

    /// The client's address (in the client namespace).
    pub fn client_ip(&self) -> Ipv4Addr {
        CLIENT_IP
    }

    /// The server's address (in the server namespace).
    pub fn server_ip(&self) -> Ipv4Addr {
        SERVER_IP
    }

    /// The client namespace.
    pub fn client_ns(&self) -> &NetNs {
        &self.client
    }

    /// The server namespace.
    pub fn server_ns(&self) -> &NetNs {
        &self.server
    }

    /// Time since the link started (the origin of [`LinkStats`] times and egress buckets).
    pub fn elapsed(&self) -> Duration {
        self.shared.epoch.elapsed()
    }

    /// Run `f` on a new OS thread inside the client namespace (it may build its own runtime).
    pub fn spawn_in_client_ns<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<NsThread<T>, LabError> {
        self.client.spawn(name, f)
    }

    /// Run `f` on a new OS thread inside the server namespace (it may build its own runtime).
    pub fn spawn_in_server_ns<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<NsThread<T>, LabError> {
        self.server.spawn(name, f)
    }

    /// Run `f` inside the client namespace and wait for its result.
    pub fn run_in_client_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, LabError> {
        self.client.run(f)
    }

    /// Run `f` inside the server namespace and wait for its result.
    pub fn run_in_server_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, LabError> {
        self.server.run(f)
    }

    /// Make `cmd` start in the client namespace (see [`NetNs::prepare_command`]).
    pub fn client_command(&self, cmd: &mut std::process::Command) {
        self.client.prepare_command(cmd);
    }

    /// Replace one direction's impairment from now on. Its random streams restart at the
    /// current phase; counters keep running.
    pub fn set_impairment(&self, d: Direction, imp: Impairment) -> Result<(), LabError> {
        imp.validate().map_err(|source| LabError::Impairment { direction: d.name(), source })?;
        let mut cfg = mutex(&self.config);
        let phase = self.current_phase();
        *mutex(&self.shared.dirs[d.index()].pipeline) = Pipeline::new(&imp, cfg.seed, d, phase);
        match d {
            Direction::Up => cfg.up = imp,
            Direction::Down => cfg.down = imp,
        }
        Ok(())
    }

    fn current_phase(&self) -> u32 {
        self.phase.load(Ordering::Relaxed)
    }

    /// Start a new phase: zero every counter and histogram, and restart every random stream at
    /// stream phase `phase` (0 for the run itself; the self-check uses 1 and 2), so a run's
    /// drop decisions do not depend on what crossed the link before it.
    pub fn begin_phase(&self, phase: u32) {
        let cfg = mutex(&self.config);
        self.phase.store(phase, Ordering::Relaxed);
        for d in Direction::BOTH {
            let ds = &self.shared.dirs[d.index()];
            *mutex(&ds.pipeline) = Pipeline::new(cfg.get(d), cfg.seed, d, phase);
            ds.counters.reset();
            let mut eg = mutex(&ds.egress);
            eg.lateness.reset();
            eg.buckets.clear();
        }
        self.shared.phase_start.store(self.shared.now_ns(), Ordering::Relaxed);
    }

    /// Rebind now: the client's flows get new source ports (or a new address) as the server
    /// sees them, from their next packet on.
    pub fn rebind_now(&self) {
        self.shared.rebind(self.shared.now_ns());
    }

    /// Rebind `after` from now (applied by the first packet crossing the link at or after
    /// that time, in either direction).
    pub fn schedule_rebind(&self, after: Duration) {
        let at = self.shared.now_ns() + after.as_nanos() as u64;
        let mut s = mutex(&self.shared.schedule);
        s.push(at);
        s.sort_unstable_by(|a, b| b.cmp(a));
        self.shared.next_rebind.store(*s.last().unwrap(), Ordering::SeqCst);
    }

    /// A snapshot of the counters since the current phase began.
    pub fn stats(&self) -> LinkStats {
        let snap = |d: Direction| {
            let ds = &self.shared.dirs[d.index()];
            debug_assert_eq!(ds.dir, d);
            let c = &ds.counters;
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
            let eg = mutex(&ds.egress);
            let (draws, lost) = (get(&c.considered), get(&c.lost));
            let (packets_in, non_ipv4) = (get(&c.packets_in), get(&c.non_ipv4));
            let (queue, stale) = (get(&c.queue_drops), get(&c.stale));
            let offered = packets_in.saturating_sub(non_ipv4);
            let frac = |num: u64, den: u64| if den == 0 { 0.0 } else { num as f64 / den as f64 };
            DirStats {
                direction: d,
                packets_in,
                bytes_in: get(&c.bytes_in),
                dropped_non_ipv4: non_ipv4,
                dropped_stale_nat: stale,
                loss_draws: draws,
                dropped_loss: lost,
                dropped_queue: queue,
                packets_out: get(&c.packets_out),
                bytes_out: get(&c.bytes_out),
                write_errors: get(&c.write_errors),
                largest_packet: get(&c.largest),
                offered,
                realized_loss: frac(lost + queue + stale, offered),
                model_loss: frac(lost, draws),
                queue_loss: frac(queue, offered),
                lateness_us: Percentiles::from_histogram(&eg.lateness, 1e-3),
                egress_bytes_per_100ms: eg.buckets.clone(),
            }
        };
        LinkStats {
            phase_start: Duration::from_nanos(self.shared.phase_start.load(Ordering::Relaxed)),
            taken_at: self.elapsed(),
            up: snap(Direction::Up),
            down: snap(Direction::Down),
            rebinds: mutex(&self.shared.rebinds).clone(),
            nat_mappings: mutex(&self.shared.nat).mappings().to_vec(),
            cpu_latency_qos: self.cpu_latency.is_some(),
        }
    }

    /// Start writing every datagram the relay forwards, both directions, to the pcap file
    /// `path` (nanosecond timestamps, `LINKTYPE_RAW`, whole packets), and every datagram it drops
    /// (loss, full queue, stale NAT) to [`super::pcap::dropped_path`]`(path)`
    /// (`run.pcap` → `run.dropped.pcap`). A forwarded datagram is recorded as it leaves the relay
    /// for its destination: after the NAT, stamped when the delay line writes it. Both files are
    /// created (truncated) now. A writer thread does the I/O; the relay never waits for it (see
    /// [`CaptureSummary::overflow`]). One capture at a time; [`Link::stop_capture`] ends it, and
    /// dropping the link flushes it too.
    pub fn start_capture(&self, path: &Path) -> Result<(), LabError> {
        let mut slot = self.shared.capture.write().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return Err(LabError::Config("a capture is already running on this link".into()));
        }
        let capture = Capture::start(path, self.shared.wall_epoch_ns)
            .map_err(|source| LabError::Capture { path: path.to_path_buf(), source })?;
        *slot = Some(capture);
        self.shared.capturing.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Whether a capture is running.
    pub fn capturing(&self) -> bool {
        self.shared.capturing.load(Ordering::SeqCst)
    }

    /// End the capture: wait for the writer to write what it was handed and flush both files,
    /// and say what they hold. `None` if no capture was running.
    pub fn stop_capture(&self) -> Option<CaptureSummary> {
        self.shared.capturing.store(false, Ordering::SeqCst);
        let capture = self.shared.capture.write().unwrap_or_else(|e| e.into_inner()).take()?;
        let summary = capture.finish();
        if summary.overflow > 0 {
            tracing::warn!(lost = summary.overflow, "capture: records dropped because the writer fell behind");
        }
        if let Some(e) = &summary.error {
            tracing::warn!("capture {}: write error: {e}", summary.path.display());
        }
        Some(summary)
    }

    /// Start an in-memory tap of every datagram the relay handles, both directions, at the same
    /// points the pcap capture records them: a forwarded datagram when the delay line writes it
    /// (after the NAT, `at_ns` = that time), a dropped one when the relay read it, with the
    /// [`Fate`] of the drop. At most `limit_bytes` of datagram data are kept; later datagrams
    /// are counted in [`Tap::overflow`] only. The relay never waits for anything but a short
    /// lock around a `Vec` push. A tap already running is replaced (its packets are discarded).
    /// Runs alongside a capture.
    pub fn start_tap(&self, limit_bytes: usize) {
        *mutex(&self.shared.tap) = Some(TapState { chunks: Vec::new(), overflow: 0, kept_bytes: 0, limit_bytes });
        self.shared.tapping.store(true, Ordering::SeqCst);
    }

    /// End the tap and return what it recorded (`Tap::default()` if none ran).
    pub fn take_tap(&self) -> Tap {
        self.shared.tapping.store(false, Ordering::SeqCst);
        let Some(t) = mutex(&self.shared.tap).take() else { return Tap::default() };
        Tap { packets: t.chunks.into_iter().flatten().collect(), overflow: t.overflow }
    }

    /// Stop the relay and wait for its threads (also done on drop).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to our eventfd.
        unsafe { libc::write(self.stop_event.as_raw_fd(), (&one as *const u64).cast(), 8) };
        for ds in &self.shared.dirs {
            let _guard = mutex(&ds.line);
            ds.wake.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.stop_capture();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop();
    }
}
