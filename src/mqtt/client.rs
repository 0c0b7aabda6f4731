//! An async MQTT 3.1.1 client over TCP, TLS and QUIC, for the CLI, the tests, the lab and the
//! benchmark.
//!
//! Two levels:
//! * [`connect_stream`] + [`PacketReader`] / [`PacketWriter`]: framed packets over a stream,
//!   nothing else (the benchmark pipelines with them; tests craft exact packet sequences).
//! * [`Client`]: CONNECT/CONNACK, publish with the whole QoS 1/2 flow, subscribe, receive with
//!   acknowledgements and keepalive pings.
//!
//! URLs: `mqtt://HOST[:1883]`, `mqtts://HOST[:8883]`, `mqtt+quic://HOST[:14567]` (the mapping of
//! `docs/mqtt-over-quic.md`). Over QUIC the [`Client`] speaks single-stream mode (every packet on
//! the control stream) or per-topic mode (one data stream per topic published or filter
//! subscribed, [`StreamMode`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::codec::{
    self, Connect, ConnectProperties, ConnectReasonCode, DisconnectReasonCode, LastWill, Packet, Pid, Protocol,
    Publish, QoS, QosPid, Subscribe, SubscribeReasonCode, TopicFilter, TopicName, Unsubscribe, Version,
};
use super::config::{DEFAULT_TCP_PORT, DEFAULT_TLS_PORT};
use super::session::Message;
use super::MqttError;
use crate::tls::{ClientIdentity, Trust};

/// Default UDP port of MQTT over QUIC (EMQX's).
pub const DEFAULT_QUIC_PORT: u16 = 14567;

/// How to reach a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `mqtt://`
    Tcp,
    /// `mqtts://`
    Tls,
    /// `mqtt+quic://` (docs/mqtt-over-quic.md).
    Quic,
}

/// A broker URL: `mqtt://HOST[:PORT]`, `mqtts://HOST[:PORT]` or `mqtt+quic://HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    pub transport: Transport,
    /// Host name or IP address (without brackets).
    pub host: String,
    pub port: u16,
}

impl FromStr for MqttUrl {
    type Err = MqttError;
    fn from_str(s: &str) -> Result<Self, MqttError> {
        let bad = |why: &str| MqttError::BadUrl(format!("{s:?}: {why} (use mqtt://HOST:1883 or mqtts://HOST:8883)"));
        let url = url::Url::parse(s).map_err(|e| bad(&e.to_string()))?;
        let (transport, default_port) = match url.scheme() {
            "mqtt" | "tcp" => (Transport::Tcp, DEFAULT_TCP_PORT),
            "mqtts" | "ssl" | "tls" => (Transport::Tls, DEFAULT_TLS_PORT),
            "mqtt+quic" | "quic" => (Transport::Quic, DEFAULT_QUIC_PORT),
            other => return Err(bad(&format!("unknown scheme {other:?}"))),
        };
        let host = url.host_str().ok_or_else(|| bad("no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        if !matches!(url.path(), "" | "/") {
            return Err(bad("a broker URL has no path"));
        }
        Ok(MqttUrl { transport, host, port: url.port().unwrap_or(default_port) })
    }
}

impl fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.transport {
            Transport::Tcp => "mqtt",
            Transport::Tls => "mqtts",
            Transport::Quic => "mqtt+quic",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl MqttUrl {
    /// `mqtt://ADDR`.
    pub fn tcp(addr: SocketAddr) -> MqttUrl {
        MqttUrl { transport: Transport::Tcp, host: addr.ip().to_string(), port: addr.port() }
    }

    /// `mqtts://localhost:PORT` (the development certificate's name).
    pub fn tls_localhost(port: u16) -> MqttUrl {
        MqttUrl { transport: Transport::Tls, host: "localhost".into(), port }
    }
}

/// A byte stream to a broker.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A boxed stream (plain TCP or TLS).
pub type BoxStream = Pin<Box<dyn Stream>>;

/// Open the transport (TCP, TCP_NODELAY on; plus TLS for `mqtts://`) within `timeout`.
pub async fn connect_stream(url: &MqttUrl, trust: &Trust, timeout: Duration) -> Result<BoxStream, MqttError> {
    connect_stream_with(url, None, trust, None, timeout).await
}

/// [`connect_stream`], connecting to `ip` instead of resolving the URL's host (which still names
/// the server for TLS, like `quiclab get --connect-to`) and presenting the client certificate
/// `identity` over TLS and QUIC when the broker asks for one.
pub(crate) async fn connect_stream_with(
    url: &MqttUrl,
    ip: Option<std::net::IpAddr>,
    trust: &Trust,
    identity: Option<&ClientIdentity>,
    timeout: Duration,
) -> Result<BoxStream, MqttError> {
    let tcp = |url: &MqttUrl| {
        let (host, port) = (url.host.clone(), url.port);
        async move {
            match ip {
                Some(ip) => TcpStream::connect((ip, port)).await,
                None => TcpStream::connect((host.as_str(), port)).await,
            }
        }
    };
    let fut = async {
        match url.transport {
            Transport::Quic => {
                let setup = QuicSetup::with_identity(trust, identity)?;
                Ok(Box::pin(QuicStream::connect_on(url, ip, setup).await?) as BoxStream)
            }
            Transport::Tcp => {
                let sock = tcp(url).await?;
                sock.set_nodelay(true)?;
                Ok(Box::pin(sock) as BoxStream)
            }
            Transport::Tls => {
                let sock = tcp(url).await?;
                sock.set_nodelay(true)?;
                let (cfg, _) = crate::tls::client_config_with_identity(trust, identity, &[], false)?;
                let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                    .map_err(|_| MqttError::BadUrl(format!("{:?} is not a valid TLS server name", url.host)))?;
                let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, sock).await?;
                Ok(Box::pin(tls) as BoxStream)
            }
        }
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| MqttError::Timeout(format!("connecting to {url}")))?
}

/// A QUIC client endpoint and its configuration, shared by successive connections: a later
/// connection resumes the TLS session of an earlier one and can send 0-RTT data (the tickets
/// live in the configuration's session store). Cloning shares both.
#[derive(Clone)]
pub struct QuicSetup {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
}

impl fmt::Debug for QuicSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicSetup").field("local", &self.endpoint.local_addr().ok()).finish()
    }
}

impl QuicSetup {
    /// A client endpoint on an ephemeral IPv4 port, trusting `trust`.
    pub fn new(trust: &Trust) -> Result<QuicSetup, MqttError> {
        Self::with_identity(trust, None)
    }

    /// [`QuicSetup::new`], presenting the client certificate `identity` when asked for one.
    pub fn with_identity(trust: &Trust, identity: Option<&ClientIdentity>) -> Result<QuicSetup, MqttError> {
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?;
        Ok(QuicSetup { endpoint, config: client_config_with(trust, identity)? })
    }

    /// The client endpoint (rebinding it moves every connection on it).
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// The client configuration (it holds the session tickets).
    pub fn config(&self) -> &quinn::ClientConfig {
        &self.config
    }
}

/// Whether a connection sent its first flight as 0-RTT data, and what the server made of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyData {
    /// Not asked for (or not QUIC).
    Off,
    /// Asked for, but there was no ticket to resume with (first connection).
    NoTicket,
    /// CONNECT went in 0-RTT and the server accepted it.
    Accepted,
    /// CONNECT went in 0-RTT, the server refused early data: sent again after the handshake.
    Rejected,
}

impl fmt::Display for EarlyData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EarlyData::Off => "off",
            EarlyData::NoTicket => "not attempted (no ticket yet)",
            EarlyData::Accepted => "accepted",
            EarlyData::Rejected => "rejected (CONNECT sent again after the handshake)",
        })
    }
}

/// `url`'s address, or `ip` at its port.
async fn resolve(url: &MqttUrl, ip: Option<std::net::IpAddr>) -> Result<SocketAddr, MqttError> {
    match ip {
        Some(ip) => Ok(SocketAddr::new(ip, url.port)),
        None => tokio::net::lookup_host((url.host.as_str(), url.port))
            .await?
            .find(|a| a.is_ipv4())
            .ok_or_else(|| MqttError::BadUrl(format!("{url}: no IPv4 address"))),
    }
}

/// A QUIC connection to a broker (ALPN `mqtt`) and the client endpoint it runs on.
pub struct QuicConnection {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
}

impl QuicConnection {
    /// Connect to `url` (or to `ip` at the URL's port; the URL's host still names the server
    /// for TLS) with ALPN `mqtt`, on an endpoint of its own. The client sends QUIC PINGs every
    /// 10 s, so the connection outlives the server's idle timeout on the shared HTTP/3 port
    /// (spec §4.3).
    pub async fn connect(
        url: &MqttUrl,
        ip: Option<std::net::IpAddr>,
        trust: &Trust,
    ) -> Result<QuicConnection, MqttError> {
        Self::connect_setup(url, ip, QuicSetup::new(trust)?).await
    }

    /// [`QuicConnection::connect`] with a given endpoint and configuration (e.g. one presenting a
    /// client certificate, [`QuicSetup::with_identity`]).
    pub(crate) async fn connect_setup(
        url: &MqttUrl,
        ip: Option<std::net::IpAddr>,
        setup: QuicSetup,
    ) -> Result<QuicConnection, MqttError> {
        let addr = resolve(url, ip).await?;
        let conn = Self::connect_on(&setup.endpoint, &setup.config, addr, &url.host).await?;
        Ok(QuicConnection { conn, endpoint: setup.endpoint })
    }

    /// Connect on an existing endpoint (the benchmark runs thousands of connections on one).
    pub async fn connect_on(
        endpoint: &quinn::Endpoint,
        cfg: &quinn::ClientConfig,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<quinn::Connection, MqttError> {
        Ok(endpoint.connect_with(cfg.clone(), addr, server_name)?.await?)
    }

    /// Open a bidirectional stream: the first is the control stream, later ones data streams.
    pub async fn open_stream(&self) -> Result<(quinn::SendStream, quinn::RecvStream), MqttError> {
        Ok(self.conn.open_bi().await?)
    }

    /// The QUIC connection (statistics, more streams).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// The client endpoint (its UDP socket can be rebound to move the connection).
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }
}

/// The QUIC client configuration for MQTT: ALPN `mqtt`, 0-RTT allowed, QUIC PINGs every 10 s.
pub fn client_config(trust: &Trust) -> Result<quinn::ClientConfig, MqttError> {
    client_config_with(trust, None)
}

/// [`client_config`], presenting the client certificate `identity` when the broker asks.
pub(crate) fn client_config_with(
    trust: &Trust,
    identity: Option<&ClientIdentity>,
) -> Result<quinn::ClientConfig, MqttError> {
    let (tls, _) = crate::tls::client_config_with_identity(trust, identity, &[super::config::ALPN_MQTT], true)?;
    let qtls = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(qtls));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// MQTT over QUIC in single-stream mode (docs/mqtt-over-quic.md §2.2): the control stream
/// (the first bidirectional stream) carries every packet, so the byte-stream client works
/// unchanged over it.
pub(crate) struct QuicStream {
    io: tokio::io::Join<quinn::RecvStream, quinn::SendStream>,
    /// Keeps the connection and its endpoint open while the stream is in use.
    _quic: QuicConnection,
}

impl QuicStream {
    /// Connect to `url` (or to `ip` at its port) with the endpoint and configuration of
    /// `setup`, and open the control stream.
    async fn connect_on(
        url: &MqttUrl,
        ip: Option<std::net::IpAddr>,
        setup: QuicSetup,
    ) -> Result<QuicStream, MqttError> {
        let quic = QuicConnection::connect_setup(url, ip, setup).await?;
        let (send, recv) = quic.open_stream().await?;
        Ok(QuicStream { io: tokio::io::join(recv, send), _quic: quic })
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Reads packets from a stream.
pub struct PacketReader<R> {
    r: R,
    buf: BytesMut,
    max_packet: usize,
    version: Version,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    /// A reader of MQTT 3.1.1 packets.
    pub fn new(r: R, max_packet: usize) -> Self {
        PacketReader { r, buf: BytesMut::new(), max_packet, version: Version::V3 }
    }

    /// Read `version`'s packets from now on.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// The underlying reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.r
    }

    /// A packet already buffered, without reading (`Ok(None)`: none complete yet).
    pub fn try_next(&mut self) -> Result<Option<Packet>, MqttError> {
        match codec::decode_one(&self.buf, self.max_packet, Some(self.version))? {
            Some((p, n)) => {
                self.buf.advance(n);
                Ok(Some(p))
            }
            None => Ok(None),
        }
    }

    /// The next packet; `Ok(None)` when the peer closed the stream between packets.
    /// Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<Packet>, MqttError> {
        loop {
            if let Some((p, n)) = codec::decode_one(&self.buf, self.max_packet, Some(self.version))? {
                self.buf.advance(n);
                return Ok(Some(p));
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            let n = self.r.read_buf(&mut self.buf).await?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(MqttError::Protocol("connection closed in the middle of a packet".into()));
            }
        }
    }
}

/// Writes packets to a stream; [`PacketWriter::queue`] batches, [`PacketWriter::flush`] writes.
pub struct PacketWriter<W> {
    w: W,
    buf: Vec<u8>,
    version: Version,
}

impl<W: AsyncWrite + Unpin> PacketWriter<W> {
    /// A writer of MQTT 3.1.1 packets.
    pub fn new(w: W) -> Self {
        PacketWriter { w, buf: Vec::new(), version: Version::V3 }
    }

    /// Write `version`'s packets from now on.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// The underlying writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.w
    }

    /// Encode `p` into the write buffer.
    pub fn queue(&mut self, p: &Packet) -> Result<(), MqttError> {
        codec::encode(p, self.version, &mut self.buf).map_err(MqttError::Encode)
    }

    /// Queue raw bytes (tests of malformed input).
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Write everything queued.
    pub async fn flush(&mut self) -> Result<(), MqttError> {
        if !self.buf.is_empty() {
            self.w.write_all(&self.buf).await?;
            self.buf.clear();
        }
        self.w.flush().await?;
        Ok(())
    }

    /// Queue and write one packet.
    pub async fn send(&mut self, p: &Packet) -> Result<(), MqttError> {
        self.queue(p)?;
        self.flush().await
    }

    /// Close the write side.
    pub async fn shutdown(&mut self) -> Result<(), MqttError> {
        self.flush().await?;
        self.w.shutdown().await?;
        Ok(())
    }
}

/// The read half of a connection or of one QUIC stream. A QUIC stream can also be stopped
/// (STOP_SENDING); a TCP or TLS read half cannot.
pub trait ReadStream: AsyncRead + Send + Unpin {
    /// Ask the peer to stop sending (QUIC only): `false` where the transport has no such thing.
    fn stop(&mut self, _code: u32) -> bool {
        false
    }
}

/// The write half of a connection or of one QUIC stream. A QUIC stream can also be reset
/// (RESET_STREAM); a TCP or TLS write half cannot.
pub trait WriteStream: AsyncWrite + Send + Unpin {
    /// Abandon what is unsent (QUIC only): `false` where the transport has no such thing.
    fn reset(&mut self, _code: u32) -> bool {
        false
    }
}

impl ReadStream for quinn::RecvStream {
    fn stop(&mut self, code: u32) -> bool {
        quinn::RecvStream::stop(self, quinn::VarInt::from_u32(code)).is_ok()
    }
}

impl WriteStream for quinn::SendStream {
    fn reset(&mut self, code: u32) -> bool {
        quinn::SendStream::reset(self, quinn::VarInt::from_u32(code)).is_ok()
    }
}

impl<T: AsyncRead + AsyncWrite + Send> ReadStream for tokio::io::ReadHalf<T> {}
impl<T: AsyncRead + AsyncWrite + Send> WriteStream for tokio::io::WriteHalf<T> {}
impl ReadStream for tokio::net::tcp::OwnedReadHalf {}
impl WriteStream for tokio::net::tcp::OwnedWriteHalf {}

/// The read half of a connection or stream, boxed (TCP, TLS or a QUIC stream).
pub type BoxRead = Box<dyn ReadStream>;
/// The write half of a connection or stream, boxed.
pub type BoxWrite = Box<dyn WriteStream>;
/// A connection (or one QUIC stream) split into its two framed halves.
pub type Halves = (PacketReader<BoxRead>, PacketWriter<BoxWrite>);

/// Frame and box the two halves of a connection or stream.
pub fn framed(r: impl ReadStream + 'static, w: impl WriteStream + 'static, max_packet: usize) -> Halves {
    framed_as(r, w, max_packet, Version::V3)
}

/// [`framed`] for `version`'s packets.
pub fn framed_as(
    r: impl ReadStream + 'static,
    w: impl WriteStream + 'static,
    max_packet: usize,
    version: Version,
) -> Halves {
    let (mut r, mut w) =
        (PacketReader::new(Box::new(r) as BoxRead, max_packet), PacketWriter::new(Box::new(w) as BoxWrite));
    r.set_version(version);
    w.set_version(version);
    (r, w)
}

/// Open the transport and split it into framed halves (no CONNECT sent).
pub async fn connect_raw(
    url: &MqttUrl,
    trust: &Trust,
    timeout: Duration,
    max_packet: usize,
) -> Result<Halves, MqttError> {
    let stream = connect_stream(url, trust, timeout).await?;
    let (r, w) = tokio::io::split(stream);
    Ok(framed(r, w, max_packet))
}

/// What a [`Client`] sends in CONNECT, and how it reaches the broker.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Client identifier; empty asks the broker to assign one (3.1.1: needs `clean_session`).
    pub client_id: String,
    /// 3.1.1 clean session; MQTT 5 Clean Start (how long the session lasts is
    /// `properties.session_expiry_interval`).
    pub clean_session: bool,
    /// The protocol: 3.1.1 (the default) or MQTT 5.
    pub version: Version,
    /// MQTT 5 CONNECT properties (Session Expiry Interval, Receive Maximum, Topic Alias
    /// Maximum, user properties, ...); ignored for 3.1.1.
    pub properties: ConnectProperties,
    /// MQTT 5: authenticate `username`/`password` with SCRAM-SHA-512 (enhanced authentication,
    /// §4.12) instead of sending the password; the broker proves it knows it too.
    pub scram: bool,
    /// Keepalive, seconds (0: off). The client pings when it has sent nothing for this long.
    pub keep_alive: u16,
    pub will: Option<Message>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub trust: Trust,
    /// Client certificate presented over TLS and QUIC when the broker asks (`--cert/--key`).
    pub client_cert: Option<ClientIdentity>,
    /// For the TCP connect, TLS handshake and CONNACK together.
    pub connect_timeout: Duration,
    pub max_packet_size: usize,
    /// Connect to this address instead of resolving the URL's host (which still names the
    /// broker for TLS): the lab's namespaces, where the certificate's name is not resolvable.
    pub connect_to: Option<std::net::IpAddr>,
    /// MQTT over QUIC: every packet on the control stream, or one data stream per topic.
    pub streams: StreamMode,
    /// MQTT over QUIC: send CONNECT in 0-RTT when a ticket from an earlier connection on the
    /// same [`ClientOptions::quic`] allows it.
    pub zero_rtt: bool,
    /// MQTT over QUIC: the endpoint and configuration to connect with; shared by successive
    /// connections it lets them resume (and use 0-RTT). `None`: a fresh one per connection.
    pub quic: Option<QuicSetup>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            client_id: String::new(),
            clean_session: true,
            version: Version::V3,
            properties: ConnectProperties::default(),
            scram: false,
            keep_alive: 60,
            will: None,
            username: None,
            password: None,
            trust: Trust::default(),
            client_cert: None,
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 1 << 20,
            connect_to: None,
            streams: StreamMode::Single,
            zero_rtt: false,
            quic: None,
        }
    }
}

impl ClientOptions {
    /// A fresh SCRAM client nonce.
    fn scram_nonce(&self) -> Result<String, MqttError> {
        use base64::Engine as _;
        let mut n = [0u8; 18];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut n)
            .map_err(|_| MqttError::Unsupported("no random bytes for a SCRAM nonce".into()))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(n))
    }

    /// The CONNECT packet for these options.
    pub fn connect_packet(&self) -> Result<Packet, MqttError> {
        let mut c = Connect::new(self.client_id.as_str().into(), self.keep_alive);
        c.clean_start = self.clean_session;
        match self.version {
            Version::V3 => c.protocol = Protocol::V311,
            Version::V5 => c.properties = self.properties.clone(),
        }
        c.username = self.username.as_deref().map(Into::into);
        c.password = self.password.as_ref().map(|p| Bytes::from(p.clone().into_bytes()));
        if self.scram {
            let (Version::V5, Some(user), Some(_)) = (self.version, &self.username, &self.password) else {
                return Err(MqttError::Unsupported("SCRAM needs MQTT 5, a user name and a password".into()));
            };
            c.password = None;
            c.properties.auth_method = Some(mqtt_core::scram::NAME.into());
            c.properties.auth_data = Some(Bytes::from(mqtt_core::scram::client_first(user, &self.scram_nonce()?)));
        }
        c.last_will = self.will.as_ref().map(|w| LastWill {
            qos: w.qos,
            retain: w.retain,
            topic_name: w.topic.clone(),
            payload: w.payload.clone(),
            properties: Default::default(),
        });
        Ok(Packet::connect(c))
    }
}

/// Build a topic name, with the protocol's checks (no wildcards, no U+0000, not empty).
pub fn topic(name: &str) -> Result<TopicName, MqttError> {
    if name.is_empty() {
        return Err(MqttError::EmptyTopic);
    }
    TopicName::try_from(name).map_err(|source| MqttError::BadTopic { topic: name.to_string(), source })
}

/// Build a topic filter, with the protocol's checks.
pub fn filter(f: &str) -> Result<TopicFilter, MqttError> {
    TopicFilter::try_from(f).map_err(|source| MqttError::BadFilter { filter: f.to_string(), source })
}

/// How the client lays MQTT onto QUIC streams (docs/mqtt-over-quic.md §2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StreamMode {
    /// Every packet on the control stream, as over TCP (§2.2).
    #[default]
    Single,
    /// CONNECT, PINGREQ and DISCONNECT on the control stream; one data stream per topic
    /// published and per filter subscribed, carrying that topic's PUBLISH, SUBSCRIBE and acks,
    /// and the deliveries of that subscription (§2.3–2.5).
    PerTopic,
}

/// One stream of a [`Client`]: the TCP/TLS connection, or a QUIC control or data stream.
struct Channel {
    reader: PacketReader<BoxRead>,
    writer: PacketWriter<BoxWrite>,
    /// The QUIC stream ID (`None` over TCP).
    stream_id: Option<u64>,
    /// False once it ended (data streams only; the control stream's end is the connection's).
    open: bool,
    /// False once this client finished, reset or stopped it: acknowledgements for what still
    /// arrives on it are not sent (the broker re-sends those messages on a live stream, §6.3).
    writable: bool,
}

impl Channel {
    fn new(halves: Halves, stream_id: Option<u64>) -> Channel {
        let (reader, writer) = halves;
        Channel { reader, writer, stream_id, open: true, writable: true }
    }
}

/// How [`Client::end_stream`] ends a data stream (docs/mqtt-over-quic.md §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// FIN: finish the sending side, keep reading until the broker finishes its side.
    Finish,
    /// RESET_STREAM on the sending side, STOP_SENDING on the receiving side.
    Reset,
    /// STOP_SENDING: stop reading; nothing more is written on it.
    StopSending,
}

/// Application error code this client uses when it resets or stops a stream.
const CLIENT_STREAM_END: u32 = 0x0;

/// Replies kept for a later `wait_for` when they arrive while another reply is awaited (per-
/// topic mode answers on several streams at once). Bounded: a broker cannot grow it.
const MAX_STASHED: usize = 64;

/// An MQTT 3.1.1 client: one connection, requests answered in order. Over QUIC in per-topic
/// mode it opens one data stream per topic and filter and reads all of them.
pub struct Client {
    /// `channels[0]` is the connection (TCP, TLS) or the QUIC control stream.
    channels: Vec<Channel>,
    /// Per-topic mode: topic or filter → its data stream's index in `channels`.
    by_topic: HashMap<String, usize>,
    quic: Option<QuicConnection>,
    mode: StreamMode,
    max_packet: usize,
    next_pid: u16,
    /// Messages received, with the index of the channel they arrived on.
    inbox: VecDeque<(usize, Message)>,
    /// Replies read while waiting for another one.
    stash: VecDeque<(usize, Packet)>,
    /// Inbound QoS 2 ids delivered and awaiting PUBREL (delivered once, on PUBLISH). The
    /// broker numbers outbound messages per session (spec §2.6), so one set covers all streams.
    inbound_qos2: HashSet<u16>,
    keep_alive: Option<Duration>,
    last_sent: Instant,
    session_present: bool,
    early: EarlyData,
    /// From the start of the connection to CONNACK.
    connack_after: Duration,
    /// The protocol of the connection.
    version: Version,
    /// The broker's CONNACK (its MQTT 5 properties say what it allows).
    connack: Option<Box<codec::Connack>>,
    /// Topic Aliases the broker set, per channel (MQTT 5).
    aliases: HashMap<(usize, u16), TopicName>,
    closed: bool,
}

impl Client {
    /// Connect and complete CONNECT/CONNACK. A refusal is [`MqttError::Refused`].
    pub async fn connect(url: &MqttUrl, opts: &ClientOptions) -> Result<Client, MqttError> {
        if opts.streams == StreamMode::PerTopic && url.transport != Transport::Quic {
            return Err(MqttError::BadUrl(format!("{url}: per-topic streams need an mqtt+quic:// URL")));
        }
        let start = Instant::now();
        let deadline = start + opts.connect_timeout;
        let max = opts.max_packet_size;
        let connect = opts.connect_packet()?;
        let (control, quic, early) = match url.transport {
            Transport::Quic => tokio::time::timeout(opts.connect_timeout, Self::quic_connect(url, opts, &connect))
                .await
                .map_err(|_| MqttError::Timeout(format!("connecting to {url}")))??,
            _ => {
                let stream = connect_stream_with(
                    url,
                    opts.connect_to,
                    &opts.trust,
                    opts.client_cert.as_ref(),
                    opts.connect_timeout,
                )
                .await?;
                let (r, w) = tokio::io::split(stream);
                let mut control = Channel::new(framed_as(r, w, max, opts.version), None);
                control.writer.send(&connect).await?;
                (control, None, EarlyData::Off)
            }
        };
        let mut c = Client {
            channels: vec![control],
            by_topic: HashMap::new(),
            quic,
            mode: opts.streams,
            max_packet: max,
            next_pid: 0,
            inbox: VecDeque::new(),
            stash: VecDeque::new(),
            inbound_qos2: HashSet::new(),
            keep_alive: (opts.keep_alive > 0).then(|| Duration::from_secs(opts.keep_alive as u64)),
            last_sent: Instant::now(),
            session_present: false,
            early,
            connack_after: Duration::ZERO,
            version: opts.version,
            connack: None,
            aliases: HashMap::new(),
            closed: false,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let first = tokio::time::timeout(left, c.channels[0].reader.next())
            .await
            .map_err(|_| MqttError::Timeout(format!("waiting for CONNACK from {url}")))??;
        let first = match (first, &connect) {
            // MQTT 5 §4.12: the AUTH exchange before CONNACK (SCRAM: server-first, client-final).
            (Some(Packet::Auth(a)), Packet::Connect(cp)) if opts.scram => {
                let client_first = cp.properties.auth_data.as_deref().and_then(|d| std::str::from_utf8(d).ok());
                let server_first = a.properties.auth_data.as_deref().and_then(|d| std::str::from_utf8(d).ok());
                let password = opts.password.as_deref().unwrap_or_default();
                let Some((last, server_final)) = client_first
                    .zip(server_first)
                    .and_then(|(cf, sf)| mqtt_core::scram::client_final(cf, sf, password))
                else {
                    return Err(MqttError::Protocol("the broker's SCRAM server-first message is malformed".into()));
                };
                let mut reply = codec::Auth::new(codec::AuthReasonCode::ContinueAuthentication);
                reply.properties.auth_method = Some(mqtt_core::scram::NAME.into());
                reply.properties.auth_data = Some(Bytes::from(last));
                c.channels[0].writer.send(&Packet::Auth(Box::new(reply))).await?;
                let left = deadline.saturating_duration_since(Instant::now());
                let next = tokio::time::timeout(left, c.channels[0].reader.next())
                    .await
                    .map_err(|_| MqttError::Timeout(format!("waiting for CONNACK from {url}")))??;
                if let Some(Packet::Connack(ack)) = &next {
                    let proved = ack.properties.auth_data.as_deref() == Some(server_final.as_bytes());
                    if ack.reason_code == ConnectReasonCode::Success && !proved {
                        return Err(MqttError::Protocol("the broker's SCRAM server signature is wrong".into()));
                    }
                }
                next
            }
            (first, _) => first,
        };
        c.connack_after = start.elapsed();
        let connack = match first {
            Some(Packet::Connack(c)) => c,
            Some(other) => return Err(MqttError::Protocol(format!("expected CONNACK, got {:?}", other.get_type()))),
            None => return Err(MqttError::Closed),
        };
        if connack.reason_code != ConnectReasonCode::Success {
            return Err(MqttError::Refused(connack.reason_code));
        }
        c.connack = Some(connack.clone());
        c.session_present = connack.session_present;
        Ok(c)
    }

    /// Open the QUIC connection and its control stream and send CONNECT on it: in 0-RTT when
    /// asked for and a ticket allows (if the server refuses early data, the stream is gone and
    /// CONNECT goes again on a new one after the handshake).
    async fn quic_connect(
        url: &MqttUrl,
        opts: &ClientOptions,
        connect: &Packet,
    ) -> Result<(Channel, Option<QuicConnection>, EarlyData), MqttError> {
        let setup = match &opts.quic {
            Some(s) => s.clone(),
            None => QuicSetup::with_identity(&opts.trust, opts.client_cert.as_ref())?,
        };
        let addr = resolve(url, opts.connect_to).await?;
        let connecting = setup.endpoint.connect_with(setup.config.clone(), addr, &url.host)?;
        let (conn, accepted) = if opts.zero_rtt {
            match connecting.into_0rtt() {
                Ok((conn, accepted)) => (conn, Some(accepted)),
                Err(connecting) => (connecting.await?, None),
            }
        } else {
            (connecting.await?, None)
        };
        let quic = QuicConnection { conn, endpoint: setup.endpoint };
        let open = |quic: &QuicConnection| {
            let conn = quic.conn.clone();
            async move {
                let (send, recv) = conn.open_bi().await?;
                let id = u64::from(send.id());
                Ok::<_, MqttError>(Channel::new(framed_as(recv, send, opts.max_packet_size, opts.version), Some(id)))
            }
        };
        let mut control = open(&quic).await?;
        let early = match accepted {
            None if opts.zero_rtt => EarlyData::NoTicket,
            None => EarlyData::Off,
            Some(accepted) => {
                // Written now, CONNECT leaves in 0-RTT packets; the handshake decides its fate.
                let sent = control.writer.send(connect).await;
                if accepted.await {
                    sent?;
                    return Ok((control, Some(quic), EarlyData::Accepted));
                }
                control = open(&quic).await?;
                EarlyData::Rejected
            }
        };
        control.writer.send(connect).await?;
        Ok((control, Some(quic), early))
    }

    /// The CONNACK's session-present flag.
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    /// The broker's CONNACK: its MQTT 5 properties (assigned client identifier, Topic Alias
    /// Maximum, Receive Maximum, ...) say what it allows.
    pub fn connack(&self) -> Option<&codec::Connack> {
        self.connack.as_deref()
    }

    /// Whether CONNECT went in 0-RTT and was accepted.
    pub fn early_data(&self) -> EarlyData {
        self.early
    }

    /// Time from the start of [`Client::connect`] to CONNACK.
    pub fn connack_after(&self) -> Duration {
        self.connack_after
    }

    /// The QUIC connection, over `mqtt+quic://`.
    pub fn quic(&self) -> Option<&QuicConnection> {
        self.quic.as_ref()
    }

    /// Move the QUIC connection to a new local UDP socket (a new port on the same address), as
    /// a NAT rebinding would: the connection continues on the new path (RFC 9000 §9). Returns
    /// the old and the new local address.
    pub fn rebind(&self) -> Result<(SocketAddr, SocketAddr), MqttError> {
        let quic = self.quic.as_ref().ok_or_else(|| MqttError::Unsupported("rebinding needs mqtt+quic://".into()))?;
        let old = quic.endpoint.local_addr()?;
        quic.endpoint.rebind(std::net::UdpSocket::bind(SocketAddr::new(old.ip(), 0))?)?;
        let new = quic.endpoint.local_addr()?;
        tracing::debug!(%old, %new, "mqtt+quic: client moved to a new local socket");
        Ok((old, new))
    }

    /// End the data stream of `topic_or_filter` (per-topic mode) the way `how` says, in the
    /// middle of whatever flows it carries: the broker parks its subscriptions on the control
    /// stream and re-sends its unacknowledged messages on a live stream (spec §6). The next
    /// publish to that topic opens a new stream. Returns the ended stream's ID.
    pub async fn end_stream(&mut self, topic_or_filter: &str, how: StreamEnd) -> Result<u64, MqttError> {
        let ch = self
            .by_topic
            .remove(topic_or_filter)
            .ok_or_else(|| MqttError::NoSuchStream(topic_or_filter.to_string()))?;
        let c = &mut self.channels[ch];
        c.writable = false;
        match how {
            StreamEnd::Finish => c.writer.shutdown().await?,
            StreamEnd::Reset => {
                c.writer.get_mut().reset(CLIENT_STREAM_END);
                c.reader.get_mut().stop(CLIENT_STREAM_END);
                c.open = false;
            }
            StreamEnd::StopSending => {
                c.reader.get_mut().stop(CLIENT_STREAM_END);
                c.open = false;
            }
        }
        tracing::debug!(stream = ?c.stream_id, ?how, "mqtt+quic: data stream ended by the client");
        c.stream_id.ok_or_else(|| MqttError::Unsupported("stream ends need mqtt+quic://".into()))
    }

    /// Streams this client opened (control stream included; 1 over TCP).
    pub fn streams_opened(&self) -> usize {
        self.channels.len()
    }

    /// The QUIC stream that carries `topic_or_filter` in per-topic mode (the control stream's
    /// in single-stream mode; `None` over TCP or before first use).
    pub fn stream_of(&self, topic_or_filter: &str) -> Option<u64> {
        match self.mode {
            StreamMode::Single => self.channels[0].stream_id,
            StreamMode::PerTopic => self.by_topic.get(topic_or_filter).and_then(|&i| self.channels[i].stream_id),
        }
    }

    fn pid(&mut self) -> Pid {
        self.next_pid = self.next_pid.wrapping_add(1).max(1);
        Pid::try_from(self.next_pid).unwrap_or_default()
    }

    async fn send(&mut self, ch: usize, p: &Packet) -> Result<(), MqttError> {
        if !self.channels[ch].writable {
            // An acknowledgement for a stream this client ended: the broker re-sends the message
            // on a live stream (spec §6.3), where it is acknowledged.
            return Ok(());
        }
        self.channels[ch].writer.send(p).await?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// The channel for `key` (a topic or a filter): the control stream in single-stream mode;
    /// in per-topic mode its data stream, opened on first use.
    async fn channel_for(&mut self, key: &str) -> Result<usize, MqttError> {
        if self.mode == StreamMode::Single {
            return Ok(0);
        }
        if let Some(&i) = self.by_topic.get(key) {
            if self.channels[i].open {
                return Ok(i);
            }
        }
        let quic = self.quic.as_ref().ok_or_else(|| MqttError::Unsupported("per-topic mode without QUIC".into()))?;
        let (send, recv) = quic.open_stream().await?;
        let id = u64::from(send.id());
        self.channels.push(Channel::new(framed_as(recv, send, self.max_packet, self.version), Some(id)));
        let i = self.channels.len() - 1;
        self.by_topic.insert(key.to_string(), i);
        tracing::debug!(stream = id, key, "mqtt+quic: data stream opened");
        Ok(i)
    }

    /// The next packet from any open channel (cancel-safe).
    async fn next_packet(&mut self) -> (usize, Result<Option<Packet>, MqttError>) {
        if self.channels.len() == 1 {
            return (0, self.channels[0].reader.next().await);
        }
        let reads = self
            .channels
            .iter_mut()
            .enumerate()
            .filter(|(_, c)| c.open)
            .map(|(i, c)| Box::pin(async move { (i, c.reader.next().await) }));
        futures_util::future::select_all(reads).await.0
    }

    /// Read one packet, sending PINGREQ when keepalive is due; application messages are
    /// acknowledged on the stream they came on and put in the inbox. Returns the packet and
    /// the channel it came on.
    async fn read_one(&mut self) -> Result<(usize, Packet), MqttError> {
        loop {
            let ping_at = self.keep_alive.map(|k| self.last_sent + k);
            let got = match ping_at {
                Some(at) => tokio::select! {
                    r = self.next_packet() => Some(r),
                    _ = tokio::time::sleep_until(at.into()) => None,
                },
                None => Some(self.next_packet().await),
            };
            let Some((ch, next)) = got else {
                self.send(0, &Packet::Pingreq).await?;
                continue;
            };
            let next = match next {
                Err(e) if ch != 0 => {
                    tracing::warn!(stream = ?self.channels[ch].stream_id, error = %e, "mqtt+quic: data stream failed");
                    self.channels[ch].open = false;
                    continue;
                }
                other => other?,
            };
            let Some(p) = next else {
                if ch != 0 {
                    // The broker finished a data stream: its topic gets a new one on next use.
                    self.channels[ch].open = false;
                    continue;
                }
                self.closed = true;
                return Err(MqttError::Closed);
            };
            let mut p = p;
            if let Packet::Publish(publish) = &mut p {
                // MQTT 5 §3.3.2.3.4: Topic Aliases from the broker (when CONNECT allowed them),
                // per stream as docs/mqtt-over-quic.md scopes them.
                if let Some(alias) = publish.props().topic_alias {
                    if publish.topic_name.is_empty() {
                        match self.aliases.get(&(ch, alias)) {
                            Some(t) => publish.topic_name = t.clone(),
                            None => {
                                return Err(MqttError::Protocol(format!("PUBLISH with Topic Alias {alias}, never set")))
                            }
                        }
                    } else {
                        self.aliases.insert((ch, alias), publish.topic_name.clone());
                    }
                }
            }
            match &p {
                Packet::Publish(publish) => {
                    let mut msg = Message::new(
                        publish.topic_name.clone(),
                        publish.payload.clone(),
                        publish.qos_pid.qos(),
                        publish.retain,
                    );
                    msg.props = publish.props().message.clone();
                    match publish.qos_pid {
                        QosPid::Level0 => self.inbox.push_back((ch, msg)),
                        QosPid::Level1(id) => {
                            self.inbox.push_back((ch, msg));
                            self.send(ch, &Packet::puback(id)).await?;
                        }
                        QosPid::Level2(id) => {
                            // Deliver on first receipt; a DUP before PUBREL is not delivered again.
                            if self.inbound_qos2.insert(id.value()) {
                                self.inbox.push_back((ch, msg));
                            }
                            self.send(ch, &Packet::pubrec(id)).await?;
                        }
                    }
                }
                Packet::Pubrel(rel) => {
                    self.inbound_qos2.remove(&rel.pid.value());
                    self.send(ch, &Packet::pubcomp(rel.pid)).await?;
                }
                // MQTT 5 §3.14: the broker says why it closes.
                Packet::Disconnect(d) if ch == 0 => {
                    self.closed = true;
                    let reason = d.properties.reason_string.as_deref().unwrap_or("").to_string();
                    return Err(MqttError::Disconnected { code: d.reason_code as u8, reason });
                }
                _ => {}
            }
            return Ok((ch, p));
        }
    }

    /// Read until a packet on channel `ch` satisfies `want` (replies read meanwhile for other
    /// requests are kept for their own `wait_for`).
    async fn wait_for(&mut self, what: &str, ch: usize, want: impl Fn(&Packet) -> bool) -> Result<Packet, MqttError> {
        if let Some(i) = self.stash.iter().position(|(c, p)| *c == ch && want(p)) {
            if let Some((_, p)) = self.stash.remove(i) {
                return Ok(p);
            }
        }
        loop {
            let (c, p) = self.read_one().await?;
            if c == ch && want(&p) {
                return Ok(p);
            }
            match p {
                Packet::Connack(_) | Packet::Connect(_) => {
                    return Err(MqttError::Protocol(format!("unexpected {:?} while waiting for {what}", p.get_type())));
                }
                Packet::Suback(_)
                | Packet::Unsuback(_)
                | Packet::Puback(_)
                | Packet::Pubrec(_)
                | Packet::Pubcomp(_) => {
                    if self.stash.len() == MAX_STASHED {
                        self.stash.pop_front();
                    }
                    self.stash.push_back((c, p));
                }
                _ => {}
            }
        }
    }

    /// Publish, completing the QoS flow (PUBACK, or PUBREC/PUBREL/PUBCOMP) before returning.
    pub async fn publish(
        &mut self,
        topic_name: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Bytes>,
    ) -> Result<(), MqttError> {
        self.publish_with(topic_name, qos, retain, payload, None).await.map(|_| ())
    }

    /// [`Client::publish`] with MQTT 5 properties (ignored over 3.1.1). Returns the reason
    /// code of the PUBACK or PUBREC (MQTT 5: 0x10 says nobody subscribed; 3.1.1 and QoS 0:
    /// 0); a refusal (0x80 or above) is [`MqttError::Rejected`].
    pub async fn publish_with(
        &mut self,
        topic_name: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Bytes>,
        props: Option<Box<codec::PublishProps>>,
    ) -> Result<u8, MqttError> {
        let name = topic(topic_name)?;
        let ch = self.channel_for(topic_name).await?;
        let pid = self.pid();
        let qos_pid = match qos {
            QoS::Level0 => QosPid::Level0,
            QoS::Level1 => QosPid::Level1(pid),
            QoS::Level2 => QosPid::Level2(pid),
        };
        let mut p = Publish::new(qos_pid, name, payload.into());
        p.retain = retain;
        p.props = props;
        self.send(ch, &Packet::Publish(p)).await?;
        let code = match qos {
            QoS::Level0 => 0,
            QoS::Level1 => match self.wait_for("PUBACK", ch, |p| matches!(p, Packet::Puback(a) if a.pid == pid)).await?
            {
                Packet::Puback(a) => a.reason_code as u8,
                _ => 0,
            },
            QoS::Level2 => {
                let code = match self.wait_for("PUBREC", ch, |p| matches!(p, Packet::Pubrec(a) if a.pid == pid)).await?
                {
                    Packet::Pubrec(a) => a.reason_code as u8,
                    _ => 0,
                };
                // §4.3.3: a PUBREC of 0x80 or above ends the flow.
                if code < 0x80 {
                    self.send(ch, &Packet::pubrel(pid)).await?;
                    self.wait_for("PUBCOMP", ch, |p| matches!(p, Packet::Pubcomp(a) if a.pid == pid)).await?;
                }
                code
            }
        };
        if code >= 0x80 {
            return Err(MqttError::Rejected { what: "PUBLISH", code });
        }
        Ok(code)
    }

    /// Send a request (SUBSCRIBE or UNSUBSCRIBE) for `items`, one per filter: on the control
    /// stream all together, in per-topic mode one request per filter on that filter's data
    /// stream (sent together, awaited afterwards). Returns (channel, packet id) per request.
    async fn send_requests<T>(
        &mut self,
        names: &[&str],
        items: Vec<T>,
        request: impl Fn(Pid, Vec<T>) -> Packet,
    ) -> Result<Vec<(usize, Pid)>, MqttError> {
        let mut sent = Vec::new();
        match self.mode {
            StreamMode::Single => {
                let pid = self.pid();
                self.send(0, &request(pid, items)).await?;
                sent.push((0, pid));
            }
            StreamMode::PerTopic => {
                for (name, item) in names.iter().zip(items) {
                    let ch = self.channel_for(name).await?;
                    let pid = self.pid();
                    self.send(ch, &request(pid, vec![item])).await?;
                    sent.push((ch, pid));
                }
            }
        }
        Ok(sent)
    }

    /// Subscribe; returns the SUBACK's return codes, one per filter. In per-topic mode each
    /// filter gets its own data stream and SUBSCRIBE.
    pub async fn subscribe(&mut self, filters: &[(&str, QoS)]) -> Result<Vec<SubscribeReasonCode>, MqttError> {
        let with: Vec<(&str, codec::SubscriptionOptions)> =
            filters.iter().map(|(f, q)| (*f, codec::v3_options(*q))).collect();
        self.subscribe_with(&with, &codec::SubscribeProperties::default()).await
    }

    /// [`Client::subscribe`] with MQTT 5 subscription options (No Local, Retain As Published,
    /// Retain Handling) and properties (Subscription Identifier, user properties); over 3.1.1
    /// only the QoS is sent.
    pub async fn subscribe_with(
        &mut self,
        filters: &[(&str, codec::SubscriptionOptions)],
        props: &codec::SubscribeProperties,
    ) -> Result<Vec<SubscribeReasonCode>, MqttError> {
        let topics = filters.iter().map(|(f, o)| Ok((filter(f)?, *o))).collect::<Result<Vec<_>, MqttError>>()?;
        let names: Vec<&str> = filters.iter().map(|(f, _)| *f).collect();
        let request = |pid, t| {
            let mut s = Subscribe::new(pid, t);
            s.properties = props.clone();
            Packet::Subscribe(s)
        };
        let sent = self.send_requests(&names, topics, request).await?;
        let mut codes = Vec::with_capacity(filters.len());
        for (ch, pid) in sent {
            match self.wait_for("SUBACK", ch, |p| matches!(p, Packet::Suback(s) if s.pid == pid)).await? {
                Packet::Suback(s) => codes.extend(s.topics),
                _ => return Err(MqttError::Protocol("expected SUBACK".into())),
            }
        }
        Ok(codes)
    }

    /// Unsubscribe and wait for UNSUBACK (in per-topic mode, on each filter's stream).
    pub async fn unsubscribe(&mut self, filters: &[&str]) -> Result<(), MqttError> {
        let topics = filters.iter().map(|f| filter(f)).collect::<Result<Vec<_>, _>>()?;
        let sent = self.send_requests(filters, topics, |pid, t| Packet::Unsubscribe(Unsubscribe::new(pid, t))).await?;
        for (ch, pid) in sent {
            self.wait_for("UNSUBACK", ch, |p| matches!(p, Packet::Unsuback(u) if u.pid == pid)).await?;
        }
        Ok(())
    }

    /// PINGREQ and wait for PINGRESP.
    pub async fn ping(&mut self) -> Result<(), MqttError> {
        self.send(0, &Packet::Pingreq).await?;
        self.wait_for("PINGRESP", 0, |p| *p == Packet::Pingresp).await?;
        Ok(())
    }

    /// The next application message (acknowledged as its QoS requires). `Err(Closed)` when the
    /// broker closed the connection.
    pub async fn recv(&mut self) -> Result<Message, MqttError> {
        Ok(self.recv_with_stream().await?.1)
    }

    /// [`Client::recv`], with the QUIC stream the message arrived on (`None` over TCP).
    pub async fn recv_with_stream(&mut self) -> Result<(Option<u64>, Message), MqttError> {
        loop {
            if let Some((ch, m)) = self.inbox.pop_front() {
                return Ok((self.channels[ch].stream_id, m));
            }
            if self.closed {
                return Err(MqttError::Closed);
            }
            self.read_one().await?;
        }
    }

    /// [`Client::recv`] with a time limit: `Ok(None)` if nothing arrived in time.
    pub async fn recv_timeout(&mut self, limit: Duration) -> Result<Option<Message>, MqttError> {
        match tokio::time::timeout(limit, self.recv()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Send DISCONNECT and close (the will is discarded by the broker).
    pub async fn disconnect(mut self) -> Result<(), MqttError> {
        self.send(0, &Packet::disconnect(DisconnectReasonCode::NormalDisconnect)).await?;
        for ch in self.channels.iter_mut().rev().filter(|c| c.writable) {
            ch.writer.shutdown().await?;
        }
        // Wait (briefly) for the broker to close its side, so the DISCONNECT is processed
        // before a reconnect with the same id.
        let control = &mut self.channels[0].reader;
        let _ = tokio::time::timeout(Duration::from_secs(2), async { while let Ok(Some(_)) = control.next().await {} })
            .await;
        Ok(())
    }

    /// Drop the connection without DISCONNECT (the broker publishes the will).
    pub fn abort(self) {}

    /// The framed halves of the connection (over QUIC: of the control stream; data streams are
    /// dropped), for tests that continue by hand.
    pub fn into_parts(mut self) -> Halves {
        let c = self.channels.swap_remove(0);
        (c.reader, c.writer)
    }
}
