//! From runs to numbers: per-arm summaries (pooled percentiles with intervals that resample
//! runs) and the paired per-run differences every headline is built from. A run's arms share
//! one link seed, so `H2(run r) − H3(run r)` removes what the two arms have in common (the same
//! loss draws, the same moment of the sweep); the interval of the median difference is the
//! sign-test interval over runs ([`report::paired_ci`]), and the sentence is [`Finding`]'s, never
//! ours.

use serde::Serialize;

use super::{Arm, HolParams, RunResult, Workload};
use crate::lab::report::{self, Ci, Finding, Percentiles};

/// One arm of one workload at one loss point.
#[derive(Debug, Clone, Serialize)]
pub struct ArmSummary {
    pub workload: Workload,
    pub arm: Arm,
    pub loss: f64,
    /// Runs summarized.
    pub runs: usize,
    /// Request latency (send to last byte), every request of every run pooled, ms.
    pub latency: Percentiles,
    /// The pooled median and p99 with 95% intervals that resample runs.
    pub latency_p50: Ci,
    pub latency_p99: Ci,
    /// The workload's per-run headline metric (`metric_name`): median over runs, 95% CI.
    pub metric: Ci,
    /// Realized loss, every drop over datagrams offered, mean over runs: up, down.
    pub loss_up: f64,
    pub loss_down: f64,
    /// The loss model's own rate (drops over draws), mean over runs: up, down.
    pub model_loss_up: f64,
    pub model_loss_down: f64,
    /// Queue drops per run, mean: up, down.
    pub queue_drops_up: f64,
    pub queue_drops_down: f64,
    /// Runs whose relay lateness p99 exceeded the limit (flagged, left out of the findings).
    pub late_runs: usize,
    /// Mean over runs of the stall time per response stream, ms (stall analysis on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall_per_stream_ms: Option<f64>,
    /// Mean over runs of the share of streams that stalled at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled_stream_share: Option<f64>,
    /// Mean over runs of the collateral stall (waiting for other streams' bytes) per stream, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collateral_per_stream_ms: Option<f64>,
}

/// The paired comparisons of one workload at one loss point.
#[derive(Debug, Clone, Serialize)]
pub struct PointFindings {
    pub workload: Workload,
    pub loss: f64,
    /// Runs whose arms were all measured and within the lateness limit.
    pub pairs: usize,
    /// Runs left out because an arm's relay lateness p99 exceeded the limit.
    pub excluded_late: usize,
    pub findings: Vec<Finding>,
}

/// The per-run headline metric of a workload, as a label.
pub fn metric_name(w: Workload) -> &'static str {
    match w {
        Workload::Small | Workload::Sequential => "mean request latency",
        Workload::Page => "page load time",
        Workload::Bulk => "run completion time",
        Workload::Mqtt => "",
    }
}

/// The per-run headline metric, ms.
pub fn metric(r: &RunResult) -> f64 {
    match r.workload {
        Workload::Small | Workload::Sequential => mean_latency(r.requests.iter()),
        Workload::Page => {
            // Per load: from the HTML's send to the last subresource; mean over loads.
            let loads = r.requests.iter().map(|q| q.round / 2).max().map_or(0, |m| m + 1);
            let times: Vec<f64> = (0..loads)
                .filter_map(|l| {
                    let of: Vec<_> = r.requests.iter().filter(|q| q.round / 2 == l).collect();
                    let start = of.iter().map(|q| q.start_ms).reduce(f64::min)?;
                    let end = of.iter().map(|q| q.end_ms).reduce(f64::max)?;
                    Some(end - start)
                })
                .collect();
            report::mean(&times)
        }
        Workload::Bulk | Workload::Mqtt => r.run_ms,
    }
}

fn mean_latency<'a>(it: impl Iterator<Item = &'a super::RequestRecord>) -> f64 {
    let v: Vec<f64> = it.map(|q| q.latency_ms()).collect();
    report::mean(&v)
}

/// p99 of one run's request latencies.
fn run_p99(r: &RunResult) -> f64 {
    report::quantile(&r.requests.iter().map(|q| q.latency_ms()).collect::<Vec<_>>(), 0.99)
}

/// Mean stall of the response streams none of whose bytes the link dropped: what head-of-line
/// blocking does to responses that lost nothing themselves. NaN without such streams.
fn unlost_stall(r: &RunResult) -> f64 {
    match &r.stall {
        Some(s) if s.unlost_streams > 0 => s.unlost_stall_ms / s.unlost_streams as f64,
        _ => f64::NAN,
    }
}

fn stall_per_stream(r: &RunResult) -> Option<f64> {
    r.stall.as_ref().filter(|s| s.streams > 0).map(|s| s.stall_ms / s.streams as f64)
}

/// A per-loss-point seed for the bootstrap, distinct per workload and comparison.
fn seed_for(base: u64, w: Workload, loss_index: usize, k: u64) -> u64 {
    base ^ ((w as u64) << 48) ^ ((loss_index as u64) << 32) ^ (k << 16) ^ 0xB00D
}

/// Per-arm summaries, per workload and loss point.
pub fn summarize(runs: &[RunResult], a: &HolParams) -> Vec<ArmSummary> {
    let mut out = Vec::new();
    for &w in &a.workloads {
        for (li, &loss) in a.loss.iter().enumerate() {
            for &arm in w.arms() {
                let rs: Vec<&RunResult> =
                    runs.iter().filter(|r| r.workload == w && r.arm == arm && r.loss == loss).collect();
                if rs.is_empty() {
                    continue;
                }
                let seed = seed_for(a.seed, w, li, arm as u64);
                let per_run: Vec<Vec<f64>> =
                    rs.iter().map(|r| r.requests.iter().map(|q| q.latency_ms()).collect()).collect();
                let all: Vec<f64> = per_run.iter().flatten().copied().collect();
                let metric_runs: Vec<Vec<f64>> = rs.iter().map(|r| vec![metric(r)]).collect();
                let m = |f: &dyn Fn(&RunResult) -> f64| report::mean(&rs.iter().map(|r| f(r)).collect::<Vec<_>>());
                let stalls: Vec<f64> = rs.iter().filter_map(|r| stall_per_stream(r)).collect();
                let shares: Vec<f64> = rs
                    .iter()
                    .filter_map(|r| r.stall.as_ref().filter(|s| s.streams > 0))
                    .map(|s| s.stalled_streams as f64 / s.streams as f64)
                    .collect();
                let coll: Vec<f64> = rs
                    .iter()
                    .filter_map(|r| r.stall.as_ref().filter(|s| s.streams > 0))
                    .map(|s| s.collateral_stall_ms / s.streams as f64)
                    .collect();
                let opt = |v: &[f64]| if v.is_empty() { None } else { Some(report::mean(v)) };
                out.push(ArmSummary {
                    workload: w,
                    arm,
                    loss,
                    runs: rs.len(),
                    latency: Percentiles::of(&all),
                    latency_p50: report::bootstrap_ci(&per_run, report::median, 0.95, 2000, seed),
                    latency_p99: report::bootstrap_ci(&per_run, |v| report::quantile(v, 0.99), 0.95, 2000, seed),
                    metric: report::bootstrap_ci(&metric_runs, report::median, 0.95, 2000, seed),
                    loss_up: m(&|r| r.loss_up.all),
                    loss_down: m(&|r| r.loss_down.all),
                    model_loss_up: m(&|r| r.loss_up.model),
                    model_loss_down: m(&|r| r.loss_down.model),
                    queue_drops_up: m(&|r| r.loss_up.queue_drops as f64),
                    queue_drops_down: m(&|r| r.loss_down.queue_drops as f64),
                    late_runs: rs.iter().filter(|r| !r.lateness_ok).count(),
                    stall_per_stream_ms: opt(&stalls),
                    stalled_stream_share: opt(&shares),
                    collateral_per_stream_ms: opt(&coll),
                });
            }
        }
    }
    out
}

/// The runs of one block, by arm, when every arm of the workload ran.
fn pairs(runs: &[RunResult], w: Workload, loss: f64, n: usize) -> (Vec<Vec<&RunResult>>, usize) {
    let mut out = Vec::new();
    let mut late = 0;
    for run in 0..n {
        let arms: Vec<&RunResult> = w
            .arms()
            .iter()
            .filter_map(|&arm| runs.iter().find(|r| r.workload == w && r.loss == loss && r.run == run && r.arm == arm))
            .collect();
        if arms.len() != w.arms().len() {
            continue;
        }
        if arms.iter().any(|r| !r.lateness_ok) {
            late += 1;
            continue;
        }
        out.push(arms);
    }
    (out, late)
}

/// The paired findings of every HTTP workload at every loss point.
pub fn findings(runs: &[RunResult], a: &HolParams) -> Vec<PointFindings> {
    let mut out = Vec::new();
    for &w in a.workloads.iter().filter(|w| **w != Workload::Mqtt) {
        for (li, &loss) in a.loss.iter().enumerate() {
            let (blocks, excluded_late) = pairs(runs, w, loss, a.runs);
            let diff = |f: &dyn Fn(&RunResult) -> f64, x: Arm, y: Arm| -> Vec<f64> {
                blocks
                    .iter()
                    .filter_map(|b| {
                        let rx = b.iter().find(|r| r.arm == x)?;
                        let ry = b.iter().find(|r| r.arm == y)?;
                        Some(f(rx) - f(ry))
                    })
                    .filter(|d| d.is_finite())
                    .collect()
            };
            let seed = |k: u64| seed_for(a.seed, w, li, 100 + k);
            let (h2, h3) = ("HTTP/2", "HTTP/3");
            let mut f =
                vec![Finding::paired(metric_name(w), h2, h3, "ms", &diff(&metric, Arm::H2One, Arm::H3One), seed(0))];
            if matches!(w, Workload::Small | Workload::Sequential) {
                f.push(Finding::paired(
                    "per-run p99 request latency",
                    h2,
                    h3,
                    "ms",
                    &diff(&run_p99, Arm::H2One, Arm::H3One),
                    seed(1),
                ));
            }
            if a.stall {
                let d = diff(&|r| stall_per_stream(r).unwrap_or(f64::NAN), Arm::H2One, Arm::H3One);
                if !d.is_empty() {
                    f.push(Finding::paired("stall per response stream", h2, h3, "ms", &d, seed(2)));
                }
                if matches!(w, Workload::Small | Workload::Page) {
                    let d = diff(&unlost_stall, Arm::H2One, Arm::H3One);
                    if !d.is_empty() {
                        f.push(Finding::paired(
                            "stall per response stream that lost no bytes itself",
                            h2,
                            h3,
                            "ms",
                            &d,
                            seed(3),
                        ));
                    }
                }
            }
            if w == Workload::Bulk {
                let did: Vec<f64> = blocks
                    .iter()
                    .filter_map(|b| {
                        let t = |arm| b.iter().find(|r| r.arm == arm).map(|r| r.run_ms);
                        Some((t(Arm::H2One)? - t(Arm::H2Many)?) - (t(Arm::H3One)? - t(Arm::H3Many)?))
                    })
                    .collect();
                f.push(Finding::paired(
                    "cost of sharing one connection, (H2₁ − H2ₙ) − (H3₁ − H3ₙ)",
                    "HTTP/2's cost",
                    "HTTP/3's cost",
                    "ms",
                    &did,
                    seed(4),
                ));
            }
            out.push(PointFindings { workload: w, loss, pairs: blocks.len(), excluded_late, findings: f });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::hol::{RealizedLoss, RequestRecord};

    fn run(arm: Arm, run: usize, latency: f64) -> RunResult {
        let q = RequestRecord {
            object: 0,
            round: 0,
            conn: 0,
            size: 4096,
            start_ms: 0.0,
            end_ms: latency,
            stream_id: None,
            lost_bytes: None,
            stall_ms: None,
            collateral_stall_ms: None,
        };
        let loss = RealizedLoss { all: 0.0, model: 0.0, queue_drops: 0, offered: 0 };
        RunResult {
            workload: Workload::Sequential,
            arm,
            loss: 0.02,
            run,
            order: run,
            phase: 16 + run as u32,
            requests: vec![q],
            run_ms: latency,
            loss_up: loss,
            loss_down: loss,
            lateness_ok: true,
            link: crate::lab::hol_mqtt::tests::link(),
            server_conn: Vec::new(),
            stall: None,
            link_span_ms: (0.0, 0.0),
        }
    }

    fn params(runs: usize) -> HolParams {
        let mut p = crate::lab::hol::tests_params();
        p.workloads = vec![Workload::Sequential];
        p.loss = vec![0.02];
        p.runs = runs;
        p.stall = false;
        p
    }

    #[test]
    fn conclusions_follow_the_interval() {
        // HTTP/2 slower by 20 ms in every one of 12 runs: resolved, HTTP/3 lower.
        let runs: Vec<RunResult> =
            (0..12).flat_map(|r| [run(Arm::H2One, r, 70.0 + r as f64), run(Arm::H3One, r, 50.0 + r as f64)]).collect();
        let f = findings(&runs, &params(12));
        assert_eq!(f[0].pairs, 12);
        assert_eq!(f[0].findings[0].verdict, report::Verdict::BLower, "{:?}", f[0].findings[0]);
        assert!(f[0].findings[0].sentence.contains("HTTP/3 lower than HTTP/2 by 20.0 ms"));
        // Differences of alternating sign: the interval spans 0 and the report says "not resolved".
        let runs: Vec<RunResult> = (0..12)
            .flat_map(|r| {
                let d = if r % 2 == 0 { 15.0 } else { -15.0 };
                [run(Arm::H2One, r, 60.0 + d), run(Arm::H3One, r, 60.0)]
            })
            .collect();
        let f = findings(&runs, &params(12));
        assert_eq!(f[0].findings[0].verdict, report::Verdict::NotResolved);
        assert!(f[0].findings[0].sentence.contains("no difference resolved"), "{}", f[0].findings[0].sentence);
        // A run over the lateness limit leaves its block out, and the count says so.
        let mut runs: Vec<RunResult> =
            (0..12).flat_map(|r| [run(Arm::H2One, r, 70.0), run(Arm::H3One, r, 50.0)]).collect();
        runs[0].lateness_ok = false;
        let f = findings(&runs, &params(12));
        assert_eq!((f[0].pairs, f[0].excluded_late), (11, 1));
    }
}
