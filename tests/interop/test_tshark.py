"""A capture of quiclab's traffic, decrypted by tshark with the server's SSLKEYLOGFILE.

Proves that the key log covers QUIC and TLS/TCP alike: with the keys, tshark decodes HTTP/3
SETTINGS and HEADERS frames inside QUIC's encrypted packets, and the HTTP/2 request path; without
them it sees neither. (The server batches packets with GSO on loopback, and tshark 4.0 does not
split such batches, so the test asserts on frames whichever side sent them.)
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from conftest import require_executable

CAPTURE_START_TIMEOUT_S = 20


def _tshark_fields(tshark: str, pcap: Path, keylog: Path | None, display: str, fields: list[str]) -> list[str]:
    cmd = [tshark, "-n", "-r", str(pcap)]
    if keylog is not None:
        cmd += ["-o", f"tls.keylog_file:{keylog}"]
    cmd += ["-Y", display, "-T", "fields"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"tshark failed: {out.stderr}"
    return [line for line in out.stdout.splitlines() if line.strip()]


def test_capture_decrypts_with_the_key_log(server, quiclab_bin, tmp_path):
    tshark = require_executable("tshark", "apt-get install -y tshark")
    pcap = tmp_path / "quiclab.pcapng"
    err = tmp_path / "tshark.err"
    port = server.udp_port
    with open(err, "wb") as err_file:
        cap = subprocess.Popen(
            [tshark, "-q", "-n", "-i", "lo", "-f", f"udp port {port} or tcp port {server.tcp_port}", "-w", str(pcap)],
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
    try:
        deadline = time.monotonic() + CAPTURE_START_TIMEOUT_S
        while "Capturing on" not in err.read_text(errors="replace"):
            assert cap.poll() is None, f"tshark exited: {err.read_text(errors='replace')}"
            assert time.monotonic() < deadline, "tshark did not start capturing (needs root or CAP_NET_RAW)"
            time.sleep(0.1)
        for extra in ([], ["--http2"]):
            origin = server.h3_origin if not extra else server.tcp_origin
            r = subprocess.run(
                [str(quiclab_bin), "get", "--cacert", str(server.ca), *extra, f"{origin}/bytes/3001", "-o", "/dev/null"],
                capture_output=True,
                timeout=30,
            )
            assert r.returncode == 0, r.stderr.decode(errors="replace")
        time.sleep(0.5)  # let the last packets reach the capture
    finally:
        cap.send_signal(signal.SIGINT)
        cap.wait(timeout=30)
    assert pcap.stat().st_size > 0

    keylog = server.keylog
    text = keylog.read_text()
    for label in ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_TRAFFIC_SECRET_0"):
        assert label in text, f"{label} missing from {keylog}"

    # Without keys: QUIC is opaque, no HTTP/3 or HTTP/2 frames.
    assert _tshark_fields(tshark, pcap, None, "http3", ["http3.frame_type"]) == []
    assert _tshark_fields(tshark, pcap, None, "http2.headers.path", ["http2.headers.path"]) == []

    # With keys: SETTINGS and HEADERS frames over QUIC, the path over HTTP/2.
    settings = _tshark_fields(
        tshark, pcap, keylog, "http3.settings.max_field_section_size", ["http3.settings.max_field_section_size"]
    )
    assert settings and all(s.strip().isdigit() for s in settings), f"SETTINGS not decrypted: {settings}"
    frame_types = _tshark_fields(tshark, pcap, keylog, "http3.frame_type", ["http3.frame_type"])
    assert any("1" in f.split(",") for f in frame_types), f"no HTTP/3 HEADERS frame: {frame_types}"
    paths = _tshark_fields(tshark, pcap, keylog, "http2.headers.path", ["http2.headers.path"])
    assert "/bytes/3001" in paths, f"HTTP/2 path not decrypted: {paths}"
