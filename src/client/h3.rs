//! HTTP/3 client: quinn + h3 over h3-quinn.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

use super::{alpn_list, ClientError, ClientOptions, HttpVersion};
use crate::web::{Body, BodyError};

/// Holds the QUIC endpoints (one per address family) and the TLS configuration.
pub struct H3Client {
    config: quinn::ClientConfig,
    v4: std::sync::Mutex<Option<quinn::Endpoint>>,
    v6: std::sync::Mutex<Option<quinn::Endpoint>>,
}

impl H3Client {
    /// A client with `opts`' trust and transport settings.
    pub fn new(opts: &ClientOptions) -> Result<H3Client, ClientError> {
        let tls = crate::tls::client_config(&opts.trust, &alpn_list(HttpVersion::H3), true)?;
        let quic_tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::Other(format!("QUIC TLS configuration: {e}")))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic_tls));
        config.transport_config(Arc::new(crate::quic::transport_config(&opts.transport).map_err(ClientError::Other)?));
        Ok(H3Client { config, v4: Default::default(), v6: Default::default() })
    }

    /// The endpoint for `addr`'s family, created on first use (bound to an ephemeral port).
    pub fn endpoint_for(&self, addr: SocketAddr) -> Result<quinn::Endpoint, ClientError> {
        let (slot, bind) = if addr.is_ipv4() {
            (&self.v4, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
        } else {
            (&self.v6, SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)))
        };
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ep) = slot.as_ref() {
            return Ok(ep.clone());
        }
        let ep = quinn::Endpoint::client(bind)?;
        *slot = Some(ep.clone());
        Ok(ep)
    }

    /// Connect to `addr`, presenting `server_name` for SNI and certificate checks.
    pub async fn connect(&self, addr: SocketAddr, server_name: &str) -> Result<H3Connection, ClientError> {
        let start = Instant::now();
        let endpoint = self.endpoint_for(addr)?;
        let conn = match endpoint.connect_with(self.config.clone(), addr, server_name)?.await {
            Ok(c) => c,
            Err(e) => {
                // Let the CONNECTION_CLOSE go out before the caller (maybe the process) ends.
                flush_close(&endpoint).await;
                return Err(e.into());
            }
        };
        let handshake = start.elapsed();
        let mut h3 = H3Connection::new(conn, handshake).await?;
        h3.endpoint = Some(endpoint);
        Ok(h3)
    }
}

/// An HTTP/3 connection.
pub struct H3Connection {
    conn: quinn::Connection,
    send_request: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    handshake: Duration,
    driver: tokio::task::JoinHandle<()>,
    endpoint: Option<quinn::Endpoint>,
}

/// Wait (at most 300 ms) until the endpoint has sent the close of its connections, so a
/// process that exits next does not leave the server waiting for an idle timeout.
async fn flush_close(endpoint: &quinn::Endpoint) {
    let _ = tokio::time::timeout(Duration::from_millis(300), endpoint.wait_idle()).await;
}

impl H3Connection {
    /// Start HTTP/3 on an established QUIC connection.
    pub async fn new(conn: quinn::Connection, handshake: Duration) -> Result<H3Connection, ClientError> {
        let (mut driver, send_request) = h3::client::new(h3_quinn::Connection::new(conn.clone())).await?;
        let driver = tokio::spawn(async move {
            let err = futures_util::future::poll_fn(|cx| driver.poll_close(cx)).await;
            if !err.is_h3_no_error() {
                tracing::debug!(error = %err, "HTTP/3 connection closed");
            }
        });
        Ok(H3Connection { conn, send_request, handshake, driver, endpoint: None })
    }

    /// The underlying QUIC connection (stats, path, 0-RTT state).
    pub fn quic(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Time the QUIC handshake took.
    pub fn handshake_time(&self) -> Duration {
        self.handshake
    }

    /// Send a request; the response body streams.
    pub async fn send(&self, req: Request<Bytes>) -> Result<Response<Body>, ClientError> {
        let (parts, body) = req.into_parts();
        let mut sender = self.send_request.clone();
        let mut stream = sender.send_request(Request::from_parts(parts, ())).await?;
        if !body.is_empty() {
            stream.send_data(body).await?;
        }
        stream.finish().await?;
        let resp = stream.recv_response().await?;
        let (_send, recv) = stream.split();
        let body = futures_util::stream::unfold(Some(recv), |state| async move {
            let mut recv = state?;
            match recv.recv_data().await {
                Ok(Some(mut buf)) => Some((Ok(Frame::data(buf.copy_to_bytes(buf.remaining()))), Some(recv))),
                Ok(None) => None,
                Err(e) => Some((Err(Box::new(e) as BodyError), None)),
            }
        });
        Ok(resp.map(|()| StreamBody::new(body).boxed_unsync()))
    }

    /// Close with H3_NO_ERROR (RFC 9114 §8.1) and wait (briefly) until the close is sent.
    pub async fn close(self) {
        self.conn.close(0x100u32.into(), b"done");
        self.driver.abort();
        drop(self.send_request);
        if let Some(ep) = &self.endpoint {
            // Waiting for the endpoint to go idle is only right when this was its last connection.
            if ep.open_connections() <= 1 {
                flush_close(ep).await;
            }
        }
    }
}
