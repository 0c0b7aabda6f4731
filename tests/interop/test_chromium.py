"""Headless Chromium (Debian `chromium`): a browser's own QUIC stack against the server.

The index page runs a script that writes `nextHopProtocol` of the navigation into
<span id="protocol">; `--dump-dom` prints the DOM after scripts ran. Forced onto QUIC for the
origin it must read "h3"; with QUIC disabled it must read "h2" (ALPN over TLS/TCP).

The certificate is accepted by pinning the leaf's SPKI hash (--ignore-certificate-errors-spki-list):
Chromium ignores a CA file given any other way. Alt-Svc discovery does not switch Chromium to h3
with a self-signed chain, so the QUIC run forces QUIC with --origin-to-force-quic-on.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from browser import INSTALL, chromium_flags
from conftest import Server, require_executable

TIMEOUT_S = 50
SPAN_RE = re.compile(r'<span id="protocol">([^<]*)</span>')


def dump_dom(server: Server, tmp_path: Path, url: str, *transport_flags: str) -> tuple[str, str, str]:
    exe = require_executable("chromium", INSTALL, env_var="CHROMIUM_BIN")
    profile = tmp_path / "profile"
    profile.mkdir()
    cmd = [
        exe,
        *chromium_flags(server, profile),
        *transport_flags,
        # Let the page's script run before the DOM is dumped.
        "--virtual-time-budget=5000",
        "--dump-dom",
        url,
    ]
    try:
        p = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"chromium did not finish within {TIMEOUT_S} s: {cmd}\n{(e.stderr or b'')[-3000:]!r}")
    dom = p.stdout.decode("utf-8", "replace")
    stderr = "\n".join(
        line
        for line in p.stderr.decode("utf-8", "replace").splitlines()
        if "dbus" not in line  # no system bus in containers; harmless noise
    )
    context = f"command: {cmd}\nexit {p.returncode}\nDOM: {dom[:1500]}\nstderr (tail): {stderr[-3000:]}"
    assert p.returncode == 0, context
    m = SPAN_RE.search(dom)
    assert m is not None, "no <span id=\"protocol\"> in the dumped DOM (error page?)\n" + context
    return m.group(1), dom, context


def test_forced_quic_is_h3(server: Server, tmp_path: Path):
    protocol, dom, context = dump_dom(
        server,
        tmp_path,
        server.h3_origin + "/",
        "--enable-quic",
        f"--origin-to-force-quic-on=localhost:{server.udp_port}",
    )
    assert protocol == "h3", context
    # The server's side of the story: it answered the page over HTTP/3.
    assert "<code>h3</code>" in dom, context


def test_without_quic_is_h2(server: Server, tmp_path: Path):
    protocol, dom, context = dump_dom(server, tmp_path, server.tcp_origin + "/", "--disable-quic")
    assert protocol == "h2", context
    assert "<code>h2</code>" in dom, context
