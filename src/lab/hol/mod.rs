//! `quiclab lab hol`: does HTTP/3 avoid the head-of-line blocking HTTP/2 suffers under loss, and
//! how much is it worth? HTTP/2 over TLS/TCP and HTTP/3 over QUIC, over the lab's link at a
//! given RTT, rate and queue, across a sweep of loss rates, with workloads chosen to expose
//! head-of-line (HOL) blocking rather than throughput (`docs/lab.md`, "Head-of-line blocking",
//! is the method; this is the map of the code):
//!
//! * workloads ([`Workload`], `workload.rs`): `small` (many small responses requested together on
//!   one connection, in rounds), `sequential` (one small request at a time: the tail is set by
//!   loss recovery, TCP's RTO vs QUIC's PTO), `page` (an HTML document, then a mix of 30
//!   subresources at once), `bulk` (N large responses on one connection vs N connections, the
//!   control arms of a difference-of-differences), and `mqtt` (MQTT/TCP vs MQTT/QUIC with one
//!   stream vs a stream per topic, [`super::hol_mqtt`]: the same-stack ablation);
//! * the schedule (`schedule.rs`): independent link seeds per (workload, loss point, run), paired
//!   across the arms of that block; blocks and arms in a seeded random, interleaved order,
//!   recorded;
//! * per run: every request's send and completion time and stream, the relay's counters (every
//!   drop, by cause), the server's view of each connection, and the per-stream stall analysis
//!   of the relay's packets (`super::stall`: bytes received but not deliverable because an earlier
//!   byte of the connection (HTTP/2) or of the stream (HTTP/3) is missing);
//! * `analysis.rs`: per-arm summaries with run-bootstrap intervals, and the paired per-run
//!   differences behind every headline ([`crate::lab::report::Finding`]): a sentence is generated
//!   from an interval, and "no difference resolved" when it spans 0;
//! * `output.rs`: `results.json` (configuration, commit, schedule, self-checks per loss point,
//!   stack facts, every run), `report.md` (conclusions first, generated), SVG plots.

mod analysis;
mod output;
mod schedule;
mod workload;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Serialize;

pub use analysis::{ArmSummary, PointFindings};
pub use output::write_outputs;
pub use schedule::Block;
pub use workload::{RequestRecord, WorkloadShape, PAGE};

use super::impair::{Direction, LossModel, QueueLimit};
use super::link::{Impairment, Link, LinkConfig, LinkStats};
use super::report;
use super::selfcheck::{SelfCheck, SelfCheckOptions};
use super::server::LabServer;
use super::LabError;
use crate::client::{self, Client, ClientOptions, HttpVersion, Target};
use crate::config::{BadValue, Congestion};
use crate::tls::Trust;

/// What a sweep measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Many small responses requested together on one connection, in rounds.
    Small,
    /// One small request at a time on one connection.
    Sequential,
    /// An HTML document, then its 30 subresources at once ([`PAGE`]).
    Page,
    /// N large responses at once on one connection, and on N connections (control arms).
    Bulk,
    /// MQTT across topics: TCP, QUIC with one stream, QUIC with a stream per topic.
    Mqtt,
}

impl Workload {
    /// Every workload, in the order reports list them.
    pub const ALL: [Workload; 5] =
        [Workload::Small, Workload::Sequential, Workload::Page, Workload::Bulk, Workload::Mqtt];

    /// The name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Small => "small",
            Workload::Sequential => "sequential",
            Workload::Page => "page",
            Workload::Bulk => "bulk",
            Workload::Mqtt => "mqtt",
        }
    }

    /// The HTTP arms it runs (none for `mqtt`, whose arms are `hol_mqtt::MqttArm`).
    pub fn arms(self) -> &'static [Arm] {
        match self {
            Workload::Bulk => &Arm::ALL,
            Workload::Mqtt => &[],
            _ => &[Arm::H2One, Arm::H3One],
        }
    }
}

impl FromStr for Workload {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Workload, BadValue> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s.trim())
            .ok_or_else(|| BadValue::new("a workload", s, "small, sequential, page, bulk or mqtt"))
    }
}

/// Which initial congestion window the QUIC side starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InitialWindow {
    /// quinn's set to what Linux TCP starts with on the link (10 × MSS, read from TCP_INFO).
    Linux,
    /// quinn's own default (12,000 bytes in quinn-proto 0.11: 14,720 clamped to 10 × 1,200).
    Quinn,
}

impl FromStr for InitialWindow {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<InitialWindow, BadValue> {
        match s.trim() {
            "linux" => Ok(InitialWindow::Linux),
            "quinn" => Ok(InitialWindow::Quinn),
            _ => Err(BadValue::new("an initial window choice", s, "linux or quinn")),
        }
    }
}

/// What `quiclab lab hol` runs with (the binary fills it from its command line).
#[derive(Debug, Clone)]
pub struct HolParams {
    /// Workloads of the sweep, each with its own blocks.
    pub workloads: Vec<Workload>,
    /// Loss rates to sweep, per direction.
    pub loss: Vec<f64>,
    /// Round-trip time of the link (half each way).
    pub rtt: Duration,
    /// Bottleneck rate each way.
    pub rate: u64,
    /// Tail-drop queue in front of the rate (default: the link's, 100 ms at the rate).
    pub queue: Option<QueueLimit>,
    /// Runs per workload and loss point (each arm once per run, paired on one seed).
    pub runs: usize,
    /// Congestion controller of both sides: Linux TCP_CONGESTION and quinn's matching one.
    pub cc: Congestion,
    /// The QUIC side's initial window.
    pub initial_window: InitialWindow,
    /// Tap the relay and compute per-stream stall times from the packets (HTTP workloads).
    pub stall: bool,
    /// `small`: requests per round, bytes each, rounds per run.
    pub small_requests: usize,
    pub small_size: u64,
    pub small_rounds: usize,
    /// `sequential`: requests per run, bytes each.
    pub sequential_requests: usize,
    pub sequential_size: u64,
    /// `page`: page loads per run.
    pub page_loads: usize,
    /// `bulk`: concurrent requests (N) and bytes each (S).
    pub requests: usize,
    pub size: u64,
    /// `bulk`: count connection set-up in the timed part.
    pub include_handshake: bool,
    /// A short preset (see [`HolParams::effective`]).
    pub quick: bool,
    /// Results folder (created if missing).
    pub out: std::path::PathBuf,
    /// Seed of the link's random streams and of the schedule.
    pub seed: u64,
    /// Capture the relay's traffic of the whole sweep (`OUT/pcap/sweep.pcap`, dropped packets in
    /// `sweep.dropped.pcap`, each block's time span in results.json) and keep the TLS key log
    /// (`OUT/pcap/keys.log`).
    pub pcap: bool,
    /// `mqtt`: topics (K).
    pub topics: usize,
    /// `mqtt`: messages per second per topic (QoS 1, pipelined).
    pub msg_rate: u32,
    /// `mqtt`: payload bytes per message (at least 14: send time, sequence, topic).
    pub payload: usize,
    /// `mqtt`: how long the publisher publishes per run.
    pub duration: Duration,
}

impl HolParams {
    /// The parameters after `--quick`: loss 0 and 2%, 3 runs, 40 ms, 20 Mbit/s, and every
    /// workload cut down (small: 2 rounds of 20 × 4 KB; sequential: 10 requests; page: 1 load;
    /// bulk: 8 × 64 KiB; mqtt: 3 s).
    pub fn effective(&self) -> HolParams {
        let mut a = self.clone();
        if a.quick {
            a.loss = vec![0.0, 0.02];
            a.runs = 3;
            a.rtt = Duration::from_millis(40);
            a.rate = 20_000_000;
            a.small_requests = 20;
            a.small_rounds = 2;
            a.sequential_requests = 10;
            a.page_loads = 1;
            a.requests = 8;
            a.size = 64 << 10;
            a.duration = Duration::from_secs(3);
        }
        a.workloads.dedup();
        a
    }

    /// The shape of an HTTP workload's timed part.
    pub fn shape(&self, w: Workload) -> WorkloadShape {
        match w {
            Workload::Small => WorkloadShape {
                requests: self.small_requests.max(1),
                size: self.small_size,
                rounds: self.small_rounds.max(1),
            },
            Workload::Sequential => {
                WorkloadShape { requests: self.sequential_requests.max(1), size: self.sequential_size, rounds: 1 }
            }
            Workload::Page => WorkloadShape { requests: PAGE.len(), size: 0, rounds: self.page_loads.max(1) },
            Workload::Bulk | Workload::Mqtt => {
                WorkloadShape { requests: self.requests.max(1), size: self.size, rounds: 1 }
            }
        }
    }

    /// The MQTT arms' settings.
    pub fn mqtt_settings(&self) -> super::hol_mqtt::MqttSettings {
        super::hol_mqtt::MqttSettings {
            topics: self.topics.clamp(1, u16::MAX as usize),
            rate_per_topic: self.msg_rate.max(1),
            payload: self.payload.max(super::hol_mqtt::MIN_PAYLOAD),
            qos: 1,
            duration_ms: self.duration.as_secs_f64() * 1000.0,
            messages_per_topic: ((self.duration.as_secs_f64() * f64::from(self.msg_rate.max(1))).round() as usize)
                .max(1),
            pattern: "Open loop: each topic publishes on a fixed schedule (topics staggered evenly), every \
                      PUBLISH written at once without waiting for PUBACK; the payload carries its send time",
            placement: "Publisher and subscriber both in the client namespace, one process, one clock: every \
                        message crosses the impaired link twice (publisher → broker → subscriber)",
            broker_max_inflight: super::hol_mqtt::BROKER_MAX_INFLIGHT,
            late_threshold_ms: 1.5 * self.rtt.as_secs_f64() * 1000.0,
        }
    }

    fn has(&self, w: Workload) -> bool {
        self.workloads.contains(&w)
    }
}

/// The HTTP arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Arm {
    /// HTTP/2, all requests on one connection.
    H2One,
    /// HTTP/3, all requests on one connection.
    H3One,
    /// HTTP/2, one connection per request (`bulk` only).
    H2Many,
    /// HTTP/3, one connection per request (`bulk` only).
    H3Many,
}

impl Arm {
    const ALL: [Arm; 4] = [Arm::H2One, Arm::H3One, Arm::H2Many, Arm::H3Many];

    /// The label in the report and the plots.
    pub fn name(self) -> &'static str {
        match self {
            Arm::H2One => "HTTP/2, 1 connection",
            Arm::H2Many => "HTTP/2, N connections",
            Arm::H3One => "HTTP/3, 1 connection",
            Arm::H3Many => "HTTP/3, N connections",
        }
    }

    fn version(self) -> HttpVersion {
        match self {
            Arm::H2One | Arm::H2Many => HttpVersion::H2,
            Arm::H3One | Arm::H3Many => HttpVersion::H3,
        }
    }

    fn one(self) -> bool {
        matches!(self, Arm::H2One | Arm::H3One)
    }
}

/// Loss as the relay realized it in one direction of one run's timed part.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RealizedLoss {
    /// Every drop (loss model, queue, stale NAT) over the datagrams offered.
    pub all: f64,
    /// Drops of the loss model over its draws (what the configured rate describes).
    pub model: f64,
    /// Datagrams dropped at the full queue.
    pub queue_drops: u64,
    /// Datagrams offered.
    pub offered: u64,
}

impl RealizedLoss {
    fn of(d: &super::link::DirStats) -> RealizedLoss {
        RealizedLoss { all: d.realized_loss, model: d.model_loss, queue_drops: d.dropped_queue, offered: d.offered }
    }
}

/// The stall analysis of one run, summed over its streams.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunStall {
    /// Streams carrying a response.
    pub streams: usize,
    /// Of those, streams with any stall.
    pub stalled_streams: usize,
    /// Sum over streams of their stall time, ms.
    pub stall_ms: f64,
    /// Sum over streams of the stall spent waiting for other streams' bytes, ms.
    pub collateral_stall_ms: f64,
    /// Response bytes in packets the link dropped.
    pub lost_bytes: u64,
    /// Streams none of whose bytes the link dropped.
    pub unlost_streams: usize,
    /// Their stall, summed, ms: head-of-line blocking suffered by streams that lost nothing.
    pub unlost_stall_ms: f64,
    /// Cipher suites that opened the connections' packets.
    pub cipher_suites: Vec<String>,
    /// Packets of the run the analysis could not open or parse.
    pub unreadable_packets: u64,
    /// Datagrams the tap did not keep (its memory bound).
    pub tap_overflow: u64,
}

/// One run of one HTTP arm.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub workload: Workload,
    pub arm: Arm,
    pub loss: f64,
    pub run: usize,
    /// The block's position in the sweep and its link phase.
    pub order: usize,
    pub phase: u32,
    /// Every request.
    pub requests: Vec<RequestRecord>,
    /// Until the last request completed, ms from the start of the timed part.
    pub run_ms: f64,
    /// Realized loss, client → server and server → client.
    pub loss_up: RealizedLoss,
    pub loss_down: RealizedLoss,
    /// Whether the relay released packets within the lateness limit (p99) in both directions.
    pub lateness_ok: bool,
    /// The relay's counters and lateness for the timed part.
    pub link: LinkStats,
    /// The server's view of each connection (`/conn`: TCP_INFO or quinn's statistics).
    pub server_conn: Vec<serde_json::Value>,
    /// Per-stream stall analysis (`--stall`, on by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall: Option<RunStall>,
    /// The span of the block in the link's time, ms (to find it in `--pcap`'s capture).
    pub link_span_ms: (f64, f64),
}

/// One loss point's self-check.
#[derive(Debug, Clone, Serialize)]
pub struct PointCheck {
    pub loss: f64,
    pub check: SelfCheck,
}

/// The configuration as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct HolConfigRecord {
    pub workloads: Vec<Workload>,
    pub loss: Vec<f64>,
    pub rtt_ms: f64,
    pub rate_bps: u64,
    pub runs: usize,
    pub seed: u64,
    /// `cubic`, `newreno` or `bbr`.
    pub congestion: String,
    pub initial_window: InitialWindow,
    /// The initial window given to quinn, bytes (`None`: quinn's default).
    pub quic_initial_window: Option<u64>,
    pub stall_analysis: bool,
    /// Each HTTP workload's shape.
    pub shapes: Vec<(Workload, WorkloadShape)>,
    pub include_handshake: bool,
    pub link: LinkConfig,
    pub transport: TransportRecord,
}

/// The QUIC transport settings both QUIC ends ran with, and HTTP/2's matching windows.
#[derive(Debug, Clone, Serialize)]
pub struct TransportRecord {
    pub stream_window: u64,
    pub conn_window: u64,
    pub max_streams: u32,
    pub tcp_nodelay: bool,
    pub tcp_no_metrics_save: bool,
}

/// Everything `results.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct HolResults {
    pub config: HolConfigRecord,
    /// The self-check of every loss point, before the sweep.
    pub self_checks: Vec<PointCheck>,
    /// What the two stacks ran with, read from the code and the sockets.
    pub stacks: super::stacks::StackFacts,
    /// The blocks in the order they ran.
    pub schedule: Vec<Block>,
    pub runs: Vec<RunResult>,
    pub arms: Vec<ArmSummary>,
    /// Paired comparisons per workload and loss point, each with its generated sentence.
    pub findings: Vec<PointFindings>,
    /// `mqtt`: MQTT/TCP vs MQTT/QUIC one stream vs a stream per topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<super::hol_mqtt::MqttResults>,
    /// `--pcap`: the sweep's capture and the key log that decrypts it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture: Option<super::pcap::CaptureSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_log: Option<std::path::PathBuf>,
    pub versions: report::Versions,
}

/// Run the sweep and write its outputs; the exit status.
pub async fn run_hol(args: HolParams) -> Result<i32, LabError> {
    let args = args.effective();
    let (r, args) = tokio::task::spawn_blocking(move || {
        let r = measure(&args)?;
        write_outputs(&args.out, &r)?;
        Ok::<_, LabError>((r, args))
    })
    .await??;
    for p in &r.findings {
        for f in &p.findings {
            println!("{} {:>5.2}%: {}", p.workload.name(), p.loss * 100.0, f.sentence);
        }
    }
    for f in r.mqtt.iter().flat_map(|m| &m.findings) {
        println!("mqtt: {}", f.sentence);
    }
    println!("results in {}", args.out.display());
    Ok(0)
}

fn sysctl_no_metrics_save() -> std::io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/tcp_no_metrics_save", "1")
}

/// The impairment of one loss point.
fn impairment(base: &Impairment, loss: f64) -> Impairment {
    Impairment { loss: if loss > 0.0 { LossModel::Random { p: loss } } else { LossModel::None }, ..base.clone() }
}

fn set_both(link: &Link, imp: &Impairment) -> Result<(), LabError> {
    link.set_impairment(Direction::Up, imp.clone())?;
    link.set_impairment(Direction::Down, imp.clone())
}

/// How much of the relay's packets one run may keep for the stall analysis (beyond it the tap
/// counts and drops: the analysis then reports the run as incomplete).
const TAP_LIMIT_BYTES: usize = 256 << 20;

/// Build the link, check it at every loss point, run the schedule. Blocking.
pub fn measure(args: &HolParams) -> Result<HolResults, LabError> {
    if args.workloads.is_empty() || args.loss.is_empty() || args.runs == 0 {
        return Err(LabError::Config("lab hol needs at least one workload, one loss rate and one run".into()));
    }
    // Read now, not when the sweep ends: the commit and work-tree state that results.json names
    // must be the ones this binary started from, whatever happens to the tree meanwhile.
    let versions = report::versions();
    let base = Impairment { rate_bps: Some(args.rate), queue: args.queue, ..Impairment::delay(args.rtt / 2) };
    let link = Arc::new(Link::start(LinkConfig::symmetric(base.clone(), args.seed))?);

    // The self-check at every loss point, before anything is measured.
    let mut self_checks = Vec::with_capacity(args.loss.len());
    for &loss in &args.loss {
        let imp = impairment(&base, loss);
        set_both(&link, &imp)?;
        let check = SelfCheck::run(&link, &self_check_options(&imp))?;
        if !check.passed {
            return Err(LabError::SelfCheckFailed(format!("at loss {:.2}%:\n{}", loss * 100.0, check.summary())));
        }
        self_checks.push(PointCheck { loss, check });
    }

    // Linux caches ssthresh per destination and would carry it from one run into the next.
    let metrics = link.run_in_server_ns(sysctl_no_metrics_save)?.is_ok()
        && link.run_in_client_ns(sysctl_no_metrics_save)?.is_ok();
    let tcp_cc = super::stacks::linux_congestion_name(args.cc);
    let refused = |e: String| {
        LabError::Config(format!(
            "TCP_CONGESTION={tcp_cc} does not hold in the lab's namespaces ({e}; see \
             /proc/sys/net/ipv4/tcp_available_congestion_control); choose another --cc"
        ))
    };
    match super::stacks::probe_congestion(&link, tcp_cc) {
        Ok((server, client)) if server == tcp_cc && client == tcp_cc => {}
        Ok((server, client)) => {
            return Err(refused(format!("read back {server} on the server, {client} on the client")))
        }
        Err(e) => return Err(e),
    }
    let quic_initial_window = match args.initial_window {
        InitialWindow::Linux => Some(super::stacks::equalized_initial_window(&link)?),
        InitialWindow::Quinn => None,
    };

    let certs = std::env::temp_dir().join(format!("quiclab-hol-{}", std::process::id()));
    let pcap_dir = args.out.join("pcap");
    let key_log = if args.pcap {
        std::fs::create_dir_all(&pcap_dir)?;
        Some(pcap_dir.join("keys.log"))
    } else if args.stall {
        std::fs::create_dir_all(&certs)?;
        Some(certs.join("keys.log"))
    } else {
        None
    };
    if let Some(path) = &key_log {
        crate::tls::set_key_log_file(path)?;
    }
    let transport = crate::config::TransportConfig {
        congestion: args.cc,
        initial_window: quic_initial_window,
        ..Default::default()
    };
    let max_bytes = args.size.max(1 << 20);
    let (t, mqtt, server_ip) = (transport.clone(), args.has(Workload::Mqtt), link.server_ip());
    let server = LabServer::start_default(&link, &certs, move |cfg| {
        cfg.transport = t;
        cfg.tcp_congestion = Some(tcp_cc.to_string());
        cfg.limits.max_bytes = max_bytes;
        if mqtt {
            cfg.mqtt.enabled = true;
            cfg.mqtt.tcp_listen = Some(super::hol_mqtt::broker_tcp_listen(server_ip.into()));
            cfg.mqtt.tls_listen = None;
            cfg.mqtt.max_inflight = super::hol_mqtt::BROKER_MAX_INFLIGHT;
        }
    })?;
    let (quic, tcp) = (server.quic_addr(), server.tcp_addr());
    let mqtt_target = match server.mqtt().and_then(|m| m.tcp) {
        Some(broker) => Some(super::hol_mqtt::MqttTarget {
            tcp: broker,
            quic,
            server_name: "localhost".into(),
            trust: Trust::CaFile(certs.join("ca.pem")),
            transport: transport.clone(),
            tcp_congestion: tcp_cc.to_string(),
        }),
        None if mqtt => return Err(LabError::Config("the lab server started without its MQTT broker".into())),
        None => None,
    };
    let broker_cc = match &mqtt_target {
        Some(t) => super::hol_mqtt::set_listener_congestion(t.tcp, tcp_cc).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot set the broker's TCP congestion control; it runs the kernel default");
            format!("kernel default (setting {tcp_cc} failed: {e})")
        }),
        None => String::new(),
    };
    let settings = args.mqtt_settings();
    let schedule =
        schedule::plan(&args.workloads, &args.loss, args.runs, super::hol_mqtt::MqttArm::ALL.len(), args.seed);

    let capture_path = pcap_dir.join("sweep.pcap");
    if args.pcap {
        link.start_capture(&capture_path)?;
    }
    let steps: usize = schedule.iter().map(|b| b.arms.len() + b.mqtt_arms.len()).sum();
    let progress = report::progress(steps as u64, "hol");
    let (a, l, pb, sched) = (args.clone(), link.clone(), progress.clone(), schedule.clone());
    let (ca, keys, mt, ms) = (certs.join("ca.pem"), key_log.clone(), mqtt_target.clone(), settings.clone());
    let (client_transport, base2) = (transport.clone(), base.clone());
    type Out = (Vec<RunResult>, Vec<super::hol_mqtt::MqttRunResult>);
    let thread = link.spawn_in_client_ns("lab-hol", move || -> Result<Out, LabError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let opts = ClientOptions {
                trust: Trust::CaFile(ca),
                transport: client_transport,
                tcp_congestion: Some(tcp_cc.to_string()),
                ..Default::default()
            };
            let env = RunEnv { link: &l, opts: &opts, quic, tcp, params: &a, key_log: keys.as_deref() };
            let (mut out, mut mqtt_out) = (Vec::new(), Vec::new());
            let mut current: Option<usize> = None;
            for block in &sched {
                if current != Some(block.loss_index) {
                    set_both(&l, &impairment(&base2, block.loss))?;
                    current = Some(block.loss_index);
                }
                for &arm in &block.arms {
                    out.push(env.http_run(block, arm).await?);
                    pb.inc(1);
                }
                if let Some(t) = &mt {
                    for &i in &block.mqtt_arms {
                        let arm = super::hol_mqtt::MqttArm::ALL[i];
                        let r = super::hol_mqtt::one_run(&l, t, &ms, arm, block.loss, block.run, block.phase).await?;
                        mqtt_out.push(r);
                        pb.inc(1);
                    }
                }
            }
            Ok::<_, LabError>((out, mqtt_out))
        })
    })?;
    let joined = thread.join();
    if key_log.is_some() && !args.pcap {
        crate::tls::clear_key_log_file();
    }
    let (runs, mqtt_runs) = joined?;
    let capture = link.stop_capture();
    progress.finish_and_clear();
    drop(server);
    let _ = std::fs::remove_dir_all(&certs);

    let arms = analysis::summarize(&runs, args);
    let findings = analysis::findings(&runs, args);
    // The stacks as they ran: the server's account of one HTTP/2 and one HTTP/3 connection.
    let sample: Vec<serde_json::Value> = [Arm::H2One, Arm::H3One]
        .iter()
        .filter_map(|&arm| runs.iter().find(|r| r.arm == arm).and_then(|r| r.server_conn.first().cloned()))
        .collect();
    let stacks = super::stacks::read(&link, args.cc, &transport, &sample)?;
    Ok(HolResults {
        config: HolConfigRecord {
            workloads: args.workloads.clone(),
            loss: args.loss.clone(),
            rtt_ms: args.rtt.as_secs_f64() * 1000.0,
            rate_bps: args.rate,
            runs: args.runs,
            seed: args.seed,
            congestion: args.cc.to_string(),
            initial_window: args.initial_window,
            quic_initial_window,
            stall_analysis: args.stall,
            shapes: args.workloads.iter().filter(|w| **w != Workload::Mqtt).map(|&w| (w, args.shape(w))).collect(),
            include_handshake: args.include_handshake,
            link: link.config(),
            transport: TransportRecord {
                stream_window: transport.stream_window,
                conn_window: transport.conn_window,
                max_streams: transport.max_streams,
                tcp_nodelay: true,
                tcp_no_metrics_save: metrics,
            },
        },
        self_checks,
        stacks,
        schedule,
        runs,
        arms,
        findings,
        mqtt: mqtt_target.map(|t| {
            let client_cc = mqtt_runs
                .iter()
                .find(|r| r.arm == super::hol_mqtt::MqttArm::Tcp)
                .map_or_else(|| format!("{} (asked; no run)", t.tcp_congestion), |r| r.congestion.clone());
            let quic_cc = args.cc.to_string();
            mqtt_results(mqtt_runs, settings, &args.loss, args.seed, &client_cc, &broker_cc, &quic_cc, &transport)
        }),
        capture,
        key_log: if args.pcap { key_log } else { None },
        versions,
    })
}

/// The self-check options for one loss point.
fn self_check_options(imp: &Impairment) -> SelfCheckOptions {
    SelfCheckOptions::for_impairment(imp)
}

/// What every HTTP run of a sweep shares.
struct RunEnv<'a> {
    link: &'a Link,
    opts: &'a ClientOptions,
    quic: SocketAddr,
    tcp: SocketAddr,
    params: &'a HolParams,
    key_log: Option<&'a std::path::Path>,
}

impl RunEnv<'_> {
    /// One run of one HTTP arm: connect outside the timed part (on the block's set-up stream),
    /// run the workload on the block's paired stream, then ask the server about each connection
    /// and analyze the relay's packets.
    async fn http_run(&self, block: &Block, arm: Arm) -> Result<RunResult, LabError> {
        let (link, a) = (self.link, self.params);
        let addr = if arm.version() == HttpVersion::H3 { self.quic } else { self.tcp };
        let uri: http::Uri = format!("https://localhost:{}/", addr.port()).parse().map_err(std::io::Error::other)?;
        let target = Target { host: "localhost".into(), port: addr.port(), uri, addr: Some(addr) };
        let shape = a.shape(block.workload);
        let n_conns = if arm.one() { 1 } else { shape.requests };
        let handshake_timed = a.include_handshake && block.workload == Workload::Bulk;
        if a.stall {
            link.start_tap(TAP_LIMIT_BYTES);
        }
        let span_start = link.elapsed();
        link.begin_phase(block.phase | schedule::SETUP_PHASE);
        let client = Client::new(arm.version(), self.opts)?;
        let mut conns = Vec::with_capacity(n_conns);
        if handshake_timed {
            link.begin_phase(block.phase);
        }
        let t0 = Instant::now();
        for _ in 0..n_conns {
            conns.push(Arc::new(client.connect(&target).await?));
        }
        if !handshake_timed {
            workload::warm_up(&conns, &target).await?;
            link.begin_phase(block.phase);
        }
        let t0 = if handshake_timed { t0 } else { Instant::now() };
        let timed_start_ms = link.elapsed().as_secs_f64() * 1000.0;
        let mut requests = workload::run(block.workload, &shape, &conns, &target, t0).await?;
        let run_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let stats = link.stats();

        // The server's own account of each connection.
        let conn_uri: http::Uri =
            format!("https://localhost:{}/conn", addr.port()).parse().map_err(std::io::Error::other)?;
        let conn_target = Target { uri: conn_uri, ..target.clone() };
        let mut server_conn = Vec::new();
        for c in &conns {
            let req = client::request(&conn_target, http::Method::GET, Bytes::new())?;
            if let Ok(resp) = c.send(req).await {
                if let Ok(b) = resp.into_body().collect().await {
                    server_conn.push(serde_json::from_slice(&b.to_bytes()).unwrap_or_default());
                }
            }
        }
        for c in conns {
            if let Ok(c) = Arc::try_unwrap(c) {
                c.close().await;
            }
        }
        let span_end = link.elapsed();
        let stall = if a.stall {
            let tap = link.take_tap();
            let span = (timed_start_ms, timed_start_ms + run_ms);
            Some(analyze_stall(&tap, self.key_log, link, span, &mut requests))
        } else {
            None
        };
        let lateness_ok = lateness_ok(&stats);
        Ok(RunResult {
            workload: block.workload,
            arm,
            loss: block.loss,
            run: block.run,
            order: block.order,
            phase: block.phase,
            requests,
            run_ms,
            loss_up: RealizedLoss::of(&stats.up),
            loss_down: RealizedLoss::of(&stats.down),
            lateness_ok,
            link: stats,
            server_conn,
            stall,
            link_span_ms: (span_start.as_secs_f64() * 1000.0, span_end.as_secs_f64() * 1000.0),
        })
    }
}

fn lateness_ok(s: &LinkStats) -> bool {
    s.lateness_ok()
}

/// The stall analysis of a run's packets, summed over the streams whose responses arrived in
/// the timed part (the `/conn` requests after it are left out).
fn analyze_stall(
    tap: &super::tap::Tap,
    key_log: Option<&std::path::Path>,
    link: &Link,
    (timed_start_ms, timed_end_ms): (f64, f64),
    _requests: &mut [RequestRecord],
) -> RunStall {
    let text = key_log.and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
    let keys = super::stall::KeyLog::parse(&text);
    let a = super::stall::analyze(&tap.packets, &keys, link.server_ip());
    let mut out = RunStall { tap_overflow: tap.overflow, ..Default::default() };
    let mut suites = std::collections::BTreeSet::new();
    for c in &a.connections {
        if let Some(cs) = c.cipher_suite {
            suites.insert(cs.to_string());
        }
        out.unreadable_packets += c.undecryptable + c.frame_errors;
        // Request streams only: client-initiated bidirectional QUIC streams (id % 4 == 0: not
        // HTTP/3's control and QPACK streams), odd HTTP/2 streams (not the connection's stream 0).
        let request = |id: u64| {
            if c.protocol == super::stall::Protocol::H3 {
                id.is_multiple_of(4)
            } else {
                !id.is_multiple_of(2)
            }
        };
        for st in c.streams.iter().filter(|st| request(st.id)) {
            let in_timed = |t: f64| t >= timed_start_ms && t <= timed_end_ms;
            if st.delivered_bytes == 0 || !st.first_arrival_ms.is_some_and(in_timed) {
                continue;
            }
            out.streams += 1;
            out.stall_ms += st.stall_ms;
            out.collateral_stall_ms += st.collateral_stall_ms;
            out.lost_bytes += st.lost_bytes;
            if st.stall_ms > 0.0 {
                out.stalled_streams += 1;
            }
            if st.lost_bytes == 0 {
                out.unlost_streams += 1;
                out.unlost_stall_ms += st.stall_ms;
            }
        }
    }
    out.cipher_suites = suites.into_iter().collect();
    out
}

#[allow(clippy::too_many_arguments)]
fn mqtt_results(
    runs: Vec<super::hol_mqtt::MqttRunResult>,
    settings: super::hol_mqtt::MqttSettings,
    losses: &[f64],
    seed: u64,
    client_cc: &str,
    broker_cc: &str,
    quic_cc: &str,
    transport: &crate::config::TransportConfig,
) -> super::hol_mqtt::MqttResults {
    super::hol_mqtt::MqttResults {
        fairness: super::hol_mqtt::MqttFairness {
            remaining_differences: super::hol_mqtt::remaining_differences(client_cc, broker_cc, quic_cc),
            quic_congestion: quic_cc.to_string(),
            tcp_congestion_client: client_cc.to_string(),
            tcp_congestion_broker: broker_cc.to_string(),
            tcp_nodelay: true,
            stream_window: transport.stream_window,
            conn_window: transport.conn_window,
        },
        arms: super::hol_mqtt::summarize(&runs, &settings, losses, seed),
        findings: super::hol_mqtt::findings(&runs, seed),
        runs,
        settings,
    }
}

/// Parameters for unit tests: the `--quick` shape with every field set.
#[cfg(test)]
pub(crate) fn tests_params() -> HolParams {
    HolParams {
        workloads: vec![Workload::Small],
        loss: vec![0.0],
        rtt: Duration::from_millis(50),
        rate: 10_000_000,
        queue: None,
        runs: 3,
        cc: Congestion::Cubic,
        initial_window: InitialWindow::Linux,
        stall: true,
        small_requests: 100,
        small_size: 4096,
        small_rounds: 3,
        sequential_requests: 30,
        sequential_size: 4096,
        page_loads: 2,
        requests: 20,
        size: 100_000,
        include_handshake: false,
        quick: false,
        out: std::path::PathBuf::from("unused"),
        seed: 1,
        pcap: false,
        topics: 8,
        msg_rate: 50,
        payload: 100,
        duration: Duration::from_secs(5),
    }
}
