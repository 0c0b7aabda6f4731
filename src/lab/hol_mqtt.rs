//! `quiclab lab hol --mqtt`: head-of-line blocking across MQTT topics, MQTT over TCP vs MQTT over
//! QUIC with one data stream per topic (docs/mqtt-over-quic.md §2.3–2.5, §6.12).
//!
//! K topics from ONE publisher connection to ONE subscriber connection through quiclab's broker
//! in the server namespace. Publisher and subscriber both run in the client namespace, in one
//! process on one clock, so every message crosses the impaired link twice (publisher → broker,
//! broker → subscriber) and its latency is receive time − send time on the same `Instant` base.
//! The publisher is open-loop: every topic publishes at a fixed rate, QoS 1, pipelined (it never
//! waits for a PUBACK before the next message), for a fixed time. Over TCP a lost segment holds
//! back every topic's bytes behind it; over QUIC it holds back only the streams whose frames the
//! lost packet carried.
//!
//! Both clients are raw framed streams (not [`crate::mqtt::Client`], whose `publish` waits for
//! the acknowledgement) so the sockets can carry the same congestion controller as the broker:
//! TCP_CONGESTION on the client's TCP sockets and on the broker's listener (whose accepted
//! sockets inherit it), quinn's controller of the same name on both QUIC ends.

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
use crate::mqtt::codec::{ConnectReturnCode, Packet, Pid, Publish, QoS, QosPid, Subscribe};
use crate::mqtt::MqttError;
use crate::tls::Trust;

/// Smallest payload: send time (8 bytes), sequence number (4), topic index (2).
pub(crate) const MIN_PAYLOAD: usize = 14;

/// The broker's per-channel in-flight window in this experiment: high enough never to bind (the
/// default, 20 per channel, would give MQTT/TCP 20 slots and MQTT/QUIC 20 per stream, a
/// difference of MQTT's flow control rather than of the transport).
pub(crate) const BROKER_MAX_INFLIGHT: usize = 65_000;

/// The two MQTT arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MqttArm {
    /// MQTT 3.1.1 over plain TCP: one byte stream for every topic.
    Tcp,
    /// MQTT over QUIC in per-topic mode: one bidirectional data stream per topic.
    QuicPerTopic,
}

impl MqttArm {
    /// Both, in the order of even runs (odd runs go the other way round).
    pub const ALL: [MqttArm; 2] = [MqttArm::Tcp, MqttArm::QuicPerTopic];

    /// The label in the report and the plots.
    pub fn name(self) -> &'static str {
        match self {
            MqttArm::Tcp => "MQTT/TCP",
            MqttArm::QuicPerTopic => "MQTT/QUIC, stream per topic",
        }
    }
}

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
    /// Realized loss (dropped / drawn), client → server and server → client.
    pub realized_loss_up: f64,
    pub realized_loss_down: f64,
    /// The relay's counters for the timed part (publishing and draining).
    pub link: LinkStats,
    /// The congestion controller the clients ran: TCP_CONGESTION read back from the TCP
    /// socket, or quinn's controller.
    pub congestion: String,
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
    pub latency: report::Percentiles,
    /// Median over runs of each run's p99, with a 95% bootstrap interval over runs.
    pub run_p99_ms: report::Ci,
    /// Share of messages later than [`MqttSettings::late_threshold_ms`], all runs pooled.
    pub late_fraction: f64,
    pub realized_loss_up: f64,
    pub realized_loss_down: f64,
}

/// The `mqtt` section of `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct MqttResults {
    pub settings: MqttSettings,
    pub fairness: MqttFairness,
    pub runs: Vec<MqttRunResult>,
    pub arms: Vec<MqttArmSummary>,
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

/// An open MQTT connection of the experiment: its control halves, its data streams (QUIC; empty
/// over TCP, where the control halves carry everything), and what keeps it alive.
struct Conn {
    control: (PacketReader<BoxRead>, PacketWriter<BoxWrite>),
    data: Vec<(PacketReader<BoxRead>, PacketWriter<BoxWrite>)>,
    quic: Option<(quinn::Endpoint, quinn::Connection)>,
    congestion: String,
}

impl Conn {
    /// Connect, send CONNECT, wait for CONNACK; over QUIC also open `streams` data streams.
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
            MqttArm::QuicPerTopic => {
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
            Some(Packet::Connack(a)) if a.code == ConnectReturnCode::Accepted => Ok(c),
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
                w.send(&Packet::Puback(pid)).await?;
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

/// One run of one arm: connect and subscribe (outside the timed part, on its own random
/// stream), then publish for the configured time on the run's paired random stream and wait
/// until every message arrived and every PUBACK came back (or a deadline passed).
pub(crate) async fn one_run(
    link: &Link,
    t: &MqttTarget,
    s: &MqttSettings,
    arm: MqttArm,
    loss: f64,
    run: usize,
) -> Result<MqttRunResult, LabError> {
    let k = s.topics;
    link.begin_phase(1000 + run as u32);
    let tag = format!("{}-{}-{run}", if arm == MqttArm::Tcp { "tcp" } else { "quic" }, (loss * 1e4) as u64);
    let per_topic = if arm == MqttArm::QuicPerTopic { k } else { 0 };
    let mut sub = Conn::open(t, arm, &format!("hol-sub-{tag}"), per_topic).await?;
    let publ = Conn::open(t, arm, &format!("hol-pub-{tag}"), per_topic).await?;
    let (congestion, sub_cc) = (publ.congestion.clone(), sub.congestion.clone());

    // Subscribe: over TCP one SUBSCRIBE for all topics; over QUIC one per data stream (the
    // subscription belongs to its stream, §2.5). Wait for every SUBACK.
    let qos = QoS::Level1;
    let mut pending: Vec<(usize, Pid)> = Vec::new();
    if arm == MqttArm::Tcp {
        let filters = (0..k).map(|i| Ok((mc::filter(&topic_name(i))?, qos))).collect::<Result<Vec<_>, MqttError>>();
        let pid = Pid::try_from(1).unwrap_or_default();
        sub.control.1.send(&Packet::Subscribe(Subscribe::new(pid, filters?))).await?;
        pending.push((usize::MAX, pid));
    } else {
        for (i, (_, w)) in sub.data.iter_mut().enumerate() {
            let pid = Pid::try_from(1).unwrap_or_default();
            let f = mc::filter(&topic_name(i))?;
            w.send(&Packet::Subscribe(Subscribe::new(pid, vec![(f, qos)]))).await?;
            pending.push((i, pid));
        }
    }
    for (i, pid) in pending {
        let r = if i == usize::MAX { &mut sub.control.0 } else { &mut sub.data[i].0 };
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
    link.begin_phase(10 + run as u32);
    let mut tasks = tokio::task::JoinSet::new();
    let (sent, acked) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let Conn { control: sub_control, data: sub_data, quic: sub_quic, .. } = sub;
    let Conn { control: pub_control, data: pub_data, quic: pub_quic, .. } = publ;
    // Over TCP the connection itself carries every topic; over QUIC each data stream one.
    let (sub_channels, mut sub_control) =
        if arm == MqttArm::Tcp { (vec![sub_control], None) } else { (sub_data, Some(sub_control)) };
    for (r, w) in sub_channels {
        let rec = rec.clone();
        tasks.spawn(async move {
            let _ = subscriber_stream(r, w, rec).await;
        });
    }
    let (pub_channels, mut pub_control) =
        if arm == MqttArm::Tcp { (vec![pub_control], None) } else { (pub_data, Some(pub_control)) };
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
        let _ = w.send(&Packet::Disconnect).await;
    }
    match pub_control.as_mut() {
        Some((_, w)) => {
            let _ = w.send(&Packet::Disconnect).await;
        }
        None => {
            let _ = streams[0].lock().await.0.send(&Packet::Disconnect).await;
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
    Ok(MqttRunResult {
        arm,
        loss,
        run,
        sent,
        acked,
        received,
        duplicates: rec.duplicates,
        lost: sent.saturating_sub(received),
        latency_ms: rec.latency_ms,
        topic_max_ms: rec.topic_max_ms,
        realized_loss_up: stats.up.realized_loss,
        realized_loss_down: stats.down.realized_loss,
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
            let per_run: Vec<Vec<f64>> = rs.iter().map(|r| vec![report::quantile(&r.latency_ms, 0.99)]).collect();
            let sum = |f: &dyn Fn(&MqttRunResult) -> u64| rs.iter().map(|r| f(r)).sum::<u64>();
            out.push(MqttArmSummary {
                arm,
                loss,
                runs: rs.len(),
                sent: sum(&|r| r.sent),
                received: sum(&|r| r.received),
                lost: sum(&|r| r.lost),
                duplicates: sum(&|r| r.duplicates),
                latency: report::Percentiles::of(&all),
                run_p99_ms: report::bootstrap_ci(&per_run, report::median, 0.95, 2000, seed),
                late_fraction: all.iter().filter(|&&l| l > s.late_threshold_ms).count() as f64
                    / all.len().max(1) as f64,
                realized_loss_up: report::mean(&rs.iter().map(|r| r.realized_loss_up).collect::<Vec<_>>()),
                realized_loss_down: report::mean(&rs.iter().map(|r| r.realized_loss_down).collect::<Vec<_>>()),
            });
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
            "MQTT/TCP is plain TCP (mqtt://, no TLS); MQTT/QUIC is always encrypted (TLS 1.3 inside QUIC). TLS over TCP would add the same head-of-line blocking, not less",
            "quinn may put frames of several streams into one packet: losing it delays every topic it carried, so QUIC's independence is per packet, not per message",
            "initial window, pacing, ACK policy and loss detection differ as in the HTTP arms (see their list)",
            "the broker's MQTT/TCP listener gets TCP_CONGESTION from the lab after it is bound (the broker has no setting for it); accepted sockets inherit it",
        ]
        .map(String::from),
    );
    v
}

/// Append the MQTT section to `report.md` and write its plots.
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
         {}. {}.\n\n",
        s.topics,
        s.rate_per_topic,
        s.payload,
        s.qos,
        s.duration_ms / 1000.0,
        s.messages(),
        s.pattern,
        s.placement
    );
    *md += "### Latency per message (publisher → broker → subscriber), all runs pooled\n\n";
    let rows: Vec<Vec<String>> = m
        .arms
        .iter()
        .map(|a| {
            vec![
                format!("{:.2}%", a.loss * 100.0),
                a.arm.name().to_string(),
                format!("{:.1}", a.latency.p50),
                format!("{:.1}", a.latency.p90),
                format!("{:.1}", a.latency.p99),
                format!("{:.1} [{:.1}, {:.1}]", a.run_p99_ms.estimate, a.run_p99_ms.lo, a.run_p99_ms.hi),
                format!("{:.1}", a.latency.max),
                format!("{:.1}%", a.late_fraction * 100.0),
                format!("{} / {}", a.received, a.sent),
                a.lost.to_string(),
                format!("{:.2}% / {:.2}%", a.realized_loss_up * 100.0, a.realized_loss_down * 100.0),
            ]
        })
        .collect();
    *md += &format!(
        "\"late\": the share of messages later than {:.0} ms (1.5 × RTT; a message crosses the link twice, so one \
         RTT is its latency on a clean link). A loss over TCP delays every topic's messages behind it; over QUIC only \
         those of the topics its packet carried: that shows in the share of late messages, while p99 and max \
         are set by messages whose own packet was lost, alike on both.\n\n",
        s.late_threshold_ms
    );
    *md += &report::md_table(
        &[
            "loss",
            "arm",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "per-run p99 ms, median [95% CI]",
            "max ms",
            "late",
            "received / sent",
            "lost",
            "realized loss up / down",
        ],
        &rows,
    );
    let f = &m.fairness;
    *md += &format!(
        "\n### MQTT settings and fairness\n\n- QUIC congestion control: quinn {} on both ends\n\
         - TCP congestion control: {} on the clients (TCP_CONGESTION per socket), {} on the broker (its listener's TCP_CONGESTION, inherited by accepted sockets)\n\
         - TCP_NODELAY: {}; QUIC stream window {} B, connection window {} B\n\
         - broker in-flight window per channel: {} (never binds)\n\nDifferences that remain:\n\n",
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
