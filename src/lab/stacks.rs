//! What the two stacks under comparison actually run with, each fact read from where it is
//! decided, with that place named: Linux TCP (HTTP/2) from the sockets and the kernel inside the
//! lab's namespaces, quinn (HTTP/3) from the configuration applied and quinn-proto 0.11.19's
//! source.
//!
//! * [`read`] builds [`StackFacts`]: it opens one TCP connection across the link
//!   ([`tcp_probe`]: a listener in the server namespace, a client in the client namespace, both
//!   set to the comparison's controller) and reads `TCP_INFO`/`TCP_CONGESTION` on both ends, the
//!   per-namespace sysctls under `/proc/sys/net/ipv4` (read from a thread inside each
//!   namespace) and Cubic's module parameters under `/sys/module/tcp_cubic/parameters` (host
//!   wide: sysfs is not per namespace). The server's `/conn` answers (the `established` object,
//!   `crate::conn::Established`), when the caller passes them, supply what only a real
//!   connection knows: QUIC's window and controller read back from quinn, TLS cipher suites.
//! * quinn's values that quiclab does not set are quinn-proto 0.11.19's defaults, written here
//!   as constants with the file they come from (`~/.cargo/registry/src/*/quinn-proto-0.11.19`);
//!   the unit test `quinn_defaults_match_the_code` checks those quinn exposes through its API.
//! * [`StackFacts::markdown`] prints them as a table (fact | HTTP/2 (Linux TCP) | HTTP/3 (quinn) |
//!   source); [`StackFacts::remaining_differences`] lists the differences the facts show,
//!   computed, so a difference is listed only when the values differ.
//! * [`equalized_initial_window`]: Linux's initial window in bytes (`snd_cwnd × snd_mss` on a
//!   freshly accepted socket), the value quinn's `initial_window` is set to for equal starts.
//! * [`probe_congestion`]: whether both namespaces can set a TCP controller (e.g. `bbr`), with
//!   the read-back from both ends of a real connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use serde::Serialize;

use super::{LabError, Link};
use crate::config::{Congestion, TransportConfig};
use crate::conn::Established;

/// quinn-proto 0.11.19 `src/congestion.rs`: `BASE_DATAGRAM_SIZE`.
const QUINN_BASE_DATAGRAM: u64 = 1200;
/// quinn-proto 0.11.19 `src/congestion/cubic.rs` and `new_reno.rs`, `Default`:
/// `14720.clamp(2 * BASE_DATAGRAM_SIZE, 10 * BASE_DATAGRAM_SIZE)`.
const QUINN_CUBIC_DEFAULT_WINDOW: u64 = 12_000;
/// quinn-proto 0.11.19 `src/congestion/bbr/mod.rs`: `K_MAX_INITIAL_CONGESTION_WINDOW (200) *
/// BASE_DATAGRAM_SIZE`.
const QUINN_BBR_DEFAULT_WINDOW: u64 = 200 * QUINN_BASE_DATAGRAM;
/// quinn-proto 0.11.19 `src/transport_parameters.rs`: `max_ack_delay` default 25 ms.
const QUINN_MAX_ACK_DELAY_MS: u64 = 25;
/// Linux `include/net/tcp.h`: `TCP_RTO_MIN ((unsigned)(HZ / 5))` = 200 ms, a kernel constant
/// (per route `rto_min` can raise it; the lab's namespaces set none).
const LINUX_RTO_MIN_MS: u64 = 200;
/// How long the TCP probe waits for its connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A value and where it was read.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sourced<T> {
    /// The value (`None`: could not be read; the source says where it was looked for).
    pub value: T,
    /// Where it was read: a socket option, a file, or a quinn-proto source file.
    pub source: String,
}

fn sourced<T>(value: T, source: impl Into<String>) -> Sourced<T> {
    Sourced { value, source: source.into() }
}

/// Cubic's HyStart settings (Linux `net/ipv4/tcp_cubic.c` module parameters).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HyStart {
    /// `hystart`: 1 on, 0 off.
    pub enabled: bool,
    /// `hystart_detect`: bit 1 ACK train, bit 2 delay increase.
    pub detect: u32,
    /// `hystart_low_window`: HyStart acts only from this many segments of cwnd.
    pub low_window: u32,
}

impl HyStart {
    /// "on (ACK train + delay, from 16 segments)" and the like.
    fn describe(&self) -> String {
        if !self.enabled {
            return "off".into();
        }
        let mut modes = Vec::new();
        if self.detect & 1 != 0 {
            modes.push("ACK train");
        }
        if self.detect & 2 != 0 {
            modes.push("delay increase");
        }
        let modes = if modes.is_empty() { "no detector".to_string() } else { modes.join(" + ") };
        format!("on ({modes}; from cwnd {} segments)", self.low_window)
    }
}

/// One end of the TCP probe connection, read on its socket.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TcpEnd {
    /// The socket's state (the server end: read right after `accept`, before any data).
    pub established: Established,
    /// The namespace's `/proc/sys/net/ipv4/tcp_*`.
    pub sysctls: Vec<(String, Option<String>)>,
    /// The root qdisc of the link's device in this namespace (`tc qdisc show dev qlab0`, run
    /// from a thread inside the namespace; `None` if `tc` is missing or says nothing).
    pub qdisc: Option<String>,
}

/// What a TCP connection across the link showed on both ends.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TcpProbe {
    /// The accepted socket in the server namespace.
    pub server: TcpEnd,
    /// The connecting socket in the client namespace.
    pub client: TcpEnd,
}

/// Linux TCP (the HTTP/2 side).
#[derive(Debug, Clone, Serialize)]
pub struct LinuxFacts {
    /// Controller read back on the server's accepted socket.
    pub congestion_server: Sourced<Option<String>>,
    /// Controller read back on the client's socket.
    pub congestion_client: Sourced<Option<String>>,
    /// HyStart (only meaningful with Cubic).
    pub hystart: Sourced<Option<HyStart>>,
    /// Initial congestion window, bytes.
    pub initial_window: Sourced<Option<u64>>,
    /// Initial congestion window, segments.
    pub initial_window_segments: Sourced<Option<u32>>,
    /// Sender MSS, bytes.
    pub mss: Sourced<Option<u32>>,
    /// The RTO at establishment, ms.
    pub rto_at_start_ms: Sourced<Option<f64>>,
    /// The minimum RTO, ms.
    pub rto_min_ms: Sourced<u64>,
    /// Per-namespace sysctls (server namespace).
    pub sysctls: Sourced<Vec<(String, Option<String>)>>,
    /// Whether the sender paces.
    pub pacing: Sourced<String>,
    /// How the HTTP/2 server interleaves concurrent responses.
    pub stream_scheduling: Sourced<String>,
    /// The TLS cipher suite of an HTTP/2 connection.
    pub cipher_suite: Sourced<Option<String>>,
}

/// quinn (the HTTP/3 side).
#[derive(Debug, Clone, Serialize)]
pub struct QuinnFacts {
    /// Controller configured, and read back from a connection when `/conn` was given.
    pub congestion: Sourced<String>,
    /// Initial window applied, bytes.
    pub initial_window: Sourced<u64>,
    /// The congestion window a connection reported at establishment (`/conn`), bytes.
    pub cwnd_at_start: Sourced<Option<u64>>,
    /// HyStart in quinn's Cubic.
    pub hystart: Sourced<String>,
    /// Initial RTT, ms.
    pub initial_rtt_ms: Sourced<u64>,
    /// The first PTO (Initial/Handshake space, before any RTT sample), ms.
    pub first_pto_ms: Sourced<u64>,
    /// max_ack_delay (ms) and the ACK frequency extension.
    pub ack: Sourced<String>,
    /// Loss detection thresholds.
    pub loss_thresholds: Sourced<String>,
    /// Datagram sizes: initial and minimum MTU, MTU discovery.
    pub mtu: Sourced<String>,
    /// Whether quinn paces.
    pub pacing: Sourced<String>,
    /// How quinn interleaves concurrent streams.
    pub stream_scheduling: Sourced<String>,
    /// The cipher suite.
    pub cipher_suite: Sourced<Option<String>>,
    /// BBR's status in quinn.
    pub bbr_status: Sourced<String>,
}

/// Both stacks' facts, each with its source.
#[derive(Debug, Clone, Serialize)]
pub struct StackFacts {
    /// The controller the comparison asked for on both sides.
    pub congestion_requested: String,
    /// Linux TCP.
    pub linux: LinuxFacts,
    /// quinn.
    pub quinn: QuinnFacts,
}

/// The Linux name of the TCP controller matching quinn's `cc`.
pub fn linux_congestion_name(cc: Congestion) -> &'static str {
    match cc {
        Congestion::Cubic => "cubic",
        Congestion::NewReno => "reno",
        Congestion::Bbr => "bbr",
    }
}

/// quinn-proto 0.11.19's default initial window for `cc`, bytes.
pub fn quinn_default_initial_window(cc: Congestion) -> u64 {
    match cc {
        Congestion::Cubic | Congestion::NewReno => QUINN_CUBIC_DEFAULT_WINDOW,
        Congestion::Bbr => QUINN_BBR_DEFAULT_WINDOW,
    }
}

/// quinn's first PTO before any RTT sample (Initial and Handshake spaces): quinn-proto 0.11.19
/// `RttEstimator::new` sets `latest = initial_rtt`, `var = initial_rtt / 2`; `pto_base` is
/// `get() + max(4 × var, 1 ms)`, i.e. 3 × initial_rtt (RFC 9002 §6.2.2). The application-data
/// space adds the peer's max_ack_delay.
pub fn quinn_first_pto(initial_rtt: Duration) -> Duration {
    initial_rtt + (initial_rtt / 2 * 4).max(Duration::from_millis(1))
}

/// The sysctls read in each namespace (`/proc/sys/net/...`; all per network namespace).
const SYSCTLS: [&str; 8] = [
    "ipv4/tcp_congestion_control",
    "ipv4/tcp_sack",
    "ipv4/tcp_timestamps",
    "ipv4/tcp_ecn",
    "ipv4/tcp_recovery",
    "ipv4/tcp_early_retrans",
    "ipv4/tcp_slow_start_after_idle",
    "ipv4/tcp_no_metrics_save",
];

/// The kind of the root qdisc of the link's device in the calling thread's namespace (the
/// child `tc` inherits the thread's network namespace). `net.core.default_qdisc` is not read:
/// it exists only in the initial namespace.
fn read_qdisc() -> Option<String> {
    let out = std::process::Command::new("tc").args(["qdisc", "show", "dev", super::link::DEVICE]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains(" root"))?;
    line.split_whitespace().nth(1).map(String::from)
}

/// Read [`SYSCTLS`] in the calling thread's network namespace.
fn read_sysctls() -> Vec<(String, Option<String>)> {
    SYSCTLS
        .iter()
        .map(|name| {
            let v = std::fs::read_to_string(format!("/proc/sys/net/{name}")).ok().map(|s| s.trim().to_string());
            (format!("net.{}", name.replace('/', ".")), v)
        })
        .collect()
}

/// Cubic's HyStart module parameters (host-wide).
fn read_hystart() -> Option<HyStart> {
    let p = |name: &str| -> Option<u32> {
        std::fs::read_to_string(format!("/sys/module/tcp_cubic/parameters/{name}")).ok()?.trim().parse().ok()
    };
    Some(HyStart { enabled: p("hystart")? != 0, detect: p("hystart_detect")?, low_window: p("hystart_low_window")? })
}

/// Open one TCP connection across the link with controller `cc` (or the namespaces' default)
/// on both ends, and read both sockets before any data is sent. The connection carries one
/// byte each way afterwards, so both ends know it is complete, and is closed.
pub fn tcp_probe(link: &Link, cc: Option<&str>) -> Result<TcpProbe, LabError> {
    let server_ip = link.server_ip();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
    let cc_s = cc.map(str::to_string);
    let server = link.spawn_in_server_ns("stacks-probe-srv", move || -> Result<TcpEnd, String> {
        let listener = match TcpListener::bind((server_ip, 0)) {
            Ok(l) => l,
            Err(e) => {
                let _ = addr_tx.send(Err(format!("bind: {e}")));
                return Err(format!("bind: {e}"));
            }
        };
        if let Some(cc) = &cc_s {
            if let Err(e) = crate::tcp::set_congestion(listener.as_raw_fd(), cc) {
                let _ = addr_tx.send(Err(e.to_string()));
                return Err(e.to_string());
            }
        }
        let local = listener.local_addr().map_err(|e| e.to_string());
        let _ = addr_tx.send(local.clone());
        local?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let deadline = std::time::Instant::now() + PROBE_TIMEOUT;
        let (mut sock, _) = loop {
            match listener.accept() {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        let established = Established::tcp(sock.as_raw_fd());
        sock.set_nonblocking(false).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        sock.read_exact(&mut b).map_err(|e| format!("read: {e}"))?;
        sock.write_all(&b).map_err(|e| format!("write: {e}"))?;
        Ok(TcpEnd { established, sysctls: read_sysctls(), qdisc: read_qdisc() })
    })?;
    let addr = match addr_rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            let _ = server.join();
            return Err(LabError::Experiment(format!("TCP probe listener: {e}")));
        }
        Err(_) => {
            let _ = server.join();
            return Err(LabError::Experiment("TCP probe listener did not start".into()));
        }
    };
    let cc_c = cc.map(str::to_string);
    let client = link.run_in_client_ns(move || -> Result<TcpEnd, String> {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).map_err(|e| e.to_string())?;
        if let Some(cc) = &cc_c {
            crate::tcp::set_congestion(sock.as_raw_fd(), cc).map_err(|e| e.to_string())?;
        }
        sock.connect_timeout(&addr.into(), PROBE_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        let mut s: TcpStream = sock.into();
        let established = Established::tcp(s.as_raw_fd());
        s.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(|e| e.to_string())?;
        s.write_all(b"x").map_err(|e| format!("write: {e}"))?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).map_err(|e| format!("read: {e}"))?;
        Ok(TcpEnd { established, sysctls: read_sysctls(), qdisc: read_qdisc() })
    })?;
    let server = server.join();
    match (server, client) {
        (Ok(mut server), Ok(mut client)) => {
            let src = "TCP_INFO and TCP_CONGESTION on the probe connection's socket, before any data";
            server.established.source = src;
            client.established.source = src;
            Ok(TcpProbe { server, client })
        }
        (Err(e), _) | (_, Err(e)) => Err(LabError::Experiment(format!("TCP probe across the link: {e}"))),
    }
}

/// Linux's initial window in bytes across `link` (`tcpi_snd_cwnd × tcpi_snd_mss` on a socket
/// just accepted in the server namespace, with the namespace's default controller): the value
/// to give quinn's `initial_window` (`TransportConfig::initial_window`) so both stacks start
/// from the same window.
pub fn equalized_initial_window(link: &Link) -> Result<u64, LabError> {
    tcp_probe(link, None)?
        .server
        .established
        .cwnd_bytes
        .filter(|&w| w > 0)
        .ok_or_else(|| LabError::Experiment("TCP_INFO gave no congestion window on the probe socket".into()))
}

/// Whether both namespaces can run TCP controller `name`, proven on a real connection across
/// the link: `Ok` with the names read back on the server's and the client's socket (both equal
/// `name` when it works), `Err` when it cannot be set. For quinn the controller is a
/// configuration (`TransportConfig::congestion`), read back from each connection in `/conn`'s
/// `established.congestion`.
pub fn probe_congestion(link: &Link, name: &str) -> Result<(String, String), LabError> {
    let p = tcp_probe(link, Some(name))?;
    let got = |e: &Established| e.congestion.clone().unwrap_or_default();
    Ok((got(&p.server.established), got(&p.client.established)))
}

/// The `established` object of the first `/conn` answer whose `transport` is `transport`.
fn established_of<'a>(server_conn: &'a [serde_json::Value], transport: &str) -> Option<&'a serde_json::Value> {
    server_conn.iter().find(|v| v.get("transport").and_then(|t| t.as_str()) == Some(transport))?.get("established")
}

/// HTTP/2's default SETTINGS_MAX_FRAME_SIZE (RFC 9113 §6.5.2), which hyper's client keeps.
const H2_MAX_FRAME_SIZE: u32 = 16_384;

/// Gather both stacks' facts. `cc` is the controller asked for on both sides (TCP gets its
/// Linux name), `transport` the QUIC transport configuration the server runs with, and
/// `server_conn` the server's `/conn` answers from connections of the comparison (one over
/// HTTP/2, one over HTTP/3; may be empty): their `established` objects, read on the server at
/// establishment, are preferred to the probe's for the initial windows, controllers and cipher
/// suites.
pub fn read(
    link: &Link,
    cc: Congestion,
    transport: &TransportConfig,
    server_conn: &[serde_json::Value],
) -> Result<StackFacts, LabError> {
    let probe = tcp_probe(link, Some(linux_congestion_name(cc)))?;
    Ok(from_parts(cc, transport, &probe, read_hystart(), server_conn))
}

/// [`read`] without the link: the facts from a probe, HyStart parameters and `/conn` answers.
pub fn from_parts(
    cc: Congestion,
    transport: &TransportConfig,
    probe: &TcpProbe,
    hystart: Option<HyStart>,
    server_conn: &[serde_json::Value],
) -> StackFacts {
    let tcp_conn = established_of(server_conn, "tcp");
    let quic_conn = established_of(server_conn, "quic");
    let conn_src = "/conn `established` (TCP_INFO before the TLS handshake)";
    let probe_src = "TCP_INFO on a probe connection across the link, server end, before any data";
    let (tcp_cwnd, tcp_segs, tcp_mss, cwnd_src) = match tcp_conn {
        Some(e) => (
            e.get("cwnd_bytes").and_then(|v| v.as_u64()),
            e.get("cwnd_segments").and_then(|v| v.as_u64()).and_then(|v| u32::try_from(v).ok()),
            e.get("mss").and_then(|v| v.as_u64()).and_then(|v| u32::try_from(v).ok()),
            conn_src,
        ),
        None => {
            let e = &probe.server.established;
            (e.cwnd_bytes, e.cwnd_segments, e.mss, probe_src)
        }
    };
    let s = &probe.server.established;
    let linux_cc = s.congestion.clone();
    let pacing = match (linux_cc.as_deref(), probe.server.qdisc.as_deref()) {
        (Some("bbr"), _) => "yes: BBR sets a pacing rate, enforced by TCP's internal pacing without fq".to_string(),
        (_, Some("fq")) => "yes: the device's qdisc fq paces at TCP's pacing rate".to_string(),
        (_, Some(q)) => format!("no: qdisc {q} does not pace and the controller is not BBR"),
        (_, None) => "unknown: the device's qdisc was not read (no `tc`)".to_string(),
    };
    let linux = LinuxFacts {
        congestion_server: sourced(linux_cc.clone(), "getsockopt TCP_CONGESTION, server's socket"),
        congestion_client: sourced(
            probe.client.established.congestion.clone(),
            "getsockopt TCP_CONGESTION, client's socket",
        ),
        hystart: sourced(
            hystart,
            "/sys/module/tcp_cubic/parameters/{hystart,hystart_detect,hystart_low_window} (host-wide module \
             parameters, not per namespace; apply to Cubic only)",
        ),
        initial_window: sourced(tcp_cwnd, format!("{cwnd_src}: tcpi_snd_cwnd × tcpi_snd_mss")),
        initial_window_segments: sourced(tcp_segs, format!("{cwnd_src}: tcpi_snd_cwnd")),
        mss: sourced(tcp_mss, format!("{cwnd_src}: tcpi_snd_mss")),
        rto_at_start_ms: sourced(s.rto_ms, format!("{probe_src}: tcpi_rto")),
        rto_min_ms: sourced(LINUX_RTO_MIN_MS, "kernel constant TCP_RTO_MIN = HZ/5 (include/net/tcp.h)"),
        sysctls: sourced(
            probe.server.sysctls.clone(),
            "/proc/sys/net/..., read from a thread in the server namespace (per namespace)",
        ),
        pacing: sourced(
            pacing,
            "controller read back; `tc qdisc show dev qlab0` in the server namespace (Linux paces only with \
             BBR, since 4.13 without fq, or under the fq qdisc)",
        ),
        stream_scheduling: sourced(
            format!(
                "round-robin over the streams with data, one DATA frame each turn of up to the client's \
                 SETTINGS_MAX_FRAME_SIZE ({H2_MAX_FRAME_SIZE} B, hyper's client default): a response of at \
                 most one frame goes out whole, in the order the responses became ready"
            ),
            "h2 0.4.20 proto/streams/prioritize.rs pop_frame (requeues a stream at the back after each \
             frame); quiclab sets no frame size",
        ),
        cipher_suite: sourced(
            tcp_conn.and_then(|e| e.get("cipher_suite")).and_then(|v| v.as_str()).map(String::from),
            "/conn `established.cipher_suite`: rustls ServerConnection::negotiated_cipher_suite()",
        ),
    };

    let (window, window_src) = match transport.initial_window {
        Some(w) => (w, "TransportConfig::initial_window, applied to the controller's config (quic::transport_config)"),
        None => (
            quinn_default_initial_window(cc),
            match cc {
                Congestion::Bbr => "quinn-proto 0.11.19 default (congestion/bbr/mod.rs: 200 × 1200)",
                _ => "quinn-proto 0.11.19 default (congestion/cubic.rs: 14720.clamp(2·1200, 10·1200))",
            },
        ),
    };
    let quic_read_cc = quic_conn.and_then(|e| e.get("congestion")).and_then(|v| v.as_str()).map(String::from);
    let (quic_cc, quic_cc_src) = match quic_read_cc {
        Some(n) => (n, "/conn `established.congestion`: type of quinn::Connection::congestion_state()"),
        None => (cc.to_string(), "TransportConfig::congestion (configured; no connection read back)"),
    };
    let read_window = quic_conn.and_then(|e| e.get("initial_window")).and_then(|v| v.as_u64());
    let (window, window_src) = match read_window {
        Some(w) => (w, "/conn `established.initial_window`: Controller::initial_window() of the connection"),
        None => (window, window_src),
    };
    let rtt = transport.initial_rtt;
    let quinn = QuinnFacts {
        congestion: sourced(quic_cc, quic_cc_src),
        initial_window: sourced(window, window_src),
        cwnd_at_start: sourced(
            quic_conn.and_then(|e| e.get("cwnd_bytes")).and_then(|v| v.as_u64()),
            "/conn `established.cwnd_bytes`: quinn::Connection::stats().path.cwnd",
        ),
        hystart: sourced(
            match cc {
                Congestion::Cubic => "none: slow start ends on the first loss or ECN mark only",
                _ => "n/a (not Cubic)",
            }
            .to_string(),
            "quinn-proto 0.11.19 congestion/cubic.rs (no HyStart code)",
        ),
        initial_rtt_ms: sourced(rtt.as_millis() as u64, "TransportConfig::initial_rtt"),
        first_pto_ms: sourced(
            quinn_first_pto(rtt).as_millis() as u64,
            "quinn-proto 0.11.19 connection/paths.rs RttEstimator: initial_rtt + 4 × initial_rtt/2 \
             (Initial/Handshake; application data adds max_ack_delay)",
        ),
        ack: sourced(
            format!("max_ack_delay {QUINN_MAX_ACK_DELAY_MS} ms; ACK frequency extension off"),
            "quinn-proto 0.11.19 transport_parameters.rs (max_ack_delay = 25), \
             config/transport.rs (ack_frequency_config: None); quiclab sets neither",
        ),
        loss_thresholds: sourced(
            "packet threshold 3, time threshold 9/8 RTT, persistent congestion 3 PTOs".to_string(),
            "quinn-proto 0.11.19 config/transport.rs defaults; quiclab sets none",
        ),
        mtu: sourced(
            "initial 1200 B, minimum 1200 B; MTU discovery on (upper bound 1452 B, every 600 s)".to_string(),
            "quinn-proto 0.11.19 lib.rs INITIAL_MTU, config/transport.rs MtuDiscoveryConfig::default",
        ),
        pacing: sourced(
            "yes: every controller, at a rate from cwnd/RTT".to_string(),
            "quinn-proto 0.11.19 connection/pacing.rs, used unconditionally in connection/mod.rs",
        ),
        stream_scheduling: sourced(
            "round-robin over the streams with data, packet by packet (send_fairness on): concurrent \
             responses share every packet train and finish together"
                .to_string(),
            "quinn-proto 0.11.19 config/transport.rs TransportConfig::send_fairness (default true), \
             connection/streams/state.rs; quiclab leaves it",
        ),
        cipher_suite: sourced(
            quic_conn.and_then(|e| e.get("cipher_suite")).and_then(|v| v.as_str()).map(String::from),
            "not exposed by quinn 0.11.12 (HandshakeData holds ALPN and server name only); read it from \
             the wire (keylog decryption)",
        ),
        bbr_status: sourced(
            "experimental (\"Experimental! Use at your own risk.\")".to_string(),
            "quinn-proto 0.11.19 congestion/bbr/mod.rs doc comment",
        ),
    };
    StackFacts { congestion_requested: cc.to_string(), linux, quinn }
}

impl StackFacts {
    /// The facts as a Markdown table: fact | HTTP/2 (Linux TCP) | HTTP/3 (quinn) | source.
    pub fn markdown(&self) -> String {
        let (l, q) = (&self.linux, &self.quinn);
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "(not read)".into());
        let num = |v: Option<u64>, unit: &str| v.map(|v| format!("{v} {unit}")).unwrap_or_else(|| "(not read)".into());
        let sysctl = |name: &str| {
            l.sysctls.value.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.clone()).unwrap_or_else(|| "?".into())
        };
        let mut rows: Vec<[String; 4]> = vec![
            [
                "congestion controller".into(),
                format!("{} (server), {} (client)", opt(&l.congestion_server.value), opt(&l.congestion_client.value)),
                q.congestion.value.clone(),
                format!("{}; {}", l.congestion_server.source, q.congestion.source),
            ],
            [
                "initial window".into(),
                format!(
                    "{} ({} × {} B)",
                    num(l.initial_window.value, "B"),
                    num(l.initial_window_segments.value.map(u64::from), "segments"),
                    num(l.mss.value.map(u64::from), "").trim_end(),
                ),
                format!("{} B (cwnd at establishment: {})", q.initial_window.value, num(q.cwnd_at_start.value, "B")),
                format!("{}; {}; {}", l.initial_window.source, q.initial_window.source, q.cwnd_at_start.source),
            ],
            [
                "HyStart".into(),
                l.hystart.value.as_ref().map(HyStart::describe).unwrap_or_else(|| "(not read)".into()),
                q.hystart.value.clone(),
                format!("{}; {}", l.hystart.source, q.hystart.source),
            ],
            [
                "first timeout".into(),
                format!(
                    "RTO {} at establishment",
                    l.rto_at_start_ms.value.map_or("(not read)".into(), |v| format!("{v} ms"))
                ),
                format!(
                    "PTO {} ms before any RTT sample (initial RTT {} ms)",
                    q.first_pto_ms.value, q.initial_rtt_ms.value
                ),
                format!("{}; {}", l.rto_at_start_ms.source, q.first_pto_ms.source),
            ],
            [
                "minimum timeout".into(),
                format!("RTO ≥ {} ms", l.rto_min_ms.value),
                "PTO = sRTT + max(4·RTTvar, 1 ms) + max_ack_delay; no 200 ms floor".into(),
                format!("{}; quinn-proto 0.11.19 connection/mod.rs pto()", l.rto_min_ms.source),
            ],
            [
                "ACKs".into(),
                format!(
                    "delayed ACKs between TCP_DELACK_MIN 40 ms and TCP_DELACK_MAX 200 ms; SACK {}",
                    sysctl("net.ipv4.tcp_sack")
                ),
                q.ack.value.clone(),
                format!("kernel constants (include/net/tcp.h); {}; {}", l.sysctls.source, q.ack.source),
            ],
            [
                "loss detection".into(),
                format!(
                    "tcp_recovery {} (1 = RACK), tcp_early_retrans {} (3 = TLP), timestamps {}",
                    sysctl("net.ipv4.tcp_recovery"),
                    sysctl("net.ipv4.tcp_early_retrans"),
                    sysctl("net.ipv4.tcp_timestamps")
                ),
                q.loss_thresholds.value.clone(),
                format!("{}; {}", l.sysctls.source, q.loss_thresholds.source),
            ],
            [
                "packet size".into(),
                num(l.mss.value.map(u64::from), "B MSS"),
                q.mtu.value.clone(),
                format!("{}; {}", l.mss.source, q.mtu.source),
            ],
            [
                "ECN".into(),
                format!("tcp_ecn {} (0 off, 1 on, 2 only when the peer asks)", sysctl("net.ipv4.tcp_ecn")),
                "ECT(0) on sent packets while the path's ECN validates (`sending_ecn: true`)".into(),
                format!("{}; quinn-proto 0.11.19 connection/paths.rs", l.sysctls.source),
            ],
            [
                "idle / metrics".into(),
                format!(
                    "slow_start_after_idle {}, no_metrics_save {}",
                    sysctl("net.ipv4.tcp_slow_start_after_idle"),
                    sysctl("net.ipv4.tcp_no_metrics_save")
                ),
                "—".into(),
                l.sysctls.source.clone(),
            ],
            [
                "pacing".into(),
                l.pacing.value.clone(),
                q.pacing.value.clone(),
                format!("{}; {}", l.pacing.source, q.pacing.source),
            ],
            [
                "stream scheduling".into(),
                l.stream_scheduling.value.clone(),
                q.stream_scheduling.value.clone(),
                format!("{}; {}", l.stream_scheduling.source, q.stream_scheduling.source),
            ],
            [
                "cipher suite".into(),
                opt(&l.cipher_suite.value),
                opt(&q.cipher_suite.value),
                format!("{}; {}", l.cipher_suite.source, q.cipher_suite.source),
            ],
        ];
        if q.congestion.value == "bbr" {
            rows.push(["BBR".into(), "Linux tcp_bbr".into(), q.bbr_status.value.clone(), q.bbr_status.source.clone()]);
        }
        let mut s = String::from("| fact | HTTP/2 (Linux TCP) | HTTP/3 (quinn) | source |\n|---|---|---|---|\n");
        for r in rows {
            let cells: Vec<String> = r.iter().map(|c| c.replace('|', "\\|")).collect();
            s.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        s
    }

    /// The differences between the stacks that the facts show, one sentence each, computed:
    /// a difference is listed only when the values read differ.
    pub fn remaining_differences(&self) -> Vec<String> {
        let (l, q) = (&self.linux, &self.quinn);
        let mut out = Vec::new();
        let tcp_cc = l.congestion_server.value.as_deref().map(|n| if n == "reno" { "newreno" } else { n });
        if tcp_cc != Some(q.congestion.value.as_str()) {
            out.push(format!(
                "congestion controllers differ: TCP {}, quinn {}",
                l.congestion_server.value.as_deref().unwrap_or("(not read)"),
                q.congestion.value
            ));
        }
        if l.congestion_client.value != l.congestion_server.value {
            out.push(format!(
                "TCP's client and server controllers differ: {} vs {}",
                l.congestion_client.value.as_deref().unwrap_or("(not read)"),
                l.congestion_server.value.as_deref().unwrap_or("(not read)")
            ));
        }
        match l.initial_window.value {
            Some(w) if w != q.initial_window.value => {
                out.push(format!("initial windows differ: TCP {w} B, quinn {} B", q.initial_window.value))
            }
            None => out.push("TCP's initial window was not read".into()),
            _ => {}
        }
        if let (Some(w), Some(c)) = (l.initial_window.value, q.cwnd_at_start.value) {
            if c != w && c != q.initial_window.value {
                out.push(format!("quinn's cwnd at establishment ({c} B) is not its configured initial window"));
            }
        }
        let tcp_hystart = tcp_cc == Some("cubic") && l.hystart.value.as_ref().is_some_and(|h| h.enabled);
        if tcp_hystart && q.congestion.value == "cubic" {
            out.push(
                "HyStart: Linux Cubic leaves slow start on ACK-train/delay signals, quinn's Cubic only on loss".into(),
            );
        }
        out.push(format!(
            "timeouts: TCP's RTO is at least {} ms; quinn's PTO has no such floor (sRTT + max(4·RTTvar, 1 ms) + {} ms)",
            l.rto_min_ms.value, QUINN_MAX_ACK_DELAY_MS
        ));
        if let Some(mss) = l.mss.value {
            out.push(format!(
                "packet size: TCP segments carry up to {mss} B; QUIC datagrams start at 1200 B (MTU discovery may raise them)"
            ));
        }
        if !l.pacing.value.starts_with("yes") && q.pacing.value.starts_with("yes") {
            out.push("pacing: quinn paces, Linux TCP (this controller and qdisc) does not".into());
        }
        out.push(format!(
            "stream scheduling: HTTP/2 sends concurrent responses a frame (up to {H2_MAX_FRAME_SIZE} B) at a \
             time, so small ones finish one after another; quinn round-robins packet by packet, so they \
             finish together. With no loss at all this alone moves per-request latency (mean and \
             percentiles) of `small` and `page`; stall times are not affected"
        ));
        if l.cipher_suite.value.is_some() && q.cipher_suite.value.is_none() {
            out.push("cipher suite: read on TCP; QUIC's is not exposed by quinn and must come from the wire".into());
        } else if l.cipher_suite.value != q.cipher_suite.value {
            out.push(format!(
                "cipher suites differ: TCP {}, QUIC {}",
                l.cipher_suite.value.as_deref().unwrap_or("(not read)"),
                q.cipher_suite.value.as_deref().unwrap_or("(not read)")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(cc: &str, cwnd: u32, mss: u32) -> TcpProbe {
        let est = Established {
            cwnd_bytes: Some(u64::from(cwnd) * u64::from(mss)),
            cwnd_segments: Some(cwnd),
            mss: Some(mss),
            congestion: Some(cc.into()),
            rto_ms: Some(1000.0),
            ..Default::default()
        };
        let sysctls = vec![("net.ipv4.tcp_sack".to_string(), Some("1".to_string()))];
        let qdisc = Some("pfifo_fast".to_string());
        TcpProbe {
            server: TcpEnd { established: est.clone(), sysctls: sysctls.clone(), qdisc: qdisc.clone() },
            client: TcpEnd { established: est, sysctls, qdisc },
        }
    }

    #[test]
    fn quinn_defaults_match_the_code() {
        use quinn::congestion::ControllerFactory;
        let now = std::time::Instant::now();
        let cubic = std::sync::Arc::new(quinn::congestion::CubicConfig::default()).build(now, 1200);
        assert_eq!(cubic.initial_window(), QUINN_CUBIC_DEFAULT_WINDOW);
        let bbr = std::sync::Arc::new(quinn::congestion::BbrConfig::default()).build(now, 1200);
        assert_eq!(bbr.initial_window(), QUINN_BBR_DEFAULT_WINDOW);
        assert_eq!(quinn_first_pto(Duration::from_millis(333)), Duration::from_millis(999));
    }

    #[test]
    fn equal_windows_are_not_a_difference() {
        let t = TransportConfig { initial_window: Some(14_480), ..Default::default() };
        let f = from_parts(Congestion::Cubic, &t, &probe("cubic", 10, 1448), None, &[]);
        assert_eq!(f.linux.initial_window.value, Some(14_480));
        assert_eq!(f.quinn.initial_window.value, 14_480);
        let d = f.remaining_differences();
        assert!(!d.iter().any(|s| s.contains("initial windows differ")), "{d:?}");
        assert!(!d.iter().any(|s| s.contains("controllers differ")), "{d:?}");
        assert!(d.iter().any(|s| s.contains("200 ms")), "{d:?}");
    }

    #[test]
    fn default_windows_differ_and_are_reported() {
        let f = from_parts(Congestion::Cubic, &TransportConfig::default(), &probe("cubic", 10, 1448), None, &[]);
        assert_eq!(f.quinn.initial_window.value, 12_000);
        let d = f.remaining_differences();
        assert!(d.iter().any(|s| s.contains("initial windows differ: TCP 14480 B, quinn 12000 B")), "{d:?}");
        let hy = HyStart { enabled: true, detect: 3, low_window: 16 };
        let f = from_parts(Congestion::Cubic, &TransportConfig::default(), &probe("cubic", 10, 1448), Some(hy), &[]);
        assert!(f.remaining_differences().iter().any(|s| s.starts_with("HyStart")));
        let md = f.markdown();
        assert!(md.contains("| initial window | 14480 B (10 segments × 1448 B) | 12000 B"), "{md}");
        assert!(md.contains("on (ACK train + delay increase; from cwnd 16 segments)"), "{md}");
    }

    #[test]
    fn conn_answers_take_precedence() {
        let conn = vec![
            serde_json::json!({"transport": "tcp", "established": {"cwnd_bytes": 14480, "cwnd_segments": 10,
                "mss": 1448, "congestion": "bbr", "cipher_suite": "TLS13_AES_128_GCM_SHA256"}}),
            serde_json::json!({"transport": "quic", "established": {"cwnd_bytes": 14480, "initial_window": 14480,
                "congestion": "bbr", "cipher_suite": null}}),
        ];
        let f = from_parts(Congestion::Bbr, &TransportConfig::default(), &probe("bbr", 10, 1448), None, &conn);
        assert_eq!(f.quinn.initial_window.value, 14_480);
        assert_eq!(f.quinn.congestion.value, "bbr");
        assert_eq!(f.linux.cipher_suite.value.as_deref(), Some("TLS13_AES_128_GCM_SHA256"));
        assert!(f.linux.pacing.value.starts_with("yes"));
        let d = f.remaining_differences();
        assert!(!d.iter().any(|s| s.contains("initial windows differ") || s.starts_with("HyStart")), "{d:?}");
        assert!(f.markdown().contains("experimental"));
    }
}
