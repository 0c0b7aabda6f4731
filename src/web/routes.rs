//! The site's endpoints: the router and the built-in pages.
//!
//! | path          | what it returns |
//! |---------------|-----------------|
//! | `/`           | an HTML index linking every endpoint; `<span id="protocol">` shows the protocol |
//! | `/bytes/N`    | N bytes (`k`, `M` suffixes) of a deterministic pattern: byte `i` is `i % 251` |
//! | `/echo`       | the request body and its content type, for any method |
//! | `/headers`    | the request headers as a JSON object |
//! | `/delay-ms/MS` | a small body after MS milliseconds (capped) |
//! | `/conn`       | JSON about the connection the request came on ([`crate::conn::ConnInfo::snapshot`]) |
//! | `/ws`, `/mqtt` | WebSocket echo and MQTT over WebSocket: answered before the router, by [`super::ws`] (TLS/TCP listener only) |
//! | `/session`, `/session/end`, `/cookie-attributes` | a server-side session and the `Set-Cookie` attributes, made visible ([`super::session`]) |
//! | `/cache-demo`, `/cache-demo/CASE` | strong caching, revalidation, `no-cache`/`no-store`/`Pragma`, shown from both ends ([`super::cache_demo`]) |
//! | `/mqtt.html` | a browser MQTT client over `wss://…/mqtt` that subscribes and shows messages live ([`super::mqtt_page`]) |
//! | httpbin paths | `/get`, `/post`, `/anything`, `/status/N`, `/delay/N` (seconds), redirects, cookies, ... ([`super::httpbin`]) |
//!
//! `/`, `/bytes/N` and static files under `--root` carry validators and honour conditional
//! and range requests ([`files::serve_coded`]). Every answer goes through content coding
//! ([`super::coding`]) before it leaves the router.

use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};

/// Byte `i` of the `/bytes/N` pattern (the body is `web::body`'s).
pub use super::body::pattern_byte;
use super::body::{drain_in_background, empty, full, head_response, json, read_body, text, BodyTooLarge};
use super::coding::{self, Coding};
use super::{cache_demo, files, httpbin, mqtt_page, session, Body, Site};
use crate::config::parse_size;
use crate::conn::RequestInfo;

/// Route a request and apply the content coding its `Accept-Encoding` negotiates.
pub(super) async fn route(site: &Site, req: Request<Body>, info: &RequestInfo) -> Response<Body> {
    let coding = coding::negotiate(req.headers());
    let head = req.method() == Method::HEAD;
    let resp = route_uncoded(site, req, info, coding).await;
    coding::finish(resp, coding, head)
}

/// Route a request: reject unsafe paths, then `/echo` and the httpbin endpoints, then static
/// files under the root, then the built-in pages. Unknown paths get 404; known paths with a
/// method they do not support get 405 with `Allow` (RFC 9110 §15.5.6).
async fn route_uncoded(site: &Site, req: Request<Body>, info: &RequestInfo, coding: Option<Coding>) -> Response<Body> {
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
    // The httpbin endpoints read bodies of their own, so they come before the drain below.
    if let Some(allow) = httpbin::allow_for(&seg) {
        return httpbin::serve(site, req, info, &seg, allow, coding).await;
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
    let limits = range_limits(site);

    if let Some(root) = site.root() {
        match files::find_file(root, &segments).await {
            Ok((file, rep)) => {
                if !get_or_head {
                    return method_not_allowed();
                }
                return match rep {
                    Ok(rep) => files::serve_coded(&rep, &method, &parts.headers, limits, coding).await,
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
            return files::serve_coded(&rep, &method, &parts.headers, limits, coding).await;
        }
        ["bytes", n] => match bytes_representation(site, n) {
            Ok(rep) => return files::serve_coded(&rep, &method, &parts.headers, limits, coding).await,
            Err(e) => {
                let mut resp = Response::new(full(e.to_string()));
                *resp.status_mut() = StatusCode::BAD_REQUEST;
                resp
            }
        },
        ["headers"] => headers(&parts.headers),
        ["delay-ms", ms] => delay_ms(site, ms).await,
        ["conn"] => no_store(json(&info.conn.snapshot(info.early_data))),
        ["session"] => session::session(site.sessions(), &parts.headers),
        ["session", "end"] => session::end(site.sessions(), &parts.headers),
        ["cookie-attributes"] => session::cookie_attributes(),
        ["cache-demo", "res", ..] => return cache_demo::serve(site, &seg, &method, &parts.headers).await,
        ["cache-demo", ..] => cache_demo::serve(site, &seg, &method, &parts.headers).await,
        ["mqtt.html"] => mqtt_page::page(),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    if method == Method::HEAD {
        return head_response(resp);
    }
    resp
}

/// The methods every built-in resource but `/echo` and the httpbin paths supports.
const ALLOWED: &str = "GET, HEAD, OPTIONS";

fn is_builtin(seg: &[&str]) -> bool {
    matches!(
        seg,
        [] | ["index.html"]
            | ["bytes", _]
            | ["headers"]
            | ["delay-ms", _]
            | ["conn"]
            | ["session"]
            | ["session", "end"]
            | ["cookie-attributes"]
            | ["mqtt.html"]
    ) || cache_demo::is_demo_path(seg)
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
<style>body{font-family:sans-serif;max-width:48em;margin:2em auto;line-height:1.5}code{background:#eee;padding:0 .2em}h2{font-size:1.1em;margin-top:1.5em}</style>
</head>
<body>
<h1>quiclab test site</h1>
<p>This page arrived over <strong><span id="protocol"></span></strong>
(the server answered it over <code>{served_over}</code>).</p>
<h2>quiclab</h2>
<ul>
<li><a href="/bytes/1M">/bytes/N</a>: N bytes (k, M suffixes) of a fixed pattern, byte i = i mod 251</li>
<li><a href="/echo">/echo</a>: the request body and content type, back (any method)</li>
<li><a href="/headers">/headers</a>: the request headers as JSON</li>
<li><a href="/delay-ms/500">/delay-ms/MS</a>: a response after MS milliseconds</li>
<li><a href="/conn">/conn</a>: JSON about this connection (RTT, congestion window, losses, 0-RTT, path changes)</li>
<li><a href="/session">/session</a>: a server-side session found by a cookie (visit count kept on the server); <a href="/session/end">/session/end</a></li>
<li><code>wss://</code>this host<code>/ws</code>: a WebSocket echo (HTTP/1.1 Upgrade or HTTP/2 extended CONNECT; not HTTP/3 yet); <code>wss://</code>this host<code>/mqtt</code>: MQTT over WebSocket (subprotocol <code>mqtt</code>)</li>
<li><a href="/cookie-attributes">/cookie-attributes</a>: one cookie per Set-Cookie attribute (Secure, HttpOnly, SameSite, Max-Age, Expires, Path) and what comes back</li>
<li><a href="/cache-demo">/cache-demo</a>: strong caching (max-age, Expires), revalidation (ETag, Last-Modified, and why ETag wins), no-cache vs no-store, Pragma; each shown from the browser's and the server's side</li>
<li><a href="/mqtt.html">/mqtt.html</a>: an MQTT client in the page, over <code>wss://</code>this host<code>/mqtt</code>: subscribe, publish, see messages live</li>
</ul>
<h2>httpbin: requests</h2>
<ul>
<li><a href="/get?a=1">/get</a>, <a href="/post">/post</a>, <a href="/put">/put</a>, <a href="/patch">/patch</a>, <a href="/delete">/delete</a>: the request as JSON (args, headers, origin, url; data, files, form, json)</li>
<li><a href="/anything/x?a=1">/anything</a>: the same for any method and any path below it</li>
<li><a href="/ip">/ip</a>, <a href="/user-agent">/user-agent</a>, <a href="/uuid">/uuid</a></li>
</ul>
<h2>httpbin: status, redirects, auth</h2>
<ul>
<li><a href="/status/418">/status/N</a>: status N (or a random one of N,M,...)</li>
<li><a href="/redirect/3">/redirect/N</a>, <a href="/relative-redirect/3">/relative-redirect/N</a>, <a href="/absolute-redirect/3">/absolute-redirect/N</a>: N redirects, then /get</li>
<li><a href="/redirect-to?url=/get&amp;status_code=307">/redirect-to?url=U&amp;status_code=N</a>: one redirect, relative or same-origin only</li>
<li><a href="/basic-auth/user/passwd">/basic-auth/USER/PASSWD</a>, <a href="/bearer">/bearer</a>: authentication</li>
</ul>
<h2>httpbin: cookies and headers</h2>
<ul>
<li><a href="/cookies">/cookies</a>, <a href="/cookies/set?k=v">/cookies/set?K=V</a>, <a href="/cookies/delete?k">/cookies/delete?K</a></li>
<li><a href="/response-headers?X-Demo=1">/response-headers?K=V</a>: those header fields on the answer</li>
</ul>
<h2>httpbin: bodies, timing, caching, coding</h2>
<ul>
<li><a href="/stream/5">/stream/N</a>: N JSON lines; <a href="/drip?duration=2&amp;numbytes=10">/drip</a>: bytes dripped over time</li>
<li><a href="/delay/1">/delay/N</a>: the request as JSON after N seconds</li>
<li><a href="/range/1024">/range/N</a>: N bytes with ranges; <a href="/base64/SFRUUEJJTiBpcyBhd2Vzb21l">/base64/V</a>: V decoded</li>
<li><a href="/cache">/cache</a>, <a href="/cache/60">/cache/N</a>, <a href="/etag/abc">/etag/T</a>: validators and freshness</li>
<li><a href="/gzip">/gzip</a>, <a href="/deflate">/deflate</a>, <a href="/brotli">/brotli</a>: always coded</li>
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

/// `/delay-ms/MS`: MS milliseconds (the httpbin `/delay/N` counts seconds).
async fn delay_ms(site: &Site, arg: &str) -> Response<Body> {
    let max = site.limits().max_delay;
    let Ok(ms) = arg.parse::<u64>() else {
        return text(StatusCode::BAD_REQUEST, "use /delay-ms/MS with MS a whole number of milliseconds\n");
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
