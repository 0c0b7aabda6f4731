//! Caching made visible (issue 16 part 5): `/cache-demo`.
//!
//! Each case serves one resource under one caching policy. A page fetches it twice and shows,
//! side by side, how the browser says the second copy arrived (Resource Timing's
//! `transferSize` against `encodedBodySize`: 0 means no request left the browser, less than the
//! body means only a 304's headers crossed the network, at least the body means a full answer)
//! and what this server received for it (the validators and cache directives of each request,
//! and what it answered). Both ends are needed: Resource Timing alone cannot tell a 304 from a
//! small answer, the server alone cannot see a cache hit.
//!
//! | case | the response carries | second fetch | a browser should |
//! |------|----------------------|--------------|------------------|
//! | `max-age` | `Cache-Control: max-age=600` | default | use its copy, ask nothing (strong caching) |
//! | `expires` | `Expires:` ten minutes ahead | default | use its copy, ask nothing (HTTP/1.0's strong caching) |
//! | `etag` | `Cache-Control: no-cache`, `ETag` | default | revalidate with `If-None-Match` → 304 |
//! | `last-modified` | `Cache-Control: no-cache`, `Last-Modified` | default | revalidate with `If-Modified-Since` → 304 |
//! | `etag-wins` | `no-cache`, a fixed `ETag`, a `Last-Modified` that moves forward with every answer | default | send both validators; the ETag decides (304) although the date says modified |
//! | `no-store` | `Cache-Control: no-store`, `ETag` | default | keep nothing: a full request without validators |
//! | `pragma` | `Pragma: no-cache`, `Expires` ahead, `ETag` | default | revalidate: the HTTP/1.0 directive overrides `Expires` |
//! | `reload` | `Cache-Control: max-age=600` | `cache: "reload"` | bypass its fresh copy; the request carries `Pragma: no-cache` and `Cache-Control: no-cache` |
//!
//! The paths: `/cache-demo` runs every case, `/cache-demo/CASE` one;
//! `/cache-demo/res/CASE/RUN` is the resource, RUN a page-chosen id that gives each page load
//! its own cache entry; `/cache-demo/seen/RUN` answers, as JSON and never cached, what the
//! server received for that run.
//!
//! Bounds: the server remembers at most [`MAX_RUNS`] runs (the oldest is forgotten first) and
//! at most [`MAX_SEEN_PER_RUN`] requests per run (later ones are served, not recorded); both are
//! counted when hit and reported in every `seen` answer. RUN is at most [`MAX_RUN_ID`] characters
//! of `[A-Za-z0-9_-]`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use serde::Serialize;
use serde_json::json as json_value;

use super::body::{full, json, text};
use super::files::{self, RangeLimits, Representation};
use super::{Body, Site};

/// Runs remembered at once: 1024 (each at most [`MAX_SEEN_PER_RUN`] small records).
pub const MAX_RUNS: usize = 1024;
/// Requests remembered per run: 16 (a page makes two).
pub const MAX_SEEN_PER_RUN: usize = 16;
/// Longest run id.
pub const MAX_RUN_ID: usize = 48;
/// Size of every demo resource: large enough that a 304's headers are clearly smaller.
const BODY_LEN: usize = 4096;
/// Freshness of the `max-age`, `expires`, `pragma` and `reload` resources.
const FRESH: Duration = Duration::from_secs(600);

/// One caching policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Case {
    MaxAge,
    Expires,
    Etag,
    LastModified,
    EtagWins,
    NoStore,
    Pragma,
    Reload,
}

/// How the second copy arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Arrival {
    /// From the browser's cache, no request.
    Cache,
    /// A conditional request answered 304.
    Revalidated,
    /// A full answer from the server.
    Full,
}

/// A case as the page shows it.
#[derive(Debug, Serialize)]
struct CaseInfo {
    case: Case,
    name: &'static str,
    /// The caching headers the resource carries.
    response: &'static str,
    /// The page's `fetch` cache mode for the second request.
    second_fetch: &'static str,
    expect: Arrival,
    why: &'static str,
}

const CASES: &[CaseInfo] = &[
    CaseInfo {
        case: Case::MaxAge,
        name: "max-age",
        response: "Cache-Control: max-age=600",
        second_fetch: "default",
        expect: Arrival::Cache,
        why: "fresh for 600 s: the stored copy is used without asking (RFC 9111 §4.2, §5.2.2.1)",
    },
    CaseInfo {
        case: Case::Expires,
        name: "expires",
        response: "Expires: (ten minutes ahead), no Cache-Control",
        second_fetch: "default",
        expect: Arrival::Cache,
        why: "fresh until the Expires date: HTTP/1.0's form of strong caching (RFC 9111 §5.3)",
    },
    CaseInfo {
        case: Case::Etag,
        name: "etag",
        response: "Cache-Control: no-cache, ETag",
        second_fetch: "default",
        expect: Arrival::Revalidated,
        why: "no-cache: stored, but every use is revalidated; If-None-Match matches, 304 (RFC 9111 §5.2.2.4, RFC 9110 §13.1.2)",
    },
    CaseInfo {
        case: Case::LastModified,
        name: "last-modified",
        response: "Cache-Control: no-cache, Last-Modified",
        second_fetch: "default",
        expect: Arrival::Revalidated,
        why: "revalidated by date: If-Modified-Since, not modified, 304 (RFC 9110 §13.1.3); one-second resolution only",
    },
    CaseInfo {
        case: Case::EtagWins,
        name: "etag-wins",
        response: "Cache-Control: no-cache, ETag (fixed), Last-Modified (moves forward on every answer)",
        second_fetch: "default",
        expect: Arrival::Revalidated,
        why: "both validators are sent; If-None-Match is evaluated and If-Modified-Since ignored (RFC 9110 §13.2.2), so the tag's 304 wins over the date that says modified",
    },
    CaseInfo {
        case: Case::NoStore,
        name: "no-store",
        response: "Cache-Control: no-store, ETag",
        second_fetch: "default",
        expect: Arrival::Full,
        why: "no-store: nothing is kept, so there is nothing to revalidate; a full request without validators (RFC 9111 §5.2.2.5)",
    },
    CaseInfo {
        case: Case::Pragma,
        name: "pragma",
        response: "Pragma: no-cache, Expires (ten minutes ahead), ETag",
        second_fetch: "default",
        expect: Arrival::Revalidated,
        why: "HTTP/1.0's only cache directive; RFC 9111 §5.4 defines it for requests, and browsers still treat it in a response like no-cache, overriding Expires",
    },
    CaseInfo {
        case: Case::Reload,
        name: "reload",
        response: "Cache-Control: max-age=600",
        second_fetch: "reload",
        expect: Arrival::Full,
        why: "a reload bypasses the fresh copy; the request carries Pragma: no-cache for HTTP/1.0 caches and Cache-Control: no-cache (RFC 9111 §5.4, §5.2.1.4)",
    },
];

fn case_named(name: &str) -> Option<&'static CaseInfo> {
    CASES.iter().find(|c| c.name == name)
}

/// What the server received and answered, per request of a run.
#[derive(Debug, Clone, Serialize)]
struct Seen {
    /// 1 for the run's first request.
    n: usize,
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
    cache_control: Option<String>,
    pragma: Option<String>,
    status: u16,
    /// Why the server answered as it did.
    decided_by: &'static str,
}

/// What the server received per run (bounded: module doc).
#[derive(Debug, Default)]
pub struct CacheDemoLog {
    inner: Mutex<LogInner>,
    /// Runs forgotten to make room ([`MAX_RUNS`] reached).
    runs_evicted: AtomicU64,
    /// Requests served but not recorded ([`MAX_SEEN_PER_RUN`] reached).
    requests_not_recorded: AtomicU64,
}

#[derive(Debug, Default)]
struct LogInner {
    runs: HashMap<String, Vec<Seen>>,
    /// Runs in the order they began, oldest first.
    order: VecDeque<String>,
}

impl CacheDemoLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests recorded for `run` so far.
    fn count(&self, run: &str) -> usize {
        self.lock().runs.get(run).map_or(0, Vec::len)
    }

    fn record(&self, run: &str, seen: Seen) {
        let mut inner = self.lock();
        if !inner.runs.contains_key(run) {
            while inner.order.len() >= MAX_RUNS {
                if let Some(oldest) = inner.order.pop_front() {
                    inner.runs.remove(&oldest);
                    let n = self.runs_evicted.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::debug!(run = %oldest, evicted = n, limit = MAX_RUNS, "cache-demo: oldest run forgotten");
                }
            }
            inner.order.push_back(run.to_string());
        }
        let list = inner.runs.entry(run.to_string()).or_default();
        if list.len() >= MAX_SEEN_PER_RUN {
            let n = self.requests_not_recorded.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::debug!(%run, not_recorded = n, limit = MAX_SEEN_PER_RUN, "cache-demo: request not recorded");
            return;
        }
        list.push(seen);
    }

    fn seen(&self, run: &str) -> Vec<Seen> {
        self.lock().runs.get(run).cloned().unwrap_or_default()
    }
}

/// Whether `seg` (after `cache-demo`) is one of this module's paths.
pub(super) fn is_demo_path(seg: &[&str]) -> bool {
    match seg {
        ["cache-demo"] => true,
        ["cache-demo", case] => case_named(case).is_some(),
        ["cache-demo", "res", case, _] => case_named(case).is_some(),
        ["cache-demo", "seen", _] => true,
        _ => false,
    }
}

/// Serve a `/cache-demo` path (GET or HEAD; the router checks the method).
pub(super) async fn serve(site: &Site, seg: &[&str], method: &Method, headers: &HeaderMap) -> Response<Body> {
    match seg {
        ["cache-demo"] => page(None),
        ["cache-demo", case] => page(case_named(case)),
        ["cache-demo", "seen", run] => match valid_run(run) {
            Some(run) => seen(site.cache_log(), run),
            None => bad_run(),
        },
        ["cache-demo", "res", case, run] => match (case_named(case), valid_run(run)) {
            (Some(case), Some(run)) => resource(site, case, run, method, headers).await,
            (None, _) => text(StatusCode::NOT_FOUND, "no such cache-demo case\n"),
            (_, None) => bad_run(),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn valid_run(run: &str) -> Option<&str> {
    let ok = !run.is_empty()
        && run.len() <= MAX_RUN_ID
        && run.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(run)
}

fn bad_run() -> Response<Body> {
    text(StatusCode::BAD_REQUEST, "bad run id: 1 to 48 characters of A-Z, a-z, 0-9, '-' and '_'\n")
}

/// The demo resource under `case`'s policy, recorded in the run's log.
async fn resource(site: &Site, info: &CaseInfo, run: &str, method: &Method, headers: &HeaderMap) -> Response<Body> {
    let log = site.cache_log();
    let n = log.count(run) + 1;
    let now = SystemTime::now();
    // Dates in the past, fixed for the server's lifetime: a day before it started.
    let base = site.started().checked_sub(Duration::from_secs(86_400)).unwrap_or(site.started());
    let data: Vec<u8> = (0..BODY_LEN as u64).map(super::body::pattern_byte).collect();
    let mut rep = Representation::memory(data, "application/octet-stream", "no-cache", base);
    rep.etag = format!("\"cache-demo-{}\"", info.name);
    let policy = Policy::of(info.case, base, n);
    rep.last_modified = policy.last_modified;
    if let Some(cc) = policy.cache_control {
        rep.cache_control = cc;
    }
    // One range at most: the demo is about caching, not ranges.
    let limits = RangeLimits { max_ranges: 1 };
    let mut resp = files::serve(&rep, method, headers, limits).await;
    let h = resp.headers_mut();
    h.remove(header::ACCEPT_RANGES);
    if policy.cache_control.is_none() {
        h.remove(header::CACHE_CONTROL);
    }
    if !policy.etag {
        h.remove(header::ETAG);
    }
    if policy.expires {
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(now + FRESH)) {
            h.insert(header::EXPIRES, v);
        }
    }
    if policy.pragma {
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    }
    let status = resp.status();
    let field = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let seen = Seen {
        n,
        if_none_match: field(header::IF_NONE_MATCH),
        if_modified_since: field(header::IF_MODIFIED_SINCE),
        cache_control: field(header::CACHE_CONTROL),
        pragma: field(header::PRAGMA),
        status: status.as_u16(),
        decided_by: decided_by(headers, status),
    };
    log.record(run, seen);
    resp
}

/// The caching headers of one case's resource.
struct Policy {
    cache_control: Option<&'static str>,
    /// Whether the answer carries the `ETag`.
    etag: bool,
    last_modified: Option<SystemTime>,
    /// Whether the answer carries `Expires`, [`FRESH`] ahead.
    expires: bool,
    /// Whether the answer carries `Pragma: no-cache`.
    pragma: bool,
}

impl Policy {
    /// `case`'s policy for the run's `n`-th request; `base` is a fixed date in the past.
    fn of(case: Case, base: SystemTime, n: usize) -> Policy {
        let none = Policy { cache_control: None, etag: false, last_modified: None, expires: false, pragma: false };
        match case {
            Case::MaxAge | Case::Reload => Policy { cache_control: Some("max-age=600"), ..none },
            Case::Expires => Policy { expires: true, ..none },
            Case::Etag => Policy { cache_control: Some("no-cache"), etag: true, ..none },
            Case::LastModified => Policy { cache_control: Some("no-cache"), last_modified: Some(base), ..none },
            // Minute n after the base: later with every answer, never in the future.
            Case::EtagWins => Policy {
                cache_control: Some("no-cache"),
                etag: true,
                last_modified: Some(base + Duration::from_secs(60 * n as u64)),
                ..none
            },
            Case::NoStore => Policy { cache_control: Some("no-store"), etag: true, ..none },
            Case::Pragma => Policy { etag: true, expires: true, pragma: true, ..none },
        }
    }
}

/// Why a demo request was answered `status`, in the order RFC 9110 §13.2.2 evaluates.
fn decided_by(headers: &HeaderMap, status: StatusCode) -> &'static str {
    let inm = headers.contains_key(header::IF_NONE_MATCH);
    let ims = headers.contains_key(header::IF_MODIFIED_SINCE);
    match (inm, ims, status == StatusCode::NOT_MODIFIED) {
        (true, true, true) => "If-None-Match matched; If-Modified-Since ignored (RFC 9110 §13.2.2)",
        (true, true, false) => "If-None-Match did not match; If-Modified-Since ignored (RFC 9110 §13.2.2)",
        (true, false, true) => "If-None-Match matched",
        (true, false, false) => "If-None-Match did not match",
        (false, true, true) => "not modified since If-Modified-Since",
        (false, true, false) => "modified since If-Modified-Since",
        (false, false, _) => "no validator: a full answer",
    }
}

fn seen(log: &CacheDemoLog, run: &str) -> Response<Body> {
    let mut resp = json(&json_value!({
        "run": run,
        "requests": log.seen(run),
        "limits": { "runs": MAX_RUNS, "requests_per_run": MAX_SEEN_PER_RUN },
        "runs_evicted": log.runs_evicted.load(Ordering::Relaxed),
        "requests_not_recorded": log.requests_not_recorded.load(Ordering::Relaxed),
    }));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The page for one case, or for all of them.
fn page(only: Option<&CaseInfo>) -> Response<Body> {
    let cases: Vec<&CaseInfo> = match only {
        Some(c) => vec![c],
        None => CASES.iter().collect(),
    };
    let mut rows = String::new();
    for c in &cases {
        rows.push_str(&format!(
            "<tr id=\"case-{name}\"><td><a href=\"/cache-demo/{name}\"><code>{name}</code></a></td><td><code>{resp}</code></td>\
             <td><code>{second}</code></td><td>{expect}</td><td class=\"browser\"></td><td class=\"server\"></td>\
             <td class=\"verdict\"></td></tr>\n<tr><td></td><td colspan=\"6\" class=\"why\">{why}</td></tr>\n",
            name = c.name,
            resp = c.response,
            second = c.second_fetch,
            expect = arrival_words(c.expect),
            why = c.why,
        ));
    }
    let cases_json = serde_json::to_string(&cases).unwrap_or_else(|_| "[]".into());
    let title = match only {
        Some(c) => format!("cache demo: {}", c.name),
        None => "cache demo".to_string(),
    };
    let page =
        PAGE.replace("{title}", &title).replace("{rows}", &rows).replace("{cases}", &cases_json.replace("</", "<\\/"));
    let mut resp = Response::new(full(page));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn arrival_words(a: Arrival) -> &'static str {
    match a {
        Arrival::Cache => "from cache, no request",
        Arrival::Revalidated => "revalidated: 304",
        Arrival::Full => "full answer",
    }
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>body{font-family:sans-serif;max-width:72em;margin:2em auto;line-height:1.4}td,th{border-top:1px solid #ccc;padding:.2em .5em;vertical-align:top;text-align:left}code{background:#eee;padding:0 .2em}.why{color:#555;font-size:.9em;border-top:none}.ok{color:#060}.differs{color:#a00}</style>
</head>
<body>
<h1>{title}</h1>
<p>Each case fetches one resource twice. <em>browser</em> is how the second copy arrived according to
Resource Timing (<code>transferSize</code> 0: no request; below <code>encodedBodySize</code>: only a 304's
headers; otherwise a full answer). <em>server</em> is what this server received for the same two fetches.
<a href="/cache-demo">all cases</a> · <a href="/">index</a></p>
<table>
<tr><th>case</th><th>response carries</th><th>2nd fetch</th><th>expected</th><th>browser</th><th>server</th><th>verdict</th></tr>
{rows}</table>
<p id="status">running</p>
<pre id="results"></pre>
<script>
var CASES = {cases};
function arrivalFromTiming(e) {
  if (!e) return 'no timing entry';
  if (e.transferSize === 0) return 'cache';
  if (e.transferSize < e.encodedBodySize) return 'revalidated';
  return 'full';
}
function arrivalFromServer(requests) {
  if (requests.length === 1) return 'cache';
  if (requests.length === 2) return requests[1].status === 304 ? 'revalidated' : 'full';
  return requests.length + ' requests';
}
function describe(requests) {
  return requests.map(function (r) {
    var sent = [];
    if (r.if_none_match) sent.push('If-None-Match: ' + r.if_none_match);
    if (r.if_modified_since) sent.push('If-Modified-Since: ' + r.if_modified_since);
    if (r.cache_control) sent.push('Cache-Control: ' + r.cache_control);
    if (r.pragma) sent.push('Pragma: ' + r.pragma);
    return '#' + r.n + ' ' + (sent.length ? sent.join(', ') : 'no validators') + ' → ' + r.status + ' (' + r.decided_by + ')';
  }).join('\n');
}
async function runCase(c) {
  var run = c.name + '-' + Date.now().toString(36) + '-' + Math.random().toString(36).slice(2, 10);
  var url = new URL('/cache-demo/res/' + c.name + '/' + run, location.href).href;
  var first = await fetch(url);
  await first.arrayBuffer();
  var second = await fetch(url, {cache: c.second_fetch});
  await second.arrayBuffer();
  // Resource Timing entries are queued after the body ends; give them a moment.
  await new Promise(function (r) { setTimeout(r, 100); });
  var entries = performance.getEntriesByName(url);
  var seen = await (await fetch('/cache-demo/seen/' + run, {cache: 'no-store'})).json();
  var e = entries[entries.length - 1];
  var result = {
    name: c.name,
    expect: c.expect,
    browser: arrivalFromTiming(entries.length >= 2 ? e : null),
    server: arrivalFromServer(seen.requests),
    timing: entries.map(function (x) {
      return {transferSize: x.transferSize, encodedBodySize: x.encodedBodySize, decodedBodySize: x.decodedBodySize,
              nextHopProtocol: x.nextHopProtocol, responseStatus: x.responseStatus};
    }),
    requests: seen.requests
  };
  result.agrees = result.browser === c.expect && result.server === c.expect;
  var row = document.getElementById('case-' + c.name);
  row.querySelector('.browser').textContent = result.browser + ' (transferSize ' + (e ? e.transferSize : '?') +
      ', encodedBodySize ' + (e ? e.encodedBodySize : '?') + ', over ' + (e ? e.nextHopProtocol : '?') + ')';
  row.querySelector('.server').textContent = describe(seen.requests);
  row.querySelector('.server').style.whiteSpace = 'pre-wrap';
  var v = row.querySelector('.verdict');
  v.textContent = result.agrees ? 'as expected' : 'differs';
  v.className = 'verdict ' + (result.agrees ? 'ok' : 'differs');
  return result;
}
(async function () {
  performance.setResourceTimingBufferSize(1000);
  var results = [];
  try {
    for (var i = 0; i < CASES.length; i++) results.push(await runCase(CASES[i]));
    document.getElementById('status').textContent = 'done: ' +
        results.filter(function (r) { return r.agrees; }).length + ' of ' + results.length + ' as expected';
  } catch (err) {
    document.getElementById('status').textContent = 'error: ' + err;
  }
  document.getElementById('results').textContent = JSON.stringify(results, null, 1);
  document.body.dataset.done = '1';
})();
</script>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(n: usize) -> Seen {
        Seen {
            n,
            if_none_match: None,
            if_modified_since: None,
            cache_control: None,
            pragma: None,
            status: 200,
            decided_by: "",
        }
    }

    #[test]
    fn log_is_bounded_and_counts_what_it_drops() {
        let log = CacheDemoLog::default();
        for i in 0..MAX_SEEN_PER_RUN + 3 {
            log.record("a", seen(i + 1));
        }
        assert_eq!(log.count("a"), MAX_SEEN_PER_RUN);
        assert_eq!(log.requests_not_recorded.load(Ordering::Relaxed), 3);
        for i in 0..MAX_RUNS {
            log.record(&format!("r{i}"), seen(1));
        }
        assert_eq!(log.count("a"), 0, "the oldest run went first");
        assert_eq!(log.count("r0"), 1);
        assert_eq!(log.runs_evicted.load(Ordering::Relaxed), 1);
        assert_eq!(log.lock().runs.len(), MAX_RUNS);
    }

    #[test]
    fn run_ids_and_paths() {
        assert!(valid_run("etag-abc_1").is_some());
        assert!(valid_run(&"x".repeat(MAX_RUN_ID)).is_some());
        assert_eq!(MAX_RUN_ID, 48, "bad_run's text names the limit");
        for bad in ["", "a/b", "a b", "ä", &"x".repeat(MAX_RUN_ID + 1)] {
            assert!(valid_run(bad).is_none(), "{bad:?}");
        }
        assert!(is_demo_path(&["cache-demo"]));
        assert!(is_demo_path(&["cache-demo", "etag-wins"]));
        assert!(is_demo_path(&["cache-demo", "res", "no-store", "x"]));
        assert!(!is_demo_path(&["cache-demo", "nope"]));
        assert!(!is_demo_path(&["cache-demo", "res", "nope", "x"]));
        for c in CASES {
            assert_eq!(
                serde_json::to_value(c.case).ok().and_then(|v| v.as_str().map(String::from)).as_deref(),
                Some(c.name)
            );
            assert_eq!(case_named(c.name).map(|i| i.case), Some(c.case));
        }
    }

    #[test]
    fn the_rfc_order_decides() {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"x\""));
        h.insert(header::IF_MODIFIED_SINCE, HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert!(decided_by(&h, StatusCode::NOT_MODIFIED).contains("If-Modified-Since ignored"));
        assert_eq!(decided_by(&HeaderMap::new(), StatusCode::OK), "no validator: a full answer");
    }
}
