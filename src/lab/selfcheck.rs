//! The link's self-check: before a run reports anything, measure the link it will run over.
//!
//! A UDP echo inside the server namespace answers probes sent from the client namespace at a
//! fixed spacing. The probes measure what the run's traffic will meet:
//!
//! * **RTT**: the median probe RTT must be within max(1 ms, 5%) of the median the configuration
//!   predicts. The prediction runs the very models of [`super::impair`] (delay, jitter with or
//!   without the ordering clamp, serialization at the rate) over the same probe schedule, so it
//!   is exact for any jitter; what it cannot contain is the relay's lateness and the kernel's
//!   own time, which is what the check is for.
//! * **Loss** per direction: the number lost up (probes that never reached the echo) and down
//!   (echoes that never came back) must lie inside the 99.9% interval of the configured loss
//!   model ([`super::impair::LossModel::interval_999`]).
//!
//! * **Rate and queue** per direction that has a bottleneck (rate at most
//!   [`RATE_PROBE_MAX_BPS`], full queue draining in at most [`MAX_QUEUE_DRAIN`]; otherwise the
//!   attempt says why it was skipped): a short saturating probe ([`RateCheck`]) sends MTU-sized UDP
//!   datagrams at twice the rate, long enough to fill the queue and keep it full, then lets it
//!   drain. Both namespaces live in this process, so each datagram carries its send time on the
//!   same monotonic clock the receiver reads, and one-way delay is measured directly. Checked:
//!   the receive rate over the busy period (first to last arrival; the queue never empties in
//!   between) within 5% of the configured rate; the full queue's delay within max(2 ms, 5%) +
//!   jitter of its drain time (whole MTU-sized datagrams that fit the limit · 8 / rate); and
//!   queue drops > 0, i.e. the probe did saturate. The full queue's delay is read as the 90th
//!   percentile of queueing delay (one-way delay − the configured delay), not the maximum: while
//!   the queue is full (most of the probe: it fills in the first sixth) every admitted datagram
//!   waits between one datagram's time short of the drain time and the drain time, so the 90th
//!   percentile sits on that plateau, while the maximum also carries the single worst scheduling
//!   hiccup of the sender, the relay and the receiver (measured up to 27 ms above the plateau on
//!   this 2-core VM under a load average of 8). The maximum is recorded beside it. The link's random loss stays on: it acts before the bottleneck, so at
//!   twice the rate the queue still saturates and the lost datagrams only reduce the count.
//! * **Relay lateness**: the attempt's own release lateness p99, per direction, is compared with
//!   [`LATENESS_P99_LIMIT_US`] and the verdict recorded (`lateness_ok`), but it does not fail the
//!   check: a busy machine delays the relay without making the link's figures wrong, and the
//!   experiments flag every run over the limit themselves.
//!
//! One re-test is allowed (a 99.9% interval is still wrong one time in a thousand). Each attempt
//! draws from its own random streams, and the check ends by restarting all streams for the run.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::impair::{Bottleneck, DelayModel, Direction, LossModel, QueueLimit};
use super::link::{Impairment, Link, LinkConfig, CLIENT_IP, LATENESS_P99_LIMIT_US, SERVER_IP};
use super::report::{progress, Percentiles};
use super::LabError;

/// UDP payload of a probe: sequence number, send time, padding.
const PAYLOAD: usize = 64;
/// IP datagram size of a probe (20-byte IPv4 header, 8-byte UDP header).
const PROBE_WIRE: u32 = 20 + 8 + PAYLOAD as u32;

/// How the self-check probes.
#[derive(Debug, Clone, Serialize)]
pub struct SelfCheckOptions {
    /// Probes per attempt. 500: enough to see a loss rate off by a factor of two at 2% (the
    /// 99.9% interval of 10 expected losses is 2..22), and done in about a second.
    pub probes: usize,
    /// Longest time the probes of one attempt may take; on slow links the count is reduced to
    /// fit (but not below 100).
    #[serde(rename = "max_duration_ms", serialize_with = "super::report::ser_duration_ms")]
    pub max_duration: Duration,
    /// Attempts before giving up: 2 (one re-test).
    pub attempts: u32,
    /// Show a progress bar on standard error (only drawn on a terminal).
    pub progress: bool,
    /// Run the saturating rate and queue probe (`RateCheck`) in each direction that has a
    /// rate (about 1–2.5 s per direction).
    pub rate_probe: bool,
}

impl Default for SelfCheckOptions {
    fn default() -> Self {
        SelfCheckOptions {
            probes: 500,
            max_duration: Duration::from_secs(10),
            attempts: 2,
            progress: false,
            rate_probe: true,
        }
    }
}

/// Longest time the loss probes of one attempt may take under [`SelfCheckOptions::for_impairment`].
pub const FOR_IMPAIRMENT_MAX_DURATION: Duration = Duration::from_secs(20);

impl SelfCheckOptions {
    /// Options that let the loss check tell `imp`'s loss model from a broken one.
    ///
    /// The rule: the probe count is the smallest n ≥ max(500, ⌈12/m⌉) (m the model's mean loss),
    /// raised in steps of 10%, whose 99.9% interval ([`LossModel::interval_999`], so bursty
    /// models get their wider interval) excludes both 0 losses and 2·m·n losses: a link that
    /// loses nothing, or twice the configured rate, fails. For Bernoulli p that is about
    /// 12/p to 15/p probes (2%: 750; 1%: 1,500; 0.5%: 3,000). Probes stay at most 5% of the
    /// rate and at least 2 ms apart (as [`SelfCheckOptions::default`]), and the count is
    /// capped so the probes take at most `FOR_IMPAIRMENT_MAX_DURATION` (20 s: 10,000 probes
    /// at 2 ms). What the cap gives up: below about m = 0.15% (at 2 ms spacing) n·m falls
    /// under 15 and the interval no longer excludes 2·m, so the check still catches a link
    /// that loses nothing or far too much but cannot resolve a factor of two. No loss: 500.
    pub fn for_impairment(imp: &Impairment) -> SelfCheckOptions {
        let spacing = probe_spacing_ns(imp);
        let cap = ((FOR_IMPAIRMENT_MAX_DURATION.as_nanos() as u64 / spacing) as usize).max(100);
        SelfCheckOptions {
            probes: probes_for(&imp.loss, cap),
            max_duration: FOR_IMPAIRMENT_MAX_DURATION,
            ..SelfCheckOptions::default()
        }
    }
}

/// The probe count of [`SelfCheckOptions::for_impairment`] for `model`, at most `cap`.
pub(crate) fn probes_for(model: &LossModel, cap: usize) -> usize {
    let m = model.mean_loss();
    if m <= 0.0 {
        return 500.min(cap);
    }
    let mut n = ((12.0 / m).ceil() as usize).max(500);
    while n < cap {
        let (lo, hi) = model.interval_999(n as u64);
        if lo >= 1 && (hi as f64) < 2.0 * m * n as f64 {
            return n;
        }
        n = (n as f64 * 1.1).ceil() as usize;
    }
    cap
}

/// Probe spacing over a link with `imp` both ways: at most 5% of the rate, at least 2 ms.
fn probe_spacing_ns(imp: &Impairment) -> u64 {
    (20 * serialization_ns(imp)).max(2_000_000)
}

/// The loss measured in one direction and the range the model allows.
#[derive(Debug, Clone, Serialize)]
pub struct LossCheck {
    /// Datagrams sent into the link in this direction.
    pub sent: u64,
    /// Of those, not delivered.
    pub lost: u64,
    /// `lost / sent`.
    pub realized: f64,
    /// The model's long-run loss.
    pub configured: f64,
    /// Accepted range of `lost` (99.9%).
    pub accepted: (u64, u64),
    /// `lost` within `accepted`.
    pub ok: bool,
}

impl LossCheck {
    fn new(imp: &Impairment, sent: u64, received: u64) -> LossCheck {
        let lost = sent.saturating_sub(received);
        let accepted = imp.loss.interval_999(sent);
        LossCheck {
            sent,
            lost,
            realized: if sent == 0 { 0.0 } else { lost as f64 / sent as f64 },
            configured: imp.loss.mean_loss(),
            accepted,
            ok: accepted.0 <= lost && lost <= accepted.1,
        }
    }
}

/// One self-check attempt.
#[derive(Debug, Clone, Serialize)]
pub struct CheckAttempt {
    /// 1 for the first, 2 for the re-test.
    pub attempt: u32,
    /// Probes sent.
    pub probes: u64,
    /// Time between probes.
    pub spacing_ms: f64,
    /// Median RTT the configuration predicts.
    pub rtt_expected_ms: f64,
    /// Median RTT measured.
    pub rtt_measured_ms: f64,
    /// Largest accepted difference: max(1 ms, 5% of expected).
    pub rtt_tolerance_ms: f64,
    /// Measured median within tolerance.
    pub rtt_ok: bool,
    /// Distribution of the measured RTTs, in ms.
    pub rtt: Percentiles,
    /// Client → server loss.
    pub up: LossCheck,
    /// Server → client loss (of the echoes sent).
    pub down: LossCheck,
    /// How late the relay released packets during the check, in µs, per direction.
    pub lateness_up_us: Percentiles,
    /// See `lateness_up_us`.
    pub lateness_down_us: Percentiles,
    /// The gate: [`LATENESS_P99_LIMIT_US`].
    pub lateness_limit_us: f64,
    /// Both directions' lateness p99 at most the limit.
    pub lateness_ok: bool,
    /// The rate and queue probe of each direction that has a rate (empty when none has, or
    /// when [`SelfCheckOptions::rate_probe`] is off).
    pub rate: Vec<RateCheck>,
    /// Why a direction with a rate was not probed, if one was not.
    pub rate_skipped: Option<String>,
    /// All checks passed.
    pub passed: bool,
    /// Every RTT sample, in ms, in probe order (lost probes left out).
    pub rtt_samples_ms: Vec<f64>,
}

/// Fastest bottleneck the rate probe checks: above it a user-space sender on this machine
/// class cannot be trusted to offer twice the rate, so the check is skipped (and says so).
pub const RATE_PROBE_MAX_BPS: u64 = 100_000_000;
/// Longest full-queue drain time the rate probe checks: a deeper queue would not fill (at twice
/// the rate it fills in one drain time) within the probe's 1.5 s of sending, so it is skipped.
pub const MAX_QUEUE_DRAIN: Duration = Duration::from_secs(1);
/// Accepted relative error of the received rate.
const RATE_TOLERANCE: f64 = 0.05;

/// The saturating probe of one direction's bottleneck.
#[derive(Debug, Clone, Serialize)]
pub struct RateCheck {
    /// The direction probed.
    pub direction: Direction,
    /// Configured rate, bits per second (IP datagram bytes).
    pub rate_bps: u64,
    /// Configured queue limit.
    pub queue: QueueLimit,
    /// IP datagram size of each probe datagram (the MTU).
    pub datagram_bytes: u32,
    /// Rate the sender offered: twice `rate_bps`.
    pub offered_bps: f64,
    /// How long the sender sent, in ms.
    pub send_ms: f64,
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams received.
    pub received: u64,
    /// Of the sent, dropped by the loss model (the link's random loss stays on).
    pub dropped_loss: u64,
    /// Of the sent, dropped at the full queue.
    pub dropped_queue: u64,
    /// Queue drops > 0: the probe filled the queue.
    pub saturated: bool,
    /// First to last arrival, in ms.
    pub busy_ms: f64,
    /// Bytes received after the first datagram · 8 / `busy_ms`.
    pub received_rate_bps: f64,
    /// Accepted relative error: 5%.
    pub rate_tolerance: f64,
    /// `received_rate_bps` within tolerance of `rate_bps`.
    pub rate_ok: bool,
    /// Drain time of a full queue: whole datagrams that fit the limit · 8 / rate, in ms.
    pub queue_delay_expected_ms: f64,
    /// The full queue's delay as measured: 90th percentile of one-way delay minus the
    /// configured delay, in ms (see the module doc).
    pub queue_delay_p90_ms: f64,
    /// Largest one-way delay minus the configured delay, in ms (not checked: it also holds the
    /// worst scheduling hiccup).
    pub queue_delay_max_ms: f64,
    /// Accepted difference: max(2 ms, 5% of expected) + the configured jitter.
    pub queue_delay_tolerance_ms: f64,
    /// `queue_delay_p90_ms` within tolerance of the expectation.
    pub queue_delay_ok: bool,
    /// Saturated, rate and queue delay all ok.
    pub passed: bool,
}

/// The outcome of the self-check.
#[derive(Debug, Clone, Serialize)]
pub struct SelfCheck {
    /// Whether the last attempt passed.
    pub passed: bool,
    /// Every attempt made (at most [`SelfCheckOptions::attempts`]).
    pub attempts: Vec<CheckAttempt>,
}

impl SelfCheck {
    /// Measure RTT and loss across `link` and compare them with its configuration (at most
    /// `opts.attempts` attempts). Ends by starting phase 0, so the run that follows starts afresh.
    pub fn run(link: &Link, opts: &SelfCheckOptions) -> Result<SelfCheck, LabError> {
        check(link, opts)
    }

    /// The attempt that decided the outcome.
    pub fn last(&self) -> &CheckAttempt {
        self.attempts.last().expect("at least one attempt")
    }

    /// A few human-readable lines per attempt.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for a in &self.attempts {
            let verdict = |ok: bool| if ok { "ok" } else { "FAILED" };
            s.push_str(&format!(
                "self-check {}: RTT median {:.3} ms (expected {:.3} ± {:.3}) {}; loss up {}/{} (accepted {}..={}) {}; \
                 loss down {}/{} (accepted {}..={}) {}; relay lateness p50/p99 up {:.0}/{:.0} µs, down {:.0}/{:.0} µs\n",
                a.attempt,
                a.rtt_measured_ms,
                a.rtt_expected_ms,
                a.rtt_tolerance_ms,
                verdict(a.rtt_ok),
                a.up.lost,
                a.up.sent,
                a.up.accepted.0,
                a.up.accepted.1,
                verdict(a.up.ok),
                a.down.lost,
                a.down.sent,
                a.down.accepted.0,
                a.down.accepted.1,
                verdict(a.down.ok),
                a.lateness_up_us.p50,
                a.lateness_up_us.p99,
                a.lateness_down_us.p50,
                a.lateness_down_us.p99,
            ));
            s.push_str(&format!(
                "  relay lateness p99 limit {:.0} µs: {}\n",
                a.lateness_limit_us,
                if a.lateness_ok { "ok" } else { "over (flagged; runs above it are left out of findings)" }
            ));
            for r in &a.rate {
                s.push_str(&format!(
                    "  rate/queue {}: received {} over {:.0} ms (configured {}, ± {:.0}%) {}; full-queue delay p90 \
                     {:.2} ms (expected {:.2} ± {:.2}) {}, max {:.2} ms; {} sent, {} received, {} queue drops, {} loss \
                     drops: {}\n",
                    r.direction.name(),
                    super::link::fmt_rate(r.received_rate_bps),
                    r.busy_ms,
                    super::link::fmt_rate(r.rate_bps as f64),
                    r.rate_tolerance * 100.0,
                    verdict(r.rate_ok),
                    r.queue_delay_p90_ms,
                    r.queue_delay_expected_ms,
                    r.queue_delay_tolerance_ms,
                    verdict(r.queue_delay_ok),
                    r.queue_delay_max_ms,
                    r.sent,
                    r.received,
                    r.dropped_queue,
                    r.dropped_loss,
                    if r.saturated { "saturated" } else { "NOT saturated" },
                ));
            }
            if let Some(why) = &a.rate_skipped {
                s.push_str(&format!("  rate/queue not checked: {why}\n"));
            }
        }
        s
    }
}

fn serialization_ns(imp: &Impairment) -> u64 {
    imp.rate_bps.map(|r| Bottleneck::new(r, QueueLimit::Packets(1)).serialization_ns(PROBE_WIRE)).unwrap_or(0)
}

/// The RTTs (ns) the configuration predicts for probes sent every `spacing` ns, ignoring loss:
/// both directions' models run over the probe schedule (echoes leave in the order they arrive),
/// repeated over `rounds` independent streams.
pub fn predicted_rtts(cfg: &LinkConfig, spacing: u64, n: usize, rounds: u64) -> Vec<u64> {
    let model = |imp: &Impairment, stream: u64| {
        DelayModel::new(imp.delay.as_nanos() as u64, imp.jitter.as_nanos() as u64, imp.reorder, 0x5e1f, stream)
    };
    let bn = |imp: &Impairment| imp.rate_bps.map(|r| Bottleneck::new(r, QueueLimit::Packets(u64::MAX)));
    let mut out = Vec::with_capacity(n * rounds as usize);
    for round in 0..rounds {
        let (mut up, mut down) = (model(&cfg.up, 2 * round), model(&cfg.down, 2 * round + 1));
        let (mut bn_up, mut bn_down) = (bn(&cfg.up), bn(&cfg.down));
        let mut arrivals: Vec<(u64, u64)> = (0..n as u64)
            .map(|i| {
                let sent = i * spacing;
                let depart = bn_up.as_mut().map_or(sent, |b| b.admit(sent, PROBE_WIRE).unwrap());
                (up.release(depart), sent)
            })
            .collect();
        arrivals.sort_unstable();
        for (arrived, sent) in arrivals {
            let depart = bn_down.as_mut().map_or(arrived, |b| b.admit(arrived, PROBE_WIRE).unwrap());
            out.push(down.release(depart) - sent);
        }
    }
    out
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    if v.is_empty() {
        0
    } else {
        v[v.len() / 2]
    }
}

fn check(link: &Link, opts: &SelfCheckOptions) -> Result<SelfCheck, LabError> {
    let mut attempts = Vec::new();
    for a in 1..=opts.attempts.max(1) {
        link.begin_phase(a);
        let at = attempt(link, a, opts)?;
        let passed = at.passed;
        attempts.push(at);
        if passed {
            break;
        }
    }
    link.begin_phase(0);
    Ok(SelfCheck { passed: attempts.last().is_some_and(|a| a.passed), attempts })
}

fn attempt(link: &Link, number: u32, opts: &SelfCheckOptions) -> Result<CheckAttempt, LabError> {
    let cfg = link.config();
    // Probes take at most 5% of the link, and are at least 2 ms apart.
    let spacing = probe_spacing_ns(&cfg.up).max(probe_spacing_ns(&cfg.down));
    let fit = (opts.max_duration.as_nanos() as u64 / spacing) as usize;
    let n = opts.probes.min(fit.max(100)).max(1);
    let mut predicted = predicted_rtts(&cfg, spacing, n, 20);
    let expected = median(&mut predicted);
    let slowest = predicted.last().copied().unwrap_or(0);
    let drain = Duration::from_nanos(slowest) + Duration::from_millis(300);

    // The echo, in the server namespace.
    let stop = Arc::new(AtomicBool::new(false));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<std::io::Result<SocketAddr>>();
    let echo_stop = stop.clone();
    let echo = link.spawn_in_server_ns("selfcheck-echo", move || -> u64 {
        let sock = match UdpSocket::bind((SERVER_IP, 0)).and_then(|s| {
            s.set_read_timeout(Some(Duration::from_millis(20)))?;
            Ok(s)
        }) {
            Ok(s) => s,
            Err(e) => {
                let _ = addr_tx.send(Err(e));
                return 0;
            }
        };
        let _ = addr_tx.send(sock.local_addr());
        let mut seen = vec![false; n];
        let mut received = 0u64;
        let mut buf = [0u8; 2048];
        while !echo_stop.load(Ordering::Relaxed) {
            let Ok((len, from)) = sock.recv_from(&mut buf) else { continue };
            if len < 16 {
                continue;
            }
            let seq = u64::from_be_bytes(buf[..8].try_into().unwrap()) as usize;
            if seq < n && !seen[seq] {
                seen[seq] = true;
                received += 1;
                let _ = sock.send_to(&buf[..len], from);
            }
        }
        received
    })?;
    let echo_addr = addr_rx
        .recv()
        .map_err(|_| LabError::Io(std::io::Error::other("self-check echo did not start")))?
        .map_err(LabError::Io)?;

    // The prober, in the client namespace.
    let bar = opts.progress.then(|| progress(n as u64, "self-check"));
    let bar_thread = bar.clone();
    let prober = link.spawn_in_client_ns("selfcheck-probe", move || -> std::io::Result<Vec<Option<u64>>> {
        let sock = UdpSocket::bind((CLIENT_IP, 0))?;
        sock.connect(echo_addr)?;
        let rx = sock.try_clone()?;
        rx.set_read_timeout(Some(Duration::from_millis(20)))?;
        let t0 = Instant::now();
        let done = Arc::new(AtomicBool::new(false));
        let done_rx = done.clone();
        let receiver = std::thread::spawn(move || {
            let mut rtts = vec![None; n];
            let mut buf = [0u8; 2048];
            while !done_rx.load(Ordering::Relaxed) {
                let Ok(len) = rx.recv(&mut buf) else { continue };
                let now = t0.elapsed().as_nanos() as u64;
                if len < 16 {
                    continue;
                }
                let seq = u64::from_be_bytes(buf[..8].try_into().unwrap()) as usize;
                let sent = u64::from_be_bytes(buf[8..16].try_into().unwrap());
                if seq < n && rtts[seq].is_none() {
                    rtts[seq] = Some(now.saturating_sub(sent));
                }
            }
            rtts
        });
        let mut payload = [0u8; PAYLOAD];
        for i in 0..n {
            let due = t0 + Duration::from_nanos(i as u64 * spacing);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
            payload[8..16].copy_from_slice(&(t0.elapsed().as_nanos() as u64).to_be_bytes());
            let _ = sock.send(&payload);
            if let Some(b) = &bar_thread {
                b.inc(1);
            }
        }
        std::thread::sleep(drain);
        done.store(true, Ordering::Relaxed);
        Ok(receiver.join().unwrap_or_default())
    })?;
    let rtts = prober.join();
    stop.store(true, Ordering::Relaxed);
    let echoed = echo.join();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let rtts = rtts.map_err(LabError::Io)?;

    let mut rate = Vec::new();
    let mut rate_skipped = None;
    if opts.rate_probe {
        for d in Direction::BOTH {
            match cfg.get(d).rate_bps {
                None => {}
                Some(r) if r > RATE_PROBE_MAX_BPS => {
                    rate_skipped = Some(format!(
                        "{}: rate {} above the probe's {}",
                        d.name(),
                        super::link::fmt_rate(r as f64),
                        super::link::fmt_rate(RATE_PROBE_MAX_BPS as f64)
                    ))
                }
                Some(r) if queue_drain_ns(&cfg, d) > MAX_QUEUE_DRAIN.as_nanos() as u64 => {
                    rate_skipped = Some(format!(
                        "{}: the queue ({}) takes {:.1} s to drain at {}, more than the probe's {} s",
                        d.name(),
                        cfg.get(d).effective_queue().map_or_else(String::new, |q| q.to_string()),
                        queue_drain_ns(&cfg, d) as f64 / 1e9,
                        super::link::fmt_rate(r as f64),
                        MAX_QUEUE_DRAIN.as_secs()
                    ))
                }
                Some(_) => rate.push(rate_probe(link, &cfg, d)?),
            }
        }
    }

    let stats = link.stats();
    let mut samples: Vec<u64> = rtts.iter().flatten().copied().collect();
    let samples_ms: Vec<f64> = rtts.iter().flatten().map(|&r| r as f64 / 1e6).collect();
    let measured = median(&mut samples);
    let up = LossCheck::new(&cfg.up, n as u64, echoed);
    let down = LossCheck::new(&cfg.down, echoed, samples.len() as u64);
    let expected_ms = expected as f64 / 1e6;
    let tolerance_ms = (expected_ms * 0.05).max(1.0);
    let rtt_ok = if samples.is_empty() {
        up.accepted.1 == up.sent // nothing came back, and the model may lose everything
    } else {
        (measured as f64 / 1e6 - expected_ms).abs() <= tolerance_ms
    };
    let lateness_ok = stats.lateness_ok();
    // Relay lateness is recorded and flagged (summary, `lateness_ok`), not failed on: a loaded
    // machine delays the relay without making its figures wrong, and experiments flag each run
    // above the limit themselves (`lab hol` leaves such runs out of its findings).
    let passed = rtt_ok && up.ok && down.ok && rate.iter().all(|r| r.passed);
    Ok(CheckAttempt {
        attempt: number,
        probes: n as u64,
        spacing_ms: spacing as f64 / 1e6,
        rtt_expected_ms: expected_ms,
        rtt_measured_ms: measured as f64 / 1e6,
        rtt_tolerance_ms: tolerance_ms,
        rtt_ok,
        rtt: Percentiles::of(&samples_ms),
        up,
        down,
        lateness_up_us: stats.up.lateness_us.clone(),
        lateness_down_us: stats.down.lateness_us.clone(),
        lateness_limit_us: LATENESS_P99_LIMIT_US,
        lateness_ok,
        rate,
        rate_skipped,
        passed,
        rtt_samples_ms: samples_ms,
    })
}

/// Drain time of direction `d`'s full queue of MTU-sized datagrams, in ns (0 without a rate).
fn queue_drain_ns(cfg: &LinkConfig, d: Direction) -> u64 {
    let imp = cfg.get(d);
    let (Some(rate), Some(queue)) = (imp.rate_bps, imp.effective_queue()) else { return 0 };
    let fit = match queue {
        QueueLimit::Bytes(b) => (b / u64::from(cfg.mtu)).max(1),
        QueueLimit::Packets(p) => p,
    };
    fit.saturating_mul(Bottleneck::new(rate, QueueLimit::Packets(1)).serialization_ns(cfg.mtu))
}

/// Saturate direction `d`'s bottleneck for a moment and measure what came out (see the module
/// doc). The sender and receiver stamp times from one `Instant`, valid in both namespaces.
fn rate_probe(link: &Link, cfg: &LinkConfig, d: Direction) -> Result<RateCheck, LabError> {
    let imp = cfg.get(d).clone();
    let rate = imp.rate_bps.unwrap_or(1);
    let queue = imp.effective_queue().unwrap_or(QueueLimit::Packets(1));
    let wire = cfg.mtu;
    let payload = (wire - 28) as usize;
    let ser_ns = Bottleneck::new(rate, QueueLimit::Packets(1)).serialization_ns(wire);
    // At most MAX_QUEUE_DRAIN (the caller skips deeper queues).
    let queue_ns = queue_drain_ns(cfg, d).min(MAX_QUEUE_DRAIN.as_nanos() as u64);
    // At twice the rate the queue fills in one drain time; keep it full about four more.
    let send =
        Duration::from_nanos(queue_ns.saturating_mul(5)).clamp(Duration::from_millis(600), Duration::from_millis(1500));
    let gap = (ser_ns / 2).max(1);
    let count = (send.as_nanos() as u64 / gap).max(1);
    let drain = imp.delay + imp.jitter + Duration::from_nanos(queue_ns) + Duration::from_millis(300);
    let (src_ip, dst_ip) = match d {
        Direction::Up => (CLIENT_IP, SERVER_IP),
        Direction::Down => (SERVER_IP, CLIENT_IP),
    };
    let before = link.stats();
    let t0 = Instant::now();

    // The receiver, in the destination namespace: (receive ns, send ns, wire bytes) per datagram.
    let stop = Arc::new(AtomicBool::new(false));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<std::io::Result<SocketAddr>>();
    let rx_stop = stop.clone();
    let receive = move || -> Vec<(u64, u64, u32)> {
        let sock = match UdpSocket::bind((dst_ip, 0)).and_then(|s| {
            s.set_read_timeout(Some(Duration::from_millis(20)))?;
            Ok(s)
        }) {
            Ok(s) => s,
            Err(e) => {
                let _ = addr_tx.send(Err(e));
                return Vec::new();
            }
        };
        let _ = addr_tx.send(sock.local_addr());
        // Bounded by what the sender sends (`count`).
        let mut got = Vec::with_capacity(count as usize);
        let mut buf = vec![0u8; 65_536];
        while !rx_stop.load(Ordering::Relaxed) {
            let Ok(len) = sock.recv(&mut buf) else { continue };
            let now = t0.elapsed().as_nanos() as u64;
            if len < 16 || got.len() as u64 >= count {
                continue;
            }
            let mut sent = [0u8; 8];
            sent.copy_from_slice(&buf[8..16]);
            got.push((now, u64::from_be_bytes(sent), len as u32 + 28));
        }
        got
    };
    let receiver = match d {
        Direction::Up => link.spawn_in_server_ns("ratecheck-rx", receive)?,
        Direction::Down => link.spawn_in_client_ns("ratecheck-rx", receive)?,
    };
    let dst = addr_rx
        .recv()
        .map_err(|_| LabError::Io(std::io::Error::other("rate probe receiver did not start")))?
        .map_err(LabError::Io)?;

    // The sender, in the source namespace: paced at twice the rate, catching up after a late wake-up.
    let send_fn = move || -> std::io::Result<u64> {
        let sock = UdpSocket::bind((src_ip, 0))?;
        sock.connect(dst)?;
        let mut buf = vec![0u8; payload];
        let start = Instant::now();
        let mut sent = 0u64;
        for i in 0..count {
            let due = start + Duration::from_nanos(i * gap);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            buf[..8].copy_from_slice(&i.to_be_bytes());
            buf[8..16].copy_from_slice(&(t0.elapsed().as_nanos() as u64).to_be_bytes());
            if sock.send(&buf).is_ok() {
                sent += 1;
            }
        }
        Ok(sent)
    };
    let sender = match d {
        Direction::Up => link.spawn_in_client_ns("ratecheck-tx", send_fn)?,
        Direction::Down => link.spawn_in_server_ns("ratecheck-tx", send_fn)?,
    };
    let sent = sender.join();
    let send_ms = t0.elapsed().as_secs_f64() * 1e3;
    std::thread::sleep(drain);
    stop.store(true, Ordering::Relaxed);
    let got = receiver.join();
    let sent = sent.map_err(LabError::Io)?;

    let after = link.stats();
    let (b, a) = (before.get(d), after.get(d));
    let dropped_queue = a.dropped_queue.saturating_sub(b.dropped_queue);
    let dropped_loss = a.dropped_loss.saturating_sub(b.dropped_loss);
    let (first, last) = (got.iter().map(|g| g.0).min().unwrap_or(0), got.iter().map(|g| g.0).max().unwrap_or(0));
    let busy_ns = last.saturating_sub(first);
    // Every datagram but the first arrived within the busy period (the first marks its start).
    let bytes: u64 =
        got.iter().map(|g| u64::from(g.2)).sum::<u64>().saturating_sub(got.first().map_or(0, |g| u64::from(g.2)));
    let received_rate_bps = if busy_ns == 0 { 0.0 } else { bytes as f64 * 8.0 / (busy_ns as f64 / 1e9) };
    let delay_ns = imp.delay.as_nanos() as u64;
    let mut queued: Vec<u64> = got.iter().map(|g| g.0.saturating_sub(g.1).saturating_sub(delay_ns)).collect();
    queued.sort_unstable();
    let max_queue_ns = queued.last().copied().unwrap_or(0);
    let p90_ns = queued.get(queued.len() * 9 / 10).copied().unwrap_or(max_queue_ns);
    let p90_ms = p90_ns as f64 / 1e6;
    let expected_ms = queue_ns as f64 / 1e6;
    let tolerance_ms = (expected_ms * 0.05).max(2.0) + imp.jitter.as_secs_f64() * 1e3;
    let max_ms = max_queue_ns as f64 / 1e6;
    let saturated = dropped_queue > 0;
    let rate_ok = (received_rate_bps - rate as f64).abs() <= RATE_TOLERANCE * rate as f64;
    let queue_delay_ok = (p90_ms - expected_ms).abs() <= tolerance_ms;
    Ok(RateCheck {
        direction: d,
        rate_bps: rate,
        queue,
        datagram_bytes: wire,
        offered_bps: 2.0 * rate as f64,
        send_ms,
        sent,
        received: got.len() as u64,
        dropped_loss,
        dropped_queue,
        saturated,
        busy_ms: busy_ns as f64 / 1e6,
        received_rate_bps,
        rate_tolerance: RATE_TOLERANCE,
        rate_ok,
        queue_delay_expected_ms: expected_ms,
        queue_delay_p90_ms: p90_ms,
        queue_delay_max_ms: max_ms,
        queue_delay_tolerance_ms: tolerance_ms,
        queue_delay_ok,
        passed: saturated && rate_ok && queue_delay_ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_counts_resolve_the_configured_loss() {
        assert_eq!(probes_for(&LossModel::None, 10_000), 500);
        assert_eq!(probes_for(&LossModel::None, 200), 200);
        for model in [
            LossModel::Random { p: 0.02 },
            LossModel::Random { p: 0.003 },
            LossModel::GilbertElliott { p: 0.01, r: 0.25, loss_bad: 1.0, loss_good: 0.0 },
        ] {
            let n = probes_for(&model, 10_000);
            let (lo, hi) = model.interval_999(n as u64);
            let m = model.mean_loss();
            assert!(n < 10_000 && n as f64 >= 12.0 / m && n >= 500, "{model:?}: {n}");
            assert!(lo >= 1 && (hi as f64) < 2.0 * m * n as f64, "{model:?}: {n} probes, {lo}..={hi}");
        }
        // Too rare to resolve within the cap: the cap.
        assert_eq!(probes_for(&LossModel::Random { p: 0.0005 }, 10_000), 10_000);
        // The spacing follows the rate: 5% of 100 kbit/s for a 92-byte probe is 147 ms.
        let slow = Impairment { rate_bps: Some(100_000), ..Impairment::none() };
        assert_eq!(probe_spacing_ns(&slow), 20 * 7_360_000);
        // ... and the 20 s cap then allows 135 probes.
        assert_eq!(SelfCheckOptions::for_impairment(&slow).probes, 135);
    }

    #[test]
    fn prediction_matches_configuration() {
        let mut cfg = LinkConfig::symmetric(Impairment::delay(Duration::from_millis(20)), 1);
        let mut v = predicted_rtts(&cfg, 2_000_000, 500, 4);
        assert_eq!(median(&mut v), 40_000_000);
        cfg.up.jitter = Duration::from_millis(5);
        cfg.down.jitter = Duration::from_millis(5);
        cfg.up.reorder = true;
        cfg.down.reorder = true;
        let mut v = predicted_rtts(&cfg, 2_000_000, 500, 20);
        let m = median(&mut v) as f64 / 1e6;
        assert!((m - 40.0).abs() < 0.2, "{m}");
        // Without reordering, the ordering clamp raises the median a little.
        cfg.up.reorder = false;
        cfg.down.reorder = false;
        let mut v = predicted_rtts(&cfg, 2_000_000, 500, 20);
        let clamped = median(&mut v) as f64 / 1e6;
        assert!(clamped > m, "{clamped} vs {m}");
        // Serialization at 1 Mbit/s: 92 bytes = 736 µs each way.
        cfg = LinkConfig::symmetric(Impairment { rate_bps: Some(1_000_000), ..Impairment::none() }, 1);
        let mut v = predicted_rtts(&cfg, 20_000_000, 100, 1);
        assert_eq!(median(&mut v), 2 * 736_000);
    }
}
