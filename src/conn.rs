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
    paths: PathTracker,
}

impl ConnInfo {
    /// Describe a QUIC connection.
    pub fn quic(conn: quinn::Connection, local: SocketAddr, alpn: Option<String>, protocol: Protocol) -> ConnInfo {
        let remote = conn.remote_address();
        ConnInfo {
            protocol,
            alpn,
            local,
            transport: Transport::Quic(conn),
            resumed: None,
            congestion: None,
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
            paths: PathTracker::new(remote),
        }
    }

    /// Record the congestion controller name (QUIC connections).
    pub fn with_congestion(mut self, name: impl Into<String>) -> Self {
        self.congestion = Some(name.into());
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
