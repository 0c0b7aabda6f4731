//! `quiclab lab`: clap types of the experiments, converted into the library's plain parameter
//! structs ([`lab::LinkParams`], [`hol::HolParams`], [`handshake::HandshakeParams`],
//! [`migrate::MigrateParams`], [`flow::FlowParams`]), and their runners.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use quiclab::config::{parse_duration, parse_size};
use quiclab::lab::{self, flow, handshake, hol, migrate, units, LossModel, QueueLimit, RebindMode};

use super::signal::Signals;
use super::CliError;

/// `quiclab lab` subcommands.
#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub(crate) enum LabCommand {
    /// Run COMMAND in a client namespace joined to the quiclab server's namespace by an emulated
    /// link (delay, jitter, loss, rate limit, NAT rebinding): netem for people who can't use
    /// netem. Works as root and rootless.
    Link(LinkArgs),
    /// Head-of-line blocking under loss, HTTP/2 vs HTTP/3 (and MQTT over TCP vs QUIC): workloads
    /// that expose it, a loss sweep in random order with paired seeds, per-stream stall times,
    /// and conclusions generated from intervals.
    Hol(HolArgs),
    /// Time to first byte on a fresh connection in round trips: HTTP/2 over TCP + TLS 1.3,
    /// HTTP/3 1-RTT, HTTP/3 0-RTT.
    Handshake(HandshakeArgs),
    /// A NAT rebinding in the middle of an HTTP/3 and an HTTP/2 download: QUIC migrates, TCP dies.
    Migrate(MigrateArgs),
    /// Per-stream flow control: one stream's reader stalls, the other streams finish.
    Flow(FlowArgs),
}

/// `quiclab lab link [IMPAIRMENTS] -- COMMAND...`. Every impairment applies to each direction
/// separately (`--delay 25ms` is 25 ms up and 25 ms down); the `-up` and `-down` forms set one
/// direction and take precedence. Up is client → server.
#[derive(Args, Debug)]
#[command(after_help = "COMMAND runs in the client namespace with QUICLAB_SERVER (the server's bare IP address), \
QUICLAB_PORT, QUICLAB_CLIENT and QUICLAB_CA in its environment; its exit status becomes quiclab's.\n\
Example: quiclab lab link --rtt 50ms --loss 2% --rate 10mbit -- \
sh -c 'quiclab get -k https://$QUICLAB_SERVER:$QUICLAB_PORT/bytes/1000000 -o /dev/null -v'")]
pub(crate) struct LinkArgs {
    /// One-way delay, each direction.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "rtt")]
    pub(crate) delay: Option<Duration>,
    /// Round-trip delay, split evenly: --rtt 50ms is 25 ms each way.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) rtt: Option<Duration>,
    /// One-way delay client → server.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) delay_up: Option<Duration>,
    /// One-way delay server → client.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) delay_down: Option<Duration>,
    /// Uniform jitter, each direction: every packet's delay is DELAY ± JITTER. Packets keep their
    /// order unless --reorder is given.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) jitter: Option<Duration>,
    /// Jitter client → server.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) jitter_up: Option<Duration>,
    /// Jitter server → client.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) jitter_down: Option<Duration>,
    /// Let jitter reorder packets (both directions).
    #[arg(long)]
    pub(crate) reorder: bool,
    /// Random (independent) loss, each direction: 2% or 0.02.
    #[arg(long, value_name = "PROB", value_parser = units::parse_loss, conflicts_with = "burst_loss")]
    pub(crate) loss: Option<LossModel>,
    /// Random loss client → server.
    #[arg(long, value_name = "PROB", value_parser = units::parse_loss, conflicts_with = "burst_loss_up")]
    pub(crate) loss_up: Option<LossModel>,
    /// Random loss server → client.
    #[arg(long, value_name = "PROB", value_parser = units::parse_loss, conflicts_with = "burst_loss_down")]
    pub(crate) loss_down: Option<LossModel>,
    /// Bursty loss, each direction: Gilbert–Elliott P,R,BAD,GOOD in netem's gemodel order, the
    /// last two optional (P = Good→Bad, R = Bad→Good per packet; BAD = loss in Bad, default 100%;
    /// GOOD = loss in Good, default 0%). 1%,30% gives bursts of 3.3 packets on average, 3.2% of
    /// packets lost.
    #[arg(long, value_name = "P,R[,BAD[,GOOD]]", value_parser = units::parse_burst_loss)]
    pub(crate) burst_loss: Option<LossModel>,
    /// Bursty loss client → server.
    #[arg(long, value_name = "P,R[,BAD[,GOOD]]", value_parser = units::parse_burst_loss)]
    pub(crate) burst_loss_up: Option<LossModel>,
    /// Bursty loss server → client.
    #[arg(long, value_name = "P,R[,BAD[,GOOD]]", value_parser = units::parse_burst_loss)]
    pub(crate) burst_loss_down: Option<LossModel>,
    /// Rate limit, each direction, in bits of IP datagrams per second: 10mbit, 500kbit, 1gbit.
    #[arg(long, value_name = "RATE", value_parser = units::parse_rate)]
    pub(crate) rate: Option<u64>,
    /// Rate limit client → server.
    #[arg(long, value_name = "RATE", value_parser = units::parse_rate)]
    pub(crate) rate_up: Option<u64>,
    /// Rate limit server → client.
    #[arg(long, value_name = "RATE", value_parser = units::parse_rate)]
    pub(crate) rate_down: Option<u64>,
    /// Tail-drop queue in front of the rate limit: bytes (64k) or packets (100p). Default: 100 ms
    /// at the rate, at least 16 full-size packets.
    #[arg(long, value_name = "SIZE|Np", value_parser = units::parse_queue)]
    pub(crate) queue: Option<QueueLimit>,
    /// Queue client → server.
    #[arg(long, value_name = "SIZE|Np", value_parser = units::parse_queue)]
    pub(crate) queue_up: Option<QueueLimit>,
    /// Queue server → client.
    #[arg(long, value_name = "SIZE|Np", value_parser = units::parse_queue)]
    pub(crate) queue_down: Option<QueueLimit>,
    /// Rebind the client's NAT mapping this long after COMMAND starts (repeatable): the server
    /// then sees the client's TCP and UDP flows from a new port (or address).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) rebind_at: Vec<Duration>,
    /// What a rebinding changes: port (a new source port per flow) or address (a new client
    /// address, 198.18.0.2, .3, ...).
    #[arg(long, value_name = "port|address", default_value = "port")]
    pub(crate) rebind: RebindMode,
    /// Seed of the loss and jitter generators (default: random, printed and recorded).
    #[arg(long, value_name = "N")]
    pub(crate) seed: Option<u64>,
    /// Write results.json, report.md and SVG plots into DIR (created if missing).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// Port of the quiclab server (UDP for HTTP/3, TCP for HTTP/2) in the server namespace.
    #[arg(long, value_name = "PORT", default_value_t = quiclab::config::DEFAULT_PORT)]
    pub(crate) port: u16,
    /// Directory of the server's development certificates (created on first start).
    #[arg(long, value_name = "DIR", default_value = "certs")]
    pub(crate) certs: PathBuf,
    /// Start no quiclab server: COMMAND talks to whatever runs in the server namespace (nothing,
    /// unless it starts something there itself).
    #[arg(long)]
    pub(crate) no_server: bool,
    /// Probes per self-check attempt.
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub(crate) self_check_probes: usize,
    /// Skip the self-check (results are then marked unchecked).
    #[arg(long)]
    pub(crate) skip_self_check: bool,
    /// The command to run in the client namespace, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<OsString>,
}

/// `quiclab lab hol` options.
#[derive(Args, Debug)]
#[command(after_help = "Workloads: small (many small responses at once on one connection), sequential (one small \
request at a time), page (an HTML document, then 30 subresources at once), bulk (N large responses on one connection \
vs N connections: a difference-of-differences), mqtt (MQTT/TCP vs MQTT/QUIC on one stream vs a stream per topic). \
Every workload runs at every loss point, RUNS times, each run on its own link seed shared by its arms, in a random \
interleaved order. report.md opens with conclusions generated from paired per-run differences and their 95% \
intervals. Method: docs/lab.md.")]
pub(crate) struct HolArgs {
    /// Workloads to run, comma-separated.
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "small,sequential,page")]
    pub(crate) workload: Vec<hol::Workload>,
    /// Loss rates to sweep, per direction, comma-separated (`0,1%,2%`).
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = units::parse_probability,
          default_value = "0,0.5%,1%,2%,4%")]
    pub(crate) loss: Vec<f64>,
    /// Round-trip time of the link (half each way).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "50ms")]
    pub(crate) rtt: Duration,
    /// Bottleneck rate each way.
    #[arg(long, value_name = "RATE", value_parser = units::parse_rate, default_value = "10mbit")]
    pub(crate) rate: u64,
    /// Tail-drop queue in front of the rate: bytes (64k) or packets (100p). Default: 100 ms at
    /// the rate, at least 16 full-size packets.
    #[arg(long, value_name = "SIZE|Np", value_parser = units::parse_queue)]
    pub(crate) queue: Option<QueueLimit>,
    /// Runs per workload and loss point (every arm once per run, on the run's own link seed).
    #[arg(long, value_name = "R", default_value_t = 20)]
    pub(crate) runs: usize,
    /// Congestion control on both sides: cubic, bbr or newreno (Linux TCP_CONGESTION and
    /// quinn's controller of the same name).
    #[arg(long, value_name = "cubic|bbr|newreno", default_value = "cubic")]
    pub(crate) cc: quiclab::config::Congestion,
    /// QUIC's initial congestion window: linux (set to what Linux TCP starts with on the link,
    /// 10 × MSS read from TCP_INFO) or quinn (quinn's own default).
    #[arg(long, value_name = "linux|quinn", default_value = "linux")]
    pub(crate) initial_window: hol::InitialWindow,
    /// Skip the per-stream stall analysis (it taps the relay and decrypts every packet of a run
    /// with the TLS key log).
    #[arg(long)]
    pub(crate) no_stall: bool,
    /// `small`: responses requested together per round.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub(crate) small_requests: usize,
    /// `small`: bytes per response.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "4k")]
    pub(crate) small_size: u64,
    /// `small`: rounds per run (the next round starts when every response of the last is in).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub(crate) small_rounds: usize,
    /// `sequential`: requests per run, one at a time.
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub(crate) sequential_requests: usize,
    /// `sequential`: bytes per response.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "4k")]
    pub(crate) sequential_size: u64,
    /// `page`: page loads per run.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub(crate) page_loads: usize,
    /// `bulk`: concurrent requests (N).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub(crate) requests: usize,
    /// `bulk`: size of each response (S).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "100k")]
    pub(crate) size: u64,
    /// `bulk`: count connection set-up in the timed part.
    #[arg(long)]
    pub(crate) include_handshake: bool,
    /// A short preset: loss 0 and 2%, 3 runs, 40 ms, 20 Mbit/s, every workload cut down.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Results folder (created if missing).
    #[arg(long, value_name = "DIR", default_value = "hol-results")]
    pub(crate) out: std::path::PathBuf,
    /// Seed of the link's random streams and of the run order.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Add the mqtt workload (the same as listing it in --workload).
    #[arg(long)]
    pub(crate) mqtt: bool,
    /// Run only the mqtt workload.
    #[arg(long)]
    pub(crate) mqtt_only: bool,
    /// Capture the relay's traffic of the whole sweep (`OUT/pcap/sweep.pcap`, dropped packets in
    /// `sweep.dropped.pcap`, each run's span in results.json) and keep the TLS key log
    /// (`OUT/pcap/keys.log`), so Wireshark or tshark decrypts HTTP/2, HTTP/3 and MQTT over QUIC.
    #[arg(long)]
    pub(crate) pcap: bool,
    /// `mqtt`: topics (K).
    #[arg(long, value_name = "K", default_value_t = 8)]
    pub(crate) topics: usize,
    /// `mqtt`: messages per second per topic (QoS 1, pipelined).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub(crate) msg_rate: u32,
    /// `mqtt`: payload bytes per message (at least 14: send time, sequence, topic).
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    pub(crate) payload: usize,
    /// `mqtt`: how long the publisher publishes per run (`--quick`: 3 s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    pub(crate) duration: Duration,
}

/// `quiclab lab flow` options.
#[derive(Args, Debug)]
pub(crate) struct FlowArgs {
    /// Write flow.json, flow.md and flow.svg into DIR (created if missing; may exist).
    #[arg(long, value_name = "DIR", default_value = "flow-results")]
    pub(crate) out: std::path::PathBuf,
    /// Streams downloading at once on the one connection.
    #[arg(long, value_name = "K", default_value_t = 4)]
    pub(crate) streams: usize,
    /// Bytes each stream downloads.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64M")]
    pub(crate) size: u64,
    /// Per-stream receive window W (client side; the subject of the demonstration).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256k")]
    pub(crate) stream_window: u64,
    /// Connection receive window (client side); large, so only stream credit limits the stall.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64M")]
    pub(crate) conn_window: u64,
    /// The stalled stream stops being read after this many bytes.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1M")]
    pub(crate) stall_after: u64,
    /// How long the client stops reading it.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2s")]
    pub(crate) stall: Duration,
}

/// `quiclab lab handshake` options.
#[derive(Args, Debug)]
pub(crate) struct HandshakeArgs {
    /// Round-trip time of the link (half each way).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "50ms")]
    pub(crate) rtt: Duration,
    /// Fresh connections per case.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub(crate) runs: usize,
    /// Results folder: results.json, report.md, handshake.svg (created if missing).
    #[arg(long, value_name = "DIR", default_value = "handshake-results")]
    pub(crate) out: std::path::PathBuf,
    /// Seed of the link's random streams (no loss here, but recorded).
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
}

/// `quiclab lab migrate` options.
#[derive(Args, Debug)]
pub(crate) struct MigrateArgs {
    /// Round-trip time of the link (half each way).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "40ms")]
    pub(crate) rtt: Duration,
    /// Bottleneck rate each way, bits per second (so the download lasts long enough to rebind).
    #[arg(long, value_name = "RATE", value_parser = units::parse_rate, default_value = "20mbit")]
    pub(crate) rate: u64,
    /// Bytes to download.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "8M")]
    pub(crate) size: u64,
    /// When the NAT rebinding happens, after the download starts.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    pub(crate) rebind_at: Duration,
    /// Results folder: results.json, report.md, migrate.svg (created if missing).
    #[arg(long, value_name = "DIR", default_value = "migrate-results")]
    pub(crate) out: std::path::PathBuf,
    /// Seed of the link's random streams.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
}

impl From<LinkArgs> for lab::LinkParams {
    fn from(a: LinkArgs) -> Self {
        lab::LinkParams {
            delay: a.delay,
            rtt: a.rtt,
            delay_up: a.delay_up,
            delay_down: a.delay_down,
            jitter: a.jitter,
            jitter_up: a.jitter_up,
            jitter_down: a.jitter_down,
            reorder: a.reorder,
            loss: a.loss,
            loss_up: a.loss_up,
            loss_down: a.loss_down,
            burst_loss: a.burst_loss,
            burst_loss_up: a.burst_loss_up,
            burst_loss_down: a.burst_loss_down,
            rate: a.rate,
            rate_up: a.rate_up,
            rate_down: a.rate_down,
            queue: a.queue,
            queue_up: a.queue_up,
            queue_down: a.queue_down,
            rebind_at: a.rebind_at,
            rebind: a.rebind,
            seed: a.seed,
            out: a.out,
            port: a.port,
            certs: a.certs,
            no_server: a.no_server,
            self_check_probes: a.self_check_probes,
            skip_self_check: a.skip_self_check,
            command: a.command,
        }
    }
}

impl From<HolArgs> for hol::HolParams {
    fn from(a: HolArgs) -> Self {
        let mut workloads = if a.mqtt_only { vec![hol::Workload::Mqtt] } else { a.workload };
        if a.mqtt && !workloads.contains(&hol::Workload::Mqtt) {
            workloads.push(hol::Workload::Mqtt);
        }
        hol::HolParams {
            workloads,
            loss: a.loss,
            rtt: a.rtt,
            rate: a.rate,
            queue: a.queue,
            runs: a.runs,
            cc: a.cc,
            initial_window: a.initial_window,
            stall: !a.no_stall,
            small_requests: a.small_requests,
            small_size: a.small_size,
            small_rounds: a.small_rounds,
            sequential_requests: a.sequential_requests,
            sequential_size: a.sequential_size,
            page_loads: a.page_loads,
            requests: a.requests,
            size: a.size,
            include_handshake: a.include_handshake,
            quick: a.quick,
            out: a.out,
            seed: a.seed,
            pcap: a.pcap,
            topics: a.topics,
            msg_rate: a.msg_rate,
            payload: a.payload,
            duration: a.duration,
        }
    }
}

impl From<HandshakeArgs> for handshake::HandshakeParams {
    fn from(a: HandshakeArgs) -> Self {
        handshake::HandshakeParams { rtt: a.rtt, runs: a.runs, out: a.out, seed: a.seed }
    }
}

impl From<MigrateArgs> for migrate::MigrateParams {
    fn from(a: MigrateArgs) -> Self {
        migrate::MigrateParams {
            rtt: a.rtt,
            rate: a.rate,
            size: a.size,
            rebind_at: a.rebind_at,
            out: a.out,
            seed: a.seed,
        }
    }
}

impl From<FlowArgs> for flow::FlowParams {
    fn from(a: FlowArgs) -> Self {
        flow::FlowParams {
            out: a.out,
            streams: a.streams,
            size: a.size,
            stream_window: a.stream_window,
            conn_window: a.conn_window,
            stall_after: a.stall_after,
            stall: a.stall,
        }
    }
}

/// Run a `quiclab lab` subcommand; the exit status to return. `lab link` stops on SIGINT or
/// SIGTERM with status 128 + the signal.
pub(crate) async fn run(cmd: LabCommand) -> Result<i32, CliError> {
    let code = match cmd {
        LabCommand::Link(args) => {
            let mut signals = Signals::catch();
            lab::run_link(args.into(), async move { signals.recv().await }).await?
        }
        LabCommand::Hol(args) => hol::run_hol(args.into()).await?,
        LabCommand::Handshake(args) => handshake::run_handshake(args.into()).await?,
        LabCommand::Migrate(args) => migrate::run_migrate(args.into()).await?,
        LabCommand::Flow(args) => flow::run_flow(args.into()).await?,
    };
    Ok(code)
}
