//! MQTT over QUIC: the stream mapping of `docs/mqtt-over-quic.md`, over the same broker core as
//! TCP and TLS (only the transport differs).
//!
//! One QUIC connection is one [`Attachment`]; each client-initiated bidirectional stream is one
//! channel of it: the first (stream 0) is the control stream ([`CONTROL_CHANNEL`]), later ones
//! are data streams (channel = the stream's index). Each stream runs a reader (bytes → packets →
//! core) and a writer (the channel's outbox → bytes). Data streams are not read until the
//! control stream has delivered CONNECT, so a client may write CONNECT, SUBSCRIBE and PUBLISH in
//! its first flight: what it wrote meanwhile waits in QUIC's receive buffer, bounded by the
//! stream's flow-control window (spec §2.7).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use super::broker::CloseReason;
use super::codec::{self, Decoder, Packet};
use super::driver::{Attachment, Broker};
use super::{ChannelId, CONTROL_CHANNEL};

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
}

/// Most packets encoded into one write.
const WRITE_BATCH: usize = 512;

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
pub async fn serve_connection(conn: quinn::Connection, broker: Broker) {
    let remote = conn.remote_address();
    let att = match broker.attach(Some(remote)) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            tracing::info!(%remote, "mqtt+quic: {e}; closing");
            close(&conn, code::OVERLOADED, "overloaded");
            return;
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
    let (connected_tx, connected_rx) = watch::channel(false);
    let control =
        run_stream(att.clone(), conn.clone(), CONTROL_CHANNEL, send, recv, max_packet, Some(connected_tx), None);
    let data = {
        let (conn, att, streams) = (conn.clone(), att.clone(), streams.clone());
        async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                let n = streams.fetch_add(1, Ordering::Relaxed) + 1;
                let channel = recv.id().index() as ChannelId;
                tracing::debug!(remote = %conn.remote_address(), channel, streams = n, "mqtt+quic: data stream opened");
                att.open_channel(channel);
                let task = run_stream(
                    att.clone(),
                    conn.clone(),
                    channel,
                    send,
                    recv,
                    max_packet,
                    None,
                    Some(connected_rx.clone()),
                );
                tokio::spawn(task);
            }
        }
    };
    tokio::select! {
        _ = control => {}
        _ = data => {}
        _ = uni => {}
    }
    tracing::info!(%remote, streams = streams.load(Ordering::Relaxed), "mqtt+quic: connection done");
    drop(att);
}

/// Read and write one stream (channel) until it ends. The control stream's end closes the
/// connection (spec §3.1); a data stream's end closes its channel (spec §3.4).
#[allow(clippy::too_many_arguments)]
async fn run_stream(
    att: Arc<Attachment>,
    conn: quinn::Connection,
    channel: ChannelId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    max_packet: usize,
    connected: Option<watch::Sender<bool>>,
    wait_connected: Option<watch::Receiver<bool>>,
) {
    let control = channel == CONTROL_CHANNEL;
    let remote = conn.remote_address();
    let reader = {
        let att = att.clone();
        let conn = conn.clone();
        async move {
            if let Some(mut rx) = wait_connected {
                // Data written before CONNACK waits in QUIC's buffer (spec §2.7).
                if rx.wait_for(|c| *c).await.is_err() {
                    return;
                }
            }
            let mut decoder = Decoder::new(max_packet);
            let mut packets = Vec::new();
            loop {
                let chunk = match recv.read_chunk(64 << 10, true).await {
                    Ok(Some(c)) => c.bytes,
                    Ok(None) | Err(_) => break,
                };
                let err = decoder.feed(&chunk, &mut packets).err();
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
                    break;
                }
            }
            if control {
                // Spec §3.1: the control stream is gone, so is the connection (unless the
                // writer already closed it after DISCONNECT).
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                close(&conn, code::CONTROL_STREAM_CLOSED, "control stream closed");
            } else {
                att.close_channel(channel, super::broker::ChannelEnd::Finished);
            }
        }
    };
    let writer = async move {
        let mut batch = Vec::new();
        let mut buf = Vec::new();
        loop {
            std::future::poll_fn(|cx| att.poll_outbox(channel, cx)).await;
            let reason = att.drain(channel, &mut batch, WRITE_BATCH);
            buf.clear();
            for p in batch.drain(..) {
                if let Err(e) = codec::encode(&p, &mut buf) {
                    tracing::warn!(%remote, channel, error = %e, "mqtt+quic: cannot encode a packet");
                }
            }
            if !buf.is_empty() && send.write_all(&buf).await.is_err() {
                return;
            }
            if let Some(reason) = reason {
                if control {
                    tracing::debug!(%remote, ?reason, "mqtt+quic: closing");
                    let _ = send.finish();
                    // Let CONNACK (or the last packets) reach the client before the close.
                    let rtt = conn.rtt();
                    tokio::time::sleep((rtt * 2).min(std::time::Duration::from_millis(200))).await;
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
