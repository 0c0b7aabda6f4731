//! Session state (MQTT 3.1.1 §4.1): what the broker keeps per client id, online or offline.
//!
//! Outbound packet identifiers are allocated per session and are unique across all of its
//! channels; inbound QoS 2 flows are keyed by (channel, packet id), so a client that numbers its
//! packets per stream is served correctly. Outbound in-flight windows and queues of waiting
//! deliveries are per channel (`Lane`, docs/mqtt-over-quic.md §6.12), inside the session's
//! `Flows`, which exist only while the session has any.
//!
//! A subscription whose data stream has ended, or whose session resumed on a new connection, is
//! *parked* on the control channel (docs/mqtt-over-quic.md §6): it still delivers, there, until
//! a data stream subscribes to the same filter again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::acl::ClientAcl;
use crate::codec::{MessageProps, QoS, TopicFilter, TopicName};
use crate::slab::{SlabKey, Slot};
use crate::{ChannelId, ConnId, CONTROL_CHANNEL};

/// An application message as the broker stores and forwards it, independent of protocol
/// version and of the packet it arrived in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: TopicName,
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: QoS,
    /// The RETAIN flag it was published with.
    pub retain: bool,
    /// The MQTT 5 properties forwarded with it (content type, response topic, correlation
    /// data, user properties, payload format), shared by all its deliveries; `None` for a
    /// 3.1.1 message.
    pub props: Option<Arc<MessageProps>>,
    /// When it expires (MQTT 5 Message Expiry Interval, §3.3.2.3.3): not delivered after it,
    /// and delivered with what is left of the interval. `None`: never.
    pub expires_at: Option<std::time::Instant>,
}

impl Message {
    /// A message without MQTT 5 properties that never expires.
    pub fn new(topic: TopicName, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message { topic, payload, qos, retain, props: None, expires_at: None }
    }

    /// With a Message Expiry Interval of `secs` from `now` (MQTT 5 §3.3.2.3.3).
    pub fn with_expiry(mut self, secs: Option<u32>, now: Option<std::time::Instant>) -> Message {
        self.expires_at = secs.zip(now).map(|(s, n)| n + std::time::Duration::from_secs(u64::from(s)));
        self
    }

    /// What it costs against the byte bounds (`max_retained_bytes`, `max_awaiting_rel_bytes`):
    /// topic, payload and MQTT 5 properties.
    pub fn size(&self) -> usize {
        self.topic.len() + self.payload.len() + self.props.as_deref().map_or(0, MessageProps::cost)
    }

    /// Whether it has expired at `now`.
    pub fn expired(&self, now: std::time::Instant) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }
}

/// A client's will (MQTT 3.1.1 §3.1.2.5, MQTT 5 §3.1.3.2): the message, and the two MQTT 5
/// intervals that start when the connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Will {
    pub msg: Message,
    /// Will Delay Interval, seconds (0: published at once).
    pub delay: u32,
    /// Message Expiry Interval, seconds, counted from when the will is published.
    pub expiry: Option<u32>,
}

/// Where an outbound QoS 1/2 message is in its flow.
#[derive(Debug, Clone)]
#[allow(clippy::enum_variant_names)]
pub(crate) enum OutState {
    /// QoS 1 sent, waiting for PUBACK.
    AwaitPuback(Message),
    /// QoS 2 sent, waiting for PUBREC.
    AwaitPubrec(Message),
    /// PUBREL sent, waiting for PUBCOMP. Only the topic is kept: it picks the channel the
    /// PUBREL is re-sent on if its channel ends (docs/mqtt-over-quic.md §6.3).
    AwaitPubcomp(TopicName),
}

/// One outbound message in flight.
#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    /// Order of first transmission: retransmission on reconnect keeps it (§4.6).
    pub seq: u64,
    pub channel: ChannelId,
    /// The RETAIN flag of the PUBLISH as sent.
    pub retain: bool,
    /// The MQTT 5 Subscription Identifiers the PUBLISH carries (sent again with it).
    pub ids: SubIds,
    pub state: OutState,
}

/// The Subscription Identifiers of one delivery (MQTT 5 §3.3.4): `None` for none, the common
/// case, which costs one word.
pub(crate) type SubIds = Option<Arc<[u32]>>;

/// A delivery waiting for an in-flight slot on its channel or for the client to come back.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    /// Order in which the session took the delivery (shared counter with [`InFlight::seq`]).
    /// When a channel's queue moves into another's (docs/mqtt-over-quic.md §6.3, §6.6) the two
    /// are merged by it, so each topic's messages keep their order.
    pub seq: u64,
    /// QoS of the delivery: min(granted, published) (§3.8.4).
    pub qos: QoS,
    pub retain: bool,
    pub ids: SubIds,
    pub msg: Message,
}

/// The outbound side of one channel (docs/mqtt-over-quic.md §6.12, head-of-line independence):
/// how many of the session's in-flight messages travel on it, and the deliveries waiting for
/// its window. Exists only while it has either.
///
/// Why per-channel queues rather than one session queue plus per-channel counts: with one queue,
/// moving waiting messages of a channel with room would mean skipping past those of full
/// channels, a rescan of the queue on every acknowledgement while one channel is stalled. Here
/// an acknowledgement pumps the front of its own channel's queue and touches nothing else.
#[derive(Debug)]
pub(crate) struct Lane {
    pub channel: ChannelId,
    /// Entries of [`Flows::inflight`] whose `channel` is this one (may exceed the window after
    /// in-flight messages moved here, §6.3).
    pub inflight: u32,
    /// QoS 0 deliveries in `queue`.
    pub qos0: u32,
    /// In `seq` order.
    pub queue: VecDeque<Queued>,
}

impl Lane {
    fn new(channel: ChannelId) -> Lane {
        Lane { channel, inflight: 0, qos0: 0, queue: VecDeque::new() }
    }

    pub fn is_idle(&self) -> bool {
        self.inflight == 0 && self.queue.is_empty()
    }
}

/// The message flows of a session: allocated while it has any, freed when it has none, so an
/// idle session is small.
#[derive(Debug, Default)]
pub(crate) struct Flows {
    pub next_pid: u16,
    /// Sequence of [`InFlight::seq`] and [`Queued::seq`].
    pub next_seq: u64,
    /// Outbound QoS 1/2 messages in flight, all channels: identifiers are per session (§2.6).
    pub inflight: HashMap<u16, InFlight>,
    /// One [`Lane`] per channel with outbound flows, sorted by channel. A few per connection
    /// (one over TCP): a sorted vector is smaller than a map and as fast.
    pub lanes: Vec<Lane>,
    /// Queued deliveries, all lanes (bounded by `max_queued_messages`).
    pub queued: usize,
    /// Of those, QoS 0.
    pub queued_qos0: usize,
    /// Inbound QoS 2 messages received and PUBREC'd, delivered on PUBREL (§4.3.3, method B).
    pub awaiting_rel: HashMap<(ChannelId, u16), Message>,
}

impl Flows {
    fn is_idle(&self) -> bool {
        self.inflight.is_empty() && self.queued == 0 && self.awaiting_rel.is_empty()
    }

    /// A packet identifier not in use by any in-flight message of this session, on any channel
    /// (MQTT 3.1.1 §2.3.1-2). The caller keeps `inflight` below 65,535 entries.
    pub fn alloc_pid(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1);
            if self.next_pid != 0 && !self.inflight.contains_key(&self.next_pid) {
                return self.next_pid;
            }
        }
    }

    /// The next value of the session's sequence.
    pub fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// The lane of `ch`, if it has one.
    pub fn lane(&self, ch: ChannelId) -> Option<&Lane> {
        self.lanes.binary_search_by_key(&ch, |l| l.channel).ok().map(|i| &self.lanes[i])
    }

    /// The index of `ch`'s lane, created if needed.
    pub fn lane_index(&mut self, ch: ChannelId) -> usize {
        match self.lanes.binary_search_by_key(&ch, |l| l.channel) {
            Ok(i) => i,
            Err(i) => {
                self.lanes.insert(i, Lane::new(ch));
                i
            }
        }
    }

    /// Record `fl` in flight under `id` and count it on its channel's lane.
    pub fn begin_flight(&mut self, id: u16, fl: InFlight) {
        let i = self.lane_index(fl.channel);
        self.lanes[i].inflight += 1;
        self.inflight.insert(id, fl);
    }

    /// The flight `id` is complete: forget it; returns its channel.
    pub fn end_flight(&mut self, id: u16) -> Option<ChannelId> {
        let fl = self.inflight.remove(&id)?;
        if let Ok(i) = self.lanes.binary_search_by_key(&fl.channel, |l| l.channel) {
            let lane = &mut self.lanes[i];
            lane.inflight -= 1;
            if lane.is_idle() {
                self.lanes.remove(i);
            }
        }
        Some(fl.channel)
    }

    /// Queue `q` at the back of `ch`'s lane (the caller enforces the session's bound).
    pub fn push_queued(&mut self, ch: ChannelId, q: Queued) {
        let i = self.lane_index(ch);
        let lane = &mut self.lanes[i];
        if q.qos == QoS::Level0 {
            lane.qos0 += 1;
            self.queued_qos0 += 1;
        }
        lane.queue.push_back(q);
        self.queued += 1;
    }

    /// Take the queued delivery at `at` of lane `i` (the lane is kept even if it empties).
    pub fn take_queued(&mut self, i: usize, at: usize) -> Option<Queued> {
        let lane = &mut self.lanes[i];
        let q = lane.queue.remove(at)?;
        if q.qos == QoS::Level0 {
            lane.qos0 -= 1;
            self.queued_qos0 -= 1;
        }
        self.queued -= 1;
        Some(q)
    }

    /// Add `moved` (in `seq` order) to `ch`'s queue, merged with what waits there by `seq`.
    pub fn merge_queued(&mut self, ch: ChannelId, moved: Vec<Queued>) {
        let Some(first) = moved.first().map(|q| q.seq) else { return };
        let qos0 = moved.iter().filter(|q| q.qos == QoS::Level0).count();
        self.queued += moved.len();
        self.queued_qos0 += qos0;
        let i = self.lane_index(ch);
        let lane = &mut self.lanes[i];
        lane.qos0 += qos0 as u32;
        if lane.queue.back().is_none_or(|b| b.seq < first) {
            lane.queue.extend(moved);
        } else {
            let mut all: Vec<Queued> = lane.queue.drain(..).chain(moved).collect();
            all.sort_by_key(|q| q.seq);
            lane.queue = all.into();
        }
    }

    /// [`Flows::tidy`] for lane `i` alone.
    pub fn tidy_lane(&mut self, i: usize) {
        let Some(l) = self.lanes.get_mut(i) else { return };
        if l.queue.is_empty() && l.queue.capacity() > 0 {
            l.queue = VecDeque::new();
        }
        if l.is_idle() {
            self.lanes.remove(i);
        }
    }

    /// Drop lanes with nothing in flight and nothing queued; give back empty queues' memory.
    pub fn tidy(&mut self) {
        self.lanes.retain_mut(|l| {
            if l.queue.is_empty() && l.queue.capacity() > 0 {
                l.queue = VecDeque::new();
            }
            !l.is_idle()
        });
        if self.lanes.is_empty() && self.lanes.capacity() > 0 {
            self.lanes = Vec::new();
        }
    }
}

/// Outbound QoS 1/2 messages in flight per session, all channels together: the window is per
/// channel (docs/mqtt-over-quic.md §6.12), but packet identifiers are per session (§2.6) and
/// there are 65,535 of them. Beyond this, deliveries wait in their channel's queue.
pub(crate) const MAX_SESSION_INFLIGHT: usize = 65_000;

static NO_FLOWS: std::sync::OnceLock<Flows> = std::sync::OnceLock::new();

/// One subscription of a session.
#[derive(Debug, Clone)]
pub(crate) struct Sub {
    /// The channel its deliveries travel on: the SUBSCRIBE's, or the control channel when parked.
    pub channel: ChannelId,
    pub filter: TopicFilter,
    /// The granted QoS.
    pub qos: QoS,
    /// Its MQTT 5 options beyond the QoS.
    pub opts: SubOpts,
    /// Parked (docs/mqtt-over-quic.md §6.2, §6.6): made on a data stream that has ended, or on an
    /// earlier connection of a resumed session. Always on [`CONTROL_CHANNEL`]. It may sit beside
    /// an explicit control-channel subscription to the same filter: the two deliver once, at the
    /// higher QoS (one trie entry), and each goes away by its own rules.
    pub parked: bool,
}

/// The MQTT 5 options of a subscription beyond its QoS (§3.8.3.1, §3.8.2.1.2); all off for
/// 3.1.1. (Retain Handling acts once, at SUBSCRIBE, and is not kept.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SubOpts {
    /// No Local: not delivered the messages its own session publishes.
    pub no_local: bool,
    /// Retain As Published: forwarded with the RETAIN flag it was published with.
    pub retain_as_published: bool,
    /// Subscription Identifier; 0: none.
    pub id: u32,
}

/// No Local in a SUBSCRIBE's options byte (MQTT 5 §3.8.3.1), as the trie and the store keep it.
pub(crate) const OPT_NO_LOCAL: u8 = 0x04;
/// Retain As Published in the options byte.
pub(crate) const OPT_RETAIN_AS_PUBLISHED: u8 = 0x08;

impl SubOpts {
    /// The options byte bits of these (the QoS, bits 0-1, is added by the caller).
    pub fn flags(&self) -> u8 {
        (if self.no_local { OPT_NO_LOCAL } else { 0 })
            | (if self.retain_as_published { OPT_RETAIN_AS_PUBLISHED } else { 0 })
    }

    /// The options of an options byte `o` (its QoS bits are the caller's), with identifier `id`.
    pub fn from_byte(o: u8, id: u32) -> SubOpts {
        SubOpts { no_local: o & OPT_NO_LOCAL != 0, retain_as_published: o & OPT_RETAIN_AS_PUBLISHED != 0, id }
    }
}

#[derive(Debug)]
pub(crate) struct Session {
    pub client_id: Arc<str>,
    /// The session ends with its connection: 3.1.1 clean session 1 (§3.1.2.4), MQTT 5 Session
    /// Expiry Interval 0 (§3.1.2.11.2).
    pub clean: bool,
    /// MQTT 5 Session Expiry Interval, seconds (§3.1.2.11.2): how long the session outlives its
    /// connection. 0 with `clean`; `u32::MAX` (never expires) for 3.1.1 clean session 0.
    pub expiry: u32,
    /// While offline with a finite expiry: when the session ends.
    pub expires_at: Option<std::time::Instant>,
    /// While offline: a will waiting for its Will Delay Interval (§3.1.3.2.2), and when it is
    /// due. Dropped if the client comes back first.
    pub delayed_will: Option<(std::time::Instant, Box<Will>)>,
    /// The deadline this session has in the core's session timer heap, if any (at most one
    /// entry counts, so a client that comes and goes does not grow the heap).
    pub timer_armed: Option<std::time::Instant>,
    /// Its state is in the store (a `StoreOp::Session` was emitted and no `DropSession` since).
    pub stored: bool,
    /// Outbound QoS 1/2 messages in flight at most, all channels: the client's MQTT 5 Receive
    /// Maximum (§3.3.4-7), within the packet identifiers there are.
    pub inflight_cap: usize,
    /// The client's MQTT 5 Maximum Packet Size (§3.1.2.11.4): a PUBLISH larger than this is
    /// not sent to it (§3.1.2-25).
    pub max_packet: Option<u32>,
    /// The connection it is attached to.
    pub conn: Option<ConnId>,
    /// Its subscriptions, explicit and parked. A few per client: a vector is smaller than a map
    /// and as fast.
    pub subs: Vec<Sub>,
    flows: Option<Box<Flows>>,
    /// Messages this session could not keep.
    pub dropped: u64,
    /// The ACL rules of the client that last connected with it (`None`: no ACL file).
    pub acl: Option<Arc<ClientAcl>>,
}

impl Session {
    pub fn new(client_id: Arc<str>, clean: bool) -> Session {
        Session {
            client_id,
            clean,
            expiry: if clean { 0 } else { u32::MAX },
            expires_at: None,
            delayed_will: None,
            timer_armed: None,
            stored: false,
            inflight_cap: MAX_SESSION_INFLIGHT,
            max_packet: None,
            conn: None,
            subs: Vec::new(),
            flows: None,
            dropped: 0,
            acl: None,
        }
    }

    /// The flows, for reading (empty when there are none).
    pub fn fr(&self) -> &Flows {
        match &self.flows {
            Some(f) => f,
            None => NO_FLOWS.get_or_init(Flows::default),
        }
    }

    /// The flows, for changing (allocated on first use).
    pub fn f(&mut self) -> &mut Flows {
        self.flows.get_or_insert_with(Default::default)
    }

    /// Whether any flow state exists.
    pub fn has_flows(&self) -> bool {
        self.flows.is_some()
    }

    /// Add or replace (§3.8.4-3) the explicit subscription to `filter` on `ch`.
    pub fn upsert_sub(&mut self, ch: ChannelId, filter: &TopicFilter, qos: QoS, opts: SubOpts) {
        match self.subs.iter_mut().find(|s| !s.parked && s.channel == ch && s.filter == *filter) {
            Some(s) => {
                s.qos = qos;
                s.opts = opts;
            }
            None => self.subs.push(Sub { channel: ch, filter: filter.clone(), qos, opts, parked: false }),
        }
    }

    /// Remove the explicit subscription to `filter` on `ch`; true if it existed.
    pub fn remove_sub(&mut self, ch: ChannelId, filter: &TopicFilter) -> bool {
        self.remove_where(|s| !s.parked && s.channel == ch && s.filter == *filter)
    }

    /// Park a subscription to `filter` at `qos` on the control channel; a parked one to the same
    /// filter is kept once, at the higher QoS, with the options of the latest.
    pub fn park(&mut self, filter: &TopicFilter, qos: QoS, opts: SubOpts) {
        match self.subs.iter_mut().find(|s| s.parked && s.filter == *filter) {
            Some(s) => {
                s.qos = s.qos.max(qos);
                s.opts = opts;
            }
            None => self.subs.push(Sub { channel: CONTROL_CHANNEL, filter: filter.clone(), qos, opts, parked: true }),
        }
    }

    /// Remove the parked subscription to `filter`; true if there was one.
    pub fn unpark(&mut self, filter: &TopicFilter) -> bool {
        self.remove_where(|s| s.parked && s.filter == *filter)
    }

    /// What the control channel's route for `filter` carries: the highest QoS of its explicit
    /// and parked subscriptions to it, and the options of the explicit one if there is one;
    /// `None` without either.
    pub fn control_route(&self, filter: &TopicFilter) -> Option<(QoS, SubOpts)> {
        let on = || self.subs.iter().filter(|s| s.channel == CONTROL_CHANNEL && s.filter == *filter);
        let qos = on().map(|s| s.qos).max()?;
        let opts = on().find(|s| !s.parked).or_else(|| on().next()).map(|s| s.opts).unwrap_or_default();
        Some((qos, opts))
    }

    /// How many subscriptions are parked.
    pub fn parked(&self) -> usize {
        self.subs.iter().filter(|s| s.parked).count()
    }

    fn remove_where(&mut self, pred: impl Fn(&Sub) -> bool) -> bool {
        match self.subs.iter().position(pred) {
            Some(i) => {
                self.subs.swap_remove(i);
                if self.subs.is_empty() {
                    self.subs = Vec::new();
                }
                true
            }
            None => false,
        }
    }

    /// The next deadline of the session while offline: its delayed will or its expiry.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        match (self.delayed_will.as_ref().map(|(at, _)| *at), self.expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Give back the flows' memory once they are all empty (an idle session keeps nothing).
    pub fn shrink(&mut self) {
        if self.flows.as_ref().is_some_and(|f| f.is_idle()) {
            self.flows = None;
        }
    }
}

/// Stable handle of a session: a key of the core's session slab, so a stale handle never
/// reaches a new session that reused the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SessionId(Slot);

impl SlabKey for SessionId {
    fn from_slot(slot: Slot) -> SessionId {
        SessionId(slot)
    }

    fn slot(self) -> Slot {
        self.0
    }
}
