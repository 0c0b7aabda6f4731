//! HTTP/3 and HTTP/2 clients for `quiclab get`, the tests, the lab and the benchmarks.
//!
//! [`Client`] holds what outlives one connection (the QUIC endpoint, TLS configuration and its
//! session cache, so later connections from the same client can resume). [`Client::connect`]
//! opens an [`HttpConnection`]; [`HttpConnection::send`] sends one request and returns the
//! response with a streaming body. [`fetch`] does the whole `quiclab get` dance and measures it.
//!
//! Timings follow curl's `-w time_*` convention: every figure counts from the moment the
//! connection attempt started, so `ttfb` includes the handshake.

pub(crate) mod h2;
pub mod h3;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;

use crate::conn::Protocol;
use crate::tls::{TlsError, Trust};
use crate::web::Body;

/// The transport stream a response came on, in the response's extensions
/// (`response.extensions().get::<StreamId>()`), so a request can be matched to what a packet
/// trace shows. HTTP/3: the QUIC stream id (RFC 9000 §2.1; client bidirectional streams are
/// 0, 4, 8, ...), from h3's `RequestStream::id()`. HTTP/2 responses carry none: hyper 1.x
/// keeps its h2 stream handles private and exposes no stream id, and guessing it from the
/// order of requests would break on refused or retried streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamId(pub u64);

/// Errors from the clients.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not a URL.
    #[error("bad URL {url:?}")]
    UrlSyntax {
        /// The URL as given.
        url: String,
        /// What the URL parser found.
        #[source]
        source: url::ParseError,
    },
    /// The URL is a URL but not one of an HTTP request (e.g. characters `http` refuses).
    #[error("bad URL {url:?}")]
    Uri {
        /// The URL as given.
        url: String,
        /// What `http` found.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// The URL cannot be fetched here: not `https://`, or without a host.
    #[error("bad URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The host name did not resolve.
    #[error("cannot resolve {host}")]
    Resolve {
        /// The host name.
        host: String,
        /// Why it did not resolve (no addresses: `NotFound`).
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration could not be built (trusted CAs, client certificate).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The transport configuration does not fit QUIC.
    #[error("invalid transport configuration")]
    Transport(#[from] crate::quic::QuicError),
    /// The host name cannot be sent as a TLS server name.
    #[error("bad server name {name:?}")]
    ServerName {
        /// The name.
        name: String,
        /// Why rustls refuses it.
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// A socket operation failed (bind, connect, rebind, socket options).
    #[error("socket")]
    Io(#[from] std::io::Error),
    /// quinn refused to start a connection (e.g. an address it cannot send to).
    #[error("QUIC connect")]
    QuicConnect(#[from] quinn::ConnectError),
    /// The QUIC connection failed or was closed.
    #[error("QUIC connection")]
    QuicConnection(#[from] quinn::ConnectionError),
    /// The HTTP/3 connection failed.
    #[error("HTTP/3")]
    H3Connection(#[from] ::h3::error::ConnectionError),
    /// An HTTP/3 request stream failed.
    #[error("HTTP/3 stream")]
    H3Stream(#[from] ::h3::error::StreamError),
    /// hyper failed (HTTP/2 or HTTP/1.1).
    #[error("HTTP/2")]
    Hyper(#[from] hyper::Error),
    /// The request could not be built from its parts.
    #[error("bad request")]
    Request(#[from] http::Error),
    /// The response body failed part-way.
    #[error("response body")]
    Body(#[source] crate::web::BodyError),
    /// A response body ended before its `Content-Length` (RFC 9110 §8.6).
    #[error("body incomplete: {got} of {want} bytes")]
    BodyIncomplete {
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        want: u64,
    },
    /// No connection within the connect timeout.
    #[error("no connection to {addr} within {after:?}")]
    ConnectTimeout {
        /// The address tried.
        addr: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// What was asked for exists only over QUIC (0-RTT, connection migration).
    #[error("{what} needs HTTP/3 (QUIC)")]
    NeedsHttp3 {
        /// What was asked for.
        what: &'static str,
    },
}

/// Which HTTP version to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpVersion {
    /// HTTP/3 over QUIC.
    #[default]
    H3,
    /// HTTP/2 over TLS/TCP (HTTP/1.1 if the server does not offer h2).
    H2,
}

/// Options shared by every connection a [`Client`] opens.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Which certificates to trust.
    pub trust: Trust,
    /// QUIC transport parameters (windows, congestion controller); HTTP/2 windows follow them.
    pub transport: crate::config::TransportConfig,
    /// TCP congestion control for HTTP/2 sockets (`TCP_CONGESTION`); `None`: the kernel default.
    pub tcp_congestion: Option<String>,
    /// Give up on a connection attempt after this long. 10 s: QUIC gets no ICMP-driven
    /// failure from a closed port, so without it a wrong port waits for the idle timeout.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            trust: Trust::default(),
            transport: Default::default(),
            tcp_congestion: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// A parsed `https://host:port/path` target.
#[derive(Debug, Clone)]
pub struct Target {
    /// Host as written in the URL (a name or an IP literal, without brackets).
    pub host: String,
    /// Port (443 if the URL gives none).
    pub port: u16,
    /// The full URI, for the request line / pseudo-headers.
    pub uri: http::Uri,
    /// Connect here instead of resolving `host` (like curl's `--connect-to`): the name is still
    /// used for SNI and certificate checks.
    pub addr: Option<SocketAddr>,
}

impl Target {
    /// Parse an `https://` URL.
    pub fn parse(url: &str) -> Result<Target, ClientError> {
        let bad = |reason| ClientError::BadUrl { url: url.to_string(), reason };
        let parsed = url::Url::parse(url).map_err(|source| ClientError::UrlSyntax { url: url.to_string(), source })?;
        if parsed.scheme() != "https" {
            return Err(bad("only https:// URLs are supported (HTTP/3 and HTTP/2 here always use TLS)"));
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err(bad("no host")),
        };
        let port = parsed.port().unwrap_or(443);
        let uri: http::Uri =
            parsed.as_str().parse().map_err(|source| ClientError::Uri { url: url.to_string(), source })?;
        Ok(Target { host, port, uri, addr: None })
    }

    /// The same target, reached at `addr`.
    pub fn with_addr(mut self, addr: SocketAddr) -> Target {
        self.addr = Some(addr);
        self
    }

    /// Resolve the host; IPv4 first when both exist (the dual-stack server answers on both).
    pub async fn resolve(&self) -> Result<SocketAddr, ClientError> {
        if let Some(a) = self.addr {
            return Ok(a);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|source| ClientError::Resolve { host: self.host.clone(), source })?
            .collect();
        addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied().ok_or_else(|| ClientError::Resolve {
            host: self.host.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
        })
    }
}

/// A client: reuses its TLS configuration (and so its session cache) across connections.
pub struct Client {
    connect_timeout: Duration,
    inner: Inner,
}

/// The client of one HTTP version.
enum Inner {
    H3(h3::H3Client),
    H2(h2::H2Client),
}

impl Client {
    /// A client speaking `version`.
    pub fn new(version: HttpVersion, opts: &ClientOptions) -> Result<Client, ClientError> {
        let inner = match version {
            HttpVersion::H3 => Inner::H3(h3::H3Client::new(opts)?),
            HttpVersion::H2 => Inner::H2(h2::H2Client::new(opts)?),
        };
        Ok(Client { connect_timeout: opts.connect_timeout, inner })
    }

    /// The HTTP/3 client, when this client speaks HTTP/3.
    fn h3(&self) -> Option<&h3::H3Client> {
        match &self.inner {
            Inner::H3(c) => Some(c),
            Inner::H2(_) => None,
        }
    }

    /// Open a connection to `target`.
    pub async fn connect(&self, target: &Target) -> Result<HttpConnection, ClientError> {
        let addr = target.resolve().await?;
        let connect = async {
            Ok(match &self.inner {
                Inner::H3(c) => HttpConnection::H3(c.connect(addr, &target.host).await?),
                Inner::H2(c) => HttpConnection::H2(c.connect(addr, &target.host).await?),
            })
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| ClientError::ConnectTimeout { addr, after: self.connect_timeout })?
    }
}

/// An open HTTP connection of either kind.
pub enum HttpConnection {
    H3(h3::H3Connection),
    H2(h2::H2Connection),
}

impl HttpConnection {
    /// Send a request; the response body streams.
    pub async fn send(&self, req: Request<Bytes>) -> Result<Response<Body>, ClientError> {
        match self {
            HttpConnection::H3(c) => c.send(req).await,
            HttpConnection::H2(c) => c.send(req).await,
        }
    }

    /// The protocol the connection settled on.
    pub fn protocol(&self) -> Protocol {
        match self {
            HttpConnection::H3(_) => Protocol::H3,
            HttpConnection::H2(c) => c.protocol(),
        }
    }

    /// The TLS cipher suite negotiated, read from the connection's rustls session (e.g.
    /// `TLS13_AES_128_GCM_SHA256`). `None` for HTTP/3: quinn 0.11.12 does not expose its
    /// rustls session's cipher suite (`HandshakeData` holds only ALPN and server name).
    pub fn cipher_suite(&self) -> Option<String> {
        match self {
            HttpConnection::H3(_) => None,
            HttpConnection::H2(c) => c.cipher_suite(),
        }
    }

    /// The congestion controller read back from the connection: HTTP/3 the quinn controller's
    /// type (`cubic`, `newreno`, `bbr`), HTTP/2 the socket's `TCP_CONGESTION`.
    pub fn congestion(&self) -> Option<String> {
        match self {
            HttpConnection::H3(c) => c.congestion(),
            HttpConnection::H2(c) => c.congestion(),
        }
    }

    /// How long the connection took to set up (TCP + TLS, or the QUIC handshake).
    pub fn handshake_time(&self) -> Duration {
        match self {
            HttpConnection::H3(c) => c.handshake_time(),
            HttpConnection::H2(c) => c.handshake_time(),
        }
    }

    /// Close the connection cleanly and wait briefly for the close to go out.
    pub async fn close(self) {
        match self {
            HttpConnection::H3(c) => c.close().await,
            HttpConnection::H2(c) => drop(c),
        }
    }
}

/// Timings of one fetch, all from the start of the connection attempt.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Connection set-up (TCP + TLS, or QUIC handshake).
    pub handshake: Duration,
    /// Until the response headers arrived.
    pub ttfb: Duration,
    /// Until the last body byte arrived.
    pub total: Duration,
}

/// A whole response and how it was fetched.
#[derive(Debug)]
pub struct Fetched {
    pub response: Response<()>,
    pub body: Bytes,
    pub protocol: Protocol,
    pub timings: Timings,
    /// What happened to 0-RTT, when it was asked for.
    pub zero_rtt: Option<h3::ZeroRtt>,
    /// Whether the client moved to a new local socket during the download.
    pub rebound: bool,
}

impl Fetched {
    /// The `-v` timing line.
    pub fn timing_line(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "handshake={:.2}ms ttfb={:.2}ms total={:.2}ms bytes={} protocol={}",
            ms(self.timings.handshake),
            ms(self.timings.ttfb),
            ms(self.timings.total),
            self.body.len(),
            self.protocol
        )
    }
}

/// Build a request for `target` with the given method and body.
pub fn request(target: &Target, method: http::Method, body: Bytes) -> Result<Request<Bytes>, ClientError> {
    Request::builder()
        .method(method)
        .uri(target.uri.clone())
        .header(http::header::USER_AGENT, concat!("quiclab/", env!("CARGO_PKG_VERSION")))
        .body(body)
        .map_err(ClientError::Request)
}

/// Connect, send one request, read the whole response, close: what `quiclab get` does.
pub async fn fetch(client: &Client, target: &Target, req: Request<Bytes>) -> Result<Fetched, ClientError> {
    fetch_with(client, target, req, &FetchOptions::default()).await
}

/// How [`fetch_with`] fetches.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Send the request in 0-RTT early data when the client holds a session ticket (HTTP/3).
    pub zero_rtt: bool,
    /// Move the client to a new local UDP socket part-way through the body (HTTP/3).
    pub rebind_after: Option<RebindAfter>,
}

/// When to move to a new local socket part-way through: `quiclab get --rebind-after` (a count of
/// body bytes) and `quiclab mqtt pub|sub --rebind-after` (a count of messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebindAfter {
    /// After this many units: body bytes for a download, messages for MQTT.
    Count(u64),
    /// After this long: since the request was sent (download), since CONNACK (MQTT).
    Time(Duration),
}

/// A `--rebind-after` value that is neither a count nor a time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: give a count (1000, 64k, 5M) or a time ending in ms or s (200ms, 1.5s)")]
pub struct BadRebindAfter(pub String);

impl std::str::FromStr for RebindAfter {
    type Err = BadRebindAfter;
    /// A time ending in `ms` or `s` (`200ms`, `1.5s`), else a count with an optional `k`, `M`
    /// or `G` suffix (powers of 1024: `64k` is 65536).
    fn from_str(s: &str) -> Result<Self, BadRebindAfter> {
        let t = s.trim();
        let bad = || BadRebindAfter(s.to_string());
        if t.ends_with('s') {
            return crate::config::parse_duration(t).map(RebindAfter::Time).map_err(|_| bad());
        }
        crate::config::parse_size(t).map(RebindAfter::Count).map_err(|_| bad())
    }
}

/// Connect, send one request, read the whole response, close, with the options' 0-RTT and
/// migration behaviour.
pub async fn fetch_with(
    client: &Client,
    target: &Target,
    req: Request<Bytes>,
    opts: &FetchOptions,
) -> Result<Fetched, ClientError> {
    let start = Instant::now();
    let tickets_before = client.h3().map(|h| h.tickets().received());
    let (conn, resp, zero_rtt) = match (client.h3(), opts.zero_rtt) {
        (Some(h3), true) => {
            let addr = target.resolve().await?;
            let (conn, resp, z) = h3.send_0rtt(addr, &target.host, req).await?;
            (HttpConnection::H3(conn), resp, Some(z))
        }
        (None, true) => return Err(ClientError::NeedsHttp3 { what: "0-RTT" }),
        _ => {
            let conn = client.connect(target).await?;
            let resp = conn.send(req).await?;
            (conn, resp, None)
        }
    };
    let handshake = conn.handshake_time();
    let ttfb = start.elapsed();
    let (parts, mut body) = resp.into_parts();
    let mut buf = bytes::BytesMut::new();
    let mut rebound = false;
    let rebind_at = match opts.rebind_after {
        Some(RebindAfter::Time(d)) => Some(tokio::time::Instant::now() + d),
        _ => None,
    };
    loop {
        let frame = match rebind_at {
            Some(at) if !rebound => tokio::select! {
                f = body.frame() => f,
                _ = tokio::time::sleep_until(at) => {
                    rebind(client, &conn)?;
                    rebound = true;
                    continue;
                }
            },
            _ => body.frame().await,
        };
        let Some(frame) = frame else { break };
        if let Ok(data) = frame.map_err(ClientError::Body)?.into_data() {
            buf.extend_from_slice(&data);
        }
        if let Some(RebindAfter::Count(n)) = opts.rebind_after {
            if !rebound && buf.len() as u64 >= n {
                rebind(client, &conn)?;
                rebound = true;
            }
        }
    }
    let total = start.elapsed();
    let protocol = conn.protocol();
    if let (Some(h3), Some(before), true) = (client.h3(), tickets_before, opts.zero_rtt) {
        // The server's session tickets follow the handshake; a connection closed before they
        // arrive leaves the next one nothing to resume from.
        if !h3.tickets().wait_beyond(before, Duration::from_secs(1)).await {
            tracing::info!("no session ticket arrived on this connection; the next one cannot resume");
        }
    }
    conn.close().await;
    Ok(Fetched {
        response: Response::from_parts(parts, ()),
        body: buf.freeze(),
        protocol,
        timings: Timings { handshake, ttfb, total },
        zero_rtt,
        rebound,
    })
}

/// Move an HTTP/3 connection's endpoint to a fresh local UDP socket (connection migration,
/// RFC 9000 §9). The server sees a new address and validates it. Every connection of the
/// client's endpoint for that address family moves with it.
pub fn rebind(client: &Client, conn: &HttpConnection) -> Result<(), ClientError> {
    let (Some(h3), HttpConnection::H3(c)) = (client.h3(), conn) else {
        return Err(ClientError::NeedsHttp3 { what: "rebinding" });
    };
    let addr = c.quic().remote_address();
    let endpoint = h3.endpoint_for(addr)?;
    let old = endpoint.local_addr()?;
    let bind = SocketAddr::new(old.ip(), 0);
    endpoint.rebind(std::net::UdpSocket::bind(bind)?)?;
    tracing::info!(old = %old, new = %endpoint.local_addr()?, "client moved to a new local socket");
    Ok(())
}

pub(crate) fn alpn_list(version: HttpVersion) -> Vec<&'static [u8]> {
    match version {
        HttpVersion::H3 => vec![crate::config::ALPN_H3],
        HttpVersion::H2 => vec![crate::config::ALPN_H2, crate::config::ALPN_HTTP11],
    }
}
