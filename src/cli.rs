//! The command line: clap types for every subcommand and the code that runs them.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};

use crate::client::{self, ClientError, ClientOptions, HttpVersion, Target};
use crate::config::{self, parse_duration, parse_size, Congestion, ServerConfig};
use crate::server::{Server, ServerError};
use crate::tls::{self, CertStore, TlsError, Trust};

/// quiclab: a QUIC / HTTP/3 experimentation server, with HTTP/2 over TLS/TCP beside it.
#[derive(Debug, Parser)]
#[command(name = "quiclab", version, about, long_about = None, propagate_version = true)]
#[command(after_help = "Logging: set RUST_LOG (e.g. RUST_LOG=debug or RUST_LOG=quiclab=trace); default is info.\n\
                        SSLKEYLOGFILE=FILE writes TLS secrets of every QUIC and TLS/TCP connection for Wireshark/tshark.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Serve the test site over HTTP/3 (UDP) and HTTP/2 + HTTP/1.1 over TLS (TCP).
    Serve(ServeArgs),
    /// Fetch a URL over HTTP/3 (default) or HTTP/2, and time it.
    Get(GetArgs),
    /// Create (if missing) and show the development certificates, with ready-to-paste client
    /// command lines; `--client NAME` issues a client certificate for MQTT.
    Certs(CertsArgs),
    /// MQTT: publish, subscribe, benchmark against mosquitto, or run the broker alone.
    #[command(subcommand)]
    Mqtt(crate::mqtt::MqttCommand),
    /// Experiments over an emulated lossy, delayed link (network namespaces joined by quiclab's
    /// relay): link, hol, handshake, migrate, flow.
    #[command(subcommand)]
    Lab(crate::lab::LabCommand),
}

/// Where certificates come from (shared by `serve` and `certs`).
#[derive(Debug, Args)]
pub struct CertArgs {
    /// Directory of the development certificates (created on first start: ca.pem, cert.pem,
    /// key.pem, ca-key.pem).
    #[arg(long, value_name = "DIR", default_value = "certs")]
    pub certs: PathBuf,
    /// Serve this PEM certificate chain instead of the development leaf (needs --key).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) for --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// `quiclab serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address for both listeners: UDP (HTTP/3) and TCP (HTTP/2, HTTP/1.1). `[::]` is
    /// dual-stack, so clients reach it over 127.0.0.1 and ::1 alike.
    #[arg(long, value_name = "ADDR", default_value_t = config::default_listen())]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub certs: CertArgs,
    /// Serve static files from DIR (with ETag, Last-Modified, ranges); the built-in pages
    /// answer where DIR has no file.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Write one qlog file per QUIC connection into DIR (open them in qvis).
    #[arg(long, value_name = "DIR")]
    pub qlog_dir: Option<PathBuf>,
    /// Advertise ADDR as the server's preferred address (RFC 9000 §9.6); it must reach the same
    /// UDP socket (e.g. --listen [::]:4433 --preferred-address 127.0.0.2:4433). Up to one IPv4
    /// and one IPv6 address. quinn's own client does not migrate to it; ngtcp2's does.
    #[arg(long, value_name = "ADDR")]
    pub preferred_address: Vec<SocketAddr>,
    /// TCP congestion control for the TLS/TCP listener (TCP_CONGESTION, e.g. cubic or reno; needs
    /// root or the lab's namespace for algorithms not in net.ipv4.tcp_allowed_congestion_control).
    #[arg(long, value_name = "NAME")]
    pub tcp_congestion: Option<String>,
    /// Also serve MQTT over QUIC (ALPN mqtt) on a dedicated UDP listener, e.g. [::]:14567, with
    /// transport parameters of its own (idle timeout 300 s, keep-alive PINGs every 60 s, 50
    /// concurrent streams per connection: the control stream and 49 topics). MQTT
    /// over QUIC is always served on the shared --listen port too, where it inherits HTTP/3's
    /// transport parameters (30 s idle timeout: clients must ping sooner).
    #[arg(long, value_name = "ADDR")]
    pub mqtt_quic: Option<SocketAddr>,
    /// Send a stateless Retry to every new QUIC client (address validation; costs one RTT).
    #[arg(long)]
    pub retry: bool,
    /// Most concurrent connections per listener (QUIC, TLS/TCP); more are refused.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_connections: usize,
    /// How long a graceful shutdown (SIGINT/SIGTERM) may take before connections are closed.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub transport: TransportArgs,
    #[command(flatten)]
    pub mqtt: crate::mqtt::cli::MqttServeArgs,
}

/// Limits on what a client may ask for.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Largest /bytes/N (k, M, G suffixes); larger requests get 400.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1G")]
    pub max_bytes: u64,
    /// Largest request body read; larger bodies get 413.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16M")]
    pub max_body: u64,
    /// Largest /delay/MS; longer delays get 400.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    pub max_delay: Duration,
    /// Largest request header section (HTTP/3 SETTINGS_MAX_FIELD_SECTION_SIZE, HTTP/2 max header list size).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64k")]
    pub max_header_bytes: u64,
    /// Most ranges in one Range header; more get 416.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_ranges: usize,
    /// Time a client has to complete its TLS or QUIC handshake.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub handshake_timeout: Duration,
}

/// QUIC transport parameters (HTTP/2 windows and stream limit follow them for a fair comparison).
#[derive(Debug, Args)]
pub struct TransportArgs {
    /// Congestion controller for QUIC: cubic, newreno or bbr.
    #[arg(long, value_name = "CC", default_value = "cubic")]
    pub congestion: Congestion,
    /// Per-stream receive window (also HTTP/2's initial stream window).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1250000")]
    pub stream_window: u64,
    /// Connection receive window (also HTTP/2's connection window).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16M")]
    pub conn_window: u64,
    /// Concurrent bidirectional streams a client may open (also HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_streams: u32,
    /// Concurrent unidirectional streams a peer may open (HTTP/3 needs 3).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub max_uni_streams: u32,
    /// QUIC idle timeout.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub idle_timeout: Duration,
    /// RTT assumed before the first measurement (RFC 9002 §6.2.2).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "333ms")]
    pub initial_rtt: Duration,
}

impl TransportArgs {
    fn to_config(&self) -> config::TransportConfig {
        config::TransportConfig {
            congestion: self.congestion,
            stream_window: self.stream_window,
            conn_window: self.conn_window,
            max_streams: self.max_streams,
            max_uni_streams: self.max_uni_streams,
            keep_alive: None,
            idle_timeout: self.idle_timeout,
            initial_rtt: self.initial_rtt,
        }
    }
}

/// `quiclab get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The https:// URL to fetch.
    pub url: String,
    /// Use HTTP/2 over TLS/TCP (the baseline) instead of HTTP/3.
    #[arg(long)]
    pub http2: bool,
    /// Write the body to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print the response status line and headers before the body.
    #[arg(short = 'i', long)]
    pub include: bool,
    /// Print a timing line to standard error: handshake, time to first byte, total (all from the
    /// start of the connection attempt), bytes, negotiated protocol.
    #[arg(short, long)]
    pub verbose: bool,
    /// Trust the CA certificate(s) in FILE (default: certs/ca.pem if it exists, plus the
    /// Mozilla roots).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub cacert: Option<PathBuf>,
    /// Do not verify the server's certificate chain or name.
    #[arg(short = 'k', long)]
    pub insecure: bool,
    /// Request method.
    #[arg(short = 'X', long, value_name = "METHOD", default_value = "GET")]
    pub method: http::Method,
    /// TCP congestion control for --http2 (TCP_CONGESTION, e.g. cubic or reno); default: the kernel's.
    #[arg(long, value_name = "NAME")]
    pub tcp_congestion: Option<String>,
    /// Connect to ADDR (IP:PORT) instead of resolving the URL's host, which still names the
    /// server for SNI and certificate checks (e.g. --connect-to $QUICLAB_SERVER:4433 in the lab).
    #[arg(long, value_name = "ADDR")]
    pub connect_to: Option<std::net::SocketAddr>,
    /// Give up if no connection is established within this time.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,
    /// Make N connections one after another in this process, one request each; later ones
    /// resume the TLS session of the one before (rustls keeps tickets in memory only).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub repeat: u32,
    /// Send the request in 0-RTT early data when a session can be resumed (HTTP/3; use with
    /// --repeat). Prints per connection `0-RTT: accepted`, `rejected` or `not attempted`.
    #[arg(long = "0rtt")]
    pub zero_rtt: bool,
    /// Move to a new local UDP socket during the download (connection migration): after N
    /// body bytes (`64k`, `5M`) or after a time (`200ms`, `1s`). HTTP/3 only.
    #[arg(long, value_name = "N|TIME")]
    pub rebind_after: Option<client::RebindAfter>,
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Request body (e.g. for /echo); `@FILE` reads it from a file.
    #[arg(short = 'd', long, value_name = "DATA")]
    pub data: Option<String>,
}

/// `quiclab certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(flatten)]
    pub certs: CertArgs,
    /// Port the command lines should use.
    #[arg(long, default_value_t = config::DEFAULT_PORT)]
    pub port: u16,
    /// Issue a client certificate for NAME (subject CN=NAME, extended key usage clientAuth),
    /// signed by the development CA (ca.pem, ca-key.pem in --certs; created if missing), into
    /// client-NAME.pem and client-NAME-key.pem (mode 0600); existing files for NAME are kept.
    /// For brokers run with --mqtt-require-certificate; NAME is 1 to 64 of A-Z a-z 0-9 . _ @ -.
    #[arg(long, value_name = "NAME")]
    pub client: Option<String>,
}

/// What can make a command fail.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lab(#[from] crate::lab::LabError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Mqtt(#[from] crate::mqtt::MqttError),
}

/// Run a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32, CommandError> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Get(args) => get(args).await,
        Command::Certs(args) => certs(args),
        Command::Mqtt(cmd) => Ok(crate::mqtt::run(cmd).await?),
        Command::Lab(cmd) => Ok(crate::lab::run(cmd).await?),
    }
}

/// The server configuration `quiclab serve` runs with for these arguments (reads the MQTT
/// password and ACL files it names).
pub fn serve_config(args: &ServeArgs) -> Result<ServerConfig, CommandError> {
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
    };
    cfg.transport = args.transport.to_config();
    cfg.root = args.root.clone();
    cfg.qlog_dir = args.qlog_dir.clone();
    cfg.retry = args.retry;
    cfg.mqtt_quic_listen = args.mqtt_quic;
    cfg.tcp_congestion = args.tcp_congestion.clone();
    cfg.preferred_addresses = args.preferred_address.clone();
    cfg.max_connections = args.max_connections;
    cfg.shutdown_grace = args.shutdown_grace;
    cfg.mqtt = args.mqtt.to_config()?;
    Ok(cfg)
}

async fn serve(args: ServeArgs) -> Result<i32, CommandError> {
    let server = Server::start(serve_config(&args)?).await?;
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
    banner += &format!("  SPKI sha256      {}\n", c.spki_sha256);
    banner += &format!("effective configuration:\n{}", server.config().summary());
    // A closed stdout (a reader that went away) must not stop the server: ignore write errors.
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
    drop(out);
    wait_for_signal().await;
    tracing::info!("shutting down (graceful, up to {:?})", server.config().shutdown_grace);
    server.shutdown().await;
    Ok(0)
}

/// Wait for SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let sigterm = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm => {}
    }
}

async fn get(args: GetArgs) -> Result<i32, CommandError> {
    let trust = if args.insecure {
        Trust::Insecure
    } else if let Some(ca) = &args.cacert {
        Trust::CaFile(ca.clone())
    } else if std::path::Path::new("certs/ca.pem").exists() {
        Trust::CaFile(PathBuf::from("certs/ca.pem"))
    } else {
        Trust::WebPki
    };
    let version = if args.http2 { HttpVersion::H2 } else { HttpVersion::H3 };
    if args.http2 && (args.zero_rtt || args.rebind_after.is_some()) {
        return Err(ClientError::NeedsHttp3 { what: "--0rtt or --rebind-after (drop --http2)" }.into());
    }
    let opts = ClientOptions {
        trust,
        connect_timeout: args.connect_timeout,
        transport: args.transport.to_config(),
        tcp_congestion: args.tcp_congestion.clone(),
    };
    let mut target = Target::parse(&args.url)?;
    if let Some(addr) = args.connect_to {
        target = target.with_addr(addr);
    }
    let body = match &args.data {
        None => Bytes::new(),
        Some(d) => match d.strip_prefix('@') {
            Some(path) => {
                std::fs::read(path).map_err(|source| CommandError::File { path: path.into(), source })?.into()
            }
            None => Bytes::from(d.clone()),
        },
    };
    let client = client::Client::new(version, &opts)?;
    let fetch_opts = client::FetchOptions { zero_rtt: args.zero_rtt, rebind_after: args.rebind_after };
    let mut last = None;
    for i in 1..=args.repeat.max(1) {
        let req = client::request(&target, args.method.clone(), body.clone())?;
        let fetched = client::fetch_with(&client, &target, req, &fetch_opts).await?;
        // A body shorter than its Content-Length was cut off (RFC 9110 §8.6).
        if let Some(len) = fetched.response.headers().get(http::header::CONTENT_LENGTH) {
            let want: Option<u64> = len.to_str().ok().and_then(|v| v.parse().ok());
            if fetched.response.status() != http::StatusCode::NOT_MODIFIED
                && args.method != http::Method::HEAD
                && want.is_some_and(|w| w != fetched.body.len() as u64)
            {
                return Err(CommandError::Client(ClientError::BodyIncomplete {
                    got: fetched.body.len() as u64,
                    want: want.unwrap_or(0),
                }));
            }
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        if let Some(z) = fetched.zero_rtt {
            let early = fetched.response.headers().contains_key(crate::web::EARLY_DATA_HEADER);
            eprintln!(
                "connection {i}: 0-RTT: {z}  ttfb={:.2}ms  status={}{}",
                ms(fetched.timings.ttfb),
                fetched.response.status().as_u16(),
                if early { "  (server: arrived in early data)" } else { "" }
            );
        } else if args.repeat > 1 {
            eprintln!(
                "connection {i}: ttfb={:.2}ms  status={}",
                ms(fetched.timings.ttfb),
                fetched.response.status().as_u16()
            );
        }
        if fetched.rebound {
            eprintln!(
                "connection {i}: moved to a new local socket during the download; body complete ({} bytes)",
                fetched.body.len()
            );
        }
        if args.verbose {
            eprintln!("{}", fetched.timing_line());
        }
        last = Some(fetched);
    }
    let Some(fetched) = last else { return Ok(0) };
    let mut out = std::io::stdout().lock();
    if args.include {
        let r = &fetched.response;
        writeln!(out, "{} {}", fetched.protocol, r.status())?;
        for (k, v) in r.headers() {
            writeln!(out, "{}: {}", k, String::from_utf8_lossy(v.as_bytes()))?;
        }
        writeln!(out)?;
    }
    match &args.output {
        Some(path) => {
            std::fs::write(path, &fetched.body).map_err(|source| CommandError::File { path: path.clone(), source })?
        }
        None => out.write_all(&fetched.body)?,
    }
    out.flush()?;
    Ok(0)
}

/// `quiclab certs --client NAME`.
fn client_cert(dir: &std::path::Path, name: &str) -> Result<i32, CommandError> {
    let f = tls::issue_client_cert(dir, name)?;
    if f.created_ca {
        println!("created development certificates in {}", dir.display());
    }
    let state = if f.created { "created" } else { "exists, kept" };
    println!("client certificate:  {}  (CN={name}, {state})", f.cert.display());
    println!("client key:          {}  (mode 0600)", f.key.display());
    println!("signed by:           {}", f.ca.display());
    let (ca, cert, key) = (f.ca.display(), f.cert.display(), f.key.display());
    let tls_port = crate::mqtt::config::DEFAULT_TLS_PORT;
    println!();
    println!("mosquitto_pub over TLS (broker: quiclab serve --mqtt-require-certificate):");
    println!("  mosquitto_pub -h localhost -p {tls_port} --cafile {ca} --cert {cert} --key {key} -t test -m hello");
    println!("quiclab over MQTT/QUIC:");
    println!(
        "  quiclab mqtt pub --url mqtt+quic://localhost:{} --cacert {ca} --cert {cert} --key {key} -t test -m hello",
        config::DEFAULT_PORT
    );
    Ok(0)
}

fn certs(args: CertsArgs) -> Result<i32, CommandError> {
    if let Some(name) = &args.client {
        return client_cert(&args.certs.certs, name);
    }
    let store = match (&args.certs.cert, &args.certs.key) {
        (Some(c), Some(k)) => CertStore::load(c, k)?,
        _ => CertStore::load_or_create(&args.certs.certs)?,
    };
    let spki = store.spki_sha256()?;
    let port = args.port;
    if store.created {
        println!("created development certificates in {}", args.certs.certs.display());
    }
    if let Some(ca) = &store.ca_path {
        println!("CA certificate:    {}", ca.display());
    }
    println!("leaf certificate:  {}", store.cert_path.display());
    println!("leaf SPKI sha256:  {spki}");
    let ca = store.ca_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "CA.pem".into());
    println!();
    println!("curl (a build with HTTP/3), trusting the local CA:");
    println!("  curl --http3-only --cacert {ca} https://localhost:{port}/");
    println!("curl, pinning the key instead of trusting the CA:");
    println!("  curl --http3-only -k --pinnedpubkey 'sha256//{spki}' https://localhost:{port}/");
    println!("curl over HTTP/2 (any curl):");
    println!("  curl --http2 --cacert {ca} https://localhost:{port}/");
    println!("Chromium over HTTP/3 (QUIC forced for the origin, the key pinned):");
    println!(
        "  chromium --enable-quic --origin-to-force-quic-on=localhost:{port} \
         --ignore-certificate-errors-spki-list={spki} https://localhost:{port}/"
    );
    Ok(0)
}
