//! The httpbin-compatible endpoints (src/web/httpbin.rs) and content coding (src/web/coding.rs)
//! over HTTP/3 and HTTP/2 with quiclab's own client: httpbin's JSON shapes, the caps (400
//! beyond them), the open-redirect guard, and coded bodies decoded with the same crates the
//! server codes them with.

mod common;

use std::time::{Duration, Instant};

use common::{send, Resp, TestServer, BOTH};
use quiclab::client::{HttpConnection, HttpVersion};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

fn body_json(r: &Resp) -> Value {
    assert!(
        r.headers.get("content-type").is_some_and(|v| v.to_str().unwrap().starts_with("application/json")),
        "not JSON: {:?}",
        r.headers
    );
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", r.text()))
}

fn header<'a>(r: &'a Resp, name: &str) -> &'a str {
    r.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or_else(|| panic!("no {name} in {:?}", r.headers))
}

async fn get(conn: &HttpConnection, url: &str, headers: &[(&str, &str)]) -> Resp {
    send(conn, "GET", url, headers, b"").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_dicts_have_httpbin_shapes() {
    let ts = TestServer::start().await;
    for v in BOTH {
        let (conn, _) = ts.connect(v).await;
        let url = |p: &str| ts.url(v, p);
        let authority = url("").trim_start_matches("https://").to_string();

        let r = get(&conn, &url("/get?a=1&a=2&b=x%20y"), &[("x-probe", "p")]).await;
        assert_eq!(r.status, 200, "{v:?}");
        let j = body_json(&r);
        assert_eq!(j["args"], json!({"a": ["1", "2"], "b": "x y"}));
        assert_eq!(j["headers"]["X-Probe"], "p");
        assert_eq!(j["headers"]["Host"], authority.as_str());
        assert!(j["headers"]["User-Agent"].as_str().unwrap().starts_with("quiclab/"));
        assert_eq!(j["origin"], "127.0.0.1");
        assert_eq!(j["url"], format!("https://{authority}/get?a=1&a=2&b=x%20y"));
        let keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["args", "headers", "origin", "url"]);

        let body = br#"{"n": 1, "s": ["x"]}"#;
        let r = send(&conn, "POST", &url("/post?q=1"), &[("content-type", "application/json")], body).await;
        let j = body_json(&r);
        assert_eq!(j["json"], json!({"n": 1, "s": ["x"]}));
        assert_eq!(j["data"], std::str::from_utf8(body).unwrap());
        assert_eq!((j["args"]["q"].as_str(), j["form"].clone(), j["files"].clone()), (Some("1"), json!({}), json!({})));

        let r = send(
            &conn,
            "PUT",
            &url("/put"),
            &[("content-type", "application/x-www-form-urlencoded")],
            b"k=v&k=w&e=%C3%A9",
        )
        .await;
        let j = body_json(&r);
        assert_eq!(j["form"], json!({"k": ["v", "w"], "e": "é"}));
        assert_eq!((j["data"].as_str(), j["json"].is_null()), (Some(""), true));

        let multipart = b"--XyZ\r\nContent-Disposition: form-data; name=\"field\"\r\n\r\nvalue\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"up\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nfile body\r\n\
--XyZ--\r\n";
        let r =
            send(&conn, "PATCH", &url("/patch"), &[("content-type", "multipart/form-data; boundary=XyZ")], multipart)
                .await;
        let j = body_json(&r);
        assert_eq!((j["form"].clone(), j["files"].clone()), (json!({"field": "value"}), json!({"up": "file body"})));
        let r = send(&conn, "PATCH", &url("/patch"), &[("content-type", "multipart/form-data; boundary=XyZ")], b"junk")
            .await;
        assert_eq!(r.status, 400, "malformed multipart: {}", r.text());

        let r = send(&conn, "DELETE", &url("/delete"), &[], &[0xff, 0xfe]).await;
        assert_eq!(body_json(&r)["data"], "data:application/octet-stream;base64,//4=");

        let r = send(&conn, "PUT", &url("/anything/x/y?z=1"), &[], b"hi").await;
        let j = body_json(&r);
        assert_eq!((j["method"].as_str(), j["data"].as_str()), (Some("PUT"), Some("hi")));
        assert_eq!(j["url"], format!("https://{authority}/anything/x/y?z=1"));
        let keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["args", "data", "files", "form", "headers", "json", "method", "origin", "url"]);
        assert_eq!(send(&conn, "BREW", &url("/anything"), &[], b"").await.status, 200, "any method");

        // Methods: 405 with Allow, OPTIONS 204 with Allow, HEAD with the GET's length.
        let r = get(&conn, &url("/post"), &[]).await;
        assert_eq!((r.status.as_u16(), header(&r, "allow")), (405, "OPTIONS, POST"));
        let r = send(&conn, "OPTIONS", &url("/get"), &[], b"").await;
        assert_eq!((r.status.as_u16(), header(&r, "allow")), (204, "GET, HEAD, OPTIONS"));
        let r = send(&conn, "HEAD", &url("/get"), &[], b"").await;
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty() && header(&r, "content-length").parse::<u64>().unwrap() > 50);

        let r = get(&conn, &url("/ip"), &[]).await;
        assert_eq!(body_json(&r), json!({"origin": "127.0.0.1"}));
        let r = get(&conn, &url("/user-agent"), &[]).await;
        assert!(body_json(&r)["user-agent"].as_str().unwrap().starts_with("quiclab/"));
        let r = get(&conn, &url("/uuid"), &[]).await;
        let u = body_json(&r)["uuid"].as_str().unwrap().to_string();
        assert_eq!((u.len(), &u[14..15], u.matches('-').count()), (36, "4", 4), "{u}");

        let r = get(&conn, &url("/base64/SFRUUEJJTiBpcyBhd2Vzb21l"), &[]).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "HTTPBIN is awesome"));
        assert_eq!(header(&r, "x-content-type-options"), "nosniff");
        assert_eq!(get(&conn, &url("/base64/@@@"), &[]).await.status, 400);
        conn.close().await;
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_redirects_and_the_open_redirect_guard() {
    let ts = TestServer::start_with(|c| c.limits.redirect_hosts = vec!["allowed.example".into()]).await;
    for v in BOTH {
        let (conn, _) = ts.connect(v).await;
        let url = |p: &str| ts.url(v, p);
        let origin = url("");

        let r = send(&conn, "POST", &url("/status/418"), &[], b"").await;
        assert_eq!(r.status, 418);
        let r = get(&conn, &url("/status/302"), &[]).await;
        assert_eq!((r.status.as_u16(), header(&r, "location")), (302, "/redirect/1"));
        let r = get(&conn, &url("/status/401"), &[]).await;
        assert!(header(&r, "www-authenticate").starts_with("Basic"));
        for _ in 0..5 {
            let code = get(&conn, &url("/status/201,202"), &[]).await.status.as_u16();
            assert!(code == 201 || code == 202, "{code}");
        }
        let many = vec!["200"; 33].join(",");
        for bad in ["/status/99", "/status/600", "/status/x", "/status/200,", &format!("/status/{many}")] {
            assert_eq!(get(&conn, &url(bad), &[]).await.status, 400, "{bad}");
        }

        for (path, want) in [
            ("/redirect/3", "/relative-redirect/2".to_string()),
            ("/redirect/1", "/get".to_string()),
            ("/relative-redirect/2", "/relative-redirect/1".to_string()),
            ("/absolute-redirect/3", format!("{origin}/absolute-redirect/2")),
            ("/absolute-redirect/1", format!("{origin}/get")),
            ("/redirect/2?absolute=true", format!("{origin}/absolute-redirect/1")),
        ] {
            let r = get(&conn, &url(path), &[]).await;
            assert_eq!((r.status.as_u16(), header(&r, "location")), (302, want.as_str()), "{path}");
        }
        for bad in ["/redirect/0", "/redirect/101", "/relative-redirect/x", "/absolute-redirect/-1"] {
            assert_eq!(get(&conn, &url(bad), &[]).await.status, 400, "{bad}");
        }

        let same_origin = format!("{origin}/get");
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
        for (target, code) in [
            ("/get", "302"),
            ("get?x=1", "307"),
            (same_origin.as_str(), "308"),
            ("https://allowed.example/x", "301"),
            ("http://ALLOWED.example:8080/", "303"),
        ] {
            let r =
                send(&conn, "POST", &url(&format!("/redirect-to?url={}&status_code={code}", enc(target))), &[], b"")
                    .await;
            assert_eq!((r.status.as_str(), header(&r, "location")), (code, target), "{target}");
        }
        let r = get(&conn, &url("/redirect-to?url=/get"), &[]).await;
        assert_eq!(r.status, 302, "302 by default");
        let own_port: u16 = origin.rsplit(':').next().unwrap().parse().unwrap();
        let other_port = format!("https://localhost:{}/", own_port.wrapping_add(1));
        for target in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "https:evil.example",
            "javascript:alert(1)",
            " https://evil.example",
            "http://localhost/",
            other_port.as_str(),
            "https://allowed.example.evil/",
        ] {
            let r = get(&conn, &url(&format!("/redirect-to?url={}", enc(target))), &[]).await;
            assert_eq!(r.status, 400, "{target:?} must be refused: {}", r.text());
            assert!(r.text().contains("refused redirect"), "{}", r.text());
            assert!(r.headers.get("location").is_none());
        }
        assert_eq!(get(&conn, &url("/redirect-to"), &[]).await.status, 400);
        assert_eq!(get(&conn, &url("/redirect-to?url=/get&status_code=300"), &[]).await.status, 400);
        assert_eq!(get(&conn, &url("/redirect-to?url=/get&status_code=abc"), &[]).await.status, 400);
        conn.close().await;
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_headers_auth_and_validators() {
    let ts = TestServer::start().await;
    for v in BOTH {
        let (conn, _) = ts.connect(v).await;
        let url = |p: &str| ts.url(v, p);

        let r = get(&conn, &url("/cookies"), &[("cookie", "a=1"), ("cookie", "b=\"2\"")]).await;
        assert_eq!(body_json(&r), json!({"cookies": {"a": "1", "b": "2"}}));
        let r = get(&conn, &url("/cookies/set?k=v&n=1"), &[]).await;
        assert_eq!((r.status.as_u16(), header(&r, "location")), (302, "/cookies"));
        let set: Vec<&str> = r.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(set, ["k=v; Path=/; Secure", "n=1; Path=/; Secure"]);
        let r = get(&conn, &url("/cookies/set/name/value"), &[]).await;
        assert_eq!(header(&r, "set-cookie"), "name=value; Path=/; Secure");
        let r = get(&conn, &url("/cookies/delete?k"), &[]).await;
        let del = header(&r, "set-cookie");
        assert!(del.starts_with("k=;") && del.contains("Max-Age=0"), "{del}");
        for bad in ["/cookies/set?a%20b=1", "/cookies/set?a=b%3Bc", "/cookies/delete?%3D"] {
            assert_eq!(get(&conn, &url(bad), &[]).await.status, 400, "{bad}");
        }

        let r = get(&conn, &url("/response-headers?X-A=1&X-A=2&Cache-Control=no-cache"), &[]).await;
        assert_eq!(r.status, 200);
        let xa: Vec<&str> = r.headers.get_all("x-a").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(xa, ["1", "2"]);
        assert_eq!(header(&r, "cache-control"), "no-cache");
        let j = body_json(&r);
        assert_eq!(j["X-A"], json!(["1", "2"]));
        assert_eq!(j["Content-Length"], r.body.len().to_string(), "the body states its own length");
        for bad in ["Transfer-Encoding=chunked", "Connection=close", "Content-Length=1", "bad%20name=1", "X=%0D%0A"] {
            let r = get(&conn, &url(&format!("/response-headers?{bad}")), &[]).await;
            assert_eq!(r.status, 400, "{bad}");
        }

        let good = format!("Basic {}", base64_encode(b"user:pw"));
        let r = get(&conn, &url("/basic-auth/user/pw"), &[("authorization", &good)]).await;
        assert_eq!(body_json(&r), json!({"authenticated": true, "user": "user"}));
        let wrong = format!("Basic {}", base64_encode(b"user:nope"));
        for h in [vec![("authorization", wrong.as_str())], vec![]] {
            let r = get(&conn, &url("/basic-auth/user/pw"), &h).await;
            assert_eq!(r.status, 401);
            assert_eq!(header(&r, "www-authenticate"), "Basic realm=\"Fake Realm\"");
        }
        let r = get(&conn, &url("/bearer"), &[("authorization", "Bearer t0k")]).await;
        assert_eq!(body_json(&r), json!({"authenticated": true, "token": "t0k"}));
        let r = get(&conn, &url("/bearer"), &[("authorization", "Basic abc")]).await;
        assert_eq!((r.status.as_u16(), header(&r, "www-authenticate")), (401, "Bearer"));

        let r = get(&conn, &url("/cache"), &[]).await;
        assert_eq!(r.status, 200);
        assert!(r.headers.contains_key("etag") && r.headers.contains_key("last-modified"));
        let r = get(&conn, &url("/cache"), &[("if-none-match", "\"x\"")]).await;
        assert_eq!((r.status.as_u16(), r.body.len()), (304, 0));
        let r = get(&conn, &url("/cache"), &[("if-modified-since", "Thu, 01 Jan 2026 00:00:00 GMT")]).await;
        assert_eq!(r.status, 304);
        let r = get(&conn, &url("/cache/60"), &[]).await;
        assert_eq!(header(&r, "cache-control"), "public, max-age=60");
        assert_eq!(get(&conn, &url("/cache/31536001"), &[]).await.status, 400);

        let r = get(&conn, &url("/etag/abc"), &[]).await;
        assert_eq!((r.status.as_u16(), header(&r, "etag")), (200, "\"abc\""));
        let r = get(&conn, &url("/etag/abc"), &[("if-none-match", "\"x\", W/\"abc\"")]).await;
        assert_eq!((r.status.as_u16(), header(&r, "etag")), (304, "\"abc\""));
        let r = get(&conn, &url("/etag/abc"), &[("if-match", "\"x\"")]).await;
        assert_eq!(r.status, 412);
        let r = get(&conn, &url("/etag/abc"), &[("if-match", "\"abc\"")]).await;
        assert_eq!(r.status, 200);
        assert_eq!(get(&conn, &url("/etag/a%22b"), &[]).await.status, 400);
        conn.close().await;
    }
    ts.stop().await;
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_drips_ranges_and_delays_are_bounded() {
    let ts = TestServer::start_with(|c| c.limits.max_delay = Duration::from_secs(2)).await;
    for v in BOTH {
        let (conn, _) = ts.connect(v).await;
        let url = |p: &str| ts.url(v, p);

        let r = get(&conn, &url("/stream/3?x=1"), &[]).await;
        let lines: Vec<Value> = r.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!((l["id"].as_u64(), l["args"]["x"].as_str()), (Some(i as u64), Some("1")));
        }
        assert_eq!(get(&conn, &url("/stream/0"), &[]).await.body.len(), 0);
        assert_eq!(get(&conn, &url("/stream/101"), &[]).await.status, 400);

        let t = Instant::now();
        let r = get(&conn, &url("/drip?duration=0.3&numbytes=5&delay=0.1&code=202"), &[]).await;
        let took = t.elapsed();
        assert_eq!((r.status.as_u16(), &r.body[..]), (202, &b"*****"[..]));
        assert_eq!(header(&r, "content-length"), "5");
        assert!(took >= Duration::from_millis(350), "drip took {took:?}");
        let r = get(&conn, &url("/drip?duration=0&numbytes=5000000"), &[]).await;
        assert_eq!(r.body.len(), 5_000_000);
        assert!(r.body.iter().all(|b| *b == b'*'));
        for bad in [
            "/drip?numbytes=0",
            "/drip?numbytes=10485761",
            "/drip?duration=3",
            "/drip?delay=3",
            "/drip?duration=-1",
            "/drip?duration=nan",
            "/drip?code=204",
            "/drip?code=700",
        ] {
            assert_eq!(get(&conn, &url(bad), &[]).await.status, 400, "{bad}");
        }

        let r = get(&conn, &url("/range/30"), &[]).await;
        assert_eq!(&r.body[..], b"abcdefghijklmnopqrstuvwxyzabcd");
        assert_eq!((header(&r, "etag"), header(&r, "accept-ranges")), ("\"range30\"", "bytes"));
        let r = get(&conn, &url("/range/30"), &[("range", "bytes=24-27")]).await;
        assert_eq!((r.status.as_u16(), &r.body[..]), (206, &b"yzab"[..]));
        assert_eq!(header(&r, "content-range"), "bytes 24-27/30");
        for bad in ["/range/0", "/range/102401", "/range/x"] {
            assert_eq!(get(&conn, &url(bad), &[]).await.status, 400, "{bad}");
        }

        let t = Instant::now();
        let r = send(&conn, "POST", &url("/delay/0.2"), &[("content-type", "text/plain")], b"late").await;
        assert!(t.elapsed() >= Duration::from_millis(200));
        let j = body_json(&r);
        assert_eq!(j["data"], "late");
        assert!(j.get("json").is_none() && j.get("method").is_none());
        for bad in ["/delay/2.5", "/delay/-1", "/delay/x", "/delay/inf"] {
            assert_eq!(get(&conn, &url(bad), &[]).await.status, 400, "{bad}");
        }
        // The millisecond form moved to its own path.
        let r = get(&conn, &url("/delay-ms/20"), &[]).await;
        assert_eq!(r.text(), "delayed 20 ms\n");
        conn.close().await;
    }
    ts.stop().await;
}

/// Decode `data` of content coding `token` with async-compression, as the server coded it.
async fn decode(token: &str, data: &[u8]) -> Vec<u8> {
    use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZlibDecoder, ZstdDecoder};
    let mut out = Vec::new();
    match token {
        "gzip" => GzipDecoder::new(data).read_to_end(&mut out).await,
        "deflate" => ZlibDecoder::new(data).read_to_end(&mut out).await,
        "br" => BrotliDecoder::new(data).read_to_end(&mut out).await,
        "zstd" => ZstdDecoder::new(data).read_to_end(&mut out).await,
        other => panic!("unknown coding {other}"),
    }
    .unwrap_or_else(|e| panic!("{token} body does not decode: {e}"));
    out
}

fn varies(r: &Resp) -> bool {
    r.headers.get_all("vary").iter().any(|v| v.to_str().unwrap().to_ascii_lowercase().contains("accept-encoding"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_coding_is_negotiated_for_files_and_generated_bodies() {
    let root = tempfile::tempdir().unwrap();
    let text: String = (0..4000).map(|i| format!("line {i} of a compressible text file\n")).collect();
    std::fs::write(root.path().join("big.txt"), &text).unwrap();
    std::fs::write(root.path().join("small.txt"), "tiny\n").unwrap();
    std::fs::write(root.path().join("pic.png"), vec![7u8; 5000]).unwrap();
    let dir = root.path().to_path_buf();
    let ts = TestServer::start_with(move |c| c.root = Some(dir)).await;
    for v in BOTH {
        let (conn, _) = ts.connect(v).await;
        let url = |p: &str| ts.url(v, p);

        let plain = get(&conn, &url("/big.txt"), &[]).await;
        assert_eq!(plain.body, text.as_bytes());
        assert!(plain.headers.get("content-encoding").is_none() && varies(&plain), "{v:?} identity varies too");
        let identity_etag = header(&plain, "etag").to_string();

        for token in ["gzip", "deflate", "br", "zstd"] {
            let r = get(&conn, &url("/big.txt"), &[("accept-encoding", token)]).await;
            assert_eq!((r.status.as_u16(), header(&r, "content-encoding")), (200, token), "{v:?}");
            assert!(varies(&r));
            assert!(r.body.len() < text.len() / 5, "{token}: {} bytes", r.body.len());
            assert_eq!(decode(token, &r.body).await, text.as_bytes(), "{v:?} {token}");
            let etag = header(&r, "etag");
            assert_eq!(etag, format!("{}-{token}\"", identity_etag.trim_end_matches('"')), "ETag differs per coding");
            if let Some(len) = r.headers.get("content-length") {
                assert_eq!(
                    len.to_str().unwrap(),
                    r.body.len().to_string(),
                    "{v:?}: a length, if any, is the coded one"
                );
            }
        }

        // q-values, identity, *.
        for (ae, want) in [
            ("gzip;q=0.5, br;q=0.9", Some("br")),
            ("gzip, deflate, br, zstd", Some("br")),
            ("zstd;q=1, br;q=0.1", Some("zstd")),
            ("*;q=0.2, br;q=0", Some("zstd")),
            ("identity", None),
            ("identity;q=1, gzip;q=0.5", None),
            ("gzip;q=0", None),
            ("compress", None),
            ("", None),
        ] {
            let r = get(&conn, &url("/big.txt"), &[("accept-encoding", ae)]).await;
            let got = r.headers.get("content-encoding").map(|h| h.to_str().unwrap().to_string());
            assert_eq!(got.as_deref(), want, "{v:?} Accept-Encoding: {ae:?}");
            let body = match want {
                Some(t) => decode(t, &r.body).await,
                None => r.body.to_vec(),
            };
            assert_eq!(body, text.as_bytes());
        }

        // Tiny bodies and binary types are never coded.
        let r = get(&conn, &url("/small.txt"), &[("accept-encoding", "gzip")]).await;
        assert!(r.headers.get("content-encoding").is_none() && !varies(&r));
        let r = get(&conn, &url("/pic.png"), &[("accept-encoding", "gzip")]).await;
        assert!(r.headers.get("content-encoding").is_none());
        assert_eq!(r.body.len(), 5000);
        let r = get(&conn, &url("/bytes/100k"), &[("accept-encoding", "gzip")]).await;
        assert!(r.headers.get("content-encoding").is_none());
        assert_eq!(r.body.len(), 100 << 10);

        // Ranges come from the identity representation, with the identity ETag.
        let r = get(&conn, &url("/big.txt"), &[("accept-encoding", "gzip"), ("range", "bytes=5-9")]).await;
        assert_eq!((r.status.as_u16(), &r.body[..]), (206, &text.as_bytes()[5..10]));
        assert!(r.headers.get("content-encoding").is_none());
        assert_eq!(header(&r, "etag"), identity_etag);
        // An If-Range with the coded tag does not match the identity: the whole, coded.
        let gz_etag = format!("{}-gzip\"", identity_etag.trim_end_matches('"'));
        let r = get(
            &conn,
            &url("/big.txt"),
            &[("accept-encoding", "gzip"), ("range", "bytes=5-9"), ("if-range", &gz_etag)],
        )
        .await;
        assert_eq!((r.status.as_u16(), header(&r, "content-encoding")), (200, "gzip"));

        // Validators per coding: the coded tag revalidates the coded answer, the identity tag
        // does not.
        let r = get(&conn, &url("/big.txt"), &[("accept-encoding", "gzip"), ("if-none-match", &gz_etag)]).await;
        assert_eq!((r.status.as_u16(), header(&r, "etag")), (304, gz_etag.as_str()));
        let r = get(&conn, &url("/big.txt"), &[("accept-encoding", "gzip"), ("if-none-match", &identity_etag)]).await;
        assert_eq!(r.status, 200);

        // HEAD: the header fields of the coded GET, no content, no false length.
        let r = send(&conn, "HEAD", &url("/big.txt"), &[("accept-encoding", "br")], b"").await;
        assert_eq!((r.status.as_u16(), header(&r, "content-encoding"), r.body.len()), (200, "br", 0));
        assert!(r.headers.get("content-length").is_none_or(|l| l != "0"), "{v:?}: {:?}", r.headers);

        // Generated bodies: the index page, JSON answers.
        let r = get(&conn, &url("/"), &[("accept-encoding", "zstd")]).await;
        assert_eq!(header(&r, "content-encoding"), "zstd");
        assert!(String::from_utf8(decode("zstd", &r.body).await).unwrap().contains("/redirect-to"));
        let pad = "p".repeat(400);
        let r = get(&conn, &url("/get?coded=1"), &[("accept-encoding", "gzip"), ("x-pad", &pad)]).await;
        assert_eq!(header(&r, "content-encoding"), "gzip");
        let j: Value = serde_json::from_slice(&decode("gzip", &r.body).await).unwrap();
        assert_eq!((j["args"]["coded"].as_str(), j["headers"]["X-Pad"].as_str()), (Some("1"), Some(pad.as_str())));
        let r = send(
            &conn,
            "POST",
            &url("/echo"),
            &[("content-type", "text/plain"), ("accept-encoding", "deflate")],
            text.as_bytes(),
        )
        .await;
        assert_eq!(decode(header(&r, "content-encoding"), &r.body).await, text.as_bytes());
        // Streamed and dripped bodies are sent as they come.
        let r = get(&conn, &url("/stream/5"), &[("accept-encoding", "gzip")]).await;
        assert!(r.headers.get("content-encoding").is_none());

        // /gzip, /deflate, /brotli: always coded, whatever the request accepts.
        for (path, token, flag) in
            [("/gzip", "gzip", "gzipped"), ("/deflate", "deflate", "deflated"), ("/brotli", "br", "brotli")]
        {
            let r = get(&conn, &url(path), &[]).await;
            assert_eq!((r.status.as_u16(), header(&r, "content-encoding")), (200, token), "{path}");
            let j: Value = serde_json::from_slice(&decode(token, &r.body).await).unwrap();
            assert_eq!(j[flag], true, "{path}: {j}");
            assert_eq!((j["method"].as_str(), j["origin"].as_str()), (Some("GET"), Some("127.0.0.1")));
        }
        conn.close().await;
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413() {
    let ts = TestServer::start_with(|c| c.limits.max_body = 1000).await;
    for v in [HttpVersion::H3, HttpVersion::H2] {
        let (conn, _) = ts.connect(v).await;
        for path in ["/post", "/anything", "/delay/0"] {
            let method = if path == "/post" { "POST" } else { "PUT" };
            let r = send(&conn, method, &ts.url(v, path), &[], &[b'x'; 1001]).await;
            assert_eq!(r.status, 413, "{v:?} {path}");
        }
        // The connection still serves.
        assert_eq!(get(&conn, &ts.url(v, "/get"), &[]).await.status, 200);
        conn.close().await;
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_live_on_the_server_and_cookie_attributes_are_sent() {
    let ts = TestServer::start().await;
    for v in BOTH {
        let (conn, _) = ts.connect(v).await;
        let url = |p: &str| ts.url(v, p);

        let r = get(&conn, &url("/session"), &[]).await;
        let j = body_json(&r);
        assert_eq!((j["session"].as_str(), j["visits"].as_u64()), (Some("new"), Some(1)));
        let set = header(&r, "set-cookie").to_string();
        for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax", "Max-Age=1800"] {
            assert!(set.contains(attr), "{set}");
        }
        assert_eq!(header(&r, "cache-control"), "no-store");
        let cookie = set.split(';').next().unwrap().to_string();
        for visit in 2..=3u64 {
            let j = body_json(&get(&conn, &url("/session"), &[("cookie", &cookie)]).await);
            assert_eq!((j["session"].as_str(), j["visits"].as_u64()), (Some("known"), Some(visit)));
        }
        // A forged or unknown id starts a new session; a malformed one too.
        for bad in ["quiclab_session=00000000000000000000000000000000", "quiclab_session=../x"] {
            let j = body_json(&get(&conn, &url("/session"), &[("cookie", bad)]).await);
            assert_eq!(j["session"], "new", "{bad}");
        }
        let r = get(&conn, &url("/session/end"), &[("cookie", &cookie)]).await;
        assert_eq!(body_json(&r)["ended"], true);
        assert!(header(&r, "set-cookie").contains("Max-Age=0"));
        let j = body_json(&get(&conn, &url("/session"), &[("cookie", &cookie)]).await);
        assert_eq!(j["session"], "new", "ended sessions are forgotten");

        let r = get(&conn, &url("/cookie-attributes"), &[]).await;
        assert_eq!(r.status, 200);
        let set: Vec<&str> = r.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
        for want in [
            "demo_secure=1; Path=/; Secure",
            "demo_httponly=1; Path=/; HttpOnly",
            "demo_strict=1; Path=/; SameSite=Strict",
            "demo_none=1; Path=/; SameSite=None; Secure",
            "demo_maxage=1; Path=/; Max-Age=60",
            "demo_path=1; Path=/cookies",
        ] {
            assert!(set.contains(&want), "{want} not in {set:?}");
        }
        assert!(set.iter().any(|c| c.starts_with("demo_expires=1; Path=/; Expires=")), "{set:?}");
        assert!(r.text().contains("document.cookie"));
        conn.close().await;
    }
    ts.stop().await;
}

/// `/cache-demo`: each case's caching headers, the RFC 9110 §13.2.2 order (an `If-None-Match`
/// that matches wins over an `If-Modified-Since` that would not), and the server's record of
/// what it received; `/mqtt.html` is served. The browser's side is tests/interop/test_browser_pages.py.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_demo_cases_and_the_servers_record() {
    let ts = TestServer::start().await;
    for v in BOTH {
        let (conn, _) = ts.connect(v).await;
        let url = |p: &str| ts.url(v, p);
        let run = format!("t-{v:?}");
        let res = |case: &str| url(&format!("/cache-demo/res/{case}/{run}"));

        let r = get(&conn, &res("max-age"), &[]).await;
        assert_eq!((r.status.as_u16(), r.body.len()), (200, 4096));
        assert_eq!(header(&r, "cache-control"), "max-age=600");
        assert!(r.headers.get("etag").is_none() && r.headers.get("last-modified").is_none(), "{:?}", r.headers);

        let r = get(&conn, &res("expires"), &[]).await;
        assert!(r.headers.get("cache-control").is_none(), "{:?}", r.headers);
        let expires = httpdate::parse_http_date(header(&r, "expires")).unwrap();
        assert!(expires > std::time::SystemTime::now() + Duration::from_secs(500));

        let r = get(&conn, &res("pragma"), &[]).await;
        assert_eq!(header(&r, "pragma"), "no-cache");
        assert!(r.headers.get("expires").is_some() && r.headers.get("cache-control").is_none());

        let r = get(&conn, &res("no-store"), &[]).await;
        assert_eq!(header(&r, "cache-control"), "no-store");

        // etag-wins: the tag matches, the date has moved on; the tag decides.
        let first = get(&conn, &res("etag-wins"), &[]).await;
        let (tag, lm) = (header(&first, "etag").to_string(), header(&first, "last-modified").to_string());
        let again = get(&conn, &res("etag-wins"), &[("if-none-match", &tag), ("if-modified-since", &lm)]).await;
        assert_eq!(again.status, 304);
        assert!(
            httpdate::parse_http_date(header(&again, "last-modified")).unwrap()
                > httpdate::parse_http_date(&lm).unwrap()
        );
        let dated = get(&conn, &res("etag-wins"), &[("if-modified-since", &lm)]).await;
        assert_eq!(dated.status, 200, "the date alone says modified");
        let r = get(&conn, &res("last-modified"), &[]).await;
        assert!(r.headers.get("etag").is_none());
        let lm = header(&r, "last-modified").to_string();
        assert_eq!(get(&conn, &res("last-modified"), &[("if-modified-since", &lm)]).await.status, 304);

        let seen = body_json(&get(&conn, &url(&format!("/cache-demo/seen/{run}")), &[]).await);
        let reqs = seen["requests"].as_array().unwrap();
        let summary: Vec<(u64, u64)> =
            reqs.iter().map(|r| (r["n"].as_u64().unwrap(), r["status"].as_u64().unwrap())).collect();
        // One run id across cases: the record is per run, in arrival order.
        assert_eq!(summary.len(), 9, "{seen}");
        assert_eq!(summary[5], (6, 304));
        assert_eq!(reqs[5]["decided_by"], "If-None-Match matched; If-Modified-Since ignored (RFC 9110 §13.2.2)");
        assert_eq!(reqs[5]["if_none_match"], tag.as_str());
        assert_eq!(reqs[6]["decided_by"], "modified since If-Modified-Since");
        assert_eq!(reqs[8]["decided_by"], "not modified since If-Modified-Since");
        assert_eq!(seen["limits"], json!({"runs": 1024, "requests_per_run": 16}));

        for (path, status) in [
            ("/cache-demo/seen/a%20b", 400),
            ("/cache-demo/res/etag/x.y", 400),
            ("/cache-demo/res/nope/x", 404),
            ("/cache-demo/nope", 404),
        ] {
            assert_eq!(get(&conn, &url(path), &[]).await.status, status, "{path}");
        }
        assert_eq!(send(&conn, "POST", &url("/cache-demo"), &[], b"").await.status, 405);
        let page = get(&conn, &url("/cache-demo"), &[]).await;
        assert_eq!(page.status, 200);
        for case in ["max-age", "expires", "etag", "last-modified", "etag-wins", "no-store", "pragma", "reload"] {
            assert!(page.text().contains(&format!("id=\"case-{case}\"")), "{case}");
        }
        let one = get(&conn, &url("/cache-demo/etag"), &[]).await;
        assert!(one.text().contains("id=\"case-etag\"") && !one.text().contains("id=\"case-no-store\""));

        let mqtt = get(&conn, &url("/mqtt.html"), &[]).await;
        assert_eq!(mqtt.status, 200);
        assert!(mqtt.text().contains("new WebSocket(url, ['mqtt'])"));
        conn.close().await;
    }
    ts.stop().await;
}
