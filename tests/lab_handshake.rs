//! `quiclab lab handshake` at 50 ms RTT, 10 runs per case: medians within +0.3 RTT of the
//! theory (3 for HTTP/2 over TCP + TLS 1.3, 2 for HTTP/3, 1 for HTTP/3 with 0-RTT; time to
//! CONNACK: 2 for MQTT over TCP, 3 over TLS, 2 over QUIC, 1 over QUIC with 0-RTT).
//! Timing-sensitive: its own test binary, one test.

use std::time::Duration;

use quiclab::lab::handshake::{measure, write_outputs, HandshakeParams};

#[test]
fn handshake_costs_three_two_and_one_round_trips() {
    let out = tempfile::tempdir().unwrap();
    let args = HandshakeParams { rtt: Duration::from_millis(50), runs: 10, out: out.path().to_path_buf(), seed: 7 };
    let r = measure(&args).expect("handshake measurement (needs root or a user namespace)");
    for c in &r.cases {
        assert_eq!(c.ttfb_ms.len(), 10);
        assert!(
            c.excess_rtt <= 0.3 && c.excess_rtt > -0.5,
            "{}: median {:.2} RTT vs theory {} ({:?} ms)",
            c.case,
            c.median_rtt,
            c.theory_rtt,
            c.ttfb_ms
        );
    }
    let zero: Vec<_> = r.cases.iter().filter(|c| c.case.contains("0-RTT")).collect();
    assert_eq!(zero.len(), 2, "HTTP/3 and MQTT over QUIC");
    for z in zero {
        assert!(z.zero_rtt.iter().all(|s| s == "accepted"), "{}: {:?}", z.case, z.zero_rtt);
    }
    write_outputs(out.path(), &r).unwrap();
    for f in ["results.json", "report.md", "handshake.svg"] {
        assert!(out.path().join(f).exists(), "{f}");
    }
}
