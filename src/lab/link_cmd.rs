//! `quiclab lab link [IMPAIRMENTS] -- COMMAND`: the runner ([`run_link`]) and its report
//! ([`LinkRun`], written by [`write_link_report`] as `results.json`, `report.md` and SVG plots).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::impair::Direction;
use super::link::{fmt_rate, Link, LinkConfig, LinkStats, CLIENT_IP, LATENESS_P99_LIMIT_US, SERVER_IP};
use super::netns::{self, Privilege};
use super::report::{self, md_table, plot, ResultsDir, Series};
use super::selfcheck::{SelfCheck, SelfCheckOptions};
use super::server::LabServer;
use super::{LabError, LinkParams};
use crate::config::ServerConfig;

/// Everything `quiclab lab link` records in `results.json`.
#[derive(Debug, Serialize)]
pub struct LinkRun {
    /// `"lab link"`.
    pub kind: &'static str,
    /// The command run in the client namespace.
    pub command: Vec<String>,
    /// The link's configuration (the seed included).
    pub config: LinkConfig,
    /// Root or rootless.
    pub privilege: Privilege,
    /// `net:[inode]` of the client and server namespaces.
    pub namespaces: BTreeMapStr,
    /// Client and server addresses, and the server's ports.
    pub addresses: BTreeMapStr,
    /// The self-check (absent when skipped).
    pub self_check: Option<SelfCheck>,
    /// The relay's counters over the run (after the self-check).
    pub link: Option<LinkStats>,
    /// The bottleneck rate measured while each direction was busy (≥ 50% of the limit), in
    /// bit/s, when a rate was set.
    pub measured_rate_bps: BTreeMapF64,
    /// COMMAND's exit status (128 + signal when killed by one).
    pub exit_code: Option<i32>,
    /// Whether quiclab was interrupted (SIGINT/SIGTERM).
    pub interrupted: bool,
    /// Start time, seconds since the Unix epoch.
    pub started_unix: f64,
    /// From the start of COMMAND to its end.
    #[serde(rename = "duration_ms", serialize_with = "report::ser_duration_ms")]
    pub duration: Duration,
    /// quiclab, kernel and crate versions.
    pub versions: report::Versions,
}

type BTreeMapStr = BTreeMap<&'static str, String>;
type BTreeMapF64 = BTreeMap<&'static str, f64>;

fn measured_rates(cfg: &LinkConfig, stats: &LinkStats) -> BTreeMapF64 {
    let mut m = BTreeMapF64::new();
    for d in Direction::BOTH {
        if let Some(rate) = cfg.get(d).rate_bps {
            let (r, secs) = stats.get(d).busy_rate_bps(rate as f64, 0.5, 2);
            if secs > 0.0 {
                m.insert(d.name(), r);
            }
        }
    }
    m
}

/// Write `results.json`, `report.md` and the plots of a `lab link` run into `dir`.
pub fn write_link_report(dir: &Path, run: &LinkRun) -> Result<(), LabError> {
    let out = ResultsDir::create(dir)?;
    out.write_json(run)?;
    let mut md = String::from("# quiclab lab link\n\n");
    md.push_str(&format!(
        "Command: `{}`  \nSeed: {}  \nMode: {:?}  \nExit status: {}{}\n\n",
        run.command.join(" "),
        run.config.seed,
        run.privilege,
        run.exit_code.map_or("none".into(), |c| c.to_string()),
        if run.interrupted { " (interrupted)" } else { "" }
    ));
    md.push_str("## Configuration\n\n");
    let rows: Vec<Vec<String>> =
        Direction::BOTH.iter().map(|d| vec![d.name().to_string(), run.config.get(*d).describe()]).collect();
    md.push_str(&md_table(&["direction", "impairment"], &rows));
    if let Some(sc) = &run.self_check {
        md.push_str("\n## Self-check\n\n");
        let rows: Vec<Vec<String>> = sc
            .attempts
            .iter()
            .map(|a| {
                vec![
                    a.attempt.to_string(),
                    format!("{:.3}", a.rtt_expected_ms),
                    format!("{:.3}", a.rtt_measured_ms),
                    format!("{}/{} ({}..={})", a.up.lost, a.up.sent, a.up.accepted.0, a.up.accepted.1),
                    format!("{}/{} ({}..={})", a.down.lost, a.down.sent, a.down.accepted.0, a.down.accepted.1),
                    format!(
                        "{:.0} / {:.0} ({})",
                        a.lateness_up_us.p99,
                        a.lateness_down_us.p99,
                        if a.lateness_ok { "ok" } else { "over" }
                    ),
                    if a.rate.is_empty() {
                        a.rate_skipped.clone().unwrap_or_else(|| "-".into())
                    } else {
                        a.rate
                            .iter()
                            .map(|r| {
                                format!(
                                    "{} {} (full-queue delay p90 {:.1} ms of {:.1}) {}",
                                    r.direction.name(),
                                    fmt_rate(r.received_rate_bps),
                                    r.queue_delay_p90_ms,
                                    r.queue_delay_expected_ms,
                                    if r.passed { "ok" } else { "FAIL" }
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("; ")
                    },
                    if a.passed { "pass" } else { "FAIL" }.to_string(),
                ]
            })
            .collect();
        md.push_str(&md_table(
            &[
                "attempt",
                "RTT expected ms",
                "RTT median ms",
                "lost up (accepted)",
                "lost down (accepted)",
                "lateness p99 up / down µs",
                "rate / queue",
                "verdict",
            ],
            &rows,
        ));
        let samples = &sc.last().rtt_samples_ms;
        if !samples.is_empty() {
            plot(
                &out.path("selfcheck_rtt_cdf.svg"),
                "Self-check RTT",
                "RTT (ms)",
                "fraction of probes",
                &[Series::cdf("measured", samples)],
            )?;
            md.push_str("\n![self-check RTT CDF](selfcheck_rtt_cdf.svg)\n");
        }
    }
    if let Some(stats) = &run.link {
        md.push_str("\n## The link during the run\n\n");
        let rows: Vec<Vec<String>> = Direction::BOTH
            .iter()
            .map(|d| {
                let s = stats.get(*d);
                vec![
                    d.name().to_string(),
                    s.offered.to_string(),
                    s.bytes_in.to_string(),
                    format!("{} ({:.3}%)", s.dropped_loss, s.model_loss * 100.0),
                    format!("{} ({:.3}%)", s.dropped_queue, s.queue_loss * 100.0),
                    s.dropped_stale_nat.to_string(),
                    format!("{:.3}%", s.realized_loss * 100.0),
                    format!(
                        "{:.1} / {:.1}{}",
                        s.lateness_us.p50,
                        s.lateness_us.p99,
                        if s.lateness_ok() { "" } else { " (over the limit)" }
                    ),
                    run.measured_rate_bps.get(d.name()).map_or("-".into(), |r| fmt_rate(*r)),
                ]
            })
            .collect();
        md.push_str(&format!(
            "Realized loss counts every drop (loss model, queue, stale NAT) over the IPv4 packets \
             offered; relay lateness p99 above {LATENESS_P99_LIMIT_US} µs is flagged.\n\n"
        ));
        md.push_str(&md_table(
            &[
                "direction",
                "packets offered",
                "bytes",
                "loss-model drops (of draws)",
                "queue drops (of offered)",
                "stale NAT",
                "realized loss (every drop / offered)",
                "lateness p50 / p99 µs",
                "busy rate",
            ],
            &rows,
        ));
        for r in &stats.rebinds {
            md.push_str(&format!("\nRebinding {} at {:.3} s.", r.generation, r.at.as_secs_f64()));
        }
        let series: Vec<Series> = Direction::BOTH
            .iter()
            .map(|d| {
                let s = stats.get(*d);
                let points = s
                    .egress_bytes_per_100ms
                    .iter()
                    .enumerate()
                    .map(|(i, b)| ((i as f64 + 0.5) * 0.1, *b as f64 * 8.0 / 0.1 / 1e6))
                    .collect();
                Series::line(d.name(), points)
            })
            .collect();
        if series.iter().any(|s| !s.points.is_empty()) {
            plot(&out.path("throughput.svg"), "Relay egress", "time since link start (s)", "Mbit/s", &series)?;
            md.push_str("\n\n![relay egress](throughput.svg)\n");
        }
    }
    out.write_markdown(&md)?;
    Ok(())
}

/// [`write_link_report`] on a blocking thread: it writes files and draws plots.
async fn write_link_report_blocking(dir: &Path, run: LinkRun) -> Result<(), LabError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || write_link_report(&dir, &run)).await?
}

fn signal_exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// `quiclab lab link`: start the link and the quiclab server in the server namespace, pass the
/// self-check, run COMMAND in the client namespace and return its exit status. When `interrupt`
/// completes with a signal number (the CLI's SIGINT/SIGTERM), COMMAND is sent SIGTERM (SIGKILL
/// 2 s later), everything is torn down and the status is 128 + that number; pass
/// [`std::future::pending`] to run uninterrupted. Call [`crate::lab::prepare_process`] first,
/// before any runtime exists.
pub async fn run_link(args: LinkParams, interrupt: impl std::future::Future<Output = i32>) -> Result<i32, LabError> {
    let cfg = args.link_config()?;
    let Some((program, program_args)) = args.command.split_first() else {
        return Err(LabError::Config("lab link: no COMMAND to run".into()));
    };
    let mut interrupt = std::pin::pin!(interrupt);
    let started_unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    // Starting the link and the server opens devices and waits for threads: off the runtime.
    let link = {
        let cfg = cfg.clone();
        Arc::new(tokio::task::spawn_blocking(move || Link::start(cfg)).await??)
    };
    let privilege = netns::privilege();
    eprintln!("quiclab lab link: {:?} mode, seed {}", privilege, cfg.seed);
    eprintln!("  up   (client → server): {}", cfg.up.describe());
    eprintln!("  down (server → client): {}", cfg.down.describe());
    eprintln!(
        "  client {} in {}, server {} in {}",
        link.client_ip(),
        link.client_ns().id(),
        link.server_ip(),
        link.server_ns().id()
    );
    let server = if args.no_server {
        None
    } else {
        let mut sc = ServerConfig::new();
        sc.quic_listen = SocketAddr::new(SERVER_IP.into(), args.port);
        sc.tcp_listen = sc.quic_listen;
        sc.certs_dir = args.certs.clone();
        sc.shutdown_grace = Duration::from_secs(1);
        let l = link.clone();
        Some(tokio::task::spawn_blocking(move || LabServer::start(&l, sc)).await??)
    };
    let command: Vec<String> = args.command.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let mut run = LinkRun {
        kind: "lab link",
        command: command.clone(),
        config: cfg.clone(),
        privilege,
        namespaces: [("client", link.client_ns().id()), ("server", link.server_ns().id())].into(),
        addresses: [
            ("client", CLIENT_IP.to_string()),
            ("server", SERVER_IP.to_string()),
            ("quic", server.as_ref().map_or("-".into(), |s| s.quic_addr().to_string())),
            ("tcp", server.as_ref().map_or("-".into(), |s| s.tcp_addr().to_string())),
        ]
        .into(),
        self_check: None,
        link: None,
        measured_rate_bps: BTreeMapF64::new(),
        exit_code: None,
        interrupted: false,
        started_unix,
        duration: Duration::ZERO,
        versions: report::versions(),
    };

    if !args.skip_self_check {
        let opts = SelfCheckOptions { probes: args.self_check_probes, progress: true, ..Default::default() };
        let l = link.clone();
        let check = tokio::select! {
            r = tokio::task::spawn_blocking(move || SelfCheck::run(&l, &opts)) => r??,
            sig = &mut interrupt => {
                if let Some(s) = server { s.shutdown().await; }
                return Ok(128 + sig);
            }
        };
        eprint!("{}", check.summary());
        let passed = check.passed;
        let summary = check.summary();
        run.self_check = Some(check);
        if !passed {
            if let Some(dir) = &args.out {
                write_link_report_blocking(dir, run).await?;
            }
            if let Some(s) = server {
                s.shutdown().await;
            }
            return Err(LabError::SelfCheckFailed(summary));
        }
    } else {
        eprintln!("self-check skipped: results are unchecked");
    }

    for at in &args.rebind_at {
        link.schedule_rebind(*at);
    }
    let port = server.as_ref().map_or(args.port, |s| s.quic_addr().port());
    let ca = match server.as_ref().and_then(|s| s.certs().ca_path.clone()) {
        Some(p) => Some(tokio::fs::canonicalize(&p).await.unwrap_or(p).display().to_string()),
        None => None,
    };
    eprintln!("QUICLAB_SERVER={SERVER_IP} QUICLAB_PORT={port}");
    let mut cmd = std::process::Command::new(program);
    cmd.args(program_args)
        .env("QUICLAB_SERVER", SERVER_IP.to_string())
        .env("QUICLAB_PORT", port.to_string())
        .env("QUICLAB_CLIENT", CLIENT_IP.to_string());
    if let Some(ca) = &ca {
        cmd.env("QUICLAB_CA", ca);
    }
    link.client_command(&mut cmd);
    let t0 = Instant::now();
    // std rather than tokio::process: spawned from this (long-lived) thread, which the child's
    // PR_SET_PDEATHSIG is tied to, and reaped by a waiter thread.
    let mut child =
        cmd.spawn().map_err(|source| LabError::Command { program: program.to_string_lossy().into_owned(), source })?;
    let pid = child.id() as i32;
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("lab-command-wait".into())
        .spawn(move || {
            let _ = done_tx.send(child.wait());
        })
        .map_err(LabError::Io)?;
    let code = tokio::select! {
        status = &mut done_rx => signal_exit_code(status.map_err(|_| LabError::Experiment("the command's waiter thread vanished".into()))??),
        sig = &mut interrupt => {
            run.interrupted = true;
            // SAFETY: signalling our own child, which the waiter has not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            if tokio::time::timeout(Duration::from_secs(2), &mut done_rx).await.is_err() {
                // SAFETY: as above; still not reaped after 2 s.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = done_rx.await;
            }
            128 + sig
        }
    };
    run.duration = t0.elapsed();
    run.exit_code = Some(code);
    let stats = link.stats();
    run.measured_rate_bps = measured_rates(&cfg, &stats);
    for d in Direction::BOTH {
        let s = stats.get(d);
        eprintln!(
            "link {:<4}: {} packets offered, {} bytes in; loss-model drops {} ({:.3}% of draws), queue drops {} \
             ({:.3}%), stale NAT {}; realized loss {:.3}% (every drop); lateness p50 {:.1} µs, p99 {:.1} µs{}{}",
            d.name(),
            s.offered,
            s.bytes_in,
            s.dropped_loss,
            s.model_loss * 100.0,
            s.dropped_queue,
            s.queue_loss * 100.0,
            s.dropped_stale_nat,
            s.realized_loss * 100.0,
            s.lateness_us.p50,
            s.lateness_us.p99,
            if s.lateness_ok() { "" } else { " (over the lateness limit)" },
            run.measured_rate_bps.get(d.name()).map_or(String::new(), |r| format!("; busy rate {}", fmt_rate(*r)))
        );
    }
    for r in &stats.rebinds {
        eprintln!("rebinding {} at {:.3} s", r.generation, r.at.as_secs_f64());
    }
    run.link = Some(stats);
    if let Some(s) = server {
        s.shutdown().await;
    }
    // Stopping the relay joins its threads: off the runtime.
    tokio::task::spawn_blocking(move || drop(link)).await?;
    if let Some(dir) = &args.out {
        write_link_report_blocking(dir, run).await?;
        eprintln!("results in {}", dir.display());
    }
    Ok(code)
}
