"""Headless Chromium (Debian `chromium`) on the pages that show what a browser does, each checked
from both ends:

- `/cache-demo`: every caching case fetched twice by the page; the browser's Resource Timing
  (how the second copy arrived) must agree with the server's record of what it received
  (validators, directives, status), and both with the case's expectation; over HTTP/2 and
  over HTTP/3.
- `/mqtt.html`: the page's own MQTT client over `wss://localhost:PORT/mqtt` subscribes, shows a
  retained and a live message that paho publishes over MQTT/TCP, and publishes one that a paho
  subscriber receives.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from browser import Browser
from conftest import Server
from test_paho_ws import Peer

EXPECTED = {
    "max-age": "cache",
    "expires": "cache",
    "etag": "revalidated",
    "last-modified": "revalidated",
    "etag-wins": "revalidated",
    "no-store": "full",
    "pragma": "revalidated",
    "reload": "full",
}


def transport_flags(server: Server, transport: str) -> tuple[str, list[str]]:
    if transport == "h3":
        return server.h3_origin, ["--enable-quic", f"--origin-to-force-quic-on=localhost:{server.udp_port}"]
    return server.tcp_origin, ["--disable-quic"]


@pytest.mark.parametrize("transport", ["h2", "h3"])
def test_cache_demo_browser_and_server_agree(server: Server, tmp_path: Path, transport: str):
    origin, flags = transport_flags(server, transport)
    with Browser(server, tmp_path, *flags) as b:
        b.navigate(origin + "/cache-demo")
        b.wait_for("document.body && document.body.dataset.done === '1'", "the cache demo to finish", 60)
        status = b.evaluate("document.getElementById('status').textContent")
        results = json.loads(b.evaluate("document.getElementById('results').textContent") or "[]")
        context = f"status: {status}\nresults: {json.dumps(results, indent=1)}\n{b.context()}"
    by_name = {r["name"]: r for r in results}
    assert set(by_name) == set(EXPECTED), context
    for name, want in EXPECTED.items():
        r = by_name[name]
        assert (r["browser"], r["server"]) == (want, want), f"{name}: {json.dumps(r, indent=1)}"
        assert r["timing"][0]["nextHopProtocol"] == transport, f"{name}: {json.dumps(r, indent=1)}"
    # What the second request of each revalidating or reloading case carried, as the server saw it.
    second = {name: by_name[name]["requests"][1] for name in EXPECTED if EXPECTED[name] != "cache"}
    assert second["etag"]["if_none_match"] and second["etag"]["status"] == 304, second["etag"]
    assert second["last-modified"]["if_modified_since"] and not second["last-modified"]["if_none_match"]
    wins = second["etag-wins"]
    assert wins["if_none_match"] and wins["if_modified_since"], wins
    assert wins["decided_by"] == "If-None-Match matched; If-Modified-Since ignored (RFC 9110 §13.2.2)", wins
    assert second["no-store"]["if_none_match"] is None and second["no-store"]["status"] == 200
    assert second["pragma"]["status"] == 304, second["pragma"]
    assert second["reload"]["pragma"] == "no-cache", second["reload"]
    assert "no-cache" in (second["reload"]["cache_control"] or ""), second["reload"]
    assert status == f"done: {len(EXPECTED)} of {len(EXPECTED)} as expected", context


def test_mqtt_page_subscribes_shows_and_publishes(server: Server, tmp_path: Path):
    pub = Peer("paho-for-page-pub", server, websocket=False)
    sub = Peer("paho-for-page-sub", server, websocket=False)
    pub.connect()
    sub.connect()
    try:
        sub.c.subscribe("page/out", qos=1)
        sub.wait(sub.subscribed, "SUBACK")
        pub.c.publish("page/in/kept", b"retained for the page", qos=1, retain=True)
        pub.wait(pub.published, "PUBACK of the retained message")
        with Browser(server, tmp_path, "--disable-quic") as b:
            b.navigate(server.tcp_origin + "/mqtt.html?topic=page/in/%23&pubtopic=page/out&publish=hello%20from%20chromium")
            b.wait_for("document.getElementById('status').textContent === 'subscribed'", "the page's SUBACK")
            shown = "Array.from(document.querySelectorAll('#messages li')).map(li => li.textContent)"
            got = b.wait_for(f"{shown}.find(t => t.startsWith('page/in/kept retained for the page'))", "the retained message")
            assert got.endswith("(retained)"), got
            pub.published.clear()
            pub.c.publish("page/in/live", b"live 1", qos=1)
            pub.wait(pub.published, "PUBACK of the live message")
            b.wait_for(f"{shown}.includes('page/in/live live 1')", "the live message")
            sub.wait(sub.got, "the page's publish")
            assert [(m.topic, m.payload) for m in sub.messages] == [("page/out", b"hello from chromium")]
            assert b.evaluate("document.getElementById('count').textContent") == "2"
    finally:
        pub.published.clear()
        pub.c.publish("page/in/kept", b"", qos=1, retain=True)  # clear the retained message
        pub.published.wait(5)
        pub.stop()
        sub.stop()
