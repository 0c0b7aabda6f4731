//! `quiclab lab hol --quick` with every workload: results.json, report.md and the plots have
//! every loss point, workload and arm; a self-check per loss point; realized loss, queue drops
//! and the stall analysis recorded per run; conclusions generated from the findings.
//! Timing-sensitive (a lab run): its own test binary, one test.

use quiclab::lab::hol::{measure, write_outputs, HolParams, InitialWindow, Workload};

fn quick(out: &std::path::Path) -> HolParams {
    HolParams {
        workloads: Workload::ALL.to_vec(),
        loss: vec![],
        rtt: std::time::Duration::from_millis(50),
        rate: 10_000_000,
        queue: None,
        runs: 20,
        cc: quiclab::config::Congestion::Cubic,
        initial_window: InitialWindow::Linux,
        stall: true,
        small_requests: 100,
        small_size: 4096,
        small_rounds: 3,
        sequential_requests: 30,
        sequential_size: 4096,
        page_loads: 2,
        requests: 20,
        size: 100_000,
        include_handshake: false,
        quick: true,
        out: out.to_path_buf(),
        seed: 3,
        pcap: false,
        topics: 4,
        msg_rate: 50,
        payload: 100,
        duration: std::time::Duration::from_secs(10),
    }
    .effective()
}

#[test]
fn quick_sweep_covers_every_workload_point_and_arm() {
    let out = tempfile::tempdir().unwrap();
    let args = quick(out.path());
    let t = std::time::Instant::now();
    let r = measure(&args).expect("hol run (needs root or a user namespace)");
    // How long --quick takes is reported, not asserted: on a shared machine it is no property of the code.
    eprintln!("--quick took {:?}", t.elapsed());
    assert_eq!(r.config.loss, vec![0.0, 0.02]);
    assert_eq!(r.self_checks.len(), 2, "a self-check per loss point");
    assert!(r.self_checks.iter().all(|p| p.check.passed));
    // Every HTTP workload: 2 loss points × 3 runs × its arms.
    for w in [Workload::Small, Workload::Sequential, Workload::Page, Workload::Bulk] {
        let n = r.runs.iter().filter(|x| x.workload == w).count();
        assert_eq!(n, 2 * 3 * w.arms().len(), "{w:?}");
        assert_eq!(r.findings.iter().filter(|p| p.workload == w).count(), 2, "findings per loss point for {w:?}");
    }
    assert_eq!(r.schedule.len(), 5 * 2 * 3, "a block per workload, loss point and run");
    for run in &r.runs {
        assert!(!run.requests.is_empty() && run.run_ms > 0.0);
        assert!(run.requests.iter().all(|q| q.end_ms >= q.start_ms));
        if run.loss == 0.0 {
            assert_eq!(run.link.up.dropped_loss + run.link.down.dropped_loss, 0);
        } else {
            assert!(run.link.up.loss_draws > 0 && run.link.down.loss_draws > 0, "loss drawn and recorded");
        }
        assert!(!run.server_conn.is_empty(), "the server's view of the connection is recorded");
        let s = run.stall.as_ref().expect("stall analysis per run");
        assert!(s.streams > 0, "the stall analysis found the response streams of {:?} {:?}", run.workload, run.arm);
    }
    let mqtt = r.mqtt.as_ref().expect("mqtt workload");
    assert_eq!(mqtt.runs.len(), 2 * 3 * 3, "three MQTT arms per block");
    write_outputs(out.path(), &r).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    assert!(json["runs"][0]["loss_up"]["all"].is_number());
    assert!(json["versions"]["commit"]["id"].is_string(), "the commit is recorded");
    assert!(json["schedule"][0]["order"].is_number());
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for needle in [
        "## Conclusions",
        "HTTP/2, 1 connection",
        "HTTP/3, N connections",
        "(H2₁ − H2ₙ) − (H3₁ − H3ₙ)",
        "queue drops",
        "Self-check at every loss point",
    ] {
        assert!(md.contains(needle), "report.md lacks {needle}");
    }
    for w in ["small", "sequential", "page", "bulk"] {
        for f in ["cdf-loss-0.00pct.svg", "cdf-loss-2.00pct.svg", "metric-vs-loss.svg", "p99-vs-loss.svg"] {
            let f = format!("{w}-{f}");
            assert!(std::fs::read_to_string(out.path().join(&f)).unwrap().contains("<svg"), "{f}");
        }
    }
}
