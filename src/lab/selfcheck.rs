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
//! One re-test is allowed (a 99.9% interval is still wrong one time in a thousand). Each attempt
//! draws from its own random streams, and the check ends by restarting all streams for the run.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::impair::{Bottleneck, DelayModel, QueueLimit};
use super::link::{Impairment, Link, LinkConfig, CLIENT_IP, SERVER_IP};
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
}

impl Default for SelfCheckOptions {
    fn default() -> Self {
        SelfCheckOptions { probes: 500, max_duration: Duration::from_secs(10), attempts: 2, progress: false }
    }
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
    /// All checks passed.
    pub passed: bool,
    /// Every RTT sample, in ms, in probe order (lost probes left out).
    pub rtt_samples_ms: Vec<f64>,
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

    /// A few human-readable lines, one per attempt.
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
    let ser = serialization_ns(&cfg.up).max(serialization_ns(&cfg.down));
    // Probes take at most 5% of the link, and are at least 2 ms apart.
    let spacing = (20 * ser).max(2_000_000);
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
    let passed = rtt_ok && up.ok && down.ok;
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
        passed,
        rtt_samples_ms: samples_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
