//! The quiclab server inside the server namespace, for the lab's runs and experiments.
//!
//! The server runs on a dedicated OS thread that enters the server namespace first and then
//! builds its own tokio runtime, so every socket it creates (the QUIC endpoint's UDP socket, the
//! TLS/TCP listener, the connections) belongs to that namespace. It is the same
//! [`crate::server::Server`] that `quiclab serve` runs.

use std::net::SocketAddr;

use tokio::sync::oneshot;

use super::link::Link;
use super::netns::NsThread;
use super::LabError;
use crate::config::ServerConfig;
use crate::server::{CertSummary, Server};

/// The MQTT side of a [`LabServer`]: the broker (for its statistics) and its TCP address.
#[derive(Clone)]
pub struct LabMqtt {
    pub broker: crate::mqtt::Broker,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
}

impl std::fmt::Debug for LabMqtt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabMqtt").field("tcp", &self.tcp).field("tls", &self.tls).finish()
    }
}

/// A quiclab server running in a link's server namespace. Dropping it shuts it down (blocking
/// for up to the configured grace period); prefer [`LabServer::shutdown`] from async code.
#[derive(Debug)]
pub struct LabServer {
    quic_addr: SocketAddr,
    tcp_addr: SocketAddr,
    certs: CertSummary,
    mqtt: Option<LabMqtt>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
    thread: Option<NsThread<()>>,
}

impl LabServer {
    /// A server with the built-in defaults on the link's server address, port 4433, with
    /// certificates in a fresh directory (its CA is `certs.join("ca.pem")`). `tweak` adjusts the
    /// configuration first. What the experiments start.
    pub fn start_default(
        link: &Link,
        certs: &std::path::Path,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Result<LabServer, LabError> {
        let mut cfg = ServerConfig::new();
        let addr = SocketAddr::new(link.server_ip().into(), crate::config::DEFAULT_PORT);
        cfg.quic_listen = addr;
        cfg.tcp_listen = addr;
        cfg.certs_dir = certs.to_path_buf();
        // The experiments measure HTTP; the broker's fixed ports would only get in the way.
        cfg.mqtt.enabled = false;
        tweak(&mut cfg);
        LabServer::start(link, cfg)
    }

    /// Start a server from `cfg` inside `link`'s server namespace, with a 2-thread runtime of its
    /// own. `cfg`'s listen addresses should be the link's [`Link::server_ip`] (or unspecified).
    pub fn start(link: &Link, cfg: ServerConfig) -> Result<LabServer, LabError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let thread = link.spawn_in_server_ns("lab-server", move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("lab-server-rt")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(LabError::Io(e)));
                    return;
                }
            };
            rt.block_on(async move {
                match Server::start(cfg).await {
                    Ok(server) => {
                        let mqtt = server.mqtt_broker().map(|b| LabMqtt {
                            broker: b.clone(),
                            tcp: server.mqtt_tcp_addr(),
                            tls: server.mqtt_tls_addr(),
                        });
                        let _ =
                            ready_tx.send(Ok((server.quic_addr(), server.tcp_addr(), server.certs().clone(), mqtt)));
                        let _ = stop_rx.await;
                        server.shutdown().await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(LabError::Server(e)));
                    }
                }
            });
            drop(rt);
            let _ = done_tx.send(());
        })?;
        match ready_rx.recv() {
            Ok(Ok((quic_addr, tcp_addr, certs, mqtt))) => Ok(LabServer {
                quic_addr,
                tcp_addr,
                certs,
                mqtt,
                stop: Some(stop_tx),
                done: Some(done_rx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                thread.join();
                Err(e)
            }
            Err(_) => {
                thread.join();
                Err(LabError::Io(std::io::Error::other("the lab server thread ended before starting")))
            }
        }
    }

    /// The UDP address HTTP/3 is served on.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The TCP address HTTP/2 and HTTP/1.1 are served on.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// The MQTT broker and its listeners, when MQTT is on.
    pub fn mqtt(&self) -> Option<&LabMqtt> {
        self.mqtt.as_ref()
    }

    /// The certificate the server presents (its CA file, for clients to trust).
    pub fn certs(&self) -> &CertSummary {
        &self.certs
    }

    /// Graceful shutdown (the server's own grace period), without blocking the async caller.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
        if let Some(t) = self.thread.take() {
            t.join();
        }
    }
}

impl Drop for LabServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join();
        }
    }
}
