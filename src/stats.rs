//! Per-connection and per-request transport facts.
//!
//! [`ConnInfo`] describes the connection a request came on (protocol, ALPN, addresses) and
//! keeps a handle on the transport so later questions (RTT, congestion window, losses, path
//! changes) are answered from the live connection, not from a snapshot. [`RequestInfo`] adds
//! what is true of one request only: whether it arrived in 0-RTT early data.

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The application protocol a request was carried by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/3 over QUIC.
    H3,
    /// HTTP/2 over TLS/TCP.
    H2,
    /// HTTP/1.1 over TLS/TCP.
    Http11,
}

impl Protocol {
    /// The name browsers report as `nextHopProtocol` and ALPN uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::H3 => "h3",
            Protocol::H2 => "h2",
            Protocol::Http11 => "http/1.1",
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
    paths: PathTracker,
}

impl ConnInfo {
    /// Describe a QUIC connection.
    pub fn quic(
        conn: quinn::Connection,
        local: SocketAddr,
        alpn: Option<String>,
        protocol: Protocol,
    ) -> ConnInfo {
        let remote = conn.remote_address();
        ConnInfo {
            protocol,
            alpn,
            local,
            transport: Transport::Quic(conn),
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
    ) -> ConnInfo {
        ConnInfo {
            protocol,
            alpn,
            local,
            transport: Transport::Tcp(Arc::new(fd)),
            paths: PathTracker::new(remote),
        }
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
        PathTracker {
            last: Mutex::new(remote),
            changes: AtomicU64::new(0),
        }
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
        RequestInfo {
            conn,
            early_data: false,
        }
    }
}
