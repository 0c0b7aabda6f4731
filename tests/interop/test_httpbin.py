"""httpbin conformance: one table of requests sent with curl_cffi (libcurl + ngtcp2) over HTTP/3
only and over HTTP/2, the answers compared with each other and with httpbin's documented shapes
(postmanlabs/httpbin: `args`, `headers`, `origin`, `url`, `data`, `files`, `form`, `json`,
`method`), and content coding (gzip, deflate, br, zstd) decoded by libcurl.

Fields that legitimately differ between the two runs are normalised before the comparison: the
port in `url` and in the `Host` header (the QUIC and TCP listeners of the session server may have
different ports), and the per-call values of `/uuid`. The table runs with curl_cffi's default
`Accept-Encoding: gzip, deflate, br`, so the longer JSON answers arrive coded and libcurl decodes them.
"""

from __future__ import annotations

import base64
import gzip
import zlib

import pytest

from conftest import PIP_HINT, Server

TIMEOUT_S = 30
HTTP3, HTTP2 = 30, 3

# httpbin's key sets (httpbin/core.py: get_dict(...) per view).
GET_KEYS = {"args", "headers", "origin", "url"}
BODY_KEYS = GET_KEYS | {"data", "files", "form", "json"}
ANYTHING_KEYS = BODY_KEYS | {"method"}
DELAY_KEYS = BODY_KEYS - {"json"}

# (id, method, path, request kwargs, what to compare, expected JSON keys or None)
TABLE = [
    ("get", "GET", "/get?a=1&a=2&b=x", {"headers": {"X-Probe": "p"}}, "json", GET_KEYS),
    ("post-json", "POST", "/post", {"json": {"k": [1, 2], "s": "t"}}, "json", BODY_KEYS),
    ("post-form", "POST", "/post?q=1", {"data": {"f": "v", "g": "w"}}, "json", BODY_KEYS),
    ("put-raw", "PUT", "/put", {"data": b"raw body", "headers": {"Content-Type": "text/plain"}}, "json", BODY_KEYS),
    ("patch", "PATCH", "/patch", {"data": b"\xff\x00binary"}, "json", BODY_KEYS),
    ("delete", "DELETE", "/delete", {}, "json", BODY_KEYS),
    ("anything-put", "PUT", "/anything/a/b?x=y", {"data": b"any"}, "json", ANYTHING_KEYS),
    ("anything-get", "GET", "/anything", {}, "json", ANYTHING_KEYS),
    ("delay", "POST", "/delay/0.1", {"data": b"d"}, "json", DELAY_KEYS),
    ("ip", "GET", "/ip", {}, "json", {"origin"}),
    ("user-agent", "GET", "/user-agent", {"headers": {"User-Agent": "interop/1"}}, "json", {"user-agent"}),
    ("uuid", "GET", "/uuid", {}, "json", {"uuid"}),
    ("cookies", "GET", "/cookies", {"headers": {"Cookie": "a=1; b=2"}}, "json", {"cookies"}),
    ("basic-auth", "GET", "/basic-auth/u/p", {"auth": ("u", "p")}, "json", {"authenticated", "user"}),
    ("bearer", "GET", "/bearer", {"headers": {"Authorization": "Bearer tok"}}, "json", {"authenticated", "token"}),
    ("cache-n", "GET", "/cache/30", {}, "json", GET_KEYS),
    ("etag", "GET", "/etag/abc", {}, "json", GET_KEYS),
    ("response-headers", "GET", "/response-headers?X-A=1&X-B=2", {}, "json", None),
    ("status-418", "GET", "/status/418", {}, "status", None),
    ("status-204", "POST", "/status/204", {}, "status", None),
    ("redirect", "GET", "/redirect/3", {}, "status", None),
    ("relative-redirect", "GET", "/relative-redirect/1", {}, "status", None),
    ("redirect-to", "GET", "/redirect-to?url=%2Fget&status_code=307", {}, "status", None),
    ("redirect-to-evil", "GET", "/redirect-to?url=https%3A%2F%2Fevil.example%2F", {}, "status", None),
    ("basic-auth-wrong", "GET", "/basic-auth/u/p", {"auth": ("u", "x")}, "status", None),
    ("bearer-missing", "GET", "/bearer", {}, "status", None),
    ("etag-match", "GET", "/etag/abc", {"headers": {"If-None-Match": '"abc"'}}, "status", None),
    ("cookies-set", "GET", "/cookies/set?k=v", {}, "status", None),
    ("range", "GET", "/range/26", {"headers": {"Range": "bytes=2-4"}}, "text", None),
    ("base64", "GET", "/base64/SFRUUEJJTiBpcyBhd2Vzb21l", {}, "text", None),
    ("stream", "GET", "/stream/3", {}, "lines", None),
    ("drip", "GET", "/drip?duration=0.2&numbytes=4", {}, "text", None),
    ("drip-cap", "GET", "/drip?numbytes=0", {}, "status", None),
]


def _curl_cffi():
    try:
        from curl_cffi import CurlHttpVersion, requests
    except ImportError as e:  # a missing peer fails, never skips
        pytest.fail(f"curl_cffi is not importable ({e}); install it with: {PIP_HINT}", pytrace=False)
    return requests, CurlHttpVersion


def fetch(server: Server, version: str, method: str, path: str, **kw):
    requests, v = _curl_cffi()
    origin = server.h3_origin if version == "h3" else server.tcp_origin
    r = requests.request(
        method,
        origin + path,
        http_version=v.V3ONLY if version == "h3" else v.V2TLS,
        verify=str(server.ca),
        timeout=TIMEOUT_S,
        allow_redirects=False,
        **kw,
    )
    want = HTTP3 if version == "h3" else HTTP2
    assert r.http_version == want, f"{path}: curl used HTTP version {r.http_version}, not {want}"
    return r


def normalise(value, server: Server):
    """Replace what differs between the two listeners (ports) and between calls."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "uuid":
                v = "<uuid>"
            out[k] = normalise(v, server)
        return out
    if isinstance(value, list):
        return [normalise(v, server) for v in value]
    if isinstance(value, str):
        for port in (server.udp_port, server.tcp_port):
            value = value.replace(f"localhost:{port}", "localhost:PORT")
        return value
    return value


def observe(server: Server, version: str, method: str, path: str, kw: dict, kind: str):
    r = fetch(server, version, method, path, **kw)
    if kind == "json":
        assert r.headers.get("content-type", "").startswith("application/json"), r.headers
        return r.status_code, normalise(r.json(), server)
    if kind == "status":
        loc = r.headers.get("location")
        return r.status_code, normalise(loc, server) if loc else None
    if kind == "lines":
        import json

        return r.status_code, [normalise(json.loads(line), server) for line in r.text.splitlines()]
    return r.status_code, r.content


@pytest.mark.parametrize("name, method, path, kw, kind, keys", TABLE, ids=[row[0] for row in TABLE])
def test_same_answer_over_h3_and_h2(server: Server, name, method, path, kw, kind, keys):
    h3 = observe(server, "h3", method, path, kw, kind)
    h2 = observe(server, "h2", method, path, kw, kind)
    assert h3 == h2, f"{name}: HTTP/3 and HTTP/2 answers differ:\nh3: {h3}\nh2: {h2}"
    status, body = h3
    if keys is not None:
        assert status == 200, body
        assert set(body) == keys, f"{name}: keys {sorted(body)} are not httpbin's {sorted(keys)}"


def test_table_values_match_httpbin(server: Server):
    """Spot checks of the values httpbin documents for the same requests."""
    _, j = observe(server, "h3", "GET", "/get?a=1&a=2&b=x", {"headers": {"X-Probe": "p"}}, "json")
    assert j["args"] == {"a": ["1", "2"], "b": "x"}
    assert j["headers"]["X-Probe"] == "p"
    assert j["headers"]["Host"] == "localhost:PORT"
    assert j["origin"] == "127.0.0.1"
    assert j["url"] == "https://localhost:PORT/get?a=1&a=2&b=x"

    _, j = observe(server, "h2", "POST", "/post", {"json": {"k": [1, 2]}}, "json")
    assert j["json"] == {"k": [1, 2]} and j["form"] == {} and j["files"] == {}
    _, j = observe(server, "h3", "POST", "/post", {"data": {"f": "v"}}, "json")
    assert j["form"] == {"f": "v"} and j["data"] == "" and j["json"] is None
    _, j = observe(server, "h3", "PATCH", "/patch", {"data": b"\xff\x00"}, "json")
    assert j["data"] == "data:application/octet-stream;base64," + base64.b64encode(b"\xff\x00").decode()
    _, j = observe(server, "h3", "PUT", "/anything/a/b?x=y", {"data": b"any"}, "json")
    assert (j["method"], j["data"], j["args"]) == ("PUT", "any", {"x": "y"})
    _, j = observe(server, "h3", "GET", "/basic-auth/u/p", {"auth": ("u", "p")}, "json")
    assert j == {"authenticated": True, "user": "u"}
    _, j = observe(server, "h3", "GET", "/cookies", {"headers": {"Cookie": "a=1; b=2"}}, "json")
    assert j == {"cookies": {"a": "1", "b": "2"}}

    r = fetch(server, "h3", "GET", "/response-headers?X-A=1&X-B=2")
    assert (r.headers["x-a"], r.headers["x-b"]) == ("1", "2")
    assert r.json()["Content-Length"] == str(len(r.content))

    status, loc = observe(server, "h3", "GET", "/redirect/3", {}, "status")
    assert (status, loc) == (302, "/relative-redirect/2")
    status, loc = observe(server, "h3", "GET", "/redirect-to?url=%2Fget&status_code=307", {}, "status")
    assert (status, loc) == (307, "/get")
    status, loc = observe(server, "h3", "GET", "/redirect-to?url=https%3A%2F%2Fevil.example%2F", {}, "status")
    assert (status, loc) == (400, None), "no open redirect"
    status, body = observe(server, "h3", "GET", "/range/26", {"headers": {"Range": "bytes=2-4"}}, "text")
    assert (status, body) == (206, b"cde")
    status, body = observe(server, "h3", "GET", "/drip?duration=0.2&numbytes=4", {}, "text")
    assert (status, body) == (200, b"****")


# ---- content coding ----

CODINGS = ["gzip", "deflate", "br", "zstd"]


def fetch_coded(server: Server, version: str, path: str, accept: str, **kw):
    """A request with `Accept-Encoding: accept` that libcurl decodes (CURLOPT_ACCEPT_ENCODING)."""
    return fetch(server, version, "GET", path, accept_encoding=accept, **kw)


@pytest.mark.parametrize("version", ["h3", "h2"])
@pytest.mark.parametrize("coding", CODINGS)
def test_content_coding_negotiated(server: Server, version: str, coding: str):
    identity = fetch(server, version, "GET", "/", accept_encoding=None)
    assert "content-encoding" not in identity.headers
    r = fetch_coded(server, version, "/", coding)
    assert r.status_code == 200
    assert r.headers["content-encoding"] == coding, r.headers
    assert "accept-encoding" in r.headers.get("vary", "").lower()
    assert r.content == identity.content, "libcurl's decoding gives the identity body back"
    assert r.headers["etag"] != identity.headers["etag"], "the ETag differs per coding"
    # A generated JSON answer, long enough to be coded.
    r = fetch_coded(server, version, "/get?c=1", coding, headers={"X-Pad": "p" * 400})
    assert r.headers["content-encoding"] == coding
    assert r.json()["args"] == {"c": "1"}


@pytest.mark.parametrize("version", ["h3", "h2"])
def test_content_coding_preferences_and_ranges(server: Server, version: str):
    r = fetch_coded(server, version, "/", "gzip;q=0.4, zstd;q=0.8")
    assert r.headers["content-encoding"] == "zstd"
    r = fetch_coded(server, version, "/", "identity")
    assert "content-encoding" not in r.headers
    # A range is served from the identity representation, never from a coded one.
    whole = fetch(server, version, "GET", "/", accept_encoding=None).content
    r = fetch_coded(server, version, "/", "gzip", headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and "content-encoding" not in r.headers
    assert r.content == whole[:100]


@pytest.mark.parametrize("version", ["h3", "h2"])
def test_always_coded_endpoints(server: Server, version: str):
    """/gzip, /deflate, /brotli as httpbin: coded whatever the request says; checked here with
    Python's own gzip and zlib where libcurl is not asked to decode."""
    r = fetch(server, version, "GET", "/gzip", accept_encoding=None)
    assert r.headers["content-encoding"] == "gzip"
    import json

    assert json.loads(gzip.decompress(r.content))["gzipped"] is True
    r = fetch(server, version, "GET", "/deflate", accept_encoding=None)
    assert r.headers["content-encoding"] == "deflate"
    assert json.loads(zlib.decompress(r.content))["deflated"] is True
    r = fetch_coded(server, version, "/brotli", "br")
    assert r.headers["content-encoding"] == "br"
    assert r.json()["brotli"] is True


@pytest.mark.parametrize("version", ["h3", "h2"])
def test_session_cookie_round_trip(server: Server, version: str):
    """/session: libcurl's cookie engine stores the HttpOnly session cookie and sends it back;
    the visit count comes from the server's memory."""
    requests, v = _curl_cffi()
    origin = server.h3_origin if version == "h3" else server.tcp_origin
    http_version = v.V3ONLY if version == "h3" else v.V2TLS
    with requests.Session(verify=str(server.ca), http_version=http_version, timeout=TIMEOUT_S) as s:
        visits = [s.get(origin + "/session").json()["visits"] for _ in range(3)]
        assert visits == [1, 2, 3]
        assert s.get(origin + "/session/end").json() == {"ended": True}
        assert s.get(origin + "/session").json()["session"] == "new"
