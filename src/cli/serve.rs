//! `quiclab serve`: the test site over HTTP/3 and HTTP/2 + HTTP/1.1, and the MQTT broker beside it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use quiclab::config::{self, parse_duration, parse_size, ServerConfig};
use quiclab::server::Server;

use super::mqtt::MqttServeArgs;
use super::signal::Signals;
use super::{CertArgs, CliError, TransportArgs};

/// `quiclab serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address for both listeners: UDP (HTTP/3) and TCP (HTTP/2, HTTP/1.1). `[::]` is
    /// dual-stack, so clients reach it over 127.0.0.1 and ::1 alike.
    #[arg(long, value_name = "ADDR", default_value_t = config::default_listen())]
    pub(crate) listen: SocketAddr,
    #[command(flatten)]
    pub(crate) certs: CertArgs,
    /// Serve static files from DIR (with ETag, Last-Modified, ranges); the built-in pages
    /// answer where DIR has no file.
    #[arg(long, value_name = "DIR")]
    pub(crate) root: Option<PathBuf>,
    /// Write one qlog file per QUIC connection into DIR (open them in qvis).
    #[arg(long, value_name = "DIR")]
    pub(crate) qlog_dir: Option<PathBuf>,
    /// Advertise ADDR as the server's preferred address (RFC 9000 §9.6); it must reach the same
    /// UDP socket (e.g. --listen [::]:4433 --preferred-address 127.0.0.2:4433). Up to one IPv4
    /// and one IPv6 address. quinn's own client does not migrate to it; ngtcp2's does.
    #[arg(long, value_name = "ADDR")]
    pub(crate) preferred_address: Vec<SocketAddr>,
    /// TCP congestion control for the TLS/TCP listener (TCP_CONGESTION, e.g. cubic or reno; needs
    /// root or the lab's namespace for algorithms not in net.ipv4.tcp_allowed_congestion_control).
    #[arg(long, value_name = "NAME")]
    pub(crate) tcp_congestion: Option<String>,
    /// Also serve MQTT over QUIC (ALPN mqtt) on a dedicated UDP listener, e.g. [::]:14567, with
    /// transport parameters of its own (idle timeout 300 s, keep-alive PINGs every 60 s, 50
    /// concurrent streams per connection: the control stream and 49 topics). MQTT
    /// over QUIC is always served on the shared --listen port too, where it inherits HTTP/3's
    /// transport parameters (30 s idle timeout: clients must ping sooner).
    #[arg(long, value_name = "ADDR")]
    pub(crate) mqtt_quic: Option<SocketAddr>,
    /// Also serve MQTT over plaintext WebSocket (ws://HOST:PORT/mqtt, subprotocol mqtt; and the
    /// /ws echo) on this TCP address, e.g. [::]:8083 as EMQX does: HTTP/1.1, WebSocket
    /// endpoints only. wss://…/mqtt is always served on the HTTPS port.
    #[arg(long, value_name = "ADDR")]
    pub(crate) mqtt_ws: Option<SocketAddr>,
    /// Send a stateless Retry to every new QUIC client (address validation; costs one RTT).
    #[arg(long)]
    pub(crate) retry: bool,
    /// Most concurrent connections per listener (QUIC, TLS/TCP); more are refused.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub(crate) max_connections: usize,
    /// How long a graceful shutdown (SIGINT/SIGTERM) may take before connections are closed.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    pub(crate) shutdown_grace: Duration,
    /// Largest WebSocket message on /ws and /mqtt (k, M suffixes); larger ones close with 1009.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1M")]
    pub(crate) ws_max_message: u64,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
    #[command(flatten)]
    pub(crate) transport: TransportArgs,
    #[command(flatten)]
    pub(crate) mqtt: MqttServeArgs,
}

/// Limits on what a client may ask for.
#[derive(Debug, Args)]
pub(crate) struct LimitArgs {
    /// Largest /bytes/N (k, M, G suffixes); larger requests get 400.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1G")]
    pub(crate) max_bytes: u64,
    /// Largest request body read; larger bodies get 413.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16M")]
    pub(crate) max_body: u64,
    /// Longest /delay/N (seconds), /delay-ms/MS and /drip duration or delay; longer gets 400.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    pub(crate) max_delay: Duration,
    /// Largest request header section (HTTP/3 SETTINGS_MAX_FIELD_SECTION_SIZE, HTTP/2 max header list size).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64k")]
    pub(crate) max_header_bytes: u64,
    /// Most ranges in one Range header; more get 416.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub(crate) max_ranges: usize,
    /// Time a client has to complete its TLS or QUIC handshake.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub(crate) handshake_timeout: Duration,
    /// A host /redirect-to?url= may redirect to besides the request's own origin (repeat the
    /// flag for more). None by default: only relative and same-origin URLs are followed.
    #[arg(long, value_name = "HOST")]
    pub(crate) redirect_allow: Vec<String>,
}

/// The server configuration `quiclab serve` runs with for these arguments (reads the MQTT
/// password and ACL files it names).
pub(crate) fn serve_config(args: &ServeArgs) -> Result<ServerConfig, CliError> {
    let mut cfg = ServerConfig::new();
    cfg.quic_listen = args.listen;
    cfg.tcp_listen = args.listen;
    cfg.certs_dir = args.certs.certs.clone();
    cfg.cert = args.certs.cert.clone();
    cfg.key = args.certs.key.clone();
    cfg.limits = config::Limits {
        max_bytes: args.limits.max_bytes,
        max_body: args.limits.max_body,
        max_delay: args.limits.max_delay,
        max_header_bytes: args.limits.max_header_bytes.min(u32::MAX as u64) as u32,
        max_ranges: args.limits.max_ranges,
        handshake_timeout: args.limits.handshake_timeout,
        redirect_hosts: args.limits.redirect_allow.iter().map(|h| h.to_ascii_lowercase()).collect(),
    };
    cfg.transport = args.transport.to_config();
    cfg.root = args.root.clone();
    cfg.qlog_dir = args.qlog_dir.clone();
    cfg.retry = args.retry;
    cfg.mqtt_quic_listen = args.mqtt_quic;
    cfg.mqtt_ws_listen = args.mqtt_ws;
    cfg.tcp_congestion = args.tcp_congestion.clone();
    cfg.preferred_addresses = args.preferred_address.clone();
    cfg.max_connections = args.max_connections;
    cfg.shutdown_grace = args.shutdown_grace;
    cfg.ws_max_message = usize::try_from(args.ws_max_message).unwrap_or(usize::MAX);
    cfg.mqtt = args.mqtt.to_config()?;
    Ok(cfg)
}

/// `quiclab serve`: start the server, print the banner, serve until SIGINT or SIGTERM, then
/// shut down gracefully.
pub(crate) async fn run(args: ServeArgs) -> Result<i32, CliError> {
    let mut signals = Signals::catch();
    // serve_config reads the MQTT password and ACL files: off the async threads.
    let cfg = tokio::task::spawn_blocking(move || serve_config(&args)).await.map_err(CliError::Blocking)??;
    let server = Server::start(cfg).await?;
    let c = server.certs();
    let port = server.quic_addr().port();
    let mut banner = format!("quiclab {} serving\n", env!("CARGO_PKG_VERSION"));
    let (q, t) = (server.quic_addr(), server.tcp_addr());
    banner += &format!("  HTTP/3           https://localhost:{port}/  (UDP {q})\n");
    banner += &format!("  HTTP/2, 1.1      https://localhost:{}/  (TCP {t})\n", t.port());
    banner += &match &c.ca_path {
        Some(ca) => {
            let created = if c.created { " (created)" } else { "" };
            format!("  CA               {0}{created}  (curl --cacert {0})\n", ca.display())
        }
        None => format!("  certificate      {}\n", c.cert_path.display()),
    };
    if let Some(a) = server.mqtt_tcp_addr() {
        banner += &format!("  MQTT             mqtt://localhost:{}  (MQTT/TCP {a})\n", a.port());
    }
    if let Some(a) = server.mqtt_tls_addr() {
        banner += &format!("  MQTT over TLS    mqtts://localhost:{}  (MQTT/TLS {a})\n", a.port());
    }
    if server.mqtt_broker().is_some() {
        banner += &format!("  MQTT over QUIC   mqtt+quic://localhost:{port}  (ALPN mqtt, shared with HTTP/3)\n");
    }
    if let Some(a) = server.mqtt_quic_addr() {
        banner += &format!("  MQTT over QUIC   mqtt+quic://localhost:{}  (dedicated listener {a})\n", a.port());
    }
    let plain_ws = server.mqtt_ws_addr();
    if server.mqtt_broker().is_some() {
        banner +=
            &format!("  MQTT over WS     wss://localhost:{}/mqtt  (subprotocol mqtt, on the HTTPS port)\n", t.port());
        if let Some(a) = plain_ws {
            banner += &format!("  MQTT over WS     ws://localhost:{}/mqtt  (plaintext listener {a})\n", a.port());
        }
    }
    banner += &format!("  WebSocket echo   wss://localhost:{}/ws\n", t.port());
    if let Some(a) = plain_ws {
        banner += &format!("  WebSocket echo   ws://localhost:{}/ws  (plaintext listener {a})\n", a.port());
    }
    banner += &format!("  SPKI sha256      {}\n", c.spki_sha256);
    banner += &format!("  runtime          {} worker threads (--threads)\n", super::worker_threads_now());
    banner += &format!("effective configuration:\n{}", server.config().summary());
    // A closed stdout (a reader that went away) must not stop the server: ignore write errors.
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
    drop(out);
    signals.recv().await;
    tracing::info!("shutting down (graceful, up to {:?})", server.config().shutdown_grace);
    server.shutdown().await;
    Ok(0)
}
