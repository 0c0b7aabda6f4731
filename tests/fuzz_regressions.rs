//! Replays the fuzz regression corpus (`fuzz/regressions/<target>/`) through the fuzz targets'
//! bodies in `quiclab::fuzzing`, as ordinary tests: no nightly, no cargo-fuzz. Every crash or
//! timeout input a campaign found is kept there with a few interesting seeds; see
//! `fuzz/README.md` for how to add one.
//!
//! A file whose name starts with `open-` reproduces a bug that is not fixed yet: the directory
//! replay skips it, and its own `#[ignore]`d test below names the issue.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn is_open(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("open-"))
}

/// Run every settled input of `target`; report every one that panics, by name.
fn replay(target: &str, body: fn(&[u8])) {
    let files: Vec<PathBuf> = inputs(target).into_iter().filter(|p| !is_open(p)).collect();
    assert!(!files.is_empty(), "fuzz/regressions/{target}/ has no inputs");
    let mut failed = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if std::panic::catch_unwind(|| body(&data)).is_err() {
            failed.push(f.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{} of {} inputs of {target} fail: {failed:#?}", failed.len(), files.len());
}

/// Run one named input (for the `open-` reproducers).
fn replay_one(target: &str, name: &str, body: fn(&[u8])) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(target).join(name);
    let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    body(&data);
}

#[test]
fn mqtt_codec() {
    replay("mqtt_codec", quiclab::fuzzing::mqtt_codec);
}

#[test]
fn mqtt_store() {
    replay("mqtt_store", quiclab::fuzzing::mqtt_store);
}

#[test]
fn topic_tree() {
    replay("topic_tree", quiclab::fuzzing::topic_tree);
}

#[test]
fn mqtt_broker() {
    replay("mqtt_broker", quiclab::fuzzing::mqtt_broker);
}

/// The same inputs with every client speaking MQTT 5 (the `mqtt_broker_v5` target), plus its own
/// corpus (fuzz/regressions/mqtt_broker_v5/).
#[test]
fn mqtt_broker_v5() {
    replay("mqtt_broker", quiclab::fuzzing::mqtt_broker_v5);
    replay("mqtt_broker_v5", quiclab::fuzzing::mqtt_broker_v5);
}

#[test]
fn http_parse() {
    replay("http_parse", quiclab::fuzzing::http_parse);
}

/// Once an open bug (found by the mqtt_broker campaign, fixed in issue 13): a CONNECT whose will
/// topic exceeds max_topic_levels left its session online without a connection. Replayed with
/// every scenario (`mqtt_broker_strict`).
#[test]
fn mqtt_broker_will_too_deep_session_online() {
    replay_one("mqtt_broker", "will-too-deep-session-online.bin", quiclab::fuzzing::mqtt_broker_strict);
}

#[test]
fn lab_stall() {
    replay("lab_stall", quiclab::fuzzing::lab_stall);
}
