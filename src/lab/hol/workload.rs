//! What the client does in one timed part, per HTTP workload, over connections already open.
//! Every request records when it was sent and when its last body byte arrived (ms from the
//! start of the timed part) and the stream it went on, so the stall analysis can be joined to it.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Serialize;

use super::Workload;
use crate::client::{self, ClientError, HttpConnection, Target};
use crate::lab::LabError;

/// One request of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// Which object of the workload (index into its list of sizes).
    pub object: usize,
    /// Round (small), position (sequential), 0 for the HTML and 1 for subresources (page), 0 (bulk).
    pub round: usize,
    /// Which connection of the run carried it.
    pub conn: usize,
    /// Response body bytes.
    pub size: u64,
    /// When it was sent, ms from the start of the timed part.
    pub start_ms: f64,
    /// When its last body byte arrived, ms from the start of the timed part.
    pub end_ms: f64,
    /// The stream it went on (HTTP/2 stream id or QUIC stream id), when the client reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<u64>,
    /// From the stall analysis of the run: bytes of this response in packets the link dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_bytes: Option<u64>,
    /// From the stall analysis: how long bytes of this response sat received but undeliverable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall_ms: Option<f64>,
    /// The part of `stall_ms` spent waiting for OTHER streams' missing bytes (head-of-line
    /// blocking across streams).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collateral_stall_ms: Option<f64>,
}

impl RequestRecord {
    /// Send to last byte.
    pub fn latency_ms(&self) -> f64 {
        self.end_ms - self.start_ms
    }
}

/// The web-page-like mix of `page`: one HTML document, then every subresource requested at once
/// when it has arrived, as a browser does after parsing. The sizes (bytes) are a fixed,
/// illustrative mix — a few scripts and style sheets of tens of kB, many images from a few kB to
/// 80 kB, fonts, and small icons — not a measured corpus: 31 objects, 1,005,000 bytes.
pub const PAGE: [u64; 31] = [
    30_000, // the HTML document
    25_000, 60_000, // style sheets
    15_000, 40_000, 90_000, 120_000, // scripts
    3_000, 5_000, 8_000, 12_000, 15_000, 20_000, 24_000, 30_000, 35_000, 40_000, 45_000, 50_000, 55_000, 60_000,
    70_000, 80_000, // images
    30_000, 45_000, // fonts
    1_000, 1_500, 2_000, 2_500, 3_000, 5_000, // icons and small files
];

/// The plan of one workload's timed part.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadShape {
    /// Requests sent at once per round (small), requests in a row (sequential), objects (page),
    /// concurrent requests (bulk).
    pub requests: usize,
    /// Response size of every request (bulk, small, sequential); `page` uses [`PAGE`].
    pub size: u64,
    /// Rounds per run (small: all requests of a round together, the next round when all are in;
    /// page: page loads per run; 1 otherwise).
    pub rounds: usize,
}

impl WorkloadShape {
    /// Sizes of the objects of one round.
    pub fn sizes(&self, w: Workload) -> Vec<u64> {
        match w {
            Workload::Page => PAGE.to_vec(),
            _ => vec![self.size; self.requests],
        }
    }
}

fn elapsed_ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1000.0
}

/// GET `/bytes/{size}` on `conn`, read the whole body; (start, end, stream id).
async fn fetch(
    conn: &HttpConnection,
    target: &Target,
    size: u64,
    t0: Instant,
) -> Result<(f64, f64, Option<u64>), LabError> {
    let url = format!("https://{}:{}/bytes/{size}", target.host, target.port);
    let uri: http::Uri = url.parse().map_err(|source| ClientError::Uri { url, source })?;
    let t = Target { uri, ..target.clone() };
    let req = client::request(&t, http::Method::GET, Bytes::new())?;
    let start = elapsed_ms(t0);
    let resp = conn.send(req).await?;
    let stream_id = resp.extensions().get::<client::StreamId>().map(|s| s.0);
    let body = resp.into_body().collect().await.map_err(ClientError::Body)?.to_bytes();
    let end = elapsed_ms(t0);
    if body.len() as u64 != size {
        return Err(LabError::Experiment(format!("short body: {} of {size} bytes", body.len())));
    }
    Ok((start, end, stream_id))
}

/// One untimed `GET /bytes/1` on every connection, all at once, before the timed part.
///
/// Why: a request written the moment the client's handshake completes can leave the client
/// before its own TLS Finished, and quinn 0.11's server drops 1-RTT packets that arrive while
/// its handshake is still open (quinn-proto `handle_packet`: "dropping short packet during
/// handshake"), so on a rate-limited link the first HTTP/3 request was resent only at the probe
/// timeout, two RTTs late, in every run. That is a handshake artefact, not head-of-line
/// blocking; after one exchange both protocols start the timed part on a confirmed connection.
pub(crate) async fn warm_up(conns: &[Arc<HttpConnection>], target: &Target) -> Result<(), LabError> {
    let t0 = Instant::now();
    let tasks = conns.iter().map(|c| fetch(c, target, 1, t0));
    for r in futures_util::future::join_all(tasks).await {
        r?;
    }
    Ok(())
}

/// Run the workload's timed part over `conns` (one, or one per request for the bulk control
/// arms), from `t0`.
pub(crate) async fn run(
    w: Workload,
    shape: &WorkloadShape,
    conns: &[Arc<HttpConnection>],
    target: &Target,
    t0: Instant,
) -> Result<Vec<RequestRecord>, LabError> {
    let sizes = shape.sizes(w);
    let mut out = Vec::new();
    let record = |object: usize, round: usize, conn: usize, size: u64, (start_ms, end_ms, stream_id)| RequestRecord {
        object,
        round,
        conn,
        size,
        start_ms,
        end_ms,
        stream_id,
        lost_bytes: None,
        stall_ms: None,
        collateral_stall_ms: None,
    };
    match w {
        Workload::Sequential => {
            for (i, &size) in sizes.iter().enumerate() {
                let r = fetch(&conns[0], target, size, t0).await?;
                out.push(record(i, i, 0, size, r));
            }
        }
        Workload::Small | Workload::Bulk => {
            for round in 0..shape.rounds.max(1) {
                let tasks = sizes.iter().enumerate().map(|(i, &size)| {
                    let c = i % conns.len();
                    async move { (i, c, size, fetch(&conns[c], target, size, t0).await) }
                });
                for (i, c, size, r) in futures_util::future::join_all(tasks).await {
                    out.push(record(i, round, c, size, r?));
                }
            }
        }
        Workload::Page => {
            for load in 0..shape.rounds.max(1) {
                let html = fetch(&conns[0], target, sizes[0], t0).await?;
                out.push(record(0, 2 * load, 0, sizes[0], html));
                let tasks = sizes
                    .iter()
                    .enumerate()
                    .skip(1)
                    .map(|(i, &size)| async move { (i, size, fetch(&conns[0], target, size, t0).await) });
                for (i, size, r) in futures_util::future::join_all(tasks).await {
                    out.push(record(i, 2 * load + 1, 0, size, r?));
                }
            }
        }
        Workload::Mqtt => {}
    }
    Ok(out)
}
