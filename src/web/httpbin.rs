//! httpbin-compatible endpoints: the paths, query parameters and JSON shapes of httpbin
//! (postmanlabs/httpbin), so HTTP test suites written against httpbin run against this site
//! over HTTP/3 and HTTP/2 alike.
//!
//! Request-describing answers use httpbin's field names: `args` (query; a repeated key becomes
//! a list), `headers` (names in Title-Case as httpbin shows them; `Host` from `:authority` on
//! HTTP/2 and HTTP/3), `origin` (the client's IP), `url` (`https://authority/path?query`),
//! and for requests with bodies `data` (the body as text, or a `data:` URL of base64 when it is
//! not UTF-8), `files` and `form` (`application/x-www-form-urlencoded` and
//! `multipart/form-data`, parsed by the `multer` crate), `json` (the body parsed as JSON, or
//! `null`), and `method` on `/anything`.
//!
//! Where quiclab departs from httpbin, on purpose:
//!
//! - every numeric parameter has a cap (the constants below and `--max-delay`); beyond it the
//!   answer is 400 naming the cap, where httpbin silently clamps;
//! - `/redirect-to` is no open redirector: it follows relative URLs, same-origin absolute URLs
//!   and hosts of `--redirect-allow` only (400 otherwise);
//! - `/base64/V` answers `text/plain` with `X-Content-Type-Options: nosniff` (httpbin:
//!   `text/html`, which reflects any script a link carries into the site's origin);
//! - `/response-headers` refuses fields that belong to the connection or the framing
//!   (`Connection`, `Transfer-Encoding`, `Content-Length`, ...): HTTP/2 and HTTP/3 forbid the
//!   first (RFC 9113 §8.2.2, RFC 9114 §4.2), and the last would make the answer a lie;
//! - entity tags are sent quoted (`"range10"`, `"abc"`), as RFC 9110 §8.8.3 requires;
//! - `/deflate` uses the zlib format, which is what `deflate` means (RFC 9110 §8.4.1.2).

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::{Map, Value};

use super::body::{drain_in_background, empty, full, head_response, json, read_body, text, BodyTooLarge};
use super::coding::{self, Coding, NoCoding};
use super::{files, Body, BodyError, Site};
use crate::conn::RequestInfo;

/// Longest chain `/redirect/N`, `/relative-redirect/N`, `/absolute-redirect/N` may ask for.
/// 100: five times the redirect limit of browsers and curl (20, 50).
pub const REDIRECT_MAX: u64 = 100;
/// Most lines of `/stream/N` (httpbin's own cap).
pub const STREAM_MAX_LINES: u64 = 100;
/// Largest `/drip` `numbytes`: 10 MiB (httpbin's own cap).
pub const DRIP_MAX_BYTES: u64 = 10 << 20;
/// `/drip` sends its bytes in at most this many pieces (one byte each when `numbytes` is
/// smaller), so a large `numbytes` does not cost a timer per byte.
pub const DRIP_MAX_CHUNKS: u64 = 1000;
/// Largest `/range/N`: 100 KiB (httpbin's own cap; the body is built in memory).
pub const RANGE_MAX_BYTES: u64 = 100 << 10;
/// Largest `/cache/N` max-age: one year (RFC 9111 §5.2.2.1 needs no more).
pub const CACHE_MAX_AGE: u64 = 365 * 24 * 3600;
/// Most codes in `/status/N,M,...`.
pub const STATUS_MAX_CHOICES: usize = 32;

/// `Allow` values. `ANY` accepts every method.
const GET: &str = "GET, HEAD, OPTIONS";
const ANY: &str = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT";

/// The methods of an httpbin path (its `Allow` value), or `None` if the path is not one.
pub(super) fn allow_for(seg: &[&str]) -> Option<&'static str> {
    Some(match seg {
        ["get"]
        | ["redirect", _]
        | ["relative-redirect", _]
        | ["absolute-redirect", _]
        | ["cookies"]
        | ["cookies", "set"]
        | ["cookies", "set", _, _]
        | ["cookies", "delete"]
        | ["stream", _]
        | ["drip"]
        | ["range", _]
        | ["cache"]
        | ["cache", _]
        | ["etag", _]
        | ["uuid"]
        | ["ip"]
        | ["user-agent"]
        | ["basic-auth", _, _]
        | ["bearer"]
        | ["base64", _]
        | ["gzip"]
        | ["deflate"]
        | ["brotli"] => GET,
        ["post"] => "OPTIONS, POST",
        ["put"] => "OPTIONS, PUT",
        ["patch"] => "OPTIONS, PATCH",
        ["delete"] => "DELETE, OPTIONS",
        ["response-headers"] => "GET, HEAD, OPTIONS, POST",
        ["anything", ..] | ["status", _] | ["delay", _] | ["redirect-to"] => ANY,
        _ => return None,
    })
}

fn permits(allow: &str, method: &Method) -> bool {
    allow == ANY || allow.split(", ").any(|m| m == method.as_str())
}

/// Serve an httpbin path (`allow` from [`allow_for`]).
pub(super) async fn serve(
    site: &Site,
    req: Request<Body>,
    info: &RequestInfo,
    seg: &[&str],
    allow: &'static str,
    coding: Option<Coding>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let (parts, body) = req.into_parts();
    let allowed = permits(allow, &method);
    let reads_body = method != Method::OPTIONS
        && allowed
        && matches!(seg, ["post"] | ["put"] | ["patch"] | ["delete"] | ["anything", ..] | ["delay", _]);
    let body = if reads_body {
        let limit = site.limits().max_body;
        match read_body(body, limit).await {
            Ok(b) => b,
            Err(e) if e.is::<BodyTooLarge>() => {
                tracing::warn!(%path, limit, "request body too large");
                // RFC 9110 §15.5.14
                return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
            }
            Err(e) => {
                tracing::debug!(%path, error = %e, "reading a request body failed");
                return text(StatusCode::BAD_REQUEST, "request body could not be read\n");
            }
        }
    } else {
        drain_in_background(body, site.limits().max_body, path);
        Bytes::new()
    };
    if method == Method::OPTIONS {
        // RFC 9110 §9.3.7
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        return resp;
    }
    if !allowed {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        return resp;
    }
    let cx = Cx { site, info, parts: &parts, body };
    let resp = match seg {
        ["get"] => dict(cx.get_dict()),
        ["post"] | ["put"] | ["patch"] | ["delete"] => cx.with_body(false, true).await,
        ["anything", ..] => cx.with_body(true, true).await,
        ["delay", secs] => cx.delay(secs).await,
        ["status", codes] => status(codes),
        ["redirect", n] => cx.redirect_n(Chain::Either, n),
        ["relative-redirect", n] => cx.redirect_n(Chain::Relative, n),
        ["absolute-redirect", n] => cx.redirect_n(Chain::Absolute, n),
        ["redirect-to"] => cx.redirect_to(),
        ["cookies"] => cx.cookies(),
        ["cookies", "set"] => cx.set_cookies(cx.query()),
        ["cookies", "set", name, value] => cx.set_cookies(vec![(name.to_string(), value.to_string())]),
        ["cookies", "delete"] => cx.delete_cookies(),
        ["response-headers"] => cx.response_headers(),
        ["stream", n] => cx.stream(n),
        ["drip"] => cx.drip().await,
        ["range", n] => cx.range(n, coding).await,
        ["cache"] => cx.cache(),
        ["cache", n] => cx.cache_for(n),
        ["etag", tag] => cx.etag(tag),
        ["uuid"] => uuid(),
        ["ip"] => json(&serde_json::json!({ "origin": cx.origin() })),
        ["user-agent"] => {
            let ua = parts.headers.get(header::USER_AGENT).map(|v| lossy(v.as_bytes()));
            json(&serde_json::json!({ "user-agent": ua }))
        }
        ["basic-auth", user, passwd] => cx.basic_auth(user, passwd),
        ["bearer"] => cx.bearer(),
        ["base64", value] => base64_page(value),
        ["gzip"] => cx.always_coded(Coding::Gzip, "gzipped").await,
        ["deflate"] => cx.always_coded(Coding::Deflate, "deflated").await,
        ["brotli"] => cx.always_coded(Coding::Brotli, "brotli").await,
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    if method == Method::HEAD {
        head_response(resp)
    } else {
        resp
    }
}

/// A 400 answer whose body says what was wrong.
fn bad(why: String) -> Response<Body> {
    let mut resp = Response::new(full(why));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// A JSON object answer with its keys sorted, as httpbin sends them (serde_json keeps
/// insertion order in this build).
fn dict(m: Map<String, Value>) -> Response<Body> {
    let sorted: BTreeMap<String, Value> = m.into_iter().collect();
    json(&Value::Object(sorted.into_iter().collect()))
}

fn no_coding(mut resp: Response<Body>) -> Response<Body> {
    resp.extensions_mut().insert(NoCoding);
    resp
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Bytes as httpbin shows them in JSON: text if UTF-8, else a base64 `data:` URL.
fn json_safe(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => Value::String(format!(
            "data:application/octet-stream;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(b)
        )),
    }
}

/// httpbin's "semiflatten": a key seen once maps to its value, a repeated key to a list.
fn multi(pairs: impl IntoIterator<Item = (String, Value)>) -> Value {
    let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (k, v) in pairs {
        m.entry(k).or_default().push(v);
    }
    Value::Object(
        m.into_iter().map(|(k, mut v)| (k, if v.len() == 1 { v.remove(0) } else { Value::Array(v) })).collect(),
    )
}

/// `user-agent` → `User-Agent`.
fn title_case(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn random<const N: usize>() -> Option<[u8; N]> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut b).ok()?;
    Some(b)
}

/// A version 4 UUID (RFC 9562 §5.4) from the system's random source.
fn new_uuid() -> Option<String> {
    let mut b: [u8; 16] = random()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Some(format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]))
}

fn uuid() -> Response<Body> {
    match new_uuid() {
        Some(u) => json(&serde_json::json!({ "uuid": u })),
        None => text(StatusCode::INTERNAL_SERVER_ERROR, "no random numbers available\n"),
    }
}

/// A duration in seconds (`2`, `0.5`), at most `max`.
fn parse_secs(name: &str, s: &str, max: Duration) -> Result<Duration, String> {
    let d = s
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite() && *f >= 0.0)
        .and_then(|f| Duration::try_from_secs_f64(f).ok())
        .ok_or_else(|| format!("{name} must be a number of seconds, like 2 or 0.5, not {s:?}\n"))?;
    if d > max {
        return Err(format!("{name} of {s} s is above the cap of {} s (--max-delay)\n", max.as_secs_f64()));
    }
    Ok(d)
}

/// `/status/N` or `/status/N,M,...` (one picked at random): status N for 200..=599.
fn status(arg: &str) -> Response<Body> {
    const USAGE: &str = "use /status/N with N in 200..=599, or /status/N,M,... for a random one of them\n";
    let choices: Vec<&str> = arg.split(',').map(str::trim).collect();
    if choices.len() > STATUS_MAX_CHOICES {
        return bad(format!("at most {STATUS_MAX_CHOICES} codes in /status/N,M,...\n"));
    }
    let mut codes = Vec::with_capacity(choices.len());
    for c in choices {
        let code = c.parse::<u16>().ok().filter(|c| (200..=599).contains(c)).and_then(|c| StatusCode::from_u16(c).ok());
        match code {
            Some(code) => codes.push(code),
            None => return text(StatusCode::BAD_REQUEST, USAGE),
        }
    }
    let pick = match codes.len() {
        1 => 0,
        n => random::<4>().map(|b| u32::from_le_bytes(b) as usize % n).unwrap_or(0),
    };
    let code = codes[pick];
    // RFC 9110 §6.4.1: 204 and 304 carry no content.
    let mut resp = if code == StatusCode::NO_CONTENT || code == StatusCode::NOT_MODIFIED {
        Response::new(empty())
    } else {
        let line = format!("{} {}\n", code.as_u16(), code.canonical_reason().unwrap_or(""));
        let mut r = Response::new(full(line));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        r
    };
    *resp.status_mut() = code;
    // As httpbin: redirects point at /redirect/1, 401 asks for Basic credentials.
    match code.as_u16() {
        301 | 302 | 303 | 305 | 307 | 308 => {
            resp.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/redirect/1"));
        }
        401 => {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"Fake Realm\""));
        }
        _ => {}
    }
    resp
}

/// `/base64/V`: V decoded (URL-safe or standard alphabet, padding optional), as text.
fn base64_page(value: &str) -> Response<Body> {
    use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
    let config = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let url_safe = GeneralPurpose::new(&base64::alphabet::URL_SAFE, config);
    let standard = GeneralPurpose::new(&base64::alphabet::STANDARD, config);
    match url_safe.decode(value).or_else(|_| standard.decode(value)) {
        Ok(bytes) => {
            let mut resp = Response::new(full(bytes));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            resp.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            resp
        }
        Err(_) => text(StatusCode::BAD_REQUEST, "Incorrect Base64 data try: SFRUUEJJTiBpcyBhd2Vzb21l\n"),
    }
}

/// A redirect with an empty body.
fn redirect(status: StatusCode, location: HeaderValue) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}

/// Which form `/redirect/N` and friends send.
#[derive(Clone, Copy)]
enum Chain {
    /// `/redirect/N`: relative unless `?absolute=true`.
    Either,
    Relative,
    Absolute,
}

/// Header fields `/response-headers` will not set (module doc).
const FRAMING_FIELDS: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "content-length",
    "content-range",
];

/// One request, as the endpoints see it.
struct Cx<'a> {
    site: &'a Site,
    info: &'a RequestInfo,
    parts: &'a http::request::Parts,
    /// The request body (read only by the endpoints that show it).
    body: Bytes,
}

impl Cx<'_> {
    fn query(&self) -> Vec<(String, String)> {
        let q = self.parts.uri.query().unwrap_or("");
        url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }

    /// The first value of a query parameter.
    fn param(&self, name: &str) -> Option<String> {
        self.query().into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    fn origin(&self) -> String {
        self.info.conn.remote().ip().to_canonical().to_string()
    }

    /// The request's authority: `:authority` (HTTP/2, HTTP/3) or `Host` (HTTP/1.1), if it is a
    /// well-formed authority; else `localhost`.
    fn authority(&self) -> http::uri::Authority {
        let given = self.parts.uri.authority().cloned().or_else(|| {
            let host = self.parts.headers.get(header::HOST)?.to_str().ok()?;
            host.parse::<http::uri::Authority>().ok()
        });
        given.unwrap_or_else(|| http::uri::Authority::from_static("localhost"))
    }

    fn url(&self) -> String {
        let pq = self.parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        format!("https://{}{}", self.authority(), pq)
    }

    fn headers(&self) -> Value {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, v) in &self.parts.headers {
            m.entry(title_case(name.as_str())).or_default().push(lossy(v.as_bytes()));
        }
        m.entry("Host".to_string()).or_insert_with(|| vec![self.authority().to_string()]);
        Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    // RFC 9113 §8.2.3: cookie crumbs join with "; ", other fields with ", ".
                    let sep = if k == "Cookie" { "; " } else { ", " };
                    (k, Value::String(v.join(sep)))
                })
                .collect(),
        )
    }

    fn args(&self) -> Value {
        multi(self.query().into_iter().map(|(k, v)| (k, Value::String(v))))
    }

    /// httpbin's `get_dict('url', 'args', 'headers', 'origin')`.
    fn get_dict(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("args".into(), self.args());
        m.insert("headers".into(), self.headers());
        m.insert("origin".into(), Value::String(self.origin()));
        m.insert("url".into(), Value::String(self.url()));
        m
    }

    /// `data`, `files`, `form` and `json` of the request body.
    async fn body_fields(&self, m: &mut Map<String, Value>) -> Result<(), Response<Body>> {
        let ct = self.parts.headers.get(header::CONTENT_TYPE).map(|v| lossy(v.as_bytes())).unwrap_or_default();
        let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let mut form: Vec<(String, Value)> = Vec::new();
        let mut files: Vec<(String, Value)> = Vec::new();
        let mut data = Value::String(String::new());
        let mut parsed_json = Value::Null;
        match mime.as_str() {
            "application/x-www-form-urlencoded" => {
                for (k, v) in url::form_urlencoded::parse(&self.body) {
                    form.push((k.into_owned(), Value::String(v.into_owned())));
                }
            }
            "multipart/form-data" => {
                if let Err(e) = self.multipart(&ct, &mut form, &mut files).await {
                    tracing::info!(error = %e, "malformed multipart/form-data body");
                    return Err(bad(format!("malformed multipart/form-data body: {e}\n")));
                }
            }
            _ => {
                data = json_safe(&self.body);
                // serde_json refuses nesting deeper than 128 levels: no unbounded recursion.
                parsed_json = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
            }
        }
        m.insert("data".into(), data);
        m.insert("files".into(), multi(files));
        m.insert("form".into(), multi(form));
        m.insert("json".into(), parsed_json);
        Ok(())
    }

    async fn multipart(
        &self,
        content_type: &str,
        form: &mut Vec<(String, Value)>,
        files: &mut Vec<(String, Value)>,
    ) -> Result<(), multer::Error> {
        let boundary = multer::parse_boundary(content_type)?;
        // The body is already read (and capped by --max-body): one chunk.
        let chunk = futures_util::stream::iter([Ok::<Bytes, std::io::Error>(self.body.clone())]);
        let mut mp = multer::Multipart::new(chunk, boundary);
        while let Some(field) = mp.next_field().await? {
            let name = field.name().unwrap_or("").to_string();
            let is_file = field.file_name().is_some();
            let content = field.bytes().await?;
            let entry = (name, json_safe(&content));
            if is_file {
                files.push(entry);
            } else {
                form.push(entry);
            }
        }
        Ok(())
    }

    /// `/post`, `/put`, `/patch`, `/delete` (`method` false) and `/anything` (true).
    async fn with_body(&self, method: bool, json_field: bool) -> Response<Body> {
        let mut m = self.get_dict();
        if let Err(resp) = self.body_fields(&mut m).await {
            return resp;
        }
        if !json_field {
            m.remove("json");
        }
        if method {
            m.insert("method".into(), Value::String(self.parts.method.to_string()));
        }
        dict(m)
    }

    /// `/delay/N`: N seconds (fractions allowed), capped by `--max-delay`.
    async fn delay(&self, arg: &str) -> Response<Body> {
        let wait = match parse_secs("delay", arg, self.site.limits().max_delay) {
            Ok(d) => d,
            Err(why) => return bad(why),
        };
        tokio::time::sleep(wait).await;
        self.with_body(false, false).await
    }

    fn redirect_n(&self, chain: Chain, arg: &str) -> Response<Body> {
        let n = match arg.parse::<u64>() {
            Ok(n) if (1..=REDIRECT_MAX).contains(&n) => n,
            _ => return bad(format!("use a redirect count N in 1..={REDIRECT_MAX}, not {arg:?}\n")),
        };
        let absolute = match chain {
            Chain::Either => self.param("absolute").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            Chain::Relative => false,
            Chain::Absolute => true,
        };
        let path = match (n, absolute) {
            (1, _) => "/get".to_string(),
            (_, true) => format!("/absolute-redirect/{}", n - 1),
            (_, false) => format!("/relative-redirect/{}", n - 1),
        };
        let location = if absolute { format!("https://{}{}", self.authority(), path) } else { path };
        match HeaderValue::from_str(&location) {
            Ok(v) => redirect(StatusCode::FOUND, v),
            Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "redirect target is not a header value\n"),
        }
    }

    /// `/redirect-to?url=U&status_code=N`.
    fn redirect_to(&self) -> Response<Body> {
        let Some(target) = self.param("url") else {
            return bad("use /redirect-to?url=URL (and optionally &status_code=301|302|303|307|308)\n".into());
        };
        let status = match self.param("status_code") {
            None => StatusCode::FOUND,
            Some(s) => match s.parse::<u16>() {
                Ok(c @ (301 | 302 | 303 | 307 | 308)) => StatusCode::from_u16(c).unwrap_or(StatusCode::FOUND),
                _ => return bad(format!("status_code must be 301, 302, 303, 307 or 308, not {s:?}\n")),
            },
        };
        if let Err(why) = self.redirect_allowed(&target) {
            tracing::info!(url = %target, remote = %self.info.conn.remote(), why, "refused /redirect-to target");
            return bad(format!("refused redirect to {target:?}: {why}\n"));
        }
        match HeaderValue::from_str(&target) {
            Ok(v) => redirect(status, v),
            Err(_) => bad("url is not a valid header value\n".into()),
        }
    }

    /// Open-redirect guard: relative references (not `//host`), absolute `https` URLs of this
    /// origin, or `http`/`https` URLs to a `--redirect-allow` host.
    fn redirect_allowed(&self, target: &str) -> Result<(), &'static str> {
        if target.is_empty() {
            return Err("the url is empty");
        }
        // Browsers read "/\host" as "//host"; whitespace and controls hide a scheme or a host.
        if target.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'\\') {
            return Err("the url contains whitespace, a control character or a backslash");
        }
        match url::Url::parse(target) {
            Ok(u) => {
                if !matches!(u.scheme(), "http" | "https") {
                    return Err("only http and https URLs are followed");
                }
                let host = u.host_str().unwrap_or("").to_ascii_lowercase();
                let own = self.authority();
                let same_origin = u.scheme() == "https"
                    && host == own.host().to_ascii_lowercase()
                    && u.port_or_known_default() == Some(own.port_u16().unwrap_or(443));
                if same_origin || self.site.limits().redirect_hosts.contains(&host) {
                    Ok(())
                } else {
                    Err("an absolute URL of another origin; only relative URLs, this origin and --redirect-allow hosts are followed")
                }
            }
            Err(url::ParseError::RelativeUrlWithoutBase) => {
                if target.starts_with("//") {
                    Err("a scheme-relative URL (//host) leaves this origin")
                } else {
                    Ok(())
                }
            }
            Err(_) => Err("not a valid URL"),
        }
    }

    fn cookie_jar(&self) -> BTreeMap<String, String> {
        let mut jar = BTreeMap::new();
        for v in self.parts.headers.get_all(header::COOKIE) {
            for pair in lossy(v.as_bytes()).split(';') {
                if let Some((k, v)) = pair.trim().split_once('=') {
                    jar.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
                }
            }
        }
        jar
    }

    fn cookies(&self) -> Response<Body> {
        let jar: Map<String, Value> = self.cookie_jar().into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        let mut m = Map::new();
        m.insert("cookies".into(), Value::Object(jar));
        dict(m)
    }

    /// Set each cookie and redirect to `/cookies` (302), as httpbin does.
    fn set_cookies(&self, pairs: Vec<(String, String)>) -> Response<Body> {
        let mut resp = redirect(StatusCode::FOUND, HeaderValue::from_static("/cookies"));
        for (name, value) in pairs {
            if let Err(why) = check_cookie(&name, &value) {
                return bad(format!("cookie {name:?}: {why}\n"));
            }
            // RFC 6265 §4.1: Secure, because every transport here is TLS.
            match HeaderValue::from_str(&format!("{name}={value}; Path=/; Secure")) {
                Ok(v) => resp.headers_mut().append(header::SET_COOKIE, v),
                Err(_) => return bad(format!("cookie {name:?} is not a header value\n")),
            };
        }
        resp
    }

    /// Expire each named cookie (`/cookies/delete?a&b`) and redirect to `/cookies`.
    fn delete_cookies(&self) -> Response<Body> {
        let mut resp = redirect(StatusCode::FOUND, HeaderValue::from_static("/cookies"));
        for (name, _) in self.query() {
            if let Err(why) = check_cookie(&name, "") {
                return bad(format!("cookie {name:?}: {why}\n"));
            }
            let line = format!("{name}=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/; Secure");
            match HeaderValue::from_str(&line) {
                Ok(v) => resp.headers_mut().append(header::SET_COOKIE, v),
                Err(_) => return bad(format!("cookie {name:?} is not a header value\n")),
            };
        }
        resp
    }

    /// `/response-headers?K=V...`: those fields on the answer, and the answer's fields as JSON
    /// (its own `Content-Length` included, as httpbin does). Never coded: the length in the
    /// body is the identity length.
    fn response_headers(&self) -> Response<Body> {
        let pairs = self.query();
        let mut fields = HeaderMap::new();
        for (k, v) in &pairs {
            let Ok(name) = HeaderName::from_bytes(k.as_bytes()) else {
                return bad(format!("{k:?} is not a header field name\n"));
            };
            if FRAMING_FIELDS.contains(&name.as_str()) {
                return bad(format!("{name} cannot be set: it belongs to the connection or the message framing\n"));
            }
            let Ok(value) = HeaderValue::from_str(v) else {
                return bad(format!("the value of {name} is not a header field value\n"));
            };
            fields.append(name, value);
        }
        let mut shown: Vec<(String, Value)> =
            pairs.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        if !fields.contains_key(header::CONTENT_TYPE) {
            fields.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            shown.push(("Content-Type".into(), Value::String("application/json".into())));
        }
        // The body states its own length: iterate to the fixed point (two rounds in practice).
        let mut len = 0usize;
        let mut body = Vec::new();
        for _ in 0..8 {
            let mut with_len = shown.clone();
            with_len.push(("Content-Length".into(), Value::String(len.to_string())));
            body = serde_json::to_vec_pretty(&multi(with_len)).unwrap_or_default();
            body.push(b'\n');
            if body.len() == len {
                break;
            }
            len = body.len();
        }
        let mut resp = Response::new(full(body));
        *resp.headers_mut() = fields;
        no_coding(resp)
    }

    /// `/stream/N`: N JSON lines, each the request dict with an `id`, in separate DATA frames.
    fn stream(&self, arg: &str) -> Response<Body> {
        let n = match arg.parse::<u64>() {
            Ok(n) if n <= STREAM_MAX_LINES => n,
            _ => return bad(format!("use /stream/N with N in 0..={STREAM_MAX_LINES}\n")),
        };
        let base = self.get_dict();
        let lines: Vec<Result<Frame<Bytes>, BodyError>> = (0..n)
            .map(|i| {
                let mut m = base.clone();
                m.insert("id".into(), Value::from(i));
                let mut line = serde_json::to_vec(&Value::Object(m)).unwrap_or_default();
                line.push(b'\n');
                Ok(Frame::data(Bytes::from(line)))
            })
            .collect();
        let mut resp = Response::new(StreamBody::new(futures_util::stream::iter(lines)).boxed_unsync());
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        no_coding(resp)
    }

    /// `/drip?duration=S&numbytes=N&code=C&delay=S`: after `delay`, N bytes of `*` spread
    /// over `duration` seconds.
    async fn drip(&self) -> Response<Body> {
        let max = self.site.limits().max_delay;
        let q = self.query();
        let get = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let duration = match parse_secs("duration", get("duration").unwrap_or("2"), max) {
            Ok(d) => d,
            Err(why) => return bad(why),
        };
        let delay = match parse_secs("delay", get("delay").unwrap_or("0"), max) {
            Ok(d) => d,
            Err(why) => return bad(why),
        };
        let numbytes = match get("numbytes").unwrap_or("10").parse::<u64>() {
            Ok(n) if (1..=DRIP_MAX_BYTES).contains(&n) => n,
            _ => return bad(format!("numbytes must be in 1..={DRIP_MAX_BYTES}\n")),
        };
        let code = get("code").unwrap_or("200");
        let code = match code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok()) {
            Some(c)
                if (200..=599).contains(&c.as_u16())
                    && c != StatusCode::NO_CONTENT
                    && c != StatusCode::NOT_MODIFIED =>
            {
                c
            }
            _ => {
                return bad(format!(
                    "code must be in 200..=599 and not 204 or 304 (they carry no content), not {code:?}\n"
                ))
            }
        };
        tokio::time::sleep(delay).await;
        let chunks = numbytes.min(DRIP_MAX_CHUNKS);
        let pause = duration.div_f64(chunks as f64);
        // As httpbin: a piece, then a pause, for every piece (the last pause ends the body).
        let stream = futures_util::stream::unfold(0u64, move |i| async move {
            if i > 0 {
                tokio::time::sleep(pause).await;
            }
            if i >= chunks {
                return None;
            }
            let size = numbytes / chunks + u64::from(i < numbytes % chunks);
            Some((Ok::<_, BodyError>(Frame::data(Bytes::from(vec![b'*'; size as usize]))), i + 1))
        });
        let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
        *resp.status_mut() = code;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(numbytes));
        no_coding(resp)
    }

    /// `/range/N`: N bytes `abc...zabc...`, with ranges, validators and conditional requests.
    async fn range(&self, arg: &str, coding: Option<Coding>) -> Response<Body> {
        let n = match arg.parse::<u64>() {
            Ok(n) if (1..=RANGE_MAX_BYTES).contains(&n) => n,
            _ => return bad(format!("use /range/N with N in 1..={RANGE_MAX_BYTES}\n")),
        };
        let data: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
        let rep = files::Representation {
            len: n,
            etag: format!("\"range{n}\""),
            last_modified: Some(self.site.started()),
            content_type: HeaderValue::from_static("application/octet-stream"),
            cache_control: "public, max-age=3600",
            source: files::Source::Memory(Bytes::from(data)),
        };
        let limits = files::RangeLimits { max_ranges: self.site.limits().max_ranges };
        files::serve_coded(&rep, &self.parts.method, &self.parts.headers, limits, coding).await
    }

    /// `/cache`: 304 to any conditional request, else the request dict with fresh validators.
    fn cache(&self) -> Response<Body> {
        let h = &self.parts.headers;
        if h.contains_key(header::IF_MODIFIED_SINCE) || h.contains_key(header::IF_NONE_MATCH) {
            let mut resp = Response::new(empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            return no_coding(resp);
        }
        let mut resp = dict(self.get_dict());
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        if let Ok(v) = HeaderValue::from_str(&now) {
            resp.headers_mut().insert(header::LAST_MODIFIED, v);
        }
        if let Some(tag) = new_uuid().and_then(|u| HeaderValue::from_str(&format!("\"{}\"", u.replace('-', ""))).ok()) {
            resp.headers_mut().insert(header::ETAG, tag);
        }
        no_coding(resp)
    }

    /// `/cache/N`: `Cache-Control: public, max-age=N`.
    fn cache_for(&self, arg: &str) -> Response<Body> {
        let n = match arg.parse::<u64>() {
            Ok(n) if n <= CACHE_MAX_AGE => n,
            _ => return bad(format!("use /cache/N with N in 0..={CACHE_MAX_AGE} seconds\n")),
        };
        let mut resp = dict(self.get_dict());
        if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={n}")) {
            resp.headers_mut().insert(header::CACHE_CONTROL, v);
        }
        resp
    }

    /// `/etag/T`: `ETag: "T"`; `If-None-Match` naming it → 304, `If-Match` not naming it → 412
    /// (RFC 9110 §13.1.1, §13.1.2). Never coded, so the tag a client stores is `"T"` itself.
    fn etag(&self, tag: &str) -> Response<Body> {
        // RFC 9110 §8.8.3: etagc = %x21 / %x23-7E / obs-text (obs-text refused here).
        if tag.is_empty() || !tag.bytes().all(|b| b == 0x21 || (0x23..=0x7e).contains(&b)) {
            return bad("an entity tag is visible ASCII without '\"'\n".into());
        }
        let quoted = format!("\"{tag}\"");
        let Ok(etag) = HeaderValue::from_str(&quoted) else {
            return bad("an entity tag is visible ASCII without '\"'\n".into());
        };
        let names = |name: header::HeaderName| -> Option<bool> {
            let mut any = false;
            let mut hit = false;
            for v in self.parts.headers.get_all(name) {
                any = true;
                for t in lossy(v.as_bytes()).split(',') {
                    let t = t.trim();
                    hit |= t == "*" || t.trim_start_matches("W/").trim_matches('"') == tag;
                }
            }
            any.then_some(hit)
        };
        let mut resp = if names(header::IF_NONE_MATCH) == Some(true) {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        } else if names(header::IF_MATCH) == Some(false) {
            text(StatusCode::PRECONDITION_FAILED, "precondition failed\n")
        } else {
            dict(self.get_dict())
        };
        resp.headers_mut().insert(header::ETAG, etag);
        no_coding(resp)
    }

    /// The credentials of an `Authorization: <scheme> <credentials>` header whose scheme is
    /// `scheme` (case-insensitive, RFC 9110 §11.1), trimmed; `None` if absent or empty.
    fn credentials(&self, scheme: &str) -> Option<&str> {
        self.parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(s, _)| s.eq_ignore_ascii_case(scheme))
            .map(|(_, c)| c.trim())
            .filter(|c| !c.is_empty())
    }

    /// `/basic-auth/USER/PASSWD` (RFC 7617).
    fn basic_auth(&self, user: &str, passwd: &str) -> Response<Body> {
        let given = self
            .credentials("basic")
            .and_then(|cred| base64::engine::general_purpose::STANDARD.decode(cred).ok())
            .and_then(|b| String::from_utf8(b).ok());
        if given.as_deref().and_then(|c| c.split_once(':')) == Some((user, passwd)) {
            return json(&serde_json::json!({ "authenticated": true, "user": user }));
        }
        unauthorized("Basic realm=\"Fake Realm\"")
    }

    /// `/bearer` (RFC 6750 §2.1).
    fn bearer(&self) -> Response<Body> {
        match self.credentials("bearer") {
            Some(t) => json(&serde_json::json!({ "authenticated": true, "token": t })),
            None => unauthorized("Bearer"),
        }
    }

    /// `/gzip`, `/deflate`, `/brotli`: always coded, whatever `Accept-Encoding` says.
    async fn always_coded(&self, c: Coding, flag: &str) -> Response<Body> {
        let mut m = Map::new();
        m.insert(flag.into(), Value::Bool(true));
        m.insert("headers".into(), self.headers());
        m.insert("method".into(), Value::String(self.parts.method.to_string()));
        m.insert("origin".into(), Value::String(self.origin()));
        let sorted: BTreeMap<String, Value> = m.into_iter().collect();
        let mut plain = serde_json::to_vec_pretty(&sorted).unwrap_or_default();
        plain.push(b'\n');
        let coded = match coding::encode_bytes(&plain, c).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, coding = c.token(), "coding a body failed");
                return text(StatusCode::INTERNAL_SERVER_ERROR, "coding failed\n");
            }
        };
        let mut resp = Response::new(full(coded));
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static(c.token()));
        no_coding(resp)
    }
}

/// RFC 6265 §4.1.1: a cookie name is a token; a value is cookie-octets.
fn check_cookie(name: &str, value: &str) -> Result<(), &'static str> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(tchar) {
        return Err("a cookie name is a token (letters, digits and !#$%&'*+-.^_`|~)");
    }
    let octet = |b: u8| matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e);
    if !value.bytes().all(octet) {
        return Err("a cookie value has no whitespace, '\"', ',', ';' or '\\'");
    }
    Ok(())
}

/// 401 with the challenge `challenge` (RFC 9110 §11.6.1, §15.5.2).
fn unauthorized(challenge: &'static str) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(title_case("user-agent"), "User-Agent");
        assert_eq!(title_case("x-a--b"), "X-A--B");
        assert_eq!(multi(vec![("a".into(), Value::from("1"))]), serde_json::json!({"a": "1"}));
        assert_eq!(
            multi(vec![("a".into(), Value::from("1")), ("a".into(), Value::from("2"))]),
            serde_json::json!({"a": ["1", "2"]})
        );
        assert_eq!(json_safe(b"hi"), Value::from("hi"));
        assert_eq!(json_safe(&[0xff]), Value::from("data:application/octet-stream;base64,/w=="));
        let u = new_uuid().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(check_cookie("a", "b").is_ok());
        assert!(check_cookie("a b", "b").is_err());
        assert!(check_cookie("a", "b;c").is_err());
        assert_eq!(parse_secs("d", "0.5", Duration::from_secs(1)), Ok(Duration::from_millis(500)));
        assert!(parse_secs("d", "2", Duration::from_secs(1)).is_err());
        assert!(parse_secs("d", "-1", Duration::from_secs(1)).is_err());
        assert!(parse_secs("d", "NaN", Duration::from_secs(1)).is_err());
        assert!(parse_secs("d", "inf", Duration::from_secs(1)).is_err());
    }
}
