//! Content coding (RFC 9110 §8.4, §12.5.3): `Accept-Encoding` negotiation and streaming
//! compression of response bodies with gzip, deflate (the zlib format, RFC 9110 §8.4.1.2), br
//! and zstd, through the `async-compression` crate (no compression code of our own).
//!
//! Which responses are coded:
//!
//! - status 200 only, never a response that already has `Content-Encoding` or a
//!   `Content-Range`, and never one marked [`NoCoding`] (streamed, dripped or validator demos);
//! - a compressible media type ([`compressible`]: `text/*`, JSON, JavaScript, XML, SVG, wasm):
//!   images, video, fonts, archives and `application/octet-stream` (the `/bytes/N` pattern,
//!   unknown binary) are sent as they are;
//! - a body of known length of at least [`MIN_CODED_LEN`] bytes: below that the coding's own
//!   header and checksum eat most of the gain.
//!
//! Ranges (RFC 9110 §14): a `Range` request is answered from the **identity** representation
//! (206 without `Content-Encoding`, the identity `ETag`); only full 200 answers are coded. A
//! coded 200 carries an `ETag` with the coding appended inside the quotes (`"abc"` becomes
//! `"abc-gzip"`), so a cache never mixes the bytes of two codings (RFC 9110 §8.8.3), and an
//! `If-Range` holding a coded tag never matches: the client gets the whole (coded) body.
//! Every response whose coding depended on `Accept-Encoding` carries `Vary: Accept-Encoding`.
//!
//! A request whose `Accept-Encoding` accepts nothing we can send, not even identity, gets
//! identity anyway (RFC 9110 §12.1 allows disregarding the field instead of answering 406).

use std::io;

use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZlibEncoder, ZstdEncoder};
use async_compression::Level;
use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{
    HeaderMap, HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, ETAG, VARY,
};
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyDataStream, BodyExt, StreamBody};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Body, BodyError};

/// Smallest body that is coded, in bytes. 256: gzip adds 18 bytes of framing and a short body
/// has little repetition to remove; httpbin-style JSON answers (300–800 bytes) are coded.
pub const MIN_CODED_LEN: u64 = 256;

/// Brotli quality used for responses. 4 (of 11): close to gzip's speed with a better ratio;
/// brotli's default 11 costs tens of times more CPU per byte, too much for on-the-fly coding.
const BROTLI_QUALITY: i32 = 4;

/// A content coding the site can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `gzip` (RFC 1952).
    Gzip,
    /// `deflate`: the zlib format (RFC 1950), as RFC 9110 §8.4.1.2 defines it.
    Deflate,
    /// `br` (RFC 7932).
    Brotli,
    /// `zstd` (RFC 8878).
    Zstd,
}

/// Server preference among codings the client rates equally.
const PREFERENCE: [Coding; 4] = [Coding::Brotli, Coding::Zstd, Coding::Gzip, Coding::Deflate];

impl Coding {
    /// The token in `Content-Encoding` / `Accept-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
        }
    }
}

/// Marker in a response's extensions: send this response as it is (no content coding).
#[derive(Debug, Clone, Copy)]
pub struct NoCoding;

/// Marker in a response's extensions: content coding was already decided for it (by
/// [`super::files::serve_coded`]), so [`finish`] leaves it alone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Decided;

/// The coding to use for a request's `Accept-Encoding`, or `None` for identity.
///
/// RFC 9110 §12.5.3: a coding listed with q > 0 is acceptable, `*` stands for codings not
/// listed, and without the field (or with an empty one) only identity is wanted. Among
/// acceptable codings the highest q wins, then [`PREFERENCE`]; identity wins only when it is
/// listed with a higher q than the best coding. Items with a malformed q are ignored.
pub fn negotiate(headers: &HeaderMap) -> Option<Coding> {
    let mut listed: Vec<(String, u16)> = Vec::new();
    for value in headers.get_all(ACCEPT_ENCODING) {
        let Ok(s) = value.to_str() else { continue };
        for item in s.split(',') {
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            if token.is_empty() {
                continue;
            }
            let mut q = Some(1000u16);
            for param in parts {
                if let Some((k, v)) = param.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        q = parse_q(v.trim());
                    }
                }
            }
            if let Some(q) = q {
                // x-gzip is gzip (RFC 9110 §8.4.1.3).
                let token = if token == "x-gzip" { "gzip".to_string() } else { token };
                listed.push((token, q));
            }
        }
    }
    let q_of = |name: &str| listed.iter().find(|(t, _)| t == name).map(|(_, q)| *q);
    let star = q_of("*");
    let mut best: Option<(Coding, u16)> = None;
    for c in PREFERENCE {
        let q = q_of(c.token()).or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some((c, q));
        }
    }
    let (coding, q) = best?;
    match q_of("identity") {
        Some(iq) if iq > q => None,
        _ => Some(coding),
    }
}

/// A qvalue (RFC 9110 §12.4.2) in thousandths: `0`, `1`, `0.5`, `1.000`; else `None`.
fn parse_q(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u16 = match int {
        "0" => 0,
        "1" => 1,
        _ => return None,
    };
    let mut thousandths = 0u16;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    let q = whole * 1000 + thousandths;
    (q <= 1000).then_some(q)
}

/// Is a body of this media type worth coding? Text-like types yes; images, audio, video,
/// fonts, archives and opaque binary no (they are compressed already, or unknown).
pub fn compressible(content_type: &HeaderValue) -> bool {
    let Ok(ct) = content_type.to_str() else { return false };
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime.starts_with("text/")
        || mime.ends_with("+json")
        || mime.ends_with("+xml")
        || matches!(
            mime.as_str(),
            "application/json"
                | "application/javascript"
                | "application/xml"
                | "application/wasm"
                | "application/x-ndjson"
                | "image/svg+xml"
        )
}

/// Would a representation of this type and length be coded (given an acceptable coding)?
pub fn eligible(content_type: &HeaderValue, len: u64) -> bool {
    len >= MIN_CODED_LEN && compressible(content_type)
}

/// `"tag"` → `"tag-gzip"`, `W/"tag"` → `W/"tag-gzip"`.
pub fn coded_etag(etag: &str, coding: Coding) -> String {
    match etag.strip_suffix('"') {
        Some(open) => format!("{open}-{}\"", coding.token()),
        None => format!("{etag}-{}", coding.token()),
    }
}

/// Add `Accept-Encoding` to `Vary`, keeping what is there.
pub fn add_vary(headers: &mut HeaderMap) {
    let already = headers.get_all(VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("accept-encoding") || t.trim() == "*"))
    });
    if !already {
        headers.append(VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// Code `body` on the fly: a streaming encoder between the body and the transport, holding
/// at most the encoder's window and one read buffer.
pub fn encode_body(body: Body, coding: Coding) -> Body {
    let stream = BodyDataStream::new(body).map(|r| r.map_err(io::Error::other));
    let reader = tokio_util::io::StreamReader::new(stream);
    match coding {
        Coding::Gzip => reader_body(GzipEncoder::new(reader)),
        Coding::Deflate => reader_body(ZlibEncoder::new(reader)),
        Coding::Brotli => reader_body(BrotliEncoder::with_quality(reader, Level::Precise(BROTLI_QUALITY))),
        Coding::Zstd => reader_body(ZstdEncoder::new(reader)),
    }
}

/// Code bytes in memory (for `/gzip`, `/deflate`, `/brotli`).
pub async fn encode_bytes(data: &[u8], coding: Coding) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    match coding {
        Coding::Gzip => GzipEncoder::new(data).read_to_end(&mut out).await?,
        Coding::Deflate => ZlibEncoder::new(data).read_to_end(&mut out).await?,
        Coding::Brotli => {
            BrotliEncoder::with_quality(data, Level::Precise(BROTLI_QUALITY)).read_to_end(&mut out).await?
        }
        Coding::Zstd => ZstdEncoder::new(data).read_to_end(&mut out).await?,
    };
    Ok(out)
}

fn reader_body<R: AsyncRead + Send + 'static>(reader: R) -> Body {
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, 32 << 10)
        .map(|r| r.map(Frame::data).map_err(|e| Box::new(e) as BodyError));
    StreamBody::new(stream).boxed_unsync()
}

/// An empty body of *unknown* size, for a HEAD answer whose coded length is not known: the
/// transports add `Content-Length` from an exact size hint, and `0` would be a lie about the
/// GET answer (RFC 9110 §9.3.2 lets a HEAD answer omit it).
pub fn empty_unsized() -> Body {
    StreamBody::new(futures_util::stream::empty::<Result<Frame<Bytes>, BodyError>>()).boxed_unsync()
}

/// Apply content coding to a finished response, where it applies (see the module doc);
/// responses that may vary by it get `Vary: Accept-Encoding`. `head`: the request was HEAD
/// (the body is already empty; only the header fields change).
pub fn finish(resp: Response<Body>, coding: Option<Coding>, head: bool) -> Response<Body> {
    let ext = resp.extensions();
    if ext.get::<NoCoding>().is_some() || ext.get::<Decided>().is_some() || resp.status() != StatusCode::OK {
        return resp;
    }
    let h = resp.headers();
    if h.contains_key(CONTENT_ENCODING) || h.contains_key(CONTENT_RANGE) {
        return resp;
    }
    let Some(ct) = h.get(http::header::CONTENT_TYPE) else { return resp };
    let len = match h.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
        Some(n) => n,
        None => match http_body::Body::size_hint(resp.body()).exact() {
            Some(n) => n,
            None => return resp, // streamed, length unknown: sent as it comes
        },
    };
    if !eligible(ct, len) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    add_vary(&mut parts.headers);
    let Some(coding) = coding else {
        return Response::from_parts(parts, body);
    };
    apply_headers(&mut parts.headers, coding);
    let body = if head { empty_unsized() } else { encode_body(body, coding) };
    Response::from_parts(parts, body)
}

/// `Content-Encoding` and no `Content-Length` (the coded length is known only at the end).
pub fn mark_coded(headers: &mut HeaderMap, coding: Coding) {
    headers.insert(CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
    headers.remove(CONTENT_LENGTH);
}

/// The header changes of a coded answer: [`mark_coded`], and the coding-specific `ETag`.
pub fn apply_headers(headers: &mut HeaderMap, coding: Coding) {
    mark_coded(headers, coding);
    if let Some(tag) = headers.get(ETAG).and_then(|v| v.to_str().ok()).map(|t| coded_etag(t, coding)) {
        if let Ok(v) = HeaderValue::from_str(&tag) {
            headers.insert(ETAG, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ae(v: &str) -> Option<Coding> {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        negotiate(&h)
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(&HeaderMap::new()), None, "no field: identity");
        assert_eq!(ae(""), None);
        assert_eq!(ae("gzip"), Some(Coding::Gzip));
        assert_eq!(ae("x-gzip"), Some(Coding::Gzip));
        assert_eq!(ae("GZIP;Q=0.5"), Some(Coding::Gzip));
        assert_eq!(ae("gzip, deflate, br, zstd"), Some(Coding::Brotli), "server preference on a tie");
        assert_eq!(ae("gzip;q=1, br;q=0.5"), Some(Coding::Gzip));
        assert_eq!(ae("deflate"), Some(Coding::Deflate));
        assert_eq!(ae("zstd;q=0.9, gzip;q=0.8"), Some(Coding::Zstd));
        assert_eq!(ae("gzip;q=0"), None);
        assert_eq!(ae("*"), Some(Coding::Brotli));
        assert_eq!(ae("*;q=0.5, br;q=0"), Some(Coding::Zstd));
        assert_eq!(ae("identity"), None);
        assert_eq!(ae("identity;q=1, gzip;q=0.5"), None, "identity preferred");
        assert_eq!(ae("identity;q=0, gzip;q=0.5"), Some(Coding::Gzip));
        assert_eq!(ae("compress, foo"), None, "nothing we have");
        assert_eq!(ae("gzip;q=2"), None, "bad q ignored");
        assert_eq!(ae("gzip;q=0.1234"), None);
        assert_eq!(ae("gzip;q=abc, deflate"), Some(Coding::Deflate));
        assert_eq!(ae(" , ;q=1, gzip ; q = 0.3 "), Some(Coding::Gzip));
    }

    #[test]
    fn etags_and_types() {
        assert_eq!(coded_etag("\"abc\"", Coding::Gzip), "\"abc-gzip\"");
        assert_eq!(coded_etag("W/\"abc\"", Coding::Brotli), "W/\"abc-br\"");
        for ct in ["text/html; charset=utf-8", "application/json", "image/svg+xml", "application/ld+json"] {
            assert!(compressible(&HeaderValue::from_static(ct)), "{ct}");
        }
        for ct in ["application/octet-stream", "image/png", "video/mp4", "font/woff2"] {
            assert!(!compressible(&HeaderValue::from_static(ct)), "{ct}");
        }
    }

    #[tokio::test]
    async fn streaming_and_memory_coding_round_trip() {
        use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZlibDecoder, ZstdDecoder};
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7 + u32::from(b'a')) as u8).collect();
        for c in PREFERENCE {
            let coded = super::super::body::read_body(encode_body(super::super::body::full(data.clone()), c), u64::MAX)
                .await
                .unwrap();
            assert!(coded.len() < data.len() / 10, "{c:?} compresses");
            let mut plain = Vec::new();
            match c {
                Coding::Gzip => GzipDecoder::new(&coded[..]).read_to_end(&mut plain).await.unwrap(),
                Coding::Deflate => ZlibDecoder::new(&coded[..]).read_to_end(&mut plain).await.unwrap(),
                Coding::Brotli => BrotliDecoder::new(&coded[..]).read_to_end(&mut plain).await.unwrap(),
                Coding::Zstd => ZstdDecoder::new(&coded[..]).read_to_end(&mut plain).await.unwrap(),
            };
            assert_eq!(plain, data, "{c:?}");
            let mem = encode_bytes(&data, c).await.unwrap();
            assert!(!mem.is_empty());
        }
    }
}
