//! `quiclab mqtt broker --data-dir` as a child process that a test can kill with SIGKILL and
//! start again on the same store, and a raw MQTT client over any transport (packets in and
//! out, nothing automatic), for the persistence tests (issue 18).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use quiclab::mqtt::client::{connect_stream, BoxStream, MqttUrl};
use quiclab::mqtt::codec::{self, Decoder, Packet};
use quiclab::tls::Trust;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::mqtt_quic_url;
use super::proc::{free_tcp_port, free_udp_port, loopback, mqtt_accepts, spawn_ready, ChildServer, ProcError};

/// `quiclab mqtt broker --data-dir DATA` in its own process, with TCP and QUIC listeners on
/// fresh ports each start. Dropping it kills the process with SIGKILL.
pub struct PersistentBroker {
    proc: ChildServer,
    pub tcp: SocketAddr,
    pub quic: SocketAddr,
}

impl PersistentBroker {
    pub async fn start(data: &Path, certs: &Path) -> PersistentBroker {
        Self::start_with(data, certs, &[]).await
    }

    /// As [`PersistentBroker::start`], with more flags (e.g. `--sync 3600s`).
    pub async fn start_with(data: &Path, certs: &Path, extra: &[&str]) -> PersistentBroker {
        const WHAT: &str = "quiclab mqtt broker --data-dir";
        let spawn = || {
            let (tcp, quic) = (loopback(free_tcp_port()?), loopback(free_udp_port()?));
            let child = Command::new(env!("CARGO_BIN_EXE_quiclab"))
                .args(["mqtt", "broker", "--tcp", &tcp.to_string(), "--quic", &quic.to_string(), "--certs"])
                .arg(certs)
                .arg("--data-dir")
                .arg(data)
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|source| ProcError::Spawn { what: WHAT.into(), source })?;
            Ok((child, (tcp, quic)))
        };
        let trust = Trust::CaFile(certs.join("ca.pem"));
        let ready = |(tcp, quic): (SocketAddr, SocketAddr)| {
            let trust = trust.clone();
            async move {
                mqtt_accepts(&MqttUrl::tcp(tcp), &trust).await
                    && mqtt_accepts(&mqtt_quic_url(quic.port()), &trust).await
            }
        };
        let (proc, (tcp, quic)) =
            spawn_ready(WHAT, Duration::from_secs(20), spawn, ready).await.expect("the broker starts");
        PersistentBroker { proc, tcp, quic }
    }

    /// Stop the broker with SIGTERM and wait for it to exit 0 (panics otherwise).
    pub fn terminate(mut self) {
        let status = self.proc.terminate(Duration::from_secs(15));
        assert!(status.is_some_and(|s| s.success()), "the broker exits 0 within 15 s of SIGTERM: {status:?}");
    }

    pub fn tcp_url(&self) -> MqttUrl {
        MqttUrl::tcp(self.tcp)
    }

    pub fn quic_url(&self) -> MqttUrl {
        mqtt_quic_url(self.quic.port())
    }
}

/// A raw MQTT client on one byte stream (TCP, TLS or a QUIC stream): packets out, packets in.
pub struct Raw {
    io: BoxStream,
    dec: Decoder,
    got: VecDeque<Packet>,
}

impl Raw {
    /// Connect as `id` (clean session `clean`); returns the client and CONNACK's session
    /// present, or `None` if the broker cannot be reached or does not answer.
    pub async fn connect(url: &MqttUrl, trust: &Trust, id: &str, clean: bool) -> Option<(Raw, bool)> {
        let io = connect_stream(url, trust, Duration::from_secs(5)).await.ok()?;
        let mut raw = Raw { io, dec: Decoder::new(1 << 20), got: VecDeque::new() };
        let mut c = quiclab::mqtt::codec::connect_v3(id, 60);
        c.clean_start = clean;
        raw.send(Packet::connect(c)).await.ok()?;
        match raw.next(Duration::from_secs(5)).await {
            Some(Packet::Connack(a)) if a.reason_code == codec::ConnectReasonCode::Success => {
                Some((raw, a.session_present))
            }
            _ => None,
        }
    }

    pub async fn send(&mut self, p: Packet) -> std::io::Result<()> {
        let mut buf = Vec::new();
        codec::encode(&p, quiclab::mqtt::codec::Version::V3, &mut buf)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.io.write_all(&buf).await?;
        self.io.flush().await
    }

    /// The next packet within `limit`; `None` if none came or the stream ended.
    pub async fn next(&mut self, limit: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(p) = self.got.pop_front() {
                return Some(p);
            }
            let mut buf = [0u8; 8192];
            let n = tokio::time::timeout_at(deadline, self.io.read(&mut buf)).await.ok()?.ok()?;
            if n == 0 {
                return None;
            }
            let mut out = Vec::new();
            self.dec.feed(&buf[..n], &mut out).ok()?;
            self.got.extend(out);
        }
    }

    /// Whether packets are decoded and waiting.
    pub fn has_buffered(&self) -> bool {
        !self.got.is_empty()
    }
}
