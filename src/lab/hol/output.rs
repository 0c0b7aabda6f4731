//! `results.json`, `report.md` and the plots of a sweep. The report opens with its conclusions,
//! and every conclusion is a [`crate::lab::report::Finding`]'s generated sentence: nothing here
//! states a result in words of its own.

use super::analysis::{metric_name, ArmSummary};
use super::{Arm, HolResults, Workload};
use crate::lab::report::{self, md_table, Series};
use crate::lab::LabError;

/// What a workload does, for the report.
fn describe(r: &HolResults, w: Workload) -> String {
    let shape = r.config.shapes.iter().find(|(x, _)| *x == w).map(|(_, s)| s.clone());
    match (w, shape) {
        (Workload::Small, Some(s)) => format!(
            "{} responses of {} bytes requested together on one connection, {} rounds per run; latency per request",
            s.requests, s.size, s.rounds
        ),
        (Workload::Sequential, Some(s)) => {
            format!("{} requests of {} bytes, one at a time, on one connection; latency per request", s.requests, s.size)
        }
        (Workload::Page, Some(s)) => format!(
            "an HTML document of {} bytes, then {} subresources ({} bytes in all) requested together, {} load(s) per run",
            super::PAGE[0],
            super::PAGE.len() - 1,
            super::PAGE.iter().sum::<u64>(),
            s.rounds
        ),
        (Workload::Bulk, Some(s)) => format!(
            "{} responses of {} bytes at once, on one connection and on {} connections (control arms)",
            s.requests, s.size, s.requests
        ),
        _ => String::new(),
    }
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

fn ci(c: &report::Ci) -> String {
    format!("{:.1} [{:.1}, {:.1}]", c.estimate, c.lo, c.hi)
}

fn opt_ms(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), |v| format!("{v:.1}"))
}

fn arm_rows(arms: &[&ArmSummary]) -> Vec<Vec<String>> {
    arms.iter()
        .map(|s| {
            vec![
                pct(s.loss),
                s.arm.name().to_string(),
                ci(&s.metric),
                ci(&s.latency_p50),
                ci(&s.latency_p99),
                opt_ms(s.stall_per_stream_ms),
                opt_ms(s.collateral_per_stream_ms),
                format!("{} / {}", pct(s.loss_up), pct(s.loss_down)),
                format!("{} / {}", pct(s.model_loss_up), pct(s.model_loss_down)),
                format!("{:.1} / {:.1}", s.queue_drops_up, s.queue_drops_down),
                format!("{} of {}", s.late_runs, s.runs),
            ]
        })
        .collect()
}

/// Write `results.json`, `report.md` and the SVG plots into `out`.
pub fn write_outputs(out: &std::path::Path, r: &HolResults) -> Result<(), LabError> {
    let dir = report::ResultsDir::create(out)?;
    dir.write_json(r)?;
    let c = &r.config;
    let commit = r.versions.commit.as_ref().map_or_else(
        || "unknown".to_string(),
        |c| format!("{}{}", c.id, if c.dirty { " (with uncommitted changes)" } else { "" }),
    );
    let mut md = format!(
        "# Head-of-line blocking: HTTP/2 vs HTTP/3 under loss\n\nRTT {:.0} ms; {} bit/s each way; queue {}; \
         loss per direction {}; {} runs per workload and loss point, each arm once per run on the run's own \
         link seed (paired); blocks in a random interleaved order (seed {}); congestion control {} on both \
         sides; QUIC initial window {}. quiclab {} at commit {}.\n\n",
        c.rtt_ms,
        c.rate_bps,
        c.link.up.effective_queue().map_or_else(|| "none".into(), |q| format!("{q:?}")),
        c.loss.iter().map(|l| pct(*l)).collect::<Vec<_>>().join(", "),
        c.runs,
        c.seed,
        c.congestion,
        c.quic_initial_window.map_or_else(|| "quinn's default".into(), |w| format!("{w} bytes (Linux's)")),
        r.versions.quiclab,
        commit,
    );

    md += "## Conclusions\n\nEach line is generated from the median of per-run paired differences and its \
           distribution-free 95% interval (the sign test inverted; fewer than 6 runs give none); where the \
           interval spans 0 it says so. Every connection made one untimed request before the timed part.\n";
    for &w in c.workloads.iter().filter(|w| **w != Workload::Mqtt) {
        md += &format!("\n### `{}`: {}\n\n", w.name(), describe(r, w));
        for p in r.findings.iter().filter(|p| p.workload == w) {
            md += &format!("At {} loss ({} runs", pct(p.loss), p.pairs);
            if p.excluded_late > 0 {
                md += &format!(", {} left out for relay lateness", p.excluded_late);
            }
            md += "):\n\n";
            for f in &p.findings {
                md += &format!("- {}\n", f.sentence);
            }
            md += "\n";
        }
    }
    if let Some(m) = &r.mqtt {
        md += "\n### `mqtt`\n\n";
        for f in &m.findings {
            md += &format!("- {}\n", f.sentence);
        }
    }

    for &w in c.workloads.iter().filter(|w| **w != Workload::Mqtt) {
        let arms: Vec<&ArmSummary> = r.arms.iter().filter(|s| s.workload == w).collect();
        md += &format!(
            "\n## `{}` per arm\n\n{} per run: median over runs [95% CI]; request latency p50 and p99 pooled over \
             runs [95% CI resampling runs]; stall per stream from the relay's packets; realized loss = every \
             drop (loss model, queue, stale NAT) over datagrams offered; model loss = the loss model's drops \
             over its draws; queue drops per run.\n\n",
            w.name(),
            metric_name(w)
        );
        md += &md_table(
            &[
                "loss",
                "arm",
                &format!("{} ms", metric_name(w)),
                "p50 ms",
                "p99 ms",
                "stall/stream ms",
                "collateral/stream ms",
                "realized loss up / down",
                "model loss up / down",
                "queue drops up / down",
                "late runs",
            ],
            &arm_rows(&arms),
        );
    }

    if let Some(m) = &r.mqtt {
        super::super::hol_mqtt::write_section(&dir, m, &c.loss, &mut md)?;
    }

    md += "\n## Stacks\n\n";
    md += &r.stacks.markdown();
    md += "\nDifferences that remain:\n\n";
    for d in r.stacks.remaining_differences() {
        md += &format!("- {d}\n");
    }
    let suites: std::collections::BTreeSet<(&str, &str)> = r
        .runs
        .iter()
        .flat_map(|x| {
            let proto = if matches!(x.arm, Arm::H2One | Arm::H2Many) { "HTTP/2" } else { "HTTP/3" };
            x.stall.iter().flat_map(move |s| s.cipher_suites.iter().map(move |c| (proto, c.as_str())))
        })
        .collect();
    if !suites.is_empty() {
        md += "\nCipher suites that opened the packets (stall analysis): ";
        md += &suites.iter().map(|(p, c)| format!("{p} {c}")).collect::<Vec<_>>().join(", ");
        md += "\n";
    }

    md += "\n## Self-check at every loss point\n\n";
    for p in &r.self_checks {
        md += &format!("- loss {}:\n\n```\n{}```\n", pct(p.loss), p.check.summary());
    }

    md += &format!(
        "\n## Order\n\n{} blocks ran in a seeded random order; each arm's mean position inside its blocks \
         (0 = first):\n\n",
        r.schedule.len()
    );
    let mut rows = Vec::new();
    for arm in [Arm::H2One, Arm::H3One, Arm::H2Many, Arm::H3Many] {
        let pos: Vec<f64> =
            r.schedule.iter().filter_map(|b| b.arms.iter().position(|a| *a == arm).map(|p| p as f64)).collect();
        if !pos.is_empty() {
            rows.push(vec![arm.name().to_string(), format!("{:.2}", report::mean(&pos)), pos.len().to_string()]);
        }
    }
    md += &md_table(&["arm", "mean position", "blocks"], &rows);
    if let Some(cap) = &r.capture {
        md += &format!(
            "\n## Packet capture\n\n- {}\n\nEach run's span in link time is `link_span_ms` in results.json; decrypt \
             with `tshark -r {} -o tls.keylog_file:{}`.\n",
            cap.describe(),
            cap.path.display(),
            r.key_log.as_ref().map_or_else(String::new, |k| k.display().to_string())
        );
    }
    md += "\nMethod: docs/lab.md, \"Head-of-line blocking\".\n";
    dir.write_markdown(&md)?;

    // Per HTTP workload: latency CDF per loss point, the headline metric and p99 against loss.
    let all_arms = [Arm::H2One, Arm::H3One, Arm::H2Many, Arm::H3Many];
    for &w in c.workloads.iter().filter(|w| **w != Workload::Mqtt) {
        let arms = report::Arms { all: &all_arms[..w.arms().len()], name: Arm::name };
        let prefix = format!("{}-", w.name());
        arms.cdf_per_loss(&dir, &prefix, &format!("{}: request latency", w.name()), "ms", &c.loss, |arm, loss| {
            r.runs
                .iter()
                .filter(|x| x.workload == w && x.arm == arm && x.loss == loss)
                .flat_map(|x| x.requests.iter().map(|q| q.latency_ms()))
                .collect()
        })?;
        let of_arm = |arm: Arm| r.arms.iter().filter(move |s| s.workload == w && s.arm == arm);
        arms.plot(
            &dir.path(&format!("{prefix}metric-vs-loss.svg")),
            &format!("{}: {} vs loss (median, 95% CI)", w.name(), metric_name(w)),
            "loss (%)",
            "ms",
            |arm, label| Series::with_ci(label, &of_arm(arm).map(|s| (s.loss * 100.0, s.metric)).collect::<Vec<_>>()),
        )?;
        arms.plot(
            &dir.path(&format!("{prefix}p99-vs-loss.svg")),
            &format!("{}: request p99 vs loss (95% CI)", w.name()),
            "loss (%)",
            "ms",
            |arm, label| {
                Series::with_ci(label, &of_arm(arm).map(|s| (s.loss * 100.0, s.latency_p99)).collect::<Vec<_>>())
            },
        )?;
    }
    Ok(())
}
