//! The soak (`--scenario soak`, issue 18): one quiclab broker with its store on (`--data-dir`
//! in a fresh temporary directory, the default `--sync always`) under a steady, mixed load for
//! `--duration` (`10m` for the figure in docs/BENCHMARKS.md), with the client behaviours a
//! long-running broker meets, all at once:
//!
//! * **Steady publishers**: one per `--transport` and QoS 0, 1 and 2, paced (`--soak-rate`
//!   messages per second in all), each numbering its messages on its own topic
//!   `soak/steady/{transport}/q{qos}`.
//! * **Steady subscribers**: one per transport, in a persistent session, `soak/steady/#` at
//!   QoS 2. At the end every message a publisher had acknowledged must have reached each of
//!   them: QoS 1 at least once, QoS 2 exactly once, first copies in order. QoS 0 messages
//!   that did not arrive are counted (best effort, not a failure).
//! * **A slow subscriber** (TCP, QoS 0, `soak/steady/#`) that reads 500 packets a second of
//!   the `--soak-rate` meant for it: the broker must shed (its channel bound) and not grow.
//! * **Churn**, a client every 100 ms: persistent clients (20 ids over TCP, TLS and QUIC in
//!   turn) that come back every few seconds, must find their session present and must get
//!   every message of `soak/churn` (QoS 1, 50 a second) published while they were away, with no
//!   gap, and once more at the end, when each must reach the feed's last message; and clean
//!   clients (every transport) that subscribe, read, sometimes unsubscribe, and leave, half of
//!   them without DISCONNECT.
//! * **Retained churn**: 20 retained QoS 1 messages a second over 500 topics, every 7th clearing
//!   its topic. At the end a new subscriber must find exactly the last acknowledged state.
//!
//! The broker's RSS, CPU time and store file size are sampled every 10 s. The warm-up is the
//! first tenth of the run (at least `--warmup`); the RSS growth is RSS at the end against RSS
//! at the end of the warm-up. The broker's standard error goes to a file and its WARN and
//! ERROR lines are counted and shown (the QoS 0 drops at a full channel queue apart: the slow
//! subscriber causes them on purpose). A problem (an acknowledged message missing, a QoS 2
//! duplicate, an order or session error, a retained mismatch, a client error) makes the bench
//! exit 1 after the report.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use quiclab::lab::report::md_table;
use quiclab::mqtt::codec::{Packet, Pid, Publish, QoS, QosPid, TopicName, Unsubscribe};
use tokio::time::MissedTickBehavior;

use super::rng::Rng;
use super::{
    connect_as, mqtt_client, next_pid, payload, subscribe, topic, BenchArgs, BenchError, BenchTransport, BrokerProc,
    Conn, Gen, Reader, Writer, BROKER_LOG,
};

/// Persistent churn clients (each comes back every `2 × CHURNERS × CHURN_EVERY`).
const CHURNERS: usize = 20;
/// One churn client starts this often.
const CHURN_EVERY: Duration = Duration::from_millis(100);
/// `soak/churn`'s rate, for the persistent churn clients.
const CHURN_FEED_PER_S: u64 = 50;
/// Retained publishes per second, and the topics they cycle over.
const RETAINED_PER_S: u64 = 20;
const RETAINED_TOPICS: u64 = 500;
/// The slow subscriber reads this many packets every 10 ms.
const SLOW_PER_10MS: usize = 5;
/// A publisher with this many messages unacknowledged skips its next tick (counted).
const MAX_OUTSTANDING: u64 = 1000;
/// Broker sampling interval.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How long publishers may take for their last acknowledgements, and subscribers for the last
/// deliveries, once publishing stops.
const DRAIN: Duration = Duration::from_secs(15);
/// Error messages kept (all are counted).
const KEPT_ERRORS: usize = 20;

/// What the soak measured and found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(super) struct SoakResult {
    pub seconds: f64,
    pub warmup_s: f64,
    pub transports: Vec<String>,
    /// Steady messages published per QoS (0, 1, 2), all acknowledged at the end unless
    /// `errors` says otherwise.
    pub published: [u64; 3],
    /// Deliveries to the steady subscribers (first copies).
    pub delivered: u64,
    /// Acknowledged QoS 1 / QoS 2 messages that did not reach a steady subscriber, summed
    /// over subscribers.
    pub missing_qos1: u64,
    pub missing_qos2: u64,
    /// QoS 0 messages that did not reach a steady subscriber (best effort).
    pub missing_qos0: u64,
    /// Second copies: QoS 1 (allowed) and QoS 2 (a failure).
    pub dups_qos1: u64,
    pub dups_qos2: u64,
    /// First copies that came after a later message of their topic (QoS 1/2: a failure).
    pub out_of_order: u64,
    /// Ticks a publisher skipped with `MAX_OUTSTANDING` unacknowledged.
    pub skipped_ticks: u64,
    pub slow_received: u64,
    /// Connections the churn made (persistent, clean).
    pub churn_persistent: u64,
    pub churn_clean: u64,
    /// Messages of `soak/churn` the persistent churners missed between two they got.
    pub churn_gaps: u64,
    pub retained_topics_checked: u64,
    pub retained_mismatches: u64,
    /// Client-side errors (lost connections, refused connects, session state, ...).
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// Broker log lines at WARN or ERROR, but for the QoS 0 drops a full channel queue logs
    /// (the slow subscriber's, by design), and the first few.
    pub broker_log_warnings: u64,
    /// Lines logging QoS 0 drops at a full channel queue (at 1, 2, 4, ... drops).
    pub broker_log_shed: u64,
    pub broker_log_samples: Vec<String>,
    pub rss_warm_kib: u64,
    pub rss_end_kib: u64,
    pub rss_max_kib: u64,
    pub store_warm_bytes: u64,
    pub store_end_bytes: u64,
    pub samples: Vec<Sample>,
}

impl SoakResult {
    /// What fails the soak: anything acknowledged lost, duplicated at QoS 2 or out of order, a
    /// churn gap, a retained mismatch, a client error.
    pub(super) fn problems(&self) -> u64 {
        self.missing_qos1
            + self.missing_qos2
            + self.dups_qos2
            + self.out_of_order
            + self.churn_gaps
            + self.retained_mismatches
            + self.errors
    }

    /// RSS at the end against RSS after the warm-up, percent.
    fn rss_growth_pct(&self) -> f64 {
        100.0 * (self.rss_end_kib as f64 - self.rss_warm_kib as f64) / (self.rss_warm_kib.max(1) as f64)
    }
}

/// One sample of the broker.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct Sample {
    pub t_s: f64,
    pub rss_kib: u64,
    pub cpu_s: f64,
    pub store_bytes: u64,
    pub delivered: u64,
    pub connects: u64,
}

/// State every soak task shares.
#[derive(Default)]
struct Soak {
    /// Publishers and churn stop.
    stop: AtomicBool,
    /// The checks are done: lost connections from here on are the end, not errors.
    finished: AtomicBool,
    errors: AtomicU64,
    error_samples: Mutex<Vec<String>>,
    delivered: AtomicU64,
    skipped: AtomicU64,
    slow_received: AtomicU64,
    churn_persistent: AtomicU64,
    churn_clean: AtomicU64,
    churn_gaps: AtomicU64,
}

impl Soak {
    fn error(&self, e: String) {
        if self.finished.load(Ordering::Relaxed) {
            return;
        }
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut v) = self.error_samples.lock() {
            if v.len() < KEPT_ERRORS {
                eprintln!("soak: {e}");
                v.push(e);
            }
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// The sequence numbers one subscriber got on one topic: a bit per number.
#[derive(Debug, Default)]
struct Seen {
    bits: Vec<u64>,
    max: u64,
    dups: u64,
    out_of_order: u64,
}

impl Seen {
    fn record(&mut self, seq: u64) {
        let (i, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.bits.len() <= i {
            self.bits.resize(i + 1, 0);
        }
        if self.bits[i] & bit != 0 {
            self.dups += 1;
            return;
        }
        self.bits[i] |= bit;
        if seq < self.max {
            self.out_of_order += 1;
        }
        self.max = self.max.max(seq);
    }

    /// Numbers in 1..=upto not seen.
    fn missing(&self, upto: u64) -> u64 {
        let mut have = 0u64;
        for (i, w) in self.bits.iter().enumerate() {
            let base = i as u64 * 64;
            if base > upto {
                break;
            }
            let mut w = *w;
            if base == 0 {
                w &= !1; // 0 is never sent
            }
            if upto - base < 63 {
                w &= (1u64 << (upto - base + 1)) - 1;
            }
            have += u64::from(w.count_ones());
        }
        upto - have
    }
}

/// Per topic, what a steady subscriber got.
type SeenByTopic = Arc<Mutex<HashMap<String, Seen>>>;

/// The sequence number the bench's payloads carry (bytes 8..16, `super::payload`).
fn seq_of(p: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(p.get(8..16)?.try_into().ok()?))
}

/// What a steady publisher left at the end.
struct PubFinal {
    topic: String,
    qos: QoS,
    /// The last sequence number sent (all of 1..=last acknowledged unless `unacked` > 0).
    last: u64,
    unacked: u64,
}

/// A paced publisher on `topic` at `qos`, numbering its messages, handling PUBACK and
/// PUBREC/PUBREL/PUBCOMP; once the soak stops it waits (at most [`DRAIN`]) for its last
/// acknowledgements.
async fn publisher(
    conn: Conn,
    name: String,
    topic: TopicName,
    qos: QoS,
    period: Duration,
    soak: Arc<Soak>,
) -> PubFinal {
    let Conn { mut r, mut w, _control, quic: _quic } = conn;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let (mut seq, mut pid, mut outstanding) = (0u64, 0u16, 0u64);
    let mut drain_until: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if soak.stopping() {
                    let until = *drain_until.get_or_insert_with(|| Instant::now() + DRAIN);
                    if outstanding == 0 {
                        break;
                    }
                    if Instant::now() >= until {
                        soak.error(format!("{name}: {outstanding} message(s) unacknowledged {DRAIN:?} after the end"));
                        break;
                    }
                    continue;
                }
                if outstanding >= MAX_OUTSTANDING {
                    soak.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                seq += 1;
                let qos_pid = match qos {
                    QoS::Level0 => QosPid::Level0,
                    QoS::Level1 => QosPid::Level1(next_pid(&mut pid)),
                    QoS::Level2 => QosPid::Level2(next_pid(&mut pid)),
                };
                if qos != QoS::Level0 {
                    outstanding += 1;
                }
                let p = Publish::new(qos_pid, topic.clone(), payload(16, 0, seq));
                if w.send(&Packet::Publish(p)).await.is_err() {
                    soak.error(format!("{name}: connection lost while publishing"));
                    break;
                }
            }
            p = r.next() => {
                match p {
                    Ok(Some(Packet::Puback(_) | Packet::Pubcomp(_))) => outstanding = outstanding.saturating_sub(1),
                    Ok(Some(Packet::Pubrec(rec))) => {
                        if w.send(&Packet::pubrel(rec.pid)).await.is_err() {
                            soak.error(format!("{name}: connection lost sending PUBREL"));
                            break;
                        }
                    }
                    Ok(Some(other)) => soak.error(format!("{name}: unexpected {other:?}")),
                    Ok(None) | Err(_) => {
                        soak.error(format!("{name}: the broker closed the connection"));
                        break;
                    }
                }
            }
        }
    }
    PubFinal { topic: topic.to_string(), qos, last: seq, unacked: outstanding }
}

/// Handle `p` as a receiver at QoS 2 must: queue PUBACK or PUBREC for a PUBLISH (returned),
/// PUBCOMP for a PUBREL. (An encoding error cannot happen for these; the flush reports a lost
/// connection.)
fn receive(w: &mut Writer, p: Packet) -> Option<Publish> {
    let reply = match &p {
        Packet::Publish(p) => match p.qos_pid {
            QosPid::Level1(id) => Some(Packet::puback(id)),
            QosPid::Level2(id) => Some(Packet::pubrec(id)),
            QosPid::Level0 => None,
        },
        Packet::Pubrel(rel) => Some(Packet::pubcomp(rel.pid)),
        _ => None,
    };
    if let Some(reply) = reply {
        let _ = w.queue(&reply);
    }
    match p {
        Packet::Publish(p) => Some(p),
        _ => None,
    }
}

/// A steady subscriber: record every message's number per topic, acknowledge as a QoS 2
/// receiver must.
async fn subscriber(conn: Conn, name: String, seen: SeenByTopic, soak: Arc<Soak>) {
    let Conn { mut r, mut w, _control, quic: _quic } = conn;
    loop {
        let mut next = match r.next().await {
            Ok(Some(p)) => Some(p),
            _ => {
                soak.error(format!("{name}: the broker closed the connection"));
                return;
            }
        };
        while let Some(p) = next {
            if let Some(p) = receive(&mut w, p) {
                if let (Some(seq), Ok(mut seen)) = (seq_of(&p.payload), seen.lock()) {
                    let s = seen.entry(p.topic_name.to_string()).or_default();
                    let dups = s.dups;
                    s.record(seq);
                    if s.dups == dups {
                        soak.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            next = r.try_next().ok().flatten();
        }
        if w.flush().await.is_err() {
            soak.error(format!("{name}: connection lost"));
            return;
        }
    }
}

/// The slow subscriber: [`SLOW_PER_10MS`] packets every 10 ms, whatever comes, and a PINGREQ
/// every 30 s (it sends nothing else, and the broker closes a client silent for 1.5 × its
/// keep-alive of 60 s, MQTT 3.1.1 §3.1.2.10).
async fn slow_subscriber(conn: Conn, soak: Arc<Soak>) {
    let Conn { mut r, mut w, _control, quic: _quic } = conn;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut last_ping = Instant::now();
    loop {
        tick.tick().await;
        if last_ping.elapsed() >= Duration::from_secs(30) {
            last_ping = Instant::now();
            if w.send(&Packet::Pingreq).await.is_err() {
                soak.error("slow subscriber: connection lost sending PINGREQ".into());
                return;
            }
        }
        for _ in 0..SLOW_PER_10MS {
            match tokio::time::timeout(Duration::from_millis(1), r.next()).await {
                Err(_) => break,
                Ok(Ok(Some(_))) => {
                    soak.slow_received.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {
                    soak.error("slow subscriber: the broker closed the connection".into());
                    return;
                }
            }
        }
    }
}

/// Publish retained messages one at a time (each waits for its PUBACK) over `RETAINED_TOPICS`
/// topics, every 7th clearing its topic; `expected` holds each topic's last acknowledged
/// state (`None`: cleared).
async fn retained_churn(conn: Conn, expected: Arc<Mutex<HashMap<String, Option<u64>>>>, soak: Arc<Soak>) {
    let Conn { mut r, mut w, _control, quic: _quic } = conn;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / RETAINED_PER_S as u32);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut seq, mut pid) = (0u64, 0u16);
    while !soak.stopping() {
        tick.tick().await;
        seq += 1;
        let name = format!("soak/retained/{}", seq % RETAINED_TOPICS);
        let Ok(t) = topic(&name) else { return };
        let body = if seq % 7 == 0 { bytes::Bytes::new() } else { bytes::Bytes::from(seq.to_string()) };
        let id = next_pid(&mut pid);
        let mut p = Publish::new(QosPid::Level1(id), t, body);
        p.retain = true;
        if w.send(&Packet::Publish(p)).await.is_err() {
            soak.error("retained publisher: connection lost".into());
            return;
        }
        match tokio::time::timeout(Duration::from_secs(10), r.next()).await {
            Ok(Ok(Some(Packet::Puback(got)))) if got.pid == id => {
                if let Ok(mut e) = expected.lock() {
                    e.insert(name, (seq % 7 != 0).then_some(seq));
                }
            }
            other => {
                soak.error(format!("retained publisher: expected PUBACK {}, got {other:?}", id.value()));
                return;
            }
        }
    }
}

/// A persistent churn client: its id, whether its session exists, the last `soak/churn`
/// number it got, whether a turn of it is running.
struct Churner {
    id: String,
    joined: bool,
    last: Option<u64>,
    busy: bool,
}

/// Read for `dwell`, acknowledging QoS 1/2 as a receiver; `on_msg` sees each message number.
async fn read_for(r: &mut Reader, w: &mut Writer, dwell: Duration, mut on_msg: impl FnMut(u64)) -> Result<(), String> {
    let end = tokio::time::Instant::now() + dwell;
    loop {
        let p = match tokio::time::timeout_at(end, r.next()).await {
            Err(_) => return Ok(()),
            Ok(Ok(Some(p))) => p,
            Ok(Ok(None)) => return Err("the broker closed the connection".into()),
            Ok(Err(e)) => return Err(e.to_string()),
        };
        if let Some(seq) = receive(w, p).and_then(|p| seq_of(&p.payload)) {
            on_msg(seq);
        }
        w.flush().await.map_err(|e| e.to_string())?;
    }
}

/// Leave: DISCONNECT first (on the control stream in per-topic mode), or just drop the
/// connection (`abrupt`).
async fn leave(mut conn: Conn, abrupt: bool) {
    if !abrupt {
        let w = match &mut conn._control {
            Some((_, control)) => control,
            None => &mut conn.w,
        };
        let _ = w.send(&Packet::disconnect(quiclab::mqtt::codec::DisconnectReasonCode::NormalDisconnect)).await;
        if let Some(q) = &conn.quic {
            // Let the DISCONNECT go out before the connection closes with the handle.
            tokio::time::sleep(Duration::from_millis(20)).await;
            q.close(0u32.into(), b"bye");
        }
    }
}

/// One turn of a persistent churner.
async fn persistent_turn(
    g: &Gen,
    b: &BrokerProc,
    t: BenchTransport,
    c: Arc<Mutex<Churner>>,
    dwell: Duration,
    abrupt: bool,
    soak: Arc<Soak>,
) {
    let Some((id, joined)) = c.lock().ok().map(|c| (c.id.clone(), c.joined)) else { return };
    let done = |c: &Arc<Mutex<Churner>>| {
        if let Ok(mut c) = c.lock() {
            c.busy = false;
        }
    };
    let (mut conn, present) = match connect_as(g, b, t, &id, 60, false).await {
        Ok(x) => x,
        Err(e) => {
            soak.error(format!("{id} over {}: {e}", t.name()));
            return done(&c);
        }
    };
    soak.churn_persistent.fetch_add(1, Ordering::Relaxed);
    if present != joined {
        soak.error(format!("{id} over {}: session present {present}, expected {joined}", t.name()));
    }
    if let Ok(mut c) = c.lock() {
        c.joined = true;
    }
    if !joined {
        if let Err(e) = subscribe(&mut conn.r, &mut conn.w, "soak/churn", QoS::Level1).await {
            soak.error(format!("{id}: SUBSCRIBE: {e}"));
            return done(&c);
        }
    }
    let read = read_for(&mut conn.r, &mut conn.w, dwell, |seq| {
        if let Ok(mut c) = c.lock() {
            if let Some(last) = c.last {
                if seq > last + 1 {
                    soak.churn_gaps.fetch_add(seq - last - 1, Ordering::Relaxed);
                    soak.error(format!("{id}: soak/churn {} to {} never arrived", last + 1, seq - 1));
                }
            }
            c.last = Some(c.last.map_or(seq, |l| l.max(seq)));
        }
    })
    .await;
    if let Err(e) = read {
        soak.error(format!("{id} over {}: {e}", t.name()));
    }
    leave(conn, abrupt).await;
    done(&c);
}

/// One turn of a clean churner: subscribe to a steady QoS 1 topic, read, sometimes
/// unsubscribe, leave.
async fn clean_turn(g: &Gen, b: &BrokerProc, t: BenchTransport, n: u64, dwell: Duration, rnd: u64, soak: Arc<Soak>) {
    let id = format!("soak-clean-{n}");
    let (mut conn, present) = match connect_as(g, b, t, &id, 60, true).await {
        Ok(x) => x,
        Err(e) => return soak.error(format!("{id} over {}: {e}", t.name())),
    };
    soak.churn_clean.fetch_add(1, Ordering::Relaxed);
    if present {
        soak.error(format!("{id}: session present on a clean session"));
    }
    let filter = format!("soak/steady/{}/q1", t.name());
    if let Err(e) = subscribe(&mut conn.r, &mut conn.w, &filter, QoS::Level1).await {
        return soak.error(format!("{id}: SUBSCRIBE: {e}"));
    }
    if let Err(e) = read_for(&mut conn.r, &mut conn.w, dwell, |_| {}).await {
        return soak.error(format!("{id} over {}: {e}", t.name()));
    }
    if rnd.is_multiple_of(2) {
        let Ok(f) = mqtt_client::filter(&filter) else { return };
        let unsub = Packet::Unsubscribe(Unsubscribe::new(Pid::try_from(1).unwrap_or_default(), vec![f]));
        if conn.w.send(&unsub).await.is_err() {
            return soak.error(format!("{id}: connection lost sending UNSUBSCRIBE"));
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(until, conn.r.next()).await {
                Ok(Ok(Some(Packet::Unsuback(_)))) => break,
                Ok(Ok(Some(p))) => {
                    receive(&mut conn.w, p);
                    let _ = conn.w.flush().await;
                }
                other => return soak.error(format!("{id}: no UNSUBACK: {other:?}")),
            }
        }
    }
    leave(conn, rnd % 4 >= 2).await;
}

/// Start a churn client every [`CHURN_EVERY`] until the soak stops, then wait for the running
/// ones: persistent and clean in turn.
async fn churn(
    g: &Gen,
    b: &BrokerProc,
    transports: &[BenchTransport],
    churners: &[Arc<Mutex<Churner>>],
    soak: &Arc<Soak>,
) {
    // Persistent churners use the control stream (a session's queued messages come there
    // after a reconnection), so per-topic mode is left to the clean ones.
    let mut lasting: Vec<BenchTransport> =
        transports.iter().copied().filter(|t| *t != BenchTransport::QuicPerTopic).collect();
    if lasting.is_empty() {
        lasting.push(BenchTransport::Quic);
    }
    let mut rng = Rng::new(18);
    let mut turns: FuturesUnordered<Pin<Box<dyn Future<Output = ()> + '_>>> = FuturesUnordered::new();
    let mut tick = tokio::time::interval(CHURN_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut n = 0u64;
    while !soak.stopping() {
        tokio::select! {
            _ = tick.tick() => {
                n += 1;
                let dwell = Duration::from_millis(200 + rng.below(800));
                let rnd = rng.below(1 << 16);
                if n.is_multiple_of(2) {
                    let c = churners[(n / 2) as usize % CHURNERS].clone();
                    let free = c.lock().map(|mut c| !std::mem::replace(&mut c.busy, true)).unwrap_or(false);
                    if free {
                        let t = lasting[(n / 2 / CHURNERS as u64) as usize % lasting.len()];
                        turns.push(Box::pin(persistent_turn(g, b, t, c, dwell, rnd.is_multiple_of(2), soak.clone())));
                    }
                } else {
                    let t = transports[(n / 2) as usize % transports.len()];
                    turns.push(Box::pin(clean_turn(g, b, t, n, dwell, rnd, soak.clone())));
                }
            }
            Some(()) = turns.next(), if !turns.is_empty() => {}
        }
    }
    while turns.next().await.is_some() {}
}

/// Size of the store file (0 if it cannot be read).
fn store_bytes(b: &BrokerProc) -> u64 {
    b.dir().and_then(|d| std::fs::metadata(d.join(quiclab::mqtt::store::FILE_NAME)).ok()).map_or(0, |m| m.len())
}

/// Sample the broker every [`SAMPLE_EVERY`] for `length`, then stop the load (also when
/// sampling fails: a broker that died must end the run, not hang it).
async fn sample(b: &BrokerProc, start: Instant, length: Duration, soak: &Soak) -> Result<Vec<Sample>, BenchError> {
    let r = sample_for(b, start, length, soak).await;
    soak.stop.store(true, Ordering::Relaxed);
    r
}

async fn sample_for(b: &BrokerProc, start: Instant, length: Duration, soak: &Soak) -> Result<Vec<Sample>, BenchError> {
    let take = || -> Result<Sample, BenchError> {
        Ok(Sample {
            t_s: start.elapsed().as_secs_f64(),
            rss_kib: b.rss()?,
            cpu_s: b.cpu()?,
            store_bytes: store_bytes(b),
            delivered: soak.delivered.load(Ordering::Relaxed),
            connects: soak.churn_persistent.load(Ordering::Relaxed) + soak.churn_clean.load(Ordering::Relaxed),
        })
    };
    let mut samples = vec![take()?];
    let end = start + length;
    let mut next = start + SAMPLE_EVERY;
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        let s = take()?;
        eprintln!(
            "soak: {:>5.0} s  RSS {} KiB  store {} KiB  delivered {}  churn connections {}  errors {}",
            s.t_s,
            s.rss_kib,
            s.store_bytes / 1024,
            s.delivered,
            s.connects,
            soak.errors.load(Ordering::Relaxed)
        );
        samples.push(s);
        next += SAMPLE_EVERY;
    }
    tokio::time::sleep_until(end.into()).await;
    samples.push(take()?);
    Ok(samples)
}

/// Run the soak against `b` (a quiclab broker with its store on).
pub(super) async fn run(a: &BenchArgs, b: &BrokerProc, g: &Gen) -> Result<SoakResult, BenchError> {
    let transports = a.transport.clone();
    let soak = Arc::new(Soak::default());
    let warmup = a.warmup.max(a.duration / 10);
    eprintln!(
        "soak: {:?} ({warmup:?} warm-up), {} msg/s over {}",
        a.duration,
        a.soak_rate,
        transports.iter().map(|t| t.name()).collect::<Vec<_>>().join(",")
    );
    // Steady subscribers, then the slow one, before anything is published.
    let mut subs = Vec::new();
    for &t in &transports {
        let name = format!("soak-sub-{}", t.name());
        let (mut conn, _) = connect_as(g, b, t, &name, 60, false).await?;
        subscribe(&mut conn.r, &mut conn.w, "soak/steady/#", QoS::Level2).await?;
        let seen = SeenByTopic::default();
        subs.push((name.clone(), seen.clone(), tokio::spawn(subscriber(conn, name, seen, soak.clone()))));
    }
    let (mut slow, _) = connect_as(g, b, BenchTransport::Tcp, "soak-slow", 60, true).await?;
    subscribe(&mut slow.r, &mut slow.w, "soak/steady/#", QoS::Level0).await?;
    let slow = tokio::spawn(slow_subscriber(slow, soak.clone()));
    // Publishers: steady (every transport × QoS), the churners' feed, the retained churn.
    let per_publisher = (a.soak_rate.max(1) as f64 / (3 * transports.len()) as f64).max(0.1);
    let period = Duration::from_secs_f64(1.0 / per_publisher);
    let mut pubs = Vec::new();
    for &t in &transports {
        for qos in [QoS::Level0, QoS::Level1, QoS::Level2] {
            let name = format!("soak/steady/{}/q{}", t.name(), qos as u8);
            let (conn, _) = connect_as(g, b, t, &format!("soak-pub-{}-{}", t.name(), qos as u8), 60, true).await?;
            pubs.push(tokio::spawn(publisher(conn, name.clone(), topic(&name)?, qos, period, soak.clone())));
        }
    }
    let (feed, _) = connect_as(g, b, BenchTransport::Tcp, "soak-churn-feed", 60, true).await?;
    let feed_period = Duration::from_secs(1) / CHURN_FEED_PER_S as u32;
    let feed = tokio::spawn(publisher(
        feed,
        "soak/churn".into(),
        topic("soak/churn")?,
        QoS::Level1,
        feed_period,
        soak.clone(),
    ));
    let retained_on = if transports.contains(&BenchTransport::Tls) { BenchTransport::Tls } else { transports[0] };
    let (rconn, _) = connect_as(g, b, retained_on, "soak-retained", 60, true).await?;
    let expected_retained: Arc<Mutex<HashMap<String, Option<u64>>>> = Arc::default();
    let retained = tokio::spawn(retained_churn(rconn, expected_retained.clone(), soak.clone()));

    let start = Instant::now();
    let churners: Vec<Arc<Mutex<Churner>>> = (0..CHURNERS)
        .map(|i| {
            Arc::new(Mutex::new(Churner { id: format!("soak-churn-{i}"), joined: false, last: None, busy: false }))
        })
        .collect();
    let (samples, ()) = tokio::join!(sample(b, start, a.duration, &soak), churn(g, b, &transports, &churners, &soak));
    let samples = samples?;
    let seconds = start.elapsed().as_secs_f64();

    // Publishing has stopped: collect the publishers' ends, wait for the deliveries.
    let mut finals = Vec::new();
    for p in pubs {
        match p.await {
            Ok(f) => finals.push(f),
            Err(e) => soak.error(format!("a publisher's task failed: {e}")),
        }
    }
    let feed_last = match feed.await {
        Ok(f) => f.last,
        Err(e) => {
            soak.error(format!("the churn feed's task failed: {e}"));
            0
        }
    };
    let _ = retained.await;
    let settle = Instant::now() + DRAIN;
    let missing = |subs: &[(String, SeenByTopic, tokio::task::JoinHandle<()>)], qos: QoS| -> u64 {
        let mut n = 0;
        for (_, seen, _) in subs {
            let Ok(seen) = seen.lock() else { continue };
            for f in finals.iter().filter(|f| f.qos == qos) {
                n += seen.get(&f.topic).map_or(f.last, |s| s.missing(f.last));
            }
        }
        n
    };
    while (missing(&subs, QoS::Level1) + missing(&subs, QoS::Level2)) > 0 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each persistent churner comes back once more and must get the feed up to its last
    // message: a session that lost its queue or its subscription shows here.
    let tails = churners.iter().map(|c| {
        let soak = soak.clone();
        async move {
            let Some(id) = c.lock().ok().filter(|c| c.joined).map(|c| c.id.clone()) else { return };
            let (mut conn, present) = match connect_as(g, b, BenchTransport::Tcp, &id, 60, false).await {
                Ok(x) => x,
                Err(e) => return soak.error(format!("{id}, last visit: {e}")),
            };
            if !present {
                soak.error(format!("{id}, last visit: session not present"));
            }
            let until = Instant::now() + Duration::from_secs(5);
            // Where the client was (`None`: nothing came yet; what was published before its
            // SUBSCRIBE is not owed to it).
            let mut last = c.lock().ok().and_then(|c| c.last);
            while last.is_none_or(|l| l < feed_last) && Instant::now() < until {
                let r = read_for(&mut conn.r, &mut conn.w, Duration::from_millis(200), |seq| {
                    if let Some(l) = last.filter(|l| seq > l + 1) {
                        soak.churn_gaps.fetch_add(seq - l - 1, Ordering::Relaxed);
                        soak.error(format!("{id}: soak/churn {} to {} never arrived", l + 1, seq - 1));
                    }
                    last = Some(last.map_or(seq, |l| l.max(seq)));
                })
                .await;
                if let Err(e) = r {
                    return soak.error(format!("{id}, last visit: {e}"));
                }
            }
            match last {
                Some(l) if l < feed_last => {
                    soak.churn_gaps.fetch_add(feed_last - l, Ordering::Relaxed);
                    soak.error(format!("{id}: soak/churn {} to {feed_last} never arrived", l + 1));
                }
                None => soak.error(format!("{id}: no soak/churn message ever arrived")),
                Some(_) => {}
            }
            leave(conn, false).await;
        }
    });
    futures_util::future::join_all(tails).await;
    // QoS 0 stragglers: a moment more (they are not waited for beyond it).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut r = SoakResult {
        seconds,
        warmup_s: warmup.as_secs_f64(),
        transports: transports.iter().map(|t| t.name().to_string()).collect(),
        missing_qos0: missing(&subs, QoS::Level0),
        missing_qos1: missing(&subs, QoS::Level1),
        missing_qos2: missing(&subs, QoS::Level2),
        ..SoakResult::default()
    };
    for f in &finals {
        r.published[f.qos as usize] += f.last;
        if f.unacked > 0 {
            // Already an error (and counted as missing at the subscribers); not published.
            r.published[f.qos as usize] -= f.unacked.min(f.last);
        }
    }
    for (_, seen, _) in &subs {
        if let Ok(seen) = seen.lock() {
            for f in &finals {
                if let Some(s) = seen.get(&f.topic) {
                    match f.qos {
                        QoS::Level1 => r.dups_qos1 += s.dups,
                        QoS::Level2 => r.dups_qos2 += s.dups,
                        QoS::Level0 => {}
                    }
                    if f.qos != QoS::Level0 {
                        r.out_of_order += s.out_of_order;
                    }
                }
            }
        }
    }
    // Retained: a fresh subscriber must see exactly the last acknowledged state.
    let expected = expected_retained.lock().map(|e| e.clone()).unwrap_or_default();
    let (mut check, _) = connect_as(g, b, BenchTransport::Tcp, "soak-retained-check", 60, true).await?;
    subscribe(&mut check.r, &mut check.w, "soak/retained/#", QoS::Level1).await?;
    let mut got: HashMap<String, String> = HashMap::new();
    while let Ok(Ok(Some(p))) = tokio::time::timeout(Duration::from_secs(2), check.r.next()).await {
        if let Some(p) = receive(&mut check.w, p) {
            let _ = check.w.flush().await;
            got.insert(p.topic_name.to_string(), String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
    for (t, want) in &expected {
        let ok = match want {
            Some(seq) => got.get(t) == Some(&seq.to_string()),
            None => !got.contains_key(t),
        };
        if !ok {
            r.retained_mismatches += 1;
            soak.error(format!("retained {t}: expected {want:?}, got {:?}", got.get(t)));
        }
    }
    for t in got.keys().filter(|t| !expected.contains_key(*t)) {
        r.retained_mismatches += 1;
        soak.error(format!("retained {t}: never published, yet retained"));
    }
    r.retained_topics_checked = expected.len() as u64;
    soak.finished.store(true, Ordering::Relaxed);
    slow.abort();
    for (_, _, task) in &subs {
        task.abort();
    }
    r.delivered = soak.delivered.load(Ordering::Relaxed);
    r.skipped_ticks = soak.skipped.load(Ordering::Relaxed);
    r.slow_received = soak.slow_received.load(Ordering::Relaxed);
    r.churn_persistent = soak.churn_persistent.load(Ordering::Relaxed);
    r.churn_clean = soak.churn_clean.load(Ordering::Relaxed);
    r.churn_gaps = soak.churn_gaps.load(Ordering::Relaxed);
    r.errors = soak.errors.load(Ordering::Relaxed);
    r.error_samples = soak.error_samples.lock().map(|v| v.clone()).unwrap_or_default();
    // Broker log: WARN and ERROR lines.
    if let Some(log) = b.dir().map(|d| d.join(BROKER_LOG)) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let (shed, bad): (Vec<&str>, Vec<&str>) = text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains("ERROR"))
            .partition(|l| l.contains("channel queue full") && l.contains("QoS 0 message dropped"));
        r.broker_log_shed = shed.len() as u64;
        r.broker_log_warnings = bad.len() as u64;
        r.broker_log_samples = bad.iter().take(5).map(|l| l.to_string()).collect();
    }
    let after: Vec<&Sample> = samples.iter().filter(|s| s.t_s >= warmup.as_secs_f64() - 0.5).collect();
    r.rss_warm_kib = after.first().map_or(0, |s| s.rss_kib);
    r.rss_end_kib = samples.last().map_or(0, |s| s.rss_kib);
    r.rss_max_kib = after.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    r.store_warm_bytes = after.first().map_or(0, |s| s.store_bytes);
    r.store_end_bytes = samples.last().map_or(0, |s| s.store_bytes);
    r.samples = samples;
    eprintln!(
        "soak: RSS {} → {} KiB after the warm-up ({:+.1}%), {} problem(s)",
        r.rss_warm_kib,
        r.rss_end_kib,
        r.rss_growth_pct(),
        r.problems()
    );
    Ok(r)
}

/// The soak's part of the report: the summary, then the broker over time (a row a minute,
/// or every sample in a run shorter than 5 minutes).
pub(super) fn markdown(r: &SoakResult) -> String {
    let kib = |b: u64| format!("{} KiB", b / 1024);
    let rows = vec![
        vec!["length (warm-up)".into(), format!("{:.0} s ({:.0} s)", r.seconds, r.warmup_s)],
        vec!["transports".into(), r.transports.join(", ")],
        vec![
            "steady messages published (QoS 0 / 1 / 2)".into(),
            format!("{} / {} / {}", r.published[0], r.published[1], r.published[2]),
        ],
        vec!["delivered to the steady subscribers (first copies)".into(), r.delivered.to_string()],
        vec![
            "acknowledged QoS 1 / QoS 2 messages missing at a subscriber".into(),
            format!("{} / {}", r.missing_qos1, r.missing_qos2),
        ],
        vec!["QoS 0 messages missing at a subscriber (best effort)".into(), r.missing_qos0.to_string()],
        vec!["second copies QoS 1 (allowed) / QoS 2".into(), format!("{} / {}", r.dups_qos1, r.dups_qos2)],
        vec!["QoS 1/2 first copies out of order".into(), r.out_of_order.to_string()],
        vec!["publisher ticks skipped (1000 unacknowledged)".into(), r.skipped_ticks.to_string()],
        vec!["slow subscriber: packets read".into(), r.slow_received.to_string()],
        vec!["churn connections: persistent / clean".into(), format!("{} / {}", r.churn_persistent, r.churn_clean)],
        vec!["soak/churn messages a returning client missed".into(), r.churn_gaps.to_string()],
        vec![
            "retained topics checked / mismatches".into(),
            format!("{} / {}", r.retained_topics_checked, r.retained_mismatches),
        ],
        vec!["client errors".into(), r.errors.to_string()],
        vec![
            "broker log: QoS 0 drop lines (a full channel queue, logged at 1, 2, 4, ... drops)".into(),
            r.broker_log_shed.to_string(),
        ],
        vec!["broker log: other lines at WARN or ERROR".into(), r.broker_log_warnings.to_string()],
        vec![
            "broker RSS after the warm-up → at the end (max)".into(),
            format!(
                "{} → {} KiB ({:+.1}%; max {} KiB)",
                r.rss_warm_kib,
                r.rss_end_kib,
                r.rss_growth_pct(),
                r.rss_max_kib
            ),
        ],
        vec![
            "store file after the warm-up → at the end".into(),
            format!("{} → {}", kib(r.store_warm_bytes), kib(r.store_end_bytes)),
        ],
        vec!["problems (fail the soak)".into(), r.problems().to_string()],
    ];
    let mut s = String::from("\n");
    s += &md_table(&["soak", "value"], &rows);
    for e in &r.error_samples {
        s += &format!("\n- client error: {e}");
    }
    for l in &r.broker_log_samples {
        s += &format!("\n- broker log: {l}");
    }
    if !r.error_samples.is_empty() || !r.broker_log_samples.is_empty() {
        s += "\n";
    }
    let step = if r.seconds >= 300.0 { 6 } else { 1 };
    let mut rows = Vec::new();
    let mut prev: Option<&Sample> = None;
    for (i, x) in r.samples.iter().enumerate() {
        if i % step != 0 && i + 1 != r.samples.len() {
            continue;
        }
        let cores =
            prev.map_or("–".to_string(), |p| format!("{:.2}", (x.cpu_s - p.cpu_s) / (x.t_s - p.t_s).max(1e-9)));
        let rate = prev.map_or("–".to_string(), |p| {
            format!("{:.0}", (x.delivered - p.delivered) as f64 / (x.t_s - p.t_s).max(1e-9))
        });
        rows.push(vec![
            format!("{:.0} s", x.t_s),
            format!("{} KiB", x.rss_kib),
            kib(x.store_bytes),
            cores,
            rate,
            x.connects.to_string(),
        ]);
        prev = Some(x);
    }
    s += "\n";
    s += &md_table(
        &["time", "broker RSS", "store file", "broker CPU (cores)", "delivered msg/s", "churn connections so far"],
        &rows,
    );
    s
}
