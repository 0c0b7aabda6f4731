//! A running quiclab server: the QUIC endpoint and the TLS/TCP listener, started together from
//! one [`ServerConfig`], stopped together with a bounded graceful shutdown.
//!
//! This is where transports meet applications: the endpoint ([`crate::quic`]) and the TLS/TCP
//! listener (`tcp`) know no application protocol; [`Server::start`] registers HTTP/3
//! (`web::h3`) and MQTT over QUIC ([`crate::mqtt::quic`]) by ALPN on the endpoint,
//! and HTTP/2 / HTTP/1.1 (`web::h2`) on the TLS/TCP listener. MQTT over TCP and TLS
//! runs on listeners of its own ([`crate::mqtt::tcp`]); [`MqttQuicListener`] is a QUIC
//! endpoint serving MQTT only.
//!
//! `quiclab serve`, the tests, the examples and the lab all start servers through
//! [`Server::start`], so they run the very same code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::HeaderValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Congestion, ServerConfig};
use crate::conn::{ConnInfo, HandshakeDone, Protocol};
use crate::quic::{QuicError, QuicService, QuicServices};
use crate::tcp::{TcpService, TlsConn};
use crate::tls::{self, CertStore, TlsError};
use crate::web::h2::H2Options;
use crate::web::Site;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The certificates could not be loaded or created, or a TLS configuration not built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A listening socket could not be bound (or its address not read back).
    #[error("cannot listen on {proto} {addr}")]
    Bind {
        /// What the socket was for (`UDP`, `TCP`, `MQTT/QUIC`, ...).
        proto: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// The MQTT broker could not start (its store could not be opened).
    #[error(transparent)]
    Mqtt(crate::mqtt::tcp::StartError),
    /// The static-file root (`--root`) cannot be used.
    #[error("cannot serve files from --root {path}")]
    Root {
        /// The root asked for.
        path: PathBuf,
        /// Why it cannot be resolved.
        #[source]
        source: std::io::Error,
    },
    /// The qlog directory (`--qlog-dir`) cannot be created.
    #[error("cannot create --qlog-dir {path}")]
    QlogDir {
        /// The directory asked for.
        path: PathBuf,
        /// Why it cannot be created.
        #[source]
        source: std::io::Error,
    },
    /// The TCP congestion controller asked for cannot be set on the listener.
    #[error("cannot set the TCP congestion control")]
    TcpCongestion(#[source] std::io::Error),
    /// The runtime shut down while the server was reading its files.
    #[error("the async runtime shut down during start-up")]
    RuntimeShutdown,
    /// The transport configuration does not fit QUIC.
    #[error("invalid transport configuration")]
    Transport(#[from] QuicError),
}

impl ServerError {
    /// `map_err` for a failed bind (or address read-back) of a `proto` socket on `addr`.
    fn bind(proto: &'static str, addr: SocketAddr) -> impl Fn(std::io::Error) -> ServerError + Copy {
        move |source| ServerError::Bind { proto, addr, source }
    }
}

/// What the server presents, for the startup banner and `quiclab certs`.
#[derive(Debug, Clone)]
pub struct CertSummary {
    /// The local CA file, when the development certificates are in use.
    pub ca_path: Option<std::path::PathBuf>,
    /// The leaf certificate file.
    pub cert_path: std::path::PathBuf,
    /// Base64 SHA-256 of the leaf's SubjectPublicKeyInfo.
    pub spki_sha256: String,
    /// Whether this start created the development certificates.
    pub created: bool,
}

/// A QUIC listener that serves MQTT only (ALPN `mqtt`), with transport parameters of its own
/// (docs/mqtt-over-quic.md §1.2, §4.2): `serve --mqtt-quic` and `mqtt broker --quic`.
pub struct MqttQuicListener {
    /// The UDP address to bind.
    pub addr: SocketAddr,
    /// Its own transport parameters ([`ServerConfig::mqtt_quic_transport`]).
    pub transport: config::TransportConfig,
    /// Connections served at once; more are refused.
    pub max_connections: usize,
    /// How long a handshake may take.
    pub handshake_timeout: std::time::Duration,
    /// Stateless Retry for every new client.
    pub retry: bool,
    /// The CA of client certificates ([`crate::mqtt::MqttConfig::client_ca_file`]): asked for,
    /// and required in the handshake when the broker's `require_certificate` is set (this
    /// listener serves MQTT only, so it can insist as TLS does).
    pub client_ca: Option<tls::ClientCa>,
}

impl MqttQuicListener {
    /// Bind and serve `broker` until `shutdown`; returns the bound address.
    pub fn start(
        &self,
        store: &CertStore,
        broker: crate::mqtt::Broker,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<SocketAddr, ServerError> {
        let addr = self.addr;
        let bind_err = ServerError::bind("MQTT/QUIC", addr);
        let clients = crate::mqtt::client_auth(broker.config(), self.client_ca.as_ref());
        let qtls = tls::quic_server_config_with(store, &[crate::mqtt::config::ALPN_MQTT], clients)?;
        let mut sc = quinn::ServerConfig::with_crypto(Arc::new(qtls));
        sc.transport_config(Arc::new(crate::quic::transport_config(&self.transport)?));
        let udp = crate::quic::bind_udp(addr).map_err(bind_err)?;
        let ep = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(sc), udp, Arc::new(quinn::TokioRuntime))
            .map_err(bind_err)?;
        let local = ep.local_addr().map_err(bind_err)?;
        let mqtt: Arc<dyn QuicService> = Arc::new(MqttOverQuic { broker });
        let ctx = Arc::new(crate::quic::QuicContext {
            services: vec![(crate::mqtt::config::ALPN_MQTT, mqtt)],
            local,
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            permits: Arc::new(tokio::sync::Semaphore::new(self.max_connections)),
            retry: self.retry,
            qlog: None,
            handshake_timeout: self.handshake_timeout,
        });
        tracker.spawn(crate::quic::accept_loop(ep, ctx));
        Ok(local)
    }
}

/// Backlog of the HTTP/2 and HTTP/1.1 listener.
const HTTP_BACKLOG: i32 = 1024;

/// Bind the UDP socket and the TCP listener. When both ask for the same address with port 0,
/// find one ephemeral port free for both, so `Alt-Svc` and the banner name a single port.
fn bind_pair(quic: SocketAddr, tcp: SocketAddr) -> Result<(std::net::UdpSocket, tokio::net::TcpListener), ServerError> {
    let bind_err = ServerError::bind;
    let same_ephemeral = quic == tcp && quic.port() == 0;
    let attempts = if same_ephemeral { 50 } else { 1 };
    let mut last_err = None;
    for _ in 0..attempts {
        let udp = crate::quic::bind_udp(quic).map_err(bind_err("UDP", quic))?;
        let mut tcp_addr = tcp;
        if same_ephemeral {
            tcp_addr.set_port(udp.local_addr().map_err(bind_err("UDP", quic))?.port());
        }
        match crate::tcp::bind_tcp(tcp_addr, HTTP_BACKLOG) {
            Ok(listener) => return Ok((udp, listener)),
            Err(e) => last_err = Some(bind_err("TCP", tcp_addr)(e)),
        }
    }
    Err(last_err.unwrap_or_else(|| bind_err("TCP", tcp)(std::io::ErrorKind::AddrInUse.into())))
}

/// What [`Server::start`] reads from files before it binds anything.
struct StartupFiles {
    store: CertStore,
    client_ca: Option<tls::ClientCa>,
    site: Arc<Site>,
}

/// Load or create the certificates, load the MQTT client CA, resolve the static-file root and
/// create the qlog directory (blocking file work).
fn load_files(cfg: &ServerConfig) -> Result<StartupFiles, ServerError> {
    let store = match (&cfg.cert, &cfg.key) {
        (Some(c), Some(k)) => CertStore::load(c, k)?,
        _ => CertStore::load_or_create(&cfg.certs_dir)?,
    };
    // MQTT client certificates: the CA is loaded once for every listener that asks.
    let client_ca = match cfg.mqtt.client_ca_file(&cfg.certs_dir) {
        Some(path) if cfg.mqtt.enabled => Some(tls::ClientCa::load(&path)?),
        _ => None,
    };
    let site = Site::new(cfg.limits.clone(), cfg.root.as_deref())
        .map_err(|source| ServerError::Root { path: cfg.root.clone().unwrap_or_default(), source })?;
    if let Some(dir) = &cfg.qlog_dir {
        std::fs::create_dir_all(dir).map_err(|source| ServerError::QlogDir { path: dir.clone(), source })?;
    }
    Ok(StartupFiles { store, client_ca, site })
}

/// HTTP/3 on the QUIC endpoint (ALPN `h3`).
struct Http3 {
    site: Arc<Site>,
    /// The endpoint's congestion controller, for `/conn`.
    congestion: Congestion,
    shutdown: CancellationToken,
}

impl QuicService for Http3 {
    fn serve(
        &self,
        conn: quinn::Connection,
        local: SocketAddr,
        handshake_done: HandshakeDone,
    ) -> BoxFuture<'static, ()> {
        tracing::debug!(remote = %conn.remote_address(), "HTTP/3 connection");
        let alpn = Some(String::from_utf8_lossy(config::ALPN_H3).into_owned());
        let info = ConnInfo::quic(conn.clone(), local, alpn, Protocol::H3).with_congestion(self.congestion.to_string());
        Box::pin(crate::web::h3::serve_connection(
            self.site.clone(),
            Arc::new(info),
            conn,
            handshake_done,
            self.shutdown.clone(),
        ))
    }
}

/// MQTT over QUIC (ALPN `mqtt`).
struct MqttOverQuic {
    broker: crate::mqtt::Broker,
}

impl QuicService for MqttOverQuic {
    fn serve(
        &self,
        conn: quinn::Connection,
        local: SocketAddr,
        handshake_done: HandshakeDone,
    ) -> BoxFuture<'static, ()> {
        tracing::debug!(remote = %conn.remote_address(), "MQTT over QUIC connection");
        // Early data is read at once; the broker core decides which early packets are safe to
        // act on before the handshake completes (docs/mqtt-over-quic.md §6.7) and holds the rest.
        let alpn = Some(String::from_utf8_lossy(crate::mqtt::config::ALPN_MQTT).into_owned());
        let info = ConnInfo::quic(conn.clone(), local, alpn, Protocol::Mqtt);
        Box::pin(crate::mqtt::quic::serve_connection(conn, self.broker.clone(), Arc::new(info), handshake_done))
    }
}

/// HTTP/2 (ALPN `h2`), else HTTP/1.1, on the TLS/TCP listener.
struct HttpOverTcp {
    site: Arc<Site>,
    opts: Arc<H2Options>,
    shutdown: CancellationToken,
}

impl TcpService for HttpOverTcp {
    fn serve(&self, conn: TlsConn) -> impl std::future::Future<Output = ()> + Send + 'static {
        let protocol = match conn.alpn.as_deref() {
            Some(config::ALPN_H2) => Protocol::H2,
            _ => Protocol::Http11,
        };
        let alpn = conn.alpn.map(|a| String::from_utf8_lossy(&a).into_owned());
        let info = Arc::new(
            ConnInfo::tcp(conn.fd, conn.local, conn.remote, alpn, protocol, conn.resumed)
                .with_established(conn.established),
        );
        let (site, opts, shutdown) = (self.site.clone(), self.opts.clone(), self.shutdown.clone());
        crate::web::h2::serve_connection(site, info, conn.stream, opts, shutdown)
    }
}

/// A running server.
pub struct Server {
    quic_addr: SocketAddr,
    tcp_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    config: ServerConfig,
    certs: CertSummary,
    mqtt: Option<crate::mqtt::tcp::MqttListeners>,
    mqtt_quic_addr: Option<SocketAddr>,
    mqtt_ws_addr: Option<SocketAddr>,
}

impl Server {
    /// Load or create certificates, bind both listeners and start serving.
    pub async fn start(cfg: ServerConfig) -> Result<Server, ServerError> {
        // Certificates, the client CA, the static-file root and the qlog directory are file
        // work: done on a blocking thread.
        let files = {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || load_files(&cfg))
        };
        let StartupFiles { store, client_ca, site } = match files.await {
            Ok(r) => r?,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => return Err(ServerError::RuntimeShutdown),
            },
        };
        let certs = CertSummary {
            ca_path: store.ca_path.clone(),
            cert_path: store.cert_path.clone(),
            spki_sha256: store.spki_sha256()?,
            created: store.created,
        };
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();

        // QUIC
        // One endpoint, two ALPNs: HTTP/3, and MQTT over QUIC unless MQTT is off.
        let alpns: &[&[u8]] =
            if cfg.mqtt.enabled { &[config::ALPN_H3, crate::mqtt::config::ALPN_MQTT] } else { &[config::ALPN_H3] };
        // One TLS configuration for HTTP/3 and MQTT, chosen before the ALPN is known: with a
        // client CA, certificates are asked for but optional, so HTTP/3 clients get in without
        // one; MQTT over QUIC enforces `require_certificate` itself (mqtt::quic).
        let quic_clients = client_ca.as_ref().map_or(tls::ClientAuth::Off, tls::ClientAuth::Optional);
        let quic_tls = tls::quic_server_config_with(&store, alpns, quic_clients)?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic_tls));
        server_config.transport_config(Arc::new(crate::quic::transport_config(&cfg.transport)?));
        let bind_err = ServerError::bind;
        for addr in &cfg.preferred_addresses {
            match addr {
                SocketAddr::V4(a) => server_config.preferred_address_v4(Some(*a)),
                SocketAddr::V6(a) => server_config.preferred_address_v6(Some(*a)),
            };
        }
        let server_config_copy = server_config.clone();
        let (udp, listener) = bind_pair(cfg.quic_listen, cfg.tcp_listen)?;
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let mut socket = runtime.wrap_udp_socket(udp).map_err(bind_err("UDP", cfg.quic_listen))?;
        if !cfg.preferred_addresses.is_empty() {
            socket = Arc::new(crate::quic::FollowDestination::new(socket, &cfg.preferred_addresses));
        }
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            runtime,
        )
        .map_err(bind_err("UDP", cfg.quic_listen))?;
        let quic_addr = endpoint.local_addr().map_err(bind_err("UDP", cfg.quic_listen))?;

        // TLS/TCP
        let tcp_tls = tls::tcp_server_config(&store, &[config::ALPN_H2, config::ALPN_HTTP11])?;
        let tcp_addr = listener.local_addr().map_err(bind_err("TCP", cfg.tcp_listen))?;
        if let Some(cc) = &cfg.tcp_congestion {
            use std::os::fd::AsRawFd;
            crate::tcp::set_congestion(listener.as_raw_fd(), cc).map_err(ServerError::TcpCongestion)?;
        }
        let alt_svc = HeaderValue::from_str(&format!("h3=\":{}\"; ma=3600", quic_addr.port())).ok();

        let qlog = cfg.qlog_dir.as_ref().map(|dir| crate::quic::QlogSetup {
            dir: dir.clone(),
            server_config: server_config_copy,
            transport: cfg.transport.clone(),
            counter: Default::default(),
        });
        // MQTT over TCP and TLS: same certificate, its own listeners, same shutdown and tracker.
        let mqtt = if cfg.mqtt.enabled {
            let clients = crate::mqtt::client_auth(&cfg.mqtt, client_ca.as_ref());
            let mqtt_tls = tls::tcp_server_config_with(&store, &[crate::mqtt::config::ALPN_MQTT], clients)?;
            let started =
                crate::mqtt::tcp::start(&cfg.mqtt, Some(mqtt_tls), &shutdown, &tracker).map_err(|e| match e {
                    crate::mqtt::tcp::StartError::Bind(e) => {
                        ServerError::Bind { proto: e.proto, addr: e.addr, source: e.source }
                    }
                    other => ServerError::Mqtt(other),
                })?;
            Some(started)
        } else {
            None
        };
        // The endpoint's services, by ALPN.
        let h3: Arc<dyn QuicService> =
            Arc::new(Http3 { site: site.clone(), congestion: cfg.transport.congestion, shutdown: shutdown.clone() });
        let mut services: QuicServices = vec![(config::ALPN_H3, h3)];
        if let Some(m) = &mqtt {
            services.push((crate::mqtt::config::ALPN_MQTT, Arc::new(MqttOverQuic { broker: m.broker.clone() })));
        }
        let quic_ctx = Arc::new(crate::quic::QuicContext {
            services,
            local: quic_addr,
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            permits: Arc::new(tokio::sync::Semaphore::new(cfg.max_connections)),
            retry: cfg.retry,
            qlog,
            handshake_timeout: cfg.limits.handshake_timeout,
        });
        // MQTT over QUIC on a dedicated listener, with transport parameters of its own
        // (docs/mqtt-over-quic.md §1.2, §4.2).
        let mut mqtt_quic_addr = None;
        if let (Some(addr), Some(m)) = (cfg.mqtt_quic_listen, &mqtt) {
            let listener = MqttQuicListener {
                addr,
                transport: cfg.mqtt_quic_transport(),
                max_connections: cfg.max_connections,
                handshake_timeout: cfg.limits.handshake_timeout,
                retry: cfg.retry,
                client_ca: client_ca.clone(),
            };
            mqtt_quic_addr = Some(listener.start(&store, m.broker.clone(), &shutdown, &tracker)?);
        }
        // WebSockets: `/ws`, and `/mqtt` on the same broker as MQTT over TCP, TLS and QUIC; on
        // the HTTPS listener and, with `--mqtt-ws`, a plaintext one. One session count for both.
        let ws = Arc::new(crate::web::ws::WsOptions {
            max_message: cfg.ws_max_message,
            sessions: Arc::new(tokio::sync::Semaphore::new(cfg.max_connections)),
            broker: mqtt.as_ref().map(|m| m.broker.clone()),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        });
        let mut mqtt_ws_addr = None;
        if let Some(addr) = cfg.mqtt_ws_listen {
            let bind_err = ServerError::bind("TCP (ws://)", addr);
            let plain = crate::tcp::bind_tcp(addr, HTTP_BACKLOG).map_err(bind_err)?;
            mqtt_ws_addr = Some(plain.local_addr().map_err(bind_err)?);
            let permits = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections));
            tracker.spawn(crate::web::ws::plain_accept_loop(plain, ws.clone(), permits));
        }
        let http = HttpOverTcp {
            site,
            opts: Arc::new(H2Options {
                alt_svc,
                transport: cfg.transport.clone(),
                max_header_bytes: cfg.limits.max_header_bytes,
                ws,
            }),
            shutdown: shutdown.clone(),
        };
        let tcp_ctx = Arc::new(crate::tcp::TcpContext {
            service: http,
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(tcp_tls)),
            handshake_timeout: cfg.limits.handshake_timeout,
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            permits: Arc::new(tokio::sync::Semaphore::new(cfg.max_connections)),
        });
        tracker.spawn(crate::quic::accept_loop(endpoint.clone(), quic_ctx));
        tracker.spawn(crate::tcp::accept_loop(listener, tcp_ctx));

        Ok(Server {
            quic_addr,
            tcp_addr,
            endpoint,
            shutdown,
            tracker,
            config: cfg,
            certs,
            mqtt,
            mqtt_quic_addr,
            mqtt_ws_addr,
        })
    }

    /// The UDP address HTTP/3 is served on.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The TCP address HTTP/2 and HTTP/1.1 are served on.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// The dedicated MQTT-over-QUIC listener's address, if one was asked for (`--mqtt-quic`).
    /// MQTT over QUIC is also served on [`Server::quic_addr`] (ALPN `mqtt`).
    pub fn mqtt_quic_addr(&self) -> Option<SocketAddr> {
        self.mqtt_quic_addr
    }

    /// The address MQTT over TCP is served on (`None` with `--no-mqtt`).
    pub fn mqtt_tcp_addr(&self) -> Option<SocketAddr> {
        self.mqtt.as_ref().and_then(|m| m.tcp)
    }

    /// The plaintext WebSocket listener's address (`ws://…/mqtt`, `ws://…/ws`), if one was asked
    /// for (`--mqtt-ws`).
    pub fn mqtt_ws_addr(&self) -> Option<SocketAddr> {
        self.mqtt_ws_addr
    }

    /// The address MQTT over TLS is served on.
    pub fn mqtt_tls_addr(&self) -> Option<SocketAddr> {
        self.mqtt.as_ref().and_then(|m| m.tls)
    }

    /// The MQTT broker (statistics, sessions), when MQTT is on.
    pub fn mqtt_broker(&self) -> Option<&crate::mqtt::Broker> {
        self.mqtt.as_ref().map(|m| &m.broker)
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The certificate the server presents.
    pub fn certs(&self) -> &CertSummary {
        &self.certs
    }

    /// Graceful shutdown: stop accepting, send HTTP/3 GOAWAY and HTTP/2 GOAWAY, let requests
    /// in flight finish for up to the configured grace period, then close what is left.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.config.shutdown_grace, self.tracker.wait()).await.is_err() {
            tracing::warn!(grace = ?self.config.shutdown_grace, "connections still open after the grace period; closing them");
        }
        // RFC 9000 §10.2: an immediate close for whatever is left; H3_NO_ERROR (RFC 9114 §8.1).
        self.endpoint.close(0x100u32.into(), b"server shutting down");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}
