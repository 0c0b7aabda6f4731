//! `quiclab lab flow`: the stalled stream's sender blocks between 7W/8 and W beyond what the
//! reader consumed, the series agree, and the other streams complete during the stall.

use std::time::Duration;

use quiclab::lab::flow::{measure, write_outputs, FlowParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_stream_blocks_within_its_window_and_the_others_finish() {
    let out = tempfile::tempdir().unwrap();
    for window in [64u64 << 10, 256 << 10] {
        let args = FlowParams {
            out: out.path().to_path_buf(),
            streams: 4,
            size: 8 << 20,
            stream_window: window,
            conn_window: 64 << 20,
            stall_after: 1 << 20,
            stall: Duration::from_millis(800),
        };
        let r = measure(&args).await.expect("flow run");
        assert_eq!(r.window, window);
        assert_eq!(r.consumed, 1 << 20);
        let (lo, hi) = (window * 7 / 8, window);
        assert!((lo..=hi).contains(&r.blocked_at), "W={window}: blocked_at {} not in [{lo}, {hi}]", r.blocked_at);
        // The client's series of the stalled stream sits at `consumed` during the stall.
        let s = &r.client_series[r.stalled_stream];
        assert!(s.iter().any(|(_, b)| *b == r.consumed));
        // The server never wrote past consumed + W before the reader resumed.
        assert_eq!(r.server_offset_blocked, r.consumed + r.blocked_at);
        assert!(r.server_series.iter().all(|(_, o)| *o <= args.size));
        // Every other stream completed while that one was stalled.
        assert_eq!(r.completed_during_stall, args.streams - 1, "completions at {:?} ms", r.completed_ms);
        write_outputs(out.path(), &r).unwrap();
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("flow.json")).unwrap()).unwrap();
    for key in ["window", "consumed", "blocked_at"] {
        assert!(json[key].is_u64(), "flow.json lacks numeric {key}");
    }
    assert!(std::fs::read_to_string(out.path().join("flow.svg")).unwrap().contains("<svg"));
    assert!(std::fs::read_to_string(out.path().join("flow.md")).unwrap().contains("| stream"));
}
