//! HTTP semantics of the site over HTTP/3 and HTTP/2 alike: validators and conditional
//! requests, ranges, HEAD, 405, static files and every traversal form, `/conn`, limits,
//! qlog, Retry, the connection limit and graceful shutdown.

mod common;

use common::{assert_pattern, send, TestServer, BOTH};
use quiclab::client::{HttpConnection, HttpVersion};

/// `https://localhost:PORT` + a raw path, not normalised (the url crate would fold `..`).
fn raw_url(ts: &TestServer, v: HttpVersion, raw: &str) -> String {
    ts.url(v, raw)
}

async fn send_raw(conn: &HttpConnection, ts: &TestServer, v: HttpVersion, raw: &str) -> common::Resp {
    let port = match v {
        HttpVersion::H3 => ts.server.quic_addr().port(),
        HttpVersion::H2 => ts.server.tcp_addr().port(),
    };
    let uri: http::Uri = format!("https://localhost:{port}{raw}").parse().unwrap();
    let req = http::Request::builder().method("GET").uri(uri).body(bytes::Bytes::new()).unwrap();
    let resp = conn.send(req).await.expect("request");
    let (parts, body) = resp.into_parts();
    use http_body_util::BodyExt;
    let body = body.collect().await.unwrap().to_bytes();
    common::Resp { status: parts.status, headers: parts.headers, body }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validators_and_conditional_requests() {
    let ts = TestServer::start().await;
    for v in BOTH {
        let (conn, _) = ts.connect(v).await;
        for path in ["/", "/bytes/4k"] {
            let url = ts.url(v, path);
            let r = send(&conn, "GET", &url, &[], b"").await;
            assert_eq!(r.status, 200);
            let etag = r.headers["etag"].to_str().unwrap().to_string();
            let lm = r.headers["last-modified"].to_str().unwrap().to_string();
            assert!(etag.starts_with('"') && etag.ends_with('"'), "strong ETag: {etag}");
            assert!(r.headers.contains_key("cache-control"));
            assert_eq!(r.headers["accept-ranges"], "bytes");

            let r = send(&conn, "GET", &url, &[("if-none-match", &etag)], b"").await;
            assert_eq!(r.status, 304, "{v:?} {path} If-None-Match");
            assert!(r.body.is_empty());
            assert_eq!(r.headers["etag"], etag.as_str());
            let r = send(&conn, "GET", &url, &[("if-none-match", "\"other\", W/".to_owned().as_str())], b"").await;
            assert_eq!(r.status, 200);
            let weak = format!("W/{etag}");
            assert_eq!(send(&conn, "GET", &url, &[("if-none-match", &weak)], b"").await.status, 304);
            assert_eq!(send(&conn, "GET", &url, &[("if-none-match", "*")], b"").await.status, 304);
            assert_eq!(send(&conn, "GET", &url, &[("if-modified-since", &lm)], b"").await.status, 304);
            let old = "Mon, 01 Jan 2001 00:00:00 GMT";
            assert_eq!(send(&conn, "GET", &url, &[("if-modified-since", old)], b"").await.status, 200);
            // If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2).
            assert_eq!(
                send(&conn, "GET", &url, &[("if-none-match", "\"x\""), ("if-modified-since", &lm)], b"").await.status,
                200
            );
            assert_eq!(send(&conn, "GET", &url, &[("if-match", "\"x\"")], b"").await.status, 412);
            assert_eq!(send(&conn, "GET", &url, &[("if-match", &etag)], b"").await.status, 200);
            assert_eq!(send(&conn, "GET", &url, &[("if-unmodified-since", old)], b"").await.status, 412);
            let r = send(&conn, "HEAD", &url, &[("if-none-match", &etag)], b"").await;
            assert_eq!(r.status, 304);
        }
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_206_416_and_multipart() {
    let ts = TestServer::start().await;
    for v in BOTH {
        let (conn, _) = ts.connect(v).await;
        let url = ts.url(v, "/bytes/10000");
        let r = send(&conn, "GET", &url, &[("range", "bytes=100-199")], b"").await;
        assert_eq!(r.status, 206);
        assert_eq!(r.headers["content-range"], "bytes 100-199/10000");
        assert_eq!(r.headers["content-length"], "100");
        assert_pattern(&r.body, 100);

        let r = send(&conn, "GET", &url, &[("range", "bytes=-10")], b"").await;
        assert_eq!((r.status.as_u16(), r.body.len()), (206, 10));
        assert_eq!(r.headers["content-range"], "bytes 9990-9999/10000");
        assert_pattern(&r.body, 9990);

        let r = send(&conn, "GET", &url, &[("range", "bytes=9000-")], b"").await;
        assert_eq!(r.headers["content-range"], "bytes 9000-9999/10000");
        assert_eq!(r.body.len(), 1000);

        let r = send(&conn, "GET", &url, &[("range", "bytes=10000-")], b"").await;
        assert_eq!(r.status, 416);
        assert_eq!(r.headers["content-range"], "bytes */10000");

        // Absurd lists: too many ranges, or overlapping ones, are refused with 416.
        let many: String =
            format!("bytes={}", (0..40).map(|i| format!("{}-{}", i * 10, i * 10 + 1)).collect::<Vec<_>>().join(","));
        assert_eq!(send(&conn, "GET", &url, &[("range", &many)], b"").await.status, 416);
        assert_eq!(send(&conn, "GET", &url, &[("range", "bytes=0-100,50-60")], b"").await.status, 416);
        // Unparseable ranges are ignored (RFC 9110 §14.2): the full representation.
        let r = send(&conn, "GET", &url, &[("range", "bytes=zz")], b"").await;
        assert_eq!((r.status.as_u16(), r.body.len()), (200, 10000));
        let r = send(&conn, "GET", &url, &[("range", "lines=1-2")], b"").await;
        assert_eq!(r.status, 200);

        // Two ranges: multipart/byteranges with both parts.
        let r = send(&conn, "GET", &url, &[("range", "bytes=0-9,20-29")], b"").await;
        assert_eq!(r.status, 206);
        let ct = r.headers["content-type"].to_str().unwrap();
        assert!(ct.starts_with("multipart/byteranges; boundary="), "{ct}");
        assert_eq!(r.headers["content-length"].to_str().unwrap().parse::<usize>().unwrap(), r.body.len());
        let text = String::from_utf8_lossy(&r.body);
        assert!(text.contains("Content-Range: bytes 0-9/10000") && text.contains("Content-Range: bytes 20-29/10000"));

        // If-Range: a matching strong ETag gives the range, a stale one the whole thing.
        let etag = send(&conn, "HEAD", &url, &[], b"").await.headers["etag"].to_str().unwrap().to_string();
        let r = send(&conn, "GET", &url, &[("range", "bytes=0-0"), ("if-range", &etag)], b"").await;
        assert_eq!(r.status, 206);
        let r = send(&conn, "GET", &url, &[("range", "bytes=0-0"), ("if-range", "\"stale\"")], b"").await;
        assert_eq!((r.status.as_u16(), r.body.len()), (200, 10000));

        // HEAD with a range: the headers of the 206, no body.
        let r = send(&conn, "HEAD", &url, &[("range", "bytes=0-99")], b"").await;
        assert_eq!(r.status, 206);
        assert_eq!(r.headers["content-length"], "100");
        assert!(r.body.is_empty());
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_and_every_traversal_form() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "top secret").unwrap();
    let root_dir = tempfile::tempdir().unwrap();
    let root = root_dir.path();
    std::fs::write(root.join("hello.txt"), "hello from the root\n").unwrap();
    std::fs::create_dir(root.join("docs")).unwrap();
    std::fs::write(root.join("docs/index.html"), "<h1>docs</h1>").unwrap();
    std::fs::write(root.join("data.json"), "{\"a\":1}").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), root.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("outside")).unwrap();
    let root_path = root.to_path_buf();
    let ts = TestServer::start_with(move |c| c.root = Some(root_path)).await;
    for v in BOTH {
        let (conn, _) = ts.connect(v).await;
        let r = send(&conn, "GET", &ts.url(v, "/hello.txt"), &[], b"").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "hello from the root\n");
        assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");
        let etag = r.headers["etag"].to_str().unwrap().to_string();
        assert!(r.headers.contains_key("last-modified"));
        assert_eq!(send(&conn, "GET", &ts.url(v, "/hello.txt"), &[("if-none-match", &etag)], b"").await.status, 304);
        let r = send(&conn, "GET", &ts.url(v, "/hello.txt"), &[("range", "bytes=6-9")], b"").await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (206, "from"));
        assert_eq!(send(&conn, "GET", &ts.url(v, "/docs/"), &[], b"").await.text(), "<h1>docs</h1>");
        assert_eq!(
            send(&conn, "GET", &ts.url(v, "/data.json"), &[], b"").await.headers["content-type"],
            "application/json"
        );
        let r = send(&conn, "POST", &ts.url(v, "/hello.txt"), &[], b"x").await;
        assert_eq!(r.status, 405);
        assert_eq!(r.headers["allow"], "GET, HEAD, OPTIONS");
        // Built-in pages still answer where the root has no file.
        assert_eq!(send(&conn, "GET", &ts.url(v, "/bytes/10"), &[], b"").await.body.len(), 10);
        assert_eq!(send(&conn, "GET", &ts.url(v, "/missing.txt"), &[], b"").await.status, 404);

        for (raw, want) in [
            ("/../etc/passwd", 400),
            ("/docs/../../etc/passwd", 400),
            ("/%2e%2e/etc/passwd", 400),
            ("/%2E%2E/%2e%2e/etc/passwd", 400),
            ("/.%2e/secret.txt", 400),
            ("/docs%2f..%2f..%2fsecret.txt", 400),
            ("/..%5c..%5csecret.txt", 400),
            ("//etc/passwd", 400),
            ("/hello.txt%00.html", 400),
            ("/leak.txt", 404),
            ("/outside/secret.txt", 404),
        ] {
            let r = send_raw(&conn, &ts, v, raw).await;
            assert_eq!(r.status.as_u16(), want, "{v:?} {raw}");
            assert!(!r.text().contains("top secret"), "{raw} leaked the file");
        }
    }
    let _ = raw_url;
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conn_reports_the_connection() {
    let ts = TestServer::start().await;
    for v in BOTH {
        let (conn, _) = ts.connect(v).await;
        // Some traffic first, so RTT and counters have samples.
        send(&conn, "GET", &ts.url(v, "/bytes/200k"), &[], b"").await;
        let r = send(&conn, "GET", &ts.url(v, "/conn"), &[], b"").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["cache-control"], "no-store");
        let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        for key in [
            "protocol",
            "alpn",
            "local",
            "remote",
            "rtt_ms",
            "cwnd",
            "sent_packets",
            "lost_packets",
            "early_data",
            "resumed",
            "path_changes",
        ] {
            assert!(j.get(key).is_some(), "{v:?}: /conn lacks {key}: {j}");
        }
        assert_eq!(j["early_data"], false);
        assert_eq!(j["path_changes"], 0);
        assert!(j["rtt_ms"].as_f64().unwrap() > 0.0);
        let local: std::net::SocketAddr = j["local"].as_str().unwrap().parse().unwrap();
        let remote: std::net::SocketAddr = j["remote"].as_str().unwrap().parse().unwrap();
        assert!(local.ip().is_loopback() && remote.ip().is_loopback());
        match v {
            HttpVersion::H3 => {
                assert_eq!((j["protocol"].as_str(), j["alpn"].as_str()), (Some("h3"), Some("h3")));
                assert_eq!(local.port(), ts.server.quic_addr().port());
                assert!(j["cwnd"].as_u64().unwrap() > 0);
                assert!(j["sent_packets"].as_u64().unwrap() > 10);
                assert_eq!(j["lost_packets"], 0);
                assert_eq!(j["resumed"], serde_json::Value::Null, "quinn does not say");
                assert_eq!(j["congestion"], "cubic");
            }
            HttpVersion::H2 => {
                assert_eq!((j["protocol"].as_str(), j["alpn"].as_str()), (Some("h2"), Some("h2")));
                assert_eq!(local.port(), ts.server.tcp_addr().port());
                assert_eq!(j["cwnd"], serde_json::Value::Null, "TCP's cwnd is in segments");
                assert!(j["cwnd_segments"].as_u64().unwrap() > 0);
                assert_eq!(j["lost_packets"], serde_json::Value::Null);
                assert!(j["retransmitted_segments"].is_u64());
                assert!(j["sent_segments"].as_u64().unwrap() > 10);
                assert_eq!(j["resumed"], false);
                assert!(j["congestion"].is_string());
            }
        }
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_headers_are_refused_and_the_server_keeps_serving() {
    let ts = TestServer::start_with(|c| c.limits.max_header_bytes = 8 << 10).await;
    let big = "x".repeat(16 << 10);
    for v in BOTH {
        let (conn, _) = ts.connect(v).await;
        let target = quiclab::client::Target::parse(&ts.url(v, "/headers")).unwrap();
        let mut req = quiclab::client::request(&target, http::Method::GET, bytes::Bytes::new()).unwrap();
        req.headers_mut().insert("x-big", big.parse().unwrap());
        match conn.send(req).await {
            Ok(resp) => assert_eq!(resp.status(), 431, "{v:?}: oversized header section"),
            Err(e) => {
                // HTTP/3: the request stream is refused with an H3 error, which is the protocol's own way.
                assert_eq!(v, HttpVersion::H3, "HTTP/2 should answer 431, got {e}");
            }
        }
        // Another connection is served as usual.
        let (conn2, _) = ts.connect(v).await;
        assert_eq!(send(&conn2, "GET", &ts.url(v, "/status/200"), &[], b"").await.status, 200);
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qlog_files_are_written_per_connection() {
    let qdir = tempfile::tempdir().unwrap();
    let qpath = qdir.path().join("qlogs");
    let q2 = qpath.clone();
    let ts = TestServer::start_with(move |c| c.qlog_dir = Some(q2)).await;
    for _ in 0..2 {
        let (conn, _) = ts.connect(HttpVersion::H3).await;
        send(&conn, "GET", &ts.url(HttpVersion::H3, "/bytes/10k"), &[], b"").await;
        conn.close().await;
    }
    ts.stop().await;
    let files: Vec<_> = std::fs::read_dir(&qpath).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 2, "{files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.contains("\"qlog_version\""), "{}", f.display());
        assert!(text.contains("packet_sent"), "{} has packet events", f.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_validates_then_serves() {
    let ts = TestServer::start_with(|c| c.retry = true).await;
    let (conn, _) = ts.connect(HttpVersion::H3).await;
    assert_eq!(send(&conn, "GET", &ts.url(HttpVersion::H3, "/status/200"), &[], b"").await.status, 200);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_the_extra_connection() {
    let ts = TestServer::start_with(|c| c.max_connections = 1).await;
    for v in BOTH {
        let (first, _) = ts.connect(v).await;
        assert_eq!(send(&first, "GET", &ts.url(v, "/status/200"), &[], b"").await.status, 200);
        let target = quiclab::client::Target::parse(&ts.url(v, "/")).unwrap();
        let opts = quiclab::client::ClientOptions {
            trust: quiclab::tls::Trust::CaFile(ts.ca()),
            connect_timeout: std::time::Duration::from_secs(3),
            ..Default::default()
        };
        let second = quiclab::client::Client::new(v, &opts).unwrap().connect(&target).await;
        assert!(second.is_err(), "{v:?}: second connection must be refused");
        first.close().await;
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let ts = TestServer::start().await;
    let mut tasks = Vec::new();
    let mut conns = Vec::new();
    for v in BOTH {
        let (conn, _) = ts.connect(v).await;
        let conn = std::sync::Arc::new(conn);
        conns.push(conn.clone());
        let url = ts.url(v, "/delay-ms/300");
        tasks.push(tokio::spawn(async move { send(&conn, "GET", &url, &[], b"").await }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // Done before the grace period ran out (then connections would be closed hard), however
    // slow the machine.
    let grace = ts.server.config().shutdown_grace;
    let t = std::time::Instant::now();
    ts.stop().await;
    assert!(t.elapsed() < grace, "shutdown took {:?}", t.elapsed());
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "delayed 300 ms\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_never_finishes_is_closed() {
    use tokio::io::AsyncReadExt;
    let ts = TestServer::start_with(|c| c.limits.handshake_timeout = std::time::Duration::from_millis(300)).await;
    // A TCP client that connects and says nothing.
    let mut silent = tokio::net::TcpStream::connect(ts.server.tcp_addr()).await.unwrap();
    let t = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the server closes the connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a word");
    assert!(t.elapsed() >= std::time::Duration::from_millis(250), "{:?}", t.elapsed());
    // Meanwhile and afterwards, others are served.
    for v in BOTH {
        let (conn, _) = ts.connect(v).await;
        assert_eq!(send(&conn, "GET", &ts.url(v, "/status/200"), &[], b"").await.status, 200);
    }
    ts.stop().await;
}
