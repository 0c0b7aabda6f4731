//! HTTP benchmarks, side by side in one run (release build, loopback):
//!
//! 1. bulk download over one connection: HTTP/3 vs HTTP/2 vs a raw quinn stream (the ceiling);
//!    the servers run in this process on their own one-thread runtime, the client on the main
//!    thread's current-thread runtime;
//! 2. request rate: 1 KiB responses, 100 concurrent streams on one connection, HTTP/3 vs HTTP/2,
//!    against a `quiclab serve` child process, each protocol driven by three load generators:
//!    this project's own client (`quiclab::client`), `oha` (crates.io, built with its `http3`
//!    feature) and `h2load` (nghttp2, HTTP/2 only); nginx from Debian serves the same 1 KiB over
//!    HTTP/2 beside it as the anchor. Two layouts: *one core* (server `--threads 1` pinned to
//!    core 0, generator pinned to core 1; requests per server CPU-second are the figure to
//!    compare) and *all cores* (server on its default threads, nothing pinned);
//! 3. server memory per idle HTTP/3 connection at 1,000 connections (RSS delta / N, from /proc,
//!    of a `quiclab serve` child process).
//!
//! Every figure is the median of `--runs` runs, taken in an interleaved order so drift on a
//! shared machine hits all arms alike.
//!
//! Run: `cargo bench --bench http` (options: `-- --runs 7 --bulk 256M --rate-secs 3 --only rate
//! --oha PATH --nginx PATH --h2load PATH --baseline-bin PATH`; the last measures an earlier
//! build of `quiclab` beside this one). Results go to standard output as Markdown tables
//! (copied into docs/BENCHMARKS.md). A missing `oha`, `h2load` or `nginx` stops the rate part
//! with the command that installs it (`--no-external` measures the own generator only).

#[path = "../tests/common/proc.rs"]
mod proc;

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
    oha: String,
    h2load: String,
    nginx: String,
    /// Measure the own generator only (no oha, h2load, nginx).
    no_external: bool,
    /// Another `quiclab` binary (an earlier commit's) measured beside this one, as
    /// "quiclab (baseline)": before/after figures from one run.
    baseline_bin: Option<String>,
    /// Extra arguments for the `quiclab serve` of the memory measurement.
    serve_args: Vec<String>,
    runs: usize,
    bulk: u64,
    rate_secs: f64,
    idle_conns: usize,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        only: "all".into(),
        oha: "oha".into(),
        h2load: "h2load".into(),
        nginx: "/usr/sbin/nginx".into(),
        no_external: false,
        baseline_bin: None,
        serve_args: vec![],
        runs: 5,
        bulk: 256 << 20,
        rate_secs: 3.0,
        idle_conns: 1000,
    };
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
            "--oha" => o.oha = val,
            "--h2load" => o.h2load = val,
            "--nginx" => o.nginx = val,
            "--baseline-bin" => o.baseline_bin = Some(val),
            "--no-external" => {
                o.no_external = true;
                i += 1;
                continue;
            }
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

// ---------------------------------------------------------------------------------------------
// Request rate: server processes, three generators, two layouts.

/// The response every request-rate arm asks for: 1 KiB.
const RATE_PATH: &str = "/bytes/1k";
/// Requests in flight on the one connection.
const RATE_STREAMS: usize = 100;
/// How long a server process may take to accept connections.
const READY: Duration = Duration::from_secs(20);

/// Where the server and the generator run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Server `--threads 1` pinned to core 0, generator pinned to core 1.
    OneCore,
    /// Server on its default threads (every core), nothing pinned.
    AllCores,
}

impl Layout {
    fn describe(self) -> &'static str {
        match self {
            Layout::OneCore => {
                "one core: server --threads 1 (nginx: worker_processes 1) pinned to core 0, generator pinned to core 1"
            }
            Layout::AllCores => {
                "all cores: server on its default threads (nginx: worker_processes auto), nothing pinned"
            }
        }
    }
}

/// Which load generator drives an arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gen {
    Own,
    Oha,
    H2load,
}

impl Gen {
    fn name(self) -> &'static str {
        match self {
            Gen::Own => "quiclab client",
            Gen::Oha => "oha",
            Gen::H2load => "h2load",
        }
    }
}

/// One row of the request-rate table and its runs.
struct RateArm {
    server: &'static str,
    h3: bool,
    gen: Gen,
    port: u16,
    /// (requests per second, requests per server CPU-second) of each run.
    runs: Vec<(f64, f64)>,
}

impl RateArm {
    fn protocol(&self) -> &'static str {
        if self.h3 {
            "HTTP/3"
        } else {
            "HTTP/2"
        }
    }
}

/// Requests done (status 200, 1 KiB each) by the own generator: `concurrency` requests in
/// flight on one connection for `secs`; returns (requests, seconds).
async fn request_rate(conn: Arc<HttpConnection>, url: &str, concurrency: usize, secs: f64) -> (u64, f64) {
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
                assert_eq!(resp.status(), 200);
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
    (total, start.elapsed().as_secs_f64())
}

/// oha: one connection, 100 requests in flight, for `secs`; returns (status-200 responses,
/// oha's own elapsed seconds).
fn run_oha(bin: &str, cpu: Option<usize>, h3: bool, url: &str, secs: f64) -> (u64, f64) {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["-z", &format!("{secs}s"), "-c", "1", "-p", &RATE_STREAMS.to_string()])
        .args(["--http-version", if h3 { "3" } else { "2" }])
        // The development certificate's CA is not in oha's store; verification costs nothing
        // per request on a connection that stays open.
        .args(["--insecure", "--no-tui", "--output-format", "json", url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = proc::spawn_pinned(cmd, cpu, "oha").unwrap().wait_with_output().unwrap();
    assert!(out.status.success(), "oha failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("oha --output-format json");
    let ok = v["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
    let others: u64 = v["statusCodeDistribution"]
        .as_object()
        .map_or(0, |m| m.iter().filter(|(k, _)| k.as_str() != "200").filter_map(|(_, n)| n.as_u64()).sum());
    assert_eq!(others, 0, "oha saw statuses other than 200: {}", v["statusCodeDistribution"]);
    (ok, v["summary"]["total"].as_f64().expect("oha's summary.total"))
}

/// h2load (HTTP/2 only): one connection, 100 streams, for `secs`; returns (succeeded requests,
/// h2load's own elapsed seconds).
fn run_h2load(bin: &str, cpu: Option<usize>, url: &str, secs: f64) -> (u64, f64) {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["-D", &format!("{}", secs.ceil() as u64), "-c", "1", "-m", &RATE_STREAMS.to_string(), url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = proc::spawn_pinned(cmd, cpu, "h2load").unwrap().wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // "finished in 3.00s, 54515.67 req/s, 55.53MB/s" and "requests: N total, ... N succeeded, M failed"
    let secs = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split('s').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("h2load printed no 'finished in': {text}"));
    let req_line = text.lines().find(|l| l.starts_with("requests:")).expect("h2load's requests line");
    let field = |name: &str| -> u64 {
        req_line
            .split(',')
            .find_map(|part| part.trim().strip_suffix(name).map(|n| n.trim().trim_start_matches("requests:").trim()))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("h2load's '{name}' in: {req_line}"))
    };
    assert_eq!(field("failed"), 0, "h2load: {req_line}");
    assert_eq!(field("errored"), 0, "h2load: {req_line}");
    (field("succeeded"), secs)
}

/// User + system CPU seconds of a process and its direct children (nginx's workers).
fn tree_cpu_seconds(pid: u32) -> f64 {
    let mut total = proc::proc_cpu_seconds(pid).unwrap();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
        total += proc::proc_cpu_seconds(child).unwrap_or(0.0);
    }
    total
}

/// `quiclab serve` (HTTP/3 and HTTP/2 on one port) with `extra` arguments, pinned to `cpu` if
/// given and killed with this process; ready when its TCP port accepts.
async fn start_quiclab(
    bin: &str,
    certs: &std::path::Path,
    extra: &[String],
    cpu: Option<usize>,
) -> (proc::ChildServer, u16) {
    let spawn = || {
        let port = proc::free_udp_port()?;
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--no-mqtt", "--certs"])
            .arg(certs)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null());
        Ok((proc::spawn_pinned(cmd, cpu, "quiclab serve")?, port))
    };
    proc::spawn_ready("quiclab serve", READY, spawn, |port| proc::tcp_accepts(proc::loopback(port))).await.unwrap()
}

/// nginx serving the same 1 KiB at the same path over HTTP/2 (TLS 1.3, the development
/// certificate), access log off, no limit on requests per connection (nginx's default of 1,000
/// would end the one connection with GOAWAY); ready when its port accepts.
async fn start_nginx(bin: &str, certs: &std::path::Path, layout: Layout) -> (Nginx, u16, tempfile::TempDir) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("quiclab-bench-nginx").tempdir().unwrap();
    // nginx's workers run as `nobody`: readable copies of the (throwaway) certificate and key.
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(certs.join(f), dir.path().join(f)).unwrap();
        std::fs::set_permissions(dir.path().join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(www.join("bytes")).unwrap();
    std::fs::write(www.join("bytes/1k"), vec![b'x'; 1024]).unwrap();
    for d in [&www, &www.join("bytes")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let workers = if layout == Layout::OneCore { "1" } else { "auto" };
    let d = dir.path().display();
    let conf = dir.path().join("nginx.conf");
    let spawn = || {
        let port = proc::free_tcp_port()?;
        std::fs::write(
            &conf,
            format!(
                "# generated by benches/http.rs\n\
                 worker_processes {workers};\n\
                 daemon off;\n\
                 pid {d}/nginx.pid;\n\
                 error_log stderr warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n\
                 access_log off;\n\
                 keepalive_requests 1000000000;\n\
                 keepalive_timeout 300s;\n\
                 client_body_temp_path {d}/body;\n\
                 server {{\n\
                 listen 127.0.0.1:{port} ssl http2;\n\
                 ssl_certificate {d}/cert.pem;\n\
                 ssl_certificate_key {d}/key.pem;\n\
                 ssl_protocols TLSv1.3;\n\
                 http2_max_concurrent_streams {RATE_STREAMS};\n\
                 location / {{ root {d}/www; }}\n\
                 }}\n\
                 }}\n"
            ),
        )
        .map_err(|source| proc::ProcError::Spawn { what: "nginx (writing its configuration)".into(), source })?;
        let mut cmd = std::process::Command::new(bin);
        cmd.arg("-c").arg(&conf).arg("-e").arg("stderr").stdout(std::process::Stdio::null());
        let cpu = (layout == Layout::OneCore).then_some(0);
        Ok((proc::spawn_pinned(cmd, cpu, "nginx")?, port))
    };
    let (child, port) =
        proc::spawn_ready("nginx", READY, spawn, |port| proc::tcp_accepts(proc::loopback(port))).await.unwrap();
    (Nginx(child), port, dir)
}

/// The nginx master process, stopped with SIGTERM when dropped (also when a run panics): the
/// SIGKILL of `ChildServer`'s drop would leave its workers running.
struct Nginx(proc::ChildServer);

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child this process started and has not reaped.
        unsafe { libc::kill(self.0.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.0.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A tool the rate part needs, or the command that installs it.
fn require(tool: &str, install: &str) {
    let found = if tool.contains('/') {
        std::path::Path::new(tool).exists()
    } else {
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
    };
    assert!(found, "{tool} not found: install it with `{install}` (or pass --no-external)");
}

async fn rate_part(o: &Opts, certs: &std::path::Path) {
    if !o.no_external {
        require(&o.oha, "cargo install oha --locked --features http3");
        require(&o.h2load, "apt-get install -y nghttp2-client");
        require(&o.nginx, "apt-get install -y nginx");
    }
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let all_cpus: Vec<usize> = (0..ncpu).collect();
    println!(
        "## Request rate, {RATE_PATH} (1 KiB), {RATE_STREAMS} requests in flight on one connection, {} s x {} runs\n",
        o.rate_secs, o.runs
    );
    for layout in [Layout::OneCore, Layout::AllCores] {
        if layout == Layout::OneCore && ncpu < 2 {
            println!("(one-core layout skipped: this machine has one core)\n");
            continue;
        }
        let gen_cpu = (layout == Layout::OneCore).then_some(1);
        proc::pin_current_thread(if layout == Layout::OneCore { &[1] } else { &all_cpus }).unwrap();
        // One core: `--threads 1` pinned to core 0. Baseline builds may predate the flag; pinned
        // to one core their runtime starts one worker anyway (tokio counts the usable cores).
        let server_cpu = (layout == Layout::OneCore).then_some(0);
        let one_thread: Vec<String> =
            if layout == Layout::OneCore { vec!["--threads".into(), "1".into()] } else { vec![] };
        let (quiclab, qport) = start_quiclab(env!("CARGO_BIN_EXE_quiclab"), certs, &one_thread, server_cpu).await;
        let baseline = match &o.baseline_bin {
            Some(bin) => Some(start_quiclab(bin, certs, &[], server_cpu).await),
            None => None,
        };
        let nginx = if o.no_external { None } else { Some(start_nginx(&o.nginx, certs, layout).await) };
        let mut arms = vec![
            RateArm { server: "quiclab", h3: true, gen: Gen::Own, port: qport, runs: vec![] },
            RateArm { server: "quiclab", h3: false, gen: Gen::Own, port: qport, runs: vec![] },
        ];
        if let Some((_, bport)) = &baseline {
            arms.extend([
                RateArm { server: "quiclab (baseline)", h3: true, gen: Gen::Own, port: *bport, runs: vec![] },
                RateArm { server: "quiclab (baseline)", h3: false, gen: Gen::Own, port: *bport, runs: vec![] },
            ]);
            if !o.no_external {
                arms.push(RateArm {
                    server: "quiclab (baseline)",
                    h3: true,
                    gen: Gen::Oha,
                    port: *bport,
                    runs: vec![],
                });
            }
        }
        if let Some((_, nport, _)) = &nginx {
            arms.extend([
                RateArm { server: "quiclab", h3: true, gen: Gen::Oha, port: qport, runs: vec![] },
                RateArm { server: "quiclab", h3: false, gen: Gen::Oha, port: qport, runs: vec![] },
                RateArm { server: "quiclab", h3: false, gen: Gen::H2load, port: qport, runs: vec![] },
                RateArm { server: "nginx", h3: false, gen: Gen::Own, port: *nport, runs: vec![] },
                RateArm { server: "nginx", h3: false, gen: Gen::Oha, port: *nport, runs: vec![] },
                RateArm { server: "nginx", h3: false, gen: Gen::H2load, port: *nport, runs: vec![] },
            ]);
        }
        let opts = ClientOptions { trust: Trust::CaFile(certs.join("ca.pem")), ..Default::default() };
        let h3 = Client::new(HttpVersion::H3, &opts).unwrap();
        let h2 = Client::new(HttpVersion::H2, &opts).unwrap();
        // Every generator opens its connection per run, the own one before the run's clock
        // and CPU reading start (with a 0.3 s warm-up); oha and h2load inside their run (one
        // handshake in ~100k requests). A connection kept across runs would sit idle past the
        // 30 s idle timeout while the other arms run.
        for _ in 0..o.runs {
            for arm in arms.iter_mut() {
                let server = match arm.server {
                    "quiclab" => &quiclab,
                    "nginx" => &nginx.as_ref().unwrap().0 .0,
                    _ => &baseline.as_ref().unwrap().0,
                };
                let url = format!("https://localhost:{}{RATE_PATH}", arm.port);
                let ip_url = url.replace("localhost", "127.0.0.1");
                let conn = if arm.gen == Gen::Own {
                    let client = if arm.h3 { &h3 } else { &h2 };
                    let c = Arc::new(client.connect(&Target::parse(&url).unwrap()).await.unwrap());
                    request_rate(c.clone(), &url, RATE_STREAMS, 0.3).await;
                    Some(c)
                } else {
                    None
                };
                let cpu0 = tree_cpu_seconds(server.pid());
                let (n, secs) = match (arm.gen, conn) {
                    (Gen::Own, Some(c)) => request_rate(c, &url, RATE_STREAMS, o.rate_secs).await,
                    (Gen::Oha, _) => run_oha(&o.oha, gen_cpu, arm.h3, &ip_url, o.rate_secs),
                    (_, _) => run_h2load(&o.h2load, gen_cpu, &ip_url, o.rate_secs),
                };
                let cpu = tree_cpu_seconds(server.pid()) - cpu0;
                arm.runs.push((n as f64 / secs, n as f64 / cpu.max(1e-9)));
            }
        }
        println!("### {}\n", layout.describe());
        println!("| server | protocol | generator | median req/s | req per server CPU-s | runs (req/s) |");
        println!("|---|---|---|---:|---:|---|");
        let med = |arm: &RateArm| {
            (median(arm.runs.iter().map(|r| r.0).collect()), median(arm.runs.iter().map(|r| r.1).collect()))
        };
        for arm in &arms {
            let (rps, per_cpu) = med(arm);
            let runs = arm.runs.iter().map(|r| format!("{:.1}k", r.0 / 1000.0)).collect::<Vec<_>>().join(", ");
            println!(
                "| {} | {} | {} | {:.1}k | {:.1}k | {runs} |",
                arm.server,
                arm.protocol(),
                arm.gen.name(),
                rps / 1000.0,
                per_cpu / 1000.0
            );
        }
        let find =
            |server: &str, h3: bool, gen: Gen| arms.iter().find(|a| a.server == server && a.h3 == h3 && a.gen == gen);
        println!();
        for gen in [Gen::Own, Gen::Oha, Gen::H2load] {
            let pairs = [
                ("quiclab HTTP/3 / quiclab HTTP/2", ("quiclab", true), ("quiclab", false)),
                ("quiclab HTTP/3 / nginx HTTP/2", ("quiclab", true), ("nginx", false)),
                ("quiclab HTTP/2 / nginx HTTP/2", ("quiclab", false), ("nginx", false)),
                ("quiclab HTTP/3 / baseline HTTP/3", ("quiclab", true), ("quiclab (baseline)", true)),
                ("quiclab HTTP/2 / baseline HTTP/2", ("quiclab", false), ("quiclab (baseline)", false)),
            ];
            for (label, (s1, h1), (s2, h2)) in pairs {
                if let (Some(a), Some(b)) = (find(s1, h1, gen), find(s2, h2, gen)) {
                    let (ma, mb) = (med(a), med(b));
                    println!(
                        "- {}, {label}: {:.2} in req/s, {:.2} in req per server CPU-s",
                        gen.name(),
                        ma.0 / mb.0,
                        ma.1 / mb.1
                    );
                }
            }
        }
        println!();
        drop(nginx);
        drop(quiclab);
        drop(baseline);
    }
    proc::pin_current_thread(&all_cpus).unwrap();
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

        if o.only != "all" && o.only != "bulk" {
            return;
        }
        {
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
    });
    drop(raw_ep);
    server_rt.block_on(server.shutdown());

    if o.only == "all" || o.only == "rate" {
        rt.block_on(rate_part(&o, &certs));
    }

    // Memory per idle HTTP/3 connection: a real `quiclab serve` process.
    if o.only != "all" && o.only != "memory" {
        return;
    }
    println!("## Server memory per idle HTTP/3 connection ({} connections; serve {:?})\n", o.idle_conns, o.serve_args);
    // Idle means idle, not closed: the 30 s default idle timeout would end the first of
    // 10,000 connections before the last is open.
    let mut extra = vec!["--idle-timeout".to_string(), "600s".to_string()];
    extra.extend(o.serve_args.iter().cloned());
    let (server, port) = rt.block_on(start_quiclab(env!("CARGO_BIN_EXE_quiclab"), &certs, &extra, None));
    rt.block_on(async {
        let mut opts = ClientOptions { trust: Trust::CaFile(ca.clone()), ..Default::default() };
        opts.transport.idle_timeout = Duration::from_secs(600);
        let client = Client::new(HttpVersion::H3, &opts).unwrap();
        let target = Target::parse(&format!("https://localhost:{port}/status/200")).unwrap();
        // One connection first so lazily-initialised state is not counted per connection.
        let warm = client.connect(&target).await.unwrap();
        warm.send(quiclab::client::request(&target, http::Method::GET, Bytes::new()).unwrap()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = server.rss_kib().unwrap();
        let mut conns = Vec::with_capacity(o.idle_conns);
        // 100 handshakes at a time (one after another, 10,000 took over 10 minutes).
        let mut left = o.idle_conns;
        while left > 0 {
            let batch = left.min(100);
            let opened = futures_util::future::join_all((0..batch).map(|_| async {
                let c = client.connect(&target).await.unwrap();
                let req = quiclab::client::request(&target, http::Method::GET, Bytes::new()).unwrap();
                assert_eq!(c.send(req).await.unwrap().status(), 200);
                c
            }))
            .await;
            conns.extend(opened);
            left -= batch;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = server.rss_kib().unwrap();
        let per = (after as f64 - before as f64) / o.idle_conns as f64;
        println!("| RSS before | RSS after | per connection |\n|---|---|---|");
        println!("| {before} KiB | {after} KiB | {per:.1} KiB |");
        println!("\ngoal <= 32 KiB per idle connection\n");
        drop(conns);
    });
}
