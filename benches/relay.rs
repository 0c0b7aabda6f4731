//! The link emulator's own overhead, with no impairment configured (release build):
//!
//! 1. **added latency**: UDP ping-pong between the client and the server namespace through the
//!    relay, against the same ping-pong over loopback inside one namespace (same kernel path minus
//!    the relay). Added one-way latency = (RTT through the relay − RTT over loopback) / 2, at the
//!    median; also the relay's own lateness figures.
//! 2. **throughput**: one kernel TCP bulk transfer client → server through the relay for a fixed
//!    time, measured in wire bytes at the relay.
//! 3. **delay accuracy**: the same ping-pong over a 25 ms-each-way link: how far the median RTT is
//!    from the configured 50 ms.
//!
//! Targets (issue 4): added latency p50 ≤ 0.2 ms; throughput ≥ 10× the fastest rate a lab preset
//! uses (presets go up to 100 Mbit/s, so ≥ 1 Gbit/s).
//!
//! Run: `cargo bench --bench relay` (as root, or unprivileged where user namespaces are enabled:
//! the bench then re-executes itself in a user + network namespace). Options:
//! `-- --pings 5000 --bulk-secs 5 --spin-us 100` (the last sets the delay line's spin for part 3).
//! Results go to standard output as a Markdown table (copied into docs/BENCHMARKS.md).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use quiclab::lab::{prepare_process, Impairment, Link, LinkConfig, SERVER_IP};

struct Opts {
    pings: usize,
    bulk_secs: f64,
    spin_us: Option<u64>,
}

fn parse_opts() -> Opts {
    let mut o = Opts { pings: 5000, bulk_secs: 5.0, spin_us: None };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pings" => o.pings = args.next().and_then(|v| v.parse().ok()).expect("--pings N"),
            "--bulk-secs" => o.bulk_secs = args.next().and_then(|v| v.parse().ok()).expect("--bulk-secs S"),
            "--spin-us" => o.spin_us = args.next().and_then(|v| v.parse().ok()),
            _ => {} // cargo bench passes --bench
        }
    }
    o
}

/// Median and p99 RTT (µs) of `n` sequential UDP ping-pongs from `client` to an echo at `server`
/// (both sockets already bound in their namespaces).
fn pingpong(client: UdpSocket, server: UdpSocket, n: usize) -> (f64, f64) {
    let echo = std::thread::spawn(move || {
        server.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut buf = [0u8; 64];
        while let Ok((len, from)) = server.recv_from(&mut buf) {
            if &buf[..len] == b"stop" {
                break;
            }
            let _ = server.send_to(&buf[..len], from);
        }
    });
    client.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut rtts = Vec::with_capacity(n);
    let mut buf = [0u8; 64];
    for i in 0..n + 100 {
        let t = Instant::now();
        client.send(&[0u8; 32]).unwrap();
        if client.recv(&mut buf).is_ok() && i >= 100 {
            rtts.push(t.elapsed().as_secs_f64() * 1e6); // the first 100 warm up
        }
    }
    client.send(b"stop").unwrap();
    echo.join().unwrap();
    rtts.sort_by(f64::total_cmp);
    (rtts[rtts.len() / 2], rtts[rtts.len() * 99 / 100])
}

/// Ping-pong across `link` (client namespace → server namespace).
fn across(link: &Link, n: usize) -> (f64, f64) {
    let server = link.run_in_server_ns(|| UdpSocket::bind((SERVER_IP, 0)).unwrap()).unwrap();
    let to = server.local_addr().unwrap();
    let client = link
        .run_in_client_ns(move || {
            let c = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            c.connect(to).unwrap();
            c
        })
        .unwrap();
    pingpong(client, server, n)
}

fn main() {
    if let Err(e) = prepare_process(true) {
        eprintln!("relay bench: {e}");
        std::process::exit(1);
    }
    let o = parse_opts();
    let link = Link::start(LinkConfig::symmetric(Impairment::none(), 1)).expect("link");

    // 1. Latency: loopback inside the client namespace, then across the relay.
    let (lo_p50, lo_p99) = link
        .run_in_client_ns(move || {
            let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let c = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            c.connect(s.local_addr().unwrap()).unwrap();
            pingpong(c, s, o.pings)
        })
        .unwrap();
    link.begin_phase(0);
    let (re_p50, re_p99) = across(&link, o.pings);
    let lat = link.stats();
    let added_p50_ms = (re_p50 - lo_p50) / 2.0 / 1000.0;

    // 2. Throughput: TCP client → server for bulk_secs.
    link.begin_phase(0);
    let listener = link.run_in_server_ns(|| TcpListener::bind((SERVER_IP, 0)).unwrap()).unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let sink = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    let secs = o.bulk_secs;
    let stream = link.run_in_client_ns(move || TcpStream::connect(addr).unwrap()).unwrap();
    let t0 = Instant::now();
    let mut stream = stream;
    let chunk = vec![0x42u8; 256 << 10];
    while t0.elapsed().as_secs_f64() < secs {
        stream.write_all(&chunk).unwrap();
    }
    drop(stream);
    let goodput_bytes = sink.join().unwrap();
    let elapsed = t0.elapsed().as_secs_f64();
    let st = link.stats();
    let wire_bps = st.up.bytes_out as f64 * 8.0 / elapsed;
    let goodput_bps = goodput_bytes as f64 * 8.0 / elapsed;
    drop(link);

    // 3. Delay accuracy at 25 ms each way.
    let mut cfg = LinkConfig::symmetric(Impairment::delay(Duration::from_millis(25)), 1);
    if let Some(us) = o.spin_us {
        cfg.spin = Duration::from_micros(us);
    }
    let link = Link::start(cfg).expect("link");
    let (d_p50, d_p99) = across(&link, (o.pings / 25).max(100));
    let dl = link.stats();
    drop(link);

    let target_lat = 0.2;
    let target_bps = 1e9;
    println!("| measurement | result | target |");
    println!("|---|---|---|");
    println!("| UDP RTT over loopback in one namespace, p50 / p99 | {lo_p50:.1} / {lo_p99:.1} µs | |");
    println!("| UDP RTT through the relay, p50 / p99 | {re_p50:.1} / {re_p99:.1} µs | |");
    println!(
        "| added one-way latency, p50 | {added_p50_ms:.3} ms | ≤ {target_lat} ms {} |",
        if added_p50_ms <= target_lat { "✓" } else { "✗" }
    );
    println!(
        "| relay release lateness (delay line), p50 / p99 | {:.1} / {:.1} µs | |",
        lat.up.lateness_us.p50, lat.up.lateness_us.p99
    );
    println!(
        "| TCP bulk through the relay, wire bytes at the relay | {:.2} Gbit/s ({} packets/s) | ≥ 1 Gbit/s {} |",
        wire_bps / 1e9,
        (st.up.packets_out as f64 / elapsed).round(),
        if wire_bps >= target_bps { "✓" } else { "✗" }
    );
    println!("| TCP goodput through the relay | {:.2} Gbit/s | |", goodput_bps / 1e9);
    println!(
        "| UDP RTT over a 25 ms-each-way link, p50 / p99 | {:.3} / {:.3} ms (configured 50) | within 1 ms |",
        d_p50 / 1000.0,
        d_p99 / 1000.0
    );
    println!(
        "| relay release lateness at 25 ms, p50 / p99 | {:.1} / {:.1} µs | |",
        dl.up.lateness_us.p50, dl.up.lateness_us.p99
    );
}
