//! `quiclab lab hol`: head-of-line blocking under loss, HTTP/2 over TLS/TCP vs HTTP/3 over QUIC.
//!
//! N concurrent requests of S bytes on ONE connection, across a sweep of loss rates at a given
//! RTT and rate, R runs per point. A lost TCP segment holds back every HTTP/2 stream behind it
//! until it is retransmitted; a lost QUIC packet holds back only the streams whose data it
//! carried. Control arms separate that from differences in loss recovery: the same N requests
//! over N connections, one request each, for both protocols. Per protocol, one-connection minus
//! N-connection completion time is the cost of sharing a connection; the difference of the two,
//! (H2₁ − H2ₙ) − (H3₁ − H3ₙ), cancels what N congestion windows do and leaves head-of-line
//! blocking.
//!
//! Fairness: Cubic on both sides (TCP_CONGESTION per socket; NewReno on both if Cubic cannot be
//! set, and the report says which ran), equal flow-control windows (HTTP/2's follow QUIC's),
//! one cipher-suite order, the same site code, TCP_NODELAY, `net.ipv4.tcp_no_metrics_save=1`
//! in both namespaces, and paired seeds: run r of every arm at a loss point replays random
//! stream r of the link. TCP and QUIC send different packets, so the realized loss of every
//! run is measured and reported, not assumed.
//!
//! `--mqtt` adds the same question for MQTT across topics, MQTT/TCP vs MQTT/QUIC with a stream per
//! topic, on the same link, sweep and paired seeds ([`super::hol_mqtt`]); its results go under
//! `mqtt` in `results.json` and in their own section of `report.md`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Serialize;

use super::impair::Direction;
use super::impair::LossModel;
use super::link::{Impairment, Link, LinkConfig, LinkStats};
use super::report::{self, Series};
use super::selfcheck::{SelfCheck, SelfCheckOptions};
use super::server::LabServer;
use super::LabError;
use crate::client::{self, Client, ClientOptions, HttpConnection, HttpVersion, Target};
use crate::config::Congestion;
use crate::tls::Trust;

/// What `quiclab lab hol` runs with (the binary fills it from its command line).
#[derive(Debug, Clone)]
pub struct HolParams {
    /// Concurrent requests per run (N).
    pub requests: usize,
    /// Size of each response (S).
    pub size: u64,
    /// Loss rates to sweep, per direction, comma-separated (`0,1%,2%`).
    pub loss: Vec<f64>,
    /// Round-trip time of the link (half each way).
    pub rtt: Duration,
    /// Bottleneck rate each way.
    pub rate: u64,
    /// Runs per loss rate (each arm, paired seeds).
    pub runs: usize,
    /// Count connection set-up in the timed part.
    pub include_handshake: bool,
    /// A short preset that finishes in under two minutes: loss 0 and 2%, 3 runs, 8 × 64 KiB,
    /// 40 ms, 20 Mbit/s.
    pub quick: bool,
    /// Results folder (created if missing).
    pub out: std::path::PathBuf,
    /// Seed of the link's random streams.
    pub seed: u64,
    /// Also compare MQTT over TCP with MQTT over QUIC (one data stream per topic): K topics from
    /// one publisher to one subscriber through the broker, same sweep, paired seeds.
    pub mqtt: bool,
    /// Run only the MQTT arms (implies `--mqtt`).
    pub mqtt_only: bool,
    /// Capture the relay's traffic, one pcap per loss rate (`OUT/pcap/loss-2.00pct.pcap`, packets the
    /// relay dropped in `*.dropped.pcap`), and write the TLS key log to `OUT/pcap/keys.log`, so
    /// Wireshark or tshark decrypts HTTP/2, HTTP/3 and MQTT over QUIC.
    pub pcap: bool,
    /// `--mqtt`: topics (K), each on its own QUIC stream.
    pub topics: usize,
    /// `--mqtt`: messages per second per topic (QoS 1, pipelined).
    pub msg_rate: u32,
    /// `--mqtt`: payload bytes per message (at least 14: send time, sequence, topic).
    pub payload: usize,
    /// `--mqtt`: how long the publisher publishes per run (`--quick`: 3 s). 5 s × 8 topics × 50
    /// msg/s = 2,000 messages per run keeps the default sweep with `--mqtt` under 30 minutes.
    pub duration: Duration,
}

impl HolParams {
    /// The arguments after applying `--quick`.
    pub fn effective(&self) -> HolParams {
        let mut a = self.clone();
        if a.quick {
            a.loss = vec![0.0, 0.02];
            a.runs = 3;
            a.requests = 8;
            a.size = 64 << 10;
            a.rtt = Duration::from_millis(40);
            a.rate = 20_000_000;
            a.duration = Duration::from_secs(3);
        }
        a.mqtt |= a.mqtt_only;
        a
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
}

/// The four arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Arm {
    /// HTTP/2, all requests on one connection.
    H2One,
    /// HTTP/2, one connection per request.
    H2Many,
    /// HTTP/3, all requests on one connection.
    H3One,
    /// HTTP/3, one connection per request.
    H3Many,
}

impl Arm {
    const ALL: [Arm; 4] = [Arm::H2One, Arm::H3One, Arm::H2Many, Arm::H3Many];
    fn name(self) -> &'static str {
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

/// One run of one arm.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub arm: Arm,
    pub loss: f64,
    pub run: usize,
    /// Completion time of each request, ms from the start of the timed part.
    pub request_ms: Vec<f64>,
    /// Time until the last request completed, ms.
    pub run_ms: f64,
    /// Realized loss (dropped / drawn), client → server and server → client.
    pub realized_loss_up: f64,
    pub realized_loss_down: f64,
    /// The relay's counters and lateness for the timed part.
    pub link: LinkStats,
    /// The server's view of each connection (`/conn`: TCP_INFO or quinn's statistics).
    pub server_conn: Vec<serde_json::Value>,
}

/// Summary of one arm at one loss rate.
#[derive(Debug, Clone, Serialize)]
pub struct ArmSummary {
    pub arm: Arm,
    pub loss: f64,
    pub run_ms: report::Ci,
    pub request_p50_ms: f64,
    pub request_p99_ms: f64,
    pub realized_loss_up: f64,
    pub realized_loss_down: f64,
}

/// Head-of-line effect at one loss rate.
#[derive(Debug, Clone, Serialize)]
pub struct HolSummary {
    pub loss: f64,
    /// H2₁ − H2ₙ, median run time, ms.
    pub h2_sharing_cost_ms: f64,
    /// H3₁ − H3ₙ, median run time, ms.
    pub h3_sharing_cost_ms: f64,
    /// (H2₁ − H2ₙ) − (H3₁ − H3ₙ), ms.
    pub hol_ms: f64,
}

/// Everything `results.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct HolResults {
    pub config: HolConfigRecord,
    pub fairness: Fairness,
    pub self_check: String,
    pub runs: Vec<RunResult>,
    pub arms: Vec<ArmSummary>,
    pub hol: Vec<HolSummary>,
    /// `--mqtt`: MQTT/TCP vs MQTT/QUIC with a stream per topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<super::hol_mqtt::MqttResults>,
    /// `--pcap`: one capture per loss rate, and the key log that decrypts them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub captures: Vec<super::pcap::CaptureSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_log: Option<std::path::PathBuf>,
    pub versions: report::Versions,
}

/// The configuration as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct HolConfigRecord {
    pub requests: usize,
    pub size: u64,
    pub loss: Vec<f64>,
    pub rtt_ms: f64,
    pub rate_bps: u64,
    pub runs: usize,
    pub include_handshake: bool,
    pub seed: u64,
    pub link: LinkConfig,
}

/// The settings that make the comparison fair, and the differences that remain.
#[derive(Debug, Clone, Serialize)]
pub struct Fairness {
    /// The congestion controller both sides ran (`cubic`, or `reno` as the fallback).
    pub congestion: String,
    pub stream_window: u64,
    pub conn_window: u64,
    pub max_streams: u32,
    pub tcp_nodelay: bool,
    pub tcp_no_metrics_save: bool,
    pub cipher_suites: &'static str,
    /// Differences no setting removes.
    pub remaining_differences: Vec<&'static str>,
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
    for a in r.mqtt.iter().flat_map(|m| &m.arms) {
        println!(
            "loss {:>5.2}%: {:<28} p50 {:>6.1} ms, p90 {:>6.1} ms, p99 {:>6.1} ms, max {:>6.1} ms, late {:>5.1}%, lost {} of {}",
            a.loss * 100.0,
            a.arm.name(),
            a.latency.p50,
            a.latency.p90,
            a.latency.p99,
            a.latency.max,
            a.late_fraction * 100.0,
            a.lost,
            a.sent
        );
    }
    for h in &r.hol {
        println!(
            "loss {:>5.2}%: H2₁−H2ₙ {:>8.1} ms, H3₁−H3ₙ {:>8.1} ms, head-of-line (difference) {:>8.1} ms",
            h.loss * 100.0,
            h.h2_sharing_cost_ms,
            h.h3_sharing_cost_ms,
            h.hol_ms
        );
    }
    println!("results in {}", args.out.display());
    Ok(0)
}

fn sysctl_no_metrics_save() -> std::io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/tcp_no_metrics_save", "1")
}

/// `--pcap`: where the captures and the key log are, and how to read them.
fn captures_section(r: &HolResults) -> String {
    let Some(keys) = &r.key_log else { return String::new() };
    let mut md = String::from("\n## Packet captures\n\n");
    for c in &r.captures {
        md += &format!("- {}\n", c.describe());
    }
    md += &format!(
        "\nDecrypt with the key log: `tshark -r pcap/loss-2.00pct.pcap -o tls.keylog_file:{} -Y 'http2 or http3'`.\n",
        keys.display()
    );
    md
}

/// Build the link, run every arm at every loss rate. Blocking.
pub fn measure(args: &HolParams) -> Result<HolResults, LabError> {
    let base = Impairment { rate_bps: Some(args.rate), ..Impairment::delay(args.rtt / 2) };
    let link = Arc::new(Link::start(LinkConfig::symmetric(base.clone(), args.seed))?);
    let check = SelfCheck::run(&link, &SelfCheckOptions { probes: 200, ..Default::default() })?;
    if !check.passed {
        return Err(LabError::SelfCheckFailed(check.summary()));
    }
    // Linux caches ssthresh per destination and would carry it from one run into the next.
    let metrics = link.run_in_server_ns(sysctl_no_metrics_save)?.is_ok()
        && link.run_in_client_ns(sysctl_no_metrics_save)?.is_ok();

    // Cubic on both sides, if the kernel lets us set it; else NewReno (Linux "reno") on both.
    let tcp_cc = if link.run_in_client_ns(|| probe_congestion("cubic"))? { "cubic" } else { "reno" };
    let quic_cc = if tcp_cc == "cubic" { Congestion::Cubic } else { Congestion::NewReno };

    let certs = std::env::temp_dir().join(format!("quiclab-hol-{}", std::process::id()));
    // --pcap: the TLS secrets of every connection of the sweep, server's and clients'.
    let pcap_dir = args.out.join("pcap");
    let key_log = if args.pcap {
        std::fs::create_dir_all(&pcap_dir)?;
        let path = pcap_dir.join("keys.log");
        crate::tls::set_key_log_file(&path)?;
        Some(path)
    } else {
        None
    };
    let transport = crate::config::TransportConfig { congestion: quic_cc, ..Default::default() };
    let (t, max_bytes) = (transport.clone(), args.size.max(1 << 20));
    let (mqtt, server_ip) = (args.mqtt, link.server_ip());
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
            transport: crate::config::TransportConfig { congestion: quic_cc, ..transport.clone() },
            tcp_congestion: tcp_cc.to_string(),
        }),
        None if args.mqtt => return Err(LabError::Config("the lab server started without its MQTT broker".into())),
        None => None,
    };
    // MQTT/TCP: the broker's listener gets the same controller; its accepted sockets inherit it.
    let broker_cc = match &mqtt_target {
        Some(t) => super::hol_mqtt::set_listener_congestion(t.tcp, tcp_cc).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot set the broker's TCP congestion control; it runs the kernel default");
            format!("kernel default (setting {tcp_cc} failed: {e})")
        }),
        None => String::new(),
    };
    let settings = args.mqtt_settings();

    let a = args.clone();
    let l = link.clone();
    let ca = certs.join("ca.pem");
    let arms_per_run = if args.mqtt_only { 0 } else { Arm::ALL.len() }
        + if args.mqtt { super::hol_mqtt::MqttArm::ALL.len() } else { 0 };
    let progress = report::progress((args.loss.len() * args.runs * arms_per_run) as u64, "hol");
    let pb = progress.clone();
    let (mt, ms) = (mqtt_target.clone(), settings.clone());
    let pcap = args.pcap.then(|| pcap_dir.clone());
    type Out = (Vec<RunResult>, Vec<super::hol_mqtt::MqttRunResult>, Vec<super::pcap::CaptureSummary>);
    let thread = link.spawn_in_client_ns("lab-hol", move || -> Result<Out, LabError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let opts = ClientOptions {
                trust: Trust::CaFile(ca),
                transport: crate::config::TransportConfig { congestion: quic_cc, ..transport },
                tcp_congestion: Some(tcp_cc.to_string()),
                ..Default::default()
            };
            let (mut out, mut mqtt_out, mut captures) = (Vec::new(), Vec::new(), Vec::new());
            for (li, &loss) in a.loss.iter().enumerate() {
                let imp = Impairment {
                    loss: if loss > 0.0 { LossModel::Random { p: loss } } else { LossModel::None },
                    ..base.clone()
                };
                l.set_impairment(Direction::Up, imp.clone())?;
                l.set_impairment(Direction::Down, imp)?;
                if let Some(dir) = &pcap {
                    l.start_capture(&dir.join(format!("loss-{:.2}pct.pcap", loss * 100.0)))?;
                }
                for run in 0..a.runs {
                    for arm in Arm::ALL.into_iter().filter(|_| !a.mqtt_only) {
                        out.push(one_run(&l, &opts, arm, loss, run, &a, quic, tcp).await?);
                        pb.inc(1);
                    }
                    if let Some(t) = &mt {
                        // Placeholder until the lead's scheduler: rotate the MQTT arms' order per run;
                        // one link random stream per (loss, run), below hol_mqtt::SETUP_PHASE_BIT.
                        let mut arms = super::hol_mqtt::MqttArm::ALL;
                        arms.rotate_left(run % super::hol_mqtt::MqttArm::ALL.len());
                        let phase = 0x100 + (li * a.runs + run) as u32;
                        for arm in arms {
                            mqtt_out.push(super::hol_mqtt::one_run(&l, t, &ms, arm, loss, run, phase).await?);
                            pb.inc(1);
                        }
                    }
                }
                captures.extend(l.stop_capture());
            }
            Ok((out, mqtt_out, captures))
        })
    })?;
    let joined = thread.join();
    if key_log.is_some() {
        crate::tls::clear_key_log_file();
    }
    let (runs, mqtt_runs, captures) = joined?;
    progress.finish_and_clear();
    drop(server);

    let arms = summarize(&runs, args);
    let hol = args
        .loss
        .iter()
        .filter(|_| !args.mqtt_only)
        .map(|&loss| {
            let med = |arm| {
                arms.iter().find(|s| s.arm == arm && s.loss == loss).map(|s| s.run_ms.estimate).unwrap_or(f64::NAN)
            };
            let h2 = med(Arm::H2One) - med(Arm::H2Many);
            let h3 = med(Arm::H3One) - med(Arm::H3Many);
            HolSummary { loss, h2_sharing_cost_ms: h2, h3_sharing_cost_ms: h3, hol_ms: h2 - h3 }
        })
        .collect();
    Ok(HolResults {
        config: HolConfigRecord {
            requests: args.requests,
            size: args.size,
            loss: args.loss.clone(),
            rtt_ms: args.rtt.as_secs_f64() * 1000.0,
            rate_bps: args.rate,
            runs: args.runs,
            include_handshake: args.include_handshake,
            seed: args.seed,
            link: link.config(),
        },
        fairness: Fairness {
            congestion: tcp_cc.to_string(),
            stream_window: transport.stream_window,
            conn_window: transport.conn_window,
            max_streams: transport.max_streams,
            tcp_nodelay: true,
            tcp_no_metrics_save: metrics,
            cipher_suites: "rustls (ring) default order on both: TLS13_AES_256_GCM_SHA384 first",
            remaining_differences: vec![
                "initial window: Linux TCP starts at 10 segments; quinn at 14,720 bytes (about 10 × 1,472-byte datagrams)",
                "pacing: quinn paces every connection; Linux paces TCP only with the fq qdisc or BBR (absent: the lab's devices use the default qdisc)",
                "ACK policy: Linux delayed ACKs (up to 40 ms, quick-ack heuristics); QUIC ACKs every second ack-eliciting packet, max_ack_delay 25 ms",
                "loss detection: TCP RACK-TLP and SACK in the kernel; QUIC packet and time thresholds (RFC 9002) in quinn",
                "framing: TLS records over TCP vs QUIC packets with AEAD per packet; HTTP/2 and HTTP/3 frame and header compression differ",
            ],
        },
        self_check: check.summary(),
        runs,
        arms,
        hol,
        mqtt: mqtt_target.map(|t| {
            let client_cc = mqtt_runs
                .iter()
                .find(|r| r.arm == super::hol_mqtt::MqttArm::Tcp)
                .map_or_else(|| format!("{} (asked; no run)", t.tcp_congestion), |r| r.congestion.clone());
            let quic_cc = format!("{quic_cc:?}").to_lowercase();
            super::hol_mqtt::MqttResults {
                fairness: super::hol_mqtt::MqttFairness {
                    remaining_differences: super::hol_mqtt::remaining_differences(&client_cc, &broker_cc, &quic_cc),
                    quic_congestion: quic_cc,
                    tcp_congestion_client: client_cc,
                    tcp_congestion_broker: broker_cc.clone(),
                    tcp_nodelay: true,
                    stream_window: transport.stream_window,
                    conn_window: transport.conn_window,
                },
                arms: super::hol_mqtt::summarize(&mqtt_runs, &settings, &args.loss, args.seed),
                findings: super::hol_mqtt::findings(&mqtt_runs, args.seed),
                runs: mqtt_runs,
                settings,
            }
        }),
        captures,
        key_log,
        versions: report::versions(),
    })
}

/// Can this namespace set TCP_CONGESTION=`name`?
fn probe_congestion(name: &str) -> bool {
    use std::os::fd::AsRawFd;
    match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(l) => crate::tcp::set_congestion(l.as_raw_fd(), name).is_ok(),
        Err(_) => false,
    }
}

#[allow(clippy::too_many_arguments)]
async fn one_run(
    link: &Link,
    opts: &ClientOptions,
    arm: Arm,
    loss: f64,
    run: usize,
    a: &HolParams,
    quic: SocketAddr,
    tcp: SocketAddr,
) -> Result<RunResult, LabError> {
    let addr = if arm.version() == HttpVersion::H3 { quic } else { tcp };
    let path = format!("/bytes/{}", a.size);
    let uri: http::Uri = format!("https://localhost:{}{path}", addr.port()).parse().map_err(std::io::Error::other)?;
    let target = Target { host: "localhost".into(), port: addr.port(), uri, addr: Some(addr) };
    let n_conns = if arm.one() { 1 } else { a.requests };
    // Paired seeds: every arm of run `run` replays the same random stream (phase = run + 10,
    // clear of the self-check's phases). Connection set-up outside the timed part gets its own.
    link.begin_phase(1000 + run as u32);
    let client = Client::new(arm.version(), opts)?;
    let mut conns = Vec::with_capacity(n_conns);
    let start = Instant::now();
    if !a.include_handshake {
        for _ in 0..n_conns {
            conns.push(Arc::new(client.connect(&target).await?));
        }
        link.begin_phase(10 + run as u32);
    } else {
        link.begin_phase(10 + run as u32);
    }
    let start = if a.include_handshake { start } else { Instant::now() };
    let mut tasks = Vec::with_capacity(a.requests);
    for i in 0..a.requests {
        let conn = if a.include_handshake { None } else { Some(conns[if arm.one() { 0 } else { i }].clone()) };
        let (client_ref, target) = (&client, target.clone());
        tasks.push(async move {
            let conn: Arc<HttpConnection> = match conn {
                Some(c) => c,
                None => Arc::new(client_ref.connect(&target).await?),
            };
            let req = client::request(&target, http::Method::GET, Bytes::new())?;
            let body = conn.send(req).await?.into_body().collect().await.map_err(client::ClientError::Body)?;
            Ok::<_, client::ClientError>((start.elapsed().as_secs_f64() * 1000.0, body.to_bytes().len(), conn))
        });
    }
    let results = futures_util::future::join_all(tasks).await;
    let run_ms = start.elapsed().as_secs_f64() * 1000.0;
    let stats = link.stats();
    let mut request_ms = Vec::with_capacity(results.len());
    let mut used = Vec::new();
    for r in results {
        let (ms, len, conn) = r?;
        if len as u64 != a.size {
            return Err(LabError::Experiment(format!("short body: {len} of {}", a.size)));
        }
        request_ms.push(ms);
        if a.include_handshake && (!arm.one() || used.is_empty()) {
            used.push(conn);
        }
    }
    if !a.include_handshake {
        used = conns;
    }
    // The server's own account of each connection.
    let conn_uri: http::Uri =
        format!("https://localhost:{}/conn", addr.port()).parse().map_err(std::io::Error::other)?;
    let conn_target = Target { uri: conn_uri, ..target.clone() };
    let mut server_conn = Vec::new();
    for c in used.iter().take(if arm.one() { 1 } else { a.requests }) {
        let req = client::request(&conn_target, http::Method::GET, Bytes::new())?;
        if let Ok(resp) = c.send(req).await {
            if let Ok(b) = resp.into_body().collect().await {
                server_conn.push(serde_json::from_slice(&b.to_bytes()).unwrap_or_default());
            }
        }
    }
    for c in used {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.close().await;
        }
    }
    Ok(RunResult {
        arm,
        loss,
        run,
        request_ms,
        run_ms,
        realized_loss_up: stats.up.realized_loss,
        realized_loss_down: stats.down.realized_loss,
        link: stats,
        server_conn,
    })
}

fn summarize(runs: &[RunResult], a: &HolParams) -> Vec<ArmSummary> {
    let mut out = Vec::new();
    for &loss in &a.loss {
        for arm in Arm::ALL {
            let rs: Vec<&RunResult> = runs.iter().filter(|r| r.arm == arm && r.loss == loss).collect();
            if rs.is_empty() {
                continue;
            }
            let per_run: Vec<Vec<f64>> = rs.iter().map(|r| vec![r.run_ms]).collect();
            let run_ms = report::bootstrap_ci(&per_run, report::median, 0.95, 2000, a.seed);
            let all: Vec<f64> = rs.iter().flat_map(|r| r.request_ms.iter().copied()).collect();
            let p = report::Percentiles::of(&all);
            out.push(ArmSummary {
                arm,
                loss,
                run_ms,
                request_p50_ms: p.p50,
                request_p99_ms: p.p99,
                realized_loss_up: report::mean(&rs.iter().map(|r| r.realized_loss_up).collect::<Vec<_>>()),
                realized_loss_down: report::mean(&rs.iter().map(|r| r.realized_loss_down).collect::<Vec<_>>()),
            });
        }
    }
    out
}

/// Write `results.json`, `report.md` and the SVG plots.
pub fn write_outputs(out: &std::path::Path, r: &HolResults) -> Result<(), LabError> {
    let dir = report::ResultsDir::create(out)?;
    dir.write_json(r)?;
    let c = &r.config;
    if r.runs.is_empty() {
        // `--mqtt-only`: no HTTP arms ran.
        let mut md = format!(
            "# Head-of-line blocking under loss: MQTT only\n\nRTT {:.0} ms; {} bit/s each way; {} runs per point \
             (paired seeds); loss {:?}.\n",
            c.rtt_ms, c.rate_bps, c.runs, c.loss
        );
        if let Some(m) = &r.mqtt {
            super::hol_mqtt::write_section(&dir, m, &c.loss, &mut md)?;
        }
        md += &format!("\nLink self-check:\n\n```\n{}```\n", r.self_check);
        md += &captures_section(r);
        dir.write_markdown(&md)?;
        return Ok(());
    }
    let mut md = format!(
        "# Head-of-line blocking: HTTP/2 vs HTTP/3 under loss\n\n{} concurrent requests of {} bytes; RTT {:.0} ms; \
         {} bit/s each way; {} runs per point (paired seeds); handshake {} the timed part.\n\n",
        c.requests,
        c.size,
        c.rtt_ms,
        c.rate_bps,
        c.runs,
        if c.include_handshake { "inside" } else { "outside" }
    );
    md += "## Run completion time (median of runs, 95% bootstrap CI over runs)\n\n";
    let rows: Vec<Vec<String>> = r
        .arms
        .iter()
        .map(|s| {
            vec![
                format!("{:.2}%", s.loss * 100.0),
                s.arm.name().to_string(),
                format!("{:.1} [{:.1}, {:.1}]", s.run_ms.estimate, s.run_ms.lo, s.run_ms.hi),
                format!("{:.1}", s.request_p50_ms),
                format!("{:.1}", s.request_p99_ms),
                format!("{:.2}% / {:.2}%", s.realized_loss_up * 100.0, s.realized_loss_down * 100.0),
            ]
        })
        .collect();
    md += &report::md_table(
        &["loss", "arm", "run time ms [CI]", "request p50 ms", "request p99 ms", "realized loss up / down"],
        &rows,
    );
    md += "\n## Head-of-line blocking, separated from loss recovery\n\n";
    let rows: Vec<Vec<String>> = r
        .hol
        .iter()
        .map(|h| {
            vec![
                format!("{:.2}%", h.loss * 100.0),
                format!("{:.1}", h.h2_sharing_cost_ms),
                format!("{:.1}", h.h3_sharing_cost_ms),
                format!("{:.1}", h.hol_ms),
            ]
        })
        .collect();
    md += &report::md_table(&["loss", "H2₁ − H2ₙ (ms)", "H3₁ − H3ₙ (ms)", "(H2₁ − H2ₙ) − (H3₁ − H3ₙ) (ms)"], &rows);
    let f = &r.fairness;
    md += &format!(
        "\n## Fairness\n\n- congestion control: {} on both (TCP_CONGESTION per socket; quinn's matching controller)\n\
         - flow control: stream window {} B, connection window {} B, {} concurrent streams, on both\n\
         - TCP_NODELAY: {}; net.ipv4.tcp_no_metrics_save=1 in both namespaces: {}\n- cipher suites: {}\n\
         - same site code serves both\n\nDifferences that remain:\n\n",
        f.congestion,
        f.stream_window,
        f.conn_window,
        f.max_streams,
        f.tcp_nodelay,
        f.tcp_no_metrics_save,
        f.cipher_suites
    );
    for d in &f.remaining_differences {
        md += &format!("- {d}\n");
    }
    if let Some(m) = &r.mqtt {
        super::hol_mqtt::write_section(&dir, m, &c.loss, &mut md)?;
    }
    md += &format!("\nLink self-check:\n\n```\n{}```\n", r.self_check);
    md += &captures_section(r);
    dir.write_markdown(&md)?;

    // Latency CDF per loss rate, one line per arm; p99 and run completion versus loss.
    let arms = report::Arms { all: &Arm::ALL, name: Arm::name };
    arms.cdf_per_loss(&dir, "", "Request completion", "ms", &c.loss, |arm, loss| {
        r.runs.iter().filter(|x| x.arm == arm && x.loss == loss).flat_map(|x| x.request_ms.iter().copied()).collect()
    })?;
    let of_arm = |arm: Arm| r.arms.iter().filter(move |s| s.arm == arm);
    arms.plot(&dir.path("p99-vs-loss.svg"), "Request p99 vs loss", "loss (%)", "ms", |arm, label| {
        Series::line(label, of_arm(arm).map(|s| (s.loss * 100.0, s.request_p99_ms)).collect())
    })?;
    arms.plot(
        &dir.path("run-vs-loss.svg"),
        "Run completion vs loss (median, 95% CI)",
        "loss (%)",
        "ms",
        |arm, label| Series::with_ci(label, &of_arm(arm).map(|s| (s.loss * 100.0, s.run_ms)).collect::<Vec<_>>()),
    )?;
    Ok(())
}
