//! `quiclab lab hol --quick --mqtt` produces results.json, report.md and plots with an `mqtt`
//! section: every configured loss point for MQTT/TCP and MQTT/QUIC (stream per topic), every
//! QoS 1 message delivered and acknowledged, realized loss recorded. Structural facts only, no
//! latency ratios (a busy 2-core machine). Timing-sensitive (a lab run): its own test binary, one
//! test.

use quiclab::lab::hol::{measure, write_outputs, HolParams};
use quiclab::lab::hol_mqtt::MqttArm;

#[test]
fn quick_mqtt_sweep_has_every_point_and_no_lost_message() {
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
        seed: 5,
        mqtt: true,
        mqtt_only: false,
        pcap: false,
        topics: 8,
        msg_rate: 50,
        payload: 100,
        duration: std::time::Duration::from_secs(10),
    }
    .effective();
    assert_eq!(args.duration, std::time::Duration::from_secs(3), "--quick publishes 3 s per run");
    let t = std::time::Instant::now();
    let r = measure(&args).expect("hol run (needs root or a user namespace)");
    // How long it takes is reported, not asserted: on a shared machine it is no property of the code.
    eprintln!("--quick --mqtt took {:?}", t.elapsed());
    assert!(r.self_check.contains("ok"), "{}", r.self_check);
    assert_eq!(r.runs.len(), 2 * 3 * 4, "the HTTP arms still ran");

    let m = r.mqtt.as_ref().expect("the mqtt section");
    let s = &m.settings;
    assert_eq!((s.topics, s.rate_per_topic, s.payload, s.qos), (8, 50, 100, 1));
    assert_eq!(s.messages_per_topic, 150, "50 msg/s for 3 s");
    assert_eq!(m.runs.len(), 2 * 3 * 2, "every loss point × run × MQTT arm");
    assert_eq!(m.arms.len(), 2 * 2);
    assert_eq!(m.fairness.quic_congestion, r.fairness.congestion.replace("reno", "newreno"));
    assert_eq!(m.fairness.tcp_congestion_client, r.fairness.congestion, "TCP_CONGESTION read back");
    for &loss in &[0.0, 0.02] {
        for arm in MqttArm::ALL {
            let runs: Vec<_> = m.runs.iter().filter(|x| x.arm == arm && x.loss == loss).collect();
            assert_eq!(runs.len(), 3, "{arm:?} at {loss}");
            for run in runs {
                let n = s.messages() as u64;
                assert_eq!(run.sent, n, "{arm:?} {loss} run {}: all published", run.run);
                assert_eq!(run.received, n, "{arm:?} {loss} run {}: no QoS 1 message lost", run.run);
                assert_eq!(run.lost, 0);
                assert_eq!(run.acked, n, "{arm:?} {loss} run {}: every PUBACK back", run.run);
                assert_eq!(run.latency_ms.len() as u64, n);
                assert!(run.latency_ms.iter().all(|&l| l > 0.0 && l.is_finite()));
                // Every message crosses the link twice: at least one RTT (two one-way delays).
                let min = run.latency_ms.iter().copied().fold(f64::INFINITY, f64::min);
                assert!(min >= 0.9 * 40.0, "{arm:?} {loss}: min latency {min} ms below one RTT");
                assert_eq!(run.topic_max_ms.len(), 8);
                if loss == 0.0 {
                    assert_eq!(run.link.up.dropped_loss + run.link.down.dropped_loss, 0);
                } else {
                    assert!(run.link.up.loss_draws > 0 && run.link.down.loss_draws > 0, "loss drawn");
                    assert!(run.realized_loss_up > 0.0 || run.realized_loss_down > 0.0, "loss realized");
                }
            }
            let a = m.arms.iter().find(|a| a.arm == arm && a.loss == loss).expect("summary");
            assert_eq!(a.lost, 0);
            assert!(a.latency.p50 <= a.latency.p99 && a.latency.p99 <= a.latency.max);
        }
    }

    write_outputs(out.path(), &r).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(json["mqtt"]["runs"].as_array().unwrap().len(), 12);
    assert!(json["mqtt"]["runs"][0]["realized_loss_up"].is_number());
    assert!(json["mqtt"]["arms"][0]["latency"]["p99"].is_number());
    assert_eq!(json["mqtt"]["settings"]["topics"], 8);
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for needle in
        ["MQTT: head-of-line blocking across topics", "MQTT/TCP", "MQTT/QUIC, stream per topic", "realized loss"]
    {
        assert!(md.contains(needle), "report.md lacks {needle}");
    }
    for f in ["mqtt-cdf-loss-0.00pct.svg", "mqtt-cdf-loss-2.00pct.svg", "mqtt-p99-vs-loss.svg", "p99-vs-loss.svg"] {
        assert!(std::fs::read_to_string(out.path().join(f)).unwrap().contains("<svg"), "{f}");
    }
}
