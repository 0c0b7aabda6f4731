//! Representations and the HTTP semantics around them: safe path resolution under `--root`,
//! validators (`ETag`, `Last-Modified`), conditional requests (304, 412), ranges (206, 416,
//! `multipart/byteranges`) and HEAD. Built-in pages, `/bytes/N` and static files all go
//! through [`serve`], so they behave alike on every transport. Static files are found and
//! their metadata read on a blocking thread (`find_file`); their bytes are read with
//! `tokio::fs`. Content coding of full answers and its interplay with ranges and `ETag`s is
//! decided in [`serve_coded`] (rules in `super::coding`).

use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;

use super::body::{empty, full, text, Chain, PatternBody};
use super::coding::{self, Coding};
use super::{Body, BodyError};

/// Where a representation's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The `/bytes` pattern (byte `i` is `i % 251`).
    Pattern,
    /// A file under the root.
    File(PathBuf),
    /// Bytes in memory (built-in pages).
    Memory(Bytes),
}

impl Source {
    /// A body for bytes `[start, end)`.
    async fn body(&self, start: u64, end: u64) -> Result<Body, std::io::Error> {
        Ok(match self {
            Source::Pattern => PatternBody::new(start, end).boxed_unsync(),
            Source::Memory(b) => full(b.slice(start as usize..end as usize)),
            Source::File(path) => {
                use tokio::io::{AsyncReadExt, AsyncSeekExt};
                let mut f = tokio::fs::File::open(path).await?;
                f.seek(std::io::SeekFrom::Start(start)).await?;
                let stream = tokio_util::io::ReaderStream::with_capacity(f.take(end - start), 64 << 10)
                    .map(|r| r.map(Frame::data).map_err(|e| Box::new(e) as BodyError));
                http_body_util::StreamBody::new(stream).boxed_unsync()
            }
        })
    }
}

/// One resource's current representation and its metadata.
#[derive(Debug, Clone)]
pub struct Representation {
    pub len: u64,
    /// A strong entity tag, quoted (RFC 9110 §8.8.3).
    pub etag: String,
    pub last_modified: Option<SystemTime>,
    pub content_type: HeaderValue,
    pub cache_control: &'static str,
    pub source: Source,
}

impl Representation {
    /// A built-in page held in memory; its ETag is a hash of the content.
    pub fn memory(
        data: impl Into<Bytes>,
        content_type: &'static str,
        cache_control: &'static str,
        modified: SystemTime,
    ) -> Self {
        let data: Bytes = data.into();
        let digest = ring::digest::digest(&ring::digest::SHA256, &data);
        let tag: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
        Representation {
            len: data.len() as u64,
            etag: format!("\"{tag}\""),
            last_modified: Some(modified),
            content_type: HeaderValue::from_static(content_type),
            cache_control,
            source: Source::Memory(data),
        }
    }
}

/// Limits on range requests.
#[derive(Debug, Clone, Copy)]
pub struct RangeLimits {
    /// More ranges than this in one request is refused with 416.
    pub max_ranges: usize,
}

/// Serve `rep` for a GET or HEAD with the request's `headers`: 200, 206, 304, 412 or 416,
/// always in the identity coding.
pub async fn serve(rep: &Representation, method: &Method, headers: &HeaderMap, limits: RangeLimits) -> Response<Body> {
    serve_coded(rep, method, headers, limits, None).await
}

/// [`serve`], with the content coding negotiated for the request (`super::coding`). Where the
/// representation is eligible (a compressible type, long enough), a full 200 is coded on the
/// fly and carries the coding's own `ETag`, which the preconditions are evaluated against;
/// a `Range` request is answered from the identity representation (206 without
/// `Content-Encoding`, the identity `ETag`). Both carry `Vary: Accept-Encoding`.
pub async fn serve_coded(
    rep: &Representation,
    method: &Method,
    headers: &HeaderMap,
    limits: RangeLimits,
    coding: Option<Coding>,
) -> Response<Body> {
    let head = method == Method::HEAD;
    let ranges = match headers.get(header::RANGE) {
        // RFC 9110 §14.2: Range applies to GET only (HEAD answers as GET would, minus content).
        Some(r) if (method == Method::GET || head) && if_range_holds(rep, headers) => {
            parse_range(r.as_bytes(), rep.len, limits)
        }
        _ => RangeOutcome::Full,
    };
    let eligible = coding::eligible(&rep.content_type, rep.len);
    // Ranges are served from the identity representation only (module doc of `coding`).
    let coding = coding.filter(|_| eligible && ranges == RangeOutcome::Full);
    let etag = match coding {
        Some(c) => coding::coded_etag(&rep.etag, c),
        None => rep.etag.clone(),
    };
    let mut resp = serve_selected(rep, &etag, headers, ranges, coding, head).await;
    if eligible {
        coding::add_vary(resp.headers_mut());
    }
    resp.extensions_mut().insert(coding::Decided);
    resp
}

async fn serve_selected(
    rep: &Representation,
    etag: &str,
    headers: &HeaderMap,
    ranges: RangeOutcome,
    coding: Option<Coding>,
    head: bool,
) -> Response<Body> {
    let mut base = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(etag) {
        base.insert(header::ETAG, v);
    }
    if let Some(lm) = rep.last_modified {
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(lm)) {
            base.insert(header::LAST_MODIFIED, v);
        }
    }
    base.insert(header::CACHE_CONTROL, HeaderValue::from_static(rep.cache_control));
    base.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    match precondition(rep, etag, headers) {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            // RFC 9110 §15.4.5: 304 carries the validators and Cache-Control, no content.
            return with_headers(StatusCode::NOT_MODIFIED, base, empty());
        }
        Precondition::Failed => {
            return with_headers(StatusCode::PRECONDITION_FAILED, base, full("precondition failed\n"));
        }
    }

    match ranges {
        RangeOutcome::Full => {
            base.insert(header::CONTENT_TYPE, rep.content_type.clone());
            if let Some(c) = coding {
                coding::mark_coded(&mut base, c); // the ETag in `base` is the coded one already
                if head {
                    return with_headers(StatusCode::OK, base, coding::empty_unsized());
                }
                let body = rep.source.body(0, rep.len).await.map(|b| coding::encode_body(b, c));
                return body_or_error(StatusCode::OK, base, body);
            }
            base.insert(header::CONTENT_LENGTH, HeaderValue::from(rep.len));
            let body = if head { Ok(empty()) } else { rep.source.body(0, rep.len).await };
            body_or_error(StatusCode::OK, base, body)
        }
        RangeOutcome::Unsatisfiable(why) => {
            tracing::info!(range = ?headers.get(header::RANGE), len = rep.len, why, "416 Range Not Satisfiable");
            // RFC 9110 §15.5.17: Content-Range with the current length.
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", rep.len)) {
                base.insert(header::CONTENT_RANGE, v);
            }
            with_headers(StatusCode::RANGE_NOT_SATISFIABLE, base, full(format!("range not satisfiable: {why}\n")))
        }
        RangeOutcome::Partial(ranges) if ranges.len() == 1 => {
            let (start, end) = ranges[0];
            base.insert(header::CONTENT_TYPE, rep.content_type.clone());
            base.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{}", start, end - 1, rep.len)) {
                base.insert(header::CONTENT_RANGE, v);
            }
            let body = if head { Ok(empty()) } else { rep.source.body(start, end).await };
            body_or_error(StatusCode::PARTIAL_CONTENT, base, body)
        }
        RangeOutcome::Partial(ranges) => multipart(rep, &ranges, base, head).await,
    }
}

fn with_headers(status: StatusCode, headers: HeaderMap, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

fn body_or_error(status: StatusCode, headers: HeaderMap, body: Result<Body, std::io::Error>) -> Response<Body> {
    match body {
        Ok(b) => with_headers(status, headers, b),
        Err(e) => {
            tracing::warn!(error = %e, "reading a file failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "file could not be read\n")
        }
    }
}

/// RFC 9110 §14.6: `multipart/byteranges`, one part per range, streamed in order.
async fn multipart(rep: &Representation, ranges: &[(u64, u64)], mut base: HeaderMap, head: bool) -> Response<Body> {
    const BOUNDARY: &str = "quiclab-byteranges-7d1f3a";
    let ct = String::from_utf8_lossy(rep.content_type.as_bytes()).into_owned();
    let mut parts: Vec<(Bytes, (u64, u64))> = Vec::with_capacity(ranges.len());
    let mut total = 0u64;
    for &(start, end) in ranges {
        let head = format!(
            "\r\n--{BOUNDARY}\r\nContent-Type: {ct}\r\nContent-Range: bytes {}-{}/{}\r\n\r\n",
            start,
            end - 1,
            rep.len
        );
        total += head.len() as u64 + (end - start);
        parts.push((Bytes::from(head), (start, end)));
    }
    let closing = Bytes::from(format!("\r\n--{BOUNDARY}--\r\n"));
    total += closing.len() as u64;
    if let Ok(v) = HeaderValue::from_str(&format!("multipart/byteranges; boundary={BOUNDARY}")) {
        base.insert(header::CONTENT_TYPE, v);
    }
    base.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    if head {
        return with_headers(StatusCode::PARTIAL_CONTENT, base, empty());
    }
    let mut bodies = Vec::with_capacity(parts.len() * 2 + 1);
    for (h, (start, end)) in parts {
        bodies.push(full(h));
        match rep.source.body(start, end).await {
            Ok(b) => bodies.push(b),
            Err(e) => return body_or_error(StatusCode::PARTIAL_CONTENT, base, Err(e)),
        }
    }
    bodies.push(full(closing));
    with_headers(StatusCode::PARTIAL_CONTENT, base, Chain::new(bodies).boxed_unsync())
}

enum Precondition {
    Proceed,
    NotModified,
    Failed,
}

/// RFC 9110 §13.2.2: evaluate preconditions in order.
fn precondition(rep: &Representation, etag: &str, headers: &HeaderMap) -> Precondition {
    // 1. If-Match (strong comparison), else 2. If-Unmodified-Since.
    if let Some(v) = headers.get(header::IF_MATCH) {
        if !etag_list_matches(v.as_bytes(), etag, false) {
            return Precondition::Failed;
        }
    } else if let (Some(v), Some(lm)) = (headers.get(header::IF_UNMODIFIED_SINCE), rep.last_modified) {
        if let Some(since) = parse_date(v) {
            if truncate(lm) > since {
                return Precondition::Failed;
            }
        }
    }
    // 3. If-None-Match (weak comparison), else 4. If-Modified-Since (GET/HEAD only; the
    // routes that call this serve nothing else).
    if let Some(v) = headers.get(header::IF_NONE_MATCH) {
        if etag_list_matches(v.as_bytes(), etag, true) {
            return Precondition::NotModified;
        }
    } else if let (Some(v), Some(lm)) = (headers.get(header::IF_MODIFIED_SINCE), rep.last_modified) {
        if let Some(since) = parse_date(v) {
            if truncate(lm) <= since {
                return Precondition::NotModified;
            }
        }
    }
    Precondition::Proceed
}

/// RFC 9110 §13.1.5: If-Range with an entity tag needs a strong match; with a date, an
/// exact match of Last-Modified.
fn if_range_holds(rep: &Representation, headers: &HeaderMap) -> bool {
    let Some(v) = headers.get(header::IF_RANGE) else { return true };
    let s = v.as_bytes();
    if s.starts_with(b"\"") || s.starts_with(b"W/") {
        return !s.starts_with(b"W/") && s == rep.etag.as_bytes();
    }
    match (parse_date(v), rep.last_modified) {
        (Some(d), Some(lm)) => truncate(lm) == d,
        _ => false,
    }
}

fn parse_date(v: &HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(v.to_str().ok()?).ok()
}

/// HTTP dates have whole seconds.
fn truncate(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)
}

/// Does an `If-Match`/`If-None-Match` list contain `etag` (or `*`)? RFC 9110 §8.8.3.2.
fn etag_list_matches(list: &[u8], etag: &str, weak: bool) -> bool {
    let list = String::from_utf8_lossy(list);
    if list.trim() == "*" {
        return true;
    }
    let ours = etag.trim_start_matches("W/");
    list.split(',').map(str::trim).any(|t| {
        let is_weak = t.starts_with("W/");
        let opaque = t.trim_start_matches("W/");
        opaque == ours && (weak || (!is_weak && !etag.starts_with("W/")))
    })
}

/// What a `Range` header asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeOutcome {
    /// Ignore the header (absent, another unit, or unparseable: RFC 9110 §14.2 allows ignoring).
    Full,
    /// These `[start, end)` ranges, in the order asked.
    Partial(Vec<(u64, u64)>),
    /// 416, with the reason for the log.
    Unsatisfiable(&'static str),
}

/// Parse `bytes=a-b, c-, -n` against a representation of `len` bytes (RFC 9110 §14.1.2).
pub fn parse_range(value: &[u8], len: u64, limits: RangeLimits) -> RangeOutcome {
    let Ok(s) = std::str::from_utf8(value) else { return RangeOutcome::Full };
    let Some(spec) = s.trim().strip_prefix("bytes=") else { return RangeOutcome::Full };
    let items: Vec<&str> = spec.split(',').map(str::trim).filter(|i| !i.is_empty()).collect();
    if items.is_empty() {
        return RangeOutcome::Full;
    }
    if items.len() > limits.max_ranges {
        return RangeOutcome::Unsatisfiable("too many ranges");
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Some((a, b)) = item.split_once('-') else { return RangeOutcome::Full };
        let range = match (a.trim(), b.trim()) {
            ("", "") => return RangeOutcome::Full,
            ("", suffix) => {
                let Ok(n) = suffix.parse::<u64>() else { return RangeOutcome::Full };
                if n == 0 {
                    continue; // a zero-length suffix is unsatisfiable (RFC 9110 §14.1.3)
                }
                (len.saturating_sub(n), len)
            }
            (first, last) => {
                let Ok(first) = first.parse::<u64>() else { return RangeOutcome::Full };
                let last = if last.is_empty() {
                    u64::MAX
                } else {
                    match last.parse::<u64>() {
                        Ok(l) if l >= first => l,
                        _ => return RangeOutcome::Full, // last < first: invalid, ignored
                    }
                };
                if first >= len {
                    continue; // unsatisfiable on its own; others may still be
                }
                (first, last.saturating_add(1).min(len))
            }
        };
        if range.0 < range.1 {
            out.push(range);
        }
    }
    if out.is_empty() {
        return RangeOutcome::Unsatisfiable("no range overlaps the representation");
    }
    // RFC 9110 §14.2: a server MAY reject many small or overlapping ranges; overlapping ones
    // are refused here (they only serve to multiply the response).
    let mut sorted = out.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[1].0 < w[0].1) {
        return RangeOutcome::Unsatisfiable("overlapping ranges");
    }
    RangeOutcome::Partial(out)
}

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%2F` or `%5C`: a separator smuggled into one segment.
    #[error("path contains an encoded slash or backslash")]
    EncodedSeparator,
    /// `.` or `..`, plain or percent-encoded.
    #[error("path contains a dot segment")]
    DotSegment,
    /// A NUL, a backslash, a bad escape or an escape that is not UTF-8.
    #[error("path contains a NUL, a backslash or invalid percent-encoding")]
    BadCharacter,
    /// `//` inside the path.
    #[error("path contains an empty segment (an absolute path inside the path)")]
    EmptySegment,
    /// The path resolves outside the root (through a symbolic link).
    #[error("path leaves the root through a symbolic link")]
    EscapesRoot,
    /// Nothing (or no regular file) at the path.
    #[error("no such file")]
    NotFound,
}

impl PathError {
    /// 400 for malformed paths, 404 for paths that are well-formed but lead nowhere allowed.
    pub fn status(self) -> StatusCode {
        match self {
            PathError::EscapesRoot | PathError::NotFound => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Check a request path for traversal tricks and decode it into segments. Applied to every
/// request, whether or not a root is configured.
pub fn check_path(raw: &str) -> Result<Vec<String>, PathError> {
    let lower = raw.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err(PathError::EncodedSeparator);
    }
    let trimmed = raw.strip_prefix('/').unwrap_or(raw);
    let mut segments = Vec::new();
    let parts: Vec<&str> = trimmed.split('/').collect();
    for (i, seg) in parts.iter().enumerate() {
        let decoded = percent_encoding::percent_decode_str(seg).decode_utf8().map_err(|_| PathError::BadCharacter)?;
        if decoded.contains('\0') || decoded.contains('\\') || seg.contains('%') && has_bad_escape(seg) {
            return Err(PathError::BadCharacter);
        }
        if decoded == "." || decoded == ".." {
            return Err(PathError::DotSegment);
        }
        if decoded.is_empty() {
            // A trailing slash is fine ("/dir/"); "//etc/passwd" or "/a//b" is not.
            if i + 1 == parts.len() {
                continue;
            }
            if !(i == 0 && parts.len() == 1) {
                return Err(PathError::EmptySegment);
            }
            continue;
        }
        segments.push(decoded.into_owned());
    }
    Ok(segments)
}

/// A `%` not followed by two hex digits.
fn has_bad_escape(seg: &str) -> bool {
    let b = seg.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// Resolve checked segments under `root` (canonical). Directories resolve to their
/// `index.html`. The result is canonical and inside the root, or an error.
pub fn resolve(root: &Path, segments: &[String]) -> Result<PathBuf, PathError> {
    let mut path = root.to_path_buf();
    for seg in segments {
        // check_path already refused separators and dot segments; stay paranoid.
        let p = Path::new(seg);
        if p.components().count() != 1 || !matches!(p.components().next(), Some(Component::Normal(_))) {
            return Err(PathError::DotSegment);
        }
        path.push(seg);
    }
    let mut canon = path.canonicalize().map_err(|_| PathError::NotFound)?;
    if !canon.starts_with(root) {
        return Err(PathError::EscapesRoot);
    }
    if canon.is_dir() {
        canon = canon.join("index.html").canonicalize().map_err(|_| PathError::NotFound)?;
        if !canon.starts_with(root) {
            return Err(PathError::EscapesRoot);
        }
    }
    if !canon.is_file() {
        return Err(PathError::NotFound);
    }
    Ok(canon)
}

/// Resolve `segments` under `root` ([`resolve`]) and read the file's metadata
/// ([`file_representation`]), on a blocking thread. The file is returned with its
/// representation, or with why its metadata could not be read.
pub(crate) async fn find_file(
    root: &Path,
    segments: &[String],
) -> Result<(PathBuf, std::io::Result<Representation>), PathError> {
    let (root, segments) = (root.to_path_buf(), segments.to_vec());
    let found = tokio::task::spawn_blocking(move || {
        let file = resolve(&root, &segments)?;
        let rep = file_representation(&file);
        Ok((file, rep))
    });
    // The closure does not panic; a runtime shutting down is "not found".
    found.await.unwrap_or(Err(PathError::NotFound))
}

/// The representation of a file: strong ETag from size and modification time.
fn file_representation(path: &Path) -> Result<Representation, std::io::Error> {
    let meta = std::fs::metadata(path)?;
    let modified = meta.modified().ok();
    let mtime_ns =
        modified.and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
    Ok(Representation {
        len: meta.len(),
        etag: format!("\"{:x}-{:x}\"", meta.len(), mtime_ns),
        last_modified: modified,
        content_type: HeaderValue::from_static(content_type_for(path)),
        cache_control: "public, max-age=60",
        source: Source::File(path.to_path_buf()),
    })
}

/// Content-Type from the file extension.
fn content_type_for(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: RangeLimits = RangeLimits { max_ranges: 4 };

    #[test]
    fn ranges() {
        use RangeOutcome::*;
        assert_eq!(parse_range(b"bytes=0-99", 1000, L), Partial(vec![(0, 100)]));
        assert_eq!(parse_range(b"bytes=900-", 1000, L), Partial(vec![(900, 1000)]));
        assert_eq!(parse_range(b"bytes=-100", 1000, L), Partial(vec![(900, 1000)]));
        assert_eq!(parse_range(b"bytes=-5000", 1000, L), Partial(vec![(0, 1000)]));
        assert_eq!(parse_range(b"bytes=990-2000", 1000, L), Partial(vec![(990, 1000)]));
        assert_eq!(parse_range(b"bytes=0-0, 10-19", 1000, L), Partial(vec![(0, 1), (10, 20)]));
        assert_eq!(parse_range(b"bytes=1000-", 1000, L), Unsatisfiable("no range overlaps the representation"));
        assert_eq!(parse_range(b"bytes=-0", 1000, L), Unsatisfiable("no range overlaps the representation"));
        assert_eq!(parse_range(b"bytes=0-9,5-20", 1000, L), Unsatisfiable("overlapping ranges"));
        assert_eq!(parse_range(b"bytes=0-1,2-3,4-5,6-7,8-9", 1000, L), Unsatisfiable("too many ranges"));
        for ignored in [&b"items=0-1"[..], b"bytes=", b"bytes=a-b", b"bytes=9-1", b"bytes=-", b"bytes=5", b"\xff"] {
            assert_eq!(parse_range(ignored, 1000, L), Full, "{:?}", String::from_utf8_lossy(ignored));
        }
    }

    #[test]
    fn traversal_forms_are_refused() {
        use PathError::*;
        assert_eq!(check_path("/"), Ok(vec![]));
        assert_eq!(check_path("/a/b.txt"), Ok(vec!["a".into(), "b.txt".into()]));
        assert_eq!(check_path("/dir/"), Ok(vec!["dir".into()]));
        assert_eq!(check_path("/with%20space"), Ok(vec!["with space".into()]));
        assert_eq!(check_path("/../etc/passwd"), Err(DotSegment));
        assert_eq!(check_path("/a/./b"), Err(DotSegment));
        assert_eq!(check_path("/%2e%2e/etc/passwd"), Err(DotSegment));
        assert_eq!(check_path("/%2E%2e/x"), Err(DotSegment));
        assert_eq!(check_path("/.%2e/x"), Err(DotSegment));
        assert_eq!(check_path("/a%2f..%2fb"), Err(EncodedSeparator));
        assert_eq!(check_path("/a%2F..%2Fb"), Err(EncodedSeparator));
        assert_eq!(check_path("/..%5c..%5cwin.ini"), Err(EncodedSeparator));
        assert_eq!(check_path("/a\\..\\b"), Err(BadCharacter));
        assert_eq!(check_path("/a%00.txt"), Err(BadCharacter));
        assert_eq!(check_path("/a%zz"), Err(BadCharacter));
        assert_eq!(check_path("/a%ff"), Err(BadCharacter));
        assert_eq!(check_path("//etc/passwd"), Err(EmptySegment));
        assert_eq!(check_path("/a//b"), Err(EmptySegment));
    }

    #[test]
    fn resolution_stays_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/index.html"), "<p>sub</p>").unwrap();
        std::fs::write(root.join("a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("leak.txt")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("up")).unwrap();
        let root = root.canonicalize().unwrap();
        let seg = |s: &str| check_path(s).unwrap();
        assert!(resolve(&root, &seg("/a.txt")).unwrap().ends_with("a.txt"));
        assert!(resolve(&root, &seg("/sub/")).unwrap().ends_with("sub/index.html"));
        assert_eq!(resolve(&root, &seg("/leak.txt")), Err(PathError::EscapesRoot));
        assert_eq!(resolve(&root, &seg("/up/secret.txt")), Err(PathError::EscapesRoot));
        assert_eq!(resolve(&root, &seg("/missing")), Err(PathError::NotFound));
        assert_eq!(resolve(&root, &seg("/")), Err(PathError::NotFound), "no index.html at the top");
    }

    #[test]
    fn etag_lists() {
        assert!(etag_list_matches(b"\"x\"", "\"x\"", false));
        assert!(etag_list_matches(b"\"a\", \"x\"", "\"x\"", true));
        assert!(etag_list_matches(b"W/\"x\"", "\"x\"", true));
        assert!(!etag_list_matches(b"W/\"x\"", "\"x\"", false));
        assert!(etag_list_matches(b"*", "\"x\"", false));
        assert!(!etag_list_matches(b"\"y\"", "\"x\"", true));
    }
}
