//! HTTP/2 (and HTTP/1.1 fallback) client: hyper over tokio-rustls, TCP_NODELAY on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{alpn_list, ClientError, ClientOptions, HttpVersion};
use crate::conn::Protocol;
use crate::web::{Body, BodyError};

/// Holds the TLS configuration (and its session cache) and the HTTP/2 windows.
pub struct H2Client {
    tls: tokio_rustls::TlsConnector,
    transport: crate::config::TransportConfig,
    tcp_congestion: Option<String>,
}

impl H2Client {
    /// A client with `opts`' trust and windows.
    pub fn new(opts: &ClientOptions) -> Result<H2Client, ClientError> {
        let tls = crate::tls::client_config(&opts.trust, &alpn_list(HttpVersion::H2), false)?;
        Ok(H2Client {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            transport: opts.transport.clone(),
            tcp_congestion: opts.tcp_congestion.clone(),
        })
    }

    /// Connect over TCP + TLS and start HTTP/2 (or HTTP/1.1 if the server picks it).
    pub async fn connect(&self, addr: SocketAddr, server_name: &str) -> Result<H2Connection, ClientError> {
        let start = Instant::now();
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        if let Some(cc) = &self.tcp_congestion {
            use std::os::fd::AsRawFd;
            crate::tcp::set_congestion(socket.as_raw_fd(), cc)?;
        }
        let tcp = socket.connect(addr).await?;
        let congestion = {
            use std::os::fd::AsRawFd;
            crate::stats::tcp_congestion(tcp.as_raw_fd()).ok()
        };
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|source| ClientError::ServerName { name: server_name.to_string(), source })?;
        let tls = self.tls.connect(name, tcp).await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(crate::config::ALPN_H2);
        let cipher_suite = tls.get_ref().1.negotiated_cipher_suite().map(|cs| format!("{:?}", cs.suite()));
        let io = TokioIo::new(tls);
        let sender = if h2 {
            let t = &self.transport;
            let win = |v: u64| v.min((1u64 << 31) - 1) as u32;
            let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(win(t.stream_window))
                .initial_connection_window_size(win(t.conn_window))
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "HTTP/2 connection ended");
                }
            });
            Sender::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "HTTP/1.1 connection ended");
                }
            });
            Sender::H1(tokio::sync::Mutex::new(sender))
        };
        Ok(H2Connection { sender, handshake: start.elapsed(), cipher_suite, congestion })
    }
}

enum Sender {
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    H1(tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Full<Bytes>>>),
}

/// An HTTP/2 (or HTTP/1.1) connection.
pub struct H2Connection {
    sender: Sender,
    handshake: Duration,
    cipher_suite: Option<String>,
    congestion: Option<String>,
}

impl H2Connection {
    /// Time TCP + TLS (+ the HTTP/2 preface) took.
    pub fn handshake_time(&self) -> Duration {
        self.handshake
    }

    /// The TLS cipher suite rustls negotiated.
    pub fn cipher_suite(&self) -> Option<String> {
        self.cipher_suite.clone()
    }

    /// The socket's TCP controller, read back with `TCP_CONGESTION` after connecting.
    pub fn congestion(&self) -> Option<String> {
        self.congestion.clone()
    }

    /// The protocol the server chose.
    pub fn protocol(&self) -> Protocol {
        match self.sender {
            Sender::H2(_) => Protocol::H2,
            Sender::H1(_) => Protocol::Http11,
        }
    }

    /// Send a request; the response body streams. HTTP/1.1 requests are sent one at a time.
    pub async fn send(&self, req: Request<Bytes>) -> Result<Response<Body>, ClientError> {
        let resp = match &self.sender {
            Sender::H2(s) => {
                // HTTP/2 requests carry :authority, not Host (RFC 9113 §8.3.1).
                let mut attempt = 0;
                loop {
                    let mut s = s.clone();
                    s.ready().await?;
                    match s.send_request(super::h3::clone_request(&req).map(Full::new)).await {
                        // RFC 9113 §8.7: a stream refused with REFUSED_STREAM was not processed
                        // (e.g. sent before the server's SETTINGS lowered the stream limit) and
                        // is safe to send again.
                        Err(e) if attempt < 5 && is_refused_stream(&e) => {
                            attempt += 1;
                            tokio::task::yield_now().await;
                        }
                        other => break other?,
                    }
                }
            }
            Sender::H1(s) => {
                let mut s = s.lock().await;
                s.ready().await?;
                let mut req = req.map(Full::new);
                if let Some(host) = req.uri().authority().map(|a| a.to_string()) {
                    if let Ok(v) = http::HeaderValue::from_str(&host) {
                        req.headers_mut().insert(http::header::HOST, v);
                    }
                }
                // Send with the path only in the request line (RFC 9112 §3.2.1).
                let pq = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
                if let Ok(uri) = pq.parse() {
                    *req.uri_mut() = uri;
                }
                s.send_request(req).await?
            }
        };
        Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BodyError).boxed_unsync()))
    }
}

/// Was this request refused with HTTP/2 REFUSED_STREAM?
fn is_refused_stream(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2e) = s.downcast_ref::<h2::Error>() {
            return h2e.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}
