//! Entry points of the fuzz targets and their regression tests; not a stable API.
//!
//! Each `pub fn <target>(data: &[u8])` is the whole body of the cargo-fuzz target of the same
//! name in `fuzz/fuzz_targets/`, which only calls it. Keeping the bodies here lets
//! `tests/fuzz_regressions.rs` replay every input of `fuzz/regressions/<target>/` with plain
//! `cargo test` (no nightly, no cargo-fuzz). See `fuzz/README.md`.
//!
//! The functions turn bytes into structured inputs with [`arbitrary::Unstructured`], drive the
//! code under test and check invariants with `assert!`: a failed check or any panic is a finding.
//! That is the only place in the library where panicking on input is the intent.

use arbitrary::{Arbitrary, Unstructured};

mod lab_stall;
mod mqtt_broker;

pub use self::http::http_parse;
pub use self::lab_stall::lab_stall;
pub use self::mqtt_broker::{mqtt_broker, mqtt_broker_strict, mqtt_broker_v5};
pub use self::mqtt_codec::mqtt_codec;
pub use self::mqtt_store::mqtt_store;
pub use self::topic_tree::topic_tree;

mod mqtt_store {
    use super::*;
    use crate::mqtt::codec::QoS;
    use crate::mqtt::session::Message;
    use crate::mqtt::store::{
        client_prefix, decode_message, decode_retained, decode_subs, encode_message, encode_retained, encode_subs,
        split_client,
    };

    /// The MQTT store's record decoders (src/mqtt/store.rs) on arbitrary bytes, as a damaged
    /// or foreign file would give them: retained values, subscription lists, outbound and
    /// inbound message records, and message keys. Checks: no panic; what decodes encodes back
    /// to the same bytes (retained values, subscription lists, keys) or decodes again to the
    /// same record (messages, whose encoding normalises the unused packet id of a queued
    /// message and any non-zero retain byte).
    /// The same message: topic, payload, properties; expiry within a few milliseconds (it is
    /// kept as wall-clock milliseconds and read back on this process's monotonic clock).
    fn assert_same(a: &Message, b: &Message) {
        assert_eq!((&a.topic, &a.payload, &a.props), (&b.topic, &b.payload, &b.props));
        match (a.expires_at, b.expires_at) {
            (None, None) => {}
            (Some(x), Some(y)) => {
                let d = if x > y { x - y } else { y - x };
                assert!(d < std::time::Duration::from_millis(50), "expiry moved by {d:?}");
            }
            other => panic!("expiry lost: {other:?}"),
        }
    }

    pub fn mqtt_store(data: &[u8]) {
        let mut u = Unstructured::new(data);
        let which = u.int_in_range(0u8..=4).unwrap_or(0);
        let bytes = u.take_rest();
        match which {
            0 => {
                if let Some(m) = decode_retained(bytes) {
                    let again = encode_retained(&m);
                    if m.expires_at.is_none() && m.props.is_none() {
                        assert_eq!(again, bytes, "retained value re-encodes differently");
                    }
                    let back = decode_retained(&again).expect("an encoded retained value decodes");
                    assert_same(&back, &m);
                }
            }
            1 => {
                if let Some((expiry, subs)) = decode_subs(bytes) {
                    let again = encode_subs(expiry, &subs);
                    assert_eq!(decode_subs(&again), Some((expiry, subs)), "subscription list does not round-trip");
                }
            }
            2 | 3 => {
                let staged = which == 2;
                if let Some((stage, retain, msg)) = decode_message(bytes, staged) {
                    assert_eq!(stage.is_some(), staged);
                    let again = encode_message(stage, retain, &msg);
                    let back = decode_message(&again, staged).expect("an encoded record decodes");
                    assert_eq!(back.0, stage);
                    assert_eq!(back.1, retain);
                    assert_same(&back.2, &msg);
                    // A queued record keeps the delivery QoS; others the message's.
                    assert!(matches!(back.2.qos, QoS::Level0 | QoS::Level1 | QoS::Level2));
                }
            }
            _ => {
                if let Some((client, rest)) = split_client(bytes) {
                    let mut k = client_prefix(client);
                    k.extend_from_slice(rest);
                    assert_eq!(k, bytes, "key re-assembles differently");
                }
            }
        }
    }
}

mod mqtt_codec {
    use super::*;
    use crate::mqtt::codec::{
        decode_one, encode_to_vec, frame_head, wire_len_hint, Decoder, Packet, Version, MAX_REMAINING_LENGTH,
    };

    /// The framing [`Decoder`] fed arbitrary bytes in arbitrary chunks with an arbitrary maximum
    /// packet size. Checks:
    ///
    /// * chunking does not matter: the decoder ([`Decoder::feed`], and [`Decoder::extend`] with
    ///   [`Decoder::decode`] a few packets per call) yields the same packets and the same error
    ///   as [`decode_one`] applied to the whole stream, and holds exactly the bytes of the
    ///   incomplete frame at the end;
    /// * no frame larger than the maximum is decoded;
    /// * every decoded packet encodes, and that encoding decodes to the same packet (the codec is
    ///   strict both ways); when the frame used the minimal Remaining Length encoding (§2.2.3),
    ///   the re-encoding is byte-identical to the frame;
    /// * [`wire_len_hint`] is the encoded size of PUBLISH, SUBACK and the acks.
    pub fn mqtt_codec(data: &[u8]) {
        let mut u = Unstructured::new(data);
        let max_packet = match u.int_in_range(0u8..=3) {
            Ok(0) => usize::from(u.int_in_range(0u8..=255).unwrap_or(0)),
            Ok(1) => usize::from(u.arbitrary::<u16>().unwrap_or(0)),
            _ => 1 << 20,
        };
        let n_sizes = u.int_in_range(1usize..=8).unwrap_or(1);
        let sizes: Vec<usize> = (0..n_sizes).map(|_| u.int_in_range(1usize..=64).unwrap_or(64)).collect();
        let per_call = u.int_in_range(1usize..=4).unwrap_or(1);
        // The decoder's version: told (3.1.1 or 5), or learnt from a CONNECT (a server's).
        let version = match u.int_in_range(0u8..=2) {
            Ok(1) => Some(Version::V3),
            Ok(2) => Some(Version::V5),
            _ => None,
        };
        let new_decoder = || match version {
            Some(v) => Decoder::with_version(max_packet, v),
            None => Decoder::new(max_packet),
        };
        let stream = u.take_rest();

        // The reference: the whole stream at once.
        let mut want = Vec::new();
        let mut frames = Vec::new();
        let mut used = 0;
        let mut ver = version;
        let want_err = loop {
            match decode_one(&stream[used..], max_packet, ver) {
                Ok(Some((p, n))) => {
                    assert!(n <= max_packet, "decoded a frame of {n} bytes with max_packet {max_packet}");
                    if let (Packet::Connect(c), None) = (&p, ver) {
                        ver = Some(Version::of(c.protocol));
                    }
                    frames.push((&stream[used..used + n], ver.unwrap_or(Version::V3)));
                    want.push(p);
                    used += n;
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };

        // The decoder, chunk by chunk.
        let mut d = new_decoder();
        let mut got = Vec::new();
        let mut got_err = None;
        let mut off = 0;
        let mut i = 0;
        while off < stream.len() {
            let n = sizes[i % sizes.len()].min(stream.len() - off);
            if let Err(e) = d.feed(&stream[off..off + n], &mut got) {
                got_err = Some(e);
                break;
            }
            off += n;
            i += 1;
        }
        assert_eq!(got, want, "chunked decoding differs from whole-stream decoding");
        assert_eq!(got_err, want_err, "chunked decoding fails differently");
        if want_err.is_none() {
            assert_eq!(d.buffered(), stream.len() - used, "bytes held for the incomplete frame");
        }

        // The paced reader's way: `extend` by chunks, `decode` at most `per_call` packets a call.
        let mut d = new_decoder();
        let mut got = Vec::new();
        let mut got_err = None;
        let (mut off, mut i) = (0, 0);
        while off < stream.len() && got_err.is_none() {
            let n = sizes[i % sizes.len()].min(stream.len() - off);
            d.extend(&stream[off..off + n]);
            off += n;
            i += 1;
            if let Err(e) = d.decode(&mut got, per_call) {
                got_err = Some(e);
            }
        }
        // Drain what is left once every byte is in, `per_call` packets at a time.
        while got_err.is_none() {
            let before = got.len();
            if let Err(e) = d.decode(&mut got, per_call) {
                got_err = Some(e);
            } else if got.len() == before {
                break;
            }
        }
        assert_eq!(got, want, "extend/decode differs from whole-stream decoding");
        assert_eq!(got_err, want_err, "extend/decode fails differently");
        if want_err.is_none() {
            assert_eq!(d.buffered(), stream.len() - used, "extend/decode: bytes held for the incomplete frame");
        }

        for (p, (frame, v)) in want.iter().zip(frames) {
            let bytes = match encode_to_vec(p, v) {
                Ok(b) => b,
                Err(e) => panic!("decoded packet {p:?} does not encode: {e}"),
            };
            match decode_one(&bytes, MAX_REMAINING_LENGTH + 5, Some(v)) {
                Ok(Some((back, n))) => {
                    assert_eq!(n, bytes.len(), "re-encoding of {p:?} is not one frame");
                    assert_eq!(&back, p, "re-encoding does not decode to the same packet");
                }
                other => panic!("re-encoding {bytes:02x?} of {p:?} does not decode: {other:?}"),
            }
            // MQTT 5 leaves the encoder choices (property order, an acknowledgement's reason
            // code 0 written or not): byte identity is checked for 3.1.1 only.
            if minimal_length(frame) && v == Version::V3 {
                assert_eq!(bytes, frame, "re-encoding of {p:?} differs from its frame");
            }
            // The writer's batch budget: exact for PUBLISH, SUBACK and the fixed-size acks.
            let exact = matches!(
                p,
                Packet::Publish(_)
                    | Packet::Suback(_)
                    | Packet::Connack(_)
                    | Packet::Puback(_)
                    | Packet::Pubrec(_)
                    | Packet::Pubrel(_)
                    | Packet::Pubcomp(_)
                    | Packet::Unsuback(_)
            );
            if exact {
                assert_eq!(wire_len_hint(p, v), bytes.len(), "wire_len_hint of {p:?}");
            }
        }
    }

    /// Whether a frame's Remaining Length uses the fewest bytes possible.
    fn minimal_length(frame: &[u8]) -> bool {
        match frame_head(frame, usize::MAX) {
            Ok(Some(h)) => {
                let needed = match h.remaining_len {
                    0..=127 => 1,
                    128..=16_383 => 2,
                    16_384..=2_097_151 => 3,
                    _ => 4,
                };
                h.header_len == 1 + needed
            }
            _ => false,
        }
    }
}

mod http {
    use super::*;
    use crate::web::files::{self, check_path, parse_range, resolve, PathError, RangeLimits, RangeOutcome};
    use ::http::header::{self, HeaderMap, HeaderValue};
    use ::http::{Method, StatusCode};
    use bytes::Bytes;
    use futures_util::FutureExt;
    use http_body_util::BodyExt;
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;
    use std::time::{Duration, SystemTime};

    /// Pieces request paths are built from: traversal tricks, escapes and names that exist
    /// under the fixture root `fuzz/http_root` (whose `up` and `outside` are symbolic links
    /// leaving it).
    const PATH_PIECES: &[&str] = &[
        "/",
        "a",
        "b.txt",
        "index.html",
        "up",
        "outside",
        "http_root",
        "fuzz",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        "%2f",
        "%5C",
        "%00",
        "%",
        "%4",
        "%zz",
        "%41",
        "\\",
        "\0",
        "//",
        "é",
        "%c3%a9",
        "%ff",
        "sub",
        "link",
    ];
    /// Pieces of `Range` values.
    const RANGE_PIECES: &[&str] = &[
        "bytes=",
        "bytes",
        "=",
        "-",
        ",",
        " ",
        "0",
        "1",
        "9",
        "10",
        "99",
        "100",
        "4095",
        "18446744073709551615",
        "18446744073709551616",
        "-0",
        "+1",
        "items=",
        "\t",
        "0-0",
        "5-",
        "-5",
    ];
    /// Pieces of `If-Match` / `If-None-Match` / `If-Range` values.
    const TAG_PIECES: &[&str] = &["\"v1\"", "W/\"v1\"", "\"v2\"", "W/", "*", ",", " ", "\"", "v1"];
    /// Dates around the representation's modification time (FIXED_MTIME, 1,700,000,000 s).
    const DATES: &[&str] = &[
        "Tue, 14 Nov 2023 22:13:20 GMT",
        "Tue, 14 Nov 2023 22:13:19 GMT",
        "Tue, 14 Nov 2023 22:13:21 GMT",
        "Thu, 01 Jan 1970 00:00:00 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "not a date",
    ];
    const FIXED_MTIME: u64 = 1_700_000_000;

    /// A string from pieces (mostly) or arbitrary text.
    fn pieces(u: &mut Unstructured, set: &[&str]) -> arbitrary::Result<String> {
        if u.ratio(1u8, 8)? {
            return String::arbitrary(u);
        }
        let n = u.int_in_range(0usize..=12)?;
        let mut s = String::new();
        for _ in 0..n {
            s.push_str(u.choose(set)?);
        }
        Ok(s)
    }

    fn header_value(u: &mut Unstructured, set: &[&str]) -> arbitrary::Result<Option<HeaderValue>> {
        if !bool::arbitrary(u)? {
            return Ok(None);
        }
        let s = if set == DATES && u.ratio(3u8, 4)? { u.choose(set)?.to_string() } else { pieces(u, set)? };
        Ok(HeaderValue::from_str(&s).ok())
    }

    /// The fixture root, canonical, if the source tree is there.
    fn root() -> Option<&'static Path> {
        static ROOT: OnceLock<Option<PathBuf>> = OnceLock::new();
        ROOT.get_or_init(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/http_root").canonicalize().ok()).as_deref()
    }

    /// The request-path checks, `Range` parsing and conditional requests of the site
    /// (`web::files`): request paths built from traversal pieces go through `check_path` and
    /// `resolve` under a fixture root with symbolic links leaving it; a representation of up to
    /// 4 KiB is served with arbitrary `Range`, `If-*` headers to GET and HEAD. Checks: accepted
    /// segments are plain names, a resolved path is a file inside the root, parsed ranges are
    /// in bounds, sorted-disjoint and within the limit, and the response's status, headers and
    /// body agree (200 is the whole content, 206 exactly the ranges, 304 empty, 416 names the
    /// length).
    pub fn http_parse(data: &[u8]) {
        let _ = run(&mut Unstructured::new(data));
    }

    fn run(u: &mut Unstructured) -> arbitrary::Result<()> {
        // Paths.
        let raw = pieces(u, PATH_PIECES)?;
        check_request_path(&raw);

        // Range parsing alone, with any length.
        let max_ranges = u.int_in_range(0usize..=8)?;
        let limits = RangeLimits { max_ranges };
        let range = pieces(u, RANGE_PIECES)?;
        let big_len = if bool::arbitrary(u)? { u64::arbitrary(u)? } else { u.int_in_range(0u64..=200)? };
        check_ranges(&range, big_len, limits);

        // A whole conditional / range request.
        let len = u.int_in_range(0usize..=4096)?;
        let content: Bytes = (0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
        let etag = u.choose(&["\"v1\"", "W/\"v1\"", "\"v2\""])?.to_string();
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&range) {
            if bool::arbitrary(u)? {
                headers.insert(header::RANGE, v);
            }
        }
        for (name, set) in [
            (header::IF_MATCH, TAG_PIECES),
            (header::IF_NONE_MATCH, TAG_PIECES),
            (header::IF_RANGE, if bool::arbitrary(u)? { TAG_PIECES } else { DATES }),
            (header::IF_MODIFIED_SINCE, DATES),
            (header::IF_UNMODIFIED_SINCE, DATES),
        ] {
            if let Some(v) = header_value(u, set)? {
                headers.insert(name, v);
            }
        }
        let head = bool::arbitrary(u)?;
        check_serve(content, etag, &headers, head, limits);
        Ok(())
    }

    fn check_request_path(raw: &str) {
        let segments = match check_path(raw) {
            Ok(s) => s,
            Err(e) => {
                assert!(matches!(e.status(), StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND));
                return;
            }
        };
        let lower = raw.to_ascii_lowercase();
        assert!(!lower.contains("%2f") && !lower.contains("%5c"), "{raw:?}: encoded separator accepted");
        for s in &segments {
            assert!(!s.is_empty(), "{raw:?}: empty segment {segments:?}");
            assert!(s != "." && s != "..", "{raw:?}: dot segment {segments:?}");
            assert!(!s.contains(['/', '\\', '\0']), "{raw:?}: separator or NUL in {s:?}");
        }
        let Some(root) = root() else { return };
        match resolve(root, &segments) {
            Ok(p) => {
                assert!(p.starts_with(root), "{raw:?} resolved to {} outside {}", p.display(), root.display());
                assert!(p.is_file(), "{raw:?} resolved to {}, not a file", p.display());
                assert_eq!(p.canonicalize().ok().as_deref(), Some(p.as_path()), "{raw:?}: result not canonical");
            }
            Err(PathError::EscapesRoot) => {
                // Only the symbolic links lead out.
                assert!(segments.iter().any(|s| s == "up" || s == "outside" || s == "link"), "{raw:?}: {segments:?}");
            }
            Err(_) => {}
        }
    }

    fn check_ranges(value: &str, len: u64, limits: RangeLimits) {
        match parse_range(value.as_bytes(), len, limits) {
            RangeOutcome::Partial(ranges) => {
                assert!(!ranges.is_empty() && ranges.len() <= limits.max_ranges, "{value:?}: {ranges:?}");
                for &(a, b) in &ranges {
                    assert!(a < b && b <= len, "{value:?} against {len}: {ranges:?}");
                }
                let mut sorted = ranges.clone();
                sorted.sort_unstable();
                assert!(sorted.windows(2).all(|w| w[0].1 <= w[1].0), "{value:?}: overlapping {ranges:?}");
            }
            RangeOutcome::Full | RangeOutcome::Unsatisfiable(_) => {}
        }
    }

    fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
        h.get(name).and_then(|v| v.to_str().ok())
    }

    fn check_serve(content: Bytes, etag: String, headers: &HeaderMap, head: bool, limits: RangeLimits) {
        let len = content.len() as u64;
        let rep = files::Representation {
            len,
            etag,
            last_modified: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(FIXED_MTIME * 1000 + 500)),
            content_type: HeaderValue::from_static("text/plain"),
            cache_control: "no-cache",
            source: files::Source::Memory(content.clone()),
        };
        let method = if head { Method::HEAD } else { Method::GET };
        let Some(resp) = files::serve(&rep, &method, headers, limits).now_or_never() else {
            panic!("serving from memory waited");
        };
        let status = resp.status();
        let h = resp.headers().clone();
        let body = match resp.into_body().collect().now_or_never() {
            Some(Ok(b)) => b.to_bytes(),
            Some(Err(e)) => panic!("body failed: {e}"),
            None => panic!("body from memory waited"),
        };
        let content_length = header_str(&h, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
        if !head && matches!(status, StatusCode::OK | StatusCode::PARTIAL_CONTENT) {
            assert_eq!(content_length, Some(body.len() as u64), "{status}: Content-Length vs body");
        }
        if head {
            assert!(body.is_empty() || status.as_u16() >= 400, "HEAD {status} with a body");
        }
        let conditional =
            [header::IF_MATCH, header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE, header::IF_UNMODIFIED_SINCE]
                .iter()
                .any(|n| headers.contains_key(n));
        match status {
            StatusCode::OK => {
                assert_eq!(content_length, Some(len));
                if !head {
                    assert_eq!(body, content);
                }
            }
            StatusCode::PARTIAL_CONTENT => {
                let range = headers.get(header::RANGE).map(|v| v.as_bytes()).unwrap_or_default();
                let RangeOutcome::Partial(ranges) = parse_range(range, len, limits) else {
                    panic!("206 for a Range that does not parse to ranges: {range:02x?}");
                };
                if ranges.len() == 1 {
                    let (a, b) = ranges[0];
                    let cr = format!("bytes {}-{}/{}", a, b - 1, len);
                    assert_eq!(header_str(&h, header::CONTENT_RANGE), Some(cr.as_str()));
                    if !head {
                        assert_eq!(body, content.slice(a as usize..b as usize));
                    }
                } else if !head {
                    for (a, b) in ranges {
                        let cr = format!("Content-Range: bytes {}-{}/{}\r\n\r\n", a, b - 1, len);
                        // Byte offsets into the body (the content is not text).
                        let at = body.windows(cr.len()).position(|w| w == cr.as_bytes());
                        assert!(at.is_some(), "part {a}-{b} missing");
                        if let Some(at) = at {
                            let start = at + cr.len();
                            let part = body.slice(start..start + (b - a) as usize);
                            assert_eq!(part, content.slice(a as usize..b as usize), "part {a}-{b}");
                        }
                    }
                }
            }
            StatusCode::NOT_MODIFIED | StatusCode::PRECONDITION_FAILED => {
                assert!(conditional, "{status} without a precondition");
                if status == StatusCode::NOT_MODIFIED {
                    assert!(body.is_empty());
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                assert!(headers.contains_key(header::RANGE));
                let cr = format!("bytes */{len}");
                assert_eq!(header_str(&h, header::CONTENT_RANGE), Some(cr.as_str()));
            }
            other => panic!("unexpected status {other}"),
        }
    }
}

mod topic_tree {
    use super::*;
    use crate::mqtt::topic::{filter_matches, RetainTree, SubTree, Subscriber};

    /// A level of a generated filter or topic: a small alphabet so that filters and topics meet.
    #[derive(Arbitrary, Debug, Clone, Copy)]
    enum Level {
        A,
        B,
        Empty,
        Dollar,
        Plus,
    }

    impl Level {
        fn as_str(self, wildcards: bool) -> &'static str {
            match self {
                Level::A => "a",
                Level::B => "b",
                Level::Empty => "",
                Level::Dollar => "$x",
                Level::Plus if wildcards => "+",
                Level::Plus => "a",
            }
        }
    }

    /// A valid filter: 0..=5 levels, then `#` or not (`#` alone when there are no levels).
    #[derive(Arbitrary, Debug)]
    struct Filter {
        levels: Vec<Level>,
        hash: bool,
    }

    impl Filter {
        fn render(&self) -> String {
            let mut parts: Vec<&str> = self.levels.iter().take(5).map(|l| l.as_str(true)).collect();
            // An empty filter is invalid (§4.7.3-1): `#` instead.
            if self.hash || parts.is_empty() || parts == [""] {
                parts.push("#");
            }
            parts.join("/")
        }
    }

    /// A valid topic name: 1..=5 levels, no wildcards.
    #[derive(Arbitrary, Debug)]
    struct Topic {
        first: Level,
        rest: Vec<Level>,
    }

    impl Topic {
        fn render(&self) -> String {
            let parts: Vec<&str> =
                std::iter::once(self.first).chain(self.rest.iter().take(4).copied()).map(|l| l.as_str(false)).collect();
            // An empty topic name is invalid (§4.7.3-1).
            if parts == [""] {
                return "a".into();
            }
            parts.join("/")
        }
    }

    #[derive(Arbitrary, Debug)]
    enum Op {
        Insert {
            filter: Filter,
            key: u8,
            qos: u8,
        },
        Remove {
            filter: Filter,
            key: u8,
        },
        Matches {
            topic: Topic,
        },
        Set {
            topic: Topic,
            value: u8,
        },
        Clear {
            topic: Topic,
        },
        Matching {
            filter: Filter,
        },
        /// A filter and a topic of `levels * 2` levels through every operation (once per input).
        Deep {
            levels: u8,
            plus: bool,
        },
    }

    /// An independent matcher over levels (§4.7.1, §4.7.2-1), to check the reference one.
    fn naive(filter: &[&str], topic: &[&str]) -> bool {
        match (filter.split_first(), topic.split_first()) {
            (Some((&"#", _)), _) => true,
            (Some((&"+", f)), Some((_, t))) => naive(f, t),
            (Some((a, f)), Some((b, t))) => a == b && naive(f, t),
            (None, None) => true,
            _ => false,
        }
    }

    fn reference(filter: &str, topic: &str) -> bool {
        let want = filter_matches(filter, topic);
        let dollar_rule = topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#'));
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        assert_eq!(want, !dollar_rule && naive(&f, &t), "filter_matches({filter:?}, {topic:?})");
        want
    }

    fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
        v.sort();
        v
    }

    /// `SubTree` and `RetainTree` driven by arbitrary operations with structured filters and
    /// topics, against a naive model (a list of subscriptions, a map of retained messages)
    /// matched with the reference `filter_matches` (itself checked against a level-by-level
    /// matcher). Checks: return values of insert/remove/set/clear, the exact multiset of
    /// subscribers a topic matches and of retained messages a filter matches, `len()` after
    /// every operation; at the end, removing everything leaves trees whose structure equals a
    /// new tree's (branches pruned). `Deep` runs a filter of up to 510 levels through every
    /// walk (the 30,000-level case is `topic.rs`'s own unit test).
    pub fn topic_tree(data: &[u8]) {
        let mut u = Unstructured::new(data);
        let mut subs: SubTree<u8> = SubTree::new();
        let mut retained: RetainTree<(String, u8)> = RetainTree::new();
        let mut model_subs: Vec<(String, u8, u8)> = Vec::new();
        let mut model_retained: std::collections::BTreeMap<String, u8> = Default::default();
        let mut ops = 0;
        let mut deep_done = false;
        while let Ok(op) = Op::arbitrary(&mut u) {
            ops += 1;
            if ops > 200 {
                break;
            }
            match op {
                Op::Insert { filter, key, qos } => {
                    let (f, key, qos) = (filter.render(), key % 4, qos % 3);
                    let pos = model_subs.iter().position(|(mf, mk, _)| *mf == f && *mk == key);
                    assert_eq!(subs.insert(&f, key, qos), pos.is_some(), "insert {f:?} {key}");
                    match pos {
                        Some(i) => model_subs[i].2 = qos,
                        None => model_subs.push((f, key, qos)),
                    }
                }
                Op::Remove { filter, key } => {
                    let (f, key) = (filter.render(), key % 4);
                    let pos = model_subs.iter().position(|(mf, mk, _)| *mf == f && *mk == key);
                    assert_eq!(subs.remove(&f, key), pos.is_some(), "remove {f:?} {key}");
                    if let Some(i) = pos {
                        model_subs.swap_remove(i);
                    }
                }
                Op::Matches { topic } => {
                    let t = topic.render();
                    let mut out = Vec::new();
                    subs.matches(&t, &mut out);
                    let got = sorted(out.into_iter().map(|s: Subscriber<u8>| (s.key, s.opts)).collect());
                    let want = sorted(
                        model_subs.iter().filter(|(f, _, _)| reference(f, &t)).map(|&(_, k, q)| (k, q)).collect(),
                    );
                    assert_eq!(got, want, "matches({t:?}) with {model_subs:?}");
                }
                Op::Set { topic, value } => {
                    let t = topic.render();
                    let old = retained.set(&t, (t.clone(), value));
                    assert_eq!(old.map(|m| m.1), model_retained.insert(t.clone(), value), "set {t:?}");
                }
                Op::Clear { topic } => {
                    let t = topic.render();
                    assert_eq!(retained.clear(&t).map(|m| m.1), model_retained.remove(&t), "clear {t:?}");
                    assert!(!retained.contains(&t));
                }
                Op::Matching { filter } => {
                    let f = filter.render();
                    let mut out = Vec::new();
                    retained.matching(&f, &mut out);
                    let want: Vec<(String, u8)> =
                        model_retained.iter().filter(|(t, _)| reference(&f, t)).map(|(t, v)| (t.clone(), *v)).collect();
                    assert_eq!(sorted(out), want, "matching({f:?})");
                }
                // Once per input: deep trees are slow to build under the sanitizer.
                Op::Deep { levels, plus } if !deep_done => {
                    deep_done = true;
                    deep(usize::from(levels) * 2, plus)
                }
                Op::Deep { .. } => {}
            }
            assert_eq!(subs.len(), model_subs.len(), "SubTree::len");
            assert_eq!(subs.is_empty(), model_subs.is_empty());
            assert_eq!(retained.len(), model_retained.len(), "RetainTree::len");
            for (t, v) in &model_retained {
                assert_eq!(retained.get(t).map(|m| m.1), Some(*v), "get {t:?}");
            }
        }
        // Remove everything: the structure must be that of a new tree.
        for (f, k, _) in std::mem::take(&mut model_subs) {
            assert!(subs.remove(&f, k), "final remove {f:?} {k}");
        }
        for t in std::mem::take(&mut model_retained).into_keys() {
            assert!(retained.clear(&t).is_some(), "final clear {t:?}");
        }
        assert!(subs.is_empty() && retained.is_empty());
        assert_eq!(format!("{subs:?}"), format!("{:?}", SubTree::<u8>::new()), "branches left after removals");
        assert_eq!(
            format!("{retained:?}"),
            format!("{:?}", RetainTree::<(String, u8)>::new()),
            "branches left after clears"
        );
    }

    /// One deep filter and topic through insert, match, remove, set, matching, clear, drop.
    fn deep(levels: usize, plus: bool) {
        let level = if plus { "+/" } else { "a/" };
        let filter = format!("{}#", level.repeat(levels));
        let topic = format!("{}z", "a/".repeat(levels));
        let mut subs: SubTree<u8> = SubTree::new();
        subs.insert(&filter, 1, 1);
        subs.insert(&format!("{}x", level.repeat(levels)), 2, 0);
        let mut out = Vec::new();
        subs.matches(&topic, &mut out);
        assert_eq!(out, vec![Subscriber { key: 1, opts: 1, id: 0 }], "deep match ({levels} levels)");
        assert!(subs.remove(&filter, 1));
        let mut retained: RetainTree<u8> = RetainTree::new();
        retained.set(&topic, 7);
        let mut got = Vec::new();
        retained.matching(&filter, &mut got);
        assert_eq!(got, vec![7]);
        assert_eq!(retained.clear(&topic), Some(7));
        retained.set(&topic, 8); // dropped with the tree, deep
                                 // `subs` still holds the second deep filter: dropped deep too.
    }
}
