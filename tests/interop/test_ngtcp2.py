"""Debian's ngtcp2 example client (`gtlsclient`, package ngtcp2-client): ngtcp2 + nghttp3 + GnuTLS.

gtlsclient exits 0 even when the handshake times out, so success is read from its log: the
negotiated ALPN, the response status, the stream closing with H3_NO_ERROR (0x100 = 256) and,
for bodies, the file it writes with --download.
gtlsclient has no option for a CA file; it does not fail on an unknown issuer, so it proves
QUIC + HTTP/3 interop, not the certificate chain (curl_cffi and aioquic prove that).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import Server, assert_pattern, require_executable

TIMEOUT_S = 45
INSTALL = "apt-get install ngtcp2-client   (Debian; provides /usr/bin/gtlsclient)"


def gtlsclient(server: Server, tmp_path: Path, *paths: str, extra: tuple[str, ...] = ()
) -> tuple[str, str, Path]:
    exe = require_executable("gtlsclient", INSTALL, env_var="GTLSCLIENT_BIN")
    download = tmp_path / "download"
    download.mkdir(exist_ok=True)
    urls = [server.h3_origin + p for p in paths]
    cmd = [
        exe,
        "--exit-on-all-streams-close",
        "--no-quic-dump",  # no hex dumps of STREAM/CRYPTO frames
        "--no-http-dump",  # no response bodies on stdout
        "--sni=localhost",
        "--handshake-timeout=10s",
        "--timeout=20s",
        f"--download={download}",
        *extra,
        "127.0.0.1",
        str(server.udp_port),
        *urls,
    ]
    p = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT_S)
    log = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
    context = f"command: {cmd}\nexit {p.returncode}; last lines:\n" + "\n".join(log.splitlines()[-25:])
    assert p.returncode == 0, context
    assert "ERR_HANDSHAKE_TIMEOUT" not in log, context
    assert "Negotiated ALPN is h3" in log, context
    return log, context, download


def _stream_results(log: str) -> tuple[list[str], list[str]]:
    statuses = re.findall(r"\[:status: (\d{3})\]", log)
    closes = re.findall(r"HTTP stream \S+ closed with error code (\d+)", log)
    return statuses, closes


@pytest.mark.parametrize("size, n", [("1000", 1000), ("1M", 1 << 20)])
def test_download_bytes(server: Server, tmp_path: Path, size: str, n: int):
    log, context, download = gtlsclient(server, tmp_path, f"/bytes/{size}")
    statuses, closes = _stream_results(log)
    assert statuses == ["200"], context
    assert closes == ["256"], context  # H3_NO_ERROR
    # --download names the file after the last path segment.
    assert_pattern((download / size).read_bytes(), n)


def test_three_streams_on_one_connection(server: Server, tmp_path: Path):
    log, context, download = gtlsclient(
        server, tmp_path, "/bytes/64k", "/status/404", "/headers"
    )
    statuses, closes = _stream_results(log)
    assert sorted(statuses) == ["200", "200", "404"], context
    assert closes == ["256"] * 3, context
    assert_pattern((download / "64k").read_bytes(), 64 * 1024)
    seen = json.loads((download / "headers").read_text())
    assert seen.get("user-agent") == "nghttp3/ngtcp2 client", seen
