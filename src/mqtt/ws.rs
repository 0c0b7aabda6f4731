//! MQTT over WebSocket (MQTT 3.1.1 §6, MQTT 5.0 §6): the broker's TCP connection handler, run
//! unchanged on the byte stream that the WebSocket's binary messages carry.
//!
//! The opening handshake (path `/mqtt`, subprotocol `mqtt`) is the web side's
//! (`web::ws`); it attaches the connection to the broker and hands the open WebSocket here.
//! A pump joins the two: binary messages from the client are written, in order, into one end
//! of a bounded in-memory pipe whose other end the TCP handler reads as it reads a socket, so
//! MQTT packets may be split across messages or several may share one (§6.0 allows both);
//! what the handler writes goes back as binary messages, one per write. A text message breaks
//! §6.0 ("MUST close"): closed with 1003. A pipe rather than an `AsyncRead` over the message
//! stream keeps the close handshake in one place (here) and costs one copy per message.
//!
//! Bounds: the pipe holds at most [`PIPE_BYTES`] each way; a client that writes faster than the
//! broker reads waits on the pipe (and then on TCP), as on MQTT over TCP. Messages are limited by
//! the WebSocket's `max_message` (`web::ws`), MQTT packets by the broker's `max_packet_size`.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::driver::Attachment;

/// Capacity of the pipe between the WebSocket and the MQTT handler, each way: one read's
/// worth of the TCP handler (16 KiB).
pub(crate) const PIPE_BYTES: usize = 16 * 1024;
/// How long a closing side waits for the peer's Close frame.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How the pump ended.
enum End {
    /// The client sent Close (tungstenite has queued the echo).
    PeerClosed,
    /// The broker closed the connection (DISCONNECT, a protocol error, a takeover, shutdown).
    BrokerClosed,
    /// Close with this code.
    Close(CloseCode, &'static str),
    /// The connection is gone; nothing more can be sent.
    Gone,
}

/// Serve MQTT on an open WebSocket until either side ends it.
pub(crate) async fn serve_websocket<S>(ws: WebSocketStream<S>, att: Attachment, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (broker_end, ours) = tokio::io::duplex(PIPE_BYTES);
    tokio::join!(super::tcp::serve_stream(broker_end, att), pump(ws, ours, shutdown));
}

async fn pump<S>(ws: WebSocketStream<S>, pipe: tokio::io::DuplexStream, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let (mut pipe_r, mut pipe_w) = tokio::io::split(pipe);
    let inbound = async {
        while let Some(m) = rx.next().await {
            match m {
                Ok(Message::Binary(b)) => {
                    if pipe_w.write_all(&b).await.is_err() {
                        return End::BrokerClosed;
                    }
                }
                // MQTT 3.1.1 §6.0: data other than binary frames closes the connection.
                Ok(Message::Text(_)) => {
                    return End::Close(CloseCode::Unsupported, "MQTT over WebSocket carries binary messages only")
                }
                Ok(Message::Close(_)) => return End::PeerClosed,
                Ok(_) => {}
                Err(e) => {
                    return match close_code(&e) {
                        Some((code, why)) => {
                            tracing::info!("mqtt+ws: {e}; closing with {}", u16::from(code));
                            End::Close(code, why)
                        }
                        None => End::Gone,
                    }
                }
            }
        }
        End::Gone
    };
    let outbound = async {
        let mut buf = vec![0u8; PIPE_BYTES];
        loop {
            match pipe_r.read(&mut buf).await {
                Ok(0) | Err(_) => return End::BrokerClosed,
                Ok(n) => {
                    if tx.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        return End::Gone;
                    }
                }
            }
        }
    };
    let end = tokio::select! {
        e = inbound => e,
        e = outbound => e,
        _ = shutdown.cancelled() => End::Close(CloseCode::Away, "server shutting down"),
    };
    // The handler sees end of input (the client's connection ended: its will is published
    // unless DISCONNECT came first, MQTT 3.1.1 §3.1.2.5).
    let _ = pipe_w.shutdown().await;
    drop((pipe_r, pipe_w));
    let close = match end {
        End::Gone => None,
        End::PeerClosed => Some(None),
        End::BrokerClosed => Some(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() })),
        End::Close(code, why) => Some(Some(CloseFrame { code, reason: why.into() })),
    };
    if let Some(frame) = close {
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            // After the peer's Close, tungstenite sends the echo itself while we read on.
            if let Some(frame) = frame {
                if tx.send(Message::Close(Some(frame))).await.is_err() {
                    return;
                }
            }
            while let Some(Ok(_)) = rx.next().await {}
        })
        .await;
    }
    if let Ok(mut ws) = rx.reunite(tx) {
        let _ = tokio::time::timeout(CLOSE_WAIT, ws.get_mut().shutdown()).await;
    }
}

/// The close code (RFC 6455 §7.4.1) for a receive error, and the reason sent with it; `None`
/// when the connection is gone and nothing can be sent. Also used by the `/ws` echo (`web::ws`
/// imports this module, so the mapping lives here rather than there).
pub(crate) fn close_code(e: &tungstenite::Error) -> Option<(CloseCode, &'static str)> {
    use tungstenite::Error as E;
    match e {
        E::Capacity(_) => Some((CloseCode::Size, "message too big")),
        E::Utf8 { .. } => Some((CloseCode::Invalid, "invalid UTF-8 in a text message")),
        E::Protocol(_) => Some((CloseCode::Protocol, "WebSocket protocol error")),
        _ => None,
    }
}
