//! The `quiclab` binary end to end: `certs`, `serve` on an ephemeral port, `get` over both
//! protocols, one-line errors with a non-zero exit, and SIGTERM ending the server cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn quiclab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quiclab"))
}

struct Served {
    child: Child,
    port: u16,
    spki: String,
    /// The MQTT over TLS port from the banner.
    mqtt_tls: Option<u16>,
    /// The runtime's worker threads from the banner.
    threads: usize,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `quiclab mqtt broker --tcp 127.0.0.1:0 EXTRA...` in `cwd` and read its banner up to
/// its last line; returns the running child and the banner.
fn broker(cwd: &std::path::Path, extra: &[&str]) -> (std::process::Child, String) {
    let mut child = quiclab()
        .args(["mqtt", "broker", "--tcp", "127.0.0.1:0"])
        .args(extra)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner: Vec<String> = lines.map_while(Result::ok).take_while(|l| !l.contains("mqtt_acl_file")).collect();
    (child, banner.join("\n"))
}

fn serve(certs: &std::path::Path) -> Served {
    serve_with(certs, &[])
}

/// `quiclab serve` on free ports with the certificates in `certs` and its store beside them
/// (`certs/../data`: each test its own, as redb locks the file).
fn serve_with(certs: &std::path::Path, extra: &[&str]) -> Served {
    let mut child = quiclab()
        .args(["serve", "--listen", "127.0.0.1:0", "--mqtt-tcp", "127.0.0.1:0", "--mqtt-tls", "127.0.0.1:0", "--certs"])
        .arg(certs)
        .arg("--data-dir")
        .arg(certs.with_file_name("data"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn quiclab serve");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (mut udp, mut tcp, mut spki, mut mqtt_tls, mut threads) = (None, None, None, None, None);
    while let Some(Ok(line)) = lines.next() {
        if let Some(rest) = line.split("mqtts://localhost:").nth(1) {
            mqtt_tls = rest.split_whitespace().next().and_then(|p| p.parse::<u16>().ok());
        }
        if let Some(rest) = line.split("(UDP ").nth(1) {
            udp = rest.trim_end_matches(')').rsplit(':').next().map(|p| p.parse::<u16>().unwrap());
        }
        if let Some(rest) = line.split("(TCP ").nth(1) {
            tcp = rest.trim_end_matches(')').rsplit(':').next().map(|p| p.parse::<u16>().unwrap());
        }
        if let Some(rest) = line.trim().strip_prefix("SPKI sha256") {
            spki = Some(rest.trim().to_string());
        }
        if let Some(rest) = line.trim().strip_prefix("runtime") {
            threads = rest.split_whitespace().next().and_then(|n| n.parse::<usize>().ok());
        }
        if line.starts_with("effective configuration") {
            break;
        }
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let (udp, tcp) = (udp.expect("banner names the UDP address"), tcp.expect("banner names the TCP address"));
    assert_eq!(udp, tcp, "port 0 picks one port for both transports");
    let threads = threads.expect("banner prints the runtime's worker threads");
    Served { child, port: udp, spki: spki.expect("banner prints the SPKI hash"), mqtt_tls, threads }
}

#[test]
fn certs_serve_get_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");

    let out = quiclab().args(["certs", "--certs"]).arg(&certs).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("created development certificates"), "{text}");
    let spki_line = text.lines().find(|l| l.starts_with("leaf SPKI sha256:")).expect("SPKI line");
    let spki = spki_line.rsplit(' ').next().unwrap().to_string();
    assert!(text.contains(&format!("--ignore-certificate-errors-spki-list={spki}")));
    assert!(text.contains("--cacert"));

    let s = serve(&certs);
    assert_eq!(s.spki, spki, "serve reuses the certificates `certs` created");
    let ca = certs.join("ca.pem");
    for http2 in [false, true] {
        let mut cmd = quiclab();
        cmd.args(["get", "-i", "-v", "--cacert"]).arg(&ca).arg(format!("https://localhost:{}/bytes/3000", s.port));
        if http2 {
            cmd.arg("--http2");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let proto = if http2 { "h2" } else { "h3" };
        assert!(out.stdout.starts_with(format!("{proto} 200 OK\n").as_bytes()));
        let body_start = out.stdout.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
        assert_eq!(out.stdout.len() - body_start, 3000);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("protocol={proto}")) && err.contains("bytes=3000") && err.contains("ttfb="),
            "{err}"
        );
    }

    // -o writes the body to a file.
    let file = dir.path().join("body.bin");
    let ok = quiclab()
        .args(["get", "--cacert"])
        .arg(&ca)
        .arg("-o")
        .arg(&file)
        .arg(format!("https://127.0.0.1:{}/bytes/1k", s.port))
        .status()
        .unwrap();
    assert!(ok.success());
    assert_eq!(std::fs::read(&file).unwrap().len(), 1024);

    // Without --cacert, `get` trusts ./certs/ca.pem when it exists.
    let out = quiclab()
        .args(["get", &format!("https://localhost:{}/status/200", s.port)])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Errors: non-zero exit and one line naming the problem.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    for (args, needle) in [
        (vec!["get".to_string(), "http://localhost/".to_string()], "https"),
        (vec!["get".to_string(), format!("https://localhost:{}/", s.port)], "certificate"),
    ] {
        let out = quiclab().args(&args).current_dir(&elsewhere).output().unwrap();
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<_> = err.lines().filter(|l| l.starts_with("quiclab: error:")).collect();
        assert_eq!(lines.len(), 1, "one error line: {err}");
        assert!(lines[0].to_lowercase().contains(needle), "{err}");
    }

    // SIGTERM: graceful shutdown, exit 0, well within the grace period.
    let mut s = s;
    let t = Instant::now();
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn threads_sets_the_runtime_and_defaults_to_every_core() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(serve(&certs).threads, cores, "default: every core the process may run on");
    assert_eq!(serve_with(&certs, &["--threads", "1"]).threads, 1);
    // Global: also before the subcommand.
    let out = quiclab().args(["--threads", "0", "serve"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--threads") && err.contains('0'), "clap names the bad value: {err}");
}

#[test]
fn serve_reports_a_busy_port() {
    let dir = tempfile::tempdir().unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let out = quiclab()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--mqtt-tcp",
            "127.0.0.1:0",
            "--mqtt-tls",
            "127.0.0.1:0",
            "--no-persist",
            "--certs",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on UDP 127.0.0.1:{port}")), "{err}");
}

/// `quiclab mqtt sub|pub --url mqtt+quic://... --streams per-topic` against `quiclab serve`'s
/// shared QUIC port: two filters on two data streams, every message printed once.
#[test]
fn mqtt_pub_sub_per_topic_streams_over_quic() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let served = serve(&certs);
    let url = format!("mqtt+quic://localhost:{}", served.port);
    let ca = certs.join("ca.pem");
    let mut sub = quiclab()
        .args(["mqtt", "sub", "--url", &url, "--streams", "per-topic", "-t", "room/a", "-t", "room/b"])
        .args(["-q", "1", "-C", "4", "-W", "20s", "--cacert"])
        .arg(&ca)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let publish = |topic: &str, msg: &str, retain: bool| {
        let mut cmd = quiclab();
        cmd.args(["mqtt", "pub", "--url", &url, "--streams", "per-topic", "-t", topic, "-m", msg, "-q", "1"]);
        if retain {
            cmd.arg("-r");
        }
        let out = cmd.arg("--cacert").arg(&ca).output().unwrap();
        assert!(out.status.success(), "pub {topic}: {}", String::from_utf8_lossy(&out.stderr));
    };
    // The subscriptions are in place once a retained probe has come back through them (as a
    // retained message if it was published before the SUBSCRIBE, as a live one after).
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    publish("room/a", "first", true);
    let first = lines.next().expect("a first line").unwrap();
    assert!(first.starts_with("room/a\tqos=1\tretain=") && first.ends_with("\tfirst"), "{first}");
    for (t, m) in [("room/b", "second"), ("room/a", "third"), ("room/b", "fourth")] {
        publish(t, m, false);
    }
    let mut rest: Vec<String> = lines.by_ref().take(3).map(|l| l.unwrap()).collect();
    rest.sort();
    assert_eq!(
        rest,
        vec!["room/a\tqos=1\tretain=0\tthird", "room/b\tqos=1\tretain=0\tfourth", "room/b\tqos=1\tretain=0\tsecond"]
    );
    let status = sub.wait().unwrap();
    assert!(status.success(), "mqtt sub exits 0 after -C 4: {status:?}");
    // Per-topic mode needs QUIC.
    let out = quiclab()
        .args(["mqtt", "pub", "--url", "mqtt://127.0.0.1:1", "--streams", "per-topic", "-t", "x", "-m", "y"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mqtt+quic://"), "{}", String::from_utf8_lossy(&out.stderr));
    drop(served);
}

/// `quiclab mqtt pub --0rtt --repeat 3` resumes within one process and says what became of
/// 0-RTT per connection; `--rebind-after 5` moves the client mid-session and says so.
#[test]
fn mqtt_pub_zero_rtt_repeat_and_rebind_report_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let served = serve(&certs);
    let url = format!("mqtt+quic://localhost:{}", served.port);
    let ca = certs.join("ca.pem");
    let run = |extra: &[&str]| {
        let out = quiclab()
            .args(["mqtt", "pub", "--url", &url, "-t", "cli/0rtt", "-m", "x", "-q", "1", "--cacert"])
            .arg(&ca)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--0rtt", "--repeat", "3"]);
    assert!(err.contains("connection 1/3: 0-RTT not attempted (no ticket yet)"), "{err}");
    for n in [2, 3] {
        // On loopback the handshake can finish before the server reads the early CONNECT; what
        // the client reports is whether the server accepted the early data at all.
        assert!(err.contains(&format!("connection {n}/3: 0-RTT accepted")), "{err}");
    }
    let err = run(&["--count", "10", "--rebind-after", "5"]);
    assert!(err.contains("moved from") && err.contains("after 5 messages"), "{err}");
    // Both need QUIC.
    let out = quiclab()
        .args(["mqtt", "pub", "--url", "mqtt://127.0.0.1:1", "--0rtt", "-t", "x", "-m", "y"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--0rtt needs an mqtt+quic:// URL"));
    drop(served);
}

/// `quiclab certs --client NAME` issues a client certificate (files, modes, the command lines
/// it prints), keeps it on a second run and refuses a name with a path in it; `serve
/// --mqtt-require-certificate` then lets `quiclab mqtt pub --cert --key` in over TLS and QUIC,
/// and refuses it without.
#[test]
fn certs_client_and_mqtt_pub_with_a_client_certificate() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = quiclab().args(["certs", "--client", "alice", "--certs"]).arg(&certs).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (cert, key, ca) = (certs.join("client-alice.pem"), certs.join("client-alice-key.pem"), certs.join("ca.pem"));
    assert!(text.contains("created development certificates"), "{text}");
    assert!(text.contains(&format!("{}  (CN=alice, created)", cert.display())), "{text}");
    let mosq = format!("--cafile {} --cert {} --key {}", ca.display(), cert.display(), key.display());
    assert!(text.contains("mosquitto_pub -h localhost -p 8883") && text.contains(&mosq), "{text}");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&cert).unwrap().permissions().mode() & 0o777, 0o644);
    let pem = std::fs::read(&cert).unwrap();
    let again = quiclab().args(["certs", "--client", "alice", "--certs"]).arg(&certs).output().unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("exists, kept"));
    assert_eq!(std::fs::read(&cert).unwrap(), pem, "a second run keeps the certificate");
    let bad = quiclab().args(["certs", "--client", "../alice", "--certs"]).arg(&certs).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("quiclab: error: client name \"../alice\""));

    let served = serve_with(&certs, &["--mqtt-require-certificate"]);
    let tls = served.mqtt_tls.expect("banner names the MQTT/TLS port");
    for url in [format!("mqtts://localhost:{tls}"), format!("mqtt+quic://localhost:{}", served.port)] {
        let publish = |with_cert: bool| {
            let mut cmd = quiclab();
            cmd.args([
                "mqtt",
                "pub",
                "--url",
                &url,
                "-t",
                "cli/cert",
                "-m",
                "x",
                "--connect-timeout",
                "5s",
                "--cacert",
            ])
            .arg(&ca);
            if with_cert {
                cmd.arg("--cert").arg(&cert).arg("--key").arg(&key);
            }
            cmd.output().unwrap()
        };
        let out = publish(false);
        assert!(!out.status.success(), "{url}: no certificate, no entry");
        let out = publish(true);
        assert!(out.status.success(), "{url}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = quiclab()
        .args(["mqtt", "pub", "--url", "mqtt://127.0.0.1:1", "-t", "x", "-m", "y", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cert needs an mqtts:// or mqtt+quic:// URL"));
    drop(served);
}

/// A bad password or ACL file stops `serve` and `mqtt broker` before they listen, with one line
/// naming the file and the line; `mqtt passwd` writes a file that `serve` then loads.
#[test]
fn bad_auth_files_stop_startup_and_passwd_writes_a_loadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad_pw = dir.path().join("bad.pw");
    std::fs::write(&bad_pw, "# users\nalice:plaintext\n").unwrap();
    let bad_acl = dir.path().join("bad.acl");
    std::fs::write(&bad_acl, "user alice\ntopic rw a/#\n").unwrap();
    let certs = dir.path().join("certs");
    let certs = certs.to_str().unwrap();
    for (flag, file, want) in [
        ("--mqtt-password-file", &bad_pw, "bad.pw:2: unknown hash scheme"),
        ("--mqtt-acl-file", &bad_acl, "bad.acl:2: access \"rw\" is not read, write, readwrite or deny"),
    ] {
        let serve = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--mqtt-tcp",
            "127.0.0.1:0",
            "--mqtt-tls",
            "127.0.0.1:0",
            "--no-persist",
            "--certs",
            certs,
        ];
        let broker = ["mqtt", "broker", "--tcp", "127.0.0.1:0", "--no-persist"];
        for args in [&serve[..], &broker[..]] {
            let out = quiclab().args(args).arg(flag).arg(file).output().unwrap();
            assert!(!out.status.success(), "{args:?} {flag}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(want), "{args:?} {flag}: {err}");
            assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "nothing listened");
        }
    }
    let pw = dir.path().join("users");
    let out = quiclab().args(["mqtt", "passwd", "-c", "-b"]).arg(&pw).args(["alice", "secret"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = quiclab().args(["mqtt", "passwd", "-D"]).arg(&pw).arg("nobody").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("user \"nobody\" not found"));
    let pw = pw.to_str().unwrap();
    let (mut child, text) = broker(std::path::Path::new("."), &["--no-persist", "--mqtt-password-file", pw]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("(1 users)") && text.contains("mqtt_allow_anonymous     false"), "{text}");
}

/// An error names what failed and prints its cause once: `main` prints the error and its
/// `source()` chain, so no layer repeats its cause in its own message.
#[test]
fn errors_name_the_failure_and_print_the_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let at_missing = format!("@{}", missing.display());
    let missing = missing.to_str().unwrap();
    for args in [
        vec!["get", "-d", &at_missing, "https://localhost:1/"],
        vec!["mqtt", "pub", "--url", "mqtt://127.0.0.1:1", "-t", "x", "-f", missing],
    ] {
        let out = quiclab().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().find(|l| l.starts_with("quiclab: error:")).unwrap_or_else(|| panic!("{err}"));
        assert!(line.contains(&format!("cannot read {missing}: ")), "{line}");
        assert_eq!(line.matches("os error 2").count(), 1, "the cause once: {line}");
    }
}

/// `get` and `mqtt pub|sub` share one `--rebind-after` syntax, and a bad value is a usage error
/// that says what is accepted.
#[test]
fn rebind_after_is_one_syntax_for_get_and_mqtt() {
    for args in [
        vec!["get", "--rebind-after", "soon", "https://localhost:1/"],
        vec!["mqtt", "pub", "-t", "x", "-m", "y", "--rebind-after", "soon"],
        vec!["mqtt", "sub", "-t", "x", "--rebind-after", "soon"],
    ] {
        let out = quiclab().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: a usage error");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("give a count (1000, 64k, 5M) or a time ending in ms or s"), "{args:?}: {err}");
    }
    for sub in [&["get"][..], &["mqtt", "pub"], &["mqtt", "sub"]] {
        let out = quiclab().args(sub).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(help.contains("an optional k, M or G suffix") && help.contains("ending in ms or s"), "{sub:?}: {help}");
    }
}

/// The broker keeps its store in `data/` under the working directory unless told otherwise;
/// a second broker on the same store is refused with an error saying why; `--no-persist`
/// opens no file; `--sync` takes `always` or an interval.
#[test]
fn the_store_is_on_by_default_in_data_and_off_with_no_persist() {
    let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let dir = tempfile::tempdir().unwrap();
    let (mut first, banner) = broker(dir.path(), &[]);
    assert!(words(&banner).contains("mqtt_data_dir data"), "{banner}");
    assert!(words(&banner).contains("mqtt_sync always (an fsync per commit"), "{banner}");
    assert!(dir.path().join("data/mqtt.redb").is_file(), "the store is created in ./data");
    let second = quiclab().args(["mqtt", "broker", "--tcp", "127.0.0.1:0"]).current_dir(dir.path()).output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("mqtt.redb is open in another process") && err.contains("--no-persist"), "{err}");
    let _ = first.kill();
    let _ = first.wait();

    let dir = tempfile::tempdir().unwrap();
    let (mut off, banner) = broker(dir.path(), &["--no-persist"]);
    let _ = off.kill();
    let _ = off.wait();
    assert!(words(&banner).contains("mqtt_data_dir (none: nothing survives a restart)"), "{banner}");
    assert!(!words(&banner).contains("mqtt_sync"), "{banner}");
    assert!(!dir.path().join("data").exists(), "--no-persist opens no file");
    let (mut every, banner) = broker(dir.path(), &["--data-dir", "elsewhere", "--sync", "250ms"]);
    let _ = every.kill();
    let _ = every.wait();
    assert!(words(&banner).contains("mqtt_sync every 250ms"), "{banner}");
    assert!(dir.path().join("elsewhere/mqtt.redb").is_file());

    for (args, want) in [
        (&["--sync", "0s"][..], "an interval of 0 is `always`"),
        (&["--sync", "often"], "(or `always`)"),
        (&["--no-persist", "--data-dir", "x"], "cannot be used with"),
    ] {
        let out = quiclab()
            .args(["mqtt", "broker", "--tcp", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: a usage error");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(want),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `quiclab mqtt pub|sub --protocol 5` against `quiclab mqtt broker`: a message with `-D`
/// properties reaches the subscriber, which prints them; `-D` without `--protocol 5` is refused.
#[test]
fn mqtt_pub_sub_protocol_5_with_properties() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, banner) = broker(dir.path(), &["--no-persist"]);
    let addr = banner
        .lines()
        .find_map(|l| l.strip_prefix("mqtt tcp "))
        .unwrap_or_else(|| panic!("no MQTT/TCP address in the banner:\n{banner}"));
    let url = format!("mqtt://{addr}");
    let mut sub = quiclab()
        .args(["mqtt", "sub", "--url", &url, "--protocol", "5", "-t", "v5/#", "-q", "1", "-C", "1", "-W", "20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    // Retained, so the message reaches the subscriber whether it subscribed before or after.
    let out = quiclab()
        .args(["mqtt", "pub", "--url", &url, "--protocol", "5", "-t", "v5/x", "-m", "hello", "-q", "1", "-r"])
        .args(["--response-topic", "v5/reply", "-D", "publish", "user-property", "k", "v"])
        .output()
        .unwrap();
    assert!(out.status.success(), "pub: {}", String::from_utf8_lossy(&out.stderr));
    let line = lines.next().expect("a line").unwrap();
    assert!(line.starts_with("v5/x\tqos=1\tretain="), "{line}");
    assert!(
        line.contains("\thello\t") && line.contains("response-topic=v5/reply") && line.contains("user-property=k:v"),
        "{line}"
    );
    assert!(sub.wait().unwrap().success());
    let out = quiclab()
        .args(["mqtt", "pub", "--url", &url, "-t", "v5/x", "-m", "y", "-D", "publish", "user-property", "k", "v"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--protocol 5"), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = child.kill();
    let _ = child.wait();
}
