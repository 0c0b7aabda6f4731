//! The `mqtt_broker` target: [`BrokerCore`] driven like a driver would, by arbitrary sequences
//! of connections, channels, packets and time steps, with a model of what the clients saw.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;

use crate::mqtt::codec::{
    v3_options, Connect, Decoder, DisconnectReasonCode, LastWill, Packet, Pid, Protocol, Publish, QoS, QosPid,
    Subscribe, SubscribeReasonCode, TopicFilter, TopicName, Unsubscribe,
};
use crate::mqtt::topic::filter_matches;
use crate::mqtt::{Action, BrokerCore, ChannelEnd, ChannelId, ConnId, MqttConfig, CONTROL_CHANNEL};

/// Small limits, so that every bound is reached within a few operations.
fn config(u: &mut Unstructured) -> arbitrary::Result<MqttConfig> {
    Ok(MqttConfig {
        max_packet_size: u.int_in_range(16usize..=512)?,
        max_queued_messages: u.int_in_range(0usize..=4)?,
        queue_qos0_offline: bool::arbitrary(u)?,
        max_inflight: u.int_in_range(1usize..=3)?,
        max_qos: *u.choose(&[QoS::Level0, QoS::Level1, QoS::Level2, QoS::Level2])?,
        connect_timeout: Duration::from_secs(2),
        max_keepalive: if bool::arbitrary(u)? { Some(u.int_in_range(0u16..=4)?) } else { None },
        max_sessions: u.int_in_range(1usize..=5)?,
        max_retained: u.int_in_range(0usize..=3)?,
        max_retained_bytes: u.int_in_range(0usize..=64)?,
        max_topic_levels: u.int_in_range(1usize..=4)?,
        max_subscriptions: u.int_in_range(0usize..=5)?,
        max_awaiting_rel: u.int_in_range(0usize..=3)?,
        max_awaiting_rel_bytes: u.int_in_range(0usize..=64)?,
        // The core sizes its tables for this up front.
        max_connections: 16,
        ..MqttConfig::default()
    })
}

/// Topic levels: a small alphabet so that publications meet subscriptions.
const LEVELS: &[&str] = &["a", "b", "$x", ""];
/// An empty id (the server assigns one) now and then.
const CLIENT_IDS: &[&str] = &["c0", "c1", "c2", "c3", "c0", "c1", "c2", "c3", ""];

#[derive(Arbitrary, Debug)]
struct TopicSpec(u8, Vec<u8>);

impl TopicSpec {
    /// 1..=5 levels; more than `max_topic_levels` now and then.
    fn name(&self) -> String {
        let mut parts = vec![LEVELS[usize::from(self.0) % LEVELS.len()]];
        parts.extend(self.1.iter().take(4).map(|&l| LEVELS[usize::from(l) % LEVELS.len()]));
        let s = parts.join("/");
        if s.is_empty() {
            "a".into()
        } else {
            s
        }
    }
}

#[derive(Arbitrary, Debug)]
struct FilterSpec(Vec<u8>, bool);

impl FilterSpec {
    fn filter(&self) -> String {
        let mut parts: Vec<&str> = self
            .0
            .iter()
            .take(5)
            .map(|&l| if l % 5 == 4 { "+" } else { LEVELS[usize::from(l) % LEVELS.len()] })
            .collect();
        if self.1 || parts.is_empty() || parts == [""] {
            parts.push("#");
        }
        parts.join("/")
    }
}

#[derive(Arbitrary, Debug)]
enum End {
    Finished,
    Reset,
    StopSending,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A new connection; early (QUIC 0-RTT) or not.
    Open {
        early: bool,
    },
    /// CONNECT on the control channel.
    Connect {
        conn: u8,
        client: u8,
        clean: bool,
        keep_alive: u8,
        will: Option<(TopicSpec, u8, bool)>,
    },
    /// A new data channel (QUIC stream) on a connection.
    OpenChannel {
        conn: u8,
    },
    Publish {
        conn: u8,
        ch: u8,
        topic: TopicSpec,
        qos: u8,
        retain: bool,
        empty: bool,
    },
    /// Send again (DUP) a QoS 2 PUBLISH not yet released.
    Republish {
        conn: u8,
        which: u8,
    },
    /// PUBREL for one of the connection's QoS 2 PUBLISHes.
    Release {
        conn: u8,
        which: u8,
    },
    Subscribe {
        conn: u8,
        ch: u8,
        pid: u16,
        filters: Vec<(FilterSpec, u8)>,
    },
    Unsubscribe {
        conn: u8,
        ch: u8,
        pid: u16,
        filters: Vec<FilterSpec>,
    },
    /// Acknowledge one delivery the way a client does (PUBACK, PUBREC, PUBCOMP).
    Ack {
        conn: u8,
        which: u8,
    },
    /// Acknowledge every delivery of the connection.
    AckAll {
        conn: u8,
    },
    /// An acknowledgement with any identifier, on any channel.
    Stray {
        conn: u8,
        ch: u8,
        kind: u8,
        pid: u16,
    },
    Ping {
        conn: u8,
        ch: u8,
    },
    Disconnect {
        conn: u8,
        ch: u8,
    },
    /// A server-to-client packet from the client (a violation).
    Wrong {
        conn: u8,
        ch: u8,
    },
    /// Raw bytes through the connection's channel decoder.
    Raw {
        conn: u8,
        ch: u8,
        bytes: Vec<u8>,
    },
    CloseChannel {
        conn: u8,
        ch: u8,
        end: End,
    },
    HandshakeComplete {
        conn: u8,
    },
    /// The transport is gone (after a Close, or EOF).
    Closed {
        conn: u8,
    },
    /// Time passes; timers fire.
    Time {
        ms: u16,
    },
}

/// A QoS 2 PUBLISH the client sent and has not released.
#[derive(Debug, Clone)]
struct Pending {
    pid: u16,
    ch: ChannelId,
    topic: String,
    payload: Bytes,
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    /// The client id of the CONNECT the client sent (what the session will be, if accepted).
    intended: Option<String>,
    /// CONNACK 0x00 seen: the session's client id.
    connected: Option<String>,
    /// A Close action was seen.
    closing: bool,
    early: bool,
    /// Data channels open, and every one ever opened (`None` for CONTROL_CHANNEL's decoder).
    channels: Vec<ChannelId>,
    ended: HashSet<ChannelId>,
    /// Channels ended while the connection was early (their end may be held).
    ended_early: HashSet<ChannelId>,
    next_channel: ChannelId,
    decoders: HashMap<ChannelId, Decoder>,
    /// Topic aliases the broker set toward this client, per channel (MQTT 5 runs).
    aliases: HashMap<(ChannelId, u16), String>,
    /// The Receive Maximum its CONNECT asked for (MQTT 5 runs).
    receive_max: Option<usize>,
    next_pid: u16,
    pending: Vec<Pending>,
    /// An acknowledgement was sent while the connection was early: the core applies it when
    /// the handshake completes, after the CONNACK that starts the model of a new session.
    acks_held: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Await {
    Puback,
    Pubrec,
    Pubcomp,
}

#[derive(Debug, Clone, Copy)]
struct Flight {
    conn: ConnId,
    ch: ChannelId,
    state: Await,
}

/// What the clients of one client id saw of their session's outbound flows.
#[derive(Debug, Default)]
struct SessionModel {
    flights: HashMap<u16, Flight>,
    /// An acknowledgement went where its effect is not known (an early connection): the
    /// checks on this session wait until it is new again.
    tainted: bool,
}

struct Harness {
    /// Every client speaks MQTT 5 ([`mqtt_broker_v5`]).
    v5: bool,
    core: BrokerCore<()>,
    cfg: MqttConfig,
    now: Instant,
    conns: Vec<Conn>,
    /// Every connection id the core ever handed out, and those reported gone.
    seen_ids: HashSet<ConnId>,
    gone: HashSet<ConnId>,
    sessions: HashMap<String, SessionModel>,
    /// Every client id a CONNECT carried (for the stats sums).
    client_ids: HashSet<String>,
    /// A CONNECT with an empty client id was sent: the server assigns ids we cannot name.
    assigned_ids: bool,
    /// (client id, channel, filter) of every SUBSCRIBE sent.
    subscribed: HashSet<(String, ChannelId, String)>,
    /// Fresh QoS 2 deliveries by (client id, payload).
    qos2_deliveries: HashMap<(String, Bytes), usize>,
    /// Payloads sent by structured PUBLISH/wills (unique) and by raw bytes (maybe not).
    unique_payloads: HashSet<Bytes>,
    raw_payloads: HashSet<Bytes>,
    next_payload: u64,
    out: Vec<Action>,
    /// Keep will topics within `max_topic_levels` ([`OpenBug::WillTooDeep`]).
    avoid_deep_wills: bool,
}

/// Open bugs the campaign steers around so that it can look for others; each is reproduced by
/// its `open-` regression test through [`mqtt_broker_strict`]. Empty the list as fixes land.
///
/// * `WillTooDeep`: a CONNECT whose will topic has more than `max_topic_levels` levels is
///   closed after its session was attached: the session stays "online" with no connection
///   (a clean one is never discarded; deliveries go to a dead connection id).
const AVOID_OPEN_BUGS: &[OpenBug] = &[]; // WillTooDeep: fixed (on_connect checks the will first)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBug {
    WillTooDeep,
}

/// The campaign's entry point: the harness below, minus the scenarios of `AVOID_OPEN_BUGS`.
pub fn mqtt_broker(data: &[u8]) {
    run(data, AVOID_OPEN_BUGS, false)
}

/// Every scenario, open bugs included (the `open-` regression tests).
pub fn mqtt_broker_strict(data: &[u8]) {
    run(data, &[], false)
}

/// The same harness with every client speaking MQTT 5 (the `mqtt_broker_v5` target): CONNECT
/// carries a Session Expiry Interval, a Receive Maximum and a Topic Alias Maximum drawn from
/// its keep-alive byte, so sessions expire as time steps pass, windows are bounded by the
/// client's Receive Maximum, and deliveries carry topic aliases; the model checks, in addition,
/// that no client ever has more in flight than its Receive Maximum and that every alias-only
/// PUBLISH uses an alias set before on its channel.
pub fn mqtt_broker_v5(data: &[u8]) {
    run(data, AVOID_OPEN_BUGS, true)
}

/// See the module documentation; checks are `assert!`s.
fn run(data: &[u8], avoid: &[OpenBug], v5: bool) {
    let mut u = Unstructured::new(data);
    let Ok(cfg) = config(&mut u) else { return };
    if trace() {
        eprintln!("mqtt_broker config: {cfg:?}");
    }
    let now = Instant::now();
    let mut h = Harness {
        core: BrokerCore::new(cfg.clone()),
        cfg,
        now,
        conns: Vec::new(),
        seen_ids: HashSet::new(),
        gone: HashSet::new(),
        sessions: HashMap::new(),
        client_ids: HashSet::new(),
        assigned_ids: false,
        subscribed: HashSet::new(),
        qos2_deliveries: HashMap::new(),
        unique_payloads: HashSet::new(),
        raw_payloads: HashSet::new(),
        next_payload: 0,
        out: Vec::new(),
        avoid_deep_wills: avoid.contains(&OpenBug::WillTooDeep),
        v5,
    };
    let mut steps = 0;
    while let Ok(op) = Op::arbitrary(&mut u) {
        steps += 1;
        if steps > 150 {
            break;
        }
        if trace() {
            eprintln!("mqtt_broker step {steps}: {op:?}");
        }
        h.step(op);
        h.check();
    }
    // Every transport goes away.
    let ids: Vec<ConnId> = h.conns.iter().map(|c| c.id).collect();
    for id in ids {
        h.gone_conn(id);
        h.check();
    }
    assert_eq!(h.core.stats().connections, 0);
}

/// `QUICLAB_FUZZ_TRACE=1`: print every operation (to read a reproducer).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("QUICLAB_FUZZ_TRACE").is_some())
}

impl Harness {
    fn conn_index(&self, n: u8) -> Option<usize> {
        (!self.conns.is_empty()).then(|| usize::from(n) % self.conns.len())
    }

    /// A channel of connection `i`: 0 (control) or one of its open data channels.
    fn channel(&self, i: usize, n: u8) -> ChannelId {
        let c = &self.conns[i];
        let open: Vec<ChannelId> = c.channels.iter().copied().filter(|ch| !c.ended.contains(ch)).collect();
        if n.is_multiple_of(3) || open.is_empty() {
            CONTROL_CHANNEL
        } else {
            open[usize::from(n) % open.len()]
        }
    }

    fn payload(&mut self) -> Bytes {
        self.next_payload += 1;
        let p = Bytes::from(format!("m{}", self.next_payload));
        self.unique_payloads.insert(p.clone());
        p
    }

    fn alloc_pid(c: &mut Conn) -> Pid {
        c.next_pid = c.next_pid.wrapping_add(1).max(1);
        Pid::try_from(c.next_pid).unwrap_or_default()
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Open { early } => {
                if self.conns.len() >= 6 {
                    return;
                }
                let id = self.core.open(None, (), self.now, &mut self.out);
                assert!(self.seen_ids.insert(id), "connection id {id:#x} handed out twice");
                if early {
                    self.core.set_early(id);
                }
                self.conns.push(Conn {
                    id,
                    intended: None,
                    connected: None,
                    closing: false,
                    early,
                    channels: Vec::new(),
                    ended: HashSet::new(),
                    ended_early: HashSet::new(),
                    next_channel: 1,
                    decoders: HashMap::new(),
                    aliases: HashMap::new(),
                    receive_max: None,
                    next_pid: 0,
                    pending: Vec::new(),
                    acks_held: false,
                });
                self.drain();
            }
            Op::Connect { conn, client, clean, keep_alive, will } => {
                let Some(i) = self.conn_index(conn) else { return };
                let cid = CLIENT_IDS[usize::from(client) % CLIENT_IDS.len()];
                let mut p = Connect::new(cid.into(), u16::from(keep_alive % 6));
                p.clean_start = clean;
                if self.v5 {
                    // Expiry 0, 1 s, 3 s or never; Receive Maximum 1-3; Topic Alias Maximum 0-2.
                    let k = usize::from(keep_alive >> 3);
                    p.properties.session_expiry_interval = Some([0, 1, 3, u32::MAX][k % 4]);
                    let receive_max = 1 + (k / 4 % 3) as u16;
                    p.properties.receive_max = Some(receive_max);
                    p.properties.topic_alias_max = Some((k / 12 % 3) as u16);
                    self.conns[i].receive_max = Some(usize::from(receive_max));
                } else {
                    p.protocol = Protocol::V311;
                }
                if let Some((topic, qos, retain)) = will {
                    let mut name = topic.name();
                    if self.avoid_deep_wills {
                        name = name.split('/').take(self.cfg.max_topic_levels).collect::<Vec<_>>().join("/");
                    }
                    if let Ok(t) = TopicName::try_from(if name.is_empty() { "a" } else { name.as_str() }) {
                        let payload = self.payload();
                        let mut w = LastWill::new(qos_of(qos), t, payload);
                        w.retain = retain;
                        p.last_will = Some(w);
                    }
                }
                self.send(i, CONTROL_CHANNEL, Packet::connect(p));
            }
            Op::OpenChannel { conn } => {
                let Some(i) = self.conn_index(conn) else { return };
                let c = &mut self.conns[i];
                if c.channels.len() < 4 {
                    c.channels.push(c.next_channel);
                    c.next_channel += 1;
                }
            }
            Op::Publish { conn, ch, topic, qos, retain, empty } => {
                let Some(i) = self.conn_index(conn) else { return };
                let ch = self.channel(i, ch);
                let Ok(t) = TopicName::try_from(topic.name().as_str()) else { return };
                let payload = if empty { Bytes::new() } else { self.payload() };
                let qos_pid = match qos % 3 {
                    0 => QosPid::Level0,
                    1 => QosPid::Level1(Self::alloc_pid(&mut self.conns[i])),
                    _ => QosPid::Level2(Self::alloc_pid(&mut self.conns[i])),
                };
                if let QosPid::Level2(pid) = qos_pid {
                    if !payload.is_empty() {
                        let pending = Pending { pid: pid.value(), ch, topic: t.to_string(), payload: payload.clone() };
                        self.conns[i].pending.push(pending);
                    }
                }
                let mut p = Publish::new(qos_pid, t, payload);
                p.retain = retain;
                self.send(i, ch, Packet::Publish(p));
            }
            Op::Republish { conn, which } => {
                let Some(i) = self.conn_index(conn) else { return };
                let c = &self.conns[i];
                if c.pending.is_empty() || c.ended.contains(&c.pending[usize::from(which) % c.pending.len()].ch) {
                    return;
                }
                let p = c.pending[usize::from(which) % c.pending.len()].clone();
                let (Ok(t), Ok(pid)) = (TopicName::try_from(p.topic.as_str()), Pid::try_from(p.pid)) else { return };
                let mut publish = Publish::new(QosPid::Level2(pid), t, p.payload);
                publish.dup = true;
                self.send(i, p.ch, Packet::Publish(publish));
            }
            Op::Release { conn, which } => {
                let Some(i) = self.conn_index(conn) else { return };
                let c = &mut self.conns[i];
                if c.pending.is_empty() {
                    return;
                }
                let p = c.pending.remove(usize::from(which) % c.pending.len());
                if c.ended.contains(&p.ch) {
                    return;
                }
                if let Ok(pid) = Pid::try_from(p.pid) {
                    self.send(i, p.ch, Packet::pubrel(pid));
                }
            }
            Op::Subscribe { conn, ch, pid, filters } => {
                let Some(i) = self.conn_index(conn) else { return };
                let ch = self.channel(i, ch);
                let topics: Vec<_> = filters
                    .iter()
                    .take(4)
                    .filter_map(|(f, q)| {
                        TopicFilter::try_from(f.filter().as_str()).ok().map(|f| (f, v3_options(qos_of(*q))))
                    })
                    .collect();
                let (Ok(pid), false) = (Pid::try_from(pid.max(1)), topics.is_empty()) else { return };
                self.send(i, ch, Packet::Subscribe(Subscribe::new(pid, topics)));
            }
            Op::Unsubscribe { conn, ch, pid, filters } => {
                let Some(i) = self.conn_index(conn) else { return };
                let ch = self.channel(i, ch);
                let topics: Vec<TopicFilter> =
                    filters.iter().take(4).filter_map(|f| TopicFilter::try_from(f.filter().as_str()).ok()).collect();
                let (Ok(pid), false) = (Pid::try_from(pid.max(1)), topics.is_empty()) else { return };
                self.send(i, ch, Packet::Unsubscribe(Unsubscribe::new(pid, topics)));
            }
            Op::Ack { conn, which } => {
                let Some(i) = self.conn_index(conn) else { return };
                let mut flights = self.flights_of(i);
                if flights.is_empty() {
                    return;
                }
                let (pid, f) = flights.swap_remove(usize::from(which) % flights.len());
                self.ack(i, pid, f);
            }
            Op::AckAll { conn } => {
                let Some(i) = self.conn_index(conn) else { return };
                for (pid, f) in self.flights_of(i) {
                    self.ack(i, pid, f);
                }
            }
            Op::Stray { conn, ch, kind, pid } => {
                let Some(i) = self.conn_index(conn) else { return };
                let ch = self.channel(i, ch);
                let Ok(pid) = Pid::try_from(pid.max(1) % 8 + 1) else { return };
                let p = match kind % 4 {
                    0 => Packet::puback(pid),
                    1 => Packet::pubrec(pid),
                    2 => Packet::pubrel(pid),
                    _ => Packet::pubcomp(pid),
                };
                self.send(i, ch, p);
            }
            Op::Ping { conn, ch } => {
                let Some(i) = self.conn_index(conn) else { return };
                let ch = self.channel(i, ch);
                self.send(i, ch, Packet::Pingreq);
            }
            Op::Disconnect { conn, ch } => {
                let Some(i) = self.conn_index(conn) else { return };
                let ch = self.channel(i, ch);
                self.send(i, ch, Packet::disconnect(DisconnectReasonCode::NormalDisconnect));
            }
            Op::Wrong { conn, ch } => {
                let Some(i) = self.conn_index(conn) else { return };
                let ch = self.channel(i, ch);
                self.send(i, ch, Packet::Pingresp);
            }
            Op::Raw { conn, ch, bytes } => {
                let Some(i) = self.conn_index(conn) else { return };
                let ch = self.channel(i, ch);
                let max = self.cfg.max_packet_size;
                let mut packets = Vec::new();
                let v = if self.v5 { crate::mqtt::codec::Version::V5 } else { crate::mqtt::codec::Version::V3 };
                let fresh = || if ch == CONTROL_CHANNEL { Decoder::new(max) } else { Decoder::with_version(max, v) };
                let res = self.conns[i].decoders.entry(ch).or_insert_with(fresh).feed(&bytes, &mut packets);
                for p in packets {
                    if let Packet::Publish(p) = &p {
                        self.raw_payloads.insert(p.payload.clone());
                    }
                    if let Packet::Connect(c) = &p {
                        if let Some(w) = &c.last_will {
                            self.raw_payloads.insert(w.payload.clone());
                        }
                    }
                    self.send(i, ch, p);
                }
                if let Err(e) = res {
                    let id = self.conns[i].id;
                    self.conns[i].decoders.remove(&ch);
                    self.core.malformed(id, ch, &e, self.now, &mut self.out);
                    self.drain();
                }
            }
            Op::CloseChannel { conn, ch, end } => {
                let Some(i) = self.conn_index(conn) else { return };
                let ch = self.channel(i, ch);
                let end = match end {
                    End::Finished => ChannelEnd::Finished,
                    End::Reset => ChannelEnd::Reset,
                    End::StopSending => ChannelEnd::StopSending,
                };
                let c = &mut self.conns[i];
                if ch != CONTROL_CHANNEL {
                    c.ended.insert(ch);
                    if c.early {
                        c.ended_early.insert(ch);
                    }
                    c.decoders.remove(&ch);
                    c.pending.retain(|p| p.ch != ch);
                }
                let id = c.id;
                self.core.close_channel(id, ch, end, self.now, &mut self.out);
                self.drain();
            }
            Op::HandshakeComplete { conn } => {
                let Some(i) = self.conn_index(conn) else { return };
                let id = self.conns[i].id;
                self.conns[i].early = false;
                self.core.handshake_complete(id, self.now, &mut self.out);
                self.drain();
            }
            Op::Closed { conn } => {
                let Some(i) = self.conn_index(conn) else { return };
                let id = self.conns[i].id;
                self.gone_conn(id);
            }
            Op::Time { ms } => {
                self.now += Duration::from_millis(u64::from(ms) * 4);
                self.core.handle_timeout(self.now, &mut self.out);
                self.drain();
            }
        }
    }

    /// The transport of `id` is gone: the driver tells the core, and forgets the connection.
    fn gone_conn(&mut self, id: ConnId) {
        self.core.closed(id, self.now, &mut self.out);
        let Some(i) = self.conns.iter().position(|c| c.id == id) else { return };
        let c = self.conns.remove(i);
        self.gone.insert(c.id);
        self.drain();
    }

    /// The model's flights of connection `i`'s session.
    fn flights_of(&self, i: usize) -> Vec<(u16, Flight)> {
        let c = &self.conns[i];
        let Some(cid) = &c.connected else { return Vec::new() };
        let Some(s) = self.sessions.get(cid) else { return Vec::new() };
        let mut v: Vec<(u16, Flight)> = s.flights.iter().map(|(k, f)| (*k, *f)).collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    fn ack(&mut self, i: usize, pid: u16, f: Flight) {
        let Ok(id) = Pid::try_from(pid) else { return };
        let c = &self.conns[i];
        let ch = if c.channels.contains(&f.ch) && !c.ended.contains(&f.ch) { f.ch } else { CONTROL_CHANNEL };
        let p = match f.state {
            Await::Puback => Packet::puback(id),
            Await::Pubrec => Packet::pubrec(id),
            Await::Pubcomp => Packet::pubcomp(id),
        };
        self.send(i, ch, p);
    }

    /// The client of connection `i` sends `p` on `ch`: note what it means for the model, hand
    /// it to the core, check what comes out.
    fn send(&mut self, i: usize, ch: ChannelId, p: Packet) {
        let c = &mut self.conns[i];
        let id = c.id;
        let plain = !c.early && !c.closing && c.connected.is_some();
        match &p {
            Packet::Connect(cn) => {
                if cn.client_id.is_empty() {
                    self.assigned_ids = true;
                }
                self.client_ids.insert(cn.client_id.to_string());
                if c.intended.is_none() && ch == CONTROL_CHANNEL {
                    c.intended = Some(cn.client_id.to_string());
                }
            }
            Packet::Subscribe(s) => {
                if let Some(cid) = c.intended.clone() {
                    for (f, _) in &s.topics {
                        self.subscribed.insert((cid.clone(), ch, f.to_string()));
                    }
                }
            }
            Packet::Puback(crate::mqtt::codec::Puback { pid, .. })
            | Packet::Pubrec(crate::mqtt::codec::Pubrec { pid, .. })
            | Packet::Pubcomp(crate::mqtt::codec::Pubcomp { pid, .. }) => {
                if let Some(cid) = c.connected.clone().or_else(|| c.intended.clone()) {
                    let s = self.sessions.entry(cid).or_default();
                    if !plain {
                        s.tainted = true;
                        c.acks_held |= c.early;
                    } else if let Some(f) = s.flights.get(&pid.value()) {
                        // The core's transitions (§4.3.2, §4.3.3); PUBREC's reply is a PUBREL,
                        // handled when it is seen.
                        let done = matches!(
                            (&p, f.state),
                            (Packet::Puback(_), Await::Puback) | (Packet::Pubcomp(_), Await::Pubcomp)
                        );
                        if done {
                            s.flights.remove(&pid.value());
                        }
                    }
                }
            }
            _ => {}
        }
        self.core.handle(id, ch, p, self.now, &mut self.out);
        self.drain();
    }

    /// Check every action the core emitted and update the model.
    fn drain(&mut self) {
        let actions = std::mem::take(&mut self.out);
        for a in actions {
            if trace() {
                eprintln!("mqtt_broker   -> {a:?}");
            }
            match a {
                Action::Timer { .. } | Action::Store(_) => {}
                Action::Close { conn, reason } => {
                    assert!(!self.gone.contains(&conn), "Close for connection {conn:#x} after it was gone");
                    let c = self.conns.iter_mut().find(|c| c.id == conn);
                    let Some(c) = c else { panic!("Close for unknown connection {conn:#x}") };
                    assert!(!c.closing, "second Close for {conn:#x} ({reason:?})");
                    c.closing = true;
                }
                Action::Send { conn, channel, packet } => self.sent(conn, channel, packet),
            }
        }
    }

    fn sent(&mut self, conn: ConnId, ch: ChannelId, packet: Packet) {
        assert!(!self.gone.contains(&conn), "Send to connection {conn:#x} after it was gone: {packet:?}");
        let Some(i) = self.conns.iter().position(|c| c.id == conn) else {
            panic!("Send to unknown connection {conn:#x}: {packet:?}")
        };
        let max_inflight = self.cfg.max_inflight;
        // Acks an early-data connection sent for the same client id are still held: the core acts
        // on them at its handshake, against whatever session then exists (a fresh one included).
        let held_elsewhere = |cid: &str| {
            self.conns.iter().enumerate().any(|(j, o)| j != i && o.acks_held && o.intended.as_deref() == Some(cid))
        };
        let held = match (&packet, self.conns[i].intended.as_deref()) {
            (Packet::Connack(_), Some(cid)) => held_elsewhere(cid),
            _ => false,
        };
        let c = &mut self.conns[i];
        assert!(!c.closing, "Send to {conn:#x} after its Close: {packet:?}");
        assert!(ch == CONTROL_CHANNEL || c.channels.contains(&ch), "Send on channel {ch} never opened: {packet:?}");
        // docs/mqtt-over-quic.md §6.3: nothing more goes on a channel that ended.
        assert!(
            !c.ended.contains(&ch) || c.ended_early.contains(&ch),
            "Send on channel {ch} after it ended: {packet:?}"
        );
        match packet {
            Packet::Connack(ack) => {
                assert_eq!(ch, CONTROL_CHANNEL, "CONNACK on a data channel");
                if ack.reason_code == crate::mqtt::codec::ConnectReasonCode::Success {
                    assert!(c.connected.is_none(), "second CONNACK 0x00 on {conn:#x}");
                    let cid = c.intended.clone().unwrap_or_default();
                    c.connected = Some(cid.clone());
                    if !ack.session_present {
                        let tainted = c.acks_held || held;
                        self.sessions.insert(cid, SessionModel { tainted, ..SessionModel::default() });
                    }
                }
            }
            Packet::Publish(p) => {
                let Some(cid) = c.connected.clone() else { panic!("PUBLISH to {conn:#x} before CONNACK: {p:?}") };
                if let Some(alias) = p.props().topic_alias {
                    // MQTT 5 §3.3.2.3.4: an alias names its topic from the packet that set it on.
                    if p.topic_name.is_empty() {
                        assert!(c.aliases.contains_key(&(ch, alias)), "alias {alias} used before it was set on {ch}");
                    } else {
                        c.aliases.insert((ch, alias), p.topic_name.to_string());
                    }
                }
                if cid.is_empty() {
                    return; // an assigned id: not modelled
                }
                let s = self.sessions.entry(cid.clone()).or_default();
                if let Some(pid) = p.qos_pid.pid() {
                    let state = if p.qos_pid.qos() == QoS::Level1 { Await::Puback } else { Await::Pubrec };
                    if !s.tainted {
                        if p.dup {
                            assert!(s.flights.contains_key(&pid.value()), "DUP PUBLISH for no flight: {p:?}");
                        } else {
                            assert!(
                                !s.flights.contains_key(&pid.value()),
                                "{cid}: new PUBLISH with identifier {} still in flight",
                                pid.value()
                            );
                            // docs/mqtt-over-quic.md §6.12: a new flight only within the channel's window.
                            let n = s.flights.values().filter(|f| f.conn == conn && f.ch == ch).count();
                            assert!(n < max_inflight, "{cid}: a new flight on channel {ch} with {n} in flight");
                            // MQTT 5 §3.3.4-7: within the client's Receive Maximum, all channels.
                            if let Some(rm) = c.receive_max {
                                let all = s.flights.values().filter(|f| f.conn == conn).count();
                                assert!(all < rm, "{cid}: a new flight with {all} in flight, Receive Maximum {rm}");
                            }
                        }
                    }
                    s.flights.insert(pid.value(), Flight { conn, ch, state });
                }
                // QoS 2: at most once per subscription (§4.3.3). Retained copies (RETAIN 1) are
                // new deliveries per SUBSCRIBE; retransmissions carry DUP.
                let checkable = self.unique_payloads.contains(&p.payload) && !self.raw_payloads.contains(&p.payload);
                if p.qos_pid.qos() == QoS::Level2 && !p.dup && !p.retain && checkable {
                    let n = self.qos2_deliveries.entry((cid.clone(), p.payload.clone())).or_default();
                    *n += 1;
                    let n = *n;
                    // One subscription per channel at route time: at most one copy per channel
                    // number the client ever subscribed on with a matching filter, plus the
                    // control channel (parked subscriptions).
                    let mut chans: HashSet<ChannelId> = self
                        .subscribed
                        .iter()
                        .filter(|(c, _, f)| *c == cid && filter_matches(f, &p.topic_name))
                        .map(|(_, ch, _)| *ch)
                        .collect();
                    if !chans.is_empty() {
                        chans.insert(CONTROL_CHANNEL);
                    }
                    assert!(
                        n <= chans.len(),
                        "{cid}: QoS 2 message {:?} on {:?} delivered {n} times (subscribed on channels {chans:?})",
                        p.payload,
                        &*p.topic_name
                    );
                }
            }
            Packet::Pubrel(rel) => {
                let pid = rel.pid;
                if let Some(cid) = c.connected.clone() {
                    let s = self.sessions.entry(cid).or_default();
                    if let Some(f) = s.flights.get_mut(&pid.value()) {
                        *f = Flight { conn, ch, state: Await::Pubcomp };
                    } else {
                        assert!(s.tainted, "PUBREL {} for no flight", pid.value());
                    }
                }
            }
            Packet::Suback(s) => {
                for code in &s.topics {
                    let granted = match code {
                        SubscribeReasonCode::GrantedQoS0 => QoS::Level0,
                        SubscribeReasonCode::GrantedQoS1 => QoS::Level1,
                        SubscribeReasonCode::GrantedQoS2 => QoS::Level2,
                        _ => continue,
                    };
                    assert!(granted <= self.cfg.max_qos, "granted {granted:?} above max_qos");
                }
            }
            _ => {}
        }
    }

    /// Invariants after every step.
    fn check(&mut self) {
        let stats = self.core.stats();
        assert_eq!(stats.connections, self.conns.len(), "connections gauge");
        assert!(stats.sessions <= self.cfg.max_sessions, "{} sessions", stats.sessions);
        assert!(stats.retained <= self.cfg.max_retained, "{} retained", stats.retained);
        assert!(stats.retained_bytes <= self.cfg.max_retained_bytes, "{} retained bytes", stats.retained_bytes);
        if self.assigned_ids {
            return;
        }
        let mut sessions = 0;
        let (mut inflight, mut queued) = (0, 0);
        for cid in &self.client_ids {
            let Some(info) = self.core.session_state(cid) else {
                self.sessions.remove(cid);
                continue;
            };
            sessions += 1;
            // A session is online only while a connection that the client sees as open has it.
            if info.online {
                let attached = self.conns.iter().any(|c| !c.closing && c.connected.as_deref() == Some(cid.as_str()));
                assert!(attached, "{cid}: session online without an open connection: {info:?}");
            }
            inflight += info.inflight;
            queued += info.queued;
            assert!(info.queued <= self.cfg.max_queued_messages, "{cid}: {} queued", info.queued);
            assert!(info.awaiting_rel <= self.cfg.max_awaiting_rel, "{cid}: {} awaiting PUBREL", info.awaiting_rel);
            assert!(info.subscriptions <= self.cfg.max_subscriptions, "{cid}: {} subscriptions", info.subscriptions);
            if let Some(m) = self.sessions.get(cid) {
                if !m.tainted {
                    assert_eq!(info.inflight, m.flights.len(), "{cid}: in flight, core vs what the client saw");
                }
            }
        }
        assert_eq!(stats.sessions, sessions, "sessions gauge");
        assert_eq!(stats.inflight, inflight, "inflight gauge vs sessions");
        assert_eq!(stats.queued, queued, "queued gauge vs sessions");
    }
}

fn qos_of(q: u8) -> QoS {
    match q % 3 {
        0 => QoS::Level0,
        1 => QoS::Level1,
        _ => QoS::Level2,
    }
}
