//! An async MQTT 3.1.1 client over TCP and TLS, for the CLI, the tests and the benchmarks.
//!
//! Two levels:
//! * [`connect_stream`] + [`PacketReader`] / [`PacketWriter`]: framed packets over a stream,
//!   nothing else (the benchmark pipelines with them; tests craft exact packet sequences).
//! * [`Client`]: CONNECT/CONNACK, publish with the whole QoS 1/2 flow, subscribe, receive with
//!   acknowledgements and keepalive pings.
//!
//! URLs: `mqtt://HOST[:1883]`, `mqtts://HOST[:8883]`; `mqtt+quic://HOST[:14567]` is parsed
//! and reserved for the MQTT-over-QUIC mapping (a later issue).

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::codec::{
    self, Connect, ConnectReturnCode, LastWill, Packet, Pid, Publish, QoS, QosPid, Subscribe, SubscribeReturnCode,
    TopicFilter, TopicName, Unsubscribe,
};
use super::config::{DEFAULT_TCP_PORT, DEFAULT_TLS_PORT};
use super::session::Message;
use super::MqttError;
use crate::tls::Trust;

/// Default UDP port of MQTT over QUIC (EMQX's).
pub const DEFAULT_QUIC_PORT: u16 = 14567;

/// How to reach a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `mqtt://`
    Tcp,
    /// `mqtts://`
    Tls,
    /// `mqtt+quic://` (reserved: the QUIC mapping is a later issue).
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
    connect_stream_to(url, None, trust, timeout).await
}

/// [`connect_stream`], connecting to `ip` instead of resolving the URL's host (which still names
/// the server for TLS), like `quiclab get --connect-to`.
pub async fn connect_stream_to(
    url: &MqttUrl,
    ip: Option<std::net::IpAddr>,
    trust: &Trust,
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
            Transport::Quic => Ok(Box::pin(QuicStream::connect_to(url, ip, trust).await?) as BoxStream),
            Transport::Tcp => {
                let sock = tcp(url).await?;
                sock.set_nodelay(true)?;
                Ok(Box::pin(sock) as BoxStream)
            }
            Transport::Tls => {
                let sock = tcp(url).await?;
                sock.set_nodelay(true)?;
                let cfg = crate::tls::client_config(trust, &[], false)?;
                let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                    .map_err(|_| MqttError::BadUrl(format!("{:?} is not a valid TLS server name", url.host)))?;
                let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, sock).await?;
                Ok(Box::pin(tls) as BoxStream)
            }
        }
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| MqttError::Timeout(format!("connecting to {url}")))?
}

/// MQTT over QUIC in single-stream mode (docs/mqtt-over-quic.md §2.2): the control stream
/// (the first bidirectional stream) carries every packet, so the byte-stream client works
/// unchanged over it.
pub struct QuicStream {
    io: tokio::io::Join<quinn::RecvStream, quinn::SendStream>,
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

impl QuicStream {
    /// Connect with ALPN `mqtt` and open the control stream.
    pub async fn connect(url: &MqttUrl, trust: &Trust) -> Result<QuicStream, MqttError> {
        Self::connect_to(url, None, trust).await
    }

    /// [`QuicStream::connect`] to `ip` instead of the URL's host (still the TLS name).
    pub async fn connect_to(
        url: &MqttUrl,
        ip: Option<std::net::IpAddr>,
        trust: &Trust,
    ) -> Result<QuicStream, MqttError> {
        let addr = match ip {
            Some(ip) => SocketAddr::new(ip, url.port),
            None => tokio::net::lookup_host((url.host.as_str(), url.port))
                .await?
                .find(|a| a.is_ipv4())
                .ok_or_else(|| MqttError::BadUrl(format!("{url}: no IPv4 address")))?,
        };
        let tls = crate::tls::client_config(trust, &[super::config::ALPN_MQTT], true)?;
        let qtls = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| MqttError::Unsupported(format!("QUIC TLS configuration: {e}")))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(qtls));
        let mut transport = quinn::TransportConfig::default();
        // Keep the connection alive below any server idle timeout (spec §4.3).
        transport.keep_alive_interval(Some(Duration::from_secs(10)));
        cfg.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?;
        let conn = endpoint
            .connect_with(cfg, addr, &url.host)
            .map_err(|e| MqttError::Unsupported(format!("QUIC connect: {e}")))?
            .await
            .map_err(|e| MqttError::Io(std::io::Error::other(format!("QUIC: {e}"))))?;
        let (send, recv) =
            conn.open_bi().await.map_err(|e| MqttError::Io(std::io::Error::other(format!("QUIC stream: {e}"))))?;
        Ok(QuicStream { io: tokio::io::join(recv, send), conn, _endpoint: endpoint })
    }

    /// The QUIC connection (for statistics, rebinding, or more streams).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
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
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    pub fn new(r: R, max_packet: usize) -> Self {
        PacketReader { r, buf: BytesMut::new(), max_packet }
    }

    /// A packet already buffered, without reading (`Ok(None)`: none complete yet).
    pub fn try_next(&mut self) -> Result<Option<Packet>, MqttError> {
        match codec::decode_one(&self.buf, self.max_packet)? {
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
            if let Some((p, n)) = codec::decode_one(&self.buf, self.max_packet)? {
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
}

impl<W: AsyncWrite + Unpin> PacketWriter<W> {
    pub fn new(w: W) -> Self {
        PacketWriter { w, buf: Vec::new() }
    }

    /// Encode `p` into the write buffer.
    pub fn queue(&mut self, p: &Packet) -> Result<(), MqttError> {
        codec::encode(p, &mut self.buf)?;
        Ok(())
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

/// A connection split into its two framed halves.
pub type Halves = (PacketReader<ReadHalf<BoxStream>>, PacketWriter<WriteHalf<BoxStream>>);

/// Open the transport and split it into framed halves (no CONNECT sent).
pub async fn connect_raw(
    url: &MqttUrl,
    trust: &Trust,
    timeout: Duration,
    max_packet: usize,
) -> Result<Halves, MqttError> {
    let stream = connect_stream(url, trust, timeout).await?;
    let (r, w) = tokio::io::split(stream);
    Ok((PacketReader::new(r, max_packet), PacketWriter::new(w)))
}

/// What a [`Client`] sends in CONNECT, and how it reaches the broker.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Client identifier; empty asks the broker to assign one (needs `clean_session`).
    pub client_id: String,
    pub clean_session: bool,
    /// Keepalive, seconds (0: off). The client pings when it has sent nothing for this long.
    pub keep_alive: u16,
    pub will: Option<Message>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub trust: Trust,
    /// For the TCP connect, TLS handshake and CONNACK together.
    pub connect_timeout: Duration,
    pub max_packet_size: usize,
    /// Connect to this address instead of resolving the URL's host (which still names the
    /// broker for TLS): the lab's namespaces, where the certificate's name is not resolvable.
    pub connect_to: Option<std::net::IpAddr>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            client_id: String::new(),
            clean_session: true,
            keep_alive: 60,
            will: None,
            username: None,
            password: None,
            trust: Trust::default(),
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 1 << 20,
            connect_to: None,
        }
    }
}

impl ClientOptions {
    /// The CONNECT packet for these options.
    pub fn connect_packet(&self) -> Result<Packet, MqttError> {
        let mut c = Connect::new(self.client_id.as_str().into(), self.keep_alive);
        c.clean_session = self.clean_session;
        c.username = self.username.as_deref().map(Into::into);
        c.password = self.password.as_ref().map(|p| Bytes::from(p.clone().into_bytes()));
        c.last_will = self.will.as_ref().map(|w| LastWill {
            qos: w.qos,
            retain: w.retain,
            topic_name: w.topic.clone(),
            message: w.payload.clone(),
        });
        Ok(Packet::Connect(c))
    }
}

/// Build a topic name, with the protocol's checks (no wildcards, no U+0000, not empty).
pub fn topic(name: &str) -> Result<TopicName, MqttError> {
    if name.is_empty() {
        return Err(MqttError::Other("a topic name cannot be empty".into()));
    }
    TopicName::try_from(name).map_err(|e| MqttError::Other(format!("topic {name:?}: {e}")))
}

/// Build a topic filter, with the protocol's checks.
pub fn filter(f: &str) -> Result<TopicFilter, MqttError> {
    TopicFilter::try_from(f).map_err(|e| MqttError::Other(format!("topic filter {f:?}: {e}")))
}

/// An MQTT 3.1.1 client: one connection, requests answered in order.
pub struct Client {
    reader: PacketReader<ReadHalf<BoxStream>>,
    writer: PacketWriter<WriteHalf<BoxStream>>,
    next_pid: u16,
    inbox: VecDeque<Message>,
    /// Inbound QoS 2 ids delivered and awaiting PUBREL (delivered once, on PUBLISH).
    inbound_qos2: HashSet<u16>,
    keep_alive: Option<Duration>,
    last_sent: Instant,
    session_present: bool,
    closed: bool,
}

impl Client {
    /// Connect and complete CONNECT/CONNACK. A refusal is [`MqttError::Refused`].
    pub async fn connect(url: &MqttUrl, opts: &ClientOptions) -> Result<Client, MqttError> {
        let deadline = Instant::now() + opts.connect_timeout;
        let stream = connect_stream_to(url, opts.connect_to, &opts.trust, opts.connect_timeout).await?;
        let (r, w) = tokio::io::split(stream);
        let (mut reader, mut writer) = (PacketReader::new(r, opts.max_packet_size), PacketWriter::new(w));
        writer.send(&opts.connect_packet()?).await?;
        let left = deadline.saturating_duration_since(Instant::now());
        let first = tokio::time::timeout(left, reader.next())
            .await
            .map_err(|_| MqttError::Timeout(format!("waiting for CONNACK from {url}")))??;
        let connack = match first {
            Some(Packet::Connack(c)) => c,
            Some(other) => return Err(MqttError::Protocol(format!("expected CONNACK, got {:?}", other.get_type()))),
            None => return Err(MqttError::Closed),
        };
        if connack.code != ConnectReturnCode::Accepted {
            return Err(MqttError::Refused(connack.code));
        }
        Ok(Client {
            reader,
            writer,
            next_pid: 0,
            inbox: VecDeque::new(),
            inbound_qos2: HashSet::new(),
            keep_alive: (opts.keep_alive > 0).then(|| Duration::from_secs(opts.keep_alive as u64)),
            last_sent: Instant::now(),
            session_present: connack.session_present,
            closed: false,
        })
    }

    /// The CONNACK's session-present flag.
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    fn pid(&mut self) -> Pid {
        self.next_pid = self.next_pid.wrapping_add(1).max(1);
        Pid::try_from(self.next_pid).unwrap_or_default()
    }

    async fn send(&mut self, p: &Packet) -> Result<(), MqttError> {
        self.writer.send(p).await?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Read one packet, answering pings' deadlines; application messages are acknowledged and
    /// put in the inbox. Returns the packet for the caller to inspect.
    async fn read_one(&mut self) -> Result<Packet, MqttError> {
        loop {
            let ping_at = self.keep_alive.map(|k| self.last_sent + k);
            let next = match ping_at {
                Some(at) => tokio::select! {
                    p = self.reader.next() => p?,
                    _ = tokio::time::sleep_until(at.into()) => {
                        self.send(&Packet::Pingreq).await?;
                        continue;
                    }
                },
                None => self.reader.next().await?,
            };
            let Some(p) = next else {
                self.closed = true;
                return Err(MqttError::Closed);
            };
            match &p {
                Packet::Publish(publish) => {
                    let msg = Message {
                        topic: publish.topic_name.clone(),
                        payload: publish.payload.clone(),
                        qos: publish.qos_pid.qos(),
                        retain: publish.retain,
                    };
                    match publish.qos_pid {
                        QosPid::Level0 => self.inbox.push_back(msg),
                        QosPid::Level1(id) => {
                            self.inbox.push_back(msg);
                            self.send(&Packet::Puback(id)).await?;
                        }
                        QosPid::Level2(id) => {
                            // Deliver on first receipt; a DUP before PUBREL is not delivered again.
                            if self.inbound_qos2.insert(id.value()) {
                                self.inbox.push_back(msg);
                            }
                            self.send(&Packet::Pubrec(id)).await?;
                        }
                    }
                }
                Packet::Pubrel(id) => {
                    self.inbound_qos2.remove(&id.value());
                    self.send(&Packet::Pubcomp(*id)).await?;
                }
                _ => {}
            }
            return Ok(p);
        }
    }

    /// Read until `want` returns true for a packet.
    async fn wait_for(&mut self, what: &str, want: impl Fn(&Packet) -> bool) -> Result<Packet, MqttError> {
        loop {
            let p = self.read_one().await?;
            if want(&p) {
                return Ok(p);
            }
            if let Packet::Connack(_) | Packet::Connect(_) = p {
                return Err(MqttError::Protocol(format!("unexpected {:?} while waiting for {what}", p.get_type())));
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
        let topic_name = topic(topic_name)?;
        let pid = self.pid();
        let qos_pid = match qos {
            QoS::Level0 => QosPid::Level0,
            QoS::Level1 => QosPid::Level1(pid),
            QoS::Level2 => QosPid::Level2(pid),
        };
        let mut p = Publish::new(qos_pid, topic_name, payload.into());
        p.retain = retain;
        self.send(&Packet::Publish(p)).await?;
        match qos {
            QoS::Level0 => {}
            QoS::Level1 => {
                self.wait_for("PUBACK", |p| *p == Packet::Puback(pid)).await?;
            }
            QoS::Level2 => {
                self.wait_for("PUBREC", |p| *p == Packet::Pubrec(pid)).await?;
                self.send(&Packet::Pubrel(pid)).await?;
                self.wait_for("PUBCOMP", |p| *p == Packet::Pubcomp(pid)).await?;
            }
        }
        Ok(())
    }

    /// Subscribe; returns the SUBACK's return codes, one per filter.
    pub async fn subscribe(&mut self, filters: &[(&str, QoS)]) -> Result<Vec<SubscribeReturnCode>, MqttError> {
        let topics = filters.iter().map(|(f, q)| Ok((filter(f)?, *q))).collect::<Result<Vec<_>, MqttError>>()?;
        let pid = self.pid();
        self.send(&Packet::Subscribe(Subscribe::new(pid, topics))).await?;
        match self.wait_for("SUBACK", |p| matches!(p, Packet::Suback(s) if s.pid == pid)).await? {
            Packet::Suback(s) => Ok(s.topics),
            _ => Err(MqttError::Protocol("expected SUBACK".into())),
        }
    }

    /// Unsubscribe and wait for UNSUBACK.
    pub async fn unsubscribe(&mut self, filters: &[&str]) -> Result<(), MqttError> {
        let topics = filters.iter().map(|f| filter(f)).collect::<Result<Vec<_>, _>>()?;
        let pid = self.pid();
        self.send(&Packet::Unsubscribe(Unsubscribe::new(pid, topics))).await?;
        self.wait_for("UNSUBACK", |p| *p == Packet::Unsuback(pid)).await?;
        Ok(())
    }

    /// PINGREQ and wait for PINGRESP.
    pub async fn ping(&mut self) -> Result<(), MqttError> {
        self.send(&Packet::Pingreq).await?;
        self.wait_for("PINGRESP", |p| *p == Packet::Pingresp).await?;
        Ok(())
    }

    /// The next application message (acknowledged as its QoS requires). `Err(Closed)` when the
    /// broker closed the connection.
    pub async fn recv(&mut self) -> Result<Message, MqttError> {
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return Ok(m);
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
        self.send(&Packet::Disconnect).await?;
        self.writer.shutdown().await?;
        // Wait (briefly) for the broker to close its side, so the DISCONNECT is processed
        // before a reconnect with the same id.
        let _ =
            tokio::time::timeout(Duration::from_secs(2), async { while let Ok(Some(_)) = self.reader.next().await {} })
                .await;
        Ok(())
    }

    /// Drop the connection without DISCONNECT (the broker publishes the will).
    pub fn abort(self) {}

    /// The framed halves, for tests that continue by hand.
    pub fn into_parts(self) -> Halves {
        (self.reader, self.writer)
    }
}
