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
    tickets: Arc<crate::tls::TicketWatch>,
    v4: std::sync::Mutex<Option<quinn::Endpoint>>,
    v6: std::sync::Mutex<Option<quinn::Endpoint>>,
}

impl H3Client {
    /// A client with `opts`' trust and transport settings.
    pub fn new(opts: &ClientOptions) -> Result<H3Client, ClientError> {
        let (tls, tickets) = crate::tls::client_config_with_tickets(&opts.trust, &alpn_list(HttpVersion::H3), true)?;
        let quic_tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(crate::tls::TlsError::Quic)?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic_tls));
        config.transport_config(Arc::new(crate::quic::transport_config(&opts.transport)?));
        Ok(H3Client { config, tickets, v4: Default::default(), v6: Default::default() })
    }

    /// Session tickets received from servers (for resumption and 0-RTT).
    pub fn tickets(&self) -> &crate::tls::TicketWatch {
        &self.tickets
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

    /// Connect and send `req` in 0-RTT early data when a session ticket allows it
    /// (RFC 9001 §4.6.1), falling back to 1-RTT transparently when the server rejects it or
    /// when there is nothing to resume. A `425 Too Early` answer (RFC 8470 §5.2) is retried
    /// once the handshake has completed. Returns the open connection, the response and what
    /// happened to early data.
    pub async fn send_0rtt(
        &self,
        addr: SocketAddr,
        server_name: &str,
        req: Request<Bytes>,
    ) -> Result<(H3Connection, Response<Body>, ZeroRtt), ClientError> {
        let start = Instant::now();
        let endpoint = self.endpoint_for(addr)?;
        let connecting = endpoint.connect_with(self.config.clone(), addr, server_name)?;
        let (conn, accepted) = match connecting.into_0rtt() {
            Ok(pair) => pair,
            Err(connecting) => {
                // No ticket: an ordinary 1-RTT handshake.
                let conn = connecting.await?;
                let mut h3 = H3Connection::new(conn, start.elapsed()).await?;
                h3.endpoint = Some(endpoint);
                let resp = h3.send(req).await?;
                return Ok((h3, resp, ZeroRtt::NotAttempted));
            }
        };
        let early = H3Connection::unstarted(conn.clone(), Duration::ZERO).await;
        let retry = clone_request(&req);
        let (resp, accepted) = match early {
            Ok((driver, h3)) => {
                let (resp, accepted) = tokio::join!(h3.send(req), accepted);
                (resp.map(|r| (driver, h3, r)), accepted)
            }
            Err(e) => (Err(e), accepted.await),
        };
        let handshake = start.elapsed();
        if accepted {
            let (driver, mut unstarted, resp) = resp?;
            unstarted.handshake = handshake;
            let mut h3 = unstarted.start(driver);
            h3.endpoint = Some(endpoint);
            if resp.status() == http::StatusCode::TOO_EARLY {
                // RFC 8470 §5.2: the handshake is complete now; send it again.
                let resp = h3.send(retry).await?;
                return Ok((h3, resp, ZeroRtt::AcceptedRetried));
            }
            return Ok((h3, resp, ZeroRtt::Accepted));
        }
        // Rejected: everything sent early is gone, the HTTP/3 control streams included
        // (RFC 9001 §4.6.2), but the connection itself is up in 1-RTT. The early HTTP/3 session
        // is dropped without its driver ever running (so it cannot close the connection), and
        // HTTP/3 starts afresh.
        drop(resp);
        let again = clone_request(&retry);
        let same_connection = async {
            if let Some(reason) = conn.close_reason() {
                return Err(ClientError::QuicConnection(reason));
            }
            let mut h3 = H3Connection::new(conn.clone(), handshake).await?;
            h3.endpoint = Some(endpoint);
            let resp = h3.send(retry).await?;
            Ok::<_, ClientError>((h3, resp))
        };
        match same_connection.await {
            Ok((h3, resp)) => Ok((h3, resp, ZeroRtt::Rejected)),
            Err(e) => {
                // h3 may have closed the connection while its early streams failed: a new
                // connection (1-RTT) it is, still without the caller noticing.
                tracing::debug!(error = %e, "0-RTT rejected and the connection is gone; reconnecting");
                let h3 = self.connect(addr, server_name).await?;
                let resp = h3.send(again).await?;
                Ok((h3, resp, ZeroRtt::Rejected))
            }
        }
    }
}

/// Send a request on an HTTP/3 session; the response body streams.
async fn send_on(
    send_request: &h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    req: Request<Bytes>,
) -> Result<Response<Body>, ClientError> {
    let (parts, body) = req.into_parts();
    let mut sender = send_request.clone();

    let mut stream = sender.send_request(Request::from_parts(parts, ())).await?;
    if !body.is_empty() {
        stream.send_data(body).await?;
    }
    stream.finish().await?;
    let mut resp = stream.recv_response().await?;
    resp.extensions_mut().insert(super::StreamId(stream.id().into_inner()));
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

/// What happened to 0-RTT early data on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroRtt {
    /// The request went out in early data and the server accepted it.
    Accepted,
    /// Early data was accepted but the server answered `425 Too Early`; the request was sent
    /// again after the handshake.
    AcceptedRetried,
    /// The request went out in early data but the server rejected 0-RTT; it was sent again in 1-RTT.
    Rejected,
    /// No session to resume, so no early data.
    NotAttempted,
}

impl std::fmt::Display for ZeroRtt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ZeroRtt::Accepted => "accepted",
            ZeroRtt::AcceptedRetried => "accepted (425 Too Early, retried after the handshake)",
            ZeroRtt::Rejected => "rejected",
            ZeroRtt::NotAttempted => "not attempted",
        })
    }
}

/// A copy of a request (method, URI, version, headers, body).
pub(crate) fn clone_request(req: &Request<Bytes>) -> Request<Bytes> {
    let mut out = Request::new(req.body().clone());
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = req.uri().clone();
    *out.version_mut() = req.version();
    *out.headers_mut() = req.headers().clone();
    out
}

type H3Driver = h3::client::Connection<h3_quinn::Connection, Bytes>;

/// An HTTP/3 connection whose driver has not started.
struct Unstarted {
    conn: quinn::Connection,
    send_request: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    handshake: Duration,
}

impl Unstarted {
    fn start(self, mut driver: H3Driver) -> H3Connection {
        let driver = tokio::spawn(async move {
            let err = futures_util::future::poll_fn(|cx| driver.poll_close(cx)).await;
            if !err.is_h3_no_error() {
                tracing::debug!(error = %err, "HTTP/3 connection closed");
            }
        });
        let Unstarted { conn, send_request, handshake } = self;
        H3Connection { conn, send_request, handshake, driver, endpoint: None }
    }

    async fn send(&self, req: Request<Bytes>) -> Result<Response<Body>, ClientError> {
        send_on(&self.send_request, req).await
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
        let (driver, h3) = Self::unstarted(conn, handshake).await?;
        Ok(h3.start(driver))
    }

    /// HTTP/3 on `conn` with its connection driver not yet running. For early data: if the
    /// server rejects 0-RTT, the driver would see the control streams fail and close the QUIC
    /// connection, which is still good for 1-RTT; so it only starts once 0-RTT is accepted.
    async fn unstarted(conn: quinn::Connection, handshake: Duration) -> Result<(H3Driver, Unstarted), ClientError> {
        let (driver, send_request) = h3::client::new(h3_quinn::Connection::new(conn.clone())).await?;
        Ok((driver, Unstarted { conn, send_request, handshake }))
    }

    /// The underlying QUIC connection (stats, path, 0-RTT state).
    pub fn quic(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Time the QUIC handshake took.
    pub fn handshake_time(&self) -> Duration {
        self.handshake
    }

    /// The congestion controller in use, read back from the connection (the type of
    /// `quinn::Connection::congestion_state()`).
    pub fn congestion(&self) -> Option<String> {
        crate::conn::quic_controller_name(self.conn.congestion_state()).map(String::from)
    }

    /// Send a request; the response body streams.
    pub async fn send(&self, req: Request<Bytes>) -> Result<Response<Body>, ClientError> {
        send_on(&self.send_request, req).await
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
