//! Every tunable knob of the server, with its default and the reason for that default.
//!
//! The CLI, the examples, the tests and the lab all build their servers from
//! [`ServerConfig`], so a default lives in exactly one place. [`ServerConfig::summary`]
//! prints the effective configuration at startup, so every run says what it ran with.

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Default port for HTTP/3 (UDP) and HTTP/2 + HTTP/1.1 over TLS (TCP). 4433 is the customary
/// unprivileged HTTPS test port; both transports share it so `Alt-Svc: h3=":4433"` is true.
pub const DEFAULT_PORT: u16 = 4433;

/// `[::]:4433`: the unspecified IPv6 address, bound dual-stack (`IPV6_V6ONLY` off), so clients
/// reach the server on both `127.0.0.1` and `::1` and `localhost` works whichever one they pick.
pub fn default_listen() -> SocketAddr {
    SocketAddr::from((Ipv6Addr::UNSPECIFIED, DEFAULT_PORT))
}

/// ALPN for HTTP/3 (RFC 9114 §3.1).
pub const ALPN_H3: &[u8] = b"h3";
/// ALPN for HTTP/2 over TLS (RFC 9113 §3.2).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for HTTP/1.1 over TLS (RFC 7301 §6).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Everything `quiclab serve` needs to run.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// UDP address of the QUIC endpoint (HTTP/3).
    pub quic_listen: SocketAddr,
    /// TCP address of the TLS listener (HTTP/2 and HTTP/1.1). The CLI's `--listen` sets both to the
    /// same address; tests may use port 0 for each.
    pub tcp_listen: SocketAddr,
    /// Where the development certificates live (created on first start).
    pub certs_dir: PathBuf,
    /// A user's own certificate chain (PEM) instead of the development leaf.
    pub cert: Option<PathBuf>,
    /// The private key (PEM) for `cert`.
    pub key: Option<PathBuf>,
    /// Serve static files from this directory (built-in pages answer where it has no file).
    pub root: Option<PathBuf>,
    /// Limits on what a peer may ask of the site.
    pub limits: Limits,
    /// QUIC transport parameters.
    pub transport: TransportConfig,
    /// Most concurrent connections per listener (QUIC and TLS/TCP each); more are refused
    /// (QUIC CONNECTION_REFUSED, RFC 9000 §20.1; TCP closed at once). 10,000: within the
    /// 20,000 file descriptors a process gets here, with room for the TCP side's two each.
    pub max_connections: usize,
    /// Send a stateless Retry to every new QUIC client (RFC 9000 §8.1.2): proves the client's
    /// address before any state is kept, at the cost of one extra RTT. Off by default, like
    /// most deployments, so handshake timings show QUIC's usual 1-RTT.
    pub retry: bool,
    /// Addresses advertised in the `preferred_address` transport parameter (RFC 9000 §9.6),
    /// at most one IPv4 and one IPv6. They must reach the same UDP socket (e.g. listen on
    /// `[::]:4433` and advertise `127.0.0.2:4433`). Empty by default: clients stay where they are.
    pub preferred_addresses: Vec<SocketAddr>,
    /// TCP congestion control for the TLS/TCP listener's sockets (`TCP_CONGESTION`, inherited by
    /// accepted sockets). `None`: the kernel default (BBR on these machines, Cubic on most
    /// others). Comparisons set it to the QUIC side's controller.
    pub tcp_congestion: Option<String>,
    /// Write one qlog file per QUIC connection into this directory.
    pub qlog_dir: Option<PathBuf>,
    /// How long a graceful shutdown may take before open connections are closed hard.
    /// 5 s: long enough for an in-flight small request, short enough for Ctrl-C to feel prompt.
    pub shutdown_grace: Duration,
    /// Largest WebSocket message (and frame) on `/ws` and `/mqtt`; a larger one closes the
    /// WebSocket with 1009 (RFC 6455 §7.4.1). 1 MiB: many times what an MQTT or chat message
    /// carries. Each open WebSocket may hold one message being reassembled; sessions at once are
    /// bounded by `max_connections`.
    pub ws_max_message: usize,
    /// The MQTT broker: listeners (TCP `[::]:1883`, TLS `[::]:8883`) and its limits.
    pub mqtt: mqtt_core::MqttConfig,
    /// A dedicated MQTT-over-QUIC listener (ALPN `mqtt`) with its own transport parameters
    /// ([`ServerConfig::mqtt_quic_transport`]); MQTT over QUIC is always also served on the
    /// shared HTTP/3 port. `None` by default (EMQX's default port is 14567).
    pub mqtt_quic_listen: Option<SocketAddr>,
    /// A plaintext listener for MQTT over WebSocket (`ws://HOST:PORT/mqtt`; also the `/ws` echo),
    /// HTTP/1.1 only and nothing but the WebSocket endpoints. `None` by default (EMQX's default
    /// port is 8083); `wss://` is always served on the HTTPS listener.
    pub mqtt_ws_listen: Option<SocketAddr>,
    /// Idle timeout of the dedicated MQTT-over-QUIC listener. 300 s: 1.5 × a 200 s keepalive.
    pub mqtt_quic_idle_timeout: Duration,
    /// The dedicated listener's QUIC keep-alive PING interval. 60 s: well inside the idle timeout,
    /// a packet a minute per idle client.
    pub mqtt_quic_keep_alive: Duration,
    /// Concurrent bidirectional streams per connection on the dedicated listener: the control
    /// stream and up to N − 1 data streams (topics) at once. 50, not HTTP/3's 100: quinn keeps
    /// an entry per allowed stream in every connection (about 2.6 KiB per idle client less).
    pub mqtt_quic_max_streams: u32,
}

impl ServerConfig {
    /// The built-in defaults (what `quiclab serve` runs with no flags).
    pub fn new() -> Self {
        ServerConfig {
            quic_listen: default_listen(),
            tcp_listen: default_listen(),
            certs_dir: PathBuf::from("certs"),
            cert: None,
            key: None,
            root: None,
            limits: Limits::default(),
            transport: TransportConfig::default(),
            max_connections: 10_000,
            retry: false,
            preferred_addresses: Vec::new(),
            tcp_congestion: None,
            qlog_dir: None,
            shutdown_grace: Duration::from_secs(5),
            ws_max_message: 1 << 20,
            mqtt: mqtt_core::MqttConfig::default(),
            mqtt_quic_listen: None,
            mqtt_ws_listen: None,
            mqtt_quic_idle_timeout: Duration::from_secs(300),
            mqtt_quic_keep_alive: Duration::from_secs(60),
            mqtt_quic_max_streams: 50,
        }
    }

    /// A configuration for tests and examples: loopback, ephemeral ports, certificates in `dir`.
    pub fn ephemeral(certs_dir: impl Into<PathBuf>) -> Self {
        let lo = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
        ServerConfig {
            quic_listen: lo,
            tcp_listen: lo,
            certs_dir: certs_dir.into(),
            mqtt: mqtt_core::MqttConfig::ephemeral(),
            ..ServerConfig::new()
        }
    }

    /// The effective configuration as `key = value` lines, printed at startup.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: &dyn fmt::Display| s.push_str(&format!("  {k:<24} {v}\n"));
        line("quic_listen (udp)", &self.quic_listen);
        line("tcp_listen (tls)", &self.tcp_listen);
        line("certs_dir", &self.certs_dir.display());
        if let (Some(c), Some(k)) = (&self.cert, &self.key) {
            line("cert", &c.display());
            line("key", &k.display());
        }
        line("max_bytes", &self.limits.max_bytes);
        line("max_body", &self.limits.max_body);
        line("max_delay_ms", &self.limits.max_delay.as_millis());
        line("max_header_bytes", &self.limits.max_header_bytes);
        line("max_ranges", &self.limits.max_ranges);
        line("handshake_timeout_ms", &self.limits.handshake_timeout.as_millis());
        if !self.limits.redirect_hosts.is_empty() {
            line("redirect_allow", &self.limits.redirect_hosts.join(", "));
        }
        match &self.root {
            Some(r) => line("root", &r.display()),
            None => line("root", &"(built-in pages only)"),
        }
        let t = &self.transport;
        line("congestion", &t.congestion);
        line("stream_window", &t.stream_window);
        line("conn_window", &t.conn_window);
        line("max_streams", &t.max_streams);
        line("max_uni_streams", &t.max_uni_streams);
        line("idle_timeout_ms", &t.idle_timeout.as_millis());
        line("initial_rtt_ms", &t.initial_rtt.as_millis());
        match t.initial_window {
            Some(w) => line("initial_window", &w),
            None => line("initial_window", &"(quinn's default for the controller)"),
        }
        line("max_connections", &self.max_connections);
        line("retry", &self.retry);
        line("tcp_congestion", &self.tcp_congestion.as_deref().unwrap_or("(kernel default)"));
        if !self.preferred_addresses.is_empty() {
            let list: Vec<String> = self.preferred_addresses.iter().map(|a| a.to_string()).collect();
            line("preferred_address", &list.join(", "));
        }
        match &self.qlog_dir {
            Some(d) => line("qlog_dir", &d.display()),
            None => line("qlog_dir", &"(off)"),
        }
        line("keylog", &std::env::var("SSLKEYLOGFILE").unwrap_or_else(|_| "(off; set SSLKEYLOGFILE)".into()));
        line("shutdown_grace_ms", &self.shutdown_grace.as_millis());
        line("ws_max_message", &self.ws_max_message);
        match &self.mqtt_ws_listen {
            Some(a) => line("mqtt_ws_listen (plain)", a),
            None => line("mqtt_ws_listen (plain)", &"(off)"),
        }
        s.push_str(&self.mqtt.summary());
        s
    }
}

impl ServerConfig {
    /// Transport parameters of the dedicated MQTT-over-QUIC listener: the shared ones, with an
    /// idle timeout of 300 s and QUIC keep-alive PINGs every 60 s, so the connection outlives
    /// any MQTT keepalive up to 200 s (1.5 × 200 s, MQTT 3.1.1 §3.1.2.10; spec §4.2). The shared
    /// HTTP/3 port keeps HTTP/3's 30 s: MQTT clients there must ping in time (spec §4.3). Stream
    /// limits: `mqtt_quic_max_streams` bidirectional, 3 unidirectional (none are used; the few
    /// allowed are refused with STOP_SENDING, spec §2.8).
    pub fn mqtt_quic_transport(&self) -> TransportConfig {
        TransportConfig {
            idle_timeout: self.mqtt_quic_idle_timeout,
            keep_alive: Some(self.mqtt_quic_keep_alive),
            max_streams: self.mqtt_quic_max_streams,
            max_uni_streams: 3,
            ..self.transport.clone()
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Limits on what a peer may ask of the test site.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest `/bytes/N`. 1 GiB: enough for any throughput experiment on a lab link, small
    /// enough that a typo cannot keep a connection busy for hours on loopback.
    pub max_bytes: u64,
    /// Largest request body read (`/echo`, and bodies drained on other routes). 16 MiB: room for
    /// upload experiments; a larger body gets `413 Content Too Large` (RFC 9110 §15.5.14).
    pub max_body: u64,
    /// Longest wait a request may ask for: `/delay/N` (seconds), `/delay-ms/MS`, and each of
    /// `/drip`'s `duration` and `delay`. 60 s: beyond it requests would outlive common client
    /// timeouts.
    pub max_delay: Duration,
    /// Largest request header section, in bytes, on both transports (HTTP/3
    /// `SETTINGS_MAX_FIELD_SECTION_SIZE`, RFC 9114 §7.2.4.1; hyper's max header list size for
    /// HTTP/2). 64 KiB: ten times what browsers send with many cookies.
    pub max_header_bytes: u32,
    /// Most ranges in one `Range` header; more get 416 (RFC 9110 §14.2 allows refusing many
    /// small ranges). 16: enough for any real multipart use, too few to amplify a response.
    pub max_ranges: usize,
    /// Time a TLS/TCP client has to finish its handshake. 10 s: a hundred RTTs on the slowest lab
    /// link, while a connection that never finishes cannot hold a socket for long.
    pub handshake_timeout: Duration,
    /// Hosts besides the request's own origin that `/redirect-to?url=` may send a client to
    /// (exact host names, any port; lower case). Empty by default: the site is no open
    /// redirector, so only relative and same-origin URLs are followed; others get 400.
    pub redirect_hosts: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 30,
            max_body: 16 << 20,
            max_delay: Duration::from_secs(60),
            max_header_bytes: 64 << 10,
            max_ranges: 16,
            handshake_timeout: Duration::from_secs(10),
            redirect_hosts: Vec::new(),
        }
    }
}

/// Congestion controller for QUIC connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// Cubic (RFC 9438): quinn's default and the usual Linux TCP choice, so comparisons with
    /// TCP start from the same algorithm.
    #[default]
    Cubic,
    /// NewReno (RFC 9002 §7).
    NewReno,
    /// BBR (quinn marks its implementation experimental).
    Bbr,
}

impl fmt::Display for Congestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Congestion::Cubic => "cubic",
            Congestion::NewReno => "newreno",
            Congestion::Bbr => "bbr",
        })
    }
}

impl std::str::FromStr for Congestion {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        match s.to_ascii_lowercase().as_str() {
            "cubic" => Ok(Congestion::Cubic),
            "newreno" | "reno" => Ok(Congestion::NewReno),
            "bbr" => Ok(Congestion::Bbr),
            _ => Err(BadValue::new("a congestion controller", s, "cubic, newreno, bbr")),
        }
    }
}

/// A knob's value that does not parse (a flag, a query parameter): what was expected, what
/// came, and an example of the right form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not {what}: {value:?} ({hint})")]
pub struct BadValue {
    /// What the value should have been ("a size", "a duration").
    pub what: &'static str,
    /// The value as given.
    pub value: String,
    /// The accepted forms, by example.
    pub hint: &'static str,
}

impl BadValue {
    /// `value` is not `what`; `hint` shows the accepted forms.
    pub fn new(what: &'static str, value: &str, hint: &'static str) -> BadValue {
        BadValue { what, value: value.to_string(), hint }
    }
}

/// QUIC transport parameters applied to every connection the endpoint accepts.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// See [`Congestion`].
    pub congestion: Congestion,
    /// Per-stream receive window, bytes. 1,250,000: quinn's default (100 Mbit/s × 100 ms),
    /// kept so results compare with other quinn deployments.
    pub stream_window: u64,
    /// Connection receive window, bytes. 16 MiB: large enough that 100 concurrent streams are
    /// not throttled by the connection window on loopback, finite so one client cannot make the
    /// server buffer without bound.
    pub conn_window: u64,
    /// Concurrent client-initiated bidirectional streams. 100: the HTTP/2 default that most
    /// servers advertise (RFC 9113 §6.5.2 recommends at least 100), so H2 and H3 compare fairly.
    pub max_streams: u32,
    /// Concurrent client-initiated unidirectional streams. 10: HTTP/3 needs three (control,
    /// QPACK encoder and decoder, RFC 9114 §6.2) and quiclab offers no push; quinn keeps state
    /// for every stream it allows, so its default of 100 costs memory on every idle connection.
    pub max_uni_streams: u32,
    /// Idle timeout. 30 s: quinn's default.
    pub idle_timeout: Duration,
    /// Send QUIC PING frames this often to keep a quiet connection alive. `None` (the default
    /// for HTTP/3): idle connections end after the idle timeout.
    pub keep_alive: Option<Duration>,
    /// RTT assumed before the first sample. 333 ms: RFC 9002 §6.2.2's recommended value and
    /// quinn's default.
    pub initial_rtt: Duration,
    /// The congestion controller's initial window, bytes. `None` (the default): quinn's own,
    /// which depends on the controller (quinn-proto 0.11.19: Cubic and NewReno
    /// `14720.clamp(2 * 1200, 10 * 1200)` = 12,000 B; BBR 200 × 1200 = 240,000 B). The lab sets
    /// it to Linux TCP's initial window (`lab::stacks::equalized_initial_window`) so both stacks
    /// start from the same window.
    pub initial_window: Option<u64>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            congestion: Congestion::Cubic,
            stream_window: 1_250_000,
            conn_window: 16 << 20,
            max_streams: 100,
            max_uni_streams: 10,
            idle_timeout: Duration::from_secs(30),
            keep_alive: None,
            initial_rtt: Duration::from_millis(333),
            initial_window: None,
        }
    }
}

/// Parse a byte count with an optional `k`, `M` or `G` suffix (powers of 1024): `1k` = 1024.
pub fn parse_size(s: &str) -> Result<u64, BadValue> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| BadValue::new("a size", s, "use e.g. 1024, 64k, 50M"))?;
    n.checked_mul(mult).ok_or_else(|| BadValue::new("a size that fits in 64 bits", s, "at most 15G or so"))
}

/// Parse a duration: `250ms`, `2s`, `1.5s`, `10m`, `1h`, or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, BadValue> {
    let s = s.trim();
    let bad = || BadValue::new("a duration", s, "use e.g. 250ms, 2s, 10m, 1h");
    // (suffix, seconds = number * mul / div); "ms" before "s" and "m".
    for (suffix, mul, div) in [("ms", 1.0, 1000.0), ("s", 1.0, 1.0), ("m", 60.0, 1.0), ("h", 3600.0, 1.0)] {
        if let Some(v) = s.strip_suffix(suffix) {
            let v: f64 = v.trim().parse().map_err(|_| bad())?;
            return Duration::try_from_secs_f64(v * mul / div).map_err(|_| bad());
        }
    }
    let v: u64 = s.parse().map_err(|_| bad())?;
    Ok(Duration::from_millis(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("10k"), Ok(10 * 1024));
        assert_eq!(parse_size("50M"), Ok(50 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("x").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
        assert!(parse_size("18446744073709551615G").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("40"), Ok(Duration::from_millis(40)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0.5m"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn congestion_names() {
        assert_eq!("CUBIC".parse::<Congestion>(), Ok(Congestion::Cubic));
        assert_eq!("bbr".parse::<Congestion>(), Ok(Congestion::Bbr));
        assert!("vegas".parse::<Congestion>().is_err());
    }
}
