//! The async driver around the sans-IO core: [`Broker`] is a cheaply clonable handle to one
//! [`BrokerCore`] behind a mutex, plus a task that fires its timers; transports attach
//! connections to it (`Broker::attach`) and feed it decoded packets, and it routes the core's
//! output into per-channel `Outbox`es that the transports' connection tasks write out.
//!
//! One mutex for the whole core: every operation on it is short (no I/O, no encoding under the
//! lock), and on the two cores of this machine a sharded design would mostly add overhead.
//!
//! Bounded memory per channel: an `Outbox` holds at most `channel_queue` packets when a QoS 0
//! delivery arrives; beyond that QoS 0 deliveries are dropped and counted. QoS 1/2 deliveries
//! are never dropped here: the core holds at most `max_inflight` of them in flight per channel
//! (docs/mqtt-over-quic.md §6.12) and keeps the rest in the session, within
//! `max_queued_messages` for all its channels together. Packets answering the
//! connection's own input (acks, SUBACK, PINGRESP) are bounded by the transport reading no more
//! input while the channel's outbox is over its bound: TCP and TLS read only when the outbox is
//! empty; the QUIC transport hands a channel's packets over a slice at a time and waits while
//! that channel's outbox holds `channel_queue` packets or more (`Attachment::poll_room`,
//! counted in [`BrokerStats::reads_paused`]). A writer takes at most `WRITE_BUDGET` bytes of
//! packets per batch, so what it has encoded but not yet written is bounded too.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use std::task::{Context, Poll, Waker};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::broker::{Action, BrokerCore, ChannelEnd, CloseReason, CoreStats, SessionInfo};
use super::codec::{self, CodecError, Packet, QosPid};
use super::config::MqttConfig;
use super::store::{self, OpenedStore};
use super::{ChannelId, ConnId, CONTROL_CHANNEL};

/// Packets waiting to be written on one channel, and whether to close after them. It lives in
/// the core's per-connection data, under the broker's lock (no allocation or lock of its own:
/// an idle connection costs less). One task (the channel's writer) waits on it.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    items: VecDeque<Packet>,
    close: Option<Box<CloseReason>>,
    /// The channel's writer, waiting for packets.
    waker: Option<Waker>,
    /// The channel's reader, waiting for room ([`Attachment::poll_room`]).
    reader: Option<Waker>,
}

/// Bytes of packets a writer takes from an outbox per batch (at least one packet): bounds the
/// encoded buffer a stalled writer holds. 256 KiB: many small packets per write, one maximum-
/// size packet at a time.
pub(crate) const WRITE_BUDGET: usize = 256 << 10;

impl Outbox {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Queue a packet. A QoS 0 PUBLISH is refused when `cap` packets are already queued.
    fn push(&mut self, p: Packet, cap: usize) -> bool {
        if self.close.is_some() {
            return true; // closing: nothing more is written
        }
        if self.items.len() >= cap && matches!(&p, Packet::Publish(p) if p.qos_pid == QosPid::Level0) {
            return false;
        }
        self.items.push_back(p);
        self.wake();
        true
    }

    /// Queue a packet the store held back: it was emitted before any close, so it goes out
    /// before the close is acted on.
    fn push_released(&mut self, p: Packet) {
        self.items.push_back(p);
        self.wake();
    }

    fn close(&mut self, reason: CloseReason) {
        if self.close.is_none() {
            self.close = Some(Box::new(reason));
        }
        self.wake();
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    fn ready(&self) -> bool {
        !self.items.is_empty() || self.close.is_some()
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.ready() {
            return Poll::Ready(());
        }
        match &self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Ready while fewer than `bound` packets wait (or the channel is closing); otherwise the
    /// reader's task is woken once the writer has taken packets out. True in `paused` when this
    /// call started a pause.
    fn poll_room(&mut self, bound: usize, cx: &mut Context<'_>, paused: &mut bool) -> Poll<()> {
        if self.items.len() < bound || self.close.is_some() {
            return Poll::Ready(());
        }
        *paused = self.reader.is_none();
        match &self.reader {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.reader = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn drain(
        &mut self,
        batch: &mut Vec<Packet>,
        max: usize,
        budget: usize,
        version: codec::Version,
    ) -> Option<CloseReason> {
        let mut bytes = 0;
        let mut n = 0;
        for p in self.items.iter().take(max) {
            if n > 0 && bytes >= budget {
                break;
            }
            bytes += codec::wire_len_hint(p, version);
            n += 1;
        }
        batch.extend(self.items.drain(..n));
        if let Some(w) = self.reader.take() {
            w.wake(); // room now; the reader checks the bound again
        }
        if self.items.is_empty() {
            if self.items.capacity() > 0 {
                self.items = VecDeque::new(); // an idle connection holds no queue memory
            }
            return self.close.as_deref().cloned();
        }
        None
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
    /// MQTT over QUIC: streams the clients opened (control and data).
    pub quic_streams_opened: u64,
    /// MQTT over QUIC: changes of a connection's path (migration) the broker noticed.
    pub quic_path_changes: u64,
    /// MQTT over QUIC: times a channel's reading paused because its outbox held
    /// `channel_queue` packets or more (the client sends faster than it reads).
    pub reads_paused: u64,
}

/// The driver's data per connection ([`BrokerCore::conn_data_mut`]): the outboxes of its
/// channels, kept in the core beside the connection's state.
#[derive(Default)]
struct Outboxes {
    control: Outbox,
    /// Data channels' outboxes (none for TCP and TLS).
    #[allow(clippy::box_collection)] // one pointer for the common case of no data channels
    data: Option<Box<Vec<(ChannelId, Outbox)>>>,
    /// For a writer that serves every channel (MQTT over QUIC): which channels it has to look
    /// at ([`Attachment::poll_ready_channels`]). Made by its first call.
    ready: Option<Box<ReadySet>>,
}

/// The channels whose outbox got packets or a close, or that ended, since the connection's
/// writer last looked (each once), and the writer's waker.
#[derive(Default)]
struct ReadySet {
    channels: Vec<ChannelId>,
    waker: Option<Waker>,
}

impl Outboxes {
    /// Tell the connection's writer, if there is one, that `ch` needs a look.
    fn mark(&mut self, ch: ChannelId) {
        if let Some(r) = &mut self.ready {
            if !r.channels.contains(&ch) {
                r.channels.push(ch);
            }
            if let Some(w) = r.waker.take() {
                w.wake();
            }
        }
    }

    /// The outbox of `ch`, if the channel is open (the control channel always is).
    fn outbox(&mut self, ch: ChannelId) -> Option<&mut Outbox> {
        if ch == CONTROL_CHANNEL {
            return Some(&mut self.control);
        }
        self.data.as_mut()?.iter_mut().find(|(c, _)| *c == ch).map(|(_, o)| o)
    }
}

struct State {
    core: BrokerCore<Outboxes>,
    actions: Vec<Action>,
    /// Packets emitted after an [`Action::Store`], per channel, each with the store ticket it
    /// waits for: they go into their outbox once the store says that ticket is durable. Once a
    /// channel has one, the channel's later packets wait behind it (order is kept).
    held: HashMap<(ConnId, ChannelId), VecDeque<(u64, Packet)>>,
}

struct Inner {
    state: Mutex<State>,
    timer_wake: Arc<Notify>,
    cfg: MqttConfig,
    slots: Arc<Semaphore>,
    dropped_qos0: AtomicU64,
    refused: AtomicU64,
    quic_streams: AtomicU64,
    quic_path_changes: AtomicU64,
    reads_paused: AtomicU64,
    /// The store's commit thread (`--data-dir`); `None`: nothing is stored.
    store: Option<store::Writer>,
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
pub(crate) struct TooManyConnections(pub usize);

impl Broker {
    /// Start a broker. Must be called within a tokio runtime (it spawns the timer task).
    pub fn new(cfg: MqttConfig) -> Broker {
        match Self::start(cfg, None) {
            Ok(b) => b,
            Err(_) => unreachable!("only starting a store's thread can fail"),
        }
    }

    /// Start a broker that keeps what must survive a restart in `store` (opened with
    /// [`store::open`] from [`MqttConfig::data_dir`]) and starts from what it held. Must be
    /// called within a tokio runtime. Fails only if the store's thread cannot be started.
    pub fn with_store(cfg: MqttConfig, store: OpenedStore) -> std::io::Result<Broker> {
        Self::start(cfg, Some(store))
    }

    fn start(cfg: MqttConfig, opened: Option<OpenedStore>) -> std::io::Result<Broker> {
        let timer_wake = Arc::new(Notify::new());
        let mut core = BrokerCore::new(cfg.clone());
        let mut started = Ok(());
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let store = opened.and_then(|mut opened| {
                let now = tokio::time::Instant::now().into_std();
                let n = core.restore_retained(std::mem::take(&mut opened.recovered.retained), now);
                let stored = std::mem::take(&mut opened.recovered.sessions);
                let total = stored.len();
                let sessions = stored.into_iter().filter(|s| core.restore_session(s.clone(), now)).count();
                if sessions < total {
                    tracing::warn!(
                        left_out = total - sessions,
                        "mqtt: stored sessions beyond max_sessions were left out (they stay in the store)"
                    );
                }
                tracing::info!(path = %opened.path.display(), retained = n, sessions, "mqtt: store opened");
                let weak = weak.clone();
                let durable = move |ticket| {
                    if let Some(inner) = weak.upgrade() {
                        Broker { inner }.release(ticket);
                    }
                };
                store::Writer::start(opened, cfg.sync_interval, durable).map_err(|e| started = Err(e)).ok()
            });
            Inner {
                state: Mutex::new(State { core, actions: Vec::new(), held: HashMap::new() }),
                timer_wake: timer_wake.clone(),
                slots: Arc::new(Semaphore::new(cfg.max_connections.min(Semaphore::MAX_PERMITS))),
                cfg,
                dropped_qos0: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                quic_streams: AtomicU64::new(0),
                quic_path_changes: AtomicU64::new(0),
                reads_paused: AtomicU64::new(0),
                store,
            }
        });
        started?;
        tokio::spawn(timer_loop(Arc::downgrade(&inner), timer_wake));
        Ok(Broker { inner })
    }

    /// The store made everything up to `ticket` durable: send what waited for it.
    fn release(&self, ticket: u64) {
        let mut st = self.lock();
        let State { core, held, .. } = &mut *st;
        held.retain(|&(conn, channel), q| {
            let mut outboxes = core.conn_data_mut(conn);
            while q.front().is_some_and(|(t, _)| *t <= ticket) {
                let Some((_, p)) = q.pop_front() else { break };
                if let Some(o) = outboxes.as_deref_mut() {
                    if let Some(ob) = o.outbox(channel) {
                        ob.push_released(p);
                        o.mark(channel);
                    }
                }
            }
            !q.is_empty()
        });
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
            quic_streams_opened: self.inner.quic_streams.load(Ordering::Relaxed),
            quic_path_changes: self.inner.quic_path_changes.load(Ordering::Relaxed),
            reads_paused: self.inner.reads_paused.load(Ordering::Relaxed),
        }
    }

    /// The state of `client_id`'s session, if there is one.
    pub fn session(&self, client_id: &str) -> Option<SessionInfo> {
        self.lock().core.session_state(client_id)
    }

    /// Register a new network connection (one session attachment, channel 0 open).
    pub(crate) fn attach(&self, peer: Option<SocketAddr>) -> Result<Attachment, TooManyConnections> {
        let permit = match self.inner.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.inner.refused.fetch_add(1, Ordering::Relaxed);
                return Err(TooManyConnections(self.inner.cfg.max_connections));
            }
        };
        let mut st = self.lock();
        let State { core, actions, .. } = &mut *st;
        let conn = core.open(peer, Outboxes::default(), now(), actions);
        self.dispatch(&mut st, Some(conn));
        Ok(Attachment { broker: self.clone(), conn, version: Default::default(), _permit: permit })
    }

    /// Close every connection (their transports flush and close). Wills are not published.
    pub fn shutdown(&self) {
        let mut st = self.lock();
        let State { core, actions, .. } = &mut *st;
        core.shutdown(actions);
        self.dispatch(&mut st, None);
    }

    /// Route the core's actions: packets into outboxes (or held until the store has made what
    /// came before them durable), closes, timer wake-ups, writes for the store.
    ///
    /// `origin`: the connection whose input made these actions (`None`: a timer, a close,
    /// shutdown). After a store op, every packet to `origin` waits for it (its acknowledgements
    /// must not come before what they acknowledge is durable), and so does every QoS 2 PUBLISH
    /// or PUBREL to anyone (a delivery made twice after a crash would break exactly-once).
    /// QoS 0 and 1 deliveries to other connections go at once: if the broker crashes before
    /// the store op is durable, the publisher got no acknowledgement and sends again, and a
    /// second QoS 1 delivery is allowed. So a fast subscriber's acknowledgement often comes
    /// before the commit, and the message is never written at all (`store::Pending`).
    fn dispatch(&self, st: &mut State, origin: Option<ConnId>) {
        let State { core, actions, held } = st;
        let cap = self.inner.cfg.channel_queue;
        let mut wake = false;
        // The store ticket the packets of this call wait for, once one was put.
        let (mut ticket, mut wake_store) = (None, false);
        for a in actions.drain(..) {
            match a {
                Action::Store(op) => {
                    if let Some(w) = &self.inner.store {
                        let mut p = w.lock();
                        ticket = Some(p.put(op));
                        wake_store |= p.thread_idle();
                    }
                }
                Action::Send { conn, channel, packet } => {
                    let behind = held.get(&(conn, channel)).and_then(|q| q.back()).map(|(t, _)| *t);
                    let waits = |t| {
                        let exactly_once = matches!(&packet, Packet::Pubrel(_))
                            || matches!(&packet, Packet::Publish(p) if matches!(p.qos_pid, QosPid::Level2(_)));
                        (origin.is_none_or(|o| o == conn) || exactly_once).then_some(t)
                    };
                    if let Some(t) = ticket.and_then(waits).or(behind) {
                        held.entry((conn, channel)).or_default().push_back((t, packet));
                        continue;
                    }
                    let Some(outboxes) = core.conn_data_mut(conn) else { continue };
                    let Some(outbox) = outboxes.outbox(channel) else { continue };
                    let queued = outbox.push(packet, cap);
                    outboxes.mark(channel);
                    if !queued {
                        let n = self.inner.dropped_qos0.fetch_add(1, Ordering::Relaxed) + 1;
                        // Counted always; logged at 1, 2, 4, 8, ... drops (broker-wide).
                        if n.is_power_of_two() {
                            tracing::warn!(
                                conn,
                                channel,
                                dropped_total = n,
                                "mqtt: subscriber's channel queue full ({cap} packets); QoS 0 message dropped"
                            );
                        }
                    }
                }
                Action::Close { conn, reason } => {
                    let Some(outboxes) = core.conn_data_mut(conn) else { continue };
                    if let Some(data) = &mut outboxes.data {
                        for (ch, o) in data.iter_mut() {
                            o.close(reason.clone());
                            if let Some(r) = &mut outboxes.ready {
                                if !r.channels.contains(ch) {
                                    r.channels.push(*ch);
                                }
                            }
                        }
                    }
                    outboxes.control.close(reason);
                    outboxes.mark(CONTROL_CHANNEL);
                }
                Action::Timer { .. } => wake = true,
            }
        }
        if wake {
            self.inner.timer_wake.notify_one();
        }
        if let (true, Some(w)) = (wake_store, &self.inner.store) {
            w.notify();
        }
    }
}

/// The time now on tokio's clock, as the core takes it: tests that pause tokio's time drive the
/// core's timers too (the timer task sleeps on the same clock).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
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
        core.handle_timeout(now(), actions);
        broker.dispatch(&mut st, None);
    }
}

/// One network connection attached to the broker. Dropping it tells the core the connection is
/// gone (the will is published unless the client sent DISCONNECT).
pub(crate) struct Attachment {
    broker: Broker,
    conn: ConnId,
    /// The connection's packet format, as its CONNECT said: 0 before CONNECT, 1 for 3.1.1, 2
    /// for MQTT 5. Set by the reader before it hands the CONNECT over, so the CONNACK is
    /// written in it.
    version: std::sync::atomic::AtomicU8,
    _permit: OwnedSemaphorePermit,
}

impl Attachment {
    /// The packet format to write (and, on QUIC data streams, to read): 3.1.1 until a CONNECT
    /// says otherwise.
    pub fn version(&self) -> codec::Version {
        self.known_version().unwrap_or(codec::Version::V3)
    }

    /// The version a CONNECT set (`None` before one).
    pub fn known_version(&self) -> Option<codec::Version> {
        match self.version.load(std::sync::atomic::Ordering::Relaxed) {
            1 => Some(codec::Version::V3),
            2 => Some(codec::Version::V5),
            _ => None,
        }
    }

    /// A decoder for this connection's next bytes: of its version, or one that learns it
    /// from the CONNECT.
    pub fn decoder(&self) -> codec::Decoder {
        let max = self.broker.config().max_packet_size;
        match self.known_version() {
            Some(v) => codec::Decoder::with_version(max, v),
            None => codec::Decoder::new(max),
        }
    }

    /// Take the version `decoder` learnt from a CONNECT (call it before handing that CONNECT
    /// over, so its CONNACK is written in it).
    pub fn learn_version(&self, decoder: &codec::Decoder) {
        if let (None, Some(v)) = (self.known_version(), decoder.version()) {
            let v = if v == codec::Version::V5 { 2 } else { 1 };
            self.version.store(v, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn conn_id(&self) -> ConnId {
        self.conn
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Ready when `channel`'s outbox has packets to write or a close to act on (a closed or
    /// unknown channel reads as "close"); otherwise the task is woken when it has.
    /// Only the latest waker is kept: one writer per channel.
    pub fn poll_outbox(&self, channel: ChannelId, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.broker.lock();
        match st.core.conn_data_mut(self.conn).and_then(|o| o.outbox(channel)) {
            Some(o) => o.poll_ready(cx),
            None => Poll::Ready(()),
        }
    }

    /// For a writer that serves every channel of the connection (MQTT over QUIC), instead of
    /// [`Attachment::poll_outbox`] per channel: appends to `ready` the channels whose outbox got
    /// packets or a close, or that ended, since the last call (each once; the first call
    /// reports every channel with something to write, and the control channel), and is ready
    /// with `true`; otherwise keeps the task's waker. Ready with `false` once the connection is
    /// gone: every channel is closed, [`Attachment::drain`] says so. One lock per call,
    /// whatever the number of channels.
    pub fn poll_ready_channels(&self, cx: &mut Context<'_>, ready: &mut Vec<ChannelId>) -> Poll<bool> {
        let mut st = self.broker.lock();
        let Some(outboxes) = st.core.conn_data_mut(self.conn) else {
            return Poll::Ready(false);
        };
        let set = match &mut outboxes.ready {
            Some(set) => set,
            None => {
                let mut set = Box::<ReadySet>::default();
                set.channels.push(CONTROL_CHANNEL);
                for (ch, o) in outboxes.data.iter().flat_map(|d| d.iter()) {
                    if o.ready() {
                        set.channels.push(*ch);
                    }
                }
                outboxes.ready.insert(set)
            }
        };
        if set.channels.is_empty() {
            match &set.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => set.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        ready.append(&mut set.channels);
        Poll::Ready(true)
    }

    /// Whether `channel` has `channel_queue` packets or more waiting for the store: the TCP
    /// transport reads no more input then (the outbox wakes it when they are released).
    pub fn holding_full(&self, channel: ChannelId) -> bool {
        if self.broker.inner.store.is_none() {
            return false; // nothing is ever held
        }
        let bound = self.broker.inner.cfg.channel_queue.max(1);
        self.broker.lock().held.get(&(self.conn, channel)).is_some_and(|q| q.len() >= bound)
    }

    /// Whether `channel` is closing: the core asked for its close (its writer writes what is
    /// queued, then acts on it), or the channel or the connection is gone.
    pub fn is_closing(&self, channel: ChannelId) -> bool {
        let mut st = self.broker.lock();
        st.core.conn_data_mut(self.conn).and_then(|o| o.outbox(channel)).is_none_or(|o| o.close.is_some())
    }

    /// Ready while `channel`'s outbox holds fewer than `channel_queue` packets (or the channel
    /// is closing or gone): the reader of a channel hands the broker more input only then, so
    /// what a client's own packets make the broker answer stays bounded when the client does
    /// not read. Otherwise the task is woken when the writer has taken packets out; each pause
    /// is counted ([`BrokerStats::reads_paused`]). One reader per channel.
    pub fn poll_room(&self, channel: ChannelId, cx: &mut Context<'_>) -> Poll<()> {
        let bound = self.broker.inner.cfg.channel_queue.max(1);
        let mut paused = false;
        let poll = {
            let mut st = self.broker.lock();
            // Packets waiting for the store count against the bound too.
            let held = st.held.get(&(self.conn, channel)).map_or(0, VecDeque::len);
            let bound = bound.saturating_sub(held);
            match st.core.conn_data_mut(self.conn).and_then(|o| o.outbox(channel)) {
                Some(o) => o.poll_room(bound, cx, &mut paused),
                None => Poll::Ready(()),
            }
        };
        if paused {
            let n = self.broker.inner.reads_paused.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::info!(
                    conn = self.conn,
                    channel,
                    paused_total = n,
                    "mqtt: channel's outbox full ({bound} packets): not reading its input until the client reads"
                );
            }
        }
        poll
    }

    /// Move up to `max` packets (and about [`WRITE_BUDGET`] bytes, at least one packet) of
    /// `channel`'s outbox into `batch`. Returns the close reason once
    /// the outbox is empty and a close was requested (or the channel or connection is gone:
    /// [`CloseReason::Shutdown`]). A data channel's outbox is freed once it has returned one.
    pub fn drain(&self, channel: ChannelId, batch: &mut Vec<Packet>, max: usize) -> Option<CloseReason> {
        let mut st = self.broker.lock();
        let holding = st.held.contains_key(&(self.conn, channel));
        let Some(outboxes) = st.core.conn_data_mut(self.conn) else { return Some(CloseReason::Shutdown) };
        let (reason, more) = match outboxes.outbox(channel) {
            Some(o) => (o.drain(batch, max, WRITE_BUDGET, self.version()), !o.items.is_empty()),
            None => return Some(CloseReason::Shutdown),
        };
        // Packets the store holds back were emitted before the close: they go first.
        let reason = if holding { None } else { reason };
        if more {
            outboxes.mark(channel); // the rest next time (a connection's writer)
        }
        if reason.is_some() && channel != CONTROL_CHANNEL {
            if let Some(data) = outboxes.data.as_mut() {
                data.retain(|(c, _)| *c != channel);
            }
        }
        reason
    }

    /// Hand the core the packets decoded from one read on `channel` (drained from `packets`),
    /// then the decoding error that ended that read, if any.
    pub fn handle(&self, channel: ChannelId, packets: &mut Vec<Packet>, err: Option<&CodecError>) {
        let now = now();
        let mut st = self.broker.lock();
        let State { core, actions, .. } = &mut *st;
        for p in packets.drain(..) {
            core.handle(self.conn, channel, p, now, actions);
        }
        if let Some(e) = err {
            core.malformed(self.conn, channel, e, now, actions);
        }
        self.broker.dispatch(&mut st, Some(self.conn));
    }

    /// Count a QUIC stream the client opened (statistics).
    pub fn note_stream_opened(&self) {
        self.broker.inner.quic_streams.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a change of the connection's path (statistics; the transport logs it).
    pub fn note_path_changed(&self) {
        self.broker.inner.quic_path_changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Open a data channel (a QUIC stream in the QUIC mapping): its packets get their own outbox.
    pub fn open_channel(&self, channel: ChannelId) {
        if channel == CONTROL_CHANNEL {
            return;
        }
        let mut st = self.broker.lock();
        let Some(outboxes) = st.core.conn_data_mut(self.conn) else { return };
        let data = outboxes.data.get_or_insert_with(Default::default);
        if !data.iter().any(|(c, _)| *c == channel) {
            data.push((channel, Outbox::default()));
        }
    }

    /// A data channel ended (`end`: how; docs/mqtt-over-quic.md §6.1): its subscriptions are
    /// parked on the control channel and its outbound messages move to another channel of the
    /// connection ([`BrokerCore::close_channel`]). After a FIN the packets already in its outbox
    /// (acknowledgements of the packets before the FIN) are still written, then
    /// [`Attachment::drain`] reports the end so the writer finishes the stream; after a reset or
    /// STOP_SENDING the outbox is dropped at once and the transport resets the stream's sending
    /// side.
    pub fn close_channel(&self, channel: ChannelId, end: ChannelEnd) {
        let mut st = self.broker.lock();
        if let Some(data) = st.core.conn_data_mut(self.conn).and_then(|o| o.data.as_mut()) {
            match data.iter().position(|(c, _)| *c == channel) {
                Some(i) if end == ChannelEnd::Finished && data[i].1.ready() => data[i].1.close(CloseReason::Shutdown),
                Some(i) => {
                    // Its writer learns of the end from the outbox being gone: wake it.
                    data.swap_remove(i).1.wake();
                }
                None => {}
            }
        }
        if let Some(outboxes) = st.core.conn_data_mut(self.conn) {
            outboxes.mark(channel);
        }
        if end != ChannelEnd::Finished {
            st.held.remove(&(self.conn, channel)); // nowhere to write them now
        }
        let State { core, actions, .. } = &mut *st;
        core.close_channel(self.conn, channel, end, now(), actions);
        self.broker.dispatch(&mut st, Some(self.conn));
    }

    /// The client presented a verified certificate naming `identity` (its subject CN); `None`:
    /// no certificate. Call it before handing the connection any packet
    /// ([`BrokerCore::set_cert_identity`]).
    pub fn set_cert_identity(&self, identity: Option<&str>) {
        self.broker.lock().core.set_cert_identity(self.conn, identity);
    }

    /// The connection's QUIC handshake has not completed: until
    /// [`Attachment::handshake_complete`], only packets whose effects die with the connection
    /// are acted on, the rest are held ([`BrokerCore::set_early`], docs/mqtt-over-quic.md §6.7).
    /// Call it before handing the connection any packet.
    pub fn set_early(&self) {
        self.broker.lock().core.set_early(self.conn);
    }

    /// The connection's QUIC handshake completed: the packets held meanwhile are processed, in
    /// order ([`BrokerCore::handshake_complete`]).
    pub fn handshake_complete(&self) {
        let mut st = self.broker.lock();
        let State { core, actions, .. } = &mut *st;
        core.handshake_complete(self.conn, now(), actions);
        self.broker.dispatch(&mut st, Some(self.conn));
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut st = self.broker.lock();
        let conn = self.conn;
        st.held.retain(|(c, _), _| *c != conn);
        let State { core, actions, .. } = &mut *st;
        core.closed(self.conn, now(), actions);
        self.broker.dispatch(&mut st, None);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// What the writer of `att`'s control channel finds once its outbox wakes it: the packets
    /// and the close reason.
    async fn control_output(att: &Attachment) -> (Vec<Packet>, Option<CloseReason>) {
        std::future::poll_fn(|cx| att.poll_outbox(CONTROL_CHANNEL, cx)).await;
        let mut batch = Vec::new();
        let reason = att.drain(CONTROL_CHANNEL, &mut batch, usize::MAX);
        (batch, reason)
    }

    /// The driver reads tokio's clock: with time paused, the CONNECT deadline fires as soon as
    /// the runtime is idle, without a real wait.
    #[tokio::test(start_paused = true)]
    async fn connect_timeout_fires_on_tokio_paused_clock() {
        let cfg = MqttConfig { connect_timeout: Duration::from_secs(30), ..MqttConfig::default() };
        let broker = Broker::new(cfg);
        let (start, real) = (tokio::time::Instant::now(), std::time::Instant::now());
        let att = broker.attach(None).expect("attached");
        let (packets, reason) = control_output(&att).await;
        assert!(packets.is_empty(), "{packets:?}");
        assert_eq!(reason, Some(CloseReason::ConnectTimeout));
        assert!(start.elapsed() >= Duration::from_secs(30), "tokio's clock advanced to the deadline");
        assert!(real.elapsed() < Duration::from_secs(10), "no real wait: {:?}", real.elapsed());
    }

    /// The same for keepalive: a client silent for 1.5 × its keepalive is closed (§3.1.2-24).
    #[tokio::test(start_paused = true)]
    async fn keepalive_expires_on_tokio_paused_clock() {
        let broker = Broker::new(MqttConfig::default());
        let real = std::time::Instant::now();
        let att = broker.attach(None).expect("attached");
        let mut connect = vec![Packet::connect(crate::mqtt::codec::connect_v3("ka", 20))];
        att.handle(CONTROL_CHANNEL, &mut connect, None);
        let (packets, reason) = control_output(&att).await;
        assert!(matches!(packets.as_slice(), [Packet::Connack(_)]), "{packets:?}");
        assert_eq!(reason, None);
        let start = tokio::time::Instant::now();
        let (packets, reason) = control_output(&att).await;
        assert!(packets.is_empty(), "{packets:?}");
        assert_eq!(reason, Some(CloseReason::KeepaliveTimeout));
        assert!(start.elapsed() >= Duration::from_secs(30), "1.5 × 20 s of tokio's clock");
        assert!(real.elapsed() < Duration::from_secs(10), "no real wait: {:?}", real.elapsed());
        assert!(att.is_closing(CONTROL_CHANNEL));
    }
}
