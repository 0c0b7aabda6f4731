//! `quiclab lab hol --quick --mqtt-only`, the binary end to end: results.json, report.md and
//! plots with an `mqtt` section covering all three MQTT arms (TCP, QUIC one stream, QUIC stream
//! per topic) at 0 and 2% loss; every QoS 1 message delivered and acknowledged; every arm of one
//! (loss, run) pair on the same link random stream; realized loss counting every drop; the
//! paired findings present for every loss point and their sentences in the report. Structural
//! facts only, no latency ratios (a busy 2-core machine). Timing-sensitive (a lab run): its own
//! test binary, one test.
//!
//! It drives the command line rather than `hol::HolParams`, so it depends only on the
//! `lab hol` flags and on `hol_mqtt`'s own types, not on how the sweep's parameters are built.

use std::collections::HashMap;
use std::process::Command;

use quiclab::lab::hol_mqtt::MqttArm;
use serde_json::Value;

fn arm_json(arm: MqttArm) -> Value {
    serde_json::to_value(arm).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

#[test]
fn quick_mqtt_sweep_has_three_arms_every_point_and_no_lost_message() {
    let out = tempfile::tempdir().unwrap();
    let t = std::time::Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_quiclab"))
        .args(["lab", "hol", "--quick", "--mqtt-only", "--topics", "8", "--msg-rate", "50", "--payload", "100"])
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("spawn quiclab lab hol");
    // How long it takes is reported, not asserted: on a shared machine it is no property of the code.
    eprintln!("--quick --mqtt-only took {:?}", t.elapsed());
    assert!(
        o.status.success(),
        "lab hol failed (needs root or a user namespace): {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    let json: Value = serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    let m = &json["mqtt"];
    let s = &m["settings"];
    assert_eq!((u(&s["topics"]), u(&s["rate_per_topic"]), u(&s["payload"]), u(&s["qos"])), (8, 50, 100, 1));
    let messages = u(&s["topics"]) * u(&s["messages_per_topic"]);
    // One RTT is two one-way delays; every message crosses the link twice.
    let rtt_ms = f(&s["late_threshold_ms"]) / 1.5;
    let fair = &m["fairness"];
    let quic_cc = fair["quic_congestion"].as_str().unwrap();
    assert_eq!(fair["tcp_congestion_client"].as_str().unwrap(), quic_cc.replace("newreno", "reno"), "same controller");

    let runs = m["runs"].as_array().unwrap();
    let losses = [0.0, 0.02];
    let mut per_cell: HashMap<(String, u64), usize> = HashMap::new();
    // (loss, run) → the phase every arm of that pair replayed.
    let mut phases: HashMap<(u64, u64), u64> = HashMap::new();
    for r in runs {
        let loss = f(&r["loss"]);
        let (arm, run) = (r["arm"].to_string(), u(&r["run"]));
        let key = ((loss * 1e6).round() as u64, run);
        *per_cell.entry((arm.clone(), key.0)).or_default() += 1;
        let phase = u(&r["phase"]);
        assert_eq!(*phases.entry(key).or_insert(phase), phase, "{arm} at {loss} run {run}: the pair's phase");

        let what = format!("{arm} at {loss} run {run}");
        assert_eq!(u(&r["sent"]), messages, "{what}: all published");
        assert_eq!(u(&r["received"]), messages, "{what}: no QoS 1 message lost");
        assert_eq!(u(&r["lost"]), 0, "{what}");
        assert_eq!(u(&r["acked"]), messages, "{what}: every PUBACK back");
        let lat: Vec<f64> = r["latency_ms"].as_array().unwrap().iter().map(f).collect();
        assert_eq!(lat.len() as u64, messages, "{what}");
        assert!(lat.iter().all(|&l| l > 0.0 && l.is_finite()), "{what}");
        let min = lat.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(min >= 0.9 * rtt_ms, "{what}: min latency {min} ms below one RTT ({rtt_ms} ms)");
        assert_eq!(r["topic_max_ms"].as_array().unwrap().len(), 8, "{what}");
        for k in ["late_pct", "p50_ms", "p99_ms", "mean_ms"] {
            assert!(f(&r["metrics"][k]).is_finite(), "{what}: metrics.{k}");
        }

        // Realized loss is every drop over what was offered, per direction.
        for (d, field) in [("up", "realized_loss_up"), ("down", "realized_loss_down")] {
            let l = &r["link"][d];
            let offered = u(&l["packets_in"]) - u(&l["dropped_non_ipv4"]);
            let dropped = u(&l["dropped_loss"]) + u(&l["dropped_queue"]) + u(&l["dropped_stale_nat"]);
            let want = if offered == 0 { 0.0 } else { dropped as f64 / offered as f64 };
            assert!((f(&r[field]) - want).abs() < 1e-12, "{what}: {field} {} vs {want}", r[field]);
            assert_eq!(u(&r[&format!("queue_drops_{d}")]), u(&l["dropped_queue"]), "{what}");
        }
        if loss == 0.0 {
            assert_eq!(u(&r["link"]["up"]["dropped_loss"]) + u(&r["link"]["down"]["dropped_loss"]), 0, "{what}");
        } else {
            assert!(u(&r["link"]["up"]["loss_draws"]) > 0 && u(&r["link"]["down"]["loss_draws"]) > 0, "{what}");
        }
    }
    // Independent random streams per (loss, run).
    let mut distinct: Vec<u64> = phases.values().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), phases.len(), "one phase per (loss, run): {phases:?}");

    let n_runs = per_cell.values().copied().max().unwrap_or(0);
    assert!(n_runs >= 2, "at least two runs per cell");
    for &loss in &losses {
        let key = (loss * 1e6_f64).round() as u64;
        for arm in MqttArm::ALL {
            let a = arm_json(arm).to_string();
            assert_eq!(per_cell.get(&(a.clone(), key)), Some(&n_runs), "{arm:?} at {loss}: every run");
            let sum = m["arms"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["arm"] == arm_json(arm) && f(&x["loss"]) == loss)
                .unwrap_or_else(|| panic!("summary of {arm:?} at {loss}"));
            assert_eq!(u(&sum["lost"]), 0);
            let p = &sum["latency"];
            assert!(f(&p["p50"]) <= f(&p["p99"]) && f(&p["p99"]) <= f(&p["max"]));
            assert!(f(&sum["run_p99_ms"]["lo"]) <= f(&sum["run_p99_ms"]["hi"]));
            assert!(sum["queue_drops_up"].is_number() && sum["realized_loss_down"].is_number());
        }
    }
    assert_eq!(m["arms"].as_array().unwrap().len(), 3 * losses.len());

    // Findings: the three comparisons × four metrics at every loss point, each with a sentence
    // that the report carries.
    let findings = m["findings"].as_array().unwrap();
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for &loss in &losses {
        let at = format!("at {:.2}% loss", loss * 100.0);
        let here: Vec<&Value> = findings.iter().filter(|x| x["what"].as_str().unwrap().contains(&at)).collect();
        assert_eq!(here.len(), 12, "findings {at}");
        for (a, b) in [
            (MqttArm::QuicSingle, MqttArm::QuicPerTopic),
            (MqttArm::Tcp, MqttArm::QuicSingle),
            (MqttArm::Tcp, MqttArm::QuicPerTopic),
        ] {
            let pair: Vec<_> = here.iter().filter(|x| x["a"] == a.name() && x["b"] == b.name()).collect();
            assert_eq!(pair.len(), 4, "{a:?} − {b:?} {at}: late share, p50, p99, mean");
            for x in pair {
                assert_eq!(u(&x["diff"]["runs"]), n_runs as u64, "{}: every run paired", x["what"]);
            }
        }
        for x in here {
            let sentence = x["sentence"].as_str().unwrap();
            assert!(md.contains(sentence), "report.md lacks the finding: {sentence}");
        }
    }
    for needle in [
        "MQTT: head-of-line blocking across topics",
        "MQTT/TCP",
        "MQTT/QUIC, one stream",
        "MQTT/QUIC, stream per topic",
        "realized loss",
        "queue drops",
        "Paired differences",
    ] {
        assert!(md.contains(needle), "report.md lacks {needle}");
    }
    for f in ["mqtt-cdf-loss-0.00pct.svg", "mqtt-cdf-loss-2.00pct.svg", "mqtt-p99-vs-loss.svg"] {
        assert!(std::fs::read_to_string(out.path().join(f)).unwrap().contains("<svg"), "{f}");
    }
}
