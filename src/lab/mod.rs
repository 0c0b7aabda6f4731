//! The lab: an emulated lossy, delayed link between two network namespaces, the experiments
//! that run over it, and the report kit they (and the MQTT benchmark) write results with.
//!
//! The link and what it is built from:
//!
//! * [`link`]: the link emulator, a TUN relay inside this process between a client and a server
//!   namespace, so kernel TCP and QUIC cross the very same path ([`Link`]);
//! * [`impair`]: the sans-IO models (seeded loss, Gilbert–Elliott, rate and tail-drop queue,
//!   delay and jitter);
//! * [`packet`]: IPv4 parsing and the NAT that emulates a rebinding;
//! * `netns` (private): namespaces held by file descriptors, threads and processes inside them,
//!   and rootless mode ([`prepare_process`], [`NetNs`], [`NsThread`], [`Privilege`]);
//! * `tun` (private): TUN devices by ioctl;
//! * `selfcheck` (private): the RTT and loss check every run passes before it reports
//!   ([`SelfCheck::run`], [`SelfCheckOptions`]);
//! * [`server`]: the quiclab server inside the server namespace ([`LabServer`]);
//! * [`pcap`]: captures of what the relay forwards (and drops), for `hol --pcap`;
//! * [`tap`]: the same packets in memory, for analyses of one run;
//! * `stall` (private): per-stream stall times from a run's packets and the TLS key log (HTTP/2
//!   over TLS/TCP, HTTP/3 over QUIC), for `hol`;
//! * [`stacks`]: what Linux TCP and quinn run with, read from the sockets, the kernel and the
//!   configuration in use, and the initial window that equalizes them;
//! * [`units`]: parsers for rates, loss and queue limits.
//!
//! The report kit: [`report`]: histograms, percentiles, bootstrap intervals, Markdown tables,
//! `results.json`, `report.md`, SVG plots (also used by `benches/`).
//!
//! The commands and experiments:
//!
//! * `link_cmd` (private): `quiclab lab link [impairments] -- COMMAND` ([`run_link`]): start the
//!   link, the server in the server namespace, pass the self-check, run COMMAND in the client
//!   namespace with `QUICLAB_SERVER`/`QUICLAB_PORT`, and report what the link did;
//! * [`hol`]: head-of-line blocking under loss, HTTP/2 vs HTTP/3, over workloads that expose it
//!   (and [`hol_mqtt`]: MQTT over TCP vs MQTT over QUIC on one stream vs a stream per topic);
//! * [`handshake`]: time to first byte in round trips, HTTP/2, HTTP/3 1-RTT and 0-RTT;
//! * [`migrate`]: a NAT rebinding in the middle of an HTTP/3 and an HTTP/2 download;
//! * [`flow`]: per-stream flow control on loopback (no link).
//!
//! `docs/lab.md` describes the method.
//!
//! # Using the link from an experiment
//!
//! ```no_run
//! use std::time::Duration;
//! use quiclab::lab::{Impairment, Link, LinkConfig, LossModel, SelfCheck, SelfCheckOptions};
//!
//! # fn main() -> Result<(), quiclab::lab::LabError> {
//! let imp = Impairment { delay: Duration::from_millis(25), loss: LossModel::Random { p: 0.02 }, ..Impairment::none() };
//! let link = Link::start(LinkConfig::symmetric(imp, 42))?;
//! assert!(SelfCheck::run(&link, &SelfCheckOptions::default())?.passed);
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
mod link_cmd;
pub mod migrate;
mod netns;
pub mod packet;
pub mod pcap;
pub mod report;
mod selfcheck;
pub mod server;
pub mod stacks;
pub(crate) mod stall;
pub mod tap;
mod tun;
pub mod units;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub use impair::{Direction, InvalidImpairment, LossModel, QueueLimit};
pub use link::{DirStats, Impairment, Link, LinkConfig, LinkStats, CLIENT_IP, SERVER_IP};
pub use link_cmd::run_link;
pub use netns::{prepare_process, NetNs, NsThread, Privilege};
pub use packet::RebindMode;
pub use selfcheck::{CheckAttempt, LossCheck, RateCheck, SelfCheck, SelfCheckOptions};
pub use server::LabServer;

/// What can make a lab command fail.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Creating or entering a network namespace failed.
    #[error(
        "cannot {what} (the lab needs root with CAP_SYS_ADMIN and CAP_NET_ADMIN, or an unprivileged user where \
         user namespaces are enabled: see /proc/sys/user/max_user_namespaces)"
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
        "rootless mode: cannot enter a user + network namespace (user namespaces may be disabled: check \
         /proc/sys/user/max_user_namespaces, kernel.unprivileged_userns_clone and \
         kernel.apparmor_restrict_unprivileged_userns; or run as root)"
    )]
    Rootless {
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// One direction's impairment is refused.
    #[error("the {direction} direction's impairment is invalid")]
    Impairment {
        /// `up` or `down`.
        direction: &'static str,
        /// What is wrong with it.
        #[source]
        source: impair::InvalidImpairment,
    },
    /// The lab configuration is invalid (the message says which setting and why).
    #[error("{0}")]
    Config(String),
    /// An experiment could not run as designed: a server answered what it did not expect, or a
    /// precondition of the measurement did not hold (the message says which).
    #[error("{0}")]
    Experiment(String),
    /// The self-check failed twice: the link does not do what it was configured to do (the
    /// message is the self-check's summary).
    #[error("the link failed its self-check twice; refusing to run and report:\n{0}")]
    SelfCheckFailed(String),
    /// The quiclab server in the server namespace could not start.
    #[error("the lab server could not start")]
    Server(#[from] crate::server::ServerError),
    /// The command could not be started.
    #[error("cannot run {program:?}")]
    Command {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A capture file could not be created.
    #[error("cannot start the capture {path}")]
    Capture {
        /// The pcap file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An HTTP client of an experiment failed.
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    /// An MQTT client of an experiment failed.
    #[error(transparent)]
    Mqtt(#[from] crate::mqtt::MqttError),
    /// Setting up TLS (certificates, configurations, the key log) failed.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// QUIC transport parameters that quinn cannot carry.
    #[error(transparent)]
    Transport(#[from] crate::quic::QuicError),
    /// A QUIC connection of an experiment failed.
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    /// A worker task of the lab panicked or was cancelled.
    #[error("a lab worker task failed")]
    Task(#[from] tokio::task::JoinError),
    /// Writing the results failed.
    #[error(transparent)]
    Report(#[from] report::ReportError),
    /// A system call or socket operation failed.
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
