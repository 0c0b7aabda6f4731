"""paho-mqtt (PyPI, 2.x) over WebSocket + TLS (`wss://localhost:PORT/mqtt`, subprotocol `mqtt`)
against quiclab's broker: a QoS 1 round trip between two WebSocket clients, and across
transports with a paho client on MQTT over TCP (one broker core serves both); and over
plaintext WebSocket (`ws://localhost:PORT/mqtt`, the `--mqtt-ws` listener).
"""

from __future__ import annotations

import re
import threading

import pytest

from conftest import PIP_HINT, Server

try:
    import paho.mqtt.client as paho
except ImportError:  # pragma: no cover - reported as a failure below
    paho = None

TIMEOUT_S = 15


class Peer:
    """A paho client on its own network thread, and what its callbacks saw."""

    def __init__(self, client_id: str, server: Server, websocket: bool, plain: bool = False, v5: bool = False):
        if paho is None:
            pytest.fail(f"paho-mqtt is not installed; install it with: {PIP_HINT}", pytrace=False)
        self.server = server
        self.c = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            transport="websockets" if websocket else "tcp",
        )
        self.websocket = websocket
        self.plain = plain
        if websocket:
            self.c.ws_set_options(path="/mqtt")
            if not plain:
                self.c.tls_set(ca_certs=str(server.ca))
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.published = threading.Event()
        self.got = threading.Event()
        self.messages: list = []
        self.connack = None
        self.log: list[str] = []
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda c, u, mid, codes, props: self.subscribed.set()
        self.c.on_publish = lambda c, u, mid, reason, props: self.published.set()
        self.c.on_message = self._on_message
        self.c.on_log = lambda c, u, level, text: self.log.append(text)

    def _on_connect(self, client, userdata, flags, reason, properties):
        self.connack = reason
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        self.messages.append(msg)
        self.got.set()

    def wait(self, event: threading.Event, what: str) -> None:
        if not event.wait(TIMEOUT_S):
            raise AssertionError(f"timed out waiting for {what}; paho log: {self.log[-20:]}\n{self.server.log_tail()}")

    def connect(self) -> None:
        if self.websocket and self.plain:
            self.c.connect("127.0.0.1", mqtt_ws_port(self.server), keepalive=30)
        elif self.websocket:
            self.c.connect("localhost", self.server.tcp_port, keepalive=30)
        else:
            port = mqtt_tcp_port(self.server)
            self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        self.wait(self.connected, "CONNACK")
        assert not self.connack.is_failure, self.connack

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def mqtt_tcp_port(server: Server) -> int:
    m = re.search(r"\(MQTT/TCP \S+:(\d+)\)", server.banner)
    assert m, f"the banner names no MQTT/TCP listener:\n{server.banner}"
    return int(m.group(1))


def mqtt_ws_port(server: Server) -> int:
    m = re.search(r"ws://localhost:(\d+)/mqtt", server.banner)
    assert m, f"the banner names no plaintext MQTT-over-WebSocket listener (--mqtt-ws):\n{server.banner}"
    return int(m.group(1))


def _round_trip(sub: Peer, pub: Peer, topic: str, payload: bytes) -> None:
    sub.connect()
    pub.connect()
    try:
        sub.c.subscribe(topic, qos=1)
        sub.wait(sub.subscribed, "SUBACK")
        info = pub.c.publish(topic, payload, qos=1)
        pub.wait(pub.published, "PUBACK")
        assert info.rc == paho.MQTT_ERR_SUCCESS
        sub.wait(sub.got, "the message")
        msg = sub.messages[0]
        assert msg.topic == topic
        assert msg.payload == payload
        assert msg.qos == 1
    finally:
        pub.stop()
        sub.stop()


def test_qos1_round_trip_over_websocket(server: Server):
    _round_trip(
        Peer("paho-ws-sub", server, websocket=True),
        Peer("paho-ws-pub", server, websocket=True),
        "ws/paho/one",
        b"over wss " * 1000,
    )


def test_websocket_and_tcp_share_one_broker(server: Server):
    _round_trip(
        Peer("paho-tcp-sub", server, websocket=False),
        Peer("paho-ws-pub2", server, websocket=True),
        "ws/paho/two",
        b"wss to tcp",
    )
    _round_trip(
        Peer("paho-ws-sub3", server, websocket=True),
        Peer("paho-tcp-pub3", server, websocket=False),
        "ws/paho/three",
        b"tcp to wss",
    )


def test_plaintext_websocket_listener(server: Server):
    _round_trip(
        Peer("paho-ws-plain-sub", server, websocket=True, plain=True),
        Peer("paho-wss-pub4", server, websocket=True),
        "ws/paho/plain",
        b"wss to ws",
    )


def test_mqtt5_over_websocket(server: Server):
    """MQTT 5 on the WebSocket transport (docs/mqtt.md, "MQTT 5"): a user property and a
    correlation data published over wss reach an MQTT 5 subscriber on wss; a 3.1.1 subscriber
    on TCP gets the same message without them."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    sub5 = Peer("paho-ws5-sub", server, websocket=True, v5=True)
    sub3 = Peer("paho-tcp3-sub", server, websocket=False)
    pub5 = Peer("paho-ws5-pub", server, websocket=True, v5=True)
    for p in (sub5, sub3, pub5):
        p.connect()
    try:
        for s in (sub5, sub3):
            s.subscribed.clear()
            s.c.subscribe("ws/paho/v5", qos=1)
            s.wait(s.subscribed, "SUBACK")
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("via", "wss")]
        props.CorrelationData = b"c-1"
        pub5.c.publish("ws/paho/v5", b"five", qos=1, properties=props)
        pub5.wait(pub5.published, "PUBACK")
        sub5.wait(sub5.got, "the message (MQTT 5)")
        sub3.wait(sub3.got, "the message (3.1.1)")
        got5, got3 = sub5.messages[0], sub3.messages[0]
        assert got5.payload == got3.payload == b"five"
        assert ("via", "wss") in got5.properties.UserProperty and got5.properties.CorrelationData == b"c-1"
        assert got3.properties is None or not hasattr(got3.properties, "UserProperty")
    finally:
        for p in (pub5, sub3, sub5):
            p.stop()
