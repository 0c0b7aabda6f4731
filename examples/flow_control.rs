//! Per-stream flow control: one stalled reader does not stop the other streams.
//!
//! Four streams download 16 MB each on one QUIC connection; the client stops reading stream 0
//! after 1 MB for one second. Its sender blocks once it has used the stream's window, between
//! 7/8 W and W past what was read, while the other streams finish.
//!
//! Run: `cargo run --example flow_control` (writes flow.json, flow.md, flow.svg to ./flow-example)

use std::time::Duration;

use quiclab::lab::flow::{measure, write_outputs, FlowParams};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = FlowParams {
        out: "flow-example".into(),
        streams: 4,
        size: 16 << 20,
        stream_window: 256 << 10,
        conn_window: 64 << 20,
        stall_after: 1 << 20,
        stall: Duration::from_secs(1),
    };
    let r = measure(&args).await?;
    write_outputs(&args.out, &r)?;
    println!(
        "W = {} bytes; read {} bytes of stream 0, then stalled; the server blocked at read + {} bytes \
         (expected {}..={}); other streams finished at {:?} ms",
        r.window,
        r.consumed,
        r.blocked_at,
        r.expected_range.0,
        r.expected_range.1,
        &r.completed_ms[1..]
    );
    println!("outputs in {}", args.out.display());
    Ok(())
}
