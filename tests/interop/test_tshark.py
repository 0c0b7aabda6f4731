"""A capture of quiclab's traffic, decrypted by tshark with the server's SSLKEYLOGFILE.

Proves that the key log covers QUIC and TLS/TCP alike: with the keys, tshark decodes HTTP/3
SETTINGS and HEADERS frames inside QUIC's encrypted packets, and the HTTP/2 request path; without
them it sees neither. The capture starts only once it is really capturing, and GSO batches are
split into single packets before tshark reads them (see transport_peers.capture/split_gso).
"""

from __future__ import annotations

import subprocess

from conftest import require_executable
from transport_peers import capture, split_gso, tshark_fields


def test_capture_decrypts_with_the_key_log(server, quiclab_bin, tmp_path):
    tshark = require_executable("tshark", "apt-get install -y tshark")
    raw = tmp_path / "quiclab-raw.pcap"
    pcap = tmp_path / "quiclab.pcap"
    with capture(tshark, raw, f"udp port {server.udp_port} or tcp port {server.tcp_port}"):
        for extra in ([], ["--http2"]):
            origin = server.h3_origin if not extra else server.tcp_origin
            r = subprocess.run(
                [str(quiclab_bin), "get", "--cacert", str(server.ca), *extra, f"{origin}/bytes/3001", "-o", "/dev/null"],
                capture_output=True,
                timeout=30,
            )
            assert r.returncode == 0, r.stderr.decode(errors="replace")
    split_gso(raw, pcap)

    keylog = server.keylog
    text = keylog.read_text()
    for label in ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_TRAFFIC_SECRET_0"):
        assert label in text, f"{label} missing from {keylog}"

    # Without keys: QUIC is opaque, no HTTP/3 or HTTP/2 frames.
    assert tshark_fields(tshark, pcap, None, "http3", ["http3.frame_type"]) == []
    assert tshark_fields(tshark, pcap, None, "http2.headers.path", ["http2.headers.path"]) == []

    # With keys: SETTINGS (quiclab's own 65536 among them) and HEADERS over QUIC, the path over HTTP/2.
    settings = tshark_fields(
        tshark, pcap, keylog, "http3.settings.max_field_section_size", ["http3.settings.max_field_section_size"]
    )
    values = {v for row in settings for v in row[0].split(",") if v}
    assert values and all(v.isdigit() for v in values), f"SETTINGS not decrypted: {settings}"
    frame_types = tshark_fields(tshark, pcap, keylog, "http3.frame_type", ["http3.frame_type"])
    assert any("1" in row[0].split(",") for row in frame_types), f"no HTTP/3 HEADERS frame: {frame_types}"
    paths = tshark_fields(tshark, pcap, keylog, "http2.headers.path", ["http2.headers.path"])
    assert ["/bytes/3001"] in paths, f"HTTP/2 path not decrypted: {paths}"
