//! `quiclab lab migrate`: a NAT rebinding in the middle of a download, HTTP/3 vs HTTP/2.
//!
//! The relay rewrites the client's source port mid-transfer, as a NAT does when its mapping
//! times out or a phone changes networks. QUIC names its connection by connection IDs, so the
//! server sees a new path, validates it (PATH_CHALLENGE, RFC 9000 §8.2) and the transfer goes
//! on after a short pause. TCP names its connection by the 4-tuple: the server's kernel has no
//! socket for the new one and answers with a reset, so the HTTP/2 download dies and must
//! start again on a new connection (here it resumes with a `Range` request, the best a client
//! can do). Both downloads cross the same link, one after the other.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Serialize;

use super::link::{Impairment, Link, LinkConfig};
use super::report::{self, Series};
use super::selfcheck::{SelfCheck, SelfCheckOptions};
use super::server::LabServer;
use super::LabError;
use crate::client::{self, Client, ClientOptions, HttpVersion, Target};
use crate::tls::Trust;

/// What `quiclab lab migrate` runs with (the binary fills it from its command line).
#[derive(Debug, Clone)]
pub struct MigrateParams {
    /// Round-trip time of the link (half each way).
    pub rtt: Duration,
    /// Bottleneck rate each way, bits per second (so the download lasts long enough to rebind).
    pub rate: u64,
    /// Bytes to download.
    pub size: u64,
    /// When the NAT rebinding happens, after the download starts.
    pub rebind_at: Duration,
    /// Results folder: results.json, report.md, migrate.svg (created if missing).
    pub out: std::path::PathBuf,
    /// Seed of the link's random streams.
    pub seed: u64,
}

/// One protocol's download across the rebinding.
#[derive(Debug, Clone, Serialize)]
pub struct Download {
    pub protocol: &'static str,
    /// Bytes received over time: (ms since the download started, bytes).
    pub series: Vec<(f64, u64)>,
    /// Longest gap between two arrivals, ms, and when it started.
    pub longest_pause_ms: f64,
    pub pause_started_ms: f64,
    /// The connection broke (and a new one finished the download).
    pub connection_broke: bool,
    /// Bytes received on the first connection.
    pub bytes_before_break: u64,
    /// When the first connection failed, ms.
    pub broke_at_ms: Option<f64>,
    /// The error the first connection died with.
    pub error: Option<String>,
    /// New connections needed.
    pub reconnects: u32,
    /// The server's count of path changes on the connection (HTTP/3; from `/conn`).
    pub server_path_changes: Option<u64>,
    /// Total time, ms.
    pub total_ms: f64,
    /// Whether every byte arrived, in order, with the right content.
    pub complete: bool,
}

/// Everything `results.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateResults {
    pub rebind_at_ms: f64,
    pub size: u64,
    pub link: LinkConfig,
    pub self_check: String,
    pub downloads: Vec<Download>,
    pub versions: report::Versions,
}

/// Run and write the outputs; the exit status (0 when QUIC survived and both completed).
pub async fn run_migrate(args: MigrateParams) -> Result<i32, LabError> {
    let (r, args) = tokio::task::spawn_blocking(move || {
        let r = measure(&args)?;
        write_outputs(&args.out, &r)?;
        Ok::<_, LabError>((r, args))
    })
    .await??;
    println!("NAT rebinding {:.0} ms into each download of {} bytes:", r.rebind_at_ms, r.size);
    for d in &r.downloads {
        println!("{}", timeline(d, r.rebind_at_ms));
    }
    println!("results in {}", args.out.display());
    let quic_ok = r.downloads.iter().any(|d| d.protocol == "HTTP/3" && !d.connection_broke && d.complete);
    Ok(if quic_ok && r.downloads.iter().all(|d| d.complete) { 0 } else { 1 })
}

fn timeline(d: &Download, rebind_ms: f64) -> String {
    let mut s = format!("  {}: t=0 start; t={rebind_ms:.0} ms rebinding; ", d.protocol);
    if d.connection_broke {
        s += &format!(
            "connection died at t={:.0} ms after {} bytes ({}); {} new connection(s), resumed with Range; ",
            d.broke_at_ms.unwrap_or(0.0),
            d.bytes_before_break,
            d.error.as_deref().unwrap_or("error"),
            d.reconnects
        );
    } else {
        s += &format!(
            "same connection, longest pause {:.0} ms at t={:.0} ms; server saw {} path change(s); ",
            d.longest_pause_ms,
            d.pause_started_ms,
            d.server_path_changes.unwrap_or(0)
        );
    }
    s + &format!("done at t={:.0} ms, complete: {}", d.total_ms, d.complete)
}

/// Build the link and server, run both downloads. Blocking.
pub fn measure(args: &MigrateParams) -> Result<MigrateResults, LabError> {
    let imp = Impairment { rate_bps: Some(args.rate), ..Impairment::delay(args.rtt / 2) };
    let link = Link::start(LinkConfig::symmetric(imp, args.seed))?;
    let check = SelfCheck::run(&link, &SelfCheckOptions { probes: 100, ..Default::default() })?;
    if !check.passed {
        return Err(LabError::SelfCheckFailed(check.summary()));
    }
    let certs = std::env::temp_dir().join(format!("quiclab-migrate-{}", std::process::id()));
    let server = LabServer::start_default(&link, &certs, |_| {})?;
    let mut downloads = Vec::new();
    for version in [HttpVersion::H3, HttpVersion::H2] {
        let server_addr = if version == HttpVersion::H3 { server.quic_addr() } else { server.tcp_addr() };
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (ca, size) = (certs.join("ca.pem"), args.size);
        let t = link.spawn_in_client_ns("lab-migrate", move || -> Result<Download, LabError> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(download(version, server_addr, ca, size, started_tx))
        })?;
        // The rebinding, timed from the start of the download.
        if started_rx.recv_timeout(Duration::from_secs(30)).is_ok() {
            link.schedule_rebind(args.rebind_at);
        }
        downloads.push(t.join()?);
    }
    drop(server);
    Ok(MigrateResults {
        rebind_at_ms: args.rebind_at.as_secs_f64() * 1000.0,
        size: args.size,
        link: link.config(),
        self_check: check.summary(),
        downloads,
        versions: report::versions(),
    })
}

async fn download(
    version: HttpVersion,
    addr: SocketAddr,
    ca: std::path::PathBuf,
    size: u64,
    started: std::sync::mpsc::Sender<()>,
) -> Result<Download, LabError> {
    let opts = ClientOptions { trust: Trust::CaFile(ca), ..Default::default() };
    let target = |path: &str| -> Result<Target, LabError> {
        let uri: http::Uri =
            format!("https://localhost:{}{path}", addr.port()).parse().map_err(std::io::Error::other)?;
        Ok(Target { host: "localhost".into(), port: addr.port(), uri, addr: Some(addr) })
    };
    let protocol = if version == HttpVersion::H3 { "HTTP/3" } else { "HTTP/2" };
    let t_bytes = target(&format!("/bytes/{size}"))?;
    let client = Client::new(version, &opts)?;
    let conn = client.connect(&t_bytes).await?;
    let start = Instant::now();
    let ms = |start: Instant| start.elapsed().as_secs_f64() * 1000.0;
    let mut series = vec![(0.0, 0u64)];
    let mut got = 0u64;
    let mut ok_content = true;
    let mut error = None;
    let _ = started.send(());
    match conn.send(client::request(&t_bytes, http::Method::GET, Bytes::new())?).await {
        Ok(resp) => {
            let mut body = resp.into_body();
            loop {
                match body.frame().await {
                    Some(Ok(f)) => {
                        if let Ok(d) = f.into_data() {
                            ok_content &= check_pattern(&d, got);
                            got += d.len() as u64;
                            series.push((ms(start), got));
                        }
                    }
                    Some(Err(e)) => {
                        error = Some(e.to_string());
                        break;
                    }
                    None => break,
                }
            }
        }
        Err(e) => error = Some(e.to_string()),
    }
    let mut d = Download {
        protocol,
        series: Vec::new(),
        longest_pause_ms: 0.0,
        pause_started_ms: 0.0,
        connection_broke: error.is_some() || got < size,
        bytes_before_break: got,
        broke_at_ms: None,
        error,
        reconnects: 0,
        server_path_changes: None,
        total_ms: 0.0,
        complete: false,
    };
    if !d.connection_broke {
        // Ask the server, on the same connection, how many path changes it saw.
        let t_conn = target("/conn")?;
        if let Ok(resp) = conn.send(client::request(&t_conn, http::Method::GET, Bytes::new())?).await {
            if let Ok(body) = resp.into_body().collect().await {
                let j: serde_json::Value = serde_json::from_slice(&body.to_bytes()).unwrap_or_default();
                d.server_path_changes = j["path_changes"].as_u64();
            }
        }
    } else {
        d.broke_at_ms = Some(ms(start));
        // A new connection, resuming where the old one stopped (RFC 9110 §14.2).
        while got < size && d.reconnects < 3 {
            d.reconnects += 1;
            let fresh = Client::new(version, &opts)?;
            let Ok(conn2) = fresh.connect(&t_bytes).await else { continue };
            let mut req = client::request(&t_bytes, http::Method::GET, Bytes::new())?;
            if let Ok(v) = http::HeaderValue::from_str(&format!("bytes={got}-")) {
                req.headers_mut().insert(http::header::RANGE, v);
            }
            let Ok(resp) = conn2.send(req).await else { continue };
            let mut body = resp.into_body();
            while let Some(Ok(f)) = body.frame().await {
                if let Ok(data) = f.into_data() {
                    ok_content &= check_pattern(&data, got);
                    got += data.len() as u64;
                    series.push((ms(start), got));
                }
            }
            conn2.close().await;
        }
    }
    conn.close().await;
    d.total_ms = ms(start);
    d.complete = ok_content && got == size;
    let (gap, at) =
        series.windows(2).map(|w| (w[1].0 - w[0].0, w[0].0)).fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
    d.longest_pause_ms = gap;
    d.pause_started_ms = at;
    d.series = series;
    Ok(d)
}

fn check_pattern(data: &[u8], offset: u64) -> bool {
    data.iter().enumerate().all(|(i, b)| *b == crate::web::routes::pattern_byte(offset + i as u64))
}

/// Write `results.json`, `report.md` and `migrate.svg`.
pub fn write_outputs(out: &std::path::Path, r: &MigrateResults) -> Result<(), LabError> {
    let dir = report::ResultsDir::create(out)?;
    dir.write_json(r)?;
    let mut md = format!(
        "# NAT rebinding during a download\n\nThe relay rewrote the client's port {:.0} ms into each download of {} \
         bytes.\n\n",
        r.rebind_at_ms, r.size
    );
    let rows: Vec<Vec<String>> = r
        .downloads
        .iter()
        .map(|d| {
            vec![
                d.protocol.to_string(),
                if d.connection_broke { "no: died, restarted".into() } else { "yes".into() },
                format!("{:.0}", d.longest_pause_ms),
                d.server_path_changes.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                d.reconnects.to_string(),
                format!("{:.0}", d.total_ms),
                d.complete.to_string(),
            ]
        })
        .collect();
    md += &report::md_table(
        &[
            "protocol",
            "connection survived",
            "longest pause (ms)",
            "server path changes",
            "reconnects",
            "total (ms)",
            "complete",
        ],
        &rows,
    );
    md += "\nTime line:\n\n";
    for d in &r.downloads {
        md += &format!("- {}\n", timeline(d, r.rebind_at_ms).trim());
    }
    md += &format!("\nLink self-check:\n\n```\n{}```\n", r.self_check);
    dir.write_markdown(&md)?;
    let series: Vec<Series> = r
        .downloads
        .iter()
        .map(|d| Series::line(d.protocol, d.series.iter().map(|(t, b)| (*t, *b as f64 / 1e6)).collect()))
        .collect();
    report::plot(&dir.path("migrate.svg"), "Download across a NAT rebinding", "time (ms)", "MB received", &series)?;
    Ok(())
}
