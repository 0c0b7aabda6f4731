//! MQTT over QUIC: the stream mapping of `docs/mqtt-over-quic.md`, over the same broker core as
//! TCP and TLS (only the transport differs).
//!
//! One QUIC connection is one `Attachment`; each client-initiated bidirectional stream is one
//! channel of it: the first (stream 0) is the control stream ([`CONTROL_CHANNEL`]), later ones
//! are data streams (channel = the stream's index). Each stream runs a reader (bytes → packets →
//! core) and a writer (the channel's outbox → bytes).
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

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::watch;

use super::broker::{ChannelEnd, CloseReason};
use super::codec::{self, Decoder, Packet};
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
    let max_packet = broker.config().max_packet_size;
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
    let stream = |channel| StreamTask { att: att.clone(), conn: conn.clone(), info: info.clone(), channel, max_packet };
    // The control stream runs in a task of its own, as data streams do, so its wake-ups do not
    // also poll `accept_bi` and `accept_uni` in this task's `select!` (each takes quinn's
    // connection lock): in here, single-stream p99 at 20,000 msg/s was 50–70 ms against 3–10 ms
    // (docs/BENCHMARKS.md). Aborted if this task ends first.
    let control = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(stream(CONTROL_CHANNEL).run(
        send,
        recv,
        Some(connected_tx),
        None,
    )));
    let data = {
        let (conn, att, streams) = (conn.clone(), att.clone(), streams.clone());
        async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                let n = streams.fetch_add(1, Ordering::Relaxed) + 1;
                att.note_stream_opened();
                let channel = recv.id().index() as ChannelId;
                tracing::debug!(remote = %conn.remote_address(), channel, streams = n, "mqtt+quic: data stream opened");
                att.open_channel(channel);
                tokio::spawn(stream(channel).run(send, recv, None, Some(connected_rx.clone())));
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

/// One stream (channel) of a connection: a reader (bytes → packets → core) and a writer (the
/// channel's outbox → bytes).
struct StreamTask {
    att: Arc<Attachment>,
    conn: quinn::Connection,
    info: Arc<ConnInfo>,
    channel: ChannelId,
    max_packet: usize,
}

impl StreamTask {
    /// Run until the stream ends. The control stream's end closes the connection (spec §3.1); a
    /// data stream's end — FIN, RESET_STREAM or STOP_SENDING from the client — ends the channel
    /// in both directions (spec §6.1): after a FIN the writer sends what is queued and
    /// finishes, otherwise it resets with DATA_STREAM_CLOSED.
    async fn run(
        self,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        connected: Option<watch::Sender<bool>>,
        wait_connected: Option<watch::Receiver<bool>>,
    ) {
        let StreamTask { att, conn, info, channel, max_packet } = self;
        let control = channel == CONTROL_CHANNEL;
        let remote = conn.remote_address();
        // Fired when the channel ended abruptly (reset or stopped): the other half stops too.
        let abort = tokio_util::sync::CancellationToken::new();
        let data_closed = quinn::VarInt::from_u32(code::DATA_STREAM_CLOSED);
        let reader = {
            let (att, conn, abort) = (att.clone(), conn.clone(), abort.clone());
            async move {
                if let Some(mut rx) = wait_connected {
                    // Data written before CONNECT is processed waits in QUIC's buffer (spec §2.7).
                    if rx.wait_for(|c| *c).await.is_err() {
                        return;
                    }
                }
                let mut decoder = Decoder::new(max_packet);
                let mut packets = Vec::new();
                let end = loop {
                    // Hand over what was read, a slice at a time, while the outbox has room.
                    loop {
                        tokio::select! {
                            _ = std::future::poll_fn(|cx| att.poll_room(channel, cx)) => {}
                            _ = abort.cancelled() => {
                                let _ = recv.stop(data_closed);
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
                        _ = abort.cancelled() => {
                            // The client stopped reading this stream (spec §6.1).
                            let _ = recv.stop(data_closed);
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
                    // Spec §3.1: the control stream is gone, so is the connection. If the core
                    // already closed the channel (DISCONNECT came before the end), the writer
                    // is flushing what is queued and closes the connection with the right code
                    // once the client acknowledged it, within CLOSE_LINGER: wait for that.
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
                    abort.cancel();
                }
                att.close_channel(channel, end);
            }
        };
        let writer = async move {
            loop {
                // Fresh buffers per wake-up: an idle stream keeps none (memory per idle client).
                let (mut batch, mut buf) = (Vec::new(), Vec::new());
                tokio::select! {
                    _ = std::future::poll_fn(|cx| att.poll_outbox(channel, cx)) => {}
                    _ = abort.cancelled() => {
                        let _ = send.reset(data_closed);
                        return;
                    }
                    // STOP_SENDING arrives while nothing is being written (messages in flight,
                    // the rest waiting for the window): notice it now, not at the next write.
                    stopped = send.stopped() => {
                        if matches!(stopped, Ok(Some(_))) {
                            stopped_by_client(&conn, &att, channel, &abort, &mut send);
                        }
                        return;
                    }
                }
                let reason = att.drain(channel, &mut batch, WRITE_BATCH);
                for p in batch.drain(..) {
                    if let Err(e) = codec::encode(&p, &mut buf) {
                        tracing::warn!(%remote, channel, error = %e, "mqtt+quic: cannot encode a packet");
                    }
                }
                if !buf.is_empty() {
                    let written = tokio::select! {
                        w = send.write_all(&buf) => w,
                        _ = abort.cancelled() => {
                            let _ = send.reset(data_closed);
                            return;
                        }
                    };
                    match written {
                        Ok(()) => {}
                        Err(quinn::WriteError::Stopped(_)) => {
                            stopped_by_client(&conn, &att, channel, &abort, &mut send);
                            return;
                        }
                        Err(_) => return,
                    }
                }
                if let Some(reason) = reason {
                    if control {
                        tracing::debug!(%remote, ?reason, "mqtt+quic: closing");
                        let _ = send.finish();
                        // Let CONNACK (or the last packets) reach the client before the close:
                        // closing the connection discards stream data not yet delivered, and a
                        // lost CONNECTION_CLOSE is not sent again. quinn's `stopped()` resolves
                        // once the client has acknowledged everything on the finished stream;
                        // a client that never does is closed after CLOSE_LINGER anyway.
                        let _ = tokio::time::timeout(CLOSE_LINGER, send.stopped()).await;
                        close(&conn, close_code(&reason), "mqtt session ended");
                    } else {
                        let _ = send.finish();
                    }
                    return;
                }
            }
        };
        // The writer ends the stream when its channel closes; the reader when the client does.
        tokio::join!(reader, writer);
    }
}

/// The client sent STOP_SENDING for `channel`'s stream: a data stream ends in both directions
/// (spec §6.1: reset our side, stop reading theirs, the core moves what was on it); for the
/// control stream the connection closes (§3.1).
fn stopped_by_client(
    conn: &quinn::Connection,
    att: &Attachment,
    channel: ChannelId,
    abort: &tokio_util::sync::CancellationToken,
    send: &mut quinn::SendStream,
) {
    if channel == CONTROL_CHANNEL {
        close(conn, code::CONTROL_STREAM_CLOSED, "control stream stopped");
        return;
    }
    tracing::debug!(remote = %conn.remote_address(), channel, "mqtt+quic: data stream stopped by the client");
    abort.cancel();
    let _ = send.reset(quinn::VarInt::from_u32(code::DATA_STREAM_CLOSED));
    att.close_channel(channel, ChannelEnd::StopSending);
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
        Packet::Disconnect => "DISCONNECT",
        _ => "other",
    }
}
