//! Session state (MQTT 3.1.1 §4.1): what the broker keeps per client id, online or offline.
//!
//! Outbound packet identifiers are allocated per session and are unique across all of its
//! channels; inbound QoS 2 flows are keyed by (channel, packet id), so a client that numbers its
//! packets per stream is served correctly.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::codec::{QoS, TopicFilter, TopicName};
use super::{ChannelId, ConnId};

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
}

/// Where an outbound QoS 1/2 message is in its flow.
#[derive(Debug, Clone)]
pub(crate) enum OutState {
    /// QoS 1 sent, waiting for PUBACK.
    AwaitPuback(Message),
    /// QoS 2 sent, waiting for PUBREC.
    AwaitPubrec(Message),
    /// PUBREL sent, waiting for PUBCOMP (the message itself is no longer needed).
    AwaitPubcomp,
}

/// One outbound message in flight.
#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    /// Order of first transmission: retransmission on reconnect keeps it (§4.6).
    pub seq: u64,
    pub channel: ChannelId,
    /// The RETAIN flag of the PUBLISH as sent.
    pub retain: bool,
    pub state: OutState,
}

/// A delivery waiting for an in-flight slot or for the client to come back.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    pub channel: ChannelId,
    /// QoS of the delivery: min(granted, published) (§3.8.4).
    pub qos: QoS,
    pub retain: bool,
    pub msg: Message,
}

#[derive(Debug)]
pub(crate) struct Session {
    pub client_id: Arc<str>,
    /// Clean session 1: the session ends with its connection (§3.1.2.4).
    pub clean: bool,
    /// The connection it is attached to.
    pub conn: Option<ConnId>,
    /// Its subscriptions: (channel, filter) → granted QoS.
    pub subs: HashMap<(ChannelId, TopicFilter), QoS>,
    pub next_pid: u16,
    pub next_seq: u64,
    pub inflight: HashMap<u16, InFlight>,
    pub queue: VecDeque<Queued>,
    pub queued_qos0: usize,
    /// Inbound QoS 2 messages received and PUBREC'd, delivered on PUBREL (§4.3.3, method B).
    pub awaiting_rel: HashMap<(ChannelId, u16), Message>,
    /// Messages this session could not keep.
    pub dropped: u64,
}

impl Session {
    pub fn new(client_id: Arc<str>, clean: bool) -> Session {
        Session {
            client_id,
            clean,
            conn: None,
            subs: HashMap::new(),
            next_pid: 0,
            next_seq: 0,
            inflight: HashMap::new(),
            queue: VecDeque::new(),
            queued_qos0: 0,
            awaiting_rel: HashMap::new(),
            dropped: 0,
        }
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

    /// Give back memory an emptied collection still holds (an idle session keeps nothing).
    pub fn shrink(&mut self) {
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            self.queue = VecDeque::new();
        }
        if self.inflight.is_empty() && self.inflight.capacity() > 0 {
            self.inflight = HashMap::new();
        }
        if self.awaiting_rel.is_empty() && self.awaiting_rel.capacity() > 0 {
            self.awaiting_rel = HashMap::new();
        }
    }
}

/// Stable handle of a session: index plus generation, so a stale handle never reaches a new
/// session that reused the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId {
    idx: u32,
    gen: u32,
}

/// A slab of sessions.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { slots: Vec::new(), free: Vec::new(), len: 0 }
    }
}

impl<T> Slab<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn insert(&mut self, v: T) -> SessionId {
        self.len += 1;
        if let Some(idx) = self.free.pop() {
            let slot = &mut self.slots[idx as usize];
            slot.0 = slot.0.wrapping_add(1);
            slot.1 = Some(v);
            return SessionId { idx, gen: slot.0 };
        }
        let idx = self.slots.len() as u32;
        self.slots.push((0, Some(v)));
        SessionId { idx, gen: 0 }
    }

    pub fn get(&self, id: SessionId) -> Option<&T> {
        match self.slots.get(id.idx as usize) {
            Some((gen, Some(v))) if *gen == id.gen => Some(v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, id: SessionId) -> Option<&mut T> {
        match self.slots.get_mut(id.idx as usize) {
            Some((gen, Some(v))) if *gen == id.gen => Some(v),
            _ => None,
        }
    }

    pub fn remove(&mut self, id: SessionId) -> Option<T> {
        match self.slots.get_mut(id.idx as usize) {
            Some((gen, v @ Some(_))) if *gen == id.gen => {
                self.len -= 1;
                self.free.push(id.idx);
                v.take()
            }
            _ => None,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().filter_map(|(_, v)| v.as_ref())
    }
}
