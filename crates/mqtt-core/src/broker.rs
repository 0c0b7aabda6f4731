//! The broker core, sans-IO: sessions, subscriptions, retained messages, QoS 1/2 flows, wills
//! and keepalive, as a deterministic state machine.
//!
//! Inputs are `(connection, channel, decoded packet, now)`; outputs are [`Action`]s appended to
//! a caller's vector: packets to send (each with its connection and channel), connections to
//! close, and timer deadlines to arm. No sockets, no tokio, no clock: a test drives it with
//! made-up instants and needs no sleeps, and every transport (TCP, TLS, and the QUIC stream
//! mapping of docs/mqtt-over-quic.md) runs the very same code. The driver keeps its own data
//! per connection in the core ([`BrokerCore::conn_data_mut`]); connections and sessions live in
//! two tables keyed by [`ConnId`] and by session handle, never one for the other.
//!
//! **Connections and channels.** A connection is one session attachment; a channel is one byte
//! stream of it. TCP and TLS have a single channel, [`CONTROL_CHANNEL`]; the QUIC mapping gives
//! each QUIC stream its own. CONNECT comes on the control channel. A subscription belongs to the
//! channel its SUBSCRIBE arrived on and its deliveries travel there; acknowledgements travel on
//! the channel of the packet they acknowledge. Outbound packet identifiers are per session and
//! unique across its channels; inbound QoS 2 flows are keyed by (channel, packet id).
//!
//! **A data channel that ends** ([`BrokerCore::close_channel`], docs/mqtt-over-quic.md §6.1-6.5)
//! loses nothing acknowledged: its subscriptions are *parked* on the control channel (they still
//! deliver, there, until a data channel subscribes to the same filter), and its outbound
//! in-flight and queued messages move to a live data channel with a matching subscription, or
//! else to the control channel (in-flight ones re-sent at once, DUP set, same identifier). Only
//! its inbound QoS 2 flows awaiting PUBREL are discarded. A persistent session that resumes on a
//! new connection finds all its subscriptions parked and its messages on the control channel
//! (§6.6): channel numbers mean nothing across connections.
//!
//! **Outbound windows are per channel** (docs/mqtt-over-quic.md §6.12-6.13): each channel has
//! at most `max_inflight` QoS 1/2 messages in flight and its own queue of deliveries waiting
//! for its window (a `Lane` of the session's flows, `session.rs`), so a stream whose
//! client stops reading holds up only its own deliveries. Identifiers stay per session. The
//! session's `max_queued_messages` bounds the queues of all its channels together. Over TCP
//! (one channel) this is the classic per-session window.
//!
//! **Inbound QoS 2** is stored and forwarded on PUBREL (§4.3.3, method B): until PUBREL
//! nothing has been delivered, so a flow's state can be dropped with its channel without
//! delivering twice.
//!
//! **Early connections** ([`BrokerCore::set_early`], §6.7-6.11): until
//! [`BrokerCore::handshake_complete`], only packets whose effects die with the connection are
//! acted on; the rest are held, in order, within a bound, and dropped if the connection closes
//! first (0-RTT data can be replayed, RFC 9001 §9.2).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::acl::{ClientAcl, Op};
use crate::auth::{AuthExchange, AuthStep, Verdict};
use crate::codec::{
    CodecError, Connect, ConnectReasonCode, DisconnectReasonCode, MessageProps, Packet, Pid, Protocol,
    PubackReasonCode, Publish, PublishProps, QoS, QosPid, RetainHandling, Suback, Subscribe, SubscribeReasonCode,
    TopicFilter, TopicName, Unsubscribe, UnsubscribeReasonCode, Version,
};
use crate::config::MqttConfig;
use crate::session::{
    Flows, InFlight, Message, OutState, Queued, Session, SessionId, SubIds, SubOpts, Will, MAX_SESSION_INFLIGHT,
    OPT_NO_LOCAL, OPT_RETAIN_AS_PUBLISHED,
};
use crate::shared::{match_filter, Routes};
use crate::slab::Slab;
use crate::topic::{filter_matches, RetainTree, Subscriber};
use crate::{ChannelId, ConnId, CONTROL_CHANNEL};

/// What the core asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write `packet` on `channel` of `conn`.
    Send { conn: ConnId, channel: ChannelId, packet: Packet },
    /// Close `conn` after the packets already queued for it are written.
    Close { conn: ConnId, reason: CloseReason },
    /// Call [`BrokerCore::handle_timeout`] at `at` (or later). Emitted when a deadline earlier
    /// than any the driver may know of is created; [`BrokerCore::poll_timeout`] gives the
    /// earliest at any time.
    Timer { at: Instant },
    /// Make `op` durable (only with [`MqttConfig::data_dir`]). Every packet emitted after it
    /// in the same call may acknowledge it (a PUBACK after a retained PUBLISH): the driver
    /// sends those only once it is durable, and keeps each channel's packets in order.
    Store(StoreOp),
}

/// A change of what survives a restart ([`Action::Store`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// `msg` is now the retained message of its topic.
    Retain(Message),
    /// The topic has no retained message any more.
    Unretain(TopicName),
    /// The persistent session (3.1.1 clean session 0, or an MQTT 5 Session Expiry Interval
    /// above 0) of `client_id` exists, with this expiry (seconds; `u32::MAX`: never) and these
    /// subscriptions (each filter once). Channels are not kept: after a restart every
    /// subscription is parked on the control channel, as on any resumption.
    Session { client_id: Arc<str>, expiry: u32, subs: Vec<StoredSub> },
    /// The persistent session of `client_id` is gone (a clean-session CONNECT replaced it),
    /// with its messages.
    DropSession { client_id: Arc<str> },
    /// A QoS 1/2 message for `client_id`'s persistent session, queued or in flight, under the
    /// session's sequence number `seq` (its order). `retain`: the RETAIN flag it is sent with.
    /// For [`OutStage::AwaitPubcomp`] only the topic is kept (the payload is empty).
    Outbound { client_id: Arc<str>, seq: u64, stage: OutStage, retain: bool, msg: Message },
    /// The outbound message `seq` is done (acknowledged) or dropped.
    OutboundDone { client_id: Arc<str>, seq: u64 },
    /// An inbound QoS 2 message of `client_id` awaiting PUBREL, under its packet id (control
    /// channel only: a data stream's die with it anyway, docs/mqtt-over-quic.md §6.4).
    Inbound { client_id: Arc<str>, pid: u16, msg: Message },
    /// Its PUBREL came (it was forwarded).
    InboundDone { client_id: Arc<str>, pid: u16 },
}

/// A subscription of a persistent session as a store keeps it ([`StoreOp::Session`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSub {
    pub filter: TopicFilter,
    /// The granted QoS.
    pub qos: QoS,
    /// MQTT 5 No Local.
    pub no_local: bool,
    /// MQTT 5 Retain As Published.
    pub retain_as_published: bool,
    /// MQTT 5 Subscription Identifier; 0: none.
    pub id: u32,
}

impl StoredSub {
    /// A 3.1.1 subscription: `filter` at `qos`, no MQTT 5 options.
    pub fn v3(filter: TopicFilter, qos: QoS) -> StoredSub {
        StoredSub { filter, qos, no_local: false, retain_as_published: false, id: 0 }
    }

    fn opts(&self) -> SubOpts {
        SubOpts { no_local: self.no_local, retain_as_published: self.retain_as_published, id: self.id }
    }

    /// The SUBSCRIBE options byte (MQTT 5 §3.8.3.1) of this subscription: QoS, No Local, Retain
    /// As Published. What a store keeps.
    pub fn options_byte(&self) -> u8 {
        self.qos as u8 | self.opts().flags()
    }

    /// The subscription of options byte `o` (QoS 3 or reserved bits: `None`) with identifier `id`.
    pub fn from_options_byte(filter: TopicFilter, o: u8, id: u32) -> Option<StoredSub> {
        if o & !(0x03 | OPT_NO_LOCAL | OPT_RETAIN_AS_PUBLISHED) != 0 {
            return None;
        }
        let qos = QoS::from_u8(o & 0x03).ok()?;
        let SubOpts { no_local, retain_as_published, id } = SubOpts::from_byte(o, id);
        Some(StoredSub { filter, qos, no_local, retain_as_published, id })
    }
}

/// A persistent session as a store kept it ([`BrokerCore::restore_session`]).
#[derive(Debug, Clone, Default)]
pub struct StoredSession {
    pub client_id: Arc<str>,
    /// Session Expiry Interval, seconds (`u32::MAX`: never; what 3.1.1 sessions have).
    pub expiry: u32,
    pub subs: Vec<StoredSub>,
    /// QoS 1/2 messages queued or in flight, in sequence order.
    pub outbound: Vec<StoredOutbound>,
    /// Inbound QoS 2 messages awaiting PUBREL: packet id, message.
    pub inbound: Vec<(u16, Message)>,
}

/// An outbound message of a persistent session as a store kept it
/// ([`BrokerCore::restore_session`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOutbound {
    pub seq: u64,
    pub stage: OutStage,
    pub retain: bool,
    pub msg: Message,
}

/// Where a stored outbound message is ([`StoreOp::Outbound`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutStage {
    /// Waiting for an in-flight slot or for the client, at this QoS.
    Queued(QoS),
    /// QoS 1 sent under this packet id, waiting for PUBACK.
    AwaitPuback(u16),
    /// QoS 2 sent, waiting for PUBREC.
    AwaitPubrec(u16),
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitPubcomp(u16),
}

/// Why the broker closed a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT (§3.14.4-1).
    Disconnect,
    /// CONNACK with a refusal code was sent (§3.2.2-5).
    Refused(ConnectReasonCode),
    /// A new connection with the same client id took the session over (§3.1.4-2).
    TakenOver,
    /// No packet within 1.5 × keepalive (§3.1.2-24).
    KeepaliveTimeout,
    /// No CONNECT in time (§3.1).
    ConnectTimeout,
    /// A protocol violation or malformed packet (§4.8), named.
    Violation(String),
    /// The broker is shutting down.
    Shutdown,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Disconnect => f.write_str("client sent DISCONNECT"),
            CloseReason::Refused(code) => write!(f, "CONNECT refused ({code:?})"),
            CloseReason::TakenOver => f.write_str("session taken over by a new connection (§3.1.4-2)"),
            CloseReason::KeepaliveTimeout => f.write_str("keepalive expired (§3.1.2-24)"),
            CloseReason::ConnectTimeout => f.write_str("no CONNECT in time"),
            CloseReason::Violation(v) => write!(f, "protocol violation: {v}"),
            CloseReason::Shutdown => f.write_str("broker shutting down"),
        }
    }
}

/// How a data channel ended (docs/mqtt-over-quic.md §6.1). The core treats the three alike (the
/// channel is over in both directions) and only logs which it was; the transport finishes or
/// resets the stream's other direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelEnd {
    /// The client finished its sending side (FIN) after its last complete packet.
    Finished,
    /// The client reset its sending side (RESET_STREAM); a partial packet is discarded.
    Reset,
    /// The client stopped reading the server's side (STOP_SENDING).
    StopSending,
}

impl fmt::Display for ChannelEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelEnd::Finished => "finished (FIN)",
            ChannelEnd::Reset => "reset (RESET_STREAM)",
            ChannelEnd::StopSending => "stopped (STOP_SENDING)",
        })
    }
}

/// Counters and gauges of the core.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreStats {
    pub connections: usize,
    pub sessions: usize,
    pub subscriptions: usize,
    pub retained: usize,
    /// Messages queued in sessions (offline or beyond a channel's in-flight window), all
    /// sessions.
    pub queued: usize,
    /// Outbound QoS 1/2 messages in flight, all sessions.
    pub inflight: usize,
    /// PUBLISH packets accepted from clients (wills included).
    pub published: u64,
    /// PUBLISH packets handed to the driver for delivery (retransmissions included).
    pub delivered: u64,
    /// Messages a session could not keep (its queues at `max_queued_messages` in total).
    pub dropped_queue_full: u64,
    /// Outbound messages (in flight or queued) moved off a data channel that ended, to another
    /// channel of the same connection (docs/mqtt-over-quic.md §6.3). Never dropped.
    pub moved_channel_closed: u64,
    /// Inbound QoS 2 messages awaiting PUBREL discarded with the data channel they came on
    /// (nothing of them had been delivered; the client re-sends them, §6.4).
    pub discarded_awaiting_rel: u64,
    /// Retained messages not stored because `max_retained` or `max_retained_bytes` was reached.
    pub dropped_retained: u64,
    /// Bytes (topics + payloads) of the retained messages stored now.
    pub retained_bytes: usize,
    /// Clients closed for a topic name or filter deeper than `max_topic_levels`.
    pub limit_topic_levels: u64,
    /// Clients closed for a SUBSCRIBE beyond `max_subscriptions`.
    pub limit_subscriptions: u64,
    /// Clients closed for more than `max_awaiting_rel` QoS 2 messages (or
    /// `max_awaiting_rel_bytes`) awaiting PUBREL.
    pub limit_awaiting_rel: u64,
    /// Clients closed for a packet larger than `max_packet_size`.
    pub limit_packet_size: u64,
    /// Early (0-RTT) connections closed for holding more than the early hold limit.
    pub limit_early_hold: u64,
    /// CONNECTs refused (0x03) because `max_sessions` sessions existed.
    pub limit_sessions: u64,
    /// Offline sessions ended by their MQTT 5 Session Expiry Interval.
    pub sessions_expired: u64,
    /// Messages not delivered because their MQTT 5 Message Expiry Interval had passed.
    pub expired_messages: u64,
    /// PUBLISH packets not sent because they exceeded the client's MQTT 5 Maximum Packet Size.
    pub dropped_too_large: u64,
    pub connects_accepted: u64,
    pub connects_refused: u64,
    pub takeovers: u64,
    pub keepalive_timeouts: u64,
    pub violations: u64,
    pub wills_published: u64,
    /// Packets of early connections (QUIC handshake not complete) acted on at once (§6.7).
    pub early_acted: u64,
    /// Packets of early connections held until the handshake completes (§6.8).
    pub early_held: u64,
    /// Held packets dropped because their connection closed before its handshake completed.
    pub early_dropped: u64,
    /// CONNECTs refused for authentication: no user name where anonymous clients are not
    /// allowed, unknown user, wrong password, no client certificate for
    /// `use_identity_as_username` (also counted in `connects_refused`).
    pub auth_failures: u64,
    /// SUBSCRIBE filters answered 0x80 because the ACL lets nothing through them.
    pub acl_denied_subscribe: u64,
    /// PUBLISH packets dropped because the ACL denies their sender write (acknowledged all the
    /// same).
    pub acl_denied_publish: u64,
    /// Deliveries not made because the ACL denies the subscriber read (retained ones included).
    pub acl_denied_read: u64,
    /// Wills not published because the ACL denies their client write.
    pub acl_denied_will: u64,
}

/// Subscriber key in the topic trie: a session and the channel its SUBSCRIBE came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SubKey {
    pub session: SessionId,
    pub channel: ChannelId,
}

#[derive(Debug)]
struct Conn<D> {
    session: Option<SessionId>,
    /// Arrival of the last packet (before CONNECT: when the connection was opened).
    last_seen: Instant,
    /// 1.5 × keepalive in milliseconds once connected (0: no keepalive).
    expiry_ms: u32,
    /// The deadline this connection has in the timer heap, if any.
    armed: Option<Instant>,
    will: Option<Box<Will>>,
    /// A Close was emitted: input is ignored until the driver reports the connection gone.
    closing: bool,
    /// Present while the connection is early (its QUIC handshake has not completed).
    early: Option<Box<Early>>,
    /// The name in the client's TLS certificate (its subject CN), when the transport verified
    /// one ([`BrokerCore::set_cert_identity`]); for `require_certificate` and
    /// `use_identity_as_username`.
    identity: Option<Box<str>>,
    /// The packet format of the connection: 3.1.1 until a CONNECT says otherwise.
    version: Version,
    /// An enhanced authentication exchange in progress.
    auth: Option<Box<AuthInProgress>>,
    /// What an MQTT 5 CONNECT negotiated; `None` for 3.1.1.
    v5: Option<Box<ConnV5>>,
    /// The driver's own data for this connection (its outboxes).
    data: D,
}

/// What an MQTT 5 connection's CONNECT asked for (§3.1.2.11), and its inbound Topic Aliases.
#[derive(Debug, Default)]
struct ConnV5 {
    /// Request Problem Information (§3.1.2.11.7): reason strings on acknowledgements.
    problem_info: bool,
    /// The Session Expiry Interval of the CONNECT (§3.1.2.11.2): a DISCONNECT may not raise it
    /// from 0 (§3.14.2.2.2).
    session_expiry: u32,
    /// Topic Aliases the client set, per channel: an alias names a topic within the ordered
    /// byte stream it travels on (over TCP the connection, over QUIC one stream,
    /// docs/mqtt-over-quic.md §2.6). At most `max_topic_alias` per channel.
    aliases: HashMap<(ChannelId, u16), TopicName>,
    /// The client's Topic Alias Maximum (§3.1.2.11.5): aliases the broker may use toward it.
    client_alias_max: u16,
    /// The aliases the broker set toward the client, per channel ([`alias_outbound`]).
    out_aliases: HashMap<(ChannelId, TopicName), u16>,
    /// Aliases used so far, per channel.
    out_next: HashMap<ChannelId, u16>,
    /// The enhanced authentication method of the CONNECT (§4.12), for re-authentication.
    auth_method: Option<Arc<str>>,
    /// The user that method authenticated: a re-authentication must prove the same.
    auth_user: Option<Box<str>>,
}

/// An enhanced authentication exchange in progress (MQTT 5 §4.12).
#[derive(Debug)]
struct AuthInProgress {
    method: Arc<str>,
    exchange: Box<dyn AuthExchange>,
    /// The CONNECT waiting for the outcome; `None`: a re-authentication.
    connect: Option<Box<Connect>>,
}

/// What an early connection holds until its handshake completes (docs/mqtt-over-quic.md §6.8).
#[derive(Debug, Default)]
struct Early {
    /// In arrival order; once anything is held, everything after it is held too (§6.9).
    held: VecDeque<Held>,
    /// Cost of `held` as counted against [`BrokerCore::early_hold_limit`].
    bytes: usize,
}

/// An input of an early connection kept for later.
#[derive(Debug)]
enum Held {
    Packet(ChannelId, Packet),
    /// A data channel ended after packets were held: its end is applied after them, in order.
    ChannelEnd(ChannelId, ChannelEnd),
}

impl Held {
    /// Bytes charged for holding this: the packet's encoded size plus the memory it takes
    /// decoded, so that many tiny packets are bounded as well as a few big ones.
    fn cost(&self) -> usize {
        // Every MQTT 5 packet may carry properties: each is charged its full size.
        let body = match self {
            Held::Packet(_, p) => crate::codec::wire_len_hint(p, Version::V5),
            Held::ChannelEnd(..) => 2,
        };
        body + std::mem::size_of::<Held>()
    }
}

/// Longest reason string the broker puts in a DISCONNECT or acknowledgement, bytes.
const REASON_STRING_MAX: usize = 200;

/// Held bytes allowed beyond one maximum-size packet (§6.10).
const EARLY_HOLD_SLACK: usize = 64 << 10;

/// The broker state machine. See the module documentation. `D` is whatever the driver keeps
/// per connection (its outboxes, [`BrokerCore::conn_data_mut`]); the core only stores it.
pub struct BrokerCore<D = ()> {
    cfg: MqttConfig,
    conns: Slab<ConnId, Conn<D>>,
    sessions: Slab<SessionId, Session>,
    by_client: HashMap<Arc<str>, SessionId>,
    subs: Routes<SubKey>,
    retained: RetainTree<Message>,
    /// Bytes of `retained` as counted against `max_retained_bytes`.
    retained_bytes: usize,
    timers: BinaryHeap<Reverse<(Instant, ConnId)>>,
    /// Deadlines of offline sessions: their expiry (MQTT 5 Session Expiry Interval) or their
    /// delayed will (Will Delay Interval), whichever is first ([`Session::deadline`]).
    session_timers: BinaryHeap<Reverse<(Instant, SessionId)>>,
    /// The latest `now` an entry point was given: the clock of what happens inside a call
    /// (expiry deadlines, remaining Message Expiry Intervals). `None` before the first.
    now: Option<Instant>,
    stats: CoreStats,
    assigned_ids: u64,
    scratch: Vec<Subscriber<SubKey>>,
}

/// What [`BrokerCore::relocate`] did.
#[derive(Debug, Default)]
struct Relocated {
    /// Subscriptions parked.
    parked: usize,
    /// Outbound messages (in flight or queued) given a new channel.
    moved: u64,
    /// Inbound QoS 2 messages awaiting PUBREL discarded.
    discarded: u64,
}

/// Point the control channel's trie entry for `filter` at the highest QoS of the session's
/// explicit and parked control-channel subscriptions to it, or remove it when there are none.
fn sync_control_route(tree: &mut Routes<SubKey>, sid: SessionId, s: &Session, filter: &TopicFilter) {
    let key = SubKey { session: sid, channel: CONTROL_CHANNEL };
    match s.control_route(filter) {
        Some((q, o)) => {
            tree.insert_sub(filter, Subscriber { key, opts: qos_u8(q) | o.flags(), id: o.id });
        }
        None => {
            tree.remove(filter, key);
        }
    }
}

/// The SUBACK code granting `q`.
fn granted_code(q: QoS) -> SubscribeReasonCode {
    match q {
        QoS::Level0 => SubscribeReasonCode::GrantedQoS0,
        QoS::Level1 => SubscribeReasonCode::GrantedQoS1,
        QoS::Level2 => SubscribeReasonCode::GrantedQoS2,
    }
}

fn qos_u8(q: QoS) -> u8 {
    q as u8
}

fn qos_from(q: u8) -> QoS {
    match q {
        0 => QoS::Level0,
        1 => QoS::Level1,
        _ => QoS::Level2,
    }
}

/// The store op recording in-flight message `id` of session `s` as it stands now, if `s` is
/// stored (`persist` and clean session 0).
fn flight_op(s: &Session, id: u16, persist: bool) -> Option<StoreOp> {
    if !persist || s.clean {
        return None;
    }
    flows_flight_op(s.fr(), &s.client_id, id)
}

/// [`flight_op`] from the session's flows and client id.
fn flows_flight_op(f: &Flows, client_id: &Arc<str>, id: u16) -> Option<StoreOp> {
    let fl = f.inflight.get(&id)?;
    let (stage, msg) = match &fl.state {
        OutState::AwaitPuback(m) => (OutStage::AwaitPuback(id), m.clone()),
        OutState::AwaitPubrec(m) => (OutStage::AwaitPubrec(id), m.clone()),
        OutState::AwaitPubcomp(t) => {
            (OutStage::AwaitPubcomp(id), Message::new(t.clone(), bytes::Bytes::new(), QoS::Level2, false))
        }
    };
    Some(StoreOp::Outbound { client_id: client_id.clone(), seq: fl.seq, stage, retain: fl.retain, msg })
}

/// The store op saying outbound message `seq` of session `s` is gone, if `s` is stored.
fn done_op(s: &Session, seq: u64, persist: bool) -> Option<StoreOp> {
    (persist && !s.clean).then(|| StoreOp::OutboundDone { client_id: s.client_id.clone(), seq })
}

/// The PUBLISH that delivers `msg`: its MQTT 5 properties, and what is left of its Message
/// Expiry Interval at `now` (§3.3.2-6), at least a second while it has not expired. (A 3.1.1
/// encoding leaves them out.)
fn publish_packet(
    msg: &Message,
    qos_pid: QosPid,
    retain: bool,
    dup: bool,
    now: Option<Instant>,
    ids: &SubIds,
) -> Packet {
    let message_expiry = msg.expires_at.zip(now).map(|(at, now)| {
        let left = at.saturating_duration_since(now);
        u32::try_from(left.as_secs() + u64::from(left.subsec_nanos() > 0)).unwrap_or(u32::MAX).max(1)
    });
    let props = (msg.props.is_some() || message_expiry.is_some() || ids.is_some()).then(|| {
        Box::new(PublishProps {
            message: msg.props.clone(),
            message_expiry,
            subscription_ids: ids.as_deref().map(<[u32]>::to_vec).unwrap_or_default(),
            topic_alias: None,
        })
    });
    Packet::Publish(Publish {
        dup,
        retain,
        qos_pid,
        topic_name: msg.topic.clone(),
        payload: msg.payload.clone(),
        props,
    })
}

/// What re-sends in-flight message `id` (§4.4): its PUBLISH with DUP set and the same
/// identifier, or the PUBREL of a PUBREC'd QoS 2 flow. Always with the topic name, never an
/// alias: it may travel on another channel than the first time.
fn resend_packet(id: u16, fl: &InFlight, now: Option<Instant>) -> Packet {
    match &fl.state {
        OutState::AwaitPuback(m) => publish_packet(m, QosPid::Level1(pid(id)), fl.retain, true, now, &fl.ids),
        OutState::AwaitPubrec(m) => publish_packet(m, QosPid::Level2(pid(id)), fl.retain, true, now, &fl.ids),
        OutState::AwaitPubcomp(_) => Packet::pubrel(pid(id)),
    }
}

/// Topic Aliases the broker uses toward one client, per channel, at most: the client's Topic
/// Alias Maximum, within this (each alias keeps a topic name per channel).
const OUT_ALIAS_CAP: u16 = 64;

/// Give an outbound PUBLISH to `conn` on `ch` a Topic Alias (MQTT 5 §3.3.2.3.4) when the client
/// accepts them: a topic with an alias on the channel is sent as the alias alone; a new one gets
/// the next free alias, sent with its name, but only in a QoS 1/2 PUBLISH (the driver may drop
/// a QoS 0 one when the channel's queue is full, and an alias must never be used before the
/// packet that set it arrived). Retransmissions (DUP) are built elsewhere and always carry the
/// name: they may travel on another channel (docs/mqtt-over-quic.md §6.3).
fn alias_outbound<D>(conns: &mut Slab<ConnId, Conn<D>>, conn: ConnId, ch: ChannelId, packet: &mut Packet) {
    let Packet::Publish(p) = packet else { return };
    let Some(v5) = conns.get_mut(conn).and_then(|c| c.v5.as_deref_mut()) else { return };
    let max = v5.client_alias_max.min(OUT_ALIAS_CAP);
    if max == 0 || p.topic_name.is_empty() {
        return;
    }
    if let Some(&alias) = v5.out_aliases.get(&(ch, p.topic_name.clone())) {
        p.props_mut().topic_alias = Some(alias);
        if let Ok(empty) = TopicName::try_from("") {
            p.topic_name = empty;
        }
        return;
    }
    if p.qos_pid == QosPid::Level0 {
        return;
    }
    let used = v5.out_next.entry(ch).or_insert(0);
    if *used >= max {
        return;
    }
    *used += 1;
    let alias = *used;
    v5.out_aliases.insert((ch, p.topic_name.clone()), alias);
    p.props_mut().topic_alias = Some(alias);
}

/// The will of a CONNECT, with its MQTT 5 properties (§3.1.3.2).
fn will_of(w: crate::codec::LastWill) -> Will {
    let p = w.properties;
    let props = MessageProps {
        payload_utf8: p.payload_is_utf8,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
    };
    let mut msg = Message::new(w.topic_name, w.payload, w.qos, w.retain);
    msg.props = props.shared();
    Will { msg, delay: p.delay_interval.unwrap_or(0), expiry: p.message_expiry_interval }
}

fn pid(v: u16) -> Pid {
    // Callers pass identifiers from alloc_pid() or decoded packets: never 0.
    Pid::try_from(v).unwrap_or_default()
}

impl<D> BrokerCore<D> {
    pub fn new(mut cfg: MqttConfig) -> BrokerCore<D> {
        cfg.max_inflight = cfg.max_inflight.clamp(1, 65_000);
        // Sized for max_connections up front (virtual memory until used): growing by copies
        // would leave the old tables' memory resident in the heap.
        let n = cfg.max_connections.min(1 << 20);
        BrokerCore {
            conns: Slab::with_capacity(n),
            sessions: Slab::with_capacity(n.min(cfg.max_sessions)),
            by_client: HashMap::with_capacity(n.min(cfg.max_sessions)),
            subs: Routes::new(),
            retained: RetainTree::new(),
            retained_bytes: 0,
            timers: BinaryHeap::with_capacity(n),
            session_timers: BinaryHeap::new(),
            now: None,
            cfg,
            stats: CoreStats::default(),
            assigned_ids: 0,
            scratch: Vec::new(),
        }
    }

    pub fn config(&self) -> &MqttConfig {
        &self.cfg
    }

    /// Counters and gauges now.
    /// Say what `sid`'s persistent session now holds ([`StoreOp::Session`]), if the broker
    /// stores (`data_dir`) and the session is persistent.
    fn persist_session(&mut self, sid: SessionId, out: &mut Vec<Action>) {
        if self.cfg.data_dir.is_none() {
            return;
        }
        let Some(s) = self.sessions.get_mut(sid).filter(|s| !s.clean) else { return };
        s.stored = true;
        let mut subs: Vec<StoredSub> = Vec::with_capacity(s.subs.len());
        for sub in &s.subs {
            match subs.iter_mut().find(|x| x.filter == sub.filter) {
                // One filter on several channels: the highest QoS, the options of the first.
                Some(x) => x.qos = x.qos.max(sub.qos),
                None => subs.push(StoredSub {
                    filter: sub.filter.clone(),
                    qos: sub.qos,
                    no_local: sub.opts.no_local,
                    retain_as_published: sub.opts.retain_as_published,
                    id: sub.opts.id,
                }),
            }
        }
        out.push(Action::Store(StoreOp::Session { client_id: s.client_id.clone(), expiry: s.expiry, subs }));
    }

    /// Start from a persistent session a store kept (before any connection): offline, its
    /// subscriptions parked on the control channel, as after any disconnection, its queued
    /// and in-flight messages on the control channel in their order (in-flight ones are sent
    /// again, DUP set, when the client comes back, §4.4), its inbound QoS 2 messages awaiting
    /// PUBREL on the control channel. A finite Session Expiry Interval starts over at `now`
    /// (the time the broker was down does not count: it cannot know it). False if
    /// `max_sessions` is reached or the client id is taken.
    pub fn restore_session(&mut self, stored: StoredSession, now: Instant) -> bool {
        let StoredSession { client_id, expiry, subs, mut outbound, inbound } = stored;
        if self.sessions.len() >= self.cfg.max_sessions || self.by_client.contains_key(&client_id) {
            return false;
        }
        let mut session = Session::new(client_id.clone(), false);
        session.expiry = expiry.max(1);
        if session.expiry != u32::MAX {
            session.expires_at = Some(now + Duration::from_secs(u64::from(session.expiry)));
        }
        for sub in subs.iter().take(self.cfg.max_subscriptions) {
            session.park(&sub.filter, sub.qos.min(self.cfg.max_qos), sub.opts());
        }
        outbound.sort_by_key(|o| o.seq);
        for o in outbound {
            let f = session.f();
            f.next_seq = f.next_seq.max(o.seq);
            let (id, state) = match o.stage {
                OutStage::Queued(qos) => {
                    let q = Queued { seq: o.seq, qos, retain: o.retain, ids: None, msg: o.msg };
                    f.push_queued(CONTROL_CHANNEL, q);
                    continue;
                }
                OutStage::AwaitPuback(id) => (id, OutState::AwaitPuback(o.msg)),
                OutStage::AwaitPubrec(id) => (id, OutState::AwaitPubrec(o.msg)),
                OutStage::AwaitPubcomp(id) => (id, OutState::AwaitPubcomp(o.msg.topic)),
            };
            if id != 0 && !f.inflight.contains_key(&id) {
                let fl = InFlight { seq: o.seq, channel: CONTROL_CHANNEL, retain: o.retain, ids: None, state };
                f.begin_flight(id, fl);
            }
        }
        for (id, msg) in inbound {
            session.f().awaiting_rel.insert((CONTROL_CHANNEL, id), msg);
        }
        let sid = self.sessions.insert(session);
        self.by_client.insert(client_id, sid);
        if let Some(s) = self.sessions.get(sid) {
            for sub in subs.iter().take(self.cfg.max_subscriptions) {
                sync_control_route(&mut self.subs, sid, s, &sub.filter);
            }
        }
        let mut ignored = Vec::new(); // the driver polls the deadline after restoring
        self.arm_session(sid, &mut ignored);
        true
    }

    /// Start from the retained messages a store kept (before any connection). Limits apply
    /// as for a PUBLISH: what no longer fits `max_retained` or `max_retained_bytes` is left
    /// out, counted and logged; so are messages whose MQTT 5 Message Expiry Interval passed by
    /// `now`. Returns how many were restored.
    pub fn restore_retained(&mut self, msgs: impl IntoIterator<Item = Message>, now: Instant) -> usize {
        let mut ignored = Vec::new(); // what was read from the store is there already
        let before = self.stats.dropped_retained;
        let mut n = 0;
        for m in msgs {
            // Expired while the broker was down: not restored (it stays in the store until the
            // topic is written again).
            if m.payload.is_empty() || m.expired(now) {
                continue;
            }
            let had = self.retained.contains(&m.topic);
            self.retain(&m, &mut ignored);
            n += usize::from(!had && self.retained.contains(&m.topic));
        }
        if self.stats.dropped_retained > before {
            tracing::warn!(
                left_out = self.stats.dropped_retained - before,
                "mqtt: stored retained messages beyond max_retained / max_retained_bytes were left out"
            );
        }
        n
    }

    pub fn stats(&self) -> CoreStats {
        let mut s = self.stats.clone();
        s.connections = self.conns.len();
        s.sessions = self.sessions.len();
        s.subscriptions = self.subs.len();
        s.retained = self.retained.len();
        s.retained_bytes = self.retained_bytes;
        s.queued = self.sessions.iter().map(|s| s.fr().queued).sum();
        s.inflight = self.sessions.iter().map(|s| s.fr().inflight.len()).sum();
        s
    }

    /// Whether a session exists for `client_id`, and whether it is attached.
    pub fn session_state(&self, client_id: &str) -> Option<SessionInfo> {
        let sid = self.by_client.get(client_id)?;
        let s = self.sessions.get(*sid)?;
        Some(SessionInfo {
            online: s.conn.is_some(),
            clean: s.clean,
            subscriptions: s.subs.len(),
            parked: s.parked(),
            queued: s.fr().queued,
            inflight: s.fr().inflight.len(),
            awaiting_rel: s.fr().awaiting_rel.len(),
            dropped: s.dropped,
            identity: s.conn.and_then(|c| self.conns.get(c)).and_then(|c| c.identity.as_deref()).map(str::to_string),
        })
    }

    /// The driver's data for `conn` (given to [`BrokerCore::open`]), while the connection
    /// exists.
    pub fn conn_data_mut(&mut self, conn: ConnId) -> Option<&mut D> {
        self.conns.get_mut(conn).map(|c| &mut c.data)
    }

    /// A new network connection: returns its id and arms the CONNECT deadline (§3.1).
    /// (`peer` is only logged: the core keeps no per-connection address.)
    pub fn open(&mut self, peer: Option<SocketAddr>, data: D, now: Instant, out: &mut Vec<Action>) -> ConnId {
        self.now = Some(now);
        let conn = Conn {
            session: None,
            last_seen: now,
            expiry_ms: 0,
            armed: None,
            will: None,
            closing: false,
            early: None,
            identity: None,
            version: Version::V3,
            auth: None,
            v5: None,
            data,
        };
        let id = self.conns.insert(conn);
        tracing::debug!(conn = id, ?peer, "mqtt: new connection");
        self.arm(id, now + self.cfg.connect_timeout, out);
        id
    }

    /// Mark `conn` early: its QUIC handshake has not completed, so what it sends may be a
    /// replayed 0-RTT flight (RFC 9001 §9.2). Until [`BrokerCore::handshake_complete`], only
    /// packets whose effects die with the connection are acted on; the rest are held
    /// (docs/mqtt-over-quic.md §6.7-6.11). Call it right after [`BrokerCore::open`].
    pub fn set_early(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(conn) {
            if !c.closing && c.early.is_none() {
                c.early = Some(Box::default());
            }
        }
    }

    /// The transport verified a client certificate on `conn` naming `identity` (its subject
    /// CN). Call it before handing the connection any packet; `None` (or never calling it)
    /// means the client presented no certificate.
    pub fn set_cert_identity(&mut self, conn: ConnId, identity: Option<&str>) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.identity = identity.map(Into::into);
        }
    }

    /// Whether `conn` is early (see [`BrokerCore::set_early`]); for the tests.
    #[cfg(test)]
    pub(crate) fn is_early(&self, conn: ConnId) -> bool {
        self.conns.get(conn).is_some_and(|c| c.early.is_some())
    }

    /// The QUIC handshake of `conn` completed: it is no longer early, and the packets it held
    /// are processed now, in arrival order (docs/mqtt-over-quic.md §6.11).
    pub fn handshake_complete(&mut self, conn: ConnId, now: Instant, out: &mut Vec<Action>) {
        self.now = Some(now);
        let Some(c) = self.conns.get_mut(conn) else { return };
        let Some(early) = c.early.take() else { return };
        if c.closing {
            return;
        }
        if !early.held.is_empty() {
            let cid = self.client_id_of(conn);
            tracing::debug!(
                conn,
                client_id = cid.as_deref().unwrap_or("(before CONNECT)"),
                held = early.held.len(),
                "mqtt: handshake complete; processing the held packets"
            );
        }
        for h in early.held {
            match h {
                Held::Packet(ch, p) => self.handle(conn, ch, p, now, out),
                Held::ChannelEnd(ch, end) => self.close_channel(conn, ch, end, now, out),
            }
        }
    }

    /// Bytes an early connection may hold (§6.10): one packet of the maximum size plus 64 KiB,
    /// so a first flight of CONNECT, a few SUBSCRIBEs and one PUBLISH of any allowed size fits.
    pub(crate) fn early_hold_limit(&self) -> usize {
        self.cfg.max_packet_size.saturating_add(EARLY_HOLD_SLACK)
    }

    /// Whether an early connection may act on `packet` at once: only when its effects die with
    /// the connection (docs/mqtt-over-quic.md §6.7). A clean CONNECT for an id with no live and
    /// no stored session; then, on that clean session, PINGREQ, SUBSCRIBE and UNSUBSCRIBE.
    fn acts_early(&self, session: Option<SessionId>, channel: ChannelId, packet: &Packet) -> bool {
        match (session, packet) {
            (None, Packet::Connect(p)) => {
                // An empty id gets a new, unique one (§3.1.3-6): unknown by construction.
                channel == CONTROL_CHANNEL
                    && p.clean_start
                    && (p.protocol != Protocol::V500 || p.properties.session_expiry_interval.unwrap_or(0) == 0)
                    && p.properties.auth_method.is_none()
                    && (p.client_id.is_empty() || !self.by_client.contains_key(&*p.client_id))
            }
            (Some(sid), Packet::Pingreq | Packet::Subscribe(_) | Packet::Unsubscribe(_)) => {
                self.sessions.get(sid).is_some_and(|s| s.clean)
            }
            _ => false,
        }
    }

    /// Keep `h` for [`BrokerCore::handshake_complete`], or close the connection if the bound
    /// would be exceeded (§6.10).
    fn hold(&mut self, conn: ConnId, h: Held, out: &mut Vec<Action>) {
        let limit = self.early_hold_limit();
        let cost = h.cost();
        let Some(early) = self.conns.get_mut(conn).and_then(|c| c.early.as_deref_mut()) else { return };
        if early.bytes.saturating_add(cost) > limit {
            let held = early.held.len();
            self.stats.limit_early_hold += 1;
            return self.violation_as(
                conn,
                DisconnectReasonCode::QuotaExceeded,
                format!(
                    "more than {limit} bytes of packets ({held} held) before the QUIC handshake completed \
                     (docs/mqtt-over-quic.md §6.10)"
                ),
                out,
            );
        }
        early.bytes += cost;
        early.held.push_back(h);
        if matches!(early.held.back(), Some(Held::Packet(..))) {
            self.stats.early_held += 1;
        }
    }

    fn arm(&mut self, conn: ConnId, at: Instant, out: &mut Vec<Action>) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        if c.armed.is_some_and(|a| a <= at) {
            return; // an earlier check is pending; it re-arms from last_seen when it fires
        }
        c.armed = Some(at);
        let earliest = self.timers.peek().map(|Reverse((t, _))| *t);
        self.timers.push(Reverse((at, conn)));
        if earliest.is_none_or(|e| at < e) {
            out.push(Action::Timer { at });
        }
    }

    /// The earliest deadline; call [`BrokerCore::handle_timeout`] then.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conn = self.timers.peek().map(|Reverse((t, _))| *t);
        let session = self.session_timers.peek().map(|Reverse((t, _))| *t);
        match (conn, session) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Put offline session `sid`'s next deadline ([`Session::deadline`]) in the session timer
    /// heap, and say so to the driver if it is the earliest of all.
    fn arm_session(&mut self, sid: SessionId, out: &mut Vec<Action>) {
        let Some(s) = self.sessions.get_mut(sid) else { return };
        let Some(at) = s.deadline() else { return };
        if s.timer_armed.is_some_and(|a| a <= at) {
            return; // an earlier entry is pending; it re-arms when it fires
        }
        // At most one entry per session counts: a superseded one is skipped when it pops.
        s.timer_armed = Some(at);
        let earliest = self.poll_timeout();
        self.session_timers.push(Reverse((at, sid)));
        if earliest.is_none_or(|e| at < e) {
            out.push(Action::Timer { at });
        }
    }

    /// Publish the delayed wills that are due and end the sessions that expired, at `now`
    /// (MQTT 5 §3.1.3.2.2, §3.1.2.11.2). A session's will goes out before it ends.
    fn expire_sessions(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some(Reverse((at, sid))) = self.session_timers.peek().copied() {
            if at > now {
                break;
            }
            self.session_timers.pop();
            let Some(s) = self.sessions.get_mut(sid) else { continue };
            if s.timer_armed != Some(at) {
                continue; // superseded by another entry
            }
            s.timer_armed = None;
            if s.conn.is_some() {
                continue; // back online
            }
            match s.deadline() {
                None => continue,
                Some(d) if d > now => {
                    self.arm_session(sid, out);
                    continue;
                }
                Some(_) => {}
            }
            let Some(s) = self.sessions.get_mut(sid) else { continue };
            if let Some((due, _)) = &s.delayed_will {
                if *due <= now || s.expires_at.is_some_and(|e| e <= now) {
                    if let Some((_, will)) = s.delayed_will.take() {
                        let acl = s.acl.clone();
                        let cid = s.client_id.clone();
                        self.publish_will(&cid, acl.as_deref(), *will, out);
                    }
                }
            }
            let Some(s) = self.sessions.get(sid) else { continue };
            if s.expires_at.is_some_and(|e| e <= now) {
                self.stats.sessions_expired += 1;
                tracing::debug!(client_id = &*s.client_id, "mqtt: session expired (Session Expiry Interval)");
                self.destroy_session(sid, out);
            } else {
                self.arm_session(sid, out);
            }
        }
    }

    /// Expire whatever is due at `now`: CONNECT deadlines and keepalives (§3.1.2-24).
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.now = Some(now);
        self.expire_sessions(now, out);
        while let Some(Reverse((at, conn))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.conns.get_mut(conn) else { continue };
            if c.armed != Some(at) {
                continue; // superseded by an earlier entry
            }
            c.armed = None;
            if c.closing {
                continue;
            }
            let deadline = match (c.session, c.expiry_ms) {
                (None, _) => Some(c.last_seen + self.cfg.connect_timeout),
                (Some(_), 0) => None,
                (Some(_), e) => Some(c.last_seen + Duration::from_millis(e as u64)),
            };
            let Some(deadline) = deadline else { continue };
            if deadline > now {
                self.arm(conn, deadline, out);
                continue;
            }
            if c.session.is_none() {
                tracing::info!(conn, "mqtt: no CONNECT within {:?}; closing", self.cfg.connect_timeout);
                self.close(conn, CloseReason::ConnectTimeout, false, out);
            } else {
                self.stats.keepalive_timeouts += 1;
                let cid = c.session.and_then(|sid| self.sessions.get(sid)).map(|s| s.client_id.clone());
                tracing::info!(
                    conn,
                    client_id = cid.as_deref().unwrap_or(""),
                    "mqtt: keepalive expired (nothing received for {} ms, §3.1.2-24); closing",
                    c.expiry_ms
                );
                // §3.1.2-8: the will is published when the server closes the connection.
                self.close(conn, CloseReason::KeepaliveTimeout, true, out);
            }
        }
    }

    /// The transport is gone (EOF, I/O error, or after a Close). Publishes the will unless the
    /// client sent DISCONNECT (§3.1.2-8, §3.14.4-3).
    pub fn closed(&mut self, conn: ConnId, now: Instant, out: &mut Vec<Action>) {
        self.now = Some(now);
        let Some(c) = self.conns.get(conn) else { return };
        if !c.closing {
            if let Some(s) = c.session.and_then(|sid| self.sessions.get(sid)) {
                tracing::debug!(conn, client_id = &*s.client_id, "mqtt: connection lost without DISCONNECT");
            }
            self.detach(conn, true, out);
        }
        self.conns.remove(conn);
    }

    /// Close every connection (broker shutdown). Wills are not published.
    pub fn shutdown(&mut self, out: &mut Vec<Action>) {
        let ids: Vec<ConnId> = self.conns.iter_keys().filter(|(_, c)| !c.closing).map(|(id, _)| id).collect();
        for id in ids {
            self.close(id, CloseReason::Shutdown, false, out);
        }
    }

    /// A data channel of `conn` ended, in one of three ways (docs/mqtt-over-quic.md §6.1); the
    /// core does the same for each. Its subscriptions are parked on the control channel (§6.2),
    /// its outbound in-flight and queued messages move to another channel of the connection,
    /// in-flight ones re-sent there at once (§6.3), and its inbound QoS 2 flows awaiting PUBREL
    /// are discarded (§6.4). Nothing acknowledged is lost. The control channel's end is the
    /// connection's (§3.1): the transport closes it, and this call ignores it.
    pub fn close_channel(
        &mut self,
        conn: ConnId,
        channel: ChannelId,
        end: ChannelEnd,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.now = Some(now);
        if channel == CONTROL_CHANNEL {
            return;
        }
        let Some(c) = self.conns.get(conn) else { return };
        if c.closing {
            return;
        }
        if c.early.as_ref().is_some_and(|e| !e.held.is_empty()) {
            // Packets of this connection are held: the end applies after them (§6.9).
            return self.hold(conn, Held::ChannelEnd(channel, end), out);
        }
        let Some(sid) = c.session else {
            tracing::debug!(conn, channel, %end, "mqtt: data channel ended before CONNECT");
            return;
        };
        self.retire_channel(conn, sid, channel, end, out);
        self.pump(sid, None, out);
    }

    /// Bytes on `channel` of `conn` were not a valid packet: close the connection, naming the
    /// violation and the client; a CONNECT with an unsupported protocol level is answered with
    /// CONNACK 0x01 first (§3.1.2-2).
    pub fn malformed(
        &mut self,
        conn: ConnId,
        channel: ChannelId,
        err: &CodecError,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.now = Some(now);
        let Some(c) = self.conns.get(conn) else { return };
        if c.closing {
            return;
        }
        if let (CodecError::UnsupportedProtocolLevel(level), None) = (err, c.session) {
            tracing::info!(conn, level, "mqtt: CONNECT with unsupported protocol level; CONNACK 0x01");
            self.stats.connects_refused += 1;
            out.push(Action::Send {
                conn,
                channel,
                packet: Packet::connack(false, ConnectReasonCode::UnsupportedProtocolVersion),
            });
            self.close(conn, CloseReason::Refused(ConnectReasonCode::UnsupportedProtocolVersion), false, out);
            return;
        }
        if let CodecError::TooLarge { .. } = err {
            self.stats.limit_packet_size += 1;
        }
        // The decoder's detail (mqtt-proto's words) is the error's source: name it in the log too.
        let mut why = err.to_string();
        let mut cause = std::error::Error::source(err);
        while let Some(c) = cause {
            why = format!("{why}: {c}");
            cause = c.source();
        }
        let code = DisconnectReasonCode::from_u8(err.reason_code()).unwrap_or(DisconnectReasonCode::MalformedPacket);
        self.violation_as(conn, code, format!("malformed packet: {why}"), out);
    }

    /// A decoded packet from `channel` of `conn`.
    pub fn handle(&mut self, conn: ConnId, channel: ChannelId, packet: Packet, now: Instant, out: &mut Vec<Action>) {
        self.now = Some(now);
        let Some(c) = self.conns.get(conn) else { return };
        if c.closing {
            return;
        }
        // docs/mqtt-over-quic.md §6.7-6.9: an early connection acts only on packets whose
        // effects die with it, and holds everything from its first held packet on.
        let early = c.early.as_ref().map(|e| e.held.is_empty());
        let session = c.session;
        if let Some(nothing_held) = early {
            if nothing_held && self.acts_early(session, channel, &packet) {
                self.stats.early_acted += 1;
            } else {
                if let Some(c) = self.conns.get_mut(conn) {
                    c.last_seen = now;
                }
                return self.hold(conn, Held::Packet(channel, packet), out);
            }
        }
        let Some(c) = self.conns.get_mut(conn) else { return };
        c.last_seen = now;
        let Some(sid) = c.session else {
            match packet {
                Packet::Connect(_) if c.auth.is_some() => {
                    self.violation(conn, "second CONNECT during authentication (§3.1.0-2)".into(), out)
                }
                Packet::Connect(p) if channel == CONTROL_CHANNEL => self.on_connect(conn, *p, now, out),
                Packet::Auth(a) if channel == CONTROL_CHANNEL && c.auth.is_some() => self.on_auth(conn, *a, now, out),
                // MQTT 5 §3.1.2-30: before CONNACK a client may send AUTH or DISCONNECT.
                Packet::Disconnect(_) if c.auth.is_some() => self.close(conn, CloseReason::Disconnect, false, out),
                Packet::Connect(_) => self.violation(conn, "CONNECT on a data channel".into(), out),
                // MQTT 3.1.1 §3.1.0-1: the first packet from the client MUST be CONNECT.
                other => self.violation(conn, format!("{:?} before CONNECT (§3.1.0-1)", other.get_type()), out),
            }
            return;
        };
        if channel != CONTROL_CHANNEL && matches!(packet, Packet::Pingreq | Packet::Disconnect(_)) {
            // docs/mqtt-over-quic.md §2.1, §2.3: PINGREQ and DISCONNECT only on the control channel.
            let kind = packet.get_type();
            return self.violation(conn, format!("{kind:?} on a data channel"), out);
        }
        match packet {
            // MQTT 3.1.1 §3.1.0-2: a second CONNECT is a protocol violation.
            Packet::Connect(_) => self.violation(conn, "second CONNECT (§3.1.0-2)".into(), out),
            Packet::Publish(p) => self.on_publish(conn, sid, channel, p, out),
            Packet::Puback(p) => self.on_puback(sid, p.pid, out),
            Packet::Pubrec(p) => self.on_pubrec(conn, sid, p.pid, out),
            Packet::Pubrel(p) => self.on_pubrel(conn, sid, channel, p.pid, out),
            Packet::Pubcomp(p) => self.on_pubcomp(sid, p.pid, out),
            Packet::Subscribe(s) => self.on_subscribe(conn, sid, channel, s, out),
            Packet::Unsubscribe(u) => self.on_unsubscribe(conn, sid, channel, u, out),
            // MQTT 3.1.1 §3.12.4-1: answer PINGREQ with PINGRESP.
            Packet::Pingreq => out.push(Action::Send { conn, channel, packet: Packet::Pingresp }),
            Packet::Disconnect(d) => self.on_disconnect(conn, sid, &d, out),
            // MQTT 5 §4.12: re-authentication (or an AUTH out of place, which closes).
            Packet::Auth(a) => self.on_auth(conn, *a, now, out),
            Packet::Connack(_) | Packet::Suback(_) | Packet::Unsuback(_) | Packet::Pingresp => {
                let kind = packet.name();
                self.violation(conn, format!("{kind} is a server-to-client packet"), out)
            }
        }
    }

    /// The client's DISCONNECT: close, discarding the will (3.1.1 §3.14.4-3), unless an MQTT 5
    /// client asked for it with 0x04 (§3.14.2.1). MQTT 5 may change the Session Expiry
    /// Interval here, but not from 0 (§3.14.2.2.2).
    fn on_disconnect(&mut self, conn: ConnId, sid: SessionId, d: &crate::codec::Disconnect, out: &mut Vec<Action>) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        let v5 = c.v5.as_deref().map(|v| v.session_expiry);
        if let (Some(was), Some(now)) = (v5, d.properties.session_expiry_interval) {
            if was == 0 && now != 0 {
                return self.violation(
                    conn,
                    "DISCONNECT sets a Session Expiry Interval after CONNECT set 0 (§3.14.2.2.2)".into(),
                    out,
                );
            }
            if let Some(s) = self.sessions.get_mut(sid) {
                s.expiry = now;
                s.clean = now == 0;
            }
            // A new non-zero interval is stored (a zero one ends the session at the close).
            self.persist_session(sid, out);
        }
        // MQTT 5 §3.14.4-3: only a Normal disconnection (0x00) discards the will; 0x04 asks for
        // it, and so does any error code.
        let keep_will = v5.is_some() && d.reason_code != DisconnectReasonCode::NormalDisconnect;
        if (d.reason_code as u8) >= 0x80 {
            let cid = self.client_id_of(conn);
            tracing::info!(
                conn,
                client_id = cid.as_deref().unwrap_or(""),
                code = d.reason_code as u8,
                reason = d.properties.reason_string.as_deref().unwrap_or(""),
                "mqtt: client disconnected with an error"
            );
        }
        if !keep_will {
            if let Some(c) = self.conns.get_mut(conn) {
                c.will = None;
            }
        }
        // §3.14.4-1: close the connection.
        self.close(conn, CloseReason::Disconnect, keep_will, out);
    }

    /// Whether `packet` fits the Maximum Packet Size of session `sid`'s client (MQTT 5
    /// §3.1.2-24); properties that are allowed to be left out are, when it does not.
    fn fits(&self, sid: SessionId, packet: &Packet) -> bool {
        let max = self.sessions.get(sid).and_then(|s| s.max_packet);
        max.is_none_or(|m| crate::codec::wire_len_hint(packet, Version::V5) <= m as usize)
    }

    /// Close `conn` for a protocol violation (MQTT 5: DISCONNECT 0x82 Protocol Error).
    fn violation(&mut self, conn: ConnId, what: String, out: &mut Vec<Action>) {
        self.violation_as(conn, DisconnectReasonCode::ProtocolError, what, out)
    }

    /// Close `conn` for a violation an MQTT 5 client is told with `code` (0x81 Malformed Packet,
    /// 0x93 Receive Maximum exceeded, 0x94 Topic Alias invalid, 0x97 Quota exceeded, ...).
    fn violation_as(&mut self, conn: ConnId, code: DisconnectReasonCode, what: String, out: &mut Vec<Action>) {
        self.stats.violations += 1;
        let cid = self.client_id_of(conn);
        tracing::warn!(
            conn,
            client_id = cid.as_deref().unwrap_or("(before CONNECT)"),
            "mqtt: {what}; closing the connection"
        );
        // MQTT 3.1.1 §3.1.2-8: a connection closed for a protocol error publishes its will.
        self.close_with(conn, CloseReason::Violation(what), Some(code), true, out);
    }

    /// The number of levels of `topic`, if it has more than `max_topic_levels`.
    fn too_deep(&self, topic: &str) -> Option<usize> {
        let max = self.cfg.max_topic_levels;
        // Cheap test first: a name of at most `max` bytes cannot have more than `max` levels.
        if topic.len() < max {
            return None;
        }
        let levels = topic.bytes().filter(|&b| b == b'/').count() + 1;
        (levels > max).then_some(levels)
    }

    /// Close `conn` for a topic name or filter deeper than `max_topic_levels` (issue 13: a deep
    /// filter once overflowed the stack in the trie walks; mosquitto closes such clients too).
    fn topic_too_deep(&mut self, conn: ConnId, what: &str, levels: usize, out: &mut Vec<Action>) {
        let code = DisconnectReasonCode::TopicNameInvalid;
        self.too_deep_as(conn, code, what, levels, out)
    }

    /// [`BrokerCore::topic_too_deep`] for a SUBSCRIBE filter (MQTT 5: Topic Filter invalid).
    fn filter_too_deep(&mut self, conn: ConnId, levels: usize, out: &mut Vec<Action>) {
        let code = DisconnectReasonCode::TopicFilterInvalid;
        self.too_deep_as(conn, code, "SUBSCRIBE filter", levels, out)
    }

    fn too_deep_as(
        &mut self,
        conn: ConnId,
        code: DisconnectReasonCode,
        what: &str,
        levels: usize,
        out: &mut Vec<Action>,
    ) {
        self.stats.limit_topic_levels += 1;
        let max = self.cfg.max_topic_levels;
        self.violation_as(conn, code, format!("{what} has {levels} levels (max_topic_levels {max})"), out);
    }

    /// Emit Close, detach the session, publish the will if asked. An MQTT 5 client that got
    /// its CONNACK is told why first: a DISCONNECT with the reason code of `reason`
    /// (§3.14, §4.13), unless it sent DISCONNECT itself.
    fn close(&mut self, conn: ConnId, reason: CloseReason, publish_will: bool, out: &mut Vec<Action>) {
        let code = match &reason {
            CloseReason::TakenOver => Some(DisconnectReasonCode::SessionTakenOver),
            CloseReason::KeepaliveTimeout => Some(DisconnectReasonCode::KeepAliveTimeout),
            CloseReason::Violation(_) => Some(DisconnectReasonCode::ProtocolError),
            CloseReason::Shutdown => Some(DisconnectReasonCode::ServerShuttingDown),
            CloseReason::Disconnect | CloseReason::Refused(_) | CloseReason::ConnectTimeout => None,
        };
        self.close_with(conn, reason, code, publish_will, out)
    }

    /// [`BrokerCore::close`] with the DISCONNECT reason code given (`None`: no DISCONNECT).
    fn close_with(
        &mut self,
        conn: ConnId,
        reason: CloseReason,
        code: Option<DisconnectReasonCode>,
        publish_will: bool,
        out: &mut Vec<Action>,
    ) {
        let Some(c) = self.conns.get(conn) else { return };
        if c.closing {
            return;
        }
        if let (Some(code), Version::V5, Some(sid)) = (code, c.version, c.session) {
            let mut d = crate::codec::Disconnect::new(code);
            // A reason string is allowed on DISCONNECT whatever Request Problem Information
            // says (§3.1.2.11.7), and left out if it would exceed the client's Maximum Packet
            // Size (§3.14.2.2.3).
            let why = reason.to_string();
            let mut end = why.len().min(REASON_STRING_MAX);
            while !why.is_char_boundary(end) {
                end -= 1;
            }
            d.properties.reason_string = Some(why[..end].into());
            let mut packet = Packet::Disconnect(Box::new(d));
            if !self.fits(sid, &packet) {
                packet = Packet::disconnect(code);
            }
            out.push(Action::Send { conn, channel: CONTROL_CHANNEL, packet });
        }
        self.detach(conn, publish_will, out);
        out.push(Action::Close { conn, reason });
    }

    /// Mark `conn` closing and detach its session: a clean session ends (§3.1.2-6), a
    /// persistent one keeps its state, all of it on the control channel (docs/mqtt-over-quic.md
    /// §6.6), and one with a finite MQTT 5 Session Expiry Interval ends when it runs out. Held
    /// early packets are dropped. Then publish the will if asked, unless the connection was
    /// still early (§6.11); an MQTT 5 will with a Will Delay Interval waits for it in the
    /// session, unless the session ends now (§3.1.3.2.2).
    fn detach(&mut self, conn: ConnId, publish_will: bool, out: &mut Vec<Action>) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        c.closing = true;
        let will = c.will.take();
        let early = c.early.take();
        let session = c.session.take();
        let cid = session.and_then(|sid| self.sessions.get(sid)).map(|s| s.client_id.clone());
        // The will's publisher, for the ACL check when it is published (the session may end
        // first).
        let will_acl: Option<Arc<ClientAcl>> =
            session.and_then(|sid| self.sessions.get(sid)).and_then(|s| s.acl.clone());
        let cid = cid.unwrap_or_else(|| Arc::from("(before CONNECT)"));
        if let Some(e) = &early {
            let held = e.held.iter().filter(|h| matches!(h, Held::Packet(..))).count();
            if held > 0 {
                self.stats.early_dropped += held as u64;
                tracing::info!(
                    conn,
                    client_id = &*cid,
                    held,
                    "mqtt: connection closed before its QUIC handshake completed; held packets dropped, \
                     nothing of them applied (docs/mqtt-over-quic.md §6.11)"
                );
            }
        }
        let mut will = will.filter(|_| publish_will);
        if let (Some(_), Some(_)) = (&will, &early) {
            // Its CONNECT may be a replayed 0-RTT flight (RFC 9001 §9.2).
            tracing::info!(
                conn,
                client_id = &*cid,
                "mqtt: will not published: the connection closed before its QUIC handshake completed \
                 (docs/mqtt-over-quic.md §6.11)"
            );
            will = None;
        }
        if let Some(sid) = session {
            let now = self.now;
            let clean = match self.sessions.get_mut(sid) {
                Some(s) => {
                    s.conn = None;
                    if s.expiry != u32::MAX && !s.clean {
                        s.expires_at = now.map(|n| n + Duration::from_secs(u64::from(s.expiry)));
                    }
                    if will.as_ref().is_some_and(|w| w.delay > 0) && !s.clean {
                        if let (Some(w), Some(n)) = (will.take(), now) {
                            s.delayed_will = Some((n + Duration::from_secs(u64::from(w.delay)), w));
                        }
                    }
                    s.clean
                }
                None => false,
            };
            if clean {
                self.destroy_session(sid, out);
            } else {
                // §6.6: channel numbers mean nothing on the session's next connection.
                let m = self.relocate(sid, None, None, out);
                if m.discarded > 0 {
                    tracing::info!(
                        conn,
                        client_id = &*cid,
                        discarded = m.discarded,
                        "mqtt: data streams' QoS 2 messages awaiting PUBREL discarded with the connection \
                         (undelivered; the client re-sends them, docs/mqtt-over-quic.md §6.4)"
                    );
                }
                if let Some(s) = self.sessions.get_mut(sid) {
                    s.shrink();
                }
                self.arm_session(sid, out);
            }
        }
        if let Some(will) = will {
            self.publish_will(&cid, will_acl.as_deref(), *will, out);
        }
    }

    /// Publish `client_id`'s will, if the ACL (the client's, `acl`) lets it write the topic;
    /// its Message Expiry Interval starts now (MQTT 5 §3.1.3.2.4).
    fn publish_will(&mut self, client_id: &str, acl: Option<&ClientAcl>, will: Will, out: &mut Vec<Action>) {
        let will = will.msg.with_expiry(will.expiry, self.now);
        if self.cfg.acl.is_some() && !acl.is_some_and(|a| a.allows(&will.topic, Op::Write)) {
            // As mosquitto 2.0.11: a will is checked for write when it is published (the
            // CONNECT carrying it is accepted).
            self.stats.acl_denied_will += 1;
            tracing::info!(client_id, topic = &*will.topic, "mqtt: will denied by the ACL; not published");
            return;
        }
        self.stats.wills_published += 1;
        self.route(will, None, out);
    }

    fn destroy_session(&mut self, sid: SessionId, out: &mut Vec<Action>) {
        let Some(mut s) = self.sessions.remove(sid) else { return };
        if s.stored && self.cfg.data_dir.is_some() {
            out.push(Action::Store(StoreOp::DropSession { client_id: s.client_id.clone() }));
        }
        if let Some((_, will)) = s.delayed_will.take() {
            // MQTT 5 §3.1.3.2.2: the will goes out when its delay passes or the session ends,
            // whichever is first (here: a Clean Start took the session over).
            self.publish_will(&s.client_id, s.acl.as_deref(), *will, out);
        }
        for sub in &s.subs {
            self.subs.remove(&sub.filter, SubKey { session: sid, channel: sub.channel });
        }
        if self.by_client.get(&s.client_id) == Some(&sid) {
            self.by_client.remove(&s.client_id);
        }
    }

    /// Data channel `ch` of `sid`'s live connection `conn` ended (docs/mqtt-over-quic.md
    /// §6.2-6.4): park its subscriptions, move its outbound messages, discard its inbound QoS 2
    /// flows. Logs what moved.
    fn retire_channel(&mut self, conn: ConnId, sid: SessionId, ch: ChannelId, end: ChannelEnd, out: &mut Vec<Action>) {
        // Topic Aliases name topics within one stream: the ended one's go with it.
        if let Some(v5) = self.conns.get_mut(conn).and_then(|c| c.v5.as_deref_mut()) {
            v5.aliases.retain(|(c, _), _| *c != ch);
            v5.out_aliases.retain(|(c, _), _| *c != ch);
            v5.out_next.remove(&ch);
        }
        let m = self.relocate(sid, Some(ch), Some(conn), out);
        self.stats.moved_channel_closed += m.moved;
        let cid = self.sessions.get(sid).map(|s| s.client_id.clone());
        let cid = cid.as_deref().unwrap_or("");
        if m.moved > 0 || m.discarded > 0 {
            tracing::info!(
                conn,
                client_id = cid,
                channel = ch,
                parked = m.parked,
                moved = m.moved,
                discarded = m.discarded,
                "mqtt: data channel {end}: subscriptions parked on the control channel, outbound messages \
                 moved (in-flight ones re-sent with DUP), inbound QoS 2 awaiting PUBREL discarded"
            );
        } else {
            tracing::debug!(conn, client_id = cid, channel = ch, parked = m.parked, "mqtt: data channel {end}");
        }
    }

    /// Move `sid`'s state off data channel `from` (one channel that ended, `Some`), or off every
    /// channel (`None`: the connection ended, §6.6):
    ///
    /// - explicit subscriptions there are parked on the control channel (§6.2);
    /// - outbound in-flight and queued messages there move: with `live` (the session's
    ///   connection, when one channel ended) to the lowest live data channel with a subscription
    ///   matching the topic, else to the control channel, in-flight ones re-sent at once in their
    ///   original order, PUBLISH with DUP and the same id, PUBREL for a PUBREC'd QoS 2 (§6.3);
    ///   without `live`, to the control channel, re-sent on resume (§4.4). Moved flights count
    ///   against their new channel's window, even beyond it; moved queued deliveries join its
    ///   queue in order of arrival (§6.12);
    /// - inbound QoS 2 flows awaiting PUBREL on a data channel are discarded (§6.4); the control
    ///   channel's outlive the connection (§4.1).
    fn relocate(
        &mut self,
        sid: SessionId,
        from: Option<ChannelId>,
        live: Option<ConnId>,
        out: &mut Vec<Action>,
    ) -> Relocated {
        let on = |c: ChannelId| from.map_or(c != CONTROL_CHANNEL, |ch| c == ch);
        let mut r = Relocated::default();
        let Some(s) = self.sessions.get_mut(sid) else { return r };
        let moving: Vec<(ChannelId, TopicFilter, QoS, SubOpts)> = s
            .subs
            .iter()
            .filter(|x| !x.parked && from.is_none_or(|ch| x.channel == ch))
            .map(|x| (x.channel, x.filter.clone(), x.qos, x.opts))
            .collect();
        for (ch, filter, qos, opts) in &moving {
            s.remove_sub(*ch, filter);
            self.subs.remove(filter, SubKey { session: sid, channel: *ch });
            s.park(filter, *qos, *opts);
            sync_control_route(&mut self.subs, sid, s, filter);
        }
        r.parked = moving.len();
        if !s.has_flows() {
            return r;
        }
        // The live data channels' subscriptions (those of the ended channel are parked by now).
        let targets: Vec<(ChannelId, TopicFilter)> = match live {
            Some(_) => s
                .subs
                .iter()
                .filter(|x| !x.parked && x.channel != CONTROL_CHANNEL)
                .map(|x| (x.channel, x.filter.clone()))
                .collect(),
            None => Vec::new(),
        };
        let target = |topic: &str| {
            targets
                .iter()
                .filter(|(_, f)| filter_matches(match_filter(f), topic))
                .map(|(c, _)| *c)
                .min()
                .unwrap_or(CONTROL_CHANNEL)
        };
        let f = s.f();
        let before = f.awaiting_rel.len();
        f.awaiting_rel.retain(|(c, _), _| *c == CONTROL_CHANNEL || !on(*c));
        r.discarded = (before - f.awaiting_rel.len()) as u64;
        self.stats.discarded_awaiting_rel += r.discarded;
        // The moving lanes give up their flights and queues: the flights are counted against
        // their new channel's window (§6.12; re-sent at once even beyond it), the queued
        // deliveries join the new channel's queue, merged in order of arrival (`seq`), so each
        // topic's order holds on the new channel.
        let mut queued: Vec<Queued> = Vec::new();
        for i in 0..f.lanes.len() {
            if on(f.lanes[i].channel) {
                f.lanes[i].inflight = 0;
                while let Some(q) = f.take_queued(i, 0) {
                    queued.push(q);
                }
            }
        }
        let mut resend: Vec<(u64, u16)> = Vec::new();
        let mut arrivals: Vec<ChannelId> = Vec::new();
        for (id, fl) in f.inflight.iter_mut().filter(|(_, fl)| on(fl.channel)) {
            let topic = match &fl.state {
                OutState::AwaitPuback(m) | OutState::AwaitPubrec(m) => &m.topic,
                OutState::AwaitPubcomp(t) => t,
            };
            fl.channel = target(topic);
            arrivals.push(fl.channel);
            resend.push((fl.seq, *id));
        }
        for ch in arrivals {
            let i = f.lane_index(ch);
            f.lanes[i].inflight += 1;
        }
        // Several lanes' queues (the connection ended): back into one order of arrival.
        queued.sort_by_key(|q| q.seq);
        r.moved += queued.len() as u64;
        let mut by_target: Vec<(ChannelId, Vec<Queued>)> = Vec::new();
        for q in queued {
            let to = target(&q.msg.topic);
            match by_target.iter_mut().find(|(c, _)| *c == to) {
                Some((_, v)) => v.push(q),
                None => by_target.push((to, vec![q])),
            }
        }
        for (to, moved) in by_target {
            f.merge_queued(to, moved);
        }
        f.tidy();
        r.moved += resend.len() as u64;
        if let Some(conn) = live {
            // Their order of first transmission is kept (§4.6).
            resend.sort_unstable();
            for (_, id) in resend {
                let Some(fl) = f.inflight.get(&id) else { continue };
                let packet = resend_packet(id, fl, self.now);
                if matches!(packet, Packet::Publish(_)) {
                    self.stats.delivered += 1;
                }
                out.push(Action::Send { conn, channel: fl.channel, packet });
            }
        }
        s.shrink();
        r
    }

    fn client_id_of(&self, conn: ConnId) -> Option<Arc<str>> {
        let sid = self.conns.get(conn)?.session?;
        Some(self.sessions.get(sid)?.client_id.clone())
    }

    fn refuse(&mut self, conn: ConnId, client_id: &str, code: ConnectReasonCode, why: &str, out: &mut Vec<Action>) {
        self.stats.connects_refused += 1;
        tracing::info!(conn, client_id, "mqtt: CONNECT refused with {code:?}: {why}");
        // MQTT 3.1.1 §3.2.2-4: session present 0 with a non-zero return code; §3.2.2-5: then close.
        out.push(Action::Send { conn, channel: CONTROL_CHANNEL, packet: Packet::connack(false, code) });
        self.close(conn, CloseReason::Refused(code), false, out);
    }

    /// Who the client of `p` is, or why it is refused (docs/mqtt.md, "Authentication and
    /// authorization"): `Ok(user name)`, `None` for an anonymous client.
    fn authenticate(&self, conn: ConnId, p: &Connect) -> Result<Option<Box<str>>, (ConnectReasonCode, String)> {
        let user = p.username.as_deref();
        let shown = user.unwrap_or("(none)");
        let identity = self.conns.get(conn).and_then(|c| c.identity.clone());
        if self.cfg.require_certificate && identity.is_none() {
            // TLS and QUIC refuse a client without a certificate before it gets here; what
            // arrives without one came over plain TCP, which cannot carry one. One policy for
            // every listener: refused (mosquitto sets it per listener; docs/mqtt.md).
            return Err((
                ConnectReasonCode::NotAuthorized,
                format!("user {shown}: a client certificate is required and this connection has none (plain TCP)"),
            ));
        }
        if self.cfg.use_identity_as_username {
            // As mosquitto 2.0.11 (`use_identity_as_username`): the certificate's CN replaces
            // the user name in CONNECT, and the password file is not consulted; without a
            // certificate, CONNACK 0x04 (mosquitto's CONNACK_REFUSED_BAD_USERNAME_PASSWORD).
            return match identity {
                Some(cn) => Ok(Some(cn)),
                None => Err((
                    ConnectReasonCode::BadUserNameOrPassword,
                    format!(
                        "user {shown}: no client certificate to take the user name from (use_identity_as_username)"
                    ),
                )),
            };
        }
        // MQTT 3.1.1 §3.1.2.8-9, §3.2.2.3; the codes are mosquitto 2.0.11's: 0x05 for every
        // refusal (missing, unknown or wrong), as checked against it.
        let refuse = |why: String| Err((ConnectReasonCode::NotAuthorized, why));
        match (user, &self.cfg.password_file) {
            (None, _) if !self.cfg.anonymous_allowed() => refuse("anonymous clients are not allowed".into()),
            (None, _) => Ok(None),
            (Some(u), Some(file)) => match file.check(u, p.password.as_deref()) {
                Verdict::Accepted => Ok(Some(u.into())),
                Verdict::UnknownUser => refuse(format!("user {u:?} is not in the password file")),
                Verdict::WrongPassword if p.password.is_none() => refuse(format!("user {u:?}: no password")),
                Verdict::WrongPassword => refuse(format!("user {u:?}: wrong password")),
            },
            // No password file: a user name is taken as given, unless anonymous clients are
            // refused, when there is nothing to check it against (mosquitto refuses it too).
            (Some(u), None) if !self.cfg.anonymous_allowed() => {
                refuse(format!("user {u:?}: no password file to check it, and anonymous clients are not allowed"))
            }
            (Some(u), None) => Ok(Some(u.into())),
        }
    }

    /// Whether the client of session `sid` may `op` `topic` (no ACL file: yes).
    fn acl_allows(&self, sid: SessionId, topic: &str, op: Op) -> bool {
        match self.sessions.get(sid).and_then(|s| s.acl.as_deref()) {
            Some(acl) => acl.allows(topic, op),
            None => self.cfg.acl.is_none(),
        }
    }

    /// May `sid` publish `topic`? Counts and logs a denial (INFO at the 1st, 2nd, 4th, ...
    /// broker-wide, DEBUG for the others: a client cannot flood the log).
    fn may_publish(&mut self, conn: ConnId, sid: SessionId, topic: &str) -> bool {
        if self.acl_allows(sid, topic, Op::Write) {
            return true;
        }
        self.stats.acl_denied_publish += 1;
        let n = self.stats.acl_denied_publish;
        let cid = self.sessions.get(sid).map(|s| s.client_id.clone());
        let cid = cid.as_deref().unwrap_or("");
        if n.is_power_of_two() {
            tracing::info!(conn, client_id = cid, topic, denied_total = n, "mqtt: PUBLISH denied by the ACL; dropped");
        } else {
            tracing::debug!(conn, client_id = cid, topic, "mqtt: PUBLISH denied by the ACL; dropped");
        }
        false
    }

    /// Count (and now and then log) a delivery the ACL did not allow.
    fn denied_read(&mut self, sid: SessionId, topic: &str, retained: bool) {
        self.stats.acl_denied_read += 1;
        let n = self.stats.acl_denied_read;
        let cid = self.sessions.get(sid).map(|s| s.client_id.clone());
        let cid = cid.as_deref().unwrap_or("");
        if n.is_power_of_two() {
            tracing::info!(
                client_id = cid,
                topic,
                retained,
                denied_total = n,
                "mqtt: delivery denied by the ACL (read)"
            );
        } else {
            tracing::debug!(client_id = cid, topic, retained, "mqtt: delivery denied by the ACL (read)");
        }
    }

    fn on_connect(&mut self, conn: ConnId, p: Connect, now: Instant, out: &mut Vec<Action>) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.version = Version::of(p.protocol);
        }
        if p.properties.auth_method.is_some() {
            return self.start_auth(conn, p, now, out);
        }
        let user = match self.authenticate(conn, &p) {
            Ok(user) => user,
            Err((code, why)) => {
                self.stats.auth_failures += 1;
                return self.refuse(conn, &p.client_id, code, &why, out);
            }
        };
        self.finish_connect(conn, p, user, None, now, out)
    }

    /// MQTT 5 §4.12: a CONNECT naming an authentication method. A method this broker does not
    /// offer gets CONNACK 0x8C; an offered one starts its exchange of AUTH packets, and the
    /// CONNECT waits for its outcome. (A client certificate that is required stays required.)
    fn start_auth(&mut self, conn: ConnId, p: Connect, now: Instant, out: &mut Vec<Action>) {
        let name = p.properties.auth_method.clone().unwrap_or_default();
        let Some(method) = self.cfg.auth_methods.iter().find(|m| m.name() == &*name).cloned() else {
            self.stats.auth_failures += 1;
            let why = format!("authentication method {name:?} is not offered");
            return self.refuse(conn, &p.client_id, ConnectReasonCode::BadAuthMethod, &why, out);
        };
        if self.cfg.require_certificate && self.conns.get(conn).is_some_and(|c| c.identity.is_none()) {
            self.stats.auth_failures += 1;
            let why = "a client certificate is required and this connection has none (plain TCP)";
            return self.refuse(conn, &p.client_id, ConnectReasonCode::NotAuthorized, why, out);
        }
        let (exchange, step) = method.start(p.properties.auth_data.as_deref());
        let st = AuthInProgress { method: name, exchange, connect: Some(Box::new(p)) };
        self.auth_step(conn, st, step, now, out);
    }

    /// An AUTH from the client (MQTT 5 §4.12): the next step of the exchange in progress
    /// (0x18), or a re-authentication (0x19) with the method of the connection's CONNECT.
    fn on_auth(&mut self, conn: ConnId, a: crate::codec::Auth, now: Instant, out: &mut Vec<Action>) {
        use crate::codec::AuthReasonCode as R;
        let Some(c) = self.conns.get_mut(conn) else { return };
        let method = a.properties.auth_method.clone();
        let data = a.properties.auth_data.as_deref();
        let connected_with = c.v5.as_deref().and_then(|v| v.auth_method.clone());
        match (c.auth.take(), a.reason_code) {
            (Some(mut st), R::ContinueAuthentication) if method.as_deref() == Some(&*st.method) => {
                let step = st.exchange.next(data);
                self.auth_step(conn, *st, step, now, out);
            }
            (None, R::ReAuthentication) if c.session.is_some() && method.is_some() && method == connected_with => {
                let name = method.unwrap_or_default();
                let Some(m) = self.cfg.auth_methods.iter().find(|m| m.name() == &*name).cloned() else { return };
                let (exchange, step) = m.start(data);
                self.auth_step(conn, AuthInProgress { method: name, exchange, connect: None }, step, now, out);
            }
            (st, code) => {
                if let Some(c) = self.conns.get_mut(conn) {
                    c.auth = st;
                }
                let what = format!("AUTH {:#04x} with method {method:?} out of place (§4.12)", code as u8);
                self.violation(conn, what, out)
            }
        }
    }

    /// Act on what the authentication method said.
    fn auth_step(&mut self, conn: ConnId, st: AuthInProgress, step: AuthStep, now: Instant, out: &mut Vec<Action>) {
        use crate::codec::{Auth, AuthReasonCode};
        let auth_packet = |code, method: &Arc<str>, data: Option<Vec<u8>>| {
            let mut a = Auth::new(code);
            a.properties.auth_method = Some(method.clone());
            a.properties.auth_data = data.map(bytes::Bytes::from);
            Packet::Auth(Box::new(a))
        };
        match step {
            AuthStep::Continue(data) => {
                let packet = auth_packet(AuthReasonCode::ContinueAuthentication, &st.method, Some(data));
                out.push(Action::Send { conn, channel: CONTROL_CHANNEL, packet });
                if let Some(c) = self.conns.get_mut(conn) {
                    c.auth = Some(Box::new(st));
                }
            }
            AuthStep::Success { user, data } => match st.connect {
                Some(p) => self.finish_connect(conn, *p, user.map(Into::into), Some((st.method, data)), now, out),
                None => {
                    // A re-authentication proves the same user again; another is refused (the
                    // ACL and the session belong to the first).
                    let was = self.conns.get(conn).and_then(|c| c.v5.as_deref()).and_then(|v| v.auth_user.clone());
                    if user.as_deref() != was.as_deref() {
                        self.stats.auth_failures += 1;
                        let what = format!("re-authentication as {user:?}, connected as {was:?}");
                        return self.violation_as(conn, DisconnectReasonCode::NotAuthorized, what, out);
                    }
                    tracing::debug!(conn, method = &*st.method, "mqtt: re-authenticated");
                    let packet = auth_packet(AuthReasonCode::Success, &st.method, data);
                    out.push(Action::Send { conn, channel: CONTROL_CHANNEL, packet });
                }
            },
            AuthStep::Failure(why) => {
                self.stats.auth_failures += 1;
                match st.connect {
                    Some(p) => self.refuse(conn, &p.client_id, ConnectReasonCode::NotAuthorized, &why, out),
                    None => self.violation_as(conn, DisconnectReasonCode::NotAuthorized, why, out),
                }
            }
        }
    }

    /// The rest of CONNECT once the client is authenticated as `user` (`auth`: the enhanced
    /// authentication method it used, and the data for the CONNACK).
    fn finish_connect(
        &mut self,
        conn: ConnId,
        p: Connect,
        user: Option<Box<str>>,
        auth: Option<(Arc<str>, Option<Vec<u8>>)>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let version = Version::of(p.protocol);
        let v5 = version == Version::V5;
        // Before any session state is touched (a later close would leave it attached).
        if let Some(w) = &p.last_will {
            if let Some(levels) = self.too_deep(&w.topic_name) {
                return self.topic_too_deep(conn, "will topic", levels, out);
            }
            if v5 && w.qos > self.cfg.max_qos {
                // MQTT 5 §3.2.2-12: a will above the Maximum QoS is refused with 0x9B.
                let why = format!("will QoS {} above the server's maximum {}", w.qos as u8, self.cfg.max_qos as u8);
                return self.refuse(conn, &p.client_id, ConnectReasonCode::QoSNotSupported, &why, out);
            }
        }
        // MQTT 3.1 (the "MQIsdp" protocol) limits client ids to 23 characters.
        if p.protocol == Protocol::V310 && p.client_id.chars().count() > 23 {
            return self.refuse(
                conn,
                &p.client_id,
                ConnectReasonCode::ClientIdentifierNotValid,
                "3.1 client id longer than 23",
                out,
            );
        }
        // How long the session outlives the connection: 3.1.1 clean session 0 keeps it for
        // good, 1 ends it with the connection; MQTT 5 says it in seconds (§3.1.2.11.2), absent
        // meaning 0, 0xFFFFFFFF meaning never.
        let expiry = match (v5, p.clean_start) {
            (true, _) => p.properties.session_expiry_interval.unwrap_or(0),
            (false, true) => 0,
            (false, false) => u32::MAX,
        };
        let assigned = p.client_id.is_empty();
        let client_id: Arc<str> = if assigned {
            if !v5 && !p.clean_start {
                // MQTT 3.1.1 §3.1.3-8: empty id with clean session 0 → 0x02. (MQTT 5 assigns
                // one whatever Clean Start says, §3.1.3-6.)
                return self.refuse(
                    conn,
                    "",
                    ConnectReasonCode::ClientIdentifierNotValid,
                    "empty client id without clean session (§3.1.3-8)",
                    out,
                );
            }
            // MQTT 3.1.1 §3.1.3-6: the server assigns a unique id.
            loop {
                self.assigned_ids += 1;
                let id: Arc<str> = format!("quiclab-{:x}-{}", conn, self.assigned_ids).into();
                if !self.by_client.contains_key(&id) {
                    break id;
                }
            }
        } else {
            p.client_id.clone()
        };

        let existing = self.by_client.get(&client_id).copied();
        let will_create = existing.is_none() || p.clean_start;
        let freed = existing.is_some() && p.clean_start;
        if will_create && !freed && self.sessions.len() >= self.cfg.max_sessions {
            self.stats.limit_sessions += 1;
            let code = if v5 { ConnectReasonCode::QuotaExceeded } else { ConnectReasonCode::ServerUnavailable };
            return self.refuse(conn, &p.client_id, code, "max_sessions reached", out);
        }

        // MQTT 3.1.1 §3.1.4-2: a connection already using this client id is closed.
        if let Some(sid) = existing {
            if let Some(old) = self.sessions.get(sid).and_then(|s| s.conn) {
                if old != conn {
                    self.stats.takeovers += 1;
                    tracing::info!(client_id = &*client_id, old, new = conn, "mqtt: session taken over (§3.1.4-2)");
                    // The old connection is closed by the server without DISCONNECT: its will
                    // is published (§3.1.2-8).
                    self.close(old, CloseReason::TakenOver, true, out);
                }
            }
        }
        // The takeover may have ended a clean session; look again.
        let existing = self.by_client.get(&client_id).copied().filter(|sid| self.sessions.get(*sid).is_some());
        // MQTT 3.1.1 §3.1.2-6, MQTT 5 §3.1.2-4: Clean Start discards any previous session.
        if let (Some(sid), true) = (existing, p.clean_start) {
            self.destroy_session(sid, out);
        }
        let (sid, session_present) = match existing {
            Some(sid) if !p.clean_start => (sid, true),
            _ => {
                let sid = self.sessions.insert(Session::new(client_id.clone(), expiry == 0));
                self.by_client.insert(client_id.clone(), sid);
                (sid, false)
            }
        };
        let acl = self.cfg.acl.as_ref().map(|a| Arc::new(a.for_client(user.as_deref(), &client_id)));
        if let Some(s) = self.sessions.get_mut(sid) {
            s.conn = Some(conn);
            s.clean = expiry == 0;
            s.expiry = expiry;
            s.expires_at = None;
            if s.delayed_will.take().is_some() {
                // MQTT 5 §3.1.3.2.2: back before the Will Delay Interval passed.
                tracing::debug!(client_id = &*client_id, "mqtt: delayed will dropped: the client is back");
            }
            s.acl = acl;
            // MQTT 5 §3.3.4-7: no more in flight than the client's Receive Maximum.
            let receive_max = p.properties.receive_max.map_or(MAX_SESSION_INFLIGHT, usize::from);
            s.inflight_cap = receive_max.min(MAX_SESSION_INFLIGHT);
            s.max_packet = p.properties.max_packet_size;
        }
        // MQTT 3.1.1 §3.1.2-24: keepalive × 1.5; 0 turns it off (unless the server caps it).
        let keepalive = match (p.keep_alive, self.cfg.max_keepalive) {
            (0, None) => None,
            (0, Some(max)) => Some(max),
            (k, Some(max)) => Some(k.min(max)),
            (k, None) => Some(k),
        };
        let expiry_ms_of = keepalive.map(|k| Duration::from_millis(k as u64 * 1500));
        let keepalive_ms = expiry_ms_of.map_or(0, |e| e.as_millis() as u32);
        let will = p.last_will.map(|w| Box::new(will_of(w)));
        if let Some(c) = self.conns.get_mut(conn) {
            c.session = Some(sid);
            c.expiry_ms = keepalive_ms;
            c.will = will;
            c.last_seen = now;
            c.v5 = v5.then(|| {
                Box::new(ConnV5 {
                    problem_info: p.properties.request_problem_info.unwrap_or(true),
                    session_expiry: expiry,
                    aliases: HashMap::new(),
                    client_alias_max: p.properties.topic_alias_max.unwrap_or(0),
                    auth_method: auth.as_ref().map(|(m, _)| m.clone()),
                    auth_user: auth.as_ref().and(user.clone()),
                    out_aliases: HashMap::new(),
                    out_next: HashMap::new(),
                })
            });
        }
        self.stats.connects_accepted += 1;
        // A persistent session (new, or resumed with a new expiry) is durable before its CONNACK;
        // a stored one that is to end with this connection is dropped from the store now, so a
        // crash cannot bring it back with what this connection acknowledges.
        let stored_but_clean = self.sessions.get_mut(sid).filter(|s| s.clean && s.stored).map(|s| {
            s.stored = false;
            s.client_id.clone()
        });
        match stored_but_clean {
            Some(client_id) if self.cfg.data_dir.is_some() => {
                out.push(Action::Store(StoreOp::DropSession { client_id }))
            }
            _ => self.persist_session(sid, out),
        }
        tracing::debug!(
            conn,
            client_id = &*client_id,
            version = %version,
            clean_start = p.clean_start,
            expiry,
            session_present,
            "mqtt: connected"
        );
        // MQTT 3.1.1 §3.2.2-1..3: session present reflects stored state for clean session 0.
        let mut connack = crate::codec::Connack::new(session_present, ConnectReasonCode::Success);
        if v5 {
            // MQTT 5 §3.2.2.3: what this server allows, where it differs from the defaults.
            let cp = &mut connack.properties;
            if assigned {
                cp.assigned_client_id = Some(client_id.clone());
            }
            let receive_max = self.cfg.max_awaiting_rel.clamp(1, usize::from(u16::MAX)) as u16;
            cp.receive_max = (receive_max < u16::MAX).then_some(receive_max);
            cp.max_qos = (self.cfg.max_qos < QoS::Level2).then_some(self.cfg.max_qos);
            cp.max_packet_size = u32::try_from(self.cfg.max_packet_size).ok();
            cp.topic_alias_max = (self.cfg.max_topic_alias > 0).then_some(self.cfg.max_topic_alias);
            if let Some((method, data)) = auth {
                cp.auth_method = Some(method);
                cp.auth_data = data.map(bytes::Bytes::from);
            }
            if keepalive != Some(p.keep_alive) && keepalive.is_some() {
                cp.server_keep_alive = keepalive;
            }
        }
        out.push(Action::Send { conn, channel: CONTROL_CHANNEL, packet: Packet::Connack(Box::new(connack)) });
        if session_present {
            self.retransmit(conn, sid, out);
        }
        self.pump(sid, None, out);
        if let Some(e) = expiry_ms_of {
            self.arm(conn, now + e, out);
        }
    }

    /// MQTT 3.1.1 §4.4: on reconnect with clean session 0, re-send unacknowledged PUBLISH
    /// (DUP set, §3.3.1-1) and PUBREL packets with their original identifiers, in order (§4.6).
    fn retransmit(&mut self, conn: ConnId, sid: SessionId, out: &mut Vec<Action>) {
        let Some(s) = self.sessions.get(sid) else { return };
        let mut flights: Vec<(&u16, &InFlight)> = s.fr().inflight.iter().collect();
        flights.sort_by_key(|(_, f)| f.seq);
        for (&id, f) in flights {
            let packet = resend_packet(id, f, self.now);
            if matches!(packet, Packet::Publish(_)) {
                self.stats.delivered += 1;
            }
            out.push(Action::Send { conn, channel: f.channel, packet });
        }
    }

    /// The topic of an MQTT 5 PUBLISH on `ch` with Topic Alias `alias` (§3.3.2.3.4): a topic
    /// with an alias sets it, an empty one looks it up. `Err`: the reason to close.
    fn resolve_alias(
        &mut self,
        conn: ConnId,
        ch: ChannelId,
        topic: TopicName,
        alias: u16,
    ) -> Result<TopicName, (DisconnectReasonCode, String)> {
        let max = self.cfg.max_topic_alias;
        if alias > max {
            return Err((
                DisconnectReasonCode::TopicAliasInvalid,
                format!("Topic Alias {alias} above the Topic Alias Maximum {max} (§3.3.2-9)"),
            ));
        }
        let Some(v5) = self.conns.get_mut(conn).and_then(|c| c.v5.as_deref_mut()) else {
            return Err((DisconnectReasonCode::ProtocolError, "Topic Alias from a 3.1.1 client".into()));
        };
        if topic.is_empty() {
            return v5.aliases.get(&(ch, alias)).cloned().ok_or_else(|| {
                (DisconnectReasonCode::ProtocolError, format!("PUBLISH with Topic Alias {alias}, which was never set"))
            });
        }
        v5.aliases.insert((ch, alias), topic.clone());
        Ok(topic)
    }

    fn on_publish(&mut self, conn: ConnId, sid: SessionId, ch: ChannelId, mut p: Publish, out: &mut Vec<Action>) {
        if let Some(alias) = p.props().topic_alias {
            match self.resolve_alias(conn, ch, p.topic_name.clone(), alias) {
                Ok(t) => p.topic_name = t,
                Err((code, what)) => return self.violation_as(conn, code, what, out),
            }
        }
        if !p.props().subscription_ids.is_empty() {
            return self.violation(conn, "PUBLISH from a client with a Subscription Identifier (§3.3.4-6)".into(), out);
        }
        if let Some(levels) = self.too_deep(&p.topic_name) {
            return self.topic_too_deep(conn, "PUBLISH topic", levels, out);
        }
        let qos = p.qos_pid.qos();
        let v5 = self.conns.get(conn).and_then(|c| c.v5.as_deref()).map(|v| v.problem_info);
        if v5.is_some() && qos > self.cfg.max_qos {
            // MQTT 5 §3.2.2-11: above the Maximum QoS the CONNACK gave.
            let what = format!("PUBLISH QoS {} above the Maximum QoS {}", qos as u8, self.cfg.max_qos as u8);
            return self.violation_as(conn, DisconnectReasonCode::QoSNotSupported, what, out);
        }
        let expiry = p.props().message_expiry;
        let mut msg = Message::new(p.topic_name, p.payload, qos, p.retain).with_expiry(expiry, self.now);
        msg.props = p.props.and_then(|pp| pp.message);
        // A PUBLISH the ACL denies is dropped and acknowledged all the same, as mosquitto does
        // (3.1.1 has no way to refuse one; MQTT 5 is told 0x87). QoS 2 is checked on PUBREL,
        // when it would be routed.
        match p.qos_pid {
            QosPid::Level0 => {
                if self.may_publish(conn, sid, &msg.topic) {
                    self.route(msg, Some(sid), out);
                }
            }
            QosPid::Level1(id) => {
                // MQTT 3.1.1 §4.3.2: forward, then PUBACK on the channel it came on.
                let allowed = self.may_publish(conn, sid, &msg.topic);
                let routed = if allowed { self.route(msg, Some(sid), out) } else { 0 };
                let code = match (v5, allowed, routed) {
                    (None, ..) => PubackReasonCode::Success,
                    (_, false, _) => PubackReasonCode::NotAuthorized,
                    // MQTT 5 §3.4.2.1: the server may say nobody subscribed.
                    (_, true, 0) => PubackReasonCode::NoMatchingSubscribers,
                    _ => PubackReasonCode::Success,
                };
                let mut ack = crate::codec::Puback::new(id, code);
                if code == PubackReasonCode::NotAuthorized && v5 == Some(true) {
                    ack.properties.reason_string = Some("the ACL denies this client write on the topic".into());
                }
                let mut packet = Packet::Puback(ack);
                if !self.fits(sid, &packet) {
                    packet = Packet::Puback(crate::codec::Puback::new(id, code));
                }
                out.push(Action::Send { conn, channel: ch, packet });
            }
            QosPid::Level2(id) => {
                let Some(s) = self.sessions.get_mut(sid) else { return };
                let key = (ch, id.value());
                if !s.fr().awaiting_rel.contains_key(&key) {
                    if s.fr().awaiting_rel.len() >= self.cfg.max_awaiting_rel {
                        let n = self.cfg.max_awaiting_rel;
                        self.stats.limit_awaiting_rel += 1;
                        return self.violation_as(
                            conn,
                            DisconnectReasonCode::ReceiveMaximumExceeded,
                            format!("more than {n} QoS 2 messages awaiting PUBREL (Receive Maximum)"),
                            out,
                        );
                    }
                    let size = Message::size;
                    let held: usize = s.fr().awaiting_rel.values().map(size).sum();
                    if held + size(&msg) > self.cfg.max_awaiting_rel_bytes {
                        let n = self.cfg.max_awaiting_rel_bytes;
                        self.stats.limit_awaiting_rel += 1;
                        return self.violation_as(
                            conn,
                            DisconnectReasonCode::QuotaExceeded,
                            format!("more than {n} bytes of QoS 2 messages awaiting PUBREL (max_awaiting_rel_bytes)"),
                            out,
                        );
                    }
                    // MQTT 3.1.1 §4.3.3 method B: store, PUBREC, forward on PUBREL. A duplicate
                    // (DUP=1, same id) before PUBREL is not stored twice.
                    if ch == CONTROL_CHANNEL && !s.clean && self.cfg.data_dir.is_some() {
                        // Durable before PUBREC: a restart must not lose it (nor forward it twice).
                        let op = StoreOp::Inbound { client_id: s.client_id.clone(), pid: id.value(), msg: msg.clone() };
                        out.push(Action::Store(op));
                    }
                    s.f().awaiting_rel.insert(key, msg);
                }
                out.push(Action::Send { conn, channel: ch, packet: Packet::pubrec(id) });
            }
        }
    }

    fn on_pubrel(&mut self, conn: ConnId, sid: SessionId, ch: ChannelId, id: Pid, out: &mut Vec<Action>) {
        let msg = self.sessions.get_mut(sid).and_then(|s| {
            if !s.has_flows() {
                return None;
            }
            let m = s.f().awaiting_rel.remove(&(ch, id.value()));
            if m.is_some() && ch == CONTROL_CHANNEL && !s.clean && self.cfg.data_dir.is_some() {
                out.push(Action::Store(StoreOp::InboundDone { client_id: s.client_id.clone(), pid: id.value() }));
            }
            s.shrink();
            m
        });
        let v5 = self.conns.get(conn).is_some_and(|c| c.v5.is_some());
        let mut comp = crate::codec::Pubcomp::new_success(id);
        match msg {
            Some(msg) => {
                if self.may_publish(conn, sid, &msg.topic) {
                    self.route(msg, Some(sid), out);
                }
            }
            None => {
                if v5 {
                    // MQTT 5 §3.7.2.1: 0x92 Packet Identifier not found.
                    comp.reason_code = crate::codec::PubcompReasonCode::PacketIdentifierNotFound;
                }
                let cid = self.sessions.get(sid).map(|s| s.client_id.clone());
                tracing::info!(
                    conn,
                    client_id = cid.as_deref().unwrap_or(""),
                    channel = ch,
                    id = id.value(),
                    "mqtt: PUBREL for unknown id (released already, or its flow was discarded with its \
                     stream and the client did not re-send the PUBLISH: docs/mqtt-over-quic.md §6.4); PUBCOMP, \
                     nothing delivered"
                );
            }
        }
        // MQTT 3.1.1 §4.3.3: PUBCOMP with the same id, also for an id already released
        // (a retransmitted PUBREL after reconnect) or unknown (docs/mqtt-over-quic.md §6.4).
        out.push(Action::Send { conn, channel: ch, packet: Packet::Pubcomp(comp) });
    }

    fn on_puback(&mut self, sid: SessionId, id: Pid, out: &mut Vec<Action>) {
        let Some(s) = self.sessions.get_mut(sid) else { return };
        match s.fr().inflight.get(&id.value()) {
            Some(InFlight { state: OutState::AwaitPuback(_), seq, .. }) => {
                if let Some(op) = done_op(s, *seq, self.cfg.data_dir.is_some()) {
                    out.push(Action::Store(op));
                }
                let cap = s.inflight_cap;
                let only = Self::complete_flight(s.f(), id.value(), cap);
                self.pump(sid, only, out);
            }
            Some(_) => {
                tracing::debug!(client_id = &*s.client_id, id = id.value(), "mqtt: PUBACK for a QoS 2 flow; ignored")
            }
            None => {
                tracing::debug!(client_id = &*s.client_id, id = id.value(), "mqtt: PUBACK for an unknown id; ignored")
            }
        }
    }

    fn on_pubrec(&mut self, conn: ConnId, sid: SessionId, id: Pid, out: &mut Vec<Action>) {
        let Some(s) = self.sessions.get_mut(sid) else { return };
        let found = s.has_flows() && s.fr().inflight.contains_key(&id.value());
        let Some(f) = found.then(|| s.f().inflight.get_mut(&id.value())).flatten() else {
            tracing::debug!(client_id = &*s.client_id, id = id.value(), "mqtt: PUBREC for an unknown id; ignored");
            return;
        };
        match &f.state {
            // MQTT 3.1.1 §4.3.3: PUBREC → discard the message (keep its topic), send PUBREL; a
            // repeated PUBREC gets PUBREL again.
            OutState::AwaitPubrec(m) => {
                f.state = OutState::AwaitPubcomp(m.topic.clone());
                let channel = f.channel;
                if let Some(op) = flight_op(s, id.value(), self.cfg.data_dir.is_some()) {
                    out.push(Action::Store(op));
                }
                out.push(Action::Send { conn, channel, packet: Packet::pubrel(id) });
            }
            OutState::AwaitPubcomp(_) => {
                let channel = f.channel;
                out.push(Action::Send { conn, channel, packet: Packet::pubrel(id) });
            }
            OutState::AwaitPuback(_) => {
                tracing::debug!(client_id = &*s.client_id, id = id.value(), "mqtt: PUBREC for a QoS 1 flow; ignored")
            }
        }
    }

    fn on_pubcomp(&mut self, sid: SessionId, id: Pid, out: &mut Vec<Action>) {
        let Some(s) = self.sessions.get_mut(sid) else { return };
        match s.fr().inflight.get(&id.value()) {
            Some(InFlight { state: OutState::AwaitPubcomp(_), seq, .. }) => {
                if let Some(op) = done_op(s, *seq, self.cfg.data_dir.is_some()) {
                    out.push(Action::Store(op));
                }
                let cap = s.inflight_cap;
                let only = Self::complete_flight(s.f(), id.value(), cap);
                self.pump(sid, only, out);
            }
            _ => tracing::debug!(client_id = &*s.client_id, id = id.value(), "mqtt: unexpected PUBCOMP; ignored"),
        }
    }

    fn on_subscribe(&mut self, conn: ConnId, sid: SessionId, ch: ChannelId, sub: Subscribe, out: &mut Vec<Action>) {
        // Limits first: a SUBSCRIBE that breaks one is refused whole, nothing of it applied.
        if let Some(levels) = sub.topics.iter().find_map(|(f, _)| self.too_deep(f)) {
            return self.filter_too_deep(conn, levels, out);
        }
        // A filter repeated within the SUBSCRIBE is applied once, at its last occurrence
        // (§3.8.4-3: the later replaces the earlier), so the work per packet follows its
        // distinct filters, which the limit below bounds.
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(sub.topics.len().min(1024));
        for (i, (f, _)) in sub.topics.iter().enumerate() {
            last.insert(&**f, i);
        }
        if let Some(s) = self.sessions.get(sid) {
            let max = self.cfg.max_subscriptions;
            // Filters this SUBSCRIBE adds: not yet held on this channel, nor parked (a parked
            // one is taken over, §6.2).
            let held: std::collections::HashSet<&str> =
                s.subs.iter().filter(|x| x.parked || x.channel == ch).map(|x| &*x.filter).collect();
            // (Filters the ACL refuses are answered 0x80 and not held: they do not count.)
            let acl = s.acl.as_deref();
            let new = last
                .keys()
                .filter(|f| !held.contains(*f) && acl.is_none_or(|a| a.may_subscribe(match_filter(f))))
                .count();
            if s.subs.len() + new > max {
                self.stats.limit_subscriptions += 1;
                let have = s.subs.len();
                let adding = new;
                return self.violation_as(
                    conn,
                    DisconnectReasonCode::QuotaExceeded,
                    format!(
                        "SUBSCRIBE would hold {} subscriptions (max_subscriptions {max}; {have} held, {adding} new)",
                        have + adding
                    ),
                    out,
                );
            }
        }
        let max = self.cfg.max_qos;
        let mut codes = Vec::with_capacity(sub.topics.len());
        let mut granted_all = Vec::with_capacity(sub.topics.len());
        {
            let Some(s) = self.sessions.get_mut(sid) else { return };
            // MQTT 5 §3.8.2.1.2: one identifier for every filter of the SUBSCRIBE.
            let id = sub.properties.subscription_id.map_or(0, |v| v.value());
            for (i, (filter, requested)) in sub.topics.iter().enumerate() {
                // ACL: a filter through which nothing could ever be delivered is refused with
                // 0x80 (§3.9.3), the others granted (docs/mqtt.md: mosquitto grants it and
                // drops each message instead).
                // (A shared subscription is checked for its inner filter, as mosquitto does.)
                if s.acl.as_deref().is_some_and(|a| !a.may_subscribe(match_filter(filter))) {
                    self.stats.acl_denied_subscribe += 1;
                    let n = self.stats.acl_denied_subscribe;
                    let (cid, f) = (&*s.client_id, &**filter);
                    if n.is_power_of_two() {
                        tracing::info!(
                            conn,
                            client_id = cid,
                            filter = f,
                            denied_total = n,
                            "mqtt: SUBSCRIBE denied by the ACL; 0x80 (MQTT 5: 0x87)"
                        );
                    } else {
                        tracing::debug!(conn, client_id = cid, filter = f, "mqtt: SUBSCRIBE denied by the ACL; 0x80");
                    }
                    codes.push(SubscribeReasonCode::NotAuthorized);
                    continue;
                }
                // MQTT 3.1.1 §3.8.4-6 / §3.9.3: grant at most the server's maximum.
                let granted = requested.max_qos.min(max);
                if last.get(&**filter) != Some(&i) {
                    // Replaced by a later occurrence in this packet.
                    codes.push(granted_code(granted));
                    continue;
                }
                // MQTT 5 §3.8.3.1 Retain Handling: 0 send retained messages, 1 only for a new
                // subscription, 2 never. (3.1.1: always 0.)
                let existed = s.subs.iter().any(|x| x.filter == *filter && (x.parked || x.channel == ch));
                let send_retained = match requested.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendAtSubscribeIfNotExist => !existed,
                    RetainHandling::DoNotSend => false,
                };
                // docs/mqtt-over-quic.md §6.2: a SUBSCRIBE to a parked subscription's filter
                // takes it (on a data channel: off the control channel, so nothing is delivered
                // twice; on the control channel: it is replaced, §3.8.4-3).
                let taken = s.unpark(filter);
                if taken {
                    tracing::debug!(
                        client_id = &*s.client_id,
                        channel = ch,
                        filter = &**filter,
                        "mqtt: parked subscription taken by a new SUBSCRIBE"
                    );
                }
                // §3.8.4-3: an identical filter replaces the existing subscription.
                let opts =
                    SubOpts { no_local: requested.no_local, retain_as_published: requested.retain_as_published, id };
                s.upsert_sub(ch, filter, granted, opts);
                if ch == CONTROL_CHANNEL {
                    sync_control_route(&mut self.subs, sid, s, filter);
                } else {
                    let key = SubKey { session: sid, channel: ch };
                    self.subs.insert_sub(filter, Subscriber { key, opts: qos_u8(granted) | opts.flags(), id });
                    if taken {
                        sync_control_route(&mut self.subs, sid, s, filter);
                    }
                }
                codes.push(granted_code(granted));
                // MQTT 5 §4.8.2: no retained messages for a shared subscription.
                if send_retained && !filter.is_shared() {
                    granted_all.push((filter.clone(), granted));
                }
            }
        }
        // Durable before the SUBACK (issue 18).
        if codes.iter().any(|&c| (c as u8) < 0x80) {
            self.persist_session(sid, out);
        }
        // MQTT 3.1.1 §3.8.4-1, §3.8.4-5: one SUBACK, same id, one code per filter, in order.
        out.push(Action::Send { conn, channel: ch, packet: Packet::Suback(Suback::new(sub.pid, codes)) });
        // MQTT 3.1.1 §3.3.1-6, §3.8.4-3: send the retained messages that match, RETAIN set.
        let mut retained = Vec::new();
        let ids: SubIds = sub.properties.subscription_id.map(|v| Arc::from([v.value()]));
        for (filter, granted) in granted_all {
            retained.clear();
            self.retained.matching(&filter, &mut retained);
            for m in retained.drain(..) {
                // A retained message is delivered only if the subscriber may read its topic.
                if !self.acl_allows(sid, &m.topic, Op::Read) {
                    self.denied_read(sid, &m.topic, true);
                    continue;
                }
                let qos = m.qos.min(granted);
                // §3.3.1-9 (MQTT 5 §3.3.1.3): retained messages sent at subscribe have RETAIN 1.
                self.deliver(sid, ch, qos, m, true, ids.clone(), out);
            }
        }
    }

    fn on_unsubscribe(&mut self, conn: ConnId, sid: SessionId, ch: ChannelId, u: Unsubscribe, out: &mut Vec<Action>) {
        let v5 = self.conns.get(conn).is_some_and(|c| c.v5.is_some());
        // MQTT 5 §3.11.3: a code per filter (3.1.1's UNSUBACK has none).
        let mut codes = Vec::with_capacity(if v5 { u.topics.len() } else { 0 });
        if let Some(s) = self.sessions.get_mut(sid) {
            let mut seen = std::collections::HashSet::with_capacity(u.topics.len().min(1024));
            for filter in &u.topics {
                if !seen.insert(&**filter) {
                    // Repeated in this packet: done already, nothing left to remove.
                    if v5 {
                        codes.push(UnsubscribeReasonCode::NoSubscriptionExisted);
                    }
                    continue;
                }
                // MQTT 3.1.1 §3.10.4-1: filters compared character by character. An UNSUBSCRIBE
                // on any channel also removes a parked subscription to the filter
                // (docs/mqtt-over-quic.md §6.2: the client cannot address its ended stream).
                let own = s.remove_sub(ch, filter);
                let parked = s.unpark(filter);
                if ch == CONTROL_CHANNEL || parked {
                    sync_control_route(&mut self.subs, sid, s, filter);
                }
                if own && ch != CONTROL_CHANNEL {
                    self.subs.remove(filter, SubKey { session: sid, channel: ch });
                }
                if v5 {
                    codes.push(if own || parked {
                        UnsubscribeReasonCode::Success
                    } else {
                        UnsubscribeReasonCode::NoSubscriptionExisted
                    });
                }
            }
        }
        self.persist_session(sid, out);
        // MQTT 3.1.1 §3.10.4-4, §3.10.4-5: UNSUBACK even if nothing matched.
        let ack = crate::codec::Unsuback::new(u.pid, codes);
        out.push(Action::Send { conn, channel: ch, packet: Packet::Unsuback(ack) });
    }

    /// Forward an application message to every matching subscription, and keep it if retained.
    /// Returns how many subscriptions (one per session and channel) it was delivered or queued
    /// to. `origin`: the session that published it (`None`: a will), for No Local.
    fn route(&mut self, msg: Message, origin: Option<SessionId>, out: &mut Vec<Action>) -> usize {
        self.stats.published += 1;
        if msg.retain {
            self.retain(&msg, out);
        }
        let mut matches = std::mem::take(&mut self.scratch);
        matches.clear();
        self.subs.matches(&msg.topic, &mut matches);
        if let Some(origin) = origin {
            // MQTT 5 §3.8.3-3: No Local subscriptions do not get their own session's messages.
            matches.retain(|s| s.opts & OPT_NO_LOCAL == 0 || s.key.session != origin);
        }
        if matches.len() > 1 {
            // MQTT 3.1.1 §3.3.5, MQTT 5 §3.3.4: overlapping subscriptions of one client (here:
            // one channel) deliver once, at the highest QoS granted among them.
            matches.sort_unstable_by(|a, b| a.key.cmp(&b.key).then(b.qos().cmp(&a.qos())));
        }
        let mut routed = 0;
        let mut i = 0;
        while i < matches.len() {
            let first = matches[i];
            let end = i + matches[i..].iter().take_while(|s| s.key == first.key).count();
            let group = &matches[i..end];
            i = end;
            // ACL: each delivery is checked for read, as mosquitto does.
            if self.cfg.acl.is_some() && !self.acl_allows(first.key.session, &msg.topic, Op::Read) {
                self.denied_read(first.key.session, &msg.topic, false);
                continue;
            }
            routed += 1;
            // MQTT 3.1.1 §3.8.4: deliver at min(granted, published).
            let qos = qos_from(first.qos()).min(msg.qos);
            // §3.3.1-9: RETAIN 0 when forwarding to an established subscription, unless (MQTT 5
            // §3.3.1-13) a matching subscription asked for Retain As Published.
            let retain = msg.retain && group.iter().any(|s| s.opts & OPT_RETAIN_AS_PUBLISHED != 0);
            // MQTT 5 §3.3.4-3: the identifiers of every matching subscription that has one.
            let ids: SubIds = if group.iter().all(|s| s.id == 0) {
                None
            } else {
                let mut v: Vec<u32> = group.iter().map(|s| s.id).filter(|&id| id != 0).collect();
                v.sort_unstable();
                v.dedup();
                Some(v.into())
            };
            self.deliver(first.key.session, first.key.channel, qos, msg.clone(), retain, ids, out);
        }
        // MQTT 5 §4.8.2: each matching group of shared subscriptions gets one copy, apart
        // from the plain subscriptions (a client with both gets both).
        matches.clear();
        let sessions = &self.sessions;
        let online = |k: SubKey| sessions.get(k.session).is_some_and(|s| s.conn.is_some());
        self.subs.pick_shared(&msg.topic, online, &mut matches);
        for m in &matches {
            if self.cfg.acl.is_some() && !self.acl_allows(m.key.session, &msg.topic, Op::Read) {
                self.denied_read(m.key.session, &msg.topic, false);
                continue;
            }
            routed += 1;
            let qos = qos_from(m.qos()).min(msg.qos);
            let retain = msg.retain && m.opts & OPT_RETAIN_AS_PUBLISHED != 0;
            let ids: SubIds = (m.id != 0).then(|| Arc::from([m.id]));
            self.deliver(m.key.session, m.key.channel, qos, msg.clone(), retain, ids, out);
        }
        self.scratch = matches;
        routed
    }

    /// Store, replace or clear the retained message of `msg`'s topic, within `max_retained`
    /// topics and `max_retained_bytes`.
    fn retain(&mut self, msg: &Message, out: &mut Vec<Action>) {
        let size = Message::size;
        let persist = self.cfg.data_dir.is_some();
        if msg.payload.is_empty() {
            // MQTT 3.1.1 §3.3.1-10, §3.3.1-11: an empty retained message clears the topic and
            // is not stored.
            if let Some(old) = self.retained.clear(&msg.topic) {
                self.retained_bytes -= size(&old);
                if persist {
                    out.push(Action::Store(StoreOp::Unretain(msg.topic.clone())));
                }
            }
            return;
        }
        let old = self.retained.get(&msg.topic).map(size);
        let bytes = self.retained_bytes - old.unwrap_or(0) + size(msg);
        let room = old.is_some() || self.retained.len() < self.cfg.max_retained;
        if room && bytes <= self.cfg.max_retained_bytes {
            // MQTT 3.1.1 §3.3.1-5, §3.3.1-7: store (replace), whatever its QoS.
            self.retained.set(&msg.topic, msg.clone());
            self.retained_bytes = bytes;
            if persist {
                out.push(Action::Store(StoreOp::Retain(msg.clone())));
            }
        } else {
            self.stats.dropped_retained += 1;
            let n = self.stats.dropped_retained;
            if n.is_power_of_two() {
                tracing::warn!(
                    topic = &*msg.topic,
                    dropped_total = n,
                    "mqtt: retained store full (max_retained {} topics, max_retained_bytes {}); message delivered \
                     but not retained",
                    self.cfg.max_retained,
                    self.cfg.max_retained_bytes
                );
            }
        }
    }

    /// Send `msg` to session `sid` on `ch` at `qos` now if possible, else keep it queued on
    /// `ch`'s lane.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        sid: SessionId,
        ch: ChannelId,
        qos: QoS,
        msg: Message,
        retain: bool,
        ids: SubIds,
        out: &mut Vec<Action>,
    ) {
        let max_inflight = self.cfg.max_inflight;
        let now = self.now;
        let Some(s) = self.sessions.get_mut(sid) else { return };
        if s.conn.is_some() && Self::undeliverable(&mut self.stats, &s.client_id, s.max_packet, &msg, retain, &ids, now)
        {
            return;
        }
        match (s.conn, qos) {
            (Some(conn), QoS::Level0) => {
                self.stats.delivered += 1;
                let mut packet = publish_packet(&msg, QosPid::Level0, retain, false, now, &ids);
                alias_outbound(&mut self.conns, conn, ch, &mut packet);
                out.push(Action::Send { conn, channel: ch, packet });
            }
            (None, QoS::Level0) if !self.cfg.queue_qos0_offline => {}
            (Some(conn), _) if Self::has_room(s.fr(), ch, max_inflight, s.inflight_cap) => {
                self.stats.delivered += 1;
                let (mut packet, id) = Self::start_flight(s.f(), ch, qos, msg, retain, ids, now);
                if let Some(op) = flight_op(s, id, self.cfg.data_dir.is_some()) {
                    out.push(Action::Store(op));
                }
                alias_outbound(&mut self.conns, conn, ch, &mut packet);
                out.push(Action::Send { conn, channel: ch, packet });
            }
            _ => self.enqueue(sid, ch, qos, retain, ids, msg, out),
        }
    }

    /// Whether a QoS 1/2 delivery on `ch` may go in flight now: nothing waits before it on `ch`,
    /// `ch` has fewer than `max_inflight` in flight (the window is per channel,
    /// docs/mqtt-over-quic.md §6.12: another channel's full window is no reason to wait), and
    /// the session is below `cap` in flight (packet identifiers, the client's Receive Maximum).
    fn has_room(f: &Flows, ch: ChannelId, max_inflight: usize, cap: usize) -> bool {
        f.inflight.len() < cap && f.lane(ch).is_none_or(|l| l.queue.is_empty() && (l.inflight as usize) < max_inflight)
    }

    /// Allocate an id and record the flight on `ch`; returns the PUBLISH to send and the id.
    fn start_flight(
        f: &mut Flows,
        ch: ChannelId,
        qos: QoS,
        msg: Message,
        retain: bool,
        ids: SubIds,
        now: Option<Instant>,
    ) -> (Packet, u16) {
        let id = f.alloc_pid();
        let seq = f.next_seq();
        let (qos_pid, state) = if qos == QoS::Level1 {
            (QosPid::Level1(pid(id)), OutState::AwaitPuback(msg.clone()))
        } else {
            (QosPid::Level2(pid(id)), OutState::AwaitPubrec(msg.clone()))
        };
        let packet = publish_packet(&msg, qos_pid, retain, false, now, &ids);
        f.begin_flight(id, InFlight { seq, channel: ch, retain, ids, state });
        (packet, id)
    }

    /// Whether `msg` cannot go to session `s` now: its Message Expiry Interval has passed (MQTT
    /// 5 §3.3.2-5), or its PUBLISH would exceed the client's Maximum Packet Size (§3.1.2-25:
    /// discarded as if sent). Counted.
    fn undeliverable(
        stats: &mut CoreStats,
        client_id: &str,
        max_packet: Option<u32>,
        msg: &Message,
        retain: bool,
        ids: &SubIds,
        now: Option<Instant>,
    ) -> bool {
        if now.is_some_and(|n| msg.expired(n)) {
            stats.expired_messages += 1;
            return true;
        }
        let Some(max) = max_packet else { return false };
        // The PUBLISH as it would go, with a packet id and 3 bytes for a Topic Alias the
        // broker may add: never more than the client allows, sometimes a few bytes less.
        let probe = publish_packet(msg, QosPid::Level1(pid(1)), retain, false, now, ids);
        let size = crate::codec::wire_len_hint(&probe, Version::V5) + 3;
        if size <= max as usize {
            return false;
        }
        stats.dropped_too_large += 1;
        let n = stats.dropped_too_large;
        if n.is_power_of_two() {
            tracing::info!(
                client_id,
                topic = &*msg.topic,
                size,
                max,
                dropped_total = n,
                "mqtt: PUBLISH larger than the client's Maximum Packet Size; not sent (MQTT 5 §3.1.2-25)"
            );
        }
        true
    }

    /// The outbound flow `id` is complete (PUBACK, PUBCOMP): forget it. Returns the lane to
    /// pump: the flight's own channel, whose window now has a free slot; `None` (all lanes) if
    /// the session had run out of identifiers, since every lane may have been waiting for one.
    fn complete_flight(f: &mut Flows, id: u16, cap: usize) -> Option<ChannelId> {
        let capped = f.inflight.len() >= cap;
        let ch = f.end_flight(id);
        if capped {
            None
        } else {
            ch
        }
    }

    /// Keep a delivery for `ch` in the session, within `max_queued_messages`, a bound on the
    /// session's total over all its channels (docs/mqtt-over-quic.md §6.13). When full, one
    /// delivery goes: the oldest queued QoS 0 message of the whole session; with none, the
    /// newest queued one of the channel with the longest queue, the new message counted on
    /// `ch` (ties go against `ch`): over one channel that refuses the new message, and a
    /// stalled channel cannot take the whole bound from the others. Every loss is counted and
    /// logged.
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &mut self,
        sid: SessionId,
        ch: ChannelId,
        qos: QoS,
        retain: bool,
        ids: SubIds,
        msg: Message,
        out: &mut Vec<Action>,
    ) {
        let cap = self.cfg.max_queued_messages;
        let persist = self.cfg.data_dir.is_some();
        let Some(s) = self.sessions.get_mut(sid) else { return };
        let f = s.f();
        let q = Queued { seq: f.next_seq(), qos, retain, ids, msg };
        if f.queued >= cap {
            let victim = Self::victim(f, ch);
            let lost = match victim {
                Some((i, at)) => match f.take_queued(i, at) {
                    Some(old) => old,
                    None => return,
                },
                None => q.clone(),
            };
            let lost_ch = victim.map_or(ch, |(i, _)| f.lanes[i].channel);
            f.tidy();
            if victim.is_some() && lost.qos != QoS::Level0 {
                if let Some(op) = done_op(s, lost.seq, persist) {
                    out.push(Action::Store(op));
                }
            }
            s.dropped += 1;
            self.stats.dropped_queue_full += 1;
            tracing::warn!(
                client_id = &*s.client_id,
                channel = lost_ch,
                topic = &*lost.msg.topic,
                qos = lost.qos as u8,
                dropped_total = s.dropped,
                "mqtt: session queue full ({cap} messages); message dropped"
            );
            if victim.is_none() || cap == 0 {
                s.shrink();
                return;
            }
        }
        // QoS 0 deliveries queued for an offline session are not stored (docs/mqtt.md).
        if q.qos != QoS::Level0 && persist && !s.clean {
            let op = StoreOp::Outbound {
                client_id: s.client_id.clone(),
                seq: q.seq,
                stage: OutStage::Queued(q.qos),
                retain: q.retain,
                msg: q.msg.clone(),
            };
            out.push(Action::Store(op));
        }
        s.f().push_queued(ch, q);
    }

    /// The queued delivery a full session gives up for a new one on `ch` (see
    /// [`BrokerCore::enqueue`]): `(lane index, position)`, or `None` for the new one itself.
    fn victim(f: &Flows, ch: ChannelId) -> Option<(usize, usize)> {
        if f.queued_qos0 > 0 {
            let mut oldest: Option<(u64, usize, usize)> = None;
            for (i, l) in f.lanes.iter().enumerate().filter(|(_, l)| l.qos0 > 0) {
                if let Some(at) = l.queue.iter().position(|q| q.qos == QoS::Level0) {
                    let seq = l.queue[at].seq;
                    if oldest.is_none_or(|(s, ..)| seq < s) {
                        oldest = Some((seq, i, at));
                    }
                }
            }
            if let Some((_, i, at)) = oldest {
                return Some((i, at));
            }
        }
        let own = f.lane(ch).map_or(0, |l| l.queue.len()) + 1;
        let (i, longest) = f.lanes.iter().enumerate().max_by_key(|(_, l)| l.queue.len())?;
        (longest.queue.len() > own).then(|| (i, longest.queue.len() - 1))
    }

    /// Move queued deliveries into flight while the session is online: on `only`'s lane (an
    /// acknowledgement freed a slot of its window), or on every lane (`None`). Each lane sends
    /// from the front of its queue while its own window has room (QoS 0 needs no slot); a full
    /// lane stops only itself (docs/mqtt-over-quic.md §6.12).
    fn pump(&mut self, sid: SessionId, only: Option<ChannelId>, out: &mut Vec<Action>) {
        let max_inflight = self.cfg.max_inflight;
        let persist = self.cfg.data_dir.is_some();
        let now = self.now;
        let Some(s) = self.sessions.get_mut(sid) else { return };
        let Some(conn) = s.conn else { return };
        let (clean, client_id, cap) = (s.clean, s.client_id.clone(), s.inflight_cap);
        let max_packet = s.max_packet;
        if s.fr().queued > 0 {
            let f = s.f();
            let lanes = match only {
                Some(ch) => match f.lanes.binary_search_by_key(&ch, |l| l.channel) {
                    Ok(i) => i..i + 1,
                    Err(_) => 0..0,
                },
                None => 0..f.lanes.len(),
            };
            // Lanes are neither added nor removed in this loop (start_flight finds the lane it
            // sends on), so the indices hold; the idle ones are dropped afterwards.
            for i in lanes.clone() {
                let ch = f.lanes[i].channel;
                loop {
                    let lane = &f.lanes[i];
                    let Some(front) = lane.queue.front() else { break };
                    if front.qos != QoS::Level0 && ((lane.inflight as usize) >= max_inflight || f.inflight.len() >= cap)
                    {
                        break;
                    }
                    let Some(q) = f.take_queued(i, 0) else { break };
                    // Expired or too large for the client: dropped here, at the front (checked as
                    // it would go, so a queue is not rescanned per acknowledgement).
                    if Self::undeliverable(&mut self.stats, &client_id, max_packet, &q.msg, q.retain, &q.ids, now) {
                        if persist && !clean && q.qos != QoS::Level0 {
                            out.push(Action::Store(StoreOp::OutboundDone { client_id: client_id.clone(), seq: q.seq }));
                        }
                        continue;
                    }
                    self.stats.delivered += 1;
                    let packet = if q.qos == QoS::Level0 {
                        publish_packet(&q.msg, QosPid::Level0, q.retain, false, now, &q.ids)
                    } else {
                        // Queued (under its old sequence number) → in flight (a new one).
                        if persist && !clean {
                            out.push(Action::Store(StoreOp::OutboundDone { client_id: client_id.clone(), seq: q.seq }));
                        }
                        let (packet, id) = Self::start_flight(f, ch, q.qos, q.msg, q.retain, q.ids, now);
                        if let Some(op) = (persist && !clean).then(|| flows_flight_op(f, &client_id, id)).flatten() {
                            out.push(Action::Store(op));
                        }
                        packet
                    };
                    let mut packet = packet;
                    alias_outbound(&mut self.conns, conn, ch, &mut packet);
                    out.push(Action::Send { conn, channel: ch, packet });
                }
            }
            match only {
                // An acknowledgement's pump touches its own lane only.
                Some(_) => {
                    if let Some(i) = lanes.last() {
                        f.tidy_lane(i);
                    }
                }
                None => f.tidy(),
            }
        }
        s.shrink();
    }
}

/// A session as seen from outside (tests, statistics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub online: bool,
    pub clean: bool,
    /// Subscriptions (explicit and parked; an explicit and a parked one to the same filter on
    /// the control channel count as two).
    pub subscriptions: usize,
    /// Of those, parked on the control channel (docs/mqtt-over-quic.md §6.2, §6.6).
    pub parked: usize,
    /// Deliveries waiting, all channels together (bounded by `max_queued_messages`).
    pub queued: usize,
    /// Outbound QoS 1/2 messages in flight, all channels together (at most `max_inflight` per
    /// channel, more on a channel that received another's, docs/mqtt-over-quic.md §6.12).
    pub inflight: usize,
    pub awaiting_rel: usize,
    pub dropped: u64,
    /// The certificate identity (subject CN) of the session's current connection, when its
    /// transport verified a client certificate ([`BrokerCore::set_cert_identity`]).
    pub identity: Option<String>,
}

#[cfg(test)]
#[path = "broker_tests.rs"]
mod tests;
