"""curl_cffi: libcurl (built with ngtcp2 + nghttp3 + BoringSSL) as an HTTP/3 peer.

Every request is HTTP/3 ONLY (CURL_HTTP_VERSION_3ONLY: no fallback to TCP), so a pass means
libcurl spoke h3 to quinn, verified the chain against the development CA and got the right body.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PIP_HINT, Server, assert_pattern

TIMEOUT_S = 30
# curl reports the version it used: CURL_HTTP_VERSION_3 == 30, _2_0 == 3, _1_1 == 2.
HTTP3, HTTP2, HTTP11 = 30, 3, 2


def _curl_cffi():
    try:
        from curl_cffi import CurlHttpVersion, requests
    except ImportError as e:  # a missing peer fails, never skips
        pytest.fail(f"curl_cffi is not importable ({e}); install it with: {PIP_HINT}", pytrace=False)
    return requests, CurlHttpVersion


def h3_get(server: Server, path: str, method: str = "GET", **kw):
    requests, version = _curl_cffi()
    r = requests.request(
        method,
        server.h3_origin + path,
        http_version=version.V3ONLY,
        verify=str(server.ca),
        timeout=TIMEOUT_S,
        **kw,
    )
    assert r.http_version == HTTP3, f"{path}: curl used HTTP version {r.http_version}, not h3 (30)"
    return r


def test_index_over_h3(server: Server):
    r = h3_get(server, "/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<span id="protocol">' in r.text
    assert "performance.getEntriesByType('navigation')" in r.text
    # The page also says which protocol the server answered on.
    assert "<code>h3</code>" in r.text


def test_bytes_1m_over_h3(server: Server):
    r = h3_get(server, "/bytes/1M")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert_pattern(r.content, 1 << 20)


def test_echo_post_over_h3(server: Server):
    body = bytes(range(256)) * 300 + b"\r\n\x00end"  # binary, 76 kB: several STREAM frames
    r = h3_get(
        server,
        "/echo",
        method="POST",
        data=body,
        headers={"Content-Type": "application/x-quiclab-interop"},
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-quiclab-interop"
    assert r.content == body


def test_headers_over_h3(server: Server):
    r = h3_get(server, "/headers", headers={"X-Interop-Probe": "curl-cffi 42"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    seen = r.json()
    assert isinstance(seen, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in seen.items())
    # HTTP/3 field names are lowercase on the wire (RFC 9114 §4.2).
    assert seen.get("x-interop-probe") == "curl-cffi 42", seen


def test_status_418_over_h3(server: Server):
    r = h3_get(server, "/status/418")
    assert r.status_code == 418


@pytest.mark.parametrize("version_name, expected", [("V2TLS", HTTP2), ("V1_1", HTTP11)])
def test_alt_svc_over_tcp(server: Server, version_name: str, expected: int):
    """The TCP baseline answers too, and advertises h3 on the same port."""
    requests, version = _curl_cffi()
    r = requests.get(
        server.tcp_origin + "/bytes/10k",
        http_version=getattr(version, version_name),
        verify=str(server.ca),
        timeout=TIMEOUT_S,
    )
    assert r.http_version == expected
    assert r.status_code == 200
    assert_pattern(r.content, 10 * 1024)
    assert r.headers.get("alt-svc") == f'h3=":{server.udp_port}"; ma=3600'


# ---- the `curl-cffi` command line tool (console script of the curl_cffi package) ----


def _cli() -> str:
    # Installed beside the interpreter that runs the suite (the venv's bin/).
    beside = Path(sys.executable).with_name("curl-cffi")
    if beside.is_file():
        return str(beside)
    found = shutil.which("curl-cffi")
    if found is None:
        pytest.fail(f"the curl-cffi command is missing; install it with: {PIP_HINT}", pytrace=False)
    return found


def run_cli(server: Server, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    # The CLI has no --cacert flag: curl_cffi's Session takes its CA from REQUESTS_CA_BUNDLE,
    # then CURL_CA_BUNDLE (REQUESTS_CA_BUNDLE wins, so set all of them).
    env = dict(os.environ)
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        env[var] = str(server.ca)
    cmd = [_cli(), *args]
    p = subprocess.run(
        cmd, env=env, cwd=cwd, capture_output=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT_S + 15
    )
    assert p.returncode == 0, (
        f"{cmd} exited {p.returncode}\nstdout: {p.stdout[-2000:]!r}\nstderr: {p.stderr[-2000:]!r}"
    )
    return p


def test_cli_download_over_h3(server: Server, tmp_path: Path):
    out = tmp_path / "body.bin"
    p = run_cli(
        server,
        "get",
        "--http3-only",
        "--timeout",
        str(TIMEOUT_S),
        "--download",
        "--output",
        str(out),
        server.h3_origin + "/bytes/256k",
        cwd=tmp_path,
    )
    # With --download the CLI prints the response headers, status line first.
    assert p.stdout.startswith(b"HTTP/3 200"), p.stdout[:200]
    assert_pattern(out.read_bytes(), 256 * 1024)


def test_cli_headers_over_h3(server: Server):
    p = run_cli(
        server,
        "get",
        "--http3-only",
        "--timeout",
        str(TIMEOUT_S),
        "--print",
        "hb",
        server.h3_origin + "/headers",
        "X-Interop-Probe:cli-7",
    )
    head, _, body = p.stdout.decode().partition("\n\n")
    assert head.startswith("HTTP/3 200"), head
    assert json.loads(body).get("x-interop-probe") == "cli-7", body
