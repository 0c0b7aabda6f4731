//! MQTT over QUIC: the stream mapping of `docs/mqtt-over-quic.md`, over the same broker core as
//! TCP and TLS (only the transport differs).
//!
//! One QUIC connection is one `Attachment`; each client-initiated bidirectional stream is one
//! channel of it: the first (stream 0) is the control stream ([`CONTROL_CHANNEL`]), later ones
//! are data streams (channel = the stream's index). Each stream has a reader task (bytes →
//! packets → core); one writer per connection serves every channel's outbox (packets → bytes), so
//! what several channels queued at once is written in one wake-up and leaves in shared packets
//! ([`Writer`]).
//!
//! * Data streams are not read until the control stream has delivered CONNECT, so a client may
//!   write CONNECT, SUBSCRIBE and PUBLISH in its first flight: what it wrote meanwhile waits in
//!   QUIC's receive buffer, bounded by the stream's flow-control window (spec §2.7).
//! * 0-RTT data is read at once; the core acts only on early packets whose effects die with
//!   the connection and holds the rest until the handshake completes (spec §6.7–6.11).
//! * A data stream's end — FIN, RESET_STREAM or STOP_SENDING — is reported to the core as a
//!   [`ChannelEnd`], which parks its subscriptions and moves its messages (spec §6.1–6.4).
//! * The control stream's end closes the connection with CONTROL_STREAM_CLOSED (spec §3.1); if
//!   the core had already closed it (DISCONNECT first), the writer's close with the core's
//!   reason is awaited instead, which comes once the client acknowledged the last packets
//!   (bounded by `CLOSE_LINGER`). No fixed delays.
//! * A change of the client's address is noticed on every read and logged (`path_changed`).
//! * Back-pressure, as over TCP: a stream's reader decodes and hands over its input a slice
//!   at a time, and waits while that channel's outbox is full (`channel_queue` packets), so a
//!   client that sends PINGREQ or QoS 1 PUBLISH and never reads makes the broker buffer at
//!   most an outbox, one read (`READ_CHUNK`) and one write batch per stream; then QUIC flow
//!   control stops the client.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::task::AtomicWaker;
use futures_util::FutureExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::broker::{ChannelEnd, CloseReason};
use super::codec::{self, Packet};
use super::driver::{Attachment, Broker};
use super::{ChannelId, CONTROL_CHANNEL};
use crate::conn::{ConnInfo, HandshakeDone};

/// Application error codes (spec §5).
pub mod code {
    /// DISCONNECT received; server shutdown.
    pub const NO_ERROR: u32 = 0x0;
    /// The control stream ended or was reset (EMQX uses 1 too).
    pub const CONTROL_STREAM_CLOSED: u32 = 0x1;
    /// The server refuses the connection for load (EMQX uses 2 too).
    pub const OVERLOADED: u32 = 0x2;
    /// An MQTT protocol violation on any stream, or a refused CONNECT.
    pub const PROTOCOL_ERROR: u32 = 0x3;
    /// No control stream, or no CONNECT on it, in time.
    pub const CONTROL_STREAM_TIMEOUT: u32 = 0x4;
    /// Another connection took the session over (MQTT 3.1.1 §3.1.4-2).
    pub const SESSION_TAKEN_OVER: u32 = 0x5;
    /// STOP_SENDING code for a unidirectional stream (none are used).
    pub const UNI_STREAM_REFUSED: u32 = 0x10;
    /// RESET_STREAM / STOP_SENDING code for the server's half of a data stream the client
    /// reset or stopped (spec §6.1).
    pub const DATA_STREAM_CLOSED: u32 = 0x11;
}

/// Most packets encoded into one write.
const WRITE_BATCH: usize = 512;
/// Longest wait, after the server finished the control stream, for the client to acknowledge
/// its last packets before the connection is closed.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(2);
/// Bytes taken from a stream per read (as the TCP transport's read buffer).
const READ_CHUNK: usize = 16 << 10;
/// Packets handed to the broker per lock: between two slices the reader checks that its
/// channel's outbox has room ([`Attachment::poll_room`]).
const HANDLE_SLICE: usize = 64;

fn close_code(reason: &CloseReason) -> u32 {
    match reason {
        CloseReason::Disconnect | CloseReason::Shutdown => code::NO_ERROR,
        CloseReason::TakenOver => code::SESSION_TAKEN_OVER,
        CloseReason::ConnectTimeout => code::CONTROL_STREAM_TIMEOUT,
        CloseReason::KeepaliveTimeout | CloseReason::Refused(_) | CloseReason::Violation(_) => code::PROTOCOL_ERROR,
    }
}

fn close(conn: &quinn::Connection, code: u32, why: &str) {
    conn.close(quinn::VarInt::from_u32(code), why.as_bytes());
}

/// Serve MQTT on an accepted QUIC connection (ALPN `mqtt`) until it ends.
///
/// `handshake_done` resolves when the QUIC handshake completes. Until then the connection is
/// *early* (spec §6.7): what the client sent in 0-RTT is read at once, and the broker core acts
/// only on packets whose effects die with the connection, holding the rest until completion.
pub async fn serve_connection(
    conn: quinn::Connection,
    broker: Broker,
    info: Arc<ConnInfo>,
    handshake_done: HandshakeDone,
) {
    let remote = conn.remote_address();
    // Client certificate (docs/mqtt.md "Client certificates"), before the core sees anything.
    // A resumed session (0-RTT) carries the chain verified in its full handshake and has it at
    // once; a full handshake has it when it completes (the client's Certificate comes with its
    // Finished, RFC 8446 §4.4.2), and has no early data to delay meanwhile.
    let cfg = broker.config();
    let identity = if cfg.require_certificate || cfg.client_ca.is_some() {
        let chain = |conn: &quinn::Connection| {
            conn.peer_identity()
                .and_then(|id| id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
                .filter(|chain| !chain.is_empty())
        };
        let mut certs = chain(&conn);
        if certs.is_none() && handshake_done.clone().now_or_never().is_none() {
            // Bounded by the endpoint's handshake deadline (crate::quic closes the connection).
            handshake_done.clone().await;
            if let Some(why) = conn.close_reason() {
                // E.g. the dedicated listener's mandatory verifier refused the certificate.
                tracing::info!(%remote, "mqtt+quic: closed before the handshake completed: {why}");
                return;
            }
            certs = chain(&conn);
        }
        // The shared endpoint lets clients without a certificate through the handshake (HTTP/3
        // needs none); MQTT refuses them here (docs/mqtt-over-quic.md §1.4, §5).
        if certs.is_none() && cfg.require_certificate {
            tracing::info!(%remote, "mqtt+quic: no client certificate; refused (client certificate required)");
            close(&conn, code::PROTOCOL_ERROR, "client certificate required");
            return;
        }
        super::cert_identity(certs.as_deref().map(Vec::as_slice), remote, "mqtt+quic")
    } else {
        None
    };
    let att = match broker.attach(Some(remote)) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            tracing::info!(%remote, "mqtt+quic: {e}; closing");
            close(&conn, code::OVERLOADED, "overloaded");
            return;
        }
    };
    if identity.is_some() {
        att.set_cert_identity(identity.as_deref());
    }
    let early = handshake_done.clone().now_or_never().is_none();
    if early {
        att.set_early();
    }
    let handshake = {
        let att = att.clone();
        async move {
            if early {
                let accepted = handshake_done.await;
                tracing::debug!(%remote, zero_rtt = accepted, "mqtt+quic: handshake complete; held packets released");
                att.handshake_complete();
            }
            std::future::pending::<()>().await
        }
    };
    let limit = broker.config().connect_timeout;
    let streams = Arc::new(AtomicU32::new(0));
    // Refuse unidirectional streams (spec §2.8).
    let uni = {
        let conn = conn.clone();
        async move {
            while let Ok(mut recv) = conn.accept_uni().await {
                tracing::info!(remote = %conn.remote_address(), "mqtt+quic: unidirectional stream refused");
                let _ = recv.stop(quinn::VarInt::from_u32(code::UNI_STREAM_REFUSED));
            }
        }
    };
    // The control stream (spec §2.1, §3.3).
    let (send, recv) = match tokio::time::timeout(limit, conn.accept_bi()).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(_)) => return,
        Err(_) => {
            tracing::info!(%remote, "mqtt+quic: no control stream within {limit:?}; closing");
            close(&conn, code::CONTROL_STREAM_TIMEOUT, "no control stream");
            return;
        }
    };
    streams.fetch_add(1, Ordering::Relaxed);
    att.note_stream_opened();
    let (connected_tx, connected_rx) = watch::channel(false);
    let hub = Arc::new(Hub::default());
    let stream =
        |channel| StreamTask { att: att.clone(), conn: conn.clone(), info: info.clone(), hub: hub.clone(), channel };
    // The control stream's reader and the connection's writer (every channel's outbox → its
    // stream) run in a task of their own, as data streams' readers do, so their wake-ups do not
    // also poll `accept_bi` and `accept_uni` in this task's `select!` (each takes quinn's
    // connection lock): in here, single-stream p99 at 20,000 msg/s was 50–70 ms against 3–10 ms
    // (docs/BENCHMARKS.md). Aborted if this task ends first.
    let control = {
        let abort = CancellationToken::new();
        let stopped = send.stopped();
        let writer =
            Writer::new(att.clone(), conn.clone(), hub.clone(), Lane::new(CONTROL_CHANNEL, send, abort.clone()));
        let reader = stream(CONTROL_CHANNEL).read(recv, stopped, abort, Some(connected_tx), None);
        // `join`'s future holds the two halves once; an `async move` block joining them holds
        // them twice (its captures and its await state): 2.9 KiB against 1.8 KiB per connection.
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(futures_util::future::join(reader, writer.run())))
    };
    let data = {
        let (conn, att, streams, hub) = (conn.clone(), att.clone(), streams.clone(), hub.clone());
        async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                let n = streams.fetch_add(1, Ordering::Relaxed) + 1;
                att.note_stream_opened();
                let channel = recv.id().index() as ChannelId;
                tracing::debug!(remote = %conn.remote_address(), channel, streams = n, "mqtt+quic: data stream opened");
                att.open_channel(channel);
                let abort = CancellationToken::new();
                let stopped = send.stopped();
                hub.add(Lane::new(channel, send, abort.clone()));
                tokio::spawn(stream(channel).read(recv, stopped, abort, None, Some(connected_rx.clone())));
            }
        }
    };
    tokio::select! {
        _ = control => {}
        _ = data => {}
        _ = uni => {}
        _ = handshake => {}
    }
    tracing::info!(
        remote = %info.remote(),
        streams = streams.load(Ordering::Relaxed),
        path_changes = info.path_changes(),
        "mqtt+quic: connection done"
    );
    drop(att);
}

/// What a connection's stream readers share with its [`Writer`]: the writer's waker, which a
/// reader wakes when it ends a channel abruptly, and the lanes of streams opened since the
/// writer last looked (a `Vec`, not a channel: an idle connection holds no allocation for it).
#[derive(Default)]
struct Hub {
    writer: AtomicWaker,
    opened: Mutex<Vec<Lane>>,
}

impl Hub {
    fn add(&self, lane: Lane) {
        self.opened.lock().unwrap_or_else(|e| e.into_inner()).push(lane);
        self.writer.wake();
    }

    /// The channel ended abruptly (reset or stopped, either way): its reader and its lane stop.
    fn abort(&self, abort: &CancellationToken) {
        abort.cancel();
        self.writer.wake();
    }
}

/// The reading half of one stream (channel): bytes → packets → core. The writing half is a
/// [`Lane`] of the connection's [`Writer`].
struct StreamTask {
    att: Arc<Attachment>,
    conn: quinn::Connection,
    info: Arc<ConnInfo>,
    hub: Arc<Hub>,
    channel: ChannelId,
}

impl StreamTask {
    /// Read until the stream ends. The control stream's end closes the connection (spec §3.1); a
    /// data stream's end — FIN, RESET_STREAM or STOP_SENDING from the client — ends the channel
    /// in both directions (spec §6.1): after a FIN the writer sends what is queued and
    /// finishes, otherwise it resets with DATA_STREAM_CLOSED. `stopped` is the stream's
    /// [`quinn::SendStream::stopped`]: STOP_SENDING is noticed here even while nothing is being
    /// written (messages in flight, the rest waiting for the window).
    async fn read(
        self,
        mut recv: quinn::RecvStream,
        stopped: impl Future<Output = Result<Option<quinn::VarInt>, quinn::StoppedError>>,
        abort: CancellationToken,
        connected: Option<watch::Sender<bool>>,
        wait_connected: Option<watch::Receiver<bool>>,
    ) {
        let StreamTask { att, conn, info, hub, channel } = self;
        let control = channel == CONTROL_CHANNEL;
        let remote = conn.remote_address();
        let data_closed = quinn::VarInt::from_u32(code::DATA_STREAM_CLOSED);
        // What ends the reading early, whatever it waits for: the channel aborted (the writer
        // saw STOP_SENDING, or the client reset its other half), or STOP_SENDING noticed here
        // (only that counts; the end of a finished stream's data is the writer's business).
        let mut halted = std::pin::pin!(async {
            tokio::select! {
                _ = abort.cancelled() => false,
                r = stopped => match r {
                    Ok(Some(_)) => true,
                    _ => {
                        abort.cancelled().await;
                        false
                    }
                },
            }
        });
        // Act on `halted`'s outcome: `true`, the client stopped this stream (spec §3.1 for the
        // control stream, §6.1 for a data stream); `false`, the channel was aborted.
        let halt = |stopped_here: bool, recv: &mut quinn::RecvStream| {
            if !stopped_here {
                let _ = recv.stop(data_closed);
                return;
            }
            if control {
                close(&conn, code::CONTROL_STREAM_CLOSED, "control stream stopped");
                return;
            }
            tracing::debug!(%remote, channel, "mqtt+quic: data stream stopped by the client");
            hub.abort(&abort);
            let _ = recv.stop(data_closed);
            att.close_channel(channel, ChannelEnd::StopSending);
        };
        if let Some(mut rx) = wait_connected {
            // Data written before CONNECT is processed waits in QUIC's buffer (spec §2.7).
            if rx.wait_for(|c| *c).await.is_err() {
                return;
            }
        }
        // The control stream learns the version from its CONNECT; a data stream opens after it.
        let mut decoder = att.decoder();
        let mut packets = Vec::new();
        let end = loop {
            // Hand over what was read, a slice at a time, while the outbox has room.
            loop {
                tokio::select! {
                    _ = std::future::poll_fn(|cx| att.poll_room(channel, cx)) => {}
                    h = &mut halted => {
                        halt(h, &mut recv);
                        return;
                    }
                }
                let err = decoder.decode(&mut packets, HANDLE_SLICE).err();
                if packets.is_empty() && err.is_none() {
                    break;
                }
                if !control {
                    // Spec §2.3: only packet types 3..=11 on data streams.
                    if let Some(p) = packets.iter().find(|p| !allowed_on_data_stream(p)) {
                        tracing::warn!(%remote, channel, packet = ?packet_name(p),
                            "mqtt+quic: packet not allowed on a data stream; closing (protocol error)");
                        close(&conn, code::PROTOCOL_ERROR, "packet not allowed on a data stream");
                        return;
                    }
                }
                let saw_connect = control && packets.iter().any(|p| matches!(p, Packet::Connect(_)));
                if control {
                    att.learn_version(&decoder);
                }
                att.handle(channel, &mut packets, err.as_ref());
                if saw_connect {
                    if let Some(tx) = &connected {
                        let _ = tx.send(true);
                    }
                }
                if err.is_some() {
                    return;
                }
            }
            // Keep no capacity between reads (memory per idle client).
            packets = Vec::new();
            let read = tokio::select! {
                r = recv.read_chunk(READ_CHUNK, true) => r,
                h = &mut halted => {
                    halt(h, &mut recv);
                    return;
                }
            };
            let chunk = match read {
                Ok(Some(c)) => c.bytes,
                Ok(None) => break ChannelEnd::Finished,
                Err(quinn::ReadError::Reset(_)) => break ChannelEnd::Reset,
                // The connection is gone (or the stream closed under us): nothing to do.
                Err(_) => return,
            };
            // quinn raises no event on migration; notice it here (`path_changed`).
            let changes = info.path_changes();
            info.remote();
            if info.path_changes() > changes {
                att.note_path_changed();
            }
            decoder.extend(&chunk);
        };
        if control {
            // Spec §3.1: the control stream is gone, so is the connection. If the core already
            // closed the channel (DISCONNECT came before the end), the writer is flushing what
            // is queued and closes the connection with the right code once the client
            // acknowledged it, within CLOSE_LINGER: wait for that.
            if att.is_closing(CONTROL_CHANNEL) {
                let _ = tokio::time::timeout(CLOSE_LINGER, conn.closed()).await;
            }
            close(&conn, code::CONTROL_STREAM_CLOSED, "control stream closed");
            return;
        }
        if decoder.buffered() > 0 {
            tracing::info!(%remote, channel, bytes = decoder.buffered(), %end,
                "mqtt+quic: data stream ended in the middle of a packet; partial packet discarded");
        }
        tracing::debug!(%remote, channel, %end, "mqtt+quic: data stream ended by the client");
        if end != ChannelEnd::Finished {
            hub.abort(&abort);
        }
        att.close_channel(channel, end);
    }
}

/// The writing half of one stream: what its channel's outbox holds, encoded, into the stream.
struct Lane {
    channel: ChannelId,
    send: quinn::SendStream,
    /// Fired when the channel ended abruptly (reset or stopped, by either side).
    abort: CancellationToken,
    /// Encoded packets, written up to `written`.
    buf: Vec<u8>,
    written: usize,
    /// The channel's close, acted on once `buf` is written.
    end: Option<CloseReason>,
}

/// Where a lane stands after [`Writer::step`].
enum Step {
    /// Everything encoded is written: it waits for its outbox.
    Idle,
    /// quinn took part of `buf`; it waits for flow control (the stream wakes the writer).
    Blocked,
    /// The stream is finished or reset, or the connection is gone: the lane is dropped.
    Done,
    /// The control stream is finished for the core's close: the connection closes once the
    /// client acknowledged it ([`Writer::run`]).
    ControlClosed(CloseReason),
}

impl Lane {
    fn new(channel: ChannelId, send: quinn::SendStream, abort: CancellationToken) -> Lane {
        Lane { channel, send, abort, buf: Vec::new(), written: 0, end: None }
    }

    /// Encoded bytes are left that quinn did not take (the stream's flow-control window).
    fn waits_for_quinn(&self) -> bool {
        self.written < self.buf.len()
    }
}

/// Batches of outboxes a lane takes in one wake-up of the writer before the others get a turn
/// and the task yields (its outbox may refill while the writer runs, on another core).
const ROUNDS_PER_WAKE: usize = 8;

/// The writer of one connection: every channel's outbox → its stream, in one task. All lanes
/// are written in one wake-up before quinn's connection driver runs, so what several channels
/// queued at once leaves in the same packets. A writer per stream let the driver run after
/// each stream's write (tokio runs the task a wake-up made ready next), one packet each. A lane
/// waiting for flow control never holds up the others.
struct Writer {
    att: Arc<Attachment>,
    conn: quinn::Connection,
    hub: Arc<Hub>,
    /// The control stream's lane; `None` once it is finished for a close.
    control: Option<Lane>,
    data: Vec<Lane>,
}

impl Writer {
    fn new(att: Arc<Attachment>, conn: quinn::Connection, hub: Arc<Hub>, control: Lane) -> Writer {
        Writer { att, conn, hub, control: Some(control), data: Vec::new() }
    }

    /// Write until the control channel closes, then close the connection with the core's reason
    /// once the client acknowledged the last packets (bounded by `CLOSE_LINGER`). If the
    /// connection is lost meanwhile, the connection's task ends and drops this one.
    async fn run(mut self) {
        let reason = std::future::poll_fn(|cx| self.poll(cx)).await;
        let (Some(reason), Some(control)) = (reason, self.control.take()) else { return };
        // Boxed: the close's futures live only while closing, not in every connection's task.
        Box::pin(self.linger(control, reason)).await;
    }

    async fn linger(mut self, control: Lane, reason: CloseReason) {
        tracing::debug!(remote = %self.conn.remote_address(), ?reason, "mqtt+quic: closing");
        // Let CONNACK (or the last packets) reach the client before the close: closing the
        // connection discards stream data not yet delivered, and a lost CONNECTION_CLOSE is not
        // sent again. quinn's `stopped()` resolves once the client has acknowledged everything
        // on the finished stream; meanwhile the data streams write what their outboxes hold
        // (they are closing too). A client that never acknowledges is closed after CLOSE_LINGER.
        let acked = control.send.stopped();
        let flushed = std::future::poll_fn(|cx| self.poll(cx));
        let _ = tokio::time::timeout(CLOSE_LINGER, async { tokio::join!(acked, flushed) }).await;
        close(&self.conn, close_code(&reason), "mqtt session ended");
    }

    /// Write what the outboxes hold. Ready with the core's close reason once the control stream
    /// is finished for it; ready with `None` when the control lane ended otherwise, or (after
    /// the control lane is finished) when no data lane is left.
    ///
    /// A wake-up costs the lanes it concerns, not every lane: the broker names the channels
    /// that got packets or ended ([`Attachment::poll_ready_channels`]); lanes waiting for
    /// flow control are tried again on every wake-up (quinn does not say which stream woke us).
    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<CloseReason>> {
        use std::task::Poll;
        self.hub.writer.register(cx.waker());
        self.take_opened();
        let (mut closed, mut ready, mut batch) = (None, Vec::new(), Vec::new());
        // Lanes with bytes quinn had not taken, and lanes aborted meanwhile. One that got
        // everything written looks at its outbox next (its mark may have come meanwhile).
        if let Some(lane) = &mut self.control {
            if lane.waits_for_quinn() {
                match Self::step(&self.att, &self.conn, lane, cx) {
                    Step::Idle => ready.push(CONTROL_CHANNEL),
                    Step::Blocked => {}
                    Step::Done => return Poll::Ready(None),
                    Step::ControlClosed(reason) => closed = Some(reason),
                }
            }
        }
        let mut i = 0;
        while i < self.data.len() {
            let lane = &mut self.data[i];
            if lane.waits_for_quinn() || lane.abort.is_cancelled() {
                match Self::step(&self.att, &self.conn, lane, cx) {
                    Step::Idle => ready.push(lane.channel),
                    Step::Blocked => {}
                    Step::Done | Step::ControlClosed(_) => {
                        self.data.swap_remove(i);
                        continue;
                    }
                }
            }
            i += 1;
        }
        for _ in 0..ROUNDS_PER_WAKE {
            if closed.is_some() {
                break;
            }
            if self.control.is_none() && self.data.is_empty() {
                return Poll::Ready(None);
            }
            let gone = matches!(self.att.poll_ready_channels(cx, &mut ready), Poll::Ready(false));
            // A channel is marked only after its lane was added: take the lanes added meanwhile.
            self.take_opened();
            if gone {
                // Every lane's drain reports the end: each finishes and is dropped.
                ready.extend(self.control.iter().chain(&self.data).map(|l| l.channel));
            }
            if ready.is_empty() {
                return Poll::Pending;
            }
            let mut wrote = false;
            for &channel in &ready {
                let at = if channel == CONTROL_CHANNEL {
                    None
                } else {
                    match self.data.iter().position(|l| l.channel == channel) {
                        Some(i) => Some(i),
                        None => continue, // ended already
                    }
                };
                let lane = match at {
                    None => match &mut self.control {
                        Some(l) => l,
                        None => continue, // finished for a close already
                    },
                    Some(i) => &mut self.data[i],
                };
                if lane.waits_for_quinn() {
                    continue; // its turn comes when quinn has taken the rest
                }
                wrote = true;
                lane.end = self.att.drain(channel, &mut batch, WRITE_BATCH);
                for p in batch.drain(..) {
                    if let Err(e) = codec::encode(&p, self.att.version(), &mut lane.buf) {
                        tracing::warn!(remote = %self.conn.remote_address(), channel, error = %e,
                            "mqtt+quic: cannot encode a packet");
                    }
                }
                match (Self::step(&self.att, &self.conn, lane, cx), at) {
                    (Step::Idle | Step::Blocked, _) => {}
                    (Step::Done, None) => return Poll::Ready(None),
                    (Step::Done, Some(i)) => {
                        self.data.swap_remove(i);
                    }
                    (Step::ControlClosed(reason), _) => closed = Some(reason),
                }
            }
            ready.clear();
            if !wrote {
                // The marks were for channels without a lane to write (ended already): look
                // again, which keeps the waker if nothing else came.
                continue;
            }
        }
        if let Some(reason) = closed {
            return Poll::Ready(Some(reason));
        }
        // Still more after ROUNDS_PER_WAKE batches: let other tasks run, then go on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Move the lanes of streams opened since the last look into `data`.
    fn take_opened(&mut self) {
        let mut opened = self.hub.opened.lock().unwrap_or_else(|e| e.into_inner());
        if !opened.is_empty() {
            self.data.append(&mut opened);
        }
    }

    /// Write what `lane` has encoded, then act on its channel's close.
    fn step(att: &Attachment, conn: &quinn::Connection, lane: &mut Lane, cx: &mut std::task::Context<'_>) -> Step {
        use std::task::Poll;
        let data_closed = quinn::VarInt::from_u32(code::DATA_STREAM_CLOSED);
        if lane.abort.is_cancelled() {
            let _ = lane.send.reset(data_closed);
            return Step::Done;
        }
        while lane.written < lane.buf.len() {
            match std::pin::Pin::new(&mut lane.send).poll_write(cx, &lane.buf[lane.written..]) {
                Poll::Ready(Ok(n)) => lane.written += n,
                Poll::Ready(Err(quinn::WriteError::Stopped(_))) => {
                    // STOP_SENDING (spec §6.1): a data stream ends in both directions (reset
                    // ours; its reader stops theirs and the core moves what was on it); the
                    // control stream's ends the connection (§3.1).
                    if lane.channel == CONTROL_CHANNEL {
                        close(conn, code::CONTROL_STREAM_CLOSED, "control stream stopped");
                    } else {
                        tracing::debug!(remote = %conn.remote_address(), channel = lane.channel,
                            "mqtt+quic: data stream stopped by the client");
                        lane.abort.cancel();
                        let _ = lane.send.reset(data_closed);
                        att.close_channel(lane.channel, ChannelEnd::StopSending);
                    }
                    return Step::Done;
                }
                Poll::Ready(Err(_)) => return Step::Done,
                Poll::Pending => return Step::Blocked,
            }
        }
        // Fresh buffers per batch: an idle stream keeps none (memory per idle client).
        lane.buf = Vec::new();
        lane.written = 0;
        match lane.end.take() {
            None => Step::Idle,
            Some(reason) => {
                let _ = lane.send.finish();
                if lane.channel == CONTROL_CHANNEL {
                    Step::ControlClosed(reason)
                } else {
                    Step::Done
                }
            }
        }
    }
}

fn allowed_on_data_stream(p: &Packet) -> bool {
    matches!(
        p,
        Packet::Publish(_)
            | Packet::Puback(_)
            | Packet::Pubrec(_)
            | Packet::Pubrel(_)
            | Packet::Pubcomp(_)
            | Packet::Subscribe(_)
            | Packet::Suback(_)
            | Packet::Unsubscribe(_)
            | Packet::Unsuback(_)
    )
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::Connack(_) => "CONNACK",
        Packet::Pingreq => "PINGREQ",
        Packet::Pingresp => "PINGRESP",
        Packet::Disconnect(_) => "DISCONNECT",
        _ => "other",
    }
}
