//! A running quiclab server: the QUIC endpoint and the TLS/TCP listener, started together from
//! one [`ServerConfig`], stopped together with a bounded graceful shutdown.
//!
//! `quiclab serve`, the tests, the examples and the lab all start servers through
//! [`Server::start`], so they run the very same code.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, ServerConfig};
use crate::tls::{self, CertStore, TlsError};
use crate::web::h2::H2Options;
use crate::web::Site;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {proto} {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(std::io::Error),
    #[error("invalid transport configuration: {0}")]
    Transport(String),
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
    pub addr: SocketAddr,
    pub transport: config::TransportConfig,
    pub max_connections: usize,
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
        let bind_err = |source| ServerError::Bind { proto: "MQTT/QUIC", addr, source };
        let clients = crate::mqtt::client_auth(broker.config(), self.client_ca.as_ref());
        let qtls = tls::quic_server_config_with(store, &[crate::mqtt::config::ALPN_MQTT], clients)?;
        let mut sc = quinn::ServerConfig::with_crypto(Arc::new(qtls));
        sc.transport_config(Arc::new(crate::quic::transport_config(&self.transport).map_err(ServerError::Transport)?));
        let udp = crate::quic::bind_udp(addr).map_err(bind_err)?;
        let ep = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(sc), udp, Arc::new(quinn::TokioRuntime))
            .map_err(bind_err)?;
        let local = ep.local_addr().map_err(bind_err)?;
        let ctx = Arc::new(crate::quic::QuicContext {
            site: None,
            local,
            congestion: self.transport.congestion,
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            permits: Arc::new(tokio::sync::Semaphore::new(self.max_connections)),
            retry: self.retry,
            qlog: None,
            handshake_timeout: self.handshake_timeout,
            mqtt: Some(broker),
        });
        tracker.spawn(crate::quic::accept_loop(ep, ctx));
        Ok(local)
    }
}

/// Bind the UDP socket and the TCP listener. When both ask for the same address with port 0,
/// find one ephemeral port free for both, so `Alt-Svc` and the banner name a single port.
fn bind_pair(quic: SocketAddr, tcp: SocketAddr) -> Result<(std::net::UdpSocket, tokio::net::TcpListener), ServerError> {
    let bind_err = |proto, addr| move |source| ServerError::Bind { proto, addr, source };
    let same_ephemeral = quic == tcp && quic.port() == 0;
    let attempts = if same_ephemeral { 50 } else { 1 };
    let mut last_err = None;
    for _ in 0..attempts {
        let udp = crate::quic::bind_udp(quic).map_err(bind_err("UDP", quic))?;
        let mut tcp_addr = tcp;
        if same_ephemeral {
            tcp_addr.set_port(udp.local_addr().map_err(bind_err("UDP", quic))?.port());
        }
        match crate::tcp::bind_tcp(tcp_addr) {
            Ok(listener) => return Ok((udp, listener)),
            Err(e) => last_err = Some(bind_err("TCP", tcp_addr)(e)),
        }
    }
    Err(last_err.unwrap_or_else(|| bind_err("TCP", tcp)(std::io::ErrorKind::AddrInUse.into())))
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
}

impl Server {
    /// Load or create certificates, bind both listeners and start serving.
    pub async fn start(cfg: ServerConfig) -> Result<Server, ServerError> {
        let store = match (&cfg.cert, &cfg.key) {
            (Some(c), Some(k)) => CertStore::load(c, k)?,
            _ => CertStore::load_or_create(&cfg.certs_dir)?,
        };
        let certs = CertSummary {
            ca_path: store.ca_path.clone(),
            cert_path: store.cert_path.clone(),
            spki_sha256: store.spki_sha256()?,
            created: store.created,
        };
        // MQTT client certificates: the CA is loaded once for every listener that asks.
        let client_ca = match cfg.mqtt.client_ca_file(&cfg.certs_dir) {
            Some(path) if cfg.mqtt.enabled => Some(tls::ClientCa::load(&path)?),
            _ => None,
        };
        let site = Site::new(cfg.limits.clone(), cfg.root.as_deref()).map_err(ServerError::Setup)?;
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
        server_config
            .transport_config(Arc::new(crate::quic::transport_config(&cfg.transport).map_err(ServerError::Transport)?));
        let bind_err = |proto, addr| move |source| ServerError::Bind { proto, addr, source };
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
            crate::tcp::set_congestion(listener.as_raw_fd(), cc).map_err(ServerError::Setup)?;
        }
        let alt_svc = HeaderValue::from_str(&format!("h3=\":{}\"; ma=3600", quic_addr.port())).ok();

        let qlog = match &cfg.qlog_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    ServerError::Setup(std::io::Error::new(e.kind(), format!("--qlog-dir {}: {e}", dir.display())))
                })?;
                Some(crate::quic::QlogSetup {
                    dir: dir.clone(),
                    server_config: server_config_copy,
                    transport: cfg.transport.clone(),
                    counter: Default::default(),
                })
            }
            None => None,
        };
        // MQTT over TCP and TLS: same certificate, its own listeners, same shutdown and tracker.
        let mqtt = if cfg.mqtt.enabled {
            let clients = crate::mqtt::client_auth(&cfg.mqtt, client_ca.as_ref());
            let mqtt_tls = tls::tcp_server_config_with(&store, &[crate::mqtt::config::ALPN_MQTT], clients)?;
            let started = crate::mqtt::tcp::start(&cfg.mqtt, Some(mqtt_tls), &shutdown, &tracker)
                .map_err(|e| ServerError::Bind { proto: e.proto, addr: e.addr, source: e.source })?;
            Some(started)
        } else {
            None
        };
        let quic_ctx = Arc::new(crate::quic::QuicContext {
            site: Some(site.clone()),
            local: quic_addr,
            congestion: cfg.transport.congestion,
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            permits: Arc::new(tokio::sync::Semaphore::new(cfg.max_connections)),
            retry: cfg.retry,
            qlog,
            handshake_timeout: cfg.limits.handshake_timeout,
            mqtt: mqtt.as_ref().map(|m| m.broker.clone()),
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
        let tcp_ctx = Arc::new(crate::tcp::TcpContext {
            site,
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(tcp_tls)),
            h2: Arc::new(H2Options {
                alt_svc,
                transport: cfg.transport.clone(),
                max_header_bytes: cfg.limits.max_header_bytes,
            }),
            handshake_timeout: cfg.limits.handshake_timeout,
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            permits: Arc::new(tokio::sync::Semaphore::new(cfg.max_connections)),
        });
        tracker.spawn(crate::quic::accept_loop(endpoint.clone(), quic_ctx));
        tracker.spawn(crate::tcp::accept_loop(listener, tcp_ctx));

        Ok(Server { quic_addr, tcp_addr, endpoint, shutdown, tracker, config: cfg, certs, mqtt, mqtt_quic_addr })
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
