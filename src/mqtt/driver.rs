//! The async driver around the sans-IO core: [`Broker`] is a cheaply clonable handle to one
//! [`BrokerCore`] behind a mutex, plus a task that fires its timers; transports attach
//! connections to it ([`Broker::attach`]) and feed it decoded packets, and it routes the core's
//! output into per-channel [`Outbox`]es that the transports' connection tasks write out.
//!
//! One mutex for the whole core: every operation on it is short (no I/O, no encoding under the
//! lock), and on the two cores of this machine a sharded design would mostly add overhead.
//!
//! Bounded memory per channel: an [`Outbox`] holds at most `channel_queue` packets when a QoS 0
//! delivery arrives; beyond that QoS 0 deliveries are dropped and counted. QoS 1/2 deliveries
//! are never dropped here: the core holds at most `max_inflight` of them in flight per session
//! and keeps the rest in the session, within `max_queued_messages`. Packets answering the
//! connection's own input (acks, SUBACK, PINGRESP) are bounded by the transport reading no more
//! input until its outbox is written out.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::broker::{Action, BrokerCore, CloseReason, CoreStats, SessionInfo};
use super::codec::{CodecError, Packet, QosPid};
use super::config::MqttConfig;
use super::{ChannelId, ConnId, CONTROL_CHANNEL};

/// Packets waiting to be written on one channel, and whether to close after them.
#[derive(Debug)]
pub struct Outbox {
    q: Mutex<OutQueue>,
    notify: Notify,
    cap: usize,
}

#[derive(Debug, Default)]
struct OutQueue {
    items: VecDeque<Packet>,
    close: Option<CloseReason>,
    dropped: u64,
}

impl Outbox {
    fn new(cap: usize) -> Outbox {
        Outbox { q: Mutex::new(OutQueue::default()), notify: Notify::new(), cap }
    }

    fn lock(&self) -> MutexGuard<'_, OutQueue> {
        // A panic while holding this lock cannot leave the queue inconsistent: keep going.
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a packet. A QoS 0 PUBLISH is dropped (false) when `cap` packets are already queued.
    fn push(&self, p: Packet) -> Result<(), u64> {
        let mut q = self.lock();
        if q.close.is_some() {
            return Ok(()); // closing: nothing more is written
        }
        if q.items.len() >= self.cap && matches!(&p, Packet::Publish(p) if p.qos_pid == QosPid::Level0) {
            q.dropped += 1;
            return Err(q.dropped);
        }
        let was_empty = q.items.is_empty();
        q.items.push_back(p);
        drop(q);
        if was_empty {
            self.notify.notify_one();
        }
        Ok(())
    }

    fn close(&self, reason: CloseReason) {
        let mut q = self.lock();
        if q.close.is_none() {
            q.close = Some(reason);
        }
        drop(q);
        self.notify.notify_one();
    }

    /// Whether there is something to write or a close to act on.
    pub fn ready(&self) -> bool {
        let q = self.lock();
        !q.items.is_empty() || q.close.is_some()
    }

    /// Wait until [`Outbox::ready`]. Cancel-safe.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.ready() {
                return;
            }
            notified.await;
        }
    }

    /// Move up to `max` queued packets into `batch`. Returns the close reason once the queue is
    /// empty and a close was requested.
    pub fn drain(&self, batch: &mut Vec<Packet>, max: usize) -> Option<CloseReason> {
        let mut q = self.lock();
        let n = q.items.len().min(max);
        batch.extend(q.items.drain(..n));
        if q.items.is_empty() && q.items.capacity() > 32 {
            q.items = VecDeque::new(); // an idle connection holds no queue memory
        }
        if q.items.is_empty() {
            q.close.clone()
        } else {
            None
        }
    }

    /// Packets queued now.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// QoS 0 deliveries dropped because this outbox was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

/// Counters of the broker: the core's plus the driver's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerStats {
    pub core: CoreStats,
    /// QoS 0 deliveries dropped because the subscriber's channel queue was full.
    pub dropped_qos0_channel_full: u64,
    /// Connections refused because `max_connections` were open.
    pub refused_connections: u64,
}

struct Link {
    control: Arc<Outbox>,
    data: Vec<(ChannelId, Arc<Outbox>)>,
}

impl Link {
    fn outbox(&self, ch: ChannelId) -> &Arc<Outbox> {
        if ch == CONTROL_CHANNEL {
            return &self.control;
        }
        self.data.iter().find(|(c, _)| *c == ch).map(|(_, o)| o).unwrap_or(&self.control)
    }
}

struct State {
    core: BrokerCore,
    links: HashMap<ConnId, Link>,
    actions: Vec<Action>,
}

struct Inner {
    state: Mutex<State>,
    timer_wake: Arc<Notify>,
    cfg: MqttConfig,
    slots: Arc<Semaphore>,
    dropped_qos0: AtomicU64,
    refused: AtomicU64,
}

/// A running broker: the sans-IO core behind a mutex, and the task that fires its timers.
/// Clones share the broker. The timer task ends when the last clone is dropped.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

/// Why a connection could not be attached.
#[derive(Debug, thiserror::Error)]
#[error("too many MQTT connections ({0} open)")]
pub struct TooManyConnections(pub usize);

impl Broker {
    /// Start a broker. Must be called within a tokio runtime (it spawns the timer task).
    pub fn new(cfg: MqttConfig) -> Broker {
        let timer_wake = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            state: Mutex::new(State { core: BrokerCore::new(cfg.clone()), links: HashMap::new(), actions: Vec::new() }),
            timer_wake: timer_wake.clone(),
            slots: Arc::new(Semaphore::new(cfg.max_connections.min(Semaphore::MAX_PERMITS))),
            cfg,
            dropped_qos0: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        tokio::spawn(timer_loop(Arc::downgrade(&inner), timer_wake));
        Broker { inner }
    }

    pub fn config(&self) -> &MqttConfig {
        &self.inner.cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counters and gauges now.
    pub fn stats(&self) -> BrokerStats {
        let core = self.lock().core.stats();
        BrokerStats {
            core,
            dropped_qos0_channel_full: self.inner.dropped_qos0.load(Ordering::Relaxed),
            refused_connections: self.inner.refused.load(Ordering::Relaxed),
        }
    }

    /// The state of `client_id`'s session, if there is one.
    pub fn session(&self, client_id: &str) -> Option<SessionInfo> {
        self.lock().core.session_state(client_id)
    }

    /// Register a new network connection (one session attachment, channel 0 open).
    pub fn attach(&self, peer: Option<SocketAddr>) -> Result<Attachment, TooManyConnections> {
        let permit = match self.inner.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.inner.refused.fetch_add(1, Ordering::Relaxed);
                return Err(TooManyConnections(self.inner.cfg.max_connections));
            }
        };
        let control = Arc::new(Outbox::new(self.inner.cfg.channel_queue));
        let mut st = self.lock();
        let State { core, links, actions } = &mut *st;
        let conn = core.open(peer, Instant::now(), actions);
        links.insert(conn, Link { control: control.clone(), data: Vec::new() });
        self.dispatch(&mut st);
        Ok(Attachment { broker: self.clone(), conn, control, _permit: permit })
    }

    /// Close every connection (their transports flush and close). Wills are not published.
    pub fn shutdown(&self) {
        let mut st = self.lock();
        let State { core, actions, .. } = &mut *st;
        core.shutdown(actions);
        self.dispatch(&mut st);
    }

    /// Route the core's actions: packets into outboxes, closes, timer wake-ups.
    fn dispatch(&self, st: &mut State) {
        let State { links, actions, .. } = st;
        let mut wake = false;
        for a in actions.drain(..) {
            match a {
                Action::Send { conn, channel, packet } => {
                    let Some(link) = links.get(&conn) else { continue };
                    if let Err(n) = link.outbox(channel).push(packet) {
                        self.inner.dropped_qos0.fetch_add(1, Ordering::Relaxed);
                        if n.is_power_of_two() {
                            tracing::warn!(
                                conn,
                                channel,
                                dropped = n,
                                "mqtt: subscriber's channel queue full; QoS 0 message dropped"
                            );
                        }
                    }
                }
                Action::Close { conn, reason } => {
                    let Some(link) = links.get(&conn) else { continue };
                    for (_, o) in &link.data {
                        o.close(reason.clone());
                    }
                    link.control.close(reason);
                }
                Action::Timer { .. } => wake = true,
            }
        }
        if wake {
            self.inner.timer_wake.notify_one();
        }
    }
}

async fn timer_loop(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else { return };
            let st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            st.core.poll_timeout()
        };
        let notified = wake.notified();
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = notified => continue,
                }
            }
            None => notified.await,
        }
        let Some(inner) = inner.upgrade() else { return };
        let broker = Broker { inner };
        let mut st = broker.lock();
        let State { core, actions, .. } = &mut *st;
        core.handle_timeout(Instant::now(), actions);
        broker.dispatch(&mut st);
    }
}

/// One network connection attached to the broker. Dropping it tells the core the connection is
/// gone (the will is published unless the client sent DISCONNECT).
pub struct Attachment {
    broker: Broker,
    conn: ConnId,
    control: Arc<Outbox>,
    _permit: OwnedSemaphorePermit,
}

impl Attachment {
    pub fn conn_id(&self) -> ConnId {
        self.conn
    }

    /// The control channel's outbox (the only one for TCP and TLS).
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.control
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Hand the core the packets decoded from one read on `channel` (drained from `packets`),
    /// then the decoding error that ended that read, if any.
    pub fn handle(&self, channel: ChannelId, packets: &mut Vec<Packet>, err: Option<&CodecError>) {
        let now = Instant::now();
        let mut st = self.broker.lock();
        let State { core, actions, .. } = &mut *st;
        for p in packets.drain(..) {
            core.handle(self.conn, channel, p, now, actions);
        }
        if let Some(e) = err {
            core.malformed(self.conn, channel, e, now, actions);
        }
        self.broker.dispatch(&mut st);
    }

    /// Open a data channel (a QUIC stream in the QUIC mapping): its deliveries get their own
    /// outbox.
    pub fn open_channel(&self, channel: ChannelId) -> Arc<Outbox> {
        if channel == CONTROL_CHANNEL {
            return self.control.clone();
        }
        let mut st = self.broker.lock();
        let Some(link) = st.links.get_mut(&self.conn) else { return Arc::new(Outbox::new(0)) };
        if let Some((_, o)) = link.data.iter().find(|(c, _)| *c == channel) {
            return o.clone();
        }
        let o = Arc::new(Outbox::new(self.broker.inner.cfg.channel_queue));
        link.data.push((channel, o.clone()));
        o
    }

    /// A data channel is gone: its subscriptions and flows are dropped.
    pub fn close_channel(&self, channel: ChannelId) {
        let mut st = self.broker.lock();
        if let Some(link) = st.links.get_mut(&self.conn) {
            link.data.retain(|(c, _)| *c != channel);
        }
        let State { core, actions, .. } = &mut *st;
        core.close_channel(self.conn, channel, Instant::now(), actions);
        self.broker.dispatch(&mut st);
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut st = self.broker.lock();
        st.links.remove(&self.conn);
        let State { core, actions, .. } = &mut *st;
        core.closed(self.conn, Instant::now(), actions);
        self.broker.dispatch(&mut st);
    }
}
