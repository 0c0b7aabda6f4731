//! `quiclab lab migrate`: a NAT rebinding in the relay during a download. The HTTP/3 transfer
//! continues on the same connection (the server counts one path change); the HTTP/2 one dies
//! and is restarted on a new connection. Timing-sensitive: its own test binary, one test.

use std::time::Duration;

use quiclab::lab::migrate::{measure, write_outputs, MigrateParams};

#[test]
fn quic_survives_a_nat_rebinding_and_tcp_does_not() {
    let out = tempfile::tempdir().unwrap();
    let args = MigrateParams {
        rtt: Duration::from_millis(20),
        rate: 40_000_000,
        size: 6 << 20,
        rebind_at: Duration::from_millis(400),
        out: out.path().to_path_buf(),
        seed: 5,
    };
    let r = measure(&args).expect("migrate run (needs root or a user namespace)");
    let h3 = r.downloads.iter().find(|d| d.protocol == "HTTP/3").unwrap();
    let h2 = r.downloads.iter().find(|d| d.protocol == "HTTP/2").unwrap();
    assert!(!h3.connection_broke, "HTTP/3 died: {:?}", h3.error);
    assert!(h3.complete);
    assert_eq!(h3.server_path_changes, Some(1), "the server saw the new path");
    assert_eq!(h3.reconnects, 0);
    assert!(h2.connection_broke, "the TCP connection should not survive a new 4-tuple");
    assert!(h2.bytes_before_break < args.size);
    assert!(h2.reconnects >= 1);
    assert!(h2.complete, "the restarted HTTP/2 download completes");
    write_outputs(out.path(), &r).unwrap();
    for f in ["results.json", "report.md", "migrate.svg"] {
        assert!(out.path().join(f).exists(), "{f}");
    }
}
