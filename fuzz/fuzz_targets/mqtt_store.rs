#![no_main]
// The body lives in the library so `cargo test` replays fuzz/regressions/mqtt_store/ (tests/fuzz_regressions.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| quiclab::fuzzing::mqtt_store(data));
