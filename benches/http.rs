//! HTTP benchmarks, side by side in one run (release build, loopback):
//!
//! 1. bulk download over one connection: HTTP/3 vs HTTP/2 vs a raw quinn stream (the ceiling);
//! 2. request rate: 1 KiB responses, 100 concurrent streams on one connection, HTTP/3 vs HTTP/2,
//!    both driven by this one load generator;
//! 3. server memory per idle HTTP/3 connection at 1,000 connections (RSS delta / N, from /proc,
//!    of a `quiclab serve` child process).
//!
//! The servers of 1 and 2 run in this process on their own one-thread runtime; the client runs
//! on the main thread's current-thread runtime: one core each. Every figure is the median of
//! `RUNS` runs, taken in an interleaved order so drift on a shared machine hits all arms alike.
//!
//! Run: `cargo bench --bench http` (options: `-- --runs 7 --bulk 256M --rate-secs 3`).
//! Results go to standard output as a Markdown table (copied into docs/BENCHMARKS.md).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use quiclab::client::{Client, ClientOptions, HttpConnection, HttpVersion, Target};
use quiclab::config::ServerConfig;
use quiclab::server::Server;
use quiclab::tls::{CertStore, Trust};

struct Opts {
    /// `all`, `bulk`, `rate` or `memory`.
    only: String,
    /// Extra arguments for the `quiclab serve` of the memory measurement.
    serve_args: Vec<String>,
    runs: usize,
    bulk: u64,
    rate_secs: f64,
    idle_conns: usize,
}

fn parse_opts() -> Opts {
    let mut o =
        Opts { only: "all".into(), serve_args: vec![], runs: 5, bulk: 256 << 20, rate_secs: 3.0, idle_conns: 1000 };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let val = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--runs" => o.runs = val.parse().expect("--runs N"),
            "--bulk" => o.bulk = quiclab::config::parse_size(&val).expect("--bulk SIZE"),
            "--rate-secs" => o.rate_secs = val.parse().expect("--rate-secs S"),
            "--idle-conns" => o.idle_conns = val.parse().expect("--idle-conns N"),
            "--only" => o.only = val,
            "--serve-args" => o.serve_args = val.split_whitespace().map(String::from).collect(),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

const RAW_ALPN: &[u8] = b"quiclab-raw";

/// The ceiling: a bare quinn server that answers an 8-byte length with that many bytes on the
/// same stream, with the same TLS and transport configuration as the HTTP/3 endpoint.
async fn raw_server(store: &CertStore) -> (quinn::Endpoint, SocketAddr) {
    let tls = quiclab::tls::quic_server_config(store, &[RAW_ALPN]).unwrap();
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(tls));
    sc.transport_config(Arc::new(quiclab::quic::transport_config(&Default::default()).unwrap()));
    let ep = quinn::Endpoint::server(sc, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    let ep2 = ep.clone();
    tokio::spawn(async move {
        while let Some(inc) = ep2.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = inc.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let mut len = [0u8; 8];
                        if recv.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut left = u64::from_be_bytes(len);
                        let chunk = Bytes::from(vec![7u8; 64 << 10]);
                        while left > 0 {
                            let n = left.min(chunk.len() as u64) as usize;
                            if send.write_chunk(chunk.slice(..n)).await.is_err() {
                                return;
                            }
                            left -= n as u64;
                        }
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    (ep, addr)
}

async fn raw_client(addr: SocketAddr, ca: &std::path::Path) -> quinn::Connection {
    let tls = quiclab::tls::client_config(&Trust::CaFile(ca.to_path_buf()), &[RAW_ALPN], true).unwrap();
    let mut cc = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
    cc.transport_config(Arc::new(quiclab::quic::transport_config(&Default::default()).unwrap()));
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.connect_with(cc, addr, "localhost").unwrap().await.unwrap()
}

async fn raw_download(conn: &quinn::Connection, n: u64) -> f64 {
    let t = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&n.to_be_bytes()).await.unwrap();
    send.finish().unwrap();
    let mut got = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.unwrap() {
        got += chunk.bytes.len() as u64;
    }
    assert_eq!(got, n);
    t.elapsed().as_secs_f64()
}

async fn http_download(conn: &HttpConnection, url: &str, n: u64) -> f64 {
    let target = Target::parse(url).unwrap();
    let t = Instant::now();
    let req = quiclab::client::request(&target, http::Method::GET, Bytes::new()).unwrap();
    let resp = conn.send(req).await.unwrap();
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            got += d.len() as u64;
        }
    }
    assert_eq!(got, n);
    t.elapsed().as_secs_f64()
}

/// Requests per second with `concurrency` requests in flight on one connection for `secs`.
async fn request_rate(conn: Arc<HttpConnection>, url: &str, concurrency: usize, secs: f64) -> f64 {
    let target = Target::parse(url).unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..concurrency {
        let conn = conn.clone();
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let req = quiclab::client::request(&target, http::Method::GET, Bytes::new()).unwrap();
                let resp = conn.send(req).await.unwrap();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body.len(), 1024);
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn main() {
    let o = parse_opts();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let store = CertStore::load_or_create(&certs).unwrap();
    let ca = certs.join("ca.pem");

    // Servers: their own runtime, one worker thread.
    let server_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (server, raw_ep, raw_addr) = server_rt.block_on(async {
        let mut cfg = ServerConfig::ephemeral(&certs);
        cfg.limits.max_bytes = 16 << 30;
        let server = Server::start(cfg).await.unwrap();
        let (ep, addr) = raw_server(&store).await;
        (server, ep, addr)
    });
    let quic_port = server.quic_addr().port();
    let tcp_port = server.tcp_addr().port();

    // Client: this thread.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let opts = ClientOptions { trust: Trust::CaFile(ca.clone()), ..Default::default() };
        let h3 = Client::new(HttpVersion::H3, &opts).unwrap();
        let h2 = Client::new(HttpVersion::H2, &opts).unwrap();
        let h3_url = |p: &str| format!("https://localhost:{quic_port}{p}");
        let h2_url = |p: &str| format!("https://localhost:{tcp_port}{p}");
        let h3c = h3.connect(&Target::parse(&h3_url("/")).unwrap()).await.unwrap();
        let h2c = h2.connect(&Target::parse(&h2_url("/")).unwrap()).await.unwrap();
        let raw = raw_client(raw_addr, &ca).await;

        if o.only != "all" && o.only != "bulk" && o.only != "rate" {
            return;
        }
        if o.only == "all" || o.only == "bulk" {
            println!("## Bulk download, one connection, {} MiB, {} runs (Gbit/s)\n", o.bulk >> 20, o.runs);
            let bulk_path = format!("/bytes/{}", o.bulk);
            // Warm-up: windows and congestion state open up once per connection.
            raw_download(&raw, 16 << 20).await;
            http_download(&h3c, &h3_url("/bytes/16M"), 16 << 20).await;
            http_download(&h2c, &h2_url("/bytes/16M"), 16 << 20).await;
            let (mut r_raw, mut r_h3, mut r_h2) = (vec![], vec![], vec![]);
            let gbps = |secs: f64| o.bulk as f64 * 8.0 / secs / 1e9;
            for _ in 0..o.runs {
                r_raw.push(gbps(raw_download(&raw, o.bulk).await));
                r_h3.push(gbps(http_download(&h3c, &h3_url(&bulk_path), o.bulk).await));
                r_h2.push(gbps(http_download(&h2c, &h2_url(&bulk_path), o.bulk).await));
            }
            let (m_raw, m_h3, m_h2) = (median(r_raw.clone()), median(r_h3.clone()), median(r_h2.clone()));
            println!("| arm | median Gbit/s | runs |\n|---|---|---|");
            let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
            println!("| raw quinn stream | {m_raw:.2} | {} |", fmt(&r_raw));
            println!("| HTTP/3 | {m_h3:.2} | {} |", fmt(&r_h3));
            println!("| HTTP/2 | {m_h2:.2} | {} |", fmt(&r_h2));
            println!(
                "\nHTTP/3 / raw quinn = {:.2} (goal >= 0.90); HTTP/3 / HTTP/2 = {:.2}\n",
                m_h3 / m_raw,
                m_h3 / m_h2
            );
        }
        if o.only != "all" && o.only != "rate" {
            return;
        }

        println!(
            "## Request rate, 1 KiB responses, 100 concurrent streams, one connection, {} s x {} runs\n",
            o.rate_secs, o.runs
        );
        let h3c = Arc::new(h3c);
        let h2c = Arc::new(h2c);
        let (mut q3, mut q2) = (vec![], vec![]);
        request_rate(h3c.clone(), &h3_url("/bytes/1k"), 100, 0.5).await;
        request_rate(h2c.clone(), &h2_url("/bytes/1k"), 100, 0.5).await;
        for _ in 0..o.runs {
            q3.push(request_rate(h3c.clone(), &h3_url("/bytes/1k"), 100, o.rate_secs).await);
            q2.push(request_rate(h2c.clone(), &h2_url("/bytes/1k"), 100, o.rate_secs).await);
        }
        let (m3, m2) = (median(q3.clone()), median(q2.clone()));
        let fmtk = |v: &[f64]| v.iter().map(|x| format!("{:.1}k", x / 1000.0)).collect::<Vec<_>>().join(", ");
        println!("| arm | median req/s | runs |\n|---|---|---|");
        println!("| HTTP/3 | {:.1}k | {} |", m3 / 1000.0, fmtk(&q3));
        println!("| HTTP/2 | {:.1}k | {} |", m2 / 1000.0, fmtk(&q2));
        println!("\nHTTP/3 / HTTP/2 = {:.2} (goal >= 0.8); HTTP/3 goal >= 100k req/s\n", m3 / m2);
    });
    drop(raw_ep);
    server_rt.block_on(server.shutdown());

    // Memory per idle HTTP/3 connection: a real `quiclab serve` process.
    if o.only != "all" && o.only != "memory" {
        return;
    }
    println!("## Server memory per idle HTTP/3 connection ({} connections; serve {:?})\n", o.idle_conns, o.serve_args);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_quiclab"))
        .args(["serve", "--listen", "127.0.0.1:0", "--no-mqtt", "--certs"])
        .arg(&certs)
        .args(&o.serve_args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Keep reading the child's stdout on a thread, so it never writes into a closed pipe.
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("(UDP ").nth(1) {
                let port: u16 = rest.trim_end_matches(')').rsplit(':').next().unwrap().parse().unwrap();
                let _ = port_tx.send(port);
            }
        }
    });
    let port = port_rx.recv_timeout(Duration::from_secs(30)).expect("quiclab serve prints its port");
    let pid = child.id();
    rt.block_on(async {
        let opts = ClientOptions { trust: Trust::CaFile(ca.clone()), ..Default::default() };
        let client = Client::new(HttpVersion::H3, &opts).unwrap();
        let target = Target::parse(&format!("https://localhost:{port}/status/200")).unwrap();
        // One connection first so lazily-initialised state is not counted per connection.
        let warm = client.connect(&target).await.unwrap();
        warm.send(quiclab::client::request(&target, http::Method::GET, Bytes::new()).unwrap()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib(pid);
        let mut conns = Vec::with_capacity(o.idle_conns);
        for _ in 0..o.idle_conns {
            let c = client.connect(&target).await.unwrap();
            let r = c.send(quiclab::client::request(&target, http::Method::GET, Bytes::new()).unwrap()).await.unwrap();
            assert_eq!(r.status(), 200);
            conns.push(c);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss_kib(pid);
        let per = (after as f64 - before as f64) / o.idle_conns as f64;
        println!("| RSS before | RSS after | per connection |\n|---|---|---|");
        println!("| {before} KiB | {after} KiB | {per:.1} KiB |");
        println!("\ngoal <= 32 KiB per idle connection\n");
        drop(conns);
    });
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
}
