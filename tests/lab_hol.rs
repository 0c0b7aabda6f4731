//! `quiclab lab hol --quick` produces results.json, report.md and SVG plots with every
//! configured loss point and arm present, the self-check passed and realized loss recorded.
//! Timing-sensitive (a lab run): its own test binary, one test.

use quiclab::lab::hol::{measure, write_outputs, HolParams};

#[test]
fn quick_sweep_has_every_point_and_arm() {
    let out = tempfile::tempdir().unwrap();
    let args = HolParams {
        requests: 20,
        size: 100_000,
        loss: vec![],
        rtt: std::time::Duration::from_millis(50),
        rate: 10_000_000,
        runs: 8,
        include_handshake: false,
        quick: true,
        out: out.path().to_path_buf(),
        seed: 3,
        mqtt: false,
        mqtt_only: false,
        pcap: false,
        topics: 8,
        msg_rate: 50,
        payload: 100,
        duration: std::time::Duration::from_secs(10),
    }
    .effective();
    let t = std::time::Instant::now();
    let r = measure(&args).expect("hol run (needs root or a user namespace)");
    // How long --quick takes is reported, not asserted: on a shared machine it is no property of the code.
    eprintln!("--quick took {:?}", t.elapsed());
    assert!(r.self_check.contains("ok"), "{}", r.self_check);
    assert_eq!(r.config.loss, vec![0.0, 0.02]);
    assert_eq!(r.runs.len(), 2 * 3 * 4, "every loss point × run × arm");
    assert_eq!(r.arms.len(), 2 * 4);
    assert_eq!(r.hol.len(), 2);
    for run in &r.runs {
        assert_eq!(run.request_ms.len(), args.requests);
        assert!(run.run_ms > 0.0);
        if run.loss == 0.0 {
            assert_eq!(run.link.up.dropped_loss + run.link.down.dropped_loss, 0);
        } else {
            assert!(run.link.up.loss_draws > 0 && run.link.down.loss_draws > 0, "loss drawn and recorded");
        }
        assert!(!run.server_conn.is_empty(), "the server's view of the connection is recorded");
    }
    write_outputs(out.path(), &r).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    assert!(json["runs"][0]["realized_loss_up"].is_number());
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for needle in
        ["HTTP/2, 1 connection", "HTTP/3, N connections", "(H2₁ − H2ₙ) − (H3₁ − H3ₙ)", "Differences that remain"]
    {
        assert!(md.contains(needle), "report.md lacks {needle}");
    }
    for f in ["cdf-loss-0.00pct.svg", "cdf-loss-2.00pct.svg", "p99-vs-loss.svg", "run-vs-loss.svg"] {
        assert!(std::fs::read_to_string(out.path().join(f)).unwrap().contains("<svg"), "{f}");
    }
}
