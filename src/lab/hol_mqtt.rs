//! `quiclab lab hol --mqtt`: head-of-line blocking across MQTT topics, and an ablation that
//! isolates it with the transport held fixed (docs/mqtt-over-quic.md §2.2–2.5, §6.12).
//!
//! K topics from ONE publisher connection to ONE subscriber connection through quiclab's broker
//! in the server namespace. Publisher and subscriber both run in the client namespace, in one
//! process on one clock, so every message crosses the impaired link twice (publisher → broker,
//! broker → subscriber) and its latency is receive time − send time on the same `Instant` base.
//! The publisher is open-loop: every topic publishes at a fixed rate, QoS 1, pipelined (it never
//! waits for a PUBACK before the next message), for a fixed time.
//!
//! Three arms ([`MqttArm`]):
//! * **MQTT/TCP**: one byte stream for every topic; a lost segment holds back every topic's bytes
//!   behind it.
//! * **MQTT/QUIC, one stream** (single-stream mode, §2.2): every topic's PUBLISHes, PUBACKs,
//!   the one SUBSCRIBE and every delivery on the connection's control stream, exactly as TCP
//!   carries them. A lost packet holds back everything behind it on that stream, as over TCP.
//! * **MQTT/QUIC, stream per topic** (§2.3–2.5): one data stream per topic on the same kind of
//!   connection: same quinn, same controller, same windows. A lost packet holds back only the
//!   streams whose frames it carried.
//!
//! QUIC one stream − QUIC stream per topic is head-of-line blocking with the stack (congestion
//! controller, loss recovery, pacing, ACK policy, encryption) held fixed; TCP − QUIC one stream
//! is the transport with head-of-line blocking on both sides; TCP − QUIC per topic is the
//! comparison an MQTT user sees. [`findings`] turns each into a paired per-run difference with a
//! sign-test interval ([`report::Finding`]), per loss point and metric (share of late messages,
//! p50, p99, mean latency): the report states only what those intervals support.
//!
//! Random streams: the scheduler (in [`super::hol`]) decides the arm order and gives every
//! (loss, run) pair its own `phase`, the same for all three arms of the pair; `one_run` replays
//! link random stream `phase` in the timed part and `phase | SETUP_PHASE_BIT` while connecting
//! and subscribing, so the set-up's packets (which differ between arms) do not shift the timed
//! part's loss draws.
//!
//! Loss is reported honestly: a run's realized loss per direction counts every datagram the
//! relay dropped (the loss model, the bottleneck queue, stale NAT mappings) over the datagrams
//! offered (the link's `DirStats::realized_loss`), with queue drops in their own column, since an arm that
//! overflows the queue meets more loss than configured.
//!
//! Both clients are raw framed streams (not [`crate::mqtt::Client`], whose `publish` waits for
//! the acknowledgement) so the publisher can pipeline and the sockets can carry the same
//! congestion controller as the broker: TCP_CONGESTION on the client's TCP sockets and on the
//! broker's listener (whose accepted sockets inherit it), quinn's controller of the same name on
//! both QUIC ends.
//!
//! Memory: a run keeps one latency per distinct message received and the set of (topic,
//! sequence) pairs seen; only the run's own publisher publishes to its topics, so both are
//! bounded by the messages it publishes (K × rate × duration, from the settings); QoS 1
//! duplicates are only counted. Each packet read is bounded by `MAX_PACKET` (1 MiB).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use super::link::{Link, LinkStats};
use super::report::{self, Series};
use super::LabError;
use crate::mqtt::client::{self as mc, framed, BoxRead, BoxWrite, ClientOptions, PacketReader, PacketWriter};
use crate::mqtt::codec::{
    v3_options, ConnectReasonCode, DisconnectReasonCode, Packet, Pid, Publish, QoS, QosPid, Subscribe,
};
use crate::mqtt::MqttError;
use crate::tls::Trust;

/// Smallest payload: send time (8 bytes), sequence number (4), topic index (2).
pub(crate) const MIN_PAYLOAD: usize = 14;

/// The broker's per-channel in-flight window in this experiment: high enough never to bind (the
/// default, 20 per channel, would give MQTT/TCP 20 slots and MQTT/QUIC 20 per stream, a
/// difference of MQTT's flow control rather than of the transport).
pub(crate) const BROKER_MAX_INFLIGHT: usize = 65_000;

/// The three MQTT arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MqttArm {
    /// MQTT 3.1.1 over plain TCP: one byte stream for every topic.
    Tcp,
    /// MQTT over QUIC in single-stream mode: every topic on the control stream, as over TCP.
    QuicSingle,
    /// MQTT over QUIC in per-topic mode: one bidirectional data stream per topic.
    QuicPerTopic,
}

impl MqttArm {
    /// All three, in legend order (the scheduler decides the order they run in).
    pub const ALL: [MqttArm; 3] = [MqttArm::Tcp, MqttArm::QuicSingle, MqttArm::QuicPerTopic];

    /// The label in the report and the plots.
    pub fn name(self) -> &'static str {
        match self {
            MqttArm::Tcp => "MQTT/TCP",
            MqttArm::QuicSingle => "MQTT/QUIC, one stream",
            MqttArm::QuicPerTopic => "MQTT/QUIC, stream per topic",
        }
    }

    /// Short tag for client identifiers.
    fn tag(self) -> &'static str {
        match self {
            MqttArm::Tcp => "tcp",
            MqttArm::QuicSingle => "quic1",
            MqttArm::QuicPerTopic => "quick",
        }
    }

    /// One data stream per topic (else everything on the control stream or the TCP connection).
    fn per_topic(self) -> bool {
        self == MqttArm::QuicPerTopic
    }
}

/// Added to a run's `phase` for its untimed set-up (connect, subscribe): the set-up replays
/// link random stream `phase | SETUP_PHASE_BIT`, the timed part stream `phase`. Phases the
/// scheduler hands out must therefore stay below this bit (`one_run` refuses others).
pub const SETUP_PHASE_BIT: u32 = 0x4000_0000;

/// What one MQTT run does (from [`super::hol::HolParams`]).
#[derive(Debug, Clone, Serialize)]
pub struct MqttSettings {
    /// Topics (K), `hol/0` … `hol/K-1`.
    pub topics: usize,
    /// Messages per second per topic.
    pub rate_per_topic: u32,
    /// Payload bytes per message.
    pub payload: usize,
    /// QoS of every PUBLISH and of every subscription.
    pub qos: u8,
    /// How long the publisher publishes, per run, ms.
    pub duration_ms: f64,
    /// Messages per topic per run.
    pub messages_per_topic: usize,
    /// Publisher pattern.
    pub pattern: &'static str,
    /// Where the clients run.
    pub placement: &'static str,
    /// The broker's `max_inflight` per channel.
    pub broker_max_inflight: usize,
    /// A message is "late" beyond this, ms: 1.5 × the link's RTT (a message crosses the link
    /// twice, so one RTT is its unimpaired latency). Head-of-line blocking shows in how many
    /// messages are late more than in how late the worst one is.
    pub late_threshold_ms: f64,
}

impl MqttSettings {
    /// Messages per run, all topics.
    pub fn messages(&self) -> usize {
        self.topics * self.messages_per_topic
    }
}

/// Congestion control and the other settings of the MQTT arms, as they ran.
#[derive(Debug, Clone, Serialize)]
pub struct MqttFairness {
    /// quinn's controller, on the client and the broker alike (`cubic`, or `newreno`).
    pub quic_congestion: String,
    /// TCP_CONGESTION read back from the publisher's and subscriber's TCP sockets.
    pub tcp_congestion_client: String,
    /// TCP_CONGESTION of the broker's MQTT/TCP listener, whose accepted sockets inherit it (read
    /// back after the lab set it; the namespace default, BBR, if that failed).
    pub tcp_congestion_broker: String,
    /// TCP_NODELAY on the clients' and the broker's TCP sockets.
    pub tcp_nodelay: bool,
    /// QUIC stream and connection windows (the same on both ends and as in the HTTP arms).
    pub stream_window: u64,
    pub conn_window: u64,
    /// Differences no setting removes.
    pub remaining_differences: Vec<String>,
}

/// One run of one MQTT arm.
#[derive(Debug, Clone, Serialize)]
pub struct MqttRunResult {
    pub arm: MqttArm,
    pub loss: f64,
    pub run: usize,
    /// The link random stream the timed part replayed (the same for every arm of this loss
    /// point and run); the set-up replayed `phase | SETUP_PHASE_BIT`.
    pub phase: u32,
    /// PUBLISH packets written by the publisher.
    pub sent: u64,
    /// PUBACKs the publisher received.
    pub acked: u64,
    /// Distinct messages the subscriber received.
    pub received: u64,
    /// Deliveries of a message already received (QoS 1 allows them).
    pub duplicates: u64,
    /// `sent − received`: QoS 1 messages that never arrived (should be 0).
    pub lost: u64,
    /// Per received message: receive time − send time, ms, in order of arrival.
    pub latency_ms: Vec<f64>,
    /// Worst latency per topic, ms (a stall that hits every topic shows in every entry).
    pub topic_max_ms: Vec<f64>,
    /// This run's own statistics of `latency_ms`, the unit the paired differences pair.
    pub metrics: MqttRunMetrics,
    /// Realized loss per direction, client → server and server → client: every datagram the
    /// relay dropped (loss model, queue, stale NAT) over the datagrams offered
    /// (`DirStats::realized_loss`).
    pub realized_loss_up: f64,
    pub realized_loss_down: f64,
    /// The loss model's own drops over its draws, per direction (`model_loss`).
    pub model_loss_up: f64,
    pub model_loss_down: f64,
    /// Datagrams the bottleneck queue dropped (tail drop), per direction.
    pub queue_drops_up: u64,
    pub queue_drops_down: u64,
    /// The relay's counters for the timed part (publishing and draining).
    pub link: LinkStats,
    /// The congestion controller the clients ran: TCP_CONGESTION read back from the TCP
    /// socket, or quinn's controller.
    pub congestion: String,
}

/// One run's latency statistics (every received message of the run, all topics).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MqttRunMetrics {
    /// Share of messages later than [`MqttSettings::late_threshold_ms`], percent.
    pub late_pct: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms (linear interpolation, [`report::quantile`]).
    pub p99_ms: f64,
    /// Mean latency, ms.
    pub mean_ms: f64,
}

impl MqttRunMetrics {
    /// The statistics of one run's latencies; every field `NaN` for a run that received nothing
    /// (a paired difference with such a run is left out of its interval).
    pub fn of(latency_ms: &[f64], late_threshold_ms: f64) -> MqttRunMetrics {
        if latency_ms.is_empty() {
            return MqttRunMetrics { late_pct: f64::NAN, p50_ms: f64::NAN, p99_ms: f64::NAN, mean_ms: f64::NAN };
        }
        let late = latency_ms.iter().filter(|&&l| l > late_threshold_ms).count();
        MqttRunMetrics {
            late_pct: 100.0 * late as f64 / latency_ms.len() as f64,
            p50_ms: report::quantile(latency_ms, 0.5),
            p99_ms: report::quantile(latency_ms, 0.99),
            mean_ms: report::mean(latency_ms),
        }
    }
}

/// One MQTT arm at one loss rate, all runs pooled.
#[derive(Debug, Clone, Serialize)]
pub struct MqttArmSummary {
    pub arm: MqttArm,
    pub loss: f64,
    pub runs: usize,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Every run's latencies pooled.
    pub latency: report::Percentiles,
    /// Median over runs of each run's share of late messages (percent), with a 95% bootstrap
    /// interval over runs.
    pub run_late_pct: report::Ci,
    /// Median over runs of each run's p50, with a 95% bootstrap interval over runs.
    pub run_p50_ms: report::Ci,
    /// Median over runs of each run's p99, with a 95% bootstrap interval over runs.
    pub run_p99_ms: report::Ci,
    /// Median over runs of each run's mean latency, with a 95% bootstrap interval over runs.
    pub run_mean_ms: report::Ci,
    /// Share of messages later than [`MqttSettings::late_threshold_ms`], all runs pooled.
    pub late_fraction: f64,
    /// Mean over runs of the realized loss (all drops over offered), per direction.
    pub realized_loss_up: f64,
    pub realized_loss_down: f64,
    /// Mean over runs of the loss model's own rate, per direction.
    pub model_loss_up: f64,
    pub model_loss_down: f64,
    /// Mean over runs of the queue's drops, per direction.
    pub queue_drops_up: f64,
    pub queue_drops_down: f64,
}

/// The `mqtt` section of `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct MqttResults {
    pub settings: MqttSettings,
    pub fairness: MqttFairness,
    pub runs: Vec<MqttRunResult>,
    pub arms: Vec<MqttArmSummary>,
    /// The paired comparisons ([`findings`]), each with the sentence its interval supports.
    pub findings: Vec<report::Finding>,
}

/// Everything one run needs to reach the broker.
#[derive(Clone)]
pub(crate) struct MqttTarget {
    /// The broker's server-namespace address (IP for both; the TCP port is MQTT's, 1883).
    pub tcp: SocketAddr,
    /// The QUIC endpoint the broker shares with HTTP/3 (ALPN `mqtt`).
    pub quic: SocketAddr,
    /// The TLS name (the development certificate's).
    pub server_name: String,
    pub trust: Trust,
    /// quinn transport for the client end (the broker's is the server's).
    pub transport: crate::config::TransportConfig,
    /// TCP_CONGESTION for the clients' TCP sockets.
    pub tcp_congestion: String,
}

const MAX_PACKET: usize = 1 << 20;

/// An open MQTT connection of the experiment: its control halves, its data streams (QUIC per
/// topic; empty over TCP and in single-stream mode, where the control halves carry everything),
/// and what keeps it alive.
struct Conn {
    control: (PacketReader<BoxRead>, PacketWriter<BoxWrite>),
    data: Vec<(PacketReader<BoxRead>, PacketWriter<BoxWrite>)>,
    quic: Option<(quinn::Endpoint, quinn::Connection)>,
    congestion: String,
}

impl Conn {
    /// Connect, send CONNECT, wait for CONNACK; over QUIC also open `streams` data streams (0 for
    /// single-stream mode).
    async fn open(t: &MqttTarget, arm: MqttArm, client_id: &str, streams: usize) -> Result<Conn, LabError> {
        let opts = ClientOptions { client_id: client_id.into(), keep_alive: 0, ..Default::default() };
        let connect = opts.connect_packet()?;
        let mut c = match arm {
            MqttArm::Tcp => {
                use std::os::fd::AsRawFd;
                let sock = tokio::net::TcpSocket::new_v4()?;
                crate::tcp::set_congestion(sock.as_raw_fd(), &t.tcp_congestion)?;
                let s = sock.connect(t.tcp).await?;
                s.set_nodelay(true)?;
                let congestion = crate::stats::tcp_congestion(s.as_raw_fd()).unwrap_or_else(|e| format!("? ({e})"));
                let (r, w) = s.into_split();
                Conn { control: framed(r, w, MAX_PACKET), data: Vec::new(), quic: None, congestion }
            }
            MqttArm::QuicSingle | MqttArm::QuicPerTopic => {
                let endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?;
                let mut cfg = mc::client_config(&t.trust)?;
                cfg.transport_config(Arc::new(crate::quic::transport_config(&t.transport)?));
                let conn = mc::QuicConnection::connect_on(&endpoint, &cfg, t.quic, &t.server_name).await?;
                let (send, recv) = conn.open_bi().await?;
                let mut data = Vec::with_capacity(streams);
                for _ in 0..streams {
                    let (s, r) = conn.open_bi().await?;
                    data.push(framed(r, s, MAX_PACKET));
                }
                let congestion = format!("{:?}", t.transport.congestion).to_lowercase();
                Conn { control: framed(recv, send, MAX_PACKET), data, quic: Some((endpoint, conn)), congestion }
            }
        };
        c.control.1.send(&connect).await?;
        match c.control.0.next().await? {
            Some(Packet::Connack(a)) if a.reason_code == ConnectReasonCode::Success => Ok(c),
            other => Err(LabError::Experiment(format!("expected CONNACK (accepted), got {other:?}"))),
        }
    }
}

/// The topic index's name.
fn topic_name(k: usize) -> String {
    format!("hol/{k}")
}

/// What the subscriber has received.
struct Recorder {
    t0: Instant,
    seen: HashSet<(u16, u32)>,
    latency_ms: Vec<f64>,
    topic_max_ms: Vec<f64>,
    duplicates: u64,
    expected: usize,
    all_in: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Recorder {
    fn record(&mut self, payload: &[u8], now: Instant) {
        if payload.len() < MIN_PAYLOAD {
            return;
        }
        let ns = u64::from_be_bytes(payload[0..8].try_into().unwrap_or_default());
        let seq = u32::from_be_bytes(payload[8..12].try_into().unwrap_or_default());
        let k = u16::from_be_bytes(payload[12..14].try_into().unwrap_or_default());
        if !self.seen.insert((k, seq)) {
            self.duplicates += 1;
            return;
        }
        let sent = self.t0 + Duration::from_nanos(ns);
        let ms = now.saturating_duration_since(sent).as_secs_f64() * 1000.0;
        self.latency_ms.push(ms);
        if let Some(m) = self.topic_max_ms.get_mut(k as usize) {
            *m = m.max(ms);
        }
        if self.seen.len() == self.expected {
            if let Some(tx) = self.all_in.take() {
                let _ = tx.send(());
            }
        }
    }
}

/// Read deliveries on one stream (or the TCP connection), record them, PUBACK each on the
/// stream it came on (docs/mqtt-over-quic.md §2.4).
async fn subscriber_stream(
    mut r: PacketReader<BoxRead>,
    mut w: PacketWriter<BoxWrite>,
    rec: Arc<Mutex<Recorder>>,
) -> Result<(), MqttError> {
    while let Some(p) = r.next().await? {
        if let Packet::Publish(p) = p {
            let now = Instant::now();
            rec.lock().unwrap_or_else(|e| e.into_inner()).record(&p.payload, now);
            if let QosPid::Level1(pid) = p.qos_pid {
                w.send(&Packet::puback(pid)).await?;
            }
        }
    }
    Ok(())
}

/// Count the publisher's PUBACKs on one stream (or the TCP connection).
async fn ack_reader(mut r: PacketReader<BoxRead>, acked: Arc<AtomicU64>) -> Result<(), MqttError> {
    while let Some(p) = r.next().await? {
        if matches!(p, Packet::Puback(_)) {
            acked.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// A publisher's writer and its packet-identifier counter (shared by every topic over TCP, one
/// per stream over QUIC: a client MAY number per stream, docs/mqtt-over-quic.md §2.6).
type SharedWriter = Arc<tokio::sync::Mutex<(PacketWriter<BoxWrite>, u16)>>;

/// Publish topic `k`'s messages on schedule: message i at t0 + (i + k/K) / rate, not waiting for
/// acknowledgements. The payload carries the moment it was handed to the transport.
async fn publish_topic(
    w: SharedWriter,
    k: usize,
    s: MqttSettings,
    t0: Instant,
    sent: Arc<AtomicU64>,
) -> Result<(), MqttError> {
    let period = Duration::from_secs_f64(1.0 / f64::from(s.rate_per_topic.max(1)));
    let offset = period.mul_f64(k as f64 / s.topics as f64);
    let name = mc::topic(&topic_name(k))?;
    for i in 0..s.messages_per_topic {
        tokio::time::sleep_until((t0 + offset + period * i as u32).into()).await;
        let mut g = w.lock().await;
        let ns = t0.elapsed().as_nanos() as u64;
        let mut body = BytesMut::with_capacity(s.payload);
        body.put_u64(ns);
        body.put_u32(i as u32);
        body.put_u16(k as u16);
        body.resize(s.payload.max(MIN_PAYLOAD), 0);
        g.1 = g.1.wrapping_add(1).max(1);
        let pid = Pid::try_from(g.1).unwrap_or_default();
        let p = Publish::new(QosPid::Level1(pid), name.clone(), Bytes::from(body));
        g.0.send(&Packet::Publish(p)).await?;
        sent.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// One run of one arm: connect and subscribe (outside the timed part, on link random stream
/// `phase | SETUP_PHASE_BIT`), then publish for the configured time on random stream `phase`
/// (the scheduler gives every arm of one (loss, run) pair the same `phase`, and every pair its
/// own) and wait until every message arrived and every PUBACK came back (or a deadline passed).
pub(crate) async fn one_run(
    link: &Link,
    t: &MqttTarget,
    s: &MqttSettings,
    arm: MqttArm,
    loss: f64,
    run: usize,
    phase: u32,
) -> Result<MqttRunResult, LabError> {
    if phase & SETUP_PHASE_BIT != 0 {
        return Err(LabError::Config(format!(
            "MQTT run phase {phase:#x} overlaps the set-up bit {SETUP_PHASE_BIT:#x}"
        )));
    }
    let k = s.topics;
    if k == 0 {
        return Err(LabError::Config("MQTT runs need at least one topic".into()));
    }
    link.begin_phase(phase | SETUP_PHASE_BIT);
    let tag = format!("{}-{}-{run}", arm.tag(), (loss * 1e4) as u64);
    let per_topic = if arm.per_topic() { k } else { 0 };
    let mut sub = Conn::open(t, arm, &format!("hol-sub-{tag}"), per_topic).await?;
    let publ = Conn::open(t, arm, &format!("hol-pub-{tag}"), per_topic).await?;
    let (congestion, sub_cc) = (publ.congestion.clone(), sub.congestion.clone());

    // Subscribe: over TCP and in single-stream mode one SUBSCRIBE for all topics on the one
    // stream; per topic one per data stream (the subscription belongs to its stream, §2.5).
    // Wait for every SUBACK.
    let qos = QoS::Level1;
    let mut pending: Vec<(usize, Pid)> = Vec::new();
    if !arm.per_topic() {
        let filters =
            (0..k).map(|i| Ok((mc::filter(&topic_name(i))?, v3_options(qos)))).collect::<Result<Vec<_>, MqttError>>();
        let pid = Pid::try_from(1).unwrap_or_default();
        sub.control.1.send(&Packet::Subscribe(Subscribe::new(pid, filters?))).await?;
        pending.push((usize::MAX, pid));
    } else {
        for (i, (_, w)) in sub.data.iter_mut().enumerate() {
            let pid = Pid::try_from(1).unwrap_or_default();
            let f = mc::filter(&topic_name(i))?;
            w.send(&Packet::Subscribe(Subscribe::new(pid, vec![(f, v3_options(qos))]))).await?;
            pending.push((i, pid));
        }
    }
    for (i, pid) in pending {
        let r = match sub.data.get_mut(i) {
            Some(d) => &mut d.0,
            None => &mut sub.control.0,
        };
        let got = tokio::time::timeout(Duration::from_secs(10), r.next())
            .await
            .map_err(|_| LabError::Experiment("no SUBACK in 10 s".into()))?;
        match got? {
            Some(Packet::Suback(a)) if a.pid == pid => {}
            other => return Err(LabError::Experiment(format!("expected SUBACK, got {other:?}"))),
        }
    }

    // The timed part: the run's paired random stream from here on.
    let (tx, all_in) = tokio::sync::oneshot::channel();
    let t0 = Instant::now() + Duration::from_millis(5);
    let rec = Arc::new(Mutex::new(Recorder {
        t0,
        seen: HashSet::with_capacity(s.messages()),
        latency_ms: Vec::with_capacity(s.messages()),
        topic_max_ms: vec![0.0; k],
        duplicates: 0,
        expected: s.messages(),
        all_in: Some(tx),
    }));
    link.begin_phase(phase);
    let mut tasks = tokio::task::JoinSet::new();
    let (sent, acked) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let Conn { control: sub_control, data: sub_data, quic: sub_quic, .. } = sub;
    let Conn { control: pub_control, data: pub_data, quic: pub_quic, .. } = publ;
    // Over TCP and in single-stream mode the one stream carries every topic; per topic each data
    // stream one.
    let (sub_channels, mut sub_control) =
        if arm.per_topic() { (sub_data, Some(sub_control)) } else { (vec![sub_control], None) };
    for (r, w) in sub_channels {
        let rec = rec.clone();
        tasks.spawn(async move {
            let _ = subscriber_stream(r, w, rec).await;
        });
    }
    let (pub_channels, mut pub_control) =
        if arm.per_topic() { (pub_data, Some(pub_control)) } else { (vec![pub_control], None) };
    let mut streams: Vec<SharedWriter> = Vec::new();
    for (r, w) in pub_channels {
        let acked = acked.clone();
        tasks.spawn(async move {
            let _ = ack_reader(r, acked).await;
        });
        streams.push(Arc::new(tokio::sync::Mutex::new((w, 0u16))));
    }
    let writers: Vec<SharedWriter> = (0..k).map(|i| streams[i % streams.len()].clone()).collect();
    let publishers = futures_util::future::join_all(
        writers.iter().enumerate().map(|(i, w)| publish_topic(w.clone(), i, s.clone(), t0, sent.clone())),
    );
    for r in publishers.await {
        r?;
    }
    // Drain: until every message is in (at most 10 s more) and every PUBACK back (5 s more).
    let _ = tokio::time::timeout(Duration::from_secs(10), all_in).await;
    let acks_deadline = Instant::now() + Duration::from_secs(5);
    while acked.load(Ordering::Relaxed) < sent.load(Ordering::Relaxed) && Instant::now() < acks_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = link.stats();

    // DISCONNECT on the control streams (MQTT 3.1.1 §3.14), then close.
    if let Some((_, w)) = sub_control.as_mut() {
        let _ = w.send(&Packet::disconnect(DisconnectReasonCode::NormalDisconnect)).await;
    }
    match pub_control.as_mut() {
        Some((_, w)) => {
            let _ = w.send(&Packet::disconnect(DisconnectReasonCode::NormalDisconnect)).await;
        }
        None => {
            let _ = streams[0].lock().await.0.send(&Packet::disconnect(DisconnectReasonCode::NormalDisconnect)).await;
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop((writers, streams, sub_control, pub_control));
    for (ep, conn) in [sub_quic, pub_quic].into_iter().flatten() {
        conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
    }
    if congestion != sub_cc {
        return Err(LabError::Experiment(format!("publisher ran {congestion}, subscriber {sub_cc}")));
    }
    let rec = Arc::try_unwrap(rec).map_err(|_| LabError::Experiment("recorder still shared".into()))?;
    let rec = rec.into_inner().unwrap_or_else(|e| e.into_inner());
    let (sent, acked) = (sent.load(Ordering::Relaxed), acked.load(Ordering::Relaxed));
    let received = rec.seen.len() as u64;
    let metrics = MqttRunMetrics::of(&rec.latency_ms, s.late_threshold_ms);
    Ok(MqttRunResult {
        arm,
        loss,
        run,
        phase,
        sent,
        acked,
        received,
        duplicates: rec.duplicates,
        lost: sent.saturating_sub(received),
        latency_ms: rec.latency_ms,
        topic_max_ms: rec.topic_max_ms,
        metrics,
        realized_loss_up: stats.up.realized_loss,
        realized_loss_down: stats.down.realized_loss,
        model_loss_up: stats.up.model_loss,
        model_loss_down: stats.down.model_loss,
        queue_drops_up: stats.up.dropped_queue,
        queue_drops_down: stats.down.dropped_queue,
        link: stats,
        congestion,
    })
}

/// Set TCP_CONGESTION=`name` on the broker's MQTT/TCP listener, which runs in this process
/// (the broker binds it without a congestion setting of its own): connections it accepts
/// inherit the listener's controller, as the HTTP listener's do. The listener is found among
/// this process's descriptors as the TCP socket listening on `addr`. Writing the server
/// namespace's default (`net.ipv4.tcp_congestion_control`) is refused by this kernel (EIO).
/// Returns the controller read back from the listener. Call it before any client connects.
pub(crate) fn set_listener_congestion(addr: SocketAddr, name: &str) -> std::io::Result<String> {
    use std::os::fd::BorrowedFd;
    let dir = std::fs::read_dir("/proc/self/fd")?;
    for entry in dir.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        // SAFETY: only getsockname/getsockopt/setsockopt on the descriptor, for the duration of
        // this iteration; if it was closed meanwhile those fail (or, reused, the address check
        // below does not match) and nothing else is done with it.
        let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&bfd);
        let listening = sock.r#type().is_ok_and(|t| t == socket2::Type::STREAM)
            && sock.local_addr().ok().and_then(|a| a.as_socket()) == Some(addr)
            && is_listener(fd);
        if listening {
            crate::tcp::set_congestion(fd, name)?;
            return crate::stats::tcp_congestion(fd);
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("no TCP listener on {addr} in this process")))
}

/// SO_ACCEPTCONN: is the socket listening?
fn is_listener(fd: i32) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `v`.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN, (&mut v as *mut libc::c_int).cast(), &mut len)
    };
    rc == 0 && v != 0
}

/// Pool the runs of each arm at each loss rate.
pub(crate) fn summarize(runs: &[MqttRunResult], s: &MqttSettings, losses: &[f64], seed: u64) -> Vec<MqttArmSummary> {
    let mut out = Vec::new();
    for &loss in losses {
        for arm in MqttArm::ALL {
            let rs: Vec<&MqttRunResult> = runs.iter().filter(|r| r.arm == arm && r.loss == loss).collect();
            if rs.is_empty() {
                continue;
            }
            let all: Vec<f64> = rs.iter().flat_map(|r| r.latency_ms.iter().copied()).collect();
            // Median over runs of a per-run statistic, resampling runs (runs with no messages
            // have NaN statistics and are left out).
            let over_runs = |f: fn(&MqttRunMetrics) -> f64| {
                let per_run: Vec<Vec<f64>> =
                    rs.iter().map(|r| f(&r.metrics)).filter(|v| v.is_finite()).map(|v| vec![v]).collect();
                report::bootstrap_ci(&per_run, report::median, 0.95, 2000, seed)
            };
            let sum = |f: &dyn Fn(&MqttRunResult) -> u64| rs.iter().map(|r| f(r)).sum::<u64>();
            let avg = |f: &dyn Fn(&MqttRunResult) -> f64| report::mean(&rs.iter().map(|r| f(r)).collect::<Vec<_>>());
            out.push(MqttArmSummary {
                arm,
                loss,
                runs: rs.len(),
                sent: sum(&|r| r.sent),
                received: sum(&|r| r.received),
                lost: sum(&|r| r.lost),
                duplicates: sum(&|r| r.duplicates),
                latency: report::Percentiles::of(&all),
                run_late_pct: over_runs(|m| m.late_pct),
                run_p50_ms: over_runs(|m| m.p50_ms),
                run_p99_ms: over_runs(|m| m.p99_ms),
                run_mean_ms: over_runs(|m| m.mean_ms),
                late_fraction: all.iter().filter(|&&l| l > s.late_threshold_ms).count() as f64
                    / all.len().max(1) as f64,
                realized_loss_up: avg(&|r| r.realized_loss_up),
                realized_loss_down: avg(&|r| r.realized_loss_down),
                model_loss_up: avg(&|r| r.model_loss_up),
                model_loss_down: avg(&|r| r.model_loss_down),
                queue_drops_up: avg(&|r| r.queue_drops_up as f64),
                queue_drops_down: avg(&|r| r.queue_drops_down as f64),
            });
        }
    }
    out
}

/// The per-run metrics the findings compare: name, unit of a difference, accessor.
/// Reads one statistic out of a run's metrics.
type Metric = fn(&MqttRunMetrics) -> f64;

const METRICS: [(&str, &str, Metric); 4] = [
    ("share of late messages", "percentage points", |m| m.late_pct),
    ("latency p50", "ms", |m| m.p50_ms),
    ("latency p99", "ms", |m| m.p99_ms),
    ("mean latency", "ms", |m| m.mean_ms),
];

/// The three paired comparisons, `a − b`, and what each isolates.
const COMPARISONS: [(MqttArm, MqttArm, &str); 3] = [
    (MqttArm::QuicSingle, MqttArm::QuicPerTopic, "head-of-line blocking, stack held fixed"),
    (MqttArm::Tcp, MqttArm::QuicSingle, "transport, head-of-line blocking on both"),
    (MqttArm::Tcp, MqttArm::QuicPerTopic, "TCP vs QUIC with a stream per topic"),
];

/// The paired per-run differences, per loss point (ascending), comparison and metric: (a) QUIC
/// one stream − QUIC stream per topic (head-of-line blocking with the stack held fixed), (b)
/// TCP − QUIC one stream (the transport, both with head-of-line blocking), (c) TCP − QUIC
/// stream per topic; for each of [`MqttRunMetrics`]' four statistics. Runs pair by (loss, run):
/// both arms replayed the same link random stream. A run missing in either arm, or with no
/// messages, drops out of that pair's interval (its `runs` says how many were left). Every
/// (loss, comparison, metric) gets a finding, resolved or not. Bootstrap seeds derive from
/// `seed`, one per finding.
pub fn findings(runs: &[MqttRunResult], seed: u64) -> Vec<report::Finding> {
    let mut losses: Vec<f64> = runs.iter().map(|r| r.loss).collect();
    losses.sort_by(f64::total_cmp);
    losses.dedup();
    let mut out = Vec::new();
    for &loss in &losses {
        let at = |arm: MqttArm| {
            let mut v: Vec<&MqttRunResult> = runs.iter().filter(|r| r.arm == arm && r.loss == loss).collect();
            v.sort_by_key(|r| r.run);
            v
        };
        for (a, b, label) in COMPARISONS {
            let (ra, rb) = (at(a), at(b));
            let pairs: Vec<(&MqttRunResult, &MqttRunResult)> =
                ra.iter().filter_map(|x| rb.iter().find(|y| y.run == x.run).map(|y| (*x, *y))).collect();
            for (metric, unit, f) in METRICS {
                let diffs: Vec<f64> = pairs.iter().map(|(x, y)| f(&x.metrics) - f(&y.metrics)).collect();
                let what = format!("MQTT {metric} at {:.2}% loss ({label})", loss * 100.0);
                let s = seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(out.len() as u64 + 1);
                out.push(report::Finding::paired(what, a.name(), b.name(), unit, &diffs, s));
            }
        }
    }
    out
}

/// The differences between the arms that no setting removes.
pub(crate) fn remaining_differences(tcp_client: &str, tcp_broker: &str, quic: &str) -> Vec<String> {
    let mut v = Vec::new();
    if tcp_client != quic.replace("newreno", "reno") || tcp_broker != tcp_client {
        v.push(format!(
            "congestion control: TCP client {tcp_client}, broker {tcp_broker}; QUIC {quic} (could not match them all)"
        ));
    }
    v.extend(
        [
            "MQTT/QUIC one stream vs stream per topic: the same quinn, controller, windows, encryption and broker; \
             they differ in how topics map to streams: per topic, each stream has its own flow-control window \
             (K × the stream window in all, under the same connection window), quinn schedules the streams' \
             frames into packets (one packet may carry several topics), the broker keeps a delivery queue and \
             in-flight window per stream instead of one per session (§6.12; the window never binds here), and \
             every PUBLISH carries a STREAM frame header of its own stream",
            "MQTT/TCP vs MQTT/QUIC (either mode): MQTT/TCP is plain TCP (mqtt://, no TLS); MQTT/QUIC is always \
             encrypted (TLS 1.3 inside QUIC). TLS over TCP would add the same head-of-line blocking, not less",
            "MQTT/TCP vs MQTT/QUIC: initial window, pacing, ACK policy and loss detection differ as in the HTTP \
             arms (see their list)",
            "the broker's MQTT/TCP listener gets TCP_CONGESTION from the lab after it is bound (the broker has no \
             setting for it); accepted sockets inherit it",
        ]
        .map(String::from),
    );
    v
}

/// Append the MQTT section to `report.md` and write its plots: the settings, the tables, the
/// findings' generated sentences and the fairness list. Nothing here states a result that is
/// not a number from the tables or a sentence of a [`report::Finding`].
pub(crate) fn write_section(
    dir: &report::ResultsDir,
    m: &MqttResults,
    losses: &[f64],
    md: &mut String,
) -> Result<(), LabError> {
    let s = &m.settings;
    *md += &format!(
        "\n## MQTT: head-of-line blocking across topics\n\n{} topics, {} msg/s per topic, {} B payloads, QoS {}, \
         {:.1} s per run ({} messages per run), one publisher and one subscriber connection through the broker. \
         {}. {}.\n\n\
         Arms: {} (one byte stream for every topic); {} (every topic on the QUIC connection's control stream, \
         as over TCP); {} (one QUIC data stream per topic on the same kind of connection). The two QUIC arms \
         share quinn, its congestion controller, loss recovery and windows, and differ in how topics map to \
         streams (see the differences that remain below).\n\n\
         \"late\": later than {:.0} ms (1.5 × RTT; a message crosses the link twice, so one RTT is its latency \
         on a clean link).\n\n",
        s.topics,
        s.rate_per_topic,
        s.payload,
        s.qos,
        s.duration_ms / 1000.0,
        s.messages(),
        s.pattern,
        s.placement,
        MqttArm::Tcp.name(),
        MqttArm::QuicSingle.name(),
        MqttArm::QuicPerTopic.name(),
        s.late_threshold_ms
    );
    let ci = |c: &report::Ci| format!("{:.1} [{:.1}, {:.1}]", c.estimate, c.lo, c.hi);
    *md += "### Latency per message (publisher → broker → subscriber), all runs pooled\n\n";
    let rows: Vec<Vec<String>> = m
        .arms
        .iter()
        .map(|a| {
            vec![
                format!("{:.2}%", a.loss * 100.0),
                a.arm.name().to_string(),
                a.runs.to_string(),
                format!("{:.1}", a.latency.p50),
                format!("{:.1}", a.latency.p90),
                format!("{:.1}", a.latency.p99),
                format!("{:.1}", a.latency.max),
                format!("{:.1}%", a.late_fraction * 100.0),
                format!("{} / {}", a.received, a.sent),
                a.lost.to_string(),
            ]
        })
        .collect();
    *md += &report::md_table(
        &["loss", "arm", "runs", "p50 ms", "p90 ms", "p99 ms", "max ms", "late", "received / sent", "lost"],
        &rows,
    );
    *md += "\n### Per-run statistics: median over runs [95% bootstrap CI over runs]\n\n";
    let rows: Vec<Vec<String>> = m
        .arms
        .iter()
        .map(|a| {
            vec![
                format!("{:.2}%", a.loss * 100.0),
                a.arm.name().to_string(),
                ci(&a.run_late_pct),
                ci(&a.run_p50_ms),
                ci(&a.run_p99_ms),
                ci(&a.run_mean_ms),
            ]
        })
        .collect();
    *md += &report::md_table(&["loss", "arm", "late %", "p50 ms", "p99 ms", "mean ms"], &rows);
    *md += "\n### Loss on the link, per arm (mean over runs)\n\n\
            Realized loss counts every datagram the relay dropped (loss model, bottleneck queue, stale NAT) \
            over the datagrams offered; the loss model's own rate and the queue's drops are shown apart.\n\n";
    let rows: Vec<Vec<String>> = m
        .arms
        .iter()
        .map(|a| {
            vec![
                format!("{:.2}%", a.loss * 100.0),
                a.arm.name().to_string(),
                format!("{:.2}% / {:.2}%", a.realized_loss_up * 100.0, a.realized_loss_down * 100.0),
                format!("{:.2}% / {:.2}%", a.model_loss_up * 100.0, a.model_loss_down * 100.0),
                format!("{:.1} / {:.1}", a.queue_drops_up, a.queue_drops_down),
            ]
        })
        .collect();
    *md += &report::md_table(
        &[
            "loss",
            "arm",
            "realized loss up / down (all drops)",
            "loss model up / down",
            "queue drops per run up / down",
        ],
        &rows,
    );
    *md += "\n### Paired differences\n\n\
            Per loss point, run r of every arm replayed the same link random stream; each sentence is generated \
            from the median of the per-run differences a − b and its distribution-free 95% interval (the sign \
            test inverted; fewer than 6 runs give none), and says \
            \"no difference resolved\" when the interval spans 0.\n\n";
    for f in &m.findings {
        *md += &format!("- {}\n", f.sentence);
    }
    let f = &m.fairness;
    *md += &format!(
        "\n### MQTT settings and fairness\n\n- QUIC congestion control: quinn {} on both ends, both QUIC arms\n\
         - TCP congestion control: {} on the clients (TCP_CONGESTION per socket), {} on the broker (its listener's TCP_CONGESTION, inherited by accepted sockets)\n\
         - TCP_NODELAY: {}; QUIC stream window {} B, connection window {} B\n\
         - broker in-flight window per channel: {}\n\nDifferences that remain:\n\n",
        f.quic_congestion,
        f.tcp_congestion_client,
        f.tcp_congestion_broker,
        f.tcp_nodelay,
        f.stream_window,
        f.conn_window,
        s.broker_max_inflight
    );
    for d in &f.remaining_differences {
        *md += &format!("- {d}\n");
    }
    *md += "\nPlots: `mqtt-cdf-loss-*.svg` (latency CDF per loss rate), `mqtt-p99-vs-loss.svg`.\n";

    let arms = report::Arms { all: &MqttArm::ALL, name: MqttArm::name };
    arms.cdf_per_loss(dir, "mqtt-", "MQTT message latency", "ms", losses, |arm, loss| {
        m.runs.iter().filter(|r| r.arm == arm && r.loss == loss).flat_map(|r| r.latency_ms.iter().copied()).collect()
    })?;
    arms.plot(
        &dir.path("mqtt-p99-vs-loss.svg"),
        "MQTT latency p99 vs loss (median of runs, 95% CI)",
        "loss (%)",
        "ms",
        |arm, label| {
            let pts: Vec<(f64, report::Ci)> =
                m.arms.iter().filter(|a| a.arm == arm).map(|a| (a.loss * 100.0, a.run_p99_ms)).collect();
            Series::with_ci(label, &pts)
        },
    )?;
    Ok(())
}

/// The broker's address for MQTT over TCP in the lab (port 1883 on the server's link address).
pub(crate) fn broker_tcp_listen(server_ip: IpAddr) -> SocketAddr {
    SocketAddr::new(server_ip, crate::mqtt::config::DEFAULT_TCP_PORT)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::lab::impair::Direction;
    use crate::lab::link::DirStats;
    use crate::lab::report::Verdict;

    fn dir(direction: Direction, packets_in: u64, non_ipv4: u64, loss: u64, queue: u64, nat: u64) -> DirStats {
        DirStats {
            direction,
            packets_in,
            bytes_in: 0,
            dropped_non_ipv4: non_ipv4,
            dropped_stale_nat: nat,
            loss_draws: packets_in - non_ipv4 - nat,
            dropped_loss: loss,
            dropped_queue: queue,
            packets_out: packets_in - non_ipv4 - loss - queue - nat,
            bytes_out: 0,
            write_errors: 0,
            largest_packet: 0,
            realized_loss: 0.0,
            offered: packets_in - non_ipv4,
            model_loss: 0.0,
            queue_loss: 0.0,
            lateness_us: report::Percentiles::default(),
            egress_bytes_per_100ms: Vec::new(),
        }
    }

    pub(crate) fn link() -> LinkStats {
        LinkStats {
            phase_start: Duration::ZERO,
            taken_at: Duration::ZERO,
            up: dir(Direction::Up, 0, 0, 0, 0, 0),
            down: dir(Direction::Down, 0, 0, 0, 0, 0),
            rebinds: Vec::new(),
            nat_mappings: Vec::new(),
            cpu_latency_qos: false,
        }
    }

    /// A run whose every message took `ms`.
    fn run(arm: MqttArm, loss: f64, run: usize, ms: f64) -> MqttRunResult {
        let latency_ms = vec![ms; 100];
        MqttRunResult {
            arm,
            loss,
            run,
            phase: run as u32,
            sent: 100,
            acked: 100,
            received: 100,
            duplicates: 0,
            lost: 0,
            metrics: MqttRunMetrics::of(&latency_ms, 60.0),
            latency_ms,
            topic_max_ms: vec![ms],
            realized_loss_up: 0.0,
            realized_loss_down: 0.0,
            model_loss_up: 0.0,
            model_loss_down: 0.0,
            queue_drops_up: 0,
            queue_drops_down: 0,
            link: link(),
            congestion: "cubic".into(),
        }
    }

    #[test]
    fn run_metrics() {
        let m = MqttRunMetrics::of(&[10.0, 20.0, 30.0, 100.0], 25.0);
        assert_eq!(m.late_pct, 50.0);
        assert_eq!(m.p50_ms, 25.0);
        assert_eq!(m.mean_ms, 40.0);
        assert!(m.p99_ms > 97.0 && m.p99_ms <= 100.0);
        assert!(MqttRunMetrics::of(&[], 25.0).p50_ms.is_nan());
    }

    #[test]
    fn findings_cover_every_loss_comparison_and_metric() {
        let mut runs = Vec::new();
        for (loss, bump) in [(0.02, 10.0), (0.0, 0.0)] {
            for r in 0..8 {
                let jitter = r as f64 * 0.1;
                runs.push(run(MqttArm::QuicPerTopic, loss, r, 50.0 + jitter));
                runs.push(run(MqttArm::QuicSingle, loss, r, 50.0 + bump + jitter));
                runs.push(run(MqttArm::Tcp, loss, r, 50.0 + 2.0 * bump + jitter));
            }
        }
        let f = findings(&runs, 7);
        assert_eq!(f.len(), 2 * COMPARISONS.len() * METRICS.len());
        // Losses ascending, whatever order the runs came in.
        assert!(f[0].what.contains("at 0.00% loss") && f[12].what.contains("at 2.00% loss"), "{}", f[0].what);
        // At 0%, the arms tie run by run: nothing resolved.
        assert!(f[..12].iter().all(|x| x.verdict == Verdict::NotResolved), "{:?}", f[0]);
        // At 2%, per topic is 10 ms faster than one stream and TCP 10 ms slower than that.
        let p50 = |a: MqttArm, b: MqttArm| {
            f[12..].iter().find(|x| x.a == a.name() && x.b == b.name() && x.what.contains("p50")).expect("finding")
        };
        let hol = p50(MqttArm::QuicSingle, MqttArm::QuicPerTopic);
        assert_eq!(hol.verdict, Verdict::BLower);
        assert!((hol.diff.estimate - 10.0).abs() < 1e-9);
        assert!(
            hol.sentence.contains("MQTT/QUIC, stream per topic lower than MQTT/QUIC, one stream"),
            "{}",
            hol.sentence
        );
        assert!(hol.what.contains("stack held fixed"));
        assert!((p50(MqttArm::Tcp, MqttArm::QuicPerTopic).diff.estimate - 20.0).abs() < 1e-9);
        // Late share: 100% vs 0% (threshold 60 ms).
        let late = f[12..].iter().find(|x| x.what.contains("late") && x.a == "MQTT/TCP").expect("late");
        assert_eq!(late.unit, "percentage points");
    }

    #[test]
    fn findings_flip_to_not_resolved_when_the_differences_span_zero() {
        let mut runs = Vec::new();
        for r in 0..8 {
            let d = if r % 2 == 0 { 5.0 } else { -5.0 };
            runs.push(run(MqttArm::QuicPerTopic, 0.01, r, 50.0));
            runs.push(run(MqttArm::QuicSingle, 0.01, r, 50.0 + d));
            runs.push(run(MqttArm::Tcp, 0.01, r, 50.0 + d));
        }
        let f = findings(&runs, 1);
        let hol = f.iter().find(|x| x.what.contains("p50") && x.what.contains("stack held fixed")).expect("finding");
        assert_eq!(hol.verdict, Verdict::NotResolved);
        assert!(hol.sentence.contains("no difference resolved"), "{}", hol.sentence);
        // A run missing from one arm drops out of that pair only.
        runs.retain(|r| !(r.arm == MqttArm::Tcp && r.run == 0));
        let f = findings(&runs, 1);
        let tcp = f.iter().find(|x| x.what.contains("p50") && x.a == "MQTT/TCP").expect("finding");
        assert_eq!(tcp.diff.runs, 7);
    }
}
