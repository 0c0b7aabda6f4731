//! Shared set-up of the lab tests (tests/lab_*.rs): one test at a time, a link (with a panic
//! message that says what the lab needs), a quiclab server in the link's server namespace with
//! its certificates in a temporary directory, and a deadline-bounded wait for an event.
//!
//! Included by each lab test binary with `#[path = "common/lab.rs"] mod lab_common;`
//! (tests/common/mod.rs holds the helpers of the other tests).
#![allow(dead_code)] // each test binary uses a part

use std::error::Error;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quiclab::config::ServerConfig;
use quiclab::lab::{DirStats, Impairment, LabServer, Link, LinkConfig};

static SERIAL: Mutex<()> = Mutex::new(());

/// Hold this for the whole test: the tests of one binary run one at a time, so they neither
/// compete for the CPU the relay runs on nor share process-wide state (the TLS key log).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `e` and its causes, one per line.
pub fn error_chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!("\n  caused by: {c}"));
        cause = c.source();
    }
    s
}

/// Start a link, or panic saying what the lab needs.
pub fn start_link(cfg: LinkConfig) -> Link {
    match Link::start(cfg) {
        Ok(l) => l,
        Err(e) => panic!(
            "{}\n(the lab tests need root, or user namespaces: run them as `unshare -rn cargo test --test NAME`)",
            error_chain(&e)
        ),
    }
}

/// A link with the same one-way delay each way and no other impairment.
pub fn delay_link(one_way: Duration, seed: u64) -> Link {
    start_link(LinkConfig::symmetric(Impairment::delay(one_way), seed))
}

/// A quiclab server in a link's server namespace; its certificates live in a temporary
/// directory removed when this is dropped (after the server).
pub struct LabTestServer {
    pub server: LabServer,
    /// The server's CA certificate (`ca.pem` in the certificate directory).
    pub ca: PathBuf,
    certs: tempfile::TempDir,
}

impl std::ops::Deref for LabTestServer {
    type Target = LabServer;
    fn deref(&self) -> &LabServer {
        &self.server
    }
}

/// Start a quiclab server on the link's server address: HTTP/3 and HTTP/2 on port 4433, MQTT
/// over TCP on 1883 (no MQTT over TLS listener), certificates in a fresh temporary directory;
/// `tweak` adjusts the configuration first.
pub fn start_server(link: &Link, tweak: impl FnOnce(&mut ServerConfig)) -> LabTestServer {
    let certs = tempfile::tempdir().expect("temporary certificate directory");
    let ip = link.server_ip();
    let mut cfg = ServerConfig::new();
    cfg.quic_listen = SocketAddr::new(ip.into(), 4433);
    cfg.tcp_listen = cfg.quic_listen;
    cfg.certs_dir = certs.path().to_path_buf();
    cfg.mqtt.tcp_listen = Some(SocketAddr::new(ip.into(), 1883));
    cfg.mqtt.tls_listen = None;
    tweak(&mut cfg);
    let server = match LabServer::start(link, cfg) {
        Ok(s) => s,
        Err(e) => panic!("lab server: {}", error_chain(&e)),
    };
    let ca = certs.path().join("ca.pem");
    LabTestServer { server, ca, certs }
}

/// Wait until `ready()` holds, checking every few milliseconds; panic naming `what` if it does
/// not within `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Datagrams the relay has read in one direction but not yet forwarded or dropped.
pub fn in_flight(s: &DirStats) -> u64 {
    let done =
        s.packets_out + s.dropped_non_ipv4 + s.dropped_stale_nat + s.dropped_loss + s.dropped_queue + s.write_errors;
    s.packets_in.saturating_sub(done)
}

/// Wait until the relay has read at least `up_at_least` datagrams client → server in this
/// phase and has forwarded or dropped (and handed to a running capture) every datagram it read,
/// both directions.
pub fn wait_until_drained(link: &Link, up_at_least: u64) {
    wait_until("the relay to forward or drop every datagram it read", Duration::from_secs(30), || {
        let s = link.stats();
        s.up.packets_in >= up_at_least && in_flight(&s.up) == 0 && in_flight(&s.down) == 0
    });
}
