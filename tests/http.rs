//! The test site over HTTP/3 and HTTP/2 with quiclab's own client: every endpoint, a large
//! download checked byte for byte, many concurrent requests on one connection.

mod common;

use common::{assert_pattern, send, TestServer, BOTH};
use quiclab::client::HttpVersion;
use quiclab::conn::Protocol;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_over_both_protocols() {
    let ts = TestServer::start().await;
    for v in BOTH {
        let (conn, _) = ts.connect(v).await;
        let want_proto = if v == HttpVersion::H3 { Protocol::H3 } else { Protocol::H2 };
        assert_eq!(conn.protocol(), want_proto);
        let url = |p: &str| ts.url(v, p);

        let r = send(&conn, "GET", &url("/"), &[], b"").await;
        assert_eq!(r.status, 200);
        assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/html"));
        let page = r.text();
        assert!(page.contains(r#"<span id="protocol"></span>"#), "index has an empty protocol span");
        assert!(page.contains("nextHopProtocol"));
        for link in [
            "/bytes/",
            "/echo",
            "/headers",
            "/status/",
            "/delay-ms/",
            "/delay/",
            "/get",
            "/anything",
            "/redirect-to",
            "/cookies",
            "/drip",
            "/range/",
            "/etag/",
            "/gzip",
            "/brotli",
            "/deflate",
            "/uuid",
            "/bearer",
            "/base64/",
        ] {
            assert!(page.contains(&format!("href=\"{link}")), "index links {link}");
        }

        let r = send(&conn, "GET", &url("/bytes/100k"), &[], b"").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 100 * 1024);
        assert_eq!(r.headers["content-length"], "102400");
        assert_pattern(&r.body, 0);

        let r = send(&conn, "GET", &url("/bytes/0"), &[], b"").await;
        assert_eq!((r.status.as_u16(), r.body.len()), (200, 0));

        let r = send(&conn, "POST", &url("/echo"), &[("content-type", "text/x-test")], b"hello quiclab").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-type"], "text/x-test");
        assert_eq!(&r.body[..], b"hello quiclab");

        let r = send(&conn, "PUT", &url("/echo"), &[], &vec![7u8; 300_000]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-type"], "application/octet-stream");
        assert_eq!(r.body.len(), 300_000);

        let r = send(&conn, "GET", &url("/headers"), &[("x-probe", "one"), ("x-probe", "two")], b"").await;
        assert_eq!(r.status, 200);
        let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(json["x-probe"], "one, two");
        assert!(json["user-agent"].as_str().unwrap().starts_with("quiclab/"));

        // Both transports send Date and, for bodies of known size, Content-Length.
        let r = send(&conn, "GET", &url("/status/418"), &[], b"").await;
        assert!(r.headers.contains_key("date"), "{v:?} lacks Date");
        assert_eq!(r.headers["content-length"], "17", "{v:?}");
        let r = send(&conn, "HEAD", &url("/headers"), &[], b"").await;
        assert!(r.headers["content-length"].to_str().unwrap().parse::<u64>().unwrap() > 2, "{v:?} HEAD length");

        for code in [200u16, 204, 301, 404, 418, 503, 599] {
            let r = send(&conn, "GET", &url(&format!("/status/{code}")), &[], b"").await;
            assert_eq!(r.status.as_u16(), code);
        }
        for bad in ["/status/99", "/status/600", "/status/abc"] {
            assert_eq!(send(&conn, "GET", &url(bad), &[], b"").await.status, 400, "{bad}");
        }

        let t = std::time::Instant::now();
        let r = send(&conn, "GET", &url("/delay-ms/50"), &[], b"").await;
        assert_eq!(r.status, 200);
        assert!(t.elapsed() >= std::time::Duration::from_millis(50));

        assert_eq!(send(&conn, "GET", &url("/nope"), &[], b"").await.status, 404);
        let r = send(&conn, "DELETE", &url("/bytes/10"), &[], b"").await;
        assert_eq!(r.status, 405);
        assert_eq!(r.headers["allow"], "GET, HEAD, OPTIONS");

        let r = send(&conn, "HEAD", &url("/bytes/5000"), &[], b"").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-length"], "5000");
        assert!(r.body.is_empty());

        // Alt-Svc advertises the QUIC port on every TCP response, never on HTTP/3.
        let r = send(&conn, "GET", &url("/status/200"), &[], b"").await;
        match v {
            HttpVersion::H2 => {
                assert_eq!(r.headers["alt-svc"], format!("h3=\":{}\"; ma=3600", ts.server.quic_addr().port()).as_str())
            }
            HttpVersion::H3 => assert!(r.headers.get("alt-svc").is_none()),
        }
        conn.close().await;
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_with_4xx() {
    let ts = TestServer::start_with(|c| {
        c.limits.max_bytes = 1000;
        c.limits.max_body = 1000;
        c.limits.max_delay = std::time::Duration::from_millis(100);
    })
    .await;
    for v in BOTH {
        let (conn, _) = ts.connect(v).await;
        let url = |p: &str| ts.url(v, p);
        assert_eq!(send(&conn, "GET", &url("/bytes/1000"), &[], b"").await.status, 200);
        assert_eq!(send(&conn, "GET", &url("/bytes/1001"), &[], b"").await.status, 400);
        assert_eq!(send(&conn, "GET", &url("/bytes/12x"), &[], b"").await.status, 400);
        assert_eq!(send(&conn, "GET", &url("/bytes/99999999999999999999"), &[], b"").await.status, 400);
        assert_eq!(send(&conn, "POST", &url("/echo"), &[], &[1u8; 1001]).await.status, 413);
        assert_eq!(send(&conn, "GET", &url("/delay-ms/101"), &[], b"").await.status, 400);
        // The connection is still usable after every refusal.
        assert_eq!(send(&conn, "GET", &url("/bytes/10"), &[], b"").await.body.len(), 10);
        conn.close().await;
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_byte_for_byte() {
    let ts = TestServer::start().await;
    for v in BOTH {
        let (conn, _) = ts.connect(v).await;
        let r = send(&conn, "GET", &ts.url(v, "/bytes/50M"), &[], b"").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 50 << 20, "{v:?}");
        assert_pattern(&r.body, 0);
        conn.close().await;
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_requests_on_one_connection() {
    let ts = TestServer::start().await;
    for v in BOTH {
        let (conn, _) = ts.connect(v).await;
        let conn = std::sync::Arc::new(conn);
        let mut tasks = Vec::new();
        for i in 0..100u64 {
            let conn = conn.clone();
            let url = ts.url(v, &format!("/bytes/{}", 1000 + i));
            tasks.push(tokio::spawn(async move { (i, send(&conn, "GET", &url, &[], b"").await) }));
        }
        for t in tasks {
            let (i, r) = t.await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.body.len() as u64, 1000 + i);
            assert_pattern(&r.body, 0);
        }
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_reports_timings_and_protocol() {
    let ts = TestServer::start().await;
    for v in BOTH {
        let client = ts.client(v);
        let target = quiclab::client::Target::parse(&ts.url(v, "/bytes/2k")).unwrap();
        let req = quiclab::client::request(&target, http::Method::GET, bytes::Bytes::new()).unwrap();
        let f = quiclab::client::fetch(&client, &target, req).await.unwrap();
        assert_eq!(f.body.len(), 2048);
        let t = f.timings;
        assert!(t.handshake <= t.ttfb && t.ttfb <= t.total, "{t:?}");
        let line = f.timing_line();
        let proto = if v == HttpVersion::H3 { "protocol=h3" } else { "protocol=h2" };
        assert!(line.contains(proto) && line.contains("bytes=2048") && line.contains("handshake="), "{line}");
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_is_refused_and_insecure_accepts() {
    let ts = TestServer::start().await;
    for v in BOTH {
        let target = quiclab::client::Target::parse(&ts.url(v, "/")).unwrap();
        let webpki = quiclab::client::Client::new(v, &Default::default()).unwrap();
        assert!(webpki.connect(&target).await.is_err(), "{v:?}: a self-made CA must not be trusted by default");
        let opts = quiclab::client::ClientOptions { trust: quiclab::tls::Trust::Insecure, ..Default::default() };
        let insecure = quiclab::client::Client::new(v, &opts).unwrap();
        let conn = insecure.connect(&target).await.expect("--insecure connects");
        assert_eq!(send(&conn, "GET", &ts.url(v, "/status/200"), &[], b"").await.status, 200);
    }
    ts.stop().await;
}
