//! The lab: an emulated lossy, delayed link between two network namespaces, and the report kit
//! every experiment uses.
//!
//! * [`link`]: the link emulator, a TUN relay inside this process between a client and a server
//!   namespace, so kernel TCP and QUIC cross the very same path ([`Link`]);
//! * [`impair`]: the sans-IO models (seeded loss, Gilbert–Elliott, rate and tail-drop queue,
//!   delay and jitter);
//! * [`packet`]: IPv4 parsing and the NAT that emulates a rebinding;
//! * [`netns`]: namespaces held by file descriptors, threads and processes inside them, and
//!   rootless mode ([`prepare_process`]);
//! * [`tun`]: TUN devices by ioctl;
//! * [`selfcheck`]: the RTT and loss check every run passes before it reports;
//! * [`server`]: the quiclab server inside the server namespace ([`LabServer`]);
//! * [`pcap`]: captures of what the relay forwards (and drops), for `hol --pcap`;
//! * [`report`]: percentiles, bootstrap intervals, `results.json`, `report.md`, SVG plots;
//! * [`units`]: parsers for rates, loss and queue limits.
//!
//! `quiclab lab link [impairments] -- COMMAND` ([`run_link`]) puts it together: start the link,
//! the server in the server namespace, pass the self-check, run COMMAND in the client namespace
//! with `QUICLAB_SERVER`/`QUICLAB_PORT`, and report what the link did. `docs/lab.md` describes the
//! method.
//!
//! # Using the link from an experiment
//!
//! ```no_run
//! use std::time::Duration;
//! use quiclab::lab::{Impairment, Link, LinkConfig, LossModel, SelfCheckOptions};
//!
//! # fn main() -> Result<(), quiclab::lab::LabError> {
//! let imp = Impairment { delay: Duration::from_millis(25), loss: LossModel::Random { p: 0.02 }, ..Impairment::none() };
//! let link = Link::start(LinkConfig::symmetric(imp, 42))?;
//! assert!(link.self_check(&SelfCheckOptions::default())?.passed);
//! let server_ip = link.server_ip();
//! let rtt = link.run_in_client_ns(move || {
//!     // Sockets created here live in the client namespace; build a runtime if needed.
//!     let _ = server_ip;
//! })?;
//! let stats = link.stats();
//! println!("realized loss up {:.2}%", stats.up.realized_loss * 100.0);
//! # let _ = rtt; Ok(()) }
//! ```

pub mod flow;
pub mod handshake;
pub mod hol;
pub mod hol_mqtt;
pub mod impair;
pub mod link;
pub mod migrate;
pub mod netns;
pub mod packet;
pub mod pcap;
pub mod report;
pub mod selfcheck;
pub mod server;
pub mod tun;
pub mod units;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

pub use impair::{Direction, LossModel, QueueLimit};
pub use link::{DirStats, Impairment, Link, LinkConfig, LinkStats, CLIENT_IP, SERVER_IP};
pub use netns::{prepare_process, NetNs, Privilege};
pub use packet::RebindMode;
pub use selfcheck::{SelfCheck, SelfCheckOptions};
pub use server::LabServer;

use crate::config::ServerConfig;
use report::{md_table, plot, ResultsDir, Series};

/// What can make a lab command fail.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Creating or entering a network namespace failed.
    #[error(
        "cannot {what}: {source} (the lab needs root with CAP_SYS_ADMIN and CAP_NET_ADMIN, or an unprivileged \
         user where user namespaces are enabled: see /proc/sys/user/max_user_namespaces)"
    )]
    Namespace {
        /// The step that failed.
        what: &'static str,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// Rootless mode could not enter a user + network namespace.
    #[error(
        "rootless mode: cannot enter a user + network namespace: {source} (user namespaces may be disabled: \
         check /proc/sys/user/max_user_namespaces, kernel.unprivileged_userns_clone and \
         kernel.apparmor_restrict_unprivileged_userns; or run as root)"
    )]
    Rootless {
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// Invalid lab configuration.
    #[error("{0}")]
    Config(String),
    /// The self-check failed twice: the link does not do what it was configured to do.
    #[error("the link failed its self-check twice; refusing to run and report:\n{0}")]
    SelfCheckFailed(String),
    /// The quiclab server could not start.
    #[error("the lab server could not start")]
    Server(#[from] crate::server::ServerError),
    /// The command could not be started.
    #[error("cannot run {program:?}: {source}")]
    Command {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing the results.
    #[error(transparent)]
    Report(#[from] report::ReportError),
    /// Any other system error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What [`run_link`] (`quiclab lab link [IMPAIRMENTS] -- COMMAND...`) runs with. Every
/// impairment applies to each direction separately (`delay` 25 ms is 25 ms up and 25 ms down);
/// the `_up` and `_down` fields set one direction and take precedence. Up is client → server.
#[derive(Debug, Clone)]
pub struct LinkParams {
    /// One-way delay, each direction.
    pub delay: Option<Duration>,
    /// Round-trip delay, split evenly: --rtt 50ms is 25 ms each way.
    pub rtt: Option<Duration>,
    /// One-way delay client → server.
    pub delay_up: Option<Duration>,
    /// One-way delay server → client.
    pub delay_down: Option<Duration>,
    /// Uniform jitter, each direction: every packet's delay is DELAY ± JITTER. Packets keep their
    /// order unless --reorder is given.
    pub jitter: Option<Duration>,
    /// Jitter client → server.
    pub jitter_up: Option<Duration>,
    /// Jitter server → client.
    pub jitter_down: Option<Duration>,
    /// Let jitter reorder packets (both directions).
    pub reorder: bool,
    /// Random (independent) loss, each direction: 2% or 0.02.
    pub loss: Option<LossModel>,
    /// Random loss client → server.
    pub loss_up: Option<LossModel>,
    /// Random loss server → client.
    pub loss_down: Option<LossModel>,
    /// Bursty loss, each direction: Gilbert–Elliott P,R,BAD,GOOD in netem's gemodel order, the
    /// last two optional (P = Good→Bad, R = Bad→Good per packet; BAD = loss in Bad, default 100%;
    /// GOOD = loss in Good, default 0%). 1%,30% gives bursts of 3.3 packets on average, 3.2% of
    /// packets lost.
    pub burst_loss: Option<LossModel>,
    /// Bursty loss client → server.
    pub burst_loss_up: Option<LossModel>,
    /// Bursty loss server → client.
    pub burst_loss_down: Option<LossModel>,
    /// Rate limit, each direction, in bits of IP datagrams per second: 10mbit, 500kbit, 1gbit.
    pub rate: Option<u64>,
    /// Rate limit client → server.
    pub rate_up: Option<u64>,
    /// Rate limit server → client.
    pub rate_down: Option<u64>,
    /// Tail-drop queue in front of the rate limit: bytes (64k) or packets (100p). Default: 100 ms
    /// at the rate, at least 16 full-size packets.
    pub queue: Option<QueueLimit>,
    /// Queue client → server.
    pub queue_up: Option<QueueLimit>,
    /// Queue server → client.
    pub queue_down: Option<QueueLimit>,
    /// Rebind the client's NAT mapping this long after COMMAND starts (repeatable): the server
    /// then sees the client's TCP and UDP flows from a new port (or address).
    pub rebind_at: Vec<Duration>,
    /// What a rebinding changes: port (a new source port per flow) or address (a new client
    /// address, 198.18.0.2, .3, ...).
    pub rebind: RebindMode,
    /// Seed of the loss and jitter generators (default: random, printed and recorded).
    pub seed: Option<u64>,
    /// Write results.json, report.md and SVG plots into DIR (created if missing).
    pub out: Option<PathBuf>,
    /// Port of the quiclab server (UDP for HTTP/3, TCP for HTTP/2) in the server namespace.
    pub port: u16,
    /// Directory of the server's development certificates (created on first start).
    pub certs: PathBuf,
    /// Start no quiclab server: COMMAND talks to whatever runs in the server namespace (nothing,
    /// unless it starts something there itself).
    pub no_server: bool,
    /// Probes per self-check attempt.
    pub self_check_probes: usize,
    /// Skip the self-check (results are then marked unchecked).
    pub skip_self_check: bool,
    /// The command to run in the client namespace, after `--`.
    pub command: Vec<OsString>,
}

/// A random seed from the standard library's per-process random keys.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish()
}

fn pick_loss(
    dir: &str,
    random: Option<LossModel>,
    burst: Option<LossModel>,
    base_random: Option<LossModel>,
    base_burst: Option<LossModel>,
) -> Result<LossModel, LabError> {
    match (random, burst) {
        (Some(_), Some(_)) => Err(LabError::Config(format!("--loss-{dir} and --burst-loss-{dir} exclude each other"))),
        (Some(m), None) | (None, Some(m)) => Ok(m),
        (None, None) => Ok(base_random.or(base_burst).unwrap_or_default()),
    }
}

impl LinkParams {
    /// The link configuration these arguments describe (with a random seed if none was given).
    pub fn link_config(&self) -> Result<LinkConfig, LabError> {
        let half_rtt = self.rtt.map(|r| r / 2);
        let delay = |own: Option<Duration>| own.or(self.delay).or(half_rtt).unwrap_or_default();
        let imp = |d: Direction| -> Result<Impairment, LabError> {
            let (own_delay, own_jitter, own_loss, own_burst, own_rate, own_queue) = match d {
                Direction::Up => {
                    (self.delay_up, self.jitter_up, self.loss_up, self.burst_loss_up, self.rate_up, self.queue_up)
                }
                Direction::Down => (
                    self.delay_down,
                    self.jitter_down,
                    self.loss_down,
                    self.burst_loss_down,
                    self.rate_down,
                    self.queue_down,
                ),
            };
            Ok(Impairment {
                delay: delay(own_delay),
                jitter: own_jitter.or(self.jitter).unwrap_or_default(),
                reorder: self.reorder,
                loss: pick_loss(d.name(), own_loss, own_burst, self.loss, self.burst_loss)?,
                rate_bps: own_rate.or(self.rate),
                queue: own_queue.or(self.queue),
            })
        };
        let mut cfg = LinkConfig::symmetric(Impairment::none(), self.seed.unwrap_or_else(random_seed));
        cfg.up = imp(Direction::Up)?;
        cfg.down = imp(Direction::Down)?;
        cfg.rebind = self.rebind;
        cfg.validate()?;
        Ok(cfg)
    }
}

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

type BTreeMapStr = std::collections::BTreeMap<&'static str, String>;
type BTreeMapF64 = std::collections::BTreeMap<&'static str, f64>;

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
pub fn write_link_report(dir: &std::path::Path, run: &LinkRun) -> Result<(), LabError> {
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
                    if a.passed { "pass" } else { "FAIL" }.to_string(),
                ]
            })
            .collect();
        md.push_str(&md_table(
            &["attempt", "RTT expected ms", "RTT median ms", "lost up (accepted)", "lost down (accepted)", "verdict"],
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
                    s.packets_in.to_string(),
                    s.bytes_in.to_string(),
                    format!("{} ({:.3}%)", s.dropped_loss, s.realized_loss * 100.0),
                    s.dropped_queue.to_string(),
                    s.dropped_stale_nat.to_string(),
                    format!("{:.1} / {:.1}", s.lateness_us.p50, s.lateness_us.p99),
                    run.measured_rate_bps.get(d.name()).map_or("-".into(), |r| link::fmt_rate(*r)),
                ]
            })
            .collect();
        md.push_str(&md_table(
            &[
                "direction",
                "packets",
                "bytes",
                "lost (realized)",
                "queue drops",
                "stale NAT",
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

fn signal_exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// `quiclab lab link`: start the link and the quiclab server in the server namespace, pass the
/// self-check, run COMMAND in the client namespace and return its exit status. When `interrupt`
/// completes with a signal number (the CLI's SIGINT/SIGTERM), COMMAND is sent SIGTERM (SIGKILL
/// 2 s later), everything is torn down and the status is 128 + that number; pass
/// [`std::future::pending`] to run uninterrupted. Call [`prepare_process`] first, before any
/// runtime exists.
pub async fn run_link(args: LinkParams, interrupt: impl std::future::Future<Output = i32>) -> Result<i32, LabError> {
    let cfg = args.link_config()?;
    let Some((program, program_args)) = args.command.split_first() else {
        return Err(LabError::Config("lab link: no COMMAND to run".into()));
    };
    let mut interrupt = std::pin::pin!(interrupt);
    let started_unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let link = Arc::new(Link::start(cfg.clone())?);
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
        Some(LabServer::start(&link, sc)?)
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
            r = tokio::task::spawn_blocking(move || l.self_check(&opts)) => {
                r.map_err(|e| LabError::Io(std::io::Error::other(e.to_string())))??
            }
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
                write_link_report(dir, &run)?;
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
    let ca = server
        .as_ref()
        .and_then(|s| s.certs().ca_path.clone())
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p).display().to_string());
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
    let t0 = std::time::Instant::now();
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
        status = &mut done_rx => signal_exit_code(status.map_err(|_| LabError::Io(std::io::Error::other("command waiter vanished")))??),
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
            "link {:<4}: {} packets, {} bytes in; lost {} ({:.3}% realized), queue drops {}, stale NAT {}; \
             lateness p50 {:.1} µs, p99 {:.1} µs{}",
            d.name(),
            s.packets_in,
            s.bytes_in,
            s.dropped_loss,
            s.realized_loss * 100.0,
            s.dropped_queue,
            s.dropped_stale_nat,
            s.lateness_us.p50,
            s.lateness_us.p99,
            run.measured_rate_bps
                .get(d.name())
                .map_or(String::new(), |r| format!("; busy rate {}", link::fmt_rate(*r)))
        );
    }
    for r in &stats.rebinds {
        eprintln!("rebinding {} at {:.3} s", r.generation, r.at.as_secs_f64());
    }
    run.link = Some(stats);
    if let Some(s) = server {
        s.shutdown().await;
    }
    drop(link);
    if let Some(dir) = &args.out {
        write_link_report(dir, &run)?;
        eprintln!("results in {}", dir.display());
    }
    Ok(code)
}
