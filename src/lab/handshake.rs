//! `quiclab lab handshake`: what a fresh connection costs, in round trips.
//!
//! Time to first byte of a small GET on a new connection, over the lab's link at a given RTT:
//!
//! | case | theory (RTT) | why |
//! |------|--------------|-----|
//! | HTTP/2 over TCP + TLS 1.3 | 3 | TCP handshake, TLS handshake, request |
//! | HTTP/3, 1-RTT | 2 | QUIC+TLS handshake, request |
//! | HTTP/3, 0-RTT | 1 | the request rides in the first flight (RFC 9001 §4.6) |
//! | MQTT over TCP, to CONNACK | 2 | TCP handshake, CONNECT |
//! | MQTT over TLS, to CONNACK | 3 | TCP, TLS 1.3, CONNECT |
//! | MQTT over QUIC, to CONNACK | 2 | QUIC+TLS handshake, CONNECT |
//!
//! Every run uses a new connection; the HTTP/2 and 1-RTT HTTP/3 runs use a new client too,
//! so nothing is resumed. The 0-RTT runs share one client, which resumes the session of the
//! run before (a warm-up connection provides the first ticket). Results are reported in units
//! of the configured RTT, beside the RTT the link's self-check measured.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use super::link::{Impairment, Link, LinkConfig};
use super::report::{self, Series};
use super::selfcheck::{SelfCheck, SelfCheckOptions};
use super::server::LabServer;
use super::LabError;
use crate::client::{self, Client, ClientOptions, FetchOptions, HttpVersion, Target};
use crate::tls::Trust;

/// What `quiclab lab handshake` runs with (the binary fills it from its command line).
#[derive(Debug, Clone)]
pub struct HandshakeParams {
    /// Round-trip time of the link (half each way).
    pub rtt: Duration,
    /// Fresh connections per case.
    pub runs: usize,
    /// Results folder: results.json, report.md, handshake.svg (created if missing).
    pub out: std::path::PathBuf,
    /// Seed of the link's random streams (no loss here, but recorded).
    pub seed: u64,
}

/// One case's samples.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// What was measured.
    pub case: &'static str,
    /// The theory, in RTTs.
    pub theory_rtt: f64,
    /// Time to first byte of each run, ms.
    pub ttfb_ms: Vec<f64>,
    /// Median TTFB in units of the configured RTT.
    pub median_rtt: f64,
    /// Median minus theory, in RTTs.
    pub excess_rtt: f64,
    /// How each run's early data fared (0-RTT case only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub zero_rtt: Vec<String>,
}

/// Everything `results.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct HandshakeResults {
    pub configured_rtt_ms: f64,
    pub measured_rtt_ms: f64,
    pub runs: usize,
    pub seed: u64,
    pub link: LinkConfig,
    pub self_check: String,
    pub cases: Vec<CaseResult>,
    pub versions: report::Versions,
}

/// Run the measurement and write its outputs; the exit status.
pub async fn run_handshake(args: HandshakeParams) -> Result<i32, LabError> {
    let results = tokio::task::spawn_blocking(move || {
        let r = measure(&args)?;
        write_outputs(&args.out, &r)?;
        Ok::<_, LabError>((r, args))
    })
    .await??;
    let (results, args) = results;
    for c in &results.cases {
        println!(
            "{:<22} median {:>7.2} ms = {:.2} RTT (theory {:.0}, excess {:+.2})",
            c.case,
            report::median(&c.ttfb_ms),
            c.median_rtt,
            c.theory_rtt,
            c.excess_rtt
        );
    }
    println!("results in {}", args.out.display());
    Ok(0)
}

/// Build the link, start the server, measure every case. Blocking: it drives its own runtimes.
pub fn measure(args: &HandshakeParams) -> Result<HandshakeResults, LabError> {
    let link = Link::start(LinkConfig::symmetric(Impairment::delay(args.rtt / 2), args.seed))?;
    let check = SelfCheck::run(&link, &SelfCheckOptions { probes: 100, ..Default::default() })?;
    if !check.passed {
        return Err(LabError::SelfCheckFailed(check.summary()));
    }
    let measured_rtt_ms = check.last().rtt_measured_ms;
    let certs = std::env::temp_dir().join(format!("quiclab-handshake-{}", std::process::id()));
    let server = LabServer::start_default(&link, &certs, |cfg| cfg.mqtt.enabled = true)?;
    let (quic, tcp) = (server.quic_addr(), server.tcp_addr());
    // The broker listens on its default ports in the server namespace.
    let mqtt_default = crate::mqtt::MqttConfig::default();
    let port_of = |a: Option<SocketAddr>, d| a.map(|a| a.port()).unwrap_or(d);
    let mqtt_ports = (port_of(mqtt_default.tcp_listen, 1883), port_of(mqtt_default.tls_listen, 8883));
    let ca = certs.join("ca.pem");
    let runs = args.runs;
    let rtt = args.rtt;
    let thread = link.spawn_in_client_ns("lab-handshake", move || -> Result<Vec<CaseResult>, LabError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(client_cases(quic, tcp, mqtt_ports, ca, runs, rtt))
    })?;
    let cases = thread.join()?;
    drop(server);
    Ok(HandshakeResults {
        configured_rtt_ms: args.rtt.as_secs_f64() * 1000.0,
        measured_rtt_ms,
        runs: args.runs,
        seed: args.seed,
        link: link.config(),
        self_check: check.summary(),
        cases,
        versions: report::versions(),
    })
}

async fn client_cases(
    quic: SocketAddr,
    tcp: SocketAddr,
    mqtt_ports: (u16, u16),
    ca: std::path::PathBuf,
    runs: usize,
    rtt: Duration,
) -> Result<Vec<CaseResult>, LabError> {
    let mqtt_opts = crate::mqtt::client::ClientOptions { trust: Trust::CaFile(ca.clone()), ..Default::default() };
    let opts = ClientOptions { trust: Trust::CaFile(ca), ..Default::default() };
    // The certificate names localhost; connect to the lab address with that name.
    let target = |addr: SocketAddr| -> Result<Target, LabError> {
        let uri: http::Uri =
            format!("https://localhost:{}/status/200", addr.port()).parse().map_err(std::io::Error::other)?;
        Ok(Target { host: "localhost".into(), port: addr.port(), uri, addr: Some(addr) })
    };
    let rtt_ms = rtt.as_secs_f64() * 1000.0;

    let mut h2 = Vec::new();
    let mut h3 = Vec::new();
    let mut h3_0 = Vec::new();
    let mut zero_rtt = Vec::new();
    let (mut m_tcp, mut m_tls, mut m_quic) = (Vec::new(), Vec::new(), Vec::new());
    let (mut m_quic0, mut m_zero_rtt) = (Vec::new(), Vec::new());
    let server_ip = quic.ip();
    let mqtt_url = |transport, port| crate::mqtt::client::MqttUrl { transport, host: server_ip.to_string(), port };
    // TLS and QUIC name the server by its certificate's name and connect to the lab address.
    let mqtt_tls_url =
        |transport, port| crate::mqtt::client::MqttUrl { transport, host: "localhost".to_string(), port };
    let t2 = target(tcp)?;
    let t3 = target(quic)?;
    let resuming = Client::new(HttpVersion::H3, &opts)?;
    let zero = FetchOptions { zero_rtt: true, rebind_after: None };
    // Warm-up: a ticket for the first 0-RTT run.
    let req = client::request(&t3, http::Method::GET, Bytes::new())?;
    client::fetch_with(&resuming, &t3, req, &zero).await?;
    // MQTT over QUIC 0-RTT: one endpoint whose tickets carry over; CONNECT with a clean session
    // and no client id (the broker assigns one), which the broker acts on in early data
    // (docs/mqtt-over-quic.md §6.7). Warm-up for the first ticket.
    let mqtt_zero = crate::mqtt::client::ClientOptions {
        quic: Some(crate::mqtt::client::QuicSetup::new(&mqtt_opts.trust)?),
        zero_rtt: true,
        ..mqtt_opts.clone()
    };
    let quic_url = mqtt_tls_url(crate::mqtt::client::Transport::Quic, quic.port());
    connack_ms(&quic_url, &mqtt_zero, Some(server_ip)).await?;
    for _ in 0..runs {
        // Interleaved, so drift on a shared machine hits every case alike.
        let fresh = Client::new(HttpVersion::H2, &opts)?;
        h2.push(ttfb(&fresh, &t2, &FetchOptions::default()).await?.0);
        let fresh = Client::new(HttpVersion::H3, &opts)?;
        h3.push(ttfb(&fresh, &t3, &FetchOptions::default()).await?.0);
        let (ms, z) = ttfb(&resuming, &t3, &zero).await?;
        h3_0.push(ms);
        zero_rtt.push(z.map(|z| z.to_string()).unwrap_or_default());
        use crate::mqtt::client::Transport;
        m_tcp.push(connack_ms(&mqtt_url(Transport::Tcp, mqtt_ports.0), &mqtt_opts, None).await?);
        m_tls.push(connack_ms(&mqtt_tls_url(Transport::Tls, mqtt_ports.1), &mqtt_opts, Some(server_ip)).await?);
        m_quic.push(connack_ms(&quic_url, &mqtt_opts, Some(server_ip)).await?);
        let (ms, early) = connack_early(&quic_url, &mqtt_zero, server_ip).await?;
        m_quic0.push(ms);
        m_zero_rtt.push(early);
    }
    let case = |case, theory, ttfb_ms: Vec<f64>, zero_rtt| {
        let median_rtt = report::median(&ttfb_ms) / rtt_ms;
        CaseResult { case, theory_rtt: theory, median_rtt, excess_rtt: median_rtt - theory, ttfb_ms, zero_rtt }
    };
    Ok(vec![
        case("HTTP/2 (TCP + TLS 1.3)", 3.0, h2, vec![]),
        case("HTTP/3 1-RTT", 2.0, h3, vec![]),
        case("HTTP/3 0-RTT", 1.0, h3_0, zero_rtt),
        case("MQTT/TCP CONNACK", 2.0, m_tcp, vec![]),
        case("MQTT/TLS CONNACK", 3.0, m_tls, vec![]),
        case("MQTT/QUIC CONNACK", 2.0, m_quic, vec![]),
        case("MQTT/QUIC 0-RTT CONNACK", 1.0, m_quic0, m_zero_rtt),
    ])
}

/// [`connack_ms`] for a 0-RTT attempt: also what became of the early CONNECT.
async fn connack_early(
    url: &crate::mqtt::client::MqttUrl,
    opts: &crate::mqtt::client::ClientOptions,
    server_ip: std::net::IpAddr,
) -> Result<(f64, String), LabError> {
    let opts = crate::mqtt::client::ClientOptions { connect_to: Some(server_ip), ..opts.clone() };
    let c = crate::mqtt::client::Client::connect(url, &opts).await?;
    let out = (c.connack_after().as_secs_f64() * 1000.0, c.early_data().to_string());
    let _ = c.disconnect().await;
    Ok(out)
}

/// Time from the start of a new MQTT connection to its CONNACK, ms. `resolve` maps the URL's
/// host (the certificate's name) to the lab address.
async fn connack_ms(
    url: &crate::mqtt::client::MqttUrl,
    opts: &crate::mqtt::client::ClientOptions,
    resolve: Option<std::net::IpAddr>,
) -> Result<f64, LabError> {
    let start = std::time::Instant::now();
    let opts = crate::mqtt::client::ClientOptions { connect_to: resolve, ..opts.clone() };
    let c = crate::mqtt::client::Client::connect(url, &opts).await?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let _ = c.disconnect().await;
    Ok(ms)
}

/// One fetch on a fresh connection: its time to first byte (ms) and what happened to 0-RTT.
async fn ttfb(
    client: &Client,
    target: &Target,
    opts: &FetchOptions,
) -> Result<(f64, Option<crate::client::h3::ZeroRtt>), client::ClientError> {
    let req = client::request(target, http::Method::GET, Bytes::new())?;
    let f = client::fetch_with(client, target, req, opts).await?;
    Ok((f.timings.ttfb.as_secs_f64() * 1000.0, f.zero_rtt))
}

/// Write `results.json`, `report.md` and `handshake.svg`.
pub fn write_outputs(out: &std::path::Path, r: &HandshakeResults) -> Result<(), LabError> {
    let dir = report::ResultsDir::create(out)?;
    dir.write_json(r)?;
    let mut md = format!(
        "# Handshake cost in round trips\n\nConfigured RTT {:.1} ms (measured by the link's self-check: {:.3} ms); \
         {} fresh connections per case, interleaved. TTFB counts from the start of the connection attempt to \
         the response headers of a small GET.\n\n",
        r.configured_rtt_ms, r.measured_rtt_ms, r.runs
    );
    let rows: Vec<Vec<String>> = r
        .cases
        .iter()
        .map(|c| {
            let p = report::Percentiles::of(&c.ttfb_ms);
            vec![
                c.case.to_string(),
                format!("{:.0}", c.theory_rtt),
                format!("{:.2}", report::median(&c.ttfb_ms)),
                format!("{:.2}", c.median_rtt),
                format!("{:+.2}", c.excess_rtt),
                format!("{:.2}", p.p99),
            ]
        })
        .collect();
    md += &report::md_table(
        &["case", "theory (RTT)", "median TTFB (ms)", "median (RTT)", "excess (RTT)", "p99 (ms)"],
        &rows,
    );
    for z in r.cases.iter().filter(|c| !c.zero_rtt.is_empty()) {
        let accepted = z.zero_rtt.iter().filter(|s| s.starts_with("accepted")).count();
        md += &format!("\n{}: 0-RTT accepted on {accepted} of {} runs.\n", z.case, z.zero_rtt.len());
    }
    md += &format!("\nLink self-check:\n\n```\n{}```\n", r.self_check);
    dir.write_markdown(&md)?;
    let series: Vec<Series> = r
        .cases
        .iter()
        .map(|c| {
            Series::line(
                c.case,
                c.ttfb_ms.iter().enumerate().map(|(i, ms)| (i as f64 + 1.0, ms / r.configured_rtt_ms)).collect(),
            )
        })
        .collect();
    report::plot(
        &dir.path("handshake.svg"),
        "Time to first byte on a fresh connection",
        "run",
        "TTFB (RTTs)",
        &series,
    )?;
    Ok(())
}
