"""paho-mqtt (PyPI, 2.x) against quiclab's broker: persistent sessions (clean session 0) and
QoS 2 across a reconnect.

The clients are driven with `client.loop()` from the test thread (no background thread), so
a connection can be cut at an exact point of a QoS 2 flow.
"""

from __future__ import annotations

import socket
import time

import pytest

from conftest import PIP_HINT
from mqtt_fixtures import MqttServer, mqtt_server  # noqa: F401 (fixture)

try:
    import paho.mqtt.client as paho
except ImportError:  # pragma: no cover - reported as a failure below
    paho = None


def _require_paho():
    if paho is None:
        pytest.fail(f"paho-mqtt is not installed; install it with: {PIP_HINT}", pytrace=False)


class Peer:
    """A paho client plus what its callbacks saw."""

    def __init__(self, srv: MqttServer, client_id: str, clean: bool, manual_ack: bool = False, tls: bool = False):
        _require_paho()
        self.c = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean,
            protocol=paho.MQTTv311,
            manual_ack=manual_ack,
        )
        self.srv = srv
        self.tls = tls
        self.connack = None
        self.messages: list[paho.MQTTMessage] = []
        self.log: list[str] = []
        self.subacks: list = []
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.messages.append(m)
        self.c.on_subscribe = lambda c, u, mid, codes, props: self.subacks.append(codes)
        self.c.on_log = lambda c, u, level, text: self.log.append(text)
        if tls:
            self.c.tls_set(ca_certs=str(srv.ca))

    def _on_connect(self, client, userdata, flags, reason, properties):
        self.connack = (flags.session_present, int(reason.value) if hasattr(reason, "value") else int(reason))

    def pump(self, until, timeout: float = 10.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; log: {self.log[-20:]}\n{self.srv.log_tail()}")
            rc = self.c.loop(timeout=0.05)
            if rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_AGAIN):
                raise AssertionError(f"paho loop failed: {rc}; log: {self.log[-20:]}")

    def connect(self) -> tuple[bool, int]:
        if self.tls:
            self.c.connect("localhost", self.srv.tls_port, keepalive=30)
        else:
            self.c.connect("127.0.0.1", self.srv.tcp_port, keepalive=30)
        self.pump(lambda: self.connack is not None, what="CONNACK")
        return self.connack

    def subscribe(self, topic: str, qos: int) -> None:
        self.c.subscribe(topic, qos)
        n = len(self.subacks)
        self.pump(lambda: len(self.subacks) > n, what="SUBACK")

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        info = self.c.publish(topic, payload, qos=qos)
        self.pump(info.is_published, what=f"publish QoS {qos} to complete")

    def disconnect(self) -> None:
        self.c.disconnect()
        for _ in range(10):
            self.c.loop(timeout=0.05)

    def cut(self) -> None:
        """Drop the TCP connection without DISCONNECT."""
        sock = self.c.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_persistent_session_keeps_subscriptions_and_messages(mqtt_server: MqttServer, tls: bool) -> None:
    tag = "tls" if tls else "tcp"
    dev = Peer(mqtt_server, f"paho-persist-{tag}", clean=False, tls=tls)
    assert dev.connect() == (False, 0)
    dev.subscribe(f"pp-{tag}/#", 2)
    assert dev.subacks[-1][0].value == 2
    dev.disconnect()

    pub = Peer(mqtt_server, f"paho-pub-{tag}", clean=True, tls=tls)
    pub.connect()
    pub.publish(f"pp-{tag}/one", b"1", qos=1)
    pub.publish(f"pp-{tag}/two", b"2", qos=2)
    pub.publish(f"pp-{tag}/zero", b"0", qos=0)
    pub.disconnect()

    # Same client id, clean session 0: the session (subscription and messages) is there.
    dev2 = Peer(mqtt_server, f"paho-persist-{tag}", clean=False, tls=tls)
    assert dev2.connect() == (True, 0), "CONNACK session present (MQTT 3.1.1 §3.2.2.2)"
    dev2.pump(lambda: len(dev2.messages) >= 3, what="the queued messages")
    # (paho hands a QoS 2 message over on PUBREL, so it may come after the QoS 0 one.)
    got = sorted((m.topic, m.payload, m.qos) for m in dev2.messages)
    assert got == [(f"pp-{tag}/one", b"1", 1), (f"pp-{tag}/two", b"2", 2), (f"pp-{tag}/zero", b"0", 0)]
    # The subscription survived too: a live message arrives without subscribing again.
    pub2 = Peer(mqtt_server, f"paho-pub2-{tag}", clean=True, tls=tls)
    pub2.connect()
    pub2.publish(f"pp-{tag}/live", b"live", qos=1)
    dev2.pump(lambda: len(dev2.messages) >= 4, what="a live message")
    assert dev2.messages[3].payload == b"live"
    pub2.disconnect()
    dev2.disconnect()

    # Clean session 1 discards the session.
    dev3 = Peer(mqtt_server, f"paho-persist-{tag}", clean=True, tls=tls)
    assert dev3.connect() == (False, 0)
    dev3.disconnect()


def test_qos2_exactly_once_across_a_reconnect(mqtt_server: MqttServer) -> None:
    """The subscriber receives a QoS 2 message, sends PUBREC, gets PUBREL, and loses its
    connection before PUBCOMP. On reconnect the broker re-sends PUBREL (not the PUBLISH), so
    the application sees the message once; after PUBCOMP nothing more is re-sent."""
    sub = Peer(mqtt_server, "paho-q2", clean=False, manual_ack=True)
    assert sub.connect() == (False, 0)
    sub.subscribe("q2/#", 2)

    pub = Peer(mqtt_server, "paho-q2-pub", clean=False)
    pub.connect()
    pub.publish("q2/a", b"exactly once", qos=2)

    # paho (method B) hands the message over on PUBREL; with manual_ack it holds PUBCOMP back.
    sub.pump(lambda: len(sub.messages) == 1, what="the QoS 2 message")
    assert (sub.messages[0].payload, sub.messages[0].qos) == (b"exactly once", 2)
    assert any("Received PUBREL" in line for line in sub.log), sub.log
    sub.cut()

    sub2 = Peer(mqtt_server, "paho-q2", clean=False)
    assert sub2.connect() == (True, 0)
    # MQTT 3.1.1 §4.4: the unacknowledged PUBREL is re-sent with its original packet id.
    sub2.pump(lambda: any("Received PUBREL" in line for line in sub2.log), what="PUBREL re-sent after reconnect")
    assert not any("Received PUBLISH" in line for line in sub2.log), sub2.log
    assert sub2.messages == [], "no second delivery"
    for _ in range(10):  # let PUBCOMP go out
        sub2.c.loop(timeout=0.05)
    sub2.disconnect()

    # Flow complete: a third connection gets nothing re-sent.
    sub3 = Peer(mqtt_server, "paho-q2", clean=False)
    assert sub3.connect() == (True, 0)
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        sub3.c.loop(timeout=0.05)
    assert not any("Received PUB" in line for line in sub3.log), sub3.log
    sub3.disconnect()
    pub.disconnect()


def test_qos2_publish_interrupted_before_pubrel(mqtt_server: MqttServer) -> None:
    """A publisher's QoS 2 PUBLISH is PUBREC'd, then its connection drops before PUBREL. The
    broker holds the message (method B) and forwards it once, when PUBREL arrives on the next
    connection with the same session."""
    watcher = Peer(mqtt_server, "paho-q2-watch", clean=True)
    watcher.connect()
    watcher.subscribe("q2b/#", 2)

    pub = Peer(mqtt_server, "paho-q2-pub2", clean=False)
    pub.connect()
    # Hold back paho's PUBREL: swap its sender for a no-op, then cut the connection.
    original = pub.c._send_pubrel
    pub.c._send_pubrel = lambda mid: paho.MQTT_ERR_SUCCESS
    info = pub.c.publish("q2b/x", b"held", qos=2)
    pub.pump(lambda: any("Received PUBREC" in line for line in pub.log), what="PUBREC")
    pub.cut()
    # Nothing has been delivered yet.
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        watcher.c.loop(timeout=0.05)
    assert watcher.messages == []

    # Reconnect with the same session and release it.
    pub2 = Peer(mqtt_server, "paho-q2-pub2", clean=False)
    assert pub2.connect() == (True, 0)
    pub2.c._send_pubrel(info.mid)
    pub2.pump(lambda: any("Received PUBCOMP" in line for line in pub2.log), what="PUBCOMP")
    watcher.pump(lambda: len(watcher.messages) == 1, what="the released message")
    assert watcher.messages[0].payload == b"held"
    # A second PUBREL for the same id gets PUBCOMP and no second delivery.
    pub2.c._send_pubrel(info.mid)
    pub2.pump(lambda: sum("Received PUBCOMP" in line for line in pub2.log) >= 2, what="second PUBCOMP")
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        watcher.c.loop(timeout=0.05)
    assert len(watcher.messages) == 1
    _ = original
    pub2.disconnect()
    watcher.disconnect()
