//! Cookies and sessions made visible (issue 16 part 6).
//!
//! - `/session`: a server-side session keyed by a cookie. The cookie holds only a random
//!   128-bit id (`HttpOnly; Secure; SameSite=Lax`); what the session knows (its visit count,
//!   when it began) lives in the server's memory. That is the difference between a cookie (state
//!   the client keeps and sends back) and a session (state the server keeps, found by the
//!   cookie). `/session/end` forgets the session and expires the cookie.
//! - `/cookie-attributes`: sets one cookie per `Set-Cookie` attribute (RFC 6265 §4.1.2,
//!   `SameSite` from RFC 6265bis) and shows, in a page script, which of them `document.cookie`
//!   can read and which the server gets back on `/cookies`.
//!
//! The session table is bounded: at most [`MAX_SESSIONS`], each forgotten after
//! [`SESSION_IDLE`] without a visit; a new session in a full table evicts the least recently
//! used one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde_json::json;

use super::body::{full, json, text};
use super::Body;

/// Most sessions held at once. 10,000: a few MB at most; a client that opens sessions in a
/// loop only pushes out the least recently used ones.
pub const MAX_SESSIONS: usize = 10_000;
/// A session unused this long is forgotten: 30 minutes, the cookie's `Max-Age`.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// The session cookie's name.
pub const COOKIE: &str = "quiclab_session";

#[derive(Debug)]
struct Session {
    started: Instant,
    last: Instant,
    visits: u64,
}

/// The server-side session table.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Count a visit of session `id` if it exists: (visits, seconds since it began).
    fn visit(&self, id: &str, now: Instant) -> Option<(u64, u64)> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.get_mut(id)?;
        if now.duration_since(s.last) > SESSION_IDLE {
            map.remove(id);
            return None;
        }
        s.last = now;
        s.visits += 1;
        Some((s.visits, now.duration_since(s.started).as_secs()))
    }

    /// Start a session, evicting expired ones and, when still full, the least recently used.
    fn start(&self, id: String, now: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| now.duration_since(s.last) <= SESSION_IDLE);
        }
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(id, Session { started: now, last: now, visits: 1 });
    }

    fn end(&self, id: &str) -> bool {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(id).is_some()
    }

    /// Sessions held now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// No sessions held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The value of cookie `name` in the request, if any.
fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().find_map(|v| {
        let s = v.to_str().ok()?;
        s.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    })
}

fn random_id() -> Option<String> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut b).ok()?;
    Some(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn no_store(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `/session`: count this client's visits on the server.
pub(super) fn session(sessions: &Sessions, headers: &http::HeaderMap) -> Response<Body> {
    let now = Instant::now();
    let given = cookie(headers, COOKIE).filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
    if let Some(id) = &given {
        if let Some((visits, age)) = sessions.visit(id, now) {
            return no_store(json(&json!({
                "session": "known",
                "id_prefix": &id[..8],
                "visits": visits,
                "started_secs_ago": age,
                "explained": "your cookie holds only a random id; the visit count lives in the server's memory",
            })));
        }
    }
    let Some(id) = random_id() else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "no random numbers available\n");
    };
    sessions.start(id.clone(), now);
    let mut resp = json(&json!({
        "session": "new",
        "id_prefix": &id[..8],
        "visits": 1,
        "started_secs_ago": 0,
        "previous_cookie": if given.is_some() { "unknown or expired session id" } else { "none" },
        "explained": "a new session: the Set-Cookie of this answer carries its id (HttpOnly, so page scripts cannot read it)",
    }));
    let line = format!("{COOKIE}={id}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=Lax", SESSION_IDLE.as_secs());
    if let Ok(v) = HeaderValue::from_str(&line) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    no_store(resp)
}

/// `/session/end`: forget the session and expire its cookie.
pub(super) fn end(sessions: &Sessions, headers: &http::HeaderMap) -> Response<Body> {
    let ended = cookie(headers, COOKIE).is_some_and(|id| sessions.end(&id));
    let mut resp = json(&json!({ "ended": ended }));
    let line =
        format!("{COOKIE}=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Secure; HttpOnly; SameSite=Lax");
    if let Ok(v) = HeaderValue::from_str(&line) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    no_store(resp)
}

/// The cookies `/cookie-attributes` sets: (name, attributes, what the page says about it).
pub const DEMO_COOKIES: [(&str, &str, &str); 9] = [
    ("demo_plain", "Path=/", "no attributes but Path: sent on every request to this site, readable by scripts"),
    ("demo_secure", "Path=/; Secure", "Secure: only sent over HTTPS (every transport here is TLS)"),
    ("demo_httponly", "Path=/; HttpOnly", "HttpOnly: sent to the server, invisible to document.cookie"),
    (
        "demo_strict",
        "Path=/; SameSite=Strict",
        "SameSite=Strict: not sent on requests started by other sites, not even links",
    ),
    (
        "demo_lax",
        "Path=/; SameSite=Lax",
        "SameSite=Lax: sent on top-level navigations from other sites, not on their subrequests",
    ),
    ("demo_none", "Path=/; SameSite=None; Secure", "SameSite=None (needs Secure): sent on cross-site requests too"),
    ("demo_maxage", "Path=/; Max-Age=60", "Max-Age=60: gone 60 s after it was set (Max-Age wins over Expires)"),
    ("demo_expires", "Path=/; Expires={expires}", "Expires: gone at that date (one hour after it was set)"),
    (
        "demo_path",
        "Path=/cookies",
        "Path=/cookies: sent only to /cookies and below, so /cookies shows it; this page's scripts do not see it",
    ),
];

/// `/cookie-attributes`: set the demo cookies and show what each attribute does.
pub(super) fn cookie_attributes() -> Response<Body> {
    let expires = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
    let mut rows = String::new();
    for (name, attrs, what) in DEMO_COOKIES {
        let attrs = attrs.replace("{expires}", &expires);
        rows.push_str(&format!("<tr><td><code>{name}</code></td><td><code>{attrs}</code></td><td>{what}</td></tr>\n"));
    }
    let page = COOKIE_PAGE.replace("{rows}", &rows);
    let mut resp = Response::new(full(page));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    for (name, attrs, _) in DEMO_COOKIES {
        let line = format!("{name}=1; {}", attrs.replace("{expires}", &expires));
        if let Ok(v) = HeaderValue::from_str(&line) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    no_store(resp)
}

const COOKIE_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cookie attributes</title>
<style>body{font-family:sans-serif;max-width:56em;margin:2em auto;line-height:1.5}td{border-top:1px solid #ccc;padding:.2em .5em;vertical-align:top}code{background:#eee;padding:0 .2em}</style>
</head>
<body>
<h1>Set-Cookie attributes</h1>
<p>This answer set one cookie per attribute. Reload to see what came back.</p>
<table>
<tr><th>cookie</th><th>attributes</th><th>what it does</th></tr>
{rows}</table>
<h2>What this page's script can read (<code>document.cookie</code>)</h2>
<pre id="script-view"></pre>
<h2>What the server received on <code>/cookies</code></h2>
<pre id="server-view"></pre>
<p>Cookie vs session: a cookie is state the browser keeps and sends back; a session is state
the server keeps, found through a cookie that holds only an id. See <a href="/session">/session</a>.</p>
<script>
document.getElementById('script-view').textContent = document.cookie.split('; ').sort().join('\n');
fetch('/cookies', {credentials: 'same-origin'}).then(function (r) { return r.json(); }).then(function (j) {
  document.getElementById('server-view').textContent = Object.keys(j.cookies).sort().join('\n');
});
</script>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_bounded_and_expires() {
        let s = Sessions::default();
        let t0 = Instant::now();
        s.start("a".into(), t0);
        assert_eq!(s.visit("a", t0 + Duration::from_secs(1)), Some((2, 1)));
        assert_eq!(s.visit("a", t0 + Duration::from_secs(2) + SESSION_IDLE), None, "idle too long");
        assert!(s.is_empty());
        for i in 0..MAX_SESSIONS + 5 {
            s.start(format!("{i}"), t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.visit("0", t0 + Duration::from_secs(1)).is_none(), "the least recently used went first");
        assert!(s.end(&format!("{}", MAX_SESSIONS + 4)));
    }
}
