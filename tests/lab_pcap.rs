//! Captures of the lab's relay (`Link::start_capture`) and the TLS key log
//! (`tls::set_key_log_file`): a small page over HTTP/3 and over HTTP/2 across a delayed link
//! lands in a pcap file that parses, with QUIC and TCP packets to and from port 4433 in both
//! directions, and the key log holds the TLS 1.3 secrets of both connections. A lossy link's
//! drops land in the `.dropped.pcap` file, exactly as many as the relay counted.
//!
//! They need root (CI runs as root) or `unshare -rn cargo test --test lab_pcap`. They run
//! serially (one lock) because the key log is process-wide.

#[path = "common/lab.rs"]
mod lab_common;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use bytes::Bytes;
use quiclab::client::{self, Client, ClientOptions, HttpVersion, Target};
use quiclab::lab::packet::Ipv4Info;
use quiclab::lab::pcap::{self, PcapFile, LINKTYPE_RAW};
use quiclab::lab::{Impairment, LabServer, LinkConfig, LossModel};
use quiclab::tls::{self, Trust};

use lab_common::{serial, start_link as start};

const UDP: u8 = 17;
const TCP: u8 = 6;

/// (protocol, source, destination) of each IPv4 packet in a capture.
fn flows(f: &PcapFile) -> Vec<(u8, SocketAddr, SocketAddr)> {
    f.records
        .iter()
        .filter_map(|r| {
            let info = Ipv4Info::parse(&r.data)?;
            assert_eq!(info.total_len, r.data.len(), "a record holds exactly one whole datagram");
            let (sp, dp) = info.ports(&r.data)?;
            Some((info.proto, SocketAddr::new(info.src.into(), sp), SocketAddr::new(info.dst.into(), dp)))
        })
        .collect()
}

#[test]
fn captures_h3_and_h2_with_their_key_log() {
    let _g = serial();
    let link = start(LinkConfig::symmetric(Impairment::delay(Duration::from_millis(5)), 9));
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let server = LabServer::start_default(&link, &certs, |_| {}).expect("server");
    let (quic, tcp) = (server.quic_addr(), server.tcp_addr());
    assert_eq!((quic.port(), tcp.port()), (4433, 4433));

    let cap = dir.path().join("run.pcap");
    let keys = dir.path().join("keys.log");
    tls::set_key_log_file(&keys).unwrap();
    assert_eq!(tls::key_log_file().as_deref(), Some(keys.as_path()));
    link.start_capture(&cap).unwrap();
    assert!(link.capturing());
    assert!(link.start_capture(&dir.path().join("second.pcap")).is_err(), "one capture at a time");

    let ca = certs.join("ca.pem");
    let sizes = link
        .run_in_client_ns(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let mut sizes = Vec::new();
                for (version, addr) in [(HttpVersion::H3, quic), (HttpVersion::H2, tcp)] {
                    let opts = ClientOptions { trust: Trust::CaFile(ca.clone()), ..Default::default() };
                    let c = Client::new(version, &opts).unwrap();
                    let uri: http::Uri = format!("https://localhost:{}/bytes/2000", addr.port()).parse().unwrap();
                    let t = Target { host: "localhost".into(), port: addr.port(), uri, addr: Some(addr) };
                    let req = client::request(&t, http::Method::GET, Bytes::new()).unwrap();
                    let f = client::fetch(&c, &t, req).await.unwrap();
                    assert_eq!(f.response.status(), 200, "{version:?}");
                    sizes.push(f.body.len());
                }
                sizes
            })
        })
        .unwrap();
    assert_eq!(sizes, [2000, 2000]);
    // Let the packets in the relay (closes, FINs, ACKs) cross the 5 ms link before stopping.
    lab_common::wait_until_drained(&link, 0);
    let summary = link.stop_capture().expect("a capture was running");
    assert!(!link.capturing());
    assert!(link.stop_capture().is_none());
    assert_eq!(tls::clear_key_log_file().as_deref(), Some(keys.as_path()));
    let stats = link.stats();
    drop(server);

    // The file parses, and holds what the summary says.
    eprintln!("{}", summary.describe());
    let f = pcap::read(&cap).unwrap();
    assert!(f.nanos);
    assert_eq!(f.linktype, LINKTYPE_RAW);
    assert_eq!(f.records.len() as u64, summary.packets);
    assert_eq!(summary.overflow, 0);
    assert!(summary.error.is_none(), "{:?}", summary.error);
    assert!(summary.packets <= stats.up.packets_out + stats.down.packets_out);
    assert_eq!(summary.dropped_packets, 0, "no loss configured");
    assert_eq!(pcap::read(&summary.dropped_path).unwrap().records.len(), 0);
    // Timestamps are wall-clock, recent, and in order within each direction (one delay line each).
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    assert!(f.records.iter().all(|r| r.ts_ns <= now_ns && r.ts_ns > now_ns - 120_000_000_000));
    for dst in [link.server_ip(), link.client_ip()] {
        let ts: Vec<u64> = f
            .records
            .iter()
            .filter(|r| Ipv4Info::parse(&r.data).is_some_and(|i| i.dst == dst))
            .map(|r| r.ts_ns)
            .collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "timestamps towards {dst} out of order");
    }

    let flows = flows(&f);
    for proto in [UDP, TCP] {
        let up = flows.iter().filter(|(p, _, d)| *p == proto && *d == quic).count();
        let down = flows.iter().filter(|(p, s, _)| *p == proto && *s == quic).count();
        eprintln!("proto {proto}: {up} packets to 4433, {down} from it");
        assert!(up >= 2 && down >= 2, "proto {proto}: {up} up, {down} down");
    }
    // A TCP handshake starts with a SYN to the server (flags byte 13 of the TCP header).
    assert!(f.records.iter().any(|r| {
        Ipv4Info::parse(&r.data)
            .is_some_and(|i| i.proto == TCP && i.dst == link.server_ip() && r.data[i.header_len + 13] & 0x12 == 0x02)
    }));

    // The key log: both handshakes' secrets, client and server side (the same secrets logged by
    // both ends of each connection), in NSS format.
    let log = std::fs::read_to_string(&keys).unwrap();
    let randoms: HashSet<&str> = log
        .lines()
        .filter(|l| l.starts_with("CLIENT_HANDSHAKE_TRAFFIC_SECRET "))
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    assert!(randoms.len() >= 2, "one client random per connection (QUIC and TCP):\n{log}");
    for l in log.lines() {
        let parts: Vec<&str> = l.split(' ').collect();
        assert_eq!(parts.len(), 3, "{l}");
        assert_eq!(parts[1].len(), 64, "client random is 32 bytes: {l}");
        assert!(parts[2].len() >= 64 && parts[2].bytes().all(|b| b.is_ascii_hexdigit()), "{l}");
    }
    for label in ["SERVER_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"] {
        assert!(log.contains(label), "{label} missing:\n{log}");
    }
}

#[test]
fn drops_go_to_their_own_file() {
    let _g = serial();
    let imp = Impairment { loss: LossModel::Random { p: 0.3 }, ..Impairment::none() };
    let link = start(LinkConfig { down: Impairment::none(), ..LinkConfig::symmetric(imp, 5) });
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("lossy.pcap");
    link.begin_phase(0);
    link.start_capture(&cap).unwrap();
    let server = SocketAddr::new(link.server_ip().into(), 9);
    const N: usize = 300;
    link.run_in_client_ns(move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        for i in 0..N {
            s.send_to(&(i as u32).to_be_bytes(), server).unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
    })
    .unwrap();
    lab_common::wait_until_drained(&link, N as u64);
    let summary = link.stop_capture().unwrap();
    let stats = link.stats();
    let to_discard = |f: &PcapFile| flows(f).iter().filter(|(p, _, d)| *p == UDP && *d == server).count();
    let kept = to_discard(&pcap::read(&cap).unwrap());
    let dropped_file = pcap::read(&summary.dropped_path).unwrap();
    let lost = to_discard(&dropped_file);
    eprintln!("{}; up: {} lost", summary.describe(), stats.up.dropped_loss);
    assert_eq!(summary.dropped_path, dir.path().join("lossy.dropped.pcap"));
    assert_eq!(kept + lost, N, "every datagram is in exactly one of the files");
    assert_eq!(lost as u64, stats.up.dropped_loss);
    assert_eq!(dropped_file.records.len() as u64, summary.dropped_packets);
    assert!(lost > N / 10 && lost < N / 2, "{lost} of {N} lost at 30%");
    assert_eq!(summary.overflow, 0);
}
