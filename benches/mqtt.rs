//! The MQTT load generator: one Rust client run against quiclab's broker and against Debian's
//! mosquitto, same client code, same run (release build: `cargo bench` uses the `bench` profile,
//! which inherits `release`).
//!
//! Run: `cargo bench --bench mqtt -- [OPTIONS]` (`-- --help` lists them), e.g.
//! `cargo bench --bench mqtt -- --scenario p2p --broker quiclab --duration 5s`.
//! Results go to standard output as Markdown tables (copied into docs/BENCHMARKS.md).
//!
//! * Each broker runs as its own process, started here on loopback and pinned to one core
//!   (`--broker-cpu`, `sched_setaffinity` before `exec`); the generator runs on one thread pinned
//!   to the other core (`--load-cpu`) with a single-threaded runtime. quiclab's broker is
//!   `quiclab mqtt broker` (the same core and transport `quiclab serve` runs; by default the
//!   binary cargo built beside this bench); mosquitto runs twice, with a generated config
//!   each: `mosquitto-nodelay` (`set_tcp_nodelay true`, tuned for latency) and
//!   `mosquitto-default` (its default, Nagle on, as a new user runs it); the ratios name the
//!   better of the two in each run. A broker is ready when an MQTT CONNECT succeeds on each of its
//!   listeners (`tests/common/proc.rs`, shared with the integration tests).
//! * Broker CPU comes from `/proc/PID/stat` (user + system, all threads), memory from
//!   `/proc/PID/status` (`VmRSS`), sampled at the edges of the measurement window.
//! * Transports (`--transport`): MQTT over TCP, TLS, QUIC in single-stream mode, and QUIC with
//!   one data stream per topic (docs/mqtt-over-quic.md), each against the same broker process in
//!   the same run. mosquitto serves TCP and TLS (the same development certificate).
//! * Scenarios: point-to-point (N publishers → N subscribers, one topic each, QoS 1), fan-out
//!   (1 publisher → M subscribers on one topic, QoS 0), fan-in (N publishers, a topic each → 1
//!   subscriber of all, QoS 1; in quic-per-topic mode a data stream per topic, so one connection
//!   has N busy channels), idle clients (RSS delta / N), handshakes (N connections up to
//!   CONNACK and closed again, C in flight at a time), and the soak (quiclab with its store on,
//!   every client behaviour at once for `--duration`, checked for loss; `mqtt/soak.rs`).
//! * QUIC rows also report messages delivered per datagram the subscribers received: how much
//!   the broker batches into each packet.
//! * Throughput runs are closed loops: each publisher keeps at most `--inflight` messages
//!   unacknowledged (QoS 1: until PUBACK; fan-out QoS 0: until every subscriber got it, counted
//!   in aggregate). Latency runs are paced open loops: messages leave on a fixed schedule and
//!   each one's latency counts from its scheduled time, so a stall is not hidden.
//! * End-to-end latency: the payload carries the send time; the subscriber records
//!   receive − send in an HDR histogram (microseconds).

#[path = "../tests/common/proc.rs"]
mod proc;
#[path = "../tests/common/rng.rs"]
mod rng;
#[path = "mqtt/soak.rs"]
mod soak;

use std::error::Error as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use proc::{
    free_tcp_port, free_udp_port, loopback, mqtt_accepts, pin_current_thread, spawn_pinned, spawn_ready, ChildServer,
    ProcError,
};
use quiclab::config::parse_duration;
use quiclab::lab::report::{md_table, new_histogram, HISTOGRAM_MAX_US};
use quiclab::mqtt::client::{
    self as mqtt_client, framed, BoxRead, BoxWrite, Halves, MqttUrl, PacketReader, PacketWriter, QuicConnection,
    ReadStream, Transport, WriteStream,
};
use quiclab::mqtt::codec::{ConnectReasonCode, Packet, Pid, Publish, QoS, QosPid, Subscribe, TopicName};
use quiclab::mqtt::MqttError;
use quiclab::tls::Trust;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// The broker's standard error, in its directory, when it goes to a file (the soak reads it).
const BROKER_LOG: &str = "broker.log";

/// How long a broker may take to accept its first MQTT CONNECT on every listener.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Which measurement to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Point-to-point: N publishers → N subscribers, QoS 1.
    P2p,
    /// Fan-out: 1 publisher → M subscribers on one topic, QoS 0.
    Fanout,
    /// Fan-in: N publishers, one topic each → 1 subscriber to all N topics, QoS 1 (in
    /// quic-per-topic mode on N data streams of one connection: every channel busy at once).
    /// The closed loop keeps `--inflight` messages in flight end to end, all publishers
    /// together, so a single-channel subscriber's in-flight window is never overrun.
    FanIn,
    /// Idle clients: broker RSS delta per connected client.
    Idle,
    /// Handshakes: connections up to CONNACK, then closed, a fixed number in flight.
    Handshake,
    /// The soak (quiclab only, its store on): mixed QoS 0/1/2 over every `--transport` at a
    /// steady rate, persistent and clean clients connecting and leaving, retained churn and a
    /// slow subscriber, for `--duration` (e.g. 10m); checks that nothing acknowledged is lost
    /// and reports the broker's RSS over time (module `soak`).
    Soak,
    /// p2p, fan-out, idle and handshake (fan-in and soak run when asked for).
    All,
}

/// How the generator reaches the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
enum BenchTransport {
    /// MQTT over TCP.
    Tcp,
    /// MQTT over TLS 1.3 over TCP.
    Tls,
    /// MQTT over QUIC, single-stream mode (every packet on the control stream).
    Quic,
    /// MQTT over QUIC, each client's topic on its own data stream (quiclab only).
    QuicPerTopic,
}

impl BenchTransport {
    fn name(self) -> &'static str {
        match self {
            BenchTransport::Tcp => "tcp",
            BenchTransport::Tls => "tls",
            BenchTransport::Quic => "quic",
            BenchTransport::QuicPerTopic => "quic-per-topic",
        }
    }

    fn is_quic(self) -> bool {
        matches!(self, BenchTransport::Quic | BenchTransport::QuicPerTopic)
    }
}

/// Which brokers to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Brokers {
    Quiclab,
    /// mosquitto as tuned for latency: `set_tcp_nodelay true`.
    MosquittoNodelay,
    /// mosquitto in its default configuration (Nagle's algorithm on), as a new user runs it.
    MosquittoDefault,
    /// Both mosquitto configurations.
    Mosquitto,
    /// quiclab and both mosquitto configurations.
    All,
}

/// quiclab's MQTT broker against mosquitto, both
/// started on loopback and pinned to a core.
#[derive(Debug, Parser, Clone)]
#[command(name = "mqtt", bin_name = "cargo bench --bench mqtt --")]
struct BenchArgs {
    /// Scenario(s) to run.
    #[arg(long, value_enum, default_value = "all")]
    scenario: Scenario,
    /// Broker(s) to measure.
    #[arg(long, value_enum, default_value = "all")]
    broker: Brokers,
    /// Transports, comma-separated (mosquitto runs tcp and tls only; quic-per-topic is measured
    /// in the throughput scenarios, where it differs from quic).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "tcp,tls,quic,quic-per-topic")]
    transport: Vec<BenchTransport>,
    /// Length of each measurement window (after the warm-up).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Warm-up before each measurement window.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Point-to-point: number of publisher/subscriber pairs.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pairs: usize,
    /// Fan-in: number of publishers (one topic each) into the one subscriber.
    #[arg(long, value_name = "N", default_value_t = 20)]
    fan_in_topics: usize,
    /// Fan-out: number of subscribers.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    subscribers: usize,
    /// Closed loop: messages in flight per publisher (fan-in: end to end, all publishers
    /// together).
    #[arg(long, value_name = "N", default_value_t = 10)]
    inflight: usize,
    /// Payload bytes (at least 16: send time and sequence number).
    #[arg(long, value_name = "BYTES", default_value_t = 16)]
    payload: usize,
    /// Open loop, point-to-point and fan-in: messages per second, all publishers together.
    #[arg(long, value_name = "MSGS", default_value_t = 20_000)]
    p2p_rate: u64,
    /// Open loop, fan-out: publishes per second (each delivered to every subscriber).
    #[arg(long, value_name = "MSGS", default_value_t = 20)]
    fanout_rate: u64,
    /// Idle scenario: clients to connect.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    idle_clients: usize,
    /// Handshake scenario: connections to open (each up to CONNACK, then closed).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    handshakes: usize,
    /// Handshake scenario: connections in flight at a time.
    #[arg(long, value_name = "N", default_value_t = 100)]
    handshake_concurrency: usize,
    /// Core for the broker process.
    #[arg(long, value_name = "CPU", default_value_t = 0)]
    broker_cpu: usize,
    /// Core for the load generator.
    #[arg(long, value_name = "CPU", default_value_t = 1)]
    load_cpu: usize,
    /// Do not pin broker and generator to cores.
    #[arg(long)]
    no_pin: bool,
    /// The mosquitto binary.
    #[arg(long, value_name = "PATH", default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
    /// The quiclab binary whose `mqtt broker` is measured (default: the one cargo built with
    /// this bench).
    #[arg(long, value_name = "PATH", default_value = env!("CARGO_BIN_EXE_quiclab"))]
    quiclab_bin: PathBuf,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Every generator client connects with clean session 0 (a persistent session), so the
    /// broker keeps its state as a session it must not lose.
    #[arg(long)]
    persistent_sessions: bool,
    /// The brokers store what they must not lose: quiclab with `--data-dir` (a fresh temporary
    /// directory per broker process; acknowledgements wait for the fsync), mosquitto with
    /// `persistence true` (it writes its database on an interval and at exit, not per message).
    #[arg(long)]
    persist: bool,
    /// With `--persist` (and in the soak): quiclab's `--sync` (`always`, its default, or an
    /// interval such as `1s`).
    #[arg(long, value_name = "always|DURATION", default_value = "always")]
    sync: String,
    /// Soak: messages per second of the steady publishers, all together (each transport
    /// carries a publisher at QoS 0, 1 and 2).
    #[arg(long, value_name = "MSGS", default_value_t = 2000)]
    soak_rate: u64,
    /// Passed by `cargo bench` to every benchmark binary; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What can stop the benchmark.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    /// `--broker-cpu` and `--load-cpu` are not two different cores of this machine.
    #[error("--broker-cpu {broker} and --load-cpu {load} must be two different cores below {ncpu} (or use --no-pin)")]
    Cpus { broker: usize, load: usize, ncpu: usize },
    /// `--payload` leaves no room for the send time and the sequence number.
    #[error("--payload must be at least 16 bytes (send time and sequence number), not {0}")]
    PayloadTooSmall(usize),
    /// The mosquitto binary is not there.
    #[error("{} not found; install it with: apt-get install -y mosquitto (or use --broker quiclab)", .0.display())]
    NoMosquitto(PathBuf),
    /// A broker process could not be started or measured.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// An MQTT connection, packet or certificate operation of the library failed.
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    /// The development certificates or a TLS configuration could not be made.
    #[error(transparent)]
    Tls(#[from] quiclab::tls::TlsError),
    /// A file, socket or thread operation failed.
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Opening a QUIC stream failed.
    #[error("cannot open a QUIC stream")]
    QuicStream(#[source] quinn::ConnectionError),
    /// The broker answered with something else than the packet the generator waits for.
    #[error("{client}: expected {expected}, got {got}")]
    Unexpected { client: String, expected: &'static str, got: String },
    /// A transport was asked of a broker that does not serve it.
    #[error("{broker} does not serve MQTT over {transport}")]
    NoTransport { broker: &'static str, transport: &'static str },
    /// The generator thread panicked.
    #[error("the generator thread panicked")]
    GeneratorPanicked,
    /// The JSON report could not be made.
    #[error("cannot encode the JSON report")]
    Json(#[source] serde_json::Error),
    /// The soak's checks failed (the report above says which).
    #[error("the soak found {0} problem(s): see its report above")]
    SoakFailed(u64),
}

/// [`BenchError::Io`] with what was being done.
fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// One measured run.
#[derive(Debug, Clone, serde::Serialize)]
struct RunResult {
    scenario: String,
    broker: String,
    transport: String,
    /// "closed" (throughput) or "open" (paced, latency).
    mode: String,
    seconds: f64,
    delivered: u64,
    delivered_per_s: f64,
    broker_cpu_s: f64,
    msgs_per_broker_cpu_s: f64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    /// Deliveries expected over the whole run and not seen half a second after publishing
    /// stopped (QoS 0 may be dropped by design; QoS 1 must not be).
    lost: u64,
    /// QUIC: messages delivered per datagram the subscribers received in the window (how well
    /// the broker batches; ACK-only datagrams count too).
    msgs_per_datagram: Option<f64>,
    generator_cpu_s: f64,
}

/// The idle-clients measurement.
#[derive(Debug, Clone, serde::Serialize)]
struct IdleResult {
    broker: String,
    transport: String,
    clients: usize,
    rss_before_kib: u64,
    rss_after_kib: u64,
    kib_per_client: f64,
}

/// The handshake measurement.
#[derive(Debug, Clone, serde::Serialize)]
struct HandshakeResult {
    broker: String,
    transport: String,
    handshakes: usize,
    concurrency: usize,
    failed: usize,
    seconds: f64,
    per_s: f64,
    /// Broker CPU per handshake, microseconds.
    broker_cpu_us_each: f64,
    /// Time from starting the connection to CONNACK.
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Debug, Default, serde::Serialize)]
struct Report {
    config: Vec<(String, String)>,
    runs: Vec<RunResult>,
    idle: Vec<IdleResult>,
    handshakes: Vec<HandshakeResult>,
    soak: Option<soak::SoakResult>,
}

// ---------------------------------------------------------------------------------------------
// Broker processes: pinning, readiness, CPU and memory from /proc.

/// A broker's listeners.
#[derive(Debug, Clone, Copy)]
struct Listeners {
    tcp: SocketAddr,
    tls: SocketAddr,
    /// MQTT over QUIC (quiclab only).
    quic: Option<SocketAddr>,
}

impl Listeners {
    /// Fresh loopback ports (the race with other processes is retried by `spawn_ready`).
    fn pick(quic: bool) -> Result<Listeners, ProcError> {
        let quic = if quic { Some(loopback(free_udp_port()?)) } else { None };
        Ok(Listeners { tcp: loopback(free_tcp_port()?), tls: loopback(free_tcp_port()?), quic })
    }

    /// Ready when every listener accepts an MQTT CONNECT.
    async fn accept_mqtt(self, trust: Trust) -> bool {
        let mut urls = vec![MqttUrl::tcp(self.tcp), MqttUrl::tls_localhost(self.tls.port())];
        if let Some(q) = self.quic {
            urls.push(MqttUrl { transport: Transport::Quic, host: "localhost".into(), port: q.port() });
        }
        for url in &urls {
            if !mqtt_accepts(url, &trust).await {
                return false;
            }
        }
        true
    }
}

struct BrokerProc {
    name: &'static str,
    proc: ChildServer,
    listeners: Listeners,
    /// mosquitto's configuration and key copy.
    _dir: Option<tempfile::TempDir>,
}

impl BrokerProc {
    fn addr(&self, t: BenchTransport) -> Option<SocketAddr> {
        match t {
            BenchTransport::Tcp => Some(self.listeners.tcp),
            BenchTransport::Tls => Some(self.listeners.tls),
            BenchTransport::Quic | BenchTransport::QuicPerTopic => self.listeners.quic,
        }
    }

    async fn quiclab(
        bin: &Path,
        cpu: Option<usize>,
        max_connections: usize,
        certs: &Path,
        (persist, sync): (bool, &str),
        log_to_file: bool,
    ) -> Result<BrokerProc, BenchError> {
        const WHAT: &str = "quiclab mqtt broker";
        let trust = Trust::CaFile(certs.join("ca.pem"));
        let data = match persist || log_to_file {
            true => Some(
                tempfile::Builder::new()
                    .prefix("quiclab-bench-data")
                    .tempdir()
                    .map_err(io_err("create a data directory for quiclab"))?,
            ),
            false => None,
        };
        let spawn = || {
            let l = Listeners::pick(true)?;
            let mut cmd = Command::new(bin);
            cmd.args(["mqtt", "broker", "--tcp", &l.tcp.to_string(), "--tls", &l.tls.to_string()]);
            if let Some(quic) = l.quic {
                cmd.args(["--quic", &quic.to_string()]);
            }
            cmd.arg("--certs")
                .arg(certs)
                .args(["--mqtt-max-connections", &max_connections.to_string()])
                .args(["--mqtt-max-sessions", &(max_connections * 2).to_string()]);
            match &data {
                Some(d) if persist => cmd.arg("--data-dir").arg(d.path()).args(["--sync", sync]),
                _ => cmd.arg("--no-persist"),
            };
            let stderr = match &data {
                Some(d) if log_to_file => {
                    let log = d.path().join(BROKER_LOG);
                    Stdio::from(std::fs::File::create(&log).map_err(|source| ProcError::Spawn {
                        what: format!("{WHAT} (creating {})", log.display()),
                        source,
                    })?)
                }
                _ => Stdio::inherit(),
            };
            cmd.env("RUST_LOG", "warn").stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
            Ok((spawn_pinned(cmd, cpu, WHAT)?, l))
        };
        let (proc, listeners) = spawn_ready(WHAT, READY_TIMEOUT, spawn, |l| l.accept_mqtt(trust.clone())).await?;
        Ok(BrokerProc { name: "quiclab", proc, listeners, _dir: data })
    }

    /// mosquitto with a generated configuration: its defaults but for the listeners, unlimited
    /// connections, no persistence and (`nodelay`) `set_tcp_nodelay true`.
    async fn mosquitto(
        bin: &Path,
        cpu: Option<usize>,
        certs: &Path,
        nodelay: bool,
        persist: bool,
    ) -> Result<BrokerProc, BenchError> {
        let name = if nodelay { "mosquitto-nodelay" } else { "mosquitto-default" };
        const WHAT: &str = "mosquitto";
        let dir = tempfile::Builder::new()
            .prefix("quiclab-bench-mosquitto")
            .tempdir()
            .map_err(io_err("create a directory for mosquitto"))?;
        // mosquitto started as root drops to its own user: give it a readable copy of the
        // (throwaway, generated) key, in a directory it can enter.
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::copy(certs.join("cert.pem"), &cert).map_err(io_err("copy cert.pem for mosquitto"))?;
        std::fs::copy(certs.join("key.pem"), &key).map_err(io_err("copy key.pem for mosquitto"))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let perms = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
            perms(&key, 0o644).map_err(io_err("make mosquitto's key copy readable"))?;
            perms(dir.path(), 0o755).map_err(io_err("open mosquitto's directory"))?;
        }
        let conf = dir.path().join("mosquitto.conf");
        let trust = Trust::CaFile(certs.join("ca.pem"));
        let spawn = || {
            let l = Listeners::pick(false)?;
            std::fs::write(
                &conf,
                format!(
                    "# generated by benches/mqtt.rs\n\
                     per_listener_settings false\n\
                     allow_anonymous true\n\
                     set_tcp_nodelay {}\n\
                     max_connections -1\n\
                     persistence {}\n\
                     persistence_location {}/\n\
                     log_dest stderr\n\
                     log_type error\n\
                     log_type warning\n\
                     listener {} 127.0.0.1\n\
                     listener {} 127.0.0.1\n\
                     certfile {}\n\
                     keyfile {}\n",
                    nodelay,
                    persist,
                    dir.path().display(),
                    l.tcp.port(),
                    l.tls.port(),
                    cert.display(),
                    key.display(),
                ),
            )
            .map_err(|source| ProcError::Spawn { what: format!("{WHAT} (writing {})", conf.display()), source })?;
            let mut cmd = Command::new(bin);
            cmd.arg("-c").arg(&conf).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
            Ok((spawn_pinned(cmd, cpu, WHAT)?, l))
        };
        let (proc, listeners) = spawn_ready(WHAT, READY_TIMEOUT, spawn, |l| l.accept_mqtt(trust.clone())).await?;
        Ok(BrokerProc { name, proc, listeners, _dir: Some(dir) })
    }

    fn cpu(&self) -> Result<f64, BenchError> {
        Ok(self.proc.cpu_seconds()?)
    }

    /// quiclab's directory (store and, with `log_to_file`, [`BROKER_LOG`]), if it has one.
    fn dir(&self) -> Option<&Path> {
        self._dir.as_ref().map(|d| d.path())
    }

    fn rss(&self) -> Result<u64, BenchError> {
        Ok(self.proc.rss_kib()?)
    }
}

// ---------------------------------------------------------------------------------------------
// The load generator.

type Reader = PacketReader<BoxRead>;
type Writer = PacketWriter<BoxWrite>;

/// One client of the generator: the halves it publishes or subscribes on (in per-topic mode,
/// its data stream) and what must stay alive with them.
struct Conn {
    r: Reader,
    w: Writer,
    /// Per-topic mode: the control stream.
    _control: Option<Halves>,
    quic: Option<quinn::Connection>,
}

/// What the generator connects with: a TLS connector and one QUIC endpoint for all clients,
/// both trusting the development CA the brokers present.
struct Gen {
    tls: tokio_rustls::TlsConnector,
    quic: quinn::Endpoint,
    quic_cfg: quinn::ClientConfig,
    /// Clean session flag of every CONNECT (`--persistent-sessions` clears it).
    clean: bool,
}

impl Gen {
    fn new(certs: &Path) -> Result<Gen, BenchError> {
        let trust = Trust::CaFile(certs.join("ca.pem"));
        let tls = quiclab::tls::client_config(&trust, &[], false)?;
        let mut quic_cfg = mqtt_client::client_config(&trust)?;
        // No client keep-alive: idle clients stay silent (the broker's listener pings).
        quic_cfg.transport_config(Arc::new(quinn::TransportConfig::default()));
        let udp = quiclab::quic::bind_udp(loopback(0)).map_err(io_err("bind the generator's UDP socket"))?;
        let mut quic = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, udp, Arc::new(quinn::TokioRuntime))
            .map_err(io_err("make the generator's QUIC endpoint"))?;
        quic.set_default_client_config(quic_cfg.clone());
        Ok(Gen { tls: tokio_rustls::TlsConnector::from(Arc::new(tls)), quic, quic_cfg, clean: true })
    }
}

fn boxed(r: impl ReadStream + 'static, w: impl WriteStream + 'static) -> (Reader, Writer) {
    framed(r, w, 1 << 20)
}

/// Connect over `t` and complete CONNECT/CONNACK (clean session as `g.clean`).
async fn connect(g: &Gen, b: &BrokerProc, t: BenchTransport, id: &str, keepalive: u16) -> Result<Conn, BenchError> {
    Ok(connect_as(g, b, t, id, keepalive, g.clean).await?.0)
}

/// Connect over `t` with this clean-session flag and complete CONNECT/CONNACK; returns the
/// connection and CONNACK's session present.
async fn connect_as(
    g: &Gen,
    b: &BrokerProc,
    t: BenchTransport,
    id: &str,
    keepalive: u16,
    clean: bool,
) -> Result<(Conn, bool), BenchError> {
    let addr = b.addr(t).ok_or(BenchError::NoTransport { broker: b.name, transport: t.name() })?;
    let tcp_err = || io_err(format!("connect to {} over {} at {addr}", b.name, t.name()));
    let (mut r, mut w, quic) = match t {
        BenchTransport::Tcp => {
            let sock = TcpStream::connect(addr).await.map_err(tcp_err())?;
            sock.set_nodelay(true).map_err(tcp_err())?;
            let (r, w) = sock.into_split();
            let (r, w) = boxed(r, w);
            (r, w, None)
        }
        BenchTransport::Tls => {
            let sock = TcpStream::connect(addr).await.map_err(tcp_err())?;
            sock.set_nodelay(true).map_err(tcp_err())?;
            let tls = g.tls.connect(localhost(), sock).await.map_err(tcp_err())?;
            let (r, w) = tokio::io::split(tls);
            let (r, w) = boxed(r, w);
            (r, w, None)
        }
        BenchTransport::Quic | BenchTransport::QuicPerTopic => {
            let conn = QuicConnection::connect_on(&g.quic, &g.quic_cfg, addr, "localhost").await?;
            let (send, recv) = conn.open_bi().await.map_err(BenchError::QuicStream)?;
            let (r, w) = boxed(recv, send);
            (r, w, Some(conn))
        }
    };
    let mut c = quiclab::mqtt::codec::connect_v3(id, keepalive);
    c.clean_start = clean;
    w.send(&Packet::connect(c)).await?;
    let present = match r.next().await? {
        Some(Packet::Connack(c)) if c.reason_code == ConnectReasonCode::Success => c.session_present,
        other => {
            return Err(BenchError::Unexpected { client: id.into(), expected: "CONNACK", got: format!("{other:?}") })
        }
    };
    if let (BenchTransport::QuicPerTopic, Some(q)) = (t, &quic) {
        let (send, recv) = q.open_bi().await.map_err(BenchError::QuicStream)?;
        let (dr, dw) = boxed(recv, send);
        return Ok((Conn { r: dr, w: dw, _control: Some((r, w)), quic }, present));
    }
    Ok((Conn { r, w, _control: None, quic }, present))
}

struct Shared {
    epoch: Instant,
    measuring: AtomicBool,
    stop: AtomicBool,
    delivered: AtomicU64,
    published: AtomicU64,
    /// Fan-out closed loop: wake the publisher when `delivered` reaches this.
    wake_at: AtomicU64,
    wake: Notify,
    /// Publishers' connections after `stop`, kept open until the run is over: dropping the last
    /// handle of a QUIC connection closes it at once, and what the publisher had written but
    /// quinn had not yet sent would count as lost (TCP delivers a closed socket's data).
    parked: Mutex<Vec<Box<dyn std::any::Any + Send>>>,
    /// Subscribers' QUIC connections, whose received datagrams are counted.
    subscribers: Mutex<Vec<quinn::Connection>>,
    /// Fan-in closed loop: a publisher takes one per message; subscribers give them back as
    /// messages arrive (the end-to-end window).
    credits: tokio::sync::Semaphore,
}

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            epoch: Instant::now(),
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            published: AtomicU64::new(0),
            wake_at: AtomicU64::new(u64::MAX),
            wake: Notify::new(),
            parked: Mutex::new(Vec::new()),
            subscribers: Mutex::new(Vec::new()),
            credits: tokio::sync::Semaphore::new(0),
        })
    }

    /// Keep `conn` open until the run's `Shared` is dropped (see `parked`).
    fn park(&self, conn: impl Send + 'static) {
        if let Ok(mut p) = self.parked.lock() {
            p.push(Box::new(conn));
        }
    }

    /// Count the datagrams `conn` receives (`msg per datagram` in the report).
    fn watch_subscriber(&self, conn: quinn::Connection) {
        if let Ok(mut s) = self.subscribers.lock() {
            s.push(conn);
        }
    }

    /// Datagrams the watched subscribers received so far.
    fn subscriber_datagrams(&self) -> u64 {
        self.subscribers.lock().map(|s| s.iter().map(|c| c.stats().udp_rx.datagrams).sum()).unwrap_or(0)
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

async fn subscribe(r: &mut Reader, w: &mut Writer, filter: &str, qos: QoS) -> Result<(), BenchError> {
    let f = mqtt_client::filter(filter)?;
    w.send(&Packet::Subscribe(Subscribe::new(Pid::default(), vec![(f, quiclab::mqtt::codec::v3_options(qos))])))
        .await?;
    loop {
        match r.next().await? {
            Some(Packet::Suback(_)) => return Ok(()),
            Some(_) => continue,
            None => {
                return Err(BenchError::Unexpected {
                    client: format!("subscriber to {filter}"),
                    expected: "SUBACK",
                    got: "the end of the connection".into(),
                })
            }
        }
    }
}

fn payload(size: usize, sent_ns: u64, seq: u64) -> Bytes {
    let mut v = vec![0u8; size.max(16)];
    v[..8].copy_from_slice(&sent_ns.to_be_bytes());
    v[8..16].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(v)
}

fn sent_ns(p: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(p.get(..8)?.try_into().ok()?))
}

/// A subscriber: acknowledge, count, record latency.
async fn run_subscriber(conn: Conn, shared: Arc<Shared>, hist: Arc<Mutex<Histogram<u64>>>) {
    let Conn { mut r, mut w, _control, quic: _quic } = conn;
    loop {
        let first = match r.next().await {
            Ok(Some(p)) => p,
            _ => break,
        };
        let mut next = Some(first);
        let mut n = 0u64;
        while let Some(p) = next {
            if let Packet::Publish(p) = p {
                n += 1;
                if shared.measuring.load(Ordering::Relaxed) {
                    if let (Some(t), Ok(mut h)) = (sent_ns(&p.payload), hist.lock()) {
                        let us = shared.now_ns().saturating_sub(t) / 1000;
                        let _ = h.record(us.max(1));
                    }
                }
                if let Some(id) = p.qos_pid.pid() {
                    let ack = if p.qos_pid.qos() == QoS::Level1 { Packet::puback(id) } else { Packet::pubrec(id) };
                    let _ = w.queue(&ack);
                }
            }
            next = r.try_next().ok().flatten();
        }
        let total = shared.delivered.fetch_add(n, Ordering::Relaxed) + n;
        shared.credits.add_permits(n as usize);
        if total >= shared.wake_at.load(Ordering::Relaxed) {
            shared.wake.notify_one();
        }
        if w.flush().await.is_err() {
            break;
        }
    }
}

/// All subscribers' histograms together.
fn merged(hists: &[Arc<Mutex<Histogram<u64>>>]) -> Histogram<u64> {
    let mut all = new_histogram(HISTOGRAM_MAX_US);
    for h in hists {
        if let Ok(h) = h.lock() {
            let _ = all.add(&*h);
        }
    }
    all
}

/// A QoS 1 publisher, closed loop: at most `window` unacknowledged.
async fn run_publisher_closed(conn: Conn, topic: TopicName, window: usize, size: usize, shared: Arc<Shared>) {
    let Conn { mut r, mut w, _control, quic: _quic } = conn;
    let mut outstanding = 0usize;
    let mut pid: u16 = 0;
    let mut seq = 0u64;
    loop {
        if !shared.stop.load(Ordering::Relaxed) {
            while outstanding < window {
                seq += 1;
                let id = next_pid(&mut pid);
                let p = Publish::new(QosPid::Level1(id), topic.clone(), payload(size, shared.now_ns(), seq));
                let _ = w.queue(&Packet::Publish(p));
                outstanding += 1;
                shared.published.fetch_add(1, Ordering::Relaxed);
            }
            if w.flush().await.is_err() {
                return;
            }
        } else if outstanding == 0 {
            return;
        }
        let mut next = match r.next().await {
            Ok(Some(p)) => Some(p),
            _ => return,
        };
        while let Some(p) = next {
            if let Packet::Puback(_) = p {
                outstanding = outstanding.saturating_sub(1);
            }
            next = r.try_next().ok().flatten();
        }
    }
}

/// The next packet identifier after `pid` (1..=65,535, wrapping).
fn next_pid(pid: &mut u16) -> Pid {
    *pid = pid.wrapping_add(1).max(1);
    Pid::try_from(*pid).unwrap_or_default()
}

/// After `first` (what `r.next()` gave), read whatever else has arrived (the broker's acks,
/// which an end-to-end or paced publisher does not count). False once the connection ended.
fn drained_acks(first: Result<Option<Packet>, MqttError>, r: &mut Reader) -> bool {
    if !matches!(first, Ok(Some(_))) {
        return false;
    }
    while let Ok(Some(_)) = r.try_next() {}
    true
}

/// A QoS 1 publisher whose window is end to end and shared (`Shared::credits`): it publishes a
/// message each time it gets a credit, which a subscriber returns when a message arrives.
async fn run_publisher_credited(conn: Conn, topic: TopicName, size: usize, shared: Arc<Shared>) {
    let Conn { mut r, mut w, _control, quic } = conn;
    let mut pid: u16 = 0;
    let mut seq = 0u64;
    loop {
        tokio::select! {
            credit = shared.credits.acquire() => {
                let Ok(credit) = credit else { return };
                credit.forget();
                if shared.stop.load(Ordering::Relaxed) {
                    shared.park((r, w, _control, quic));
                    return;
                }
                seq += 1;
                let id = next_pid(&mut pid);
                let p = Publish::new(QosPid::Level1(id), topic.clone(), payload(size, shared.now_ns(), seq));
                let _ = w.queue(&Packet::Publish(p));
                shared.published.fetch_add(1, Ordering::Relaxed);
                if w.flush().await.is_err() {
                    return;
                }
            }
            p = r.next() => {
                if !drained_acks(p, &mut r) {
                    return;
                }
            }
        }
    }
}

/// A QoS 1 publisher, open loop: one message every `interval` from `start`, timestamped with
/// its scheduled time.
#[allow(clippy::too_many_arguments)]
async fn run_publisher_open(
    conn: Conn,
    topic: TopicName,
    qos: QoS,
    interval: Duration,
    start: Instant,
    size: usize,
    shared: Arc<Shared>,
) {
    let Conn { mut r, mut w, _control, quic } = conn;
    let mut seq = 0u64;
    let mut pid: u16 = 0;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            shared.park((r, w, _control, quic));
            return;
        }
        let due = start + interval.mul_f64(seq as f64);
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {
                // Everything that is due goes now (catching up keeps the schedule's timestamps).
                let now = Instant::now();
                while start + interval.mul_f64(seq as f64) <= now {
                    let at = start + interval.mul_f64(seq as f64);
                    let at_ns = at.saturating_duration_since(shared.epoch).as_nanos() as u64;
                    seq += 1;
                    let qos_pid = if qos == QoS::Level0 {
                        QosPid::Level0
                    } else {
                        QosPid::Level1(next_pid(&mut pid))
                    };
                    let p = Publish::new(qos_pid, topic.clone(), payload(size, at_ns, seq));
                    let _ = w.queue(&Packet::Publish(p));
                    shared.published.fetch_add(1, Ordering::Relaxed);
                }
                if w.flush().await.is_err() {
                    return;
                }
            }
            p = r.next() => {
                if !drained_acks(p, &mut r) {
                    return;
                }
            }
        }
    }
}

/// The fan-out publisher, closed loop: at most `window` messages not yet delivered to every
/// subscriber (counted in aggregate). Returns the writer, to be parked.
async fn run_fanout_closed(
    mut w: Writer,
    topic: TopicName,
    window: u64,
    subs: u64,
    size: usize,
    shared: Arc<Shared>,
) -> Writer {
    let mut k = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let done = shared.delivered.load(Ordering::Relaxed) / subs;
        if k < done + window {
            while k < done + window {
                k += 1;
                let p = Publish::new(QosPid::Level0, topic.clone(), payload(size, shared.now_ns(), k));
                let _ = w.queue(&Packet::Publish(p));
                shared.published.fetch_add(1, Ordering::Relaxed);
            }
            if w.flush().await.is_err() {
                return w;
            }
            continue;
        }
        // Wait until the oldest message in the window is everywhere (or a short timeout, since
        // QoS 0 deliveries may be dropped by a broker).
        let target = (k + 1 - window) * subs;
        let notified = shared.wake.notified();
        shared.wake_at.store(target, Ordering::Relaxed);
        if shared.delivered.load(Ordering::Relaxed) < target {
            let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
        }
        shared.wake_at.store(u64::MAX, Ordering::Relaxed);
    }
    w
}

struct Window {
    t: Instant,
    delivered: u64,
    datagrams: u64,
    broker_cpu: f64,
    own_cpu: f64,
}

fn sample(b: &BrokerProc, shared: &Shared) -> Result<Window, BenchError> {
    Ok(Window {
        t: Instant::now(),
        delivered: shared.delivered.load(Ordering::Relaxed),
        datagrams: shared.subscriber_datagrams(),
        broker_cpu: b.cpu()?,
        own_cpu: proc::proc_cpu_seconds(std::process::id())?,
    })
}

/// Warm up, measure for `duration`, stop; returns the result.
async fn measure(
    a: &BenchArgs,
    b: &BrokerProc,
    shared: &Arc<Shared>,
    hists: &[Arc<Mutex<Histogram<u64>>>],
    scenario: &str,
    (transport, mode): (BenchTransport, &str),
    expected_per_publish: u64,
) -> Result<RunResult, BenchError> {
    tokio::time::sleep(a.warmup).await;
    let w0 = sample(b, shared)?;
    shared.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(a.duration).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let w1 = sample(b, shared)?;
    shared.stop.store(true, Ordering::Relaxed);
    // Wait for the last deliveries (at most half a second: QoS 0 may be dropped) before reading
    // the histograms and the totals.
    let deadline = Instant::now() + Duration::from_millis(500);
    let (published_total, delivered_total) = loop {
        let published = shared.published.load(Ordering::Relaxed);
        let delivered = shared.delivered.load(Ordering::Relaxed);
        if delivered >= published * expected_per_publish || Instant::now() >= deadline {
            break (published, delivered);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let secs = (w1.t - w0.t).as_secs_f64();
    let delivered = w1.delivered - w0.delivered;
    let cpu = w1.broker_cpu - w0.broker_cpu;
    let h = merged(hists);
    // Everything published in the whole run (warm-up included) against everything delivered,
    // after publishing stopped and the last messages had time to arrive.
    let expected = published_total * expected_per_publish;
    Ok(RunResult {
        scenario: scenario.into(),
        broker: b.name.into(),
        transport: transport.name().into(),
        mode: mode.into(),
        seconds: secs,
        delivered,
        delivered_per_s: delivered as f64 / secs,
        broker_cpu_s: cpu,
        msgs_per_broker_cpu_s: if cpu > 0.0 { delivered as f64 / cpu } else { 0.0 },
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
        lost: expected.saturating_sub(delivered_total),
        msgs_per_datagram: (w1.datagrams > w0.datagrams)
            .then(|| delivered as f64 / (w1.datagrams - w0.datagrams) as f64),
        generator_cpu_s: w1.own_cpu - w0.own_cpu,
    })
}

fn topic(s: &str) -> Result<TopicName, BenchError> {
    Ok(mqtt_client::topic(s)?)
}

async fn p2p(a: &BenchArgs, b: &BrokerProc, g: &Gen, t: BenchTransport, open: bool) -> Result<RunResult, BenchError> {
    let shared = Shared::new();
    let mut tasks = Vec::new();
    let mut hists = Vec::new();
    for i in 0..a.pairs {
        let mut c = connect(g, b, t, &format!("bench-sub-{i}"), 0).await?;
        if let Some(q) = &c.quic {
            shared.watch_subscriber(q.clone());
        }
        subscribe(&mut c.r, &mut c.w, &format!("bench/p2p/{i}"), QoS::Level1).await?;
        let h = Arc::new(Mutex::new(new_histogram(HISTOGRAM_MAX_US)));
        hists.push(h.clone());
        tasks.push(tokio::spawn(run_subscriber(c, shared.clone(), h)));
    }
    let pace = if open { Pace::Open } else { Pace::Closed };
    spawn_publishers(a, (b, g, t), a.pairs, pace, "bench/p2p", &shared, &mut tasks).await?;
    let mode = if open { "open" } else { "closed" };
    let res = measure(a, b, &shared, &hists, "p2p", (t, mode), 1).await;
    for t in tasks {
        t.abort();
    }
    res
}

/// How publishers pace themselves.
#[derive(Clone, Copy, PartialEq)]
enum Pace {
    /// Paced at `--p2p-rate` together, staggered across one interval.
    Open,
    /// `--inflight` unacknowledged (PUBACK) each.
    Closed,
    /// `--inflight` in flight end to end, all publishers together (`Shared::credits`).
    Credited,
}

/// `n` QoS 1 publishers, publisher i on `{prefix}/{i}`.
#[allow(clippy::too_many_arguments)]
async fn spawn_publishers(
    a: &BenchArgs,
    (b, g, t): (&BrokerProc, &Gen, BenchTransport),
    n: usize,
    pace: Pace,
    prefix: &str,
    shared: &Arc<Shared>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<(), BenchError> {
    let interval = Duration::from_secs_f64(n as f64 / a.p2p_rate.max(1) as f64);
    let start = Instant::now() + Duration::from_millis(50);
    for i in 0..n {
        let c = connect(g, b, t, &format!("bench-pub-{i}"), 0).await?;
        let topic = topic(&format!("{prefix}/{i}"))?;
        let s = shared.clone();
        tasks.push(match pace {
            Pace::Open => {
                let offset = interval.mul_f64(i as f64 / n as f64);
                tokio::spawn(run_publisher_open(c, topic, QoS::Level1, interval, start + offset, a.payload, s))
            }
            Pace::Closed => tokio::spawn(run_publisher_closed(c, topic, a.inflight, a.payload, s)),
            Pace::Credited => tokio::spawn(run_publisher_credited(c, topic, a.payload, s)),
        });
    }
    if pace == Pace::Credited {
        shared.credits.add_permits(a.inflight);
    }
    Ok(())
}

/// Fan-in: `--fan-in-topics` publishers, one topic each, into one subscriber of every topic.
/// Over quic-per-topic the subscriber opens a data stream per topic, so one connection has that
/// many busy channels: the case where the broker's writer batches across channels. The closed
/// loop is credited (`--inflight` in flight end to end, all publishers together): with a window
/// per publisher, a single-channel subscriber's in-flight limit (`max_inflight`, 20) would be
/// overrun and the broker would drop at `max_queued_messages`.
async fn fan_in(
    a: &BenchArgs,
    b: &BrokerProc,
    g: &Gen,
    t: BenchTransport,
    open: bool,
) -> Result<RunResult, BenchError> {
    let shared = Shared::new();
    let mut tasks = Vec::new();
    let h = Arc::new(Mutex::new(new_histogram(HISTOGRAM_MAX_US)));
    let mut sub = connect(g, b, t, "bench-fan-in-sub", 0).await?;
    let mut streams = Vec::new();
    for i in 0..a.fan_in_topics {
        let filter = format!("bench/fan-in/{i}");
        match (&sub.quic, t) {
            (Some(q), BenchTransport::QuicPerTopic) if i > 0 => {
                let (send, recv) = q.open_bi().await.map_err(BenchError::QuicStream)?;
                let (mut r, mut w) = boxed(recv, send);
                subscribe(&mut r, &mut w, &filter, QoS::Level1).await?;
                streams.push(Conn { r, w, _control: None, quic: None });
            }
            _ => subscribe(&mut sub.r, &mut sub.w, &filter, QoS::Level1).await?,
        }
    }
    if let Some(q) = &sub.quic {
        shared.watch_subscriber(q.clone());
    }
    tasks.push(tokio::spawn(run_subscriber(sub, shared.clone(), h.clone())));
    for c in streams {
        tasks.push(tokio::spawn(run_subscriber(c, shared.clone(), h.clone())));
    }
    let pace = if open { Pace::Open } else { Pace::Credited };
    spawn_publishers(a, (b, g, t), a.fan_in_topics, pace, "bench/fan-in", &shared, &mut tasks).await?;
    let mode = if open { "open" } else { "closed" };
    let res = measure(a, b, &shared, &[h], "fan-in", (t, mode), 1).await;
    for t in tasks {
        t.abort();
    }
    res
}

async fn fanout(
    a: &BenchArgs,
    b: &BrokerProc,
    g: &Gen,
    t: BenchTransport,
    open: bool,
) -> Result<RunResult, BenchError> {
    let shared = Shared::new();
    let mut tasks = Vec::new();
    let mut hists = Vec::new();
    for i in 0..a.subscribers {
        let mut c = connect(g, b, t, &format!("bench-fan-{i}"), 0).await?;
        if let Some(q) = &c.quic {
            shared.watch_subscriber(q.clone());
        }
        subscribe(&mut c.r, &mut c.w, "bench/fan", QoS::Level0).await?;
        let h = Arc::new(Mutex::new(new_histogram(HISTOGRAM_MAX_US)));
        hists.push(h.clone());
        tasks.push(tokio::spawn(run_subscriber(c, shared.clone(), h)));
    }
    let c = connect(g, b, t, "bench-fan-pub", 0).await?;
    let topic = topic("bench/fan")?;
    if open {
        let interval = Duration::from_secs_f64(1.0 / a.fanout_rate.max(1) as f64);
        let start = Instant::now() + Duration::from_millis(50);
        tasks.push(tokio::spawn(run_publisher_open(c, topic, QoS::Level0, interval, start, a.payload, shared.clone())));
    } else {
        // The reader half is not needed for QoS 0; it stays alive with the task.
        let s = shared.clone();
        let (window, subs, size) = (a.inflight as u64, a.subscribers as u64, a.payload);
        tasks.push(tokio::spawn(async move {
            let Conn { r, w, _control, quic } = c;
            let w = run_fanout_closed(w, topic, window, subs, size, s.clone()).await;
            s.park((r, w, _control, quic));
        }));
    }
    let mode = if open { "open" } else { "closed" };
    let res = measure(a, b, &shared, &hists, "fanout", (t, mode), a.subscribers as u64).await;
    for t in tasks {
        t.abort();
    }
    res
}

async fn idle(a: &BenchArgs, b: &BrokerProc, g: &Gen, t: BenchTransport) -> Result<IdleResult, BenchError> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = b.rss()?;
    let mut conns = Vec::with_capacity(a.idle_clients);
    for i in 0..a.idle_clients {
        // Keepalive 600 s: nothing is sent during the measurement.
        conns.push(connect(g, b, t, &format!("bench-idle-{i}"), 600).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = b.rss()?;
    close_all(g, conns).await;
    Ok(IdleResult {
        broker: b.name.into(),
        transport: t.name().into(),
        clients: a.idle_clients,
        rss_before_kib: before,
        rss_after_kib: after,
        kib_per_client: (after as f64 - before as f64) / a.idle_clients.max(1) as f64,
    })
}

/// Close QUIC connections explicitly (dropping them would leave the broker to time them out)
/// and wait until the generator's endpoint has sent every CONNECTION_CLOSE (at most a second).
async fn close_all(g: &Gen, conns: Vec<Conn>) {
    let quic = conns.iter().any(|c| c.quic.is_some());
    for c in conns {
        if let Some(q) = &c.quic {
            q.close(0u32.into(), b"bench done");
        }
    }
    if quic {
        let _ = tokio::time::timeout(Duration::from_secs(1), g.quic.wait_idle()).await;
    }
}

/// `--handshakes` connections up to CONNACK, `--handshake-concurrency` in flight at a time; each
/// is closed as soon as it is up (QUIC: CONNECTION_CLOSE; TCP: FIN).
async fn handshakes(a: &BenchArgs, b: &BrokerProc, g: &Gen, t: BenchTransport) -> Result<HandshakeResult, BenchError> {
    let next = std::cell::Cell::new(0usize);
    let failed = std::cell::Cell::new(0usize);
    let mut hist = new_histogram(HISTOGRAM_MAX_US);
    let cpu0 = b.cpu()?;
    let t0 = Instant::now();
    let worker = || async {
        let mut lat = Vec::new();
        loop {
            let i = next.get();
            if i >= a.handshakes {
                return lat;
            }
            next.set(i + 1);
            let start = Instant::now();
            match connect(g, b, t, &format!("bench-hs-{i}"), 0).await {
                Ok(c) => {
                    lat.push(start.elapsed());
                    if let Some(q) = &c.quic {
                        q.close(0u32.into(), b"done");
                    }
                }
                Err(e) => {
                    if failed.get() == 0 {
                        eprintln!("handshake {i} over {} failed: {e}", t.name());
                    }
                    failed.set(failed.get() + 1);
                }
            }
        }
    };
    let all = futures_util::future::join_all((0..a.handshake_concurrency.max(1)).map(|_| worker())).await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = b.cpu()? - cpu0;
    for d in all.iter().flatten() {
        let _ = hist.record((d.as_micros() as u64).max(1));
    }
    let ok = a.handshakes - failed.get();
    Ok(HandshakeResult {
        broker: b.name.into(),
        transport: t.name().into(),
        handshakes: a.handshakes,
        concurrency: a.handshake_concurrency,
        failed: failed.get(),
        seconds: secs,
        per_s: ok as f64 / secs,
        broker_cpu_us_each: cpu * 1e6 / ok.max(1) as f64,
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

async fn start_broker(a: &BenchArgs, which: &str, certs: &Path) -> Result<BrokerProc, BenchError> {
    let cpu = (!a.no_pin).then_some(a.broker_cpu);
    match which {
        "quiclab" => {
            let max_connections = a.idle_clients.max(a.subscribers).max(a.handshake_concurrency) + 1000;
            let soak = a.scenario == Scenario::Soak;
            let store = (a.persist || soak, a.sync.as_str());
            BrokerProc::quiclab(&a.quiclab_bin, cpu, max_connections, certs, store, soak).await
        }
        "mosquitto-nodelay" => BrokerProc::mosquitto(&a.mosquitto, cpu, certs, true, a.persist).await,
        _ => BrokerProc::mosquitto(&a.mosquitto, cpu, certs, false, a.persist).await,
    }
}

async fn bench_all(a: BenchArgs) -> Result<Report, BenchError> {
    let brokers: &[&str] = match a.broker {
        Brokers::Quiclab => &["quiclab"],
        Brokers::MosquittoNodelay => &["mosquitto-nodelay"],
        Brokers::MosquittoDefault => &["mosquitto-default"],
        Brokers::Mosquitto => &["mosquitto-nodelay", "mosquitto-default"],
        Brokers::All => &["quiclab", "mosquitto-nodelay", "mosquitto-default"],
    };
    let scenarios: &[Scenario] = match a.scenario {
        Scenario::All => &[Scenario::P2p, Scenario::Fanout, Scenario::Idle, Scenario::Handshake],
        Scenario::P2p => &[Scenario::P2p],
        Scenario::Fanout => &[Scenario::Fanout],
        Scenario::FanIn => &[Scenario::FanIn],
        Scenario::Idle => &[Scenario::Idle],
        Scenario::Handshake => &[Scenario::Handshake],
        Scenario::Soak => &[],
    };
    // One development CA and certificate for every broker and transport.
    let certs = tempfile::Builder::new()
        .prefix("quiclab-bench-certs")
        .tempdir()
        .map_err(io_err("create a directory for the certificates"))?;
    quiclab::tls::CertStore::load_or_create(certs.path())?;
    let mut g = Gen::new(certs.path())?;
    g.clean = !a.persistent_sessions;
    let mut report = Report::default();
    if a.scenario == Scenario::Soak {
        if a.broker != Brokers::Quiclab {
            eprintln!("soak: runs quiclab only (its store on); --broker {:?} ignored", a.broker);
        }
        let b = start_broker(&a, "quiclab", certs.path()).await?;
        report.soak = Some(soak::run(&a, &b, &g).await?);
    }
    for s in scenarios {
        for which in brokers {
            for &t in &a.transport {
                // mosquitto has no QUIC; per-topic equals single-stream when nothing flows.
                let skip = (which.starts_with("mosquitto") && t.is_quic())
                    || (t == BenchTransport::QuicPerTopic && matches!(s, Scenario::Idle | Scenario::Handshake));
                if skip {
                    continue;
                }
                let tn = t.name();
                match s {
                    Scenario::Idle => {
                        let b = start_broker(&a, which, certs.path()).await?;
                        let r = idle(&a, &b, &g, t).await?;
                        eprintln!("idle {which} {tn}: {:.2} KiB per client", r.kib_per_client);
                        report.idle.push(r);
                    }
                    Scenario::Handshake => {
                        let b = start_broker(&a, which, certs.path()).await?;
                        let r = handshakes(&a, &b, &g, t).await?;
                        eprintln!(
                            "handshake {which} {tn}: {} in {:.2} s ({:.0}/s), {:.0} µs broker CPU each, {} failed",
                            r.handshakes, r.seconds, r.per_s, r.broker_cpu_us_each, r.failed
                        );
                        report.handshakes.push(r);
                    }
                    _ => {
                        for open in [false, true] {
                            let b = start_broker(&a, which, certs.path()).await?;
                            let r = match s {
                                Scenario::P2p => p2p(&a, &b, &g, t, open).await?,
                                Scenario::FanIn => fan_in(&a, &b, &g, t, open).await?,
                                _ => fanout(&a, &b, &g, t, open).await?,
                            };
                            eprintln!(
                                "{} {which} {tn} {}: {:.0} msg/s, {:.0} msg per broker CPU-s, p50 {} µs, p99 {} µs",
                                r.scenario, r.mode, r.delivered_per_s, r.msgs_per_broker_cpu_s, r.p50_us, r.p99_us
                            );
                            report.runs.push(r);
                        }
                    }
                }
            }
        }
    }
    Ok(report)
}

/// The name the brokers' development certificate is for.
fn localhost() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from("localhost").expect("`localhost` is a valid DNS name")
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

/// The report as Markdown tables (`quiclab::lab::report::md_table`).
fn markdown(report: &Report) -> String {
    let rows: Vec<Vec<String>> = report
        .runs
        .iter()
        .map(|r| {
            vec![
                r.scenario.clone(),
                r.mode.clone(),
                r.broker.clone(),
                r.transport.clone(),
                format!("{:.0}", r.delivered_per_s),
                format!("{:.2}", r.broker_cpu_s / r.seconds),
                format!("{:.0}", r.msgs_per_broker_cpu_s),
                ms(r.p50_us as f64),
                ms(r.p99_us as f64),
                r.lost.to_string(),
                r.msgs_per_datagram.map_or("–".into(), |m| format!("{m:.2}")),
            ]
        })
        .collect();
    let mut s = String::new();
    if !rows.is_empty() {
        s += &md_table(
            &[
                "scenario",
                "loop",
                "broker",
                "transport",
                "delivered msg/s",
                "broker CPU (cores)",
                "msg per broker CPU-s",
                "p50",
                "p99",
                "lost",
                "msg per datagram to subscribers",
            ],
            &rows,
        );
    }
    if !report.idle.is_empty() {
        let rows: Vec<Vec<String>> = report
            .idle
            .iter()
            .map(|r| {
                vec![
                    r.clients.to_string(),
                    r.broker.clone(),
                    r.transport.clone(),
                    format!("{} KiB", r.rss_before_kib),
                    format!("{} KiB", r.rss_after_kib),
                    format!("{:.2}", r.kib_per_client),
                ]
            })
            .collect();
        s += "\n";
        s += &md_table(&["idle clients", "broker", "transport", "RSS before", "RSS after", "KiB per client"], &rows);
    }
    if !report.handshakes.is_empty() {
        let rows: Vec<Vec<String>> = report
            .handshakes
            .iter()
            .map(|r| {
                vec![
                    r.handshakes.to_string(),
                    r.concurrency.to_string(),
                    r.broker.clone(),
                    r.transport.clone(),
                    format!("{:.2}", r.seconds),
                    format!("{:.0}", r.per_s),
                    format!("{:.0} µs", r.broker_cpu_us_each),
                    format!("{:.2} ms", r.p50_ms),
                    format!("{:.2} ms", r.p99_ms),
                    r.failed.to_string(),
                ]
            })
            .collect();
        s += "\n";
        s += &md_table(
            &[
                "handshakes",
                "in flight",
                "broker",
                "transport",
                "seconds",
                "per s",
                "broker CPU each",
                "p50 to CONNACK",
                "p99",
                "failed",
            ],
            &rows,
        );
    }
    // Ratios of runs measured side by side: quiclab / mosquitto on the same transport, and
    // quiclab's QUIC transports / its TLS (the goal: ≥ 0.7 msg per CPU-s).
    let find = |broker: &str, transport: &str, q: &RunResult| {
        report
            .runs
            .iter()
            .find(|m| m.broker == broker && m.transport == transport && m.scenario == q.scenario && m.mode == q.mode)
    };
    let ratio_row = |label: String, q: &RunResult, m: &RunResult| {
        vec![
            label,
            q.scenario.clone(),
            q.mode.clone(),
            format!("{:.2}", q.delivered_per_s / m.delivered_per_s.max(1e-9)),
            format!("{:.2}", q.msgs_per_broker_cpu_s / m.msgs_per_broker_cpu_s.max(1e-9)),
            format!("{:.2}", q.p99_us as f64 / (m.p99_us as f64).max(1.0)),
        ]
    };
    let mut ratios = Vec::new();
    // Against each mosquitto configuration, and marked: the one with more messages per broker
    // CPU-second in this run, the ratio to quote (issue 17: the anchor at its best).
    for q in report.runs.iter().filter(|r| r.broker == "quiclab") {
        let ms: Vec<&RunResult> =
            ["mosquitto-nodelay", "mosquitto-default"].iter().filter_map(|m| find(m, &q.transport, q)).collect();
        let best = ms.iter().map(|m| m.msgs_per_broker_cpu_s).fold(f64::NAN, f64::max);
        for m in &ms {
            let mark = if ms.len() > 1 && m.msgs_per_broker_cpu_s == best { " (the better mosquitto)" } else { "" };
            ratios.push(ratio_row(format!("quiclab / {}, {}{mark}", m.broker, q.transport), q, m));
        }
    }
    for q in report.runs.iter().filter(|r| r.broker == "quiclab" && r.transport.starts_with("quic")) {
        if let Some(m) = find("quiclab", "tls", q) {
            ratios.push(ratio_row(format!("quiclab {} / quiclab tls", q.transport), q, m));
        }
    }
    if !ratios.is_empty() {
        s += "\n";
        s += &md_table(&["ratio", "scenario", "loop", "msg/s", "msg per broker CPU-s", "p99"], &ratios);
    }
    if let Some(soak) = &report.soak {
        s += &soak::markdown(soak);
    }
    s
}

/// The configuration lines printed before the run and kept in the JSON report.
fn describe(a: &BenchArgs) -> Vec<(String, String)> {
    vec![
        ("scenario".to_string(), format!("{:?}", a.scenario)),
        ("brokers".into(), format!("{:?}", a.broker)),
        ("duration".into(), format!("{:?} (+{:?} warm-up)", a.duration, a.warmup)),
        ("p2p pairs".into(), a.pairs.to_string()),
        ("fan-out subscribers".into(), a.subscribers.to_string()),
        ("fan-in topics (publishers)".into(), a.fan_in_topics.to_string()),
        ("soak rate (msg/s published)".into(), a.soak_rate.to_string()),
        ("closed-loop inflight per publisher".into(), a.inflight.to_string()),
        ("payload bytes".into(), a.payload.to_string()),
        ("open-loop p2p rate (msg/s)".into(), a.p2p_rate.to_string()),
        ("open-loop fan-out rate (publish/s)".into(), a.fanout_rate.to_string()),
        ("transports".into(), a.transport.iter().map(|t| t.name()).collect::<Vec<_>>().join(",")),
        ("idle clients".into(), a.idle_clients.to_string()),
        ("handshakes (in flight)".into(), format!("{} ({})", a.handshakes, a.handshake_concurrency)),
        (
            "pinning".into(),
            if a.no_pin {
                "off".into()
            } else {
                format!("broker on cpu {}, generator on cpu {}", a.broker_cpu, a.load_cpu)
            },
        ),
        ("quiclab broker".into(), format!("{} mqtt broker", a.quiclab_bin.display())),
        ("clean session".into(), (!a.persistent_sessions).to_string()),
        (
            "persistence".into(),
            if a.persist || a.scenario == Scenario::Soak {
                format!(
                    "quiclab --data-dir --sync {} (always: fsync per group commit), mosquitto persistence true \
                     (saved on interval)",
                    a.sync
                )
            } else {
                "off".into()
            },
        ),
        ("mosquitto".into(), a.mosquitto.display().to_string()),
    ]
}

/// Check the options, run every measurement on the pinned generator thread, print the
/// configuration and the Markdown tables, write the JSON report if asked.
fn run(a: BenchArgs) -> Result<(), BenchError> {
    let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if !a.no_pin && (a.broker_cpu >= ncpu || a.load_cpu >= ncpu || a.broker_cpu == a.load_cpu) {
        return Err(BenchError::Cpus { broker: a.broker_cpu, load: a.load_cpu, ncpu });
    }
    if a.payload < 16 {
        return Err(BenchError::PayloadTooSmall(a.payload));
    }
    if a.broker != Brokers::Quiclab && !a.mosquitto.exists() {
        return Err(BenchError::NoMosquitto(a.mosquitto.clone()));
    }
    let config = describe(&a);
    println!("benches/mqtt.rs: configuration");
    for (k, v) in &config {
        println!("  {k:<36} {v}");
    }
    let json = a.json.clone();
    let pin = (!a.no_pin).then_some(a.load_cpu);
    // The generator gets its own thread (pinned) and a single-threaded runtime.
    let handle = std::thread::Builder::new()
        .name("mqtt-bench".into())
        .spawn(move || -> Result<Report, BenchError> {
            if let Some(cpu) = pin {
                pin_current_thread(&[cpu]).map_err(io_err(format!("pin the generator to cpu {cpu}")))?;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(io_err("start the generator's runtime"))?;
            rt.block_on(bench_all(a))
        })
        .map_err(io_err("start the generator thread"))?;
    let mut report = handle.join().map_err(|_| BenchError::GeneratorPanicked)??;
    report.config = config;
    println!("\n{}", markdown(&report));
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report).map_err(BenchError::Json)?;
        std::fs::write(&path, text).map_err(io_err(format!("write {}", path.display())))?;
    }
    match report.soak.as_ref().map(|s| s.problems()) {
        Some(n) if n > 0 => Err(BenchError::SoakFailed(n)),
        _ => Ok(()),
    }
}

fn main() {
    if let Err(e) = run(BenchArgs::parse()) {
        eprintln!("error: {e}");
        let mut cause = e.source();
        while let Some(c) = cause {
            eprintln!("  caused by: {c}");
            cause = c.source();
        }
        std::process::exit(1);
    }
}
