#![no_main]
// The body lives in the library so `cargo test` replays fuzz/regressions/mqtt_broker_v5/ (tests/fuzz_regressions.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| quiclab::fuzzing::mqtt_broker_v5(data));
