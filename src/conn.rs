//! What is known about one connection, whatever carries it: the transport-neutral facts
//! every service (HTTP/3, HTTP/2, MQTT over QUIC) is handed by the listener that accepted it.
//!
//! [`ConnInfo`] describes the connection a request came on (protocol, ALPN, addresses) and
//! keeps a handle on the transport so later questions (RTT, congestion window, losses, path
//! changes) are answered from the live connection, not from a snapshot. [`RequestInfo`] adds
//! what is true of one request only: whether it arrived in 0-RTT early data, told by
//! [`HandshakeDone`].

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::stats::{tcp_congestion, TcpInfo};

/// Resolves when a QUIC connection's handshake completes (to `true` when it did); polled
/// without waiting it tells whether something accepted now arrived in 0-RTT early data.
pub type HandshakeDone = futures_util::future::Shared<futures_util::future::BoxFuture<'static, bool>>;

/// The application protocol a request was carried by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/3 over QUIC.
    H3,
    /// HTTP/2 over TLS/TCP.
    H2,
    /// HTTP/1.1 over TLS/TCP.
    Http11,
    /// MQTT over QUIC (docs/mqtt-over-quic.md).
    Mqtt,
}

impl Protocol {
    /// The name browsers report as `nextHopProtocol` and ALPN uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::H3 => "h3",
            Protocol::H2 => "h2",
            Protocol::Http11 => "http/1.1",
            Protocol::Mqtt => "mqtt",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A live handle on the transport under a connection.
#[derive(Clone)]
pub enum Transport {
    /// A QUIC connection: quinn answers for RTT, congestion window, losses and the current path.
    Quic(quinn::Connection),
    /// A TCP socket (a duplicate of the connection's descriptor), for `TCP_INFO`.
    Tcp(Arc<OwnedFd>),
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Quic(c) => write!(f, "Quic({})", c.stable_id()),
            Transport::Tcp(fd) => write!(f, "Tcp({fd:?})"),
        }
    }
}

/// Facts about one connection, shared by every request on it.
#[derive(Debug)]
pub struct ConnInfo {
    /// Application protocol.
    pub protocol: Protocol,
    /// The ALPN the TLS handshake settled on, if any.
    pub alpn: Option<String>,
    /// The server's address on this connection.
    pub local: SocketAddr,
    /// Handle on the transport.
    pub transport: Transport,
    /// Whether TLS resumed a session; `None` where the stack does not say (quinn 0.11 keeps
    /// the server's rustls connection private).
    pub resumed: Option<bool>,
    /// The QUIC congestion controller configured (TCP reports its own via `TCP_CONGESTION`).
    pub congestion: Option<String>,
    /// The connection as it was when established, before any response data.
    pub established: Established,
    paths: PathTracker,
}

/// A connection's state when it was established, before the server sent any response data:
/// what the lab reports as each stack's starting point (`/conn` key `established`).
///
/// QUIC: read from `quinn::Connection::stats()` when the service is handed the connection
/// (the handshake's own packets are in flight or acknowledged; no stream data has been sent).
/// TCP: read from `TCP_INFO` and `TCP_CONGESTION` on the accepted socket before the TLS
/// handshake, so slow start has not yet grown the window by the handshake's acknowledged
/// segments; the cipher suite after the TLS handshake.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Established {
    /// Initial congestion window in bytes (QUIC `path.cwnd`; TCP `tcpi_snd_cwnd × tcpi_snd_mss`).
    pub cwnd_bytes: Option<u64>,
    /// TCP: `tcpi_snd_cwnd` (segments). `None` for QUIC, whose window is counted in bytes.
    pub cwnd_segments: Option<u32>,
    /// Largest payload per packet: TCP `tcpi_snd_mss`; QUIC `path.current_mtu` (the UDP
    /// payload size quinn currently sends, 1200 until MTU discovery raises it).
    pub mss: Option<u32>,
    /// The congestion controller read back: TCP with `TCP_CONGESTION`; QUIC by the type of
    /// `quinn::Connection::congestion_state()` (`cubic`, `newreno`, `bbr`).
    pub congestion: Option<String>,
    /// QUIC: the controller's configured initial window (`Controller::initial_window()` of the
    /// live connection's controller), bytes. `None` for TCP.
    pub initial_window: Option<u64>,
    /// TCP: the retransmission timeout at establishment (`tcpi_rto`), milliseconds.
    pub rto_ms: Option<f64>,
    /// The negotiated TLS cipher suite, from the connection (rustls
    /// `negotiated_cipher_suite()`). `None` for QUIC: quinn 0.11.12 exposes only the ALPN and
    /// server name of its rustls session (`quinn::crypto::rustls::HandshakeData`).
    pub cipher_suite: Option<String>,
    /// Where each value was read, for the report.
    pub source: &'static str,
}

/// The name of a quinn congestion controller, told by its type.
pub(crate) fn quic_controller_name(cc: Box<dyn quinn::congestion::Controller>) -> Option<&'static str> {
    let any = cc.into_any();
    if any.is::<quinn::congestion::Cubic>() {
        Some("cubic")
    } else if any.is::<quinn::congestion::NewReno>() {
        Some("newreno")
    } else if any.is::<quinn::congestion::Bbr>() {
        Some("bbr")
    } else {
        None
    }
}

impl Established {
    /// Read a TCP socket's state now (call it on the accepted socket before the TLS handshake);
    /// the cipher suite is filled in after the handshake.
    pub(crate) fn tcp(fd: std::os::fd::RawFd) -> Established {
        let info = TcpInfo::read(fd).ok();
        Established {
            cwnd_bytes: info.as_ref().map(|i| u64::from(i.snd_cwnd) * u64::from(i.snd_mss)),
            cwnd_segments: info.as_ref().map(|i| i.snd_cwnd),
            mss: info.as_ref().map(|i| i.snd_mss),
            congestion: tcp_congestion(fd).ok(),
            initial_window: None,
            rto_ms: info.as_ref().map(|i| f64::from(i.rto_us) / 1000.0),
            cipher_suite: None,
            source: "TCP_INFO and TCP_CONGESTION on the accepted socket before the TLS handshake; \
                     cipher suite from rustls ServerConnection::negotiated_cipher_suite()",
        }
    }

    /// Read a QUIC connection's state now.
    pub(crate) fn quic(conn: &quinn::Connection) -> Established {
        let st = conn.stats();
        let cc = conn.congestion_state();
        let initial_window = cc.initial_window();
        Established {
            cwnd_bytes: Some(st.path.cwnd),
            cwnd_segments: None,
            mss: Some(u32::from(st.path.current_mtu)),
            congestion: quic_controller_name(cc).map(String::from),
            initial_window: Some(initial_window),
            rto_ms: None,
            cipher_suite: None,
            source: "quinn::Connection::stats().path (cwnd, current_mtu) and congestion_state() \
                     (controller type, initial_window()) when the service is handed the connection; \
                     cipher suite not exposed by quinn 0.11.12",
        }
    }
}

impl ConnInfo {
    /// Describe a QUIC connection.
    pub fn quic(conn: quinn::Connection, local: SocketAddr, alpn: Option<String>, protocol: Protocol) -> ConnInfo {
        let remote = conn.remote_address();
        let established = Established::quic(&conn);
        ConnInfo {
            protocol,
            alpn,
            local,
            transport: Transport::Quic(conn),
            resumed: None,
            congestion: None,
            established,
            paths: PathTracker::new(remote),
        }
    }

    /// Describe a TLS/TCP connection.
    pub fn tcp(
        fd: OwnedFd,
        local: SocketAddr,
        remote: SocketAddr,
        alpn: Option<String>,
        protocol: Protocol,
        resumed: bool,
    ) -> ConnInfo {
        ConnInfo {
            protocol,
            alpn,
            local,
            transport: Transport::Tcp(Arc::new(fd)),
            resumed: Some(resumed),
            congestion: None,
            established: Established::default(),
            paths: PathTracker::new(remote),
        }
    }

    /// Record the congestion controller name (QUIC connections).
    pub fn with_congestion(mut self, name: impl Into<String>) -> Self {
        self.congestion = Some(name.into());
        self
    }

    /// Record the state read at establishment (TCP: `Established::tcp`, before the handshake).
    pub fn with_established(mut self, established: Established) -> Self {
        self.established = established;
        self
    }

    /// What `/conn` returns: the same keys for both transports, `null` where a stack does not
    /// expose a value, and transport-specific keys named for what they hold (TCP counts
    /// segments and retransmissions, QUIC bytes and lost packets).
    pub fn snapshot(&self, early_data: bool) -> serde_json::Value {
        use serde_json::{json, Value};
        let remote = self.remote();
        let mut v = json!({
            "protocol": self.protocol.as_str(),
            "alpn": self.alpn,
            "local": self.local.to_string(),
            "remote": remote.to_string(),
            "early_data": early_data,
            "resumed": self.resumed,
            "path_changes": self.path_changes(),
            "established": self.established,
        });
        let Value::Object(map) = &mut v else { return v };
        let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1000.0;
        match &self.transport {
            Transport::Quic(c) => {
                let st = c.stats();
                map.insert("transport".into(), json!("quic"));
                map.insert("congestion".into(), json!(self.congestion));
                map.insert("rtt_ms".into(), json!(ms(st.path.rtt)));
                map.insert("min_rtt_ms".into(), json!(ms(st.path.min_rtt)));
                map.insert("cwnd".into(), json!(st.path.cwnd));
                map.insert("cwnd_unit".into(), json!("bytes"));
                map.insert("sent_packets".into(), json!(st.path.sent_packets));
                map.insert("lost_packets".into(), json!(st.path.lost_packets));
                map.insert("lost_bytes".into(), json!(st.path.lost_bytes));
                map.insert("congestion_events".into(), json!(st.path.congestion_events));
                map.insert("mtu".into(), json!(st.path.current_mtu));
                map.insert("udp_datagrams_sent".into(), json!(st.udp_tx.datagrams));
                map.insert("udp_datagrams_received".into(), json!(st.udp_rx.datagrams));
            }
            Transport::Tcp(fd) => {
                use std::os::fd::AsRawFd;
                let info = TcpInfo::read(fd.as_raw_fd()).ok();
                let cc = tcp_congestion(fd.as_raw_fd()).ok();
                map.insert("transport".into(), json!("tcp"));
                map.insert("congestion".into(), json!(cc));
                let get = |f: fn(&TcpInfo) -> Option<Value>| info.as_ref().and_then(f).unwrap_or(Value::Null);
                map.insert("rtt_ms".into(), get(|i| Some(json!(i.rtt_us as f64 / 1000.0))));
                map.insert("min_rtt_ms".into(), get(|i| i.min_rtt_us.map(|v| json!(v as f64 / 1000.0))));
                // TCP's cwnd counts segments, not bytes: `cwnd` stays null, the count is named.
                map.insert("cwnd".into(), Value::Null);
                map.insert("cwnd_unit".into(), json!("segments"));
                map.insert("cwnd_segments".into(), get(|i| Some(json!(i.snd_cwnd))));
                map.insert("mss".into(), get(|i| Some(json!(i.snd_mss))));
                // TCP counts segments sent and retransmitted; it has no "lost packets" counter.
                map.insert("sent_packets".into(), Value::Null);
                map.insert("lost_packets".into(), Value::Null);
                map.insert("sent_segments".into(), get(|i| i.segs_out.map(|v| json!(v))));
                map.insert("retransmitted_segments".into(), get(|i| Some(json!(i.total_retrans))));
                map.insert("bytes_retransmitted".into(), get(|i| i.bytes_retrans.map(|v| json!(v))));
                map.insert("rto_count".into(), get(|i| i.total_rto.map(|v| json!(v))));
            }
        }
        v
    }

    /// The client's current address. For QUIC this follows connection migration; every call
    /// also notes a change of path (see [`ConnInfo::path_changes`]).
    pub fn remote(&self) -> SocketAddr {
        match &self.transport {
            Transport::Quic(c) => {
                let now = c.remote_address();
                self.paths.observe(now, c.stable_id());
                now
            }
            Transport::Tcp(_) => self.paths.current(),
        }
    }

    /// How many times the client's address has been seen to change on this connection.
    pub fn path_changes(&self) -> u64 {
        self.paths.changes.load(Ordering::Relaxed)
    }
}

/// Notices when a connection's remote address changes and emits a `path_changed` event.
///
/// quinn 0.11 raises no event on migration; `Connection::remote_address()` follows the
/// current path, so the server compares it wherever it already looks.
#[derive(Debug)]
struct PathTracker {
    last: Mutex<SocketAddr>,
    changes: AtomicU64,
}

impl PathTracker {
    fn new(remote: SocketAddr) -> Self {
        PathTracker { last: Mutex::new(remote), changes: AtomicU64::new(0) }
    }

    fn current(&self) -> SocketAddr {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn observe(&self, now: SocketAddr, conn_id: usize) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if *last != now {
            let old = std::mem::replace(&mut *last, now);
            let n = self.changes.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(conn = conn_id, old = %old, new = %now, changes = n, "path_changed");
        }
    }
}

/// Facts about one request.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// The connection it came on.
    pub conn: Arc<ConnInfo>,
    /// The request was accepted before the handshake completed, i.e. it arrived in 0-RTT
    /// early data (RFC 9001 §4.6.1; replayable, RFC 8470).
    pub early_data: bool,
}

impl RequestInfo {
    /// A request on `conn` that is not early data.
    pub fn new(conn: Arc<ConnInfo>) -> Self {
        RequestInfo { conn, early_data: false }
    }
}
