//! `quiclab lab flow`: per-stream flow control, made visible.
//!
//! K streams download at once on one QUIC connection. After `--stall-after` bytes the client
//! stops reading one of them for `--stall`; the others keep reading. QUIC flow control is per
//! stream (RFC 9000 §4.1): the stalled stream's sender runs out of *stream* credit and blocks,
//! while the other streams, with credit of their own, finish at full speed. TCP has one byte
//! stream, so one stalled reader would stop every multiplexed stream (HTTP/2 flow control
//! sits on top of it, but a stalled TCP receive buffer stops all of them).
//!
//! quinn grants credit (MAX_STREAM_DATA) once it can raise the limit by a window/8 or more, so
//! the blocked sender stops between 7W/8 and W stream bytes beyond what the reader consumed.
//! The server measures its own write offset while the reader is stalled; `flow.json` reports,
//! in stream bytes: `window` (W), `consumed` (read by the client on that stream when it
//! stalled) and `blocked_at` (the server's offset when blocked, minus `consumed`).
//!
//! The transfer is raw QUIC (ALPN `quiclab-flow`) on its own endpoint with quiclab's transport
//! configuration, so stream offsets are application bytes, with no HTTP/3 framing in them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::report::{self, Series};
use super::LabError;
use crate::config::TransportConfig;

const ALPN: &[u8] = b"quiclab-flow";

/// What `quiclab lab flow` runs with (the binary fills it from its command line).
#[derive(Debug, Clone)]
pub struct FlowParams {
    /// Write flow.json, flow.md and flow.svg into DIR (created if missing; may exist).
    pub out: std::path::PathBuf,
    /// Streams downloading at once on the one connection.
    pub streams: usize,
    /// Bytes each stream downloads.
    pub size: u64,
    /// Per-stream receive window W (client side; the subject of the demonstration).
    pub stream_window: u64,
    /// Connection receive window (client side); large, so only stream credit limits the stall.
    pub conn_window: u64,
    /// The stalled stream stops being read after this many bytes.
    pub stall_after: u64,
    /// How long the client stops reading it.
    pub stall: Duration,
}

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FlowResult {
    /// Per-stream receive window W, bytes.
    pub window: u64,
    /// Bytes of the stalled stream the client had read when it stopped reading.
    pub consumed: u64,
    /// The server's write offset on the stalled stream while the client was stalled, minus `consumed`.
    pub blocked_at: u64,
    /// The server's absolute write offset while blocked.
    pub server_offset_blocked: u64,
    /// 7W/8 and W: the range quinn's credit policy predicts for `blocked_at`.
    pub expected_range: (u64, u64),
    /// Index of the stalled stream.
    pub stalled_stream: usize,
    /// Stall length, ms.
    pub stall_ms: f64,
    /// Milliseconds (from the start) at which each stream completed.
    pub completed_ms: Vec<f64>,
    /// Other streams that completed before the stalled reader resumed.
    pub completed_during_stall: usize,
    /// Client bytes read per stream over time: (ms, bytes).
    pub client_series: Vec<Vec<(f64, u64)>>,
    /// Server bytes written on the stalled stream over time: (ms, bytes).
    pub server_series: Vec<(f64, u64)>,
    /// The configuration.
    pub config: FlowConfigRecord,
    /// Software versions.
    pub versions: report::Versions,
}

/// The configuration as recorded in `flow.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FlowConfigRecord {
    pub streams: usize,
    pub size: u64,
    pub stream_window: u64,
    pub conn_window: u64,
    pub stall_after: u64,
    pub stall_ms: f64,
}

/// Run the demonstration and write its outputs; the exit status.
pub async fn run_flow(args: FlowParams) -> Result<i32, LabError> {
    let result = measure(&args).await?;
    // Writes files and draws a plot: off the runtime.
    let out = args.out.clone();
    let result = tokio::task::spawn_blocking(move || write_outputs(&out, &result).map(|()| result)).await??;
    let (lo, hi) = result.expected_range;
    println!(
        "window W = {} B; stalled stream consumed {} B; server blocked at consumed + {} B (expected {}..={}); \
         {} of {} other streams completed during the {:.0} ms stall",
        result.window,
        result.consumed,
        result.blocked_at,
        lo,
        hi,
        result.completed_during_stall,
        result.completed_ms.len() - 1,
        result.stall_ms
    );
    println!("results in {}", args.out.display());
    let ok = (lo..=hi).contains(&result.blocked_at);
    Ok(if ok { 0 } else { 1 })
}

/// Server-side record of the stalled stream's write progress.
#[derive(Default)]
struct ServerLog {
    series: Vec<(Instant, u64)>,
}

/// Run one transfer on loopback and measure it.
pub async fn measure(args: &FlowParams) -> Result<FlowResult, LabError> {
    if args.streams < 2 {
        return Err(LabError::Config("--streams must be at least 2".into()));
    }
    if args.stall_after >= args.size {
        return Err(LabError::Config("--stall-after must be smaller than --size".into()));
    }
    let dir = std::env::temp_dir().join(format!("quiclab-flow-{}", std::process::id()));
    tokio::fs::create_dir_all(&dir).await?;
    // Reads or generates certificates and keys: blocking file work, off the runtime.
    let store = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || crate::tls::CertStore::load_or_create(&dir)).await??
    };
    let ca = dir.join("ca.pem");

    // Server: quiclab's transport defaults, one endpoint on loopback.
    let tls = crate::tls::quic_server_config(&store, &[ALPN])?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(tls));
    let tc = crate::quic::transport_config(&TransportConfig::default())?;
    sc.transport_config(Arc::new(tc));
    let server = quinn::Endpoint::server(sc, SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let server_addr = server.local_addr()?;
    let logs: Arc<Mutex<Vec<ServerLog>>> =
        Arc::new(Mutex::new((0..args.streams).map(|_| ServerLog::default()).collect()));
    let (size, streams) = (args.size, args.streams);
    let srv_logs = logs.clone();
    let srv = server.clone();
    let server_task = tokio::spawn(async move {
        let Some(incoming) = srv.accept().await else { return };
        let Ok(conn) = incoming.await else { return };
        let mut tasks = Vec::new();
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let logs = srv_logs.clone();
            tasks.push(tokio::spawn(async move {
                // Request: the stream's index (u32).
                let mut idx = [0u8; 4];
                if recv.read_exact(&mut idx).await.is_err() {
                    return;
                }
                let idx = u32::from_be_bytes(idx) as usize;
                let chunk = Bytes::from(vec![0x5au8; 16 << 10]);
                let mut offset = 0u64;
                while offset < size {
                    let n = (size - offset).min(chunk.len() as u64) as usize;
                    match send.write(&chunk[..n]).await {
                        Ok(w) => offset += w as u64,
                        Err(_) => return,
                    }
                    if let Some(log) = logs.lock().unwrap_or_else(|e| e.into_inner()).get_mut(idx) {
                        log.series.push((Instant::now(), offset));
                    }
                }
                let _ = send.finish();
                let _ = send.stopped().await;
            }));
            if tasks.len() == streams {
                break;
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    });

    // Client: windows from the arguments.
    let client_tls = crate::tls::client_config(&crate::tls::Trust::CaFile(ca), &[ALPN], true)?;
    let quic_tls = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).map_err(std::io::Error::other)?;
    let mut cc = quinn::ClientConfig::new(Arc::new(quic_tls));
    let transport =
        TransportConfig { stream_window: args.stream_window, conn_window: args.conn_window, ..Default::default() };
    cc.transport_config(Arc::new(crate::quic::transport_config(&transport)?));
    let client = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let conn = client.connect_with(cc, server_addr, "localhost").map_err(std::io::Error::other)?.await?;

    let start = Instant::now();
    let stalled = 0usize;
    let stall_window: Arc<Mutex<Option<(Instant, Instant)>>> = Arc::default();
    let mut readers = Vec::new();
    for idx in 0..args.streams {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&(idx as u32).to_be_bytes()).await.map_err(std::io::Error::other)?;
        let _ = send.finish();
        let (stall_after, stall, window) = (args.stall_after, args.stall, stall_window.clone());
        readers.push(tokio::spawn(async move {
            let mut got = 0u64;
            let mut series = vec![(0.0, 0u64)];
            let mut stalled_once = false;
            loop {
                let limit = if idx == stalled && !stalled_once { (stall_after - got) as usize } else { 64 << 10 };
                match recv.read_chunk(limit.max(1), true).await {
                    Ok(Some(c)) => got += c.bytes.len() as u64,
                    Ok(None) => break,
                    Err(_) => break,
                }
                series.push((start.elapsed().as_secs_f64() * 1000.0, got));
                if idx == stalled && !stalled_once && got >= stall_after {
                    stalled_once = true;
                    let t0 = Instant::now();
                    tokio::time::sleep(stall).await;
                    *window.lock().unwrap_or_else(|e| e.into_inner()) = Some((t0, Instant::now()));
                    series.push((start.elapsed().as_secs_f64() * 1000.0, got));
                }
            }
            (got, series, start.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut client_series = Vec::new();
    let mut completed_ms = Vec::new();
    for r in readers {
        let (got, series, done) = r.await?;
        if got != args.size {
            return Err(LabError::Experiment(format!("a stream ended after {got} of {} bytes", args.size)));
        }
        client_series.push(series);
        completed_ms.push(done);
    }
    conn.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(2), server_task).await;
    client.close(0u32.into(), b"");
    server.close(0u32.into(), b"");

    let (t0, t1) = stall_window
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .ok_or_else(|| LabError::Experiment("the stall never happened".into()))?;
    let logs = logs.lock().unwrap_or_else(|e| e.into_inner());
    let slog = &logs[stalled].series;
    // The server's offset at the end of the stall: the last write that completed before the
    // reader resumed. Writes then were blocked by stream credit.
    let server_offset_blocked = slog.iter().take_while(|(t, _)| *t <= t1).map(|(_, o)| *o).last().unwrap_or(0);
    let consumed = args.stall_after;
    let w = args.stream_window;
    let stall_end_ms = t1.duration_since(start).as_secs_f64() * 1000.0;
    let completed_during_stall =
        completed_ms.iter().enumerate().filter(|(i, ms)| *i != stalled && **ms <= stall_end_ms).count();
    Ok(FlowResult {
        window: w,
        consumed,
        blocked_at: server_offset_blocked.saturating_sub(consumed),
        server_offset_blocked,
        expected_range: (w * 7 / 8, w),
        stalled_stream: stalled,
        stall_ms: (t1 - t0).as_secs_f64() * 1000.0,
        completed_ms,
        completed_during_stall,
        client_series,
        server_series: slog.iter().map(|(t, o)| (t.duration_since(start).as_secs_f64() * 1000.0, *o)).collect(),
        config: FlowConfigRecord {
            streams: args.streams,
            size: args.size,
            stream_window: args.stream_window,
            conn_window: args.conn_window,
            stall_after: args.stall_after,
            stall_ms: args.stall.as_secs_f64() * 1000.0,
        },
        versions: report::versions(),
    })
}

/// Write `flow.json`, `flow.md` and `flow.svg` into `out`.
pub fn write_outputs(out: &std::path::Path, r: &FlowResult) -> Result<(), LabError> {
    let dir = report::ResultsDir::create(out)?;
    dir.write("flow.json", serde_json::to_vec_pretty(r).map_err(report::ReportError::Json)?)?;
    let mut md = String::from("# Per-stream flow control\n\n");
    md += &format!(
        "Stream window W = {} B. The client stopped reading stream {} after {} B for {:.0} ms; the server's \
         write offset on it stayed at {} B, i.e. consumed + {} B (quinn's credit policy predicts {}..={}).\n\n",
        r.window,
        r.stalled_stream,
        r.consumed,
        r.stall_ms,
        r.server_offset_blocked,
        r.blocked_at,
        r.expected_range.0,
        r.expected_range.1
    );
    let rows: Vec<Vec<String>> = r
        .completed_ms
        .iter()
        .enumerate()
        .map(|(i, ms)| {
            vec![
                i.to_string(),
                if i == r.stalled_stream { "stalled".into() } else { "read freely".into() },
                format!("{ms:.1}"),
            ]
        })
        .collect();
    md += &report::md_table(&["stream", "reader", "completed at (ms)"], &rows);
    md += "\n\nBytes over time (ms → bytes read by the client):\n\n";
    let mut rows = Vec::new();
    for (i, s) in r.client_series.iter().enumerate() {
        let step = (s.len() / 12).max(1);
        for (t, b) in s.iter().step_by(step) {
            rows.push(vec![i.to_string(), format!("{t:.1}"), b.to_string()]);
        }
    }
    md += &report::md_table(&["stream", "ms", "bytes"], &rows);
    dir.write("flow.md", md)?;
    let mut series: Vec<Series> = r
        .client_series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name =
                if i == r.stalled_stream { format!("stream {i} (stalled reader)") } else { format!("stream {i}") };
            Series::line(name, s.iter().map(|(t, b)| (*t, *b as f64 / 1e6)).collect())
        })
        .collect();
    series.push(Series::line(
        "server writes, stalled stream",
        r.server_series.iter().map(|(t, o)| (*t, *o as f64 / 1e6)).collect(),
    ));
    report::plot(&dir.path("flow.svg"), "Per-stream flow control: one reader stalls", "time (ms)", "MB", &series)?;
    Ok(())
}
