//! The site's endpoints: the router and the built-in pages.
//!
//! | path          | what it returns |
//! |---------------|-----------------|
//! | `/`           | an HTML index linking every endpoint; `<span id="protocol">` shows the protocol |
//! | `/bytes/N`    | N bytes (`k`, `M` suffixes) of a deterministic pattern: byte `i` is `i % 251` |
//! | `/echo`       | the request body and its content type, for any method |
//! | `/headers`    | the request headers as a JSON object |
//! | `/status/N`   | an empty-ish response with status N (200..=599) |
//! | `/delay/MS`   | a small body after MS milliseconds (capped) |
//! | `/conn`       | JSON about the connection the request came on ([`crate::conn::ConnInfo::snapshot`]) |
//!
//! `/`, `/bytes/N` and static files under `--root` carry validators and honour conditional
//! and range requests ([`files::serve`]).

use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};

/// Byte `i` of the `/bytes/N` pattern (the body is `web::body`'s).
pub use super::body::pattern_byte;
use super::body::{drain_in_background, empty, full, read_body, text, BodyTooLarge};
use super::{files, Body, Site};
use crate::config::parse_size;
use crate::conn::RequestInfo;

/// Route a request: reject unsafe paths, then static files under the root, then the
/// built-in endpoints. Unknown paths get 404; known paths with a method they do not support
/// get 405 with `Allow` (RFC 9110 §15.5.6).
pub(super) async fn route(site: &Site, req: Request<Body>, info: &RequestInfo) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let segments = match files::check_path(&path) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%path, remote = %info.conn.remote(), problem = %e, "refused request path");
            drain_in_background(req.into_body(), site.limits().max_body, path);
            return text(e.status(), "bad request path\n");
        }
    };
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();

    if seg == ["echo"] {
        return echo(site, req).await;
    }

    // Every other route ignores the request body; it is still read to its end in the
    // background, because an HTTP/3 stream dropped unread makes quinn send STOP_SENDING and
    // some clients then fail the request (RFC 9114 §4.1.1 allows it, curl does not like it).
    let (parts, body) = req.into_parts();
    drain_in_background(body, site.limits().max_body, path.clone());
    let get_or_head = method == Method::GET || method == Method::HEAD;
    if method == Method::OPTIONS && (seg.is_empty() || site.root().is_some() || is_builtin(&seg)) {
        // RFC 9110 §9.3.7: the methods this resource supports.
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        resp.headers_mut().insert(ALLOW, HeaderValue::from_static(ALLOWED));
        return resp;
    }

    if let Some(root) = site.root() {
        match files::find_file(root, &segments).await {
            Ok((file, rep)) => {
                if !get_or_head {
                    return method_not_allowed();
                }
                return match rep {
                    Ok(rep) => files::serve(&rep, &method, &parts.headers, range_limits(site)).await,
                    Err(e) => {
                        tracing::warn!(file = %file.display(), error = %e, "cannot read file");
                        text(StatusCode::NOT_FOUND, "not found\n")
                    }
                };
            }
            Err(files::PathError::EscapesRoot) => {
                tracing::warn!(%path, remote = %info.conn.remote(), "refused: path leaves the root through a symlink");
                return text(StatusCode::NOT_FOUND, "not found\n");
            }
            Err(_) => {} // not a file: the built-in pages answer
        }
    }

    if !is_builtin(&seg) {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if !get_or_head {
        return method_not_allowed();
    }
    let resp = match seg.as_slice() {
        [] | ["index.html"] => {
            let rep = index(site, info);
            return files::serve(&rep, &method, &parts.headers, range_limits(site)).await;
        }
        ["bytes", n] => match bytes_representation(site, n) {
            Ok(rep) => return files::serve(&rep, &method, &parts.headers, range_limits(site)).await,
            Err(e) => {
                let mut resp = Response::new(full(e.to_string()));
                *resp.status_mut() = StatusCode::BAD_REQUEST;
                resp
            }
        },
        ["headers"] => headers(&parts.headers),
        ["status", n] => status(n),
        ["delay", ms] => delay(site, ms).await,
        ["conn"] => no_store(json(&info.conn.snapshot(info.early_data))),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    if method == Method::HEAD {
        // RFC 9110 §9.3.2: the same header fields as GET, no content.
        let (mut parts, body) = resp.into_parts();
        if let Some(n) = http_body::Body::size_hint(&body).exact() {
            parts.headers.entry(CONTENT_LENGTH).or_insert(n.into());
        }
        return Response::from_parts(parts, empty());
    }
    resp
}

/// The methods every resource but `/echo` supports.
const ALLOWED: &str = "GET, HEAD, OPTIONS";

fn is_builtin(seg: &[&str]) -> bool {
    matches!(seg, [] | ["index.html"] | ["bytes", _] | ["headers"] | ["status", _] | ["delay", _] | ["conn"])
}

fn range_limits(site: &Site) -> files::RangeLimits {
    files::RangeLimits { max_ranges: site.limits().max_ranges }
}

fn method_not_allowed() -> Response<Body> {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    resp.headers_mut().insert(ALLOW, HeaderValue::from_static(ALLOWED));
    resp
}

fn no_store(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn echo(site: &Site, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let limit = site.limits().max_body;
    let data = match read_body(body, limit).await {
        Ok(d) => d,
        Err(e) if e.is::<BodyTooLarge>() => {
            tracing::warn!(path = "/echo", limit, "request body too large");
            // RFC 9110 §15.5.14
            return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        }
        Err(e) => {
            tracing::debug!(error = %e, "reading /echo body failed");
            return text(StatusCode::BAD_REQUEST, "request body could not be read\n");
        }
    };
    let ct = parts.headers.get(CONTENT_TYPE).cloned().unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let len = data.len();
    let mut resp = Response::new(if parts.method == Method::HEAD { empty() } else { full(data) });
    resp.headers_mut().insert(CONTENT_TYPE, ct);
    resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

fn index(site: &Site, info: &RequestInfo) -> files::Representation {
    let page = INDEX_HTML.replace("{served_over}", info.conn.protocol.as_str());
    // no-cache: stored, but revalidated (If-None-Match → 304) on every use.
    files::Representation::memory(page, "text/html; charset=utf-8", "no-cache", site.started())
}

const INDEX_HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>quiclab test site</title>
<style>body{font-family:sans-serif;max-width:44em;margin:2em auto;line-height:1.5}code{background:#eee;padding:0 .2em}</style>
</head>
<body>
<h1>quiclab test site</h1>
<p>This page arrived over <strong><span id="protocol"></span></strong>
(the server answered it over <code>{served_over}</code>).</p>
<ul>
<li><a href="/bytes/1M">/bytes/N</a>: N bytes (k, M suffixes) of a fixed pattern, byte i = i mod 251</li>
<li><a href="/echo">/echo</a>: the request body and content type, back (any method)</li>
<li><a href="/headers">/headers</a>: the request headers as JSON</li>
<li><a href="/status/418">/status/N</a>: a response with status N</li>
<li><a href="/delay/500">/delay/MS</a>: a response after MS milliseconds</li>
<li><a href="/conn">/conn</a>: JSON about this connection (RTT, congestion window, losses, 0-RTT, path changes)</li>
</ul>
<script>
var nav = performance.getEntriesByType('navigation')[0];
document.getElementById('protocol').textContent = nav ? nav.nextHopProtocol : '';
</script>
</body>
</html>
"#;

/// Why `/bytes/N` is refused; the text is the body of the 400 answer.
#[derive(Debug, thiserror::Error)]
enum BadBytes {
    /// N is not a size.
    #[error("bad size: use /bytes/N with N like 1024, 64k or 50M\n")]
    Unparseable,
    /// N is above the site's `max_bytes`.
    #[error("{n} bytes is above the cap of {max}\n")]
    AboveCap {
        /// The size asked for.
        n: u64,
        /// The cap.
        max: u64,
    },
}

/// `/bytes/N`: the pattern is a pure function of N, so its ETag is too and it never changes.
fn bytes_representation(site: &Site, arg: &str) -> Result<files::Representation, BadBytes> {
    let n = match parse_size(arg) {
        Ok(n) => n,
        Err(e) => {
            tracing::info!(arg, error = %e, "bad /bytes size");
            return Err(BadBytes::Unparseable);
        }
    };
    let max = site.limits().max_bytes;
    if n > max {
        tracing::info!(n, max, "/bytes request above the cap");
        return Err(BadBytes::AboveCap { n, max });
    }
    Ok(files::Representation {
        len: n,
        etag: format!("\"bytes-{n}\""),
        last_modified: Some(site.started()),
        content_type: HeaderValue::from_static("application/octet-stream"),
        cache_control: "public, max-age=3600",
        source: files::Source::Pattern,
    })
}

fn headers(headers: &http::HeaderMap) -> Response<Body> {
    let mut obj = serde_json::Map::new();
    for name in headers.keys() {
        let values: Vec<String> =
            headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
        // RFC 9113 §8.2.3: cookie crumbs are joined with "; ", other fields with ", ".
        let sep = if name == http::header::COOKIE { "; " } else { ", " };
        obj.insert(name.as_str().to_string(), serde_json::Value::String(values.join(sep)));
    }
    no_store(json(&serde_json::Value::Object(obj)))
}

/// A JSON response.
pub fn json(value: &serde_json::Value) -> Response<Body> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn status(arg: &str) -> Response<Body> {
    let code = arg.parse::<u16>().ok().filter(|c| (200..=599).contains(c)).and_then(|c| StatusCode::from_u16(c).ok());
    let Some(code) = code else {
        return text(StatusCode::BAD_REQUEST, "use /status/N with N in 200..=599\n");
    };
    // RFC 9110 §6.4.1: 204 and 304 carry no content.
    if code == StatusCode::NO_CONTENT || code == StatusCode::NOT_MODIFIED {
        let mut resp = Response::new(empty());
        *resp.status_mut() = code;
        return resp;
    }
    let line = format!("{} {}\n", code.as_u16(), code.canonical_reason().unwrap_or(""));
    let mut resp = Response::new(full(line));
    *resp.status_mut() = code;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

async fn delay(site: &Site, arg: &str) -> Response<Body> {
    let max = site.limits().max_delay;
    let Ok(ms) = arg.parse::<u64>() else {
        return text(StatusCode::BAD_REQUEST, "use /delay/MS with MS a whole number of milliseconds\n");
    };
    let wait = std::time::Duration::from_millis(ms);
    if wait > max {
        let mut resp = Response::new(full(format!("{ms} ms is above the cap of {} ms\n", max.as_millis())));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return resp;
    }
    tokio::time::sleep(wait).await;
    let mut resp = Response::new(full(format!("delayed {ms} ms\n")));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
