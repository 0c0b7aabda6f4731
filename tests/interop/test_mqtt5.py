"""MQTT 5.0 with real peers (issue 19): Debian's mosquitto_pub/sub with `-V mqttv5`, paho-mqtt
(PyPI) with `protocol=MQTTv5`, and an aioquic client speaking MQTT 5 over QUIC.

Each test is one MQTT 5 feature, case by case as in the Eclipse Paho v5 interoperability suite:
properties forwarded, session expiry, message expiry, topic aliases, receive maximum, shared
subscriptions (the load spread is counted), No Local, Retain As Published, Retain Handling,
subscription identifiers, will delay, request/response, reason codes on acknowledgements, and
the server's DISCONNECT. A subscription is known to be active when a marker published to it
comes back; no test sleeps for a guessed time except where an interval is what is tested, and
those intervals are seconds with wide margins.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import ssl
import subprocess
import time

import pytest

from conftest import PIP_HINT, Server, require_executable
from mqtt_fixtures import APT_HINT, LineReader, MqttServer, mqtt_server  # noqa: F401 (fixture)

try:
    import paho.mqtt.client as paho
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions
except ImportError:  # pragma: no cover - reported as a failure below
    paho = None

try:
    from aioquic.asyncio.client import connect as quic_connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import StreamDataReceived

    _AIOQUIC_ERROR = None
except ImportError as e:
    _AIOQUIC_ERROR = e
    QuicConnectionProtocol = object

_ids = itertools.count(1)


def _uid(name: str) -> str:
    return f"{name}-{os.getpid()}-{next(_ids)}"


# -- mosquitto clients -----------------------------------------------------------------------


def _tools() -> tuple[str, str]:
    return require_executable("mosquitto_pub", APT_HINT), require_executable("mosquitto_sub", APT_HINT)


def _conn(srv: MqttServer) -> list[str]:
    return ["-h", "127.0.0.1", "-p", str(srv.tcp_port), "-V", "mqttv5"]


def _pub(srv: MqttServer, *args: str) -> subprocess.CompletedProcess:
    pub, _ = _tools()
    r = subprocess.run([pub, *_conn(srv), *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, f"mosquitto_pub {args} failed ({r.returncode}): {r.stderr}\n{srv.log_tail()}"
    return r


def _sub(srv: MqttServer, *args: str, fmt: str = "%t|%p") -> LineReader:
    _, sub = _tools()
    proc = subprocess.Popen(
        [sub, *_conn(srv), "-F", fmt, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    return LineReader(proc)


def _synced(srv: MqttServer, reader: LineReader, topic: str) -> None:
    """Publish to `topic` until the subscriber shows it: its subscription is then active."""
    deadline = time.monotonic() + 10
    while True:
        _pub(srv, "-t", topic, "-m", "sync")
        try:
            reader.wait_for(lambda line: line.startswith(f"{topic}|"), timeout=0.5)
            return
        except AssertionError:
            if time.monotonic() > deadline or reader.proc.poll() is not None:
                raise AssertionError(f"subscriber never saw {topic}: {reader.seen}\n{srv.log_tail()}")


def test_mosquitto_v5_properties_reach_the_subscriber(mqtt_server: MqttServer) -> None:
    t = _uid("props")
    # %C content type, %R response topic, %D correlation data, %P user properties, %E expiry.
    sub = _sub(mqtt_server, "-t", f"{t}/#", "-q", "1", fmt="%t|%p|%C|%R|%D|%P|%E")
    try:
        _synced(mqtt_server, sub, f"{t}/ready")
        _pub(mqtt_server, "-t", f"{t}/x", "-m", "hello", "-q", "1",
             "-D", "publish", "content-type", "text/plain",
             "-D", "publish", "response-topic", f"{t}/reply",
             "-D", "publish", "correlation-data", "c-42",
             "-D", "publish", "user-property", "k", "v",
             "-D", "publish", "message-expiry-interval", "300")
        line = sub.wait_for(lambda line: line.startswith(f"{t}/x|"))
        topic, payload, ctype, rtopic, corr, user, expiry = line.split("|")
        assert (payload, ctype, rtopic, corr) == ("hello", "text/plain", f"{t}/reply", "c-42"), line
        assert "k:v" in user, line
        assert 290 <= int(expiry) <= 300, f"what is left of the Message Expiry Interval: {line}"
    finally:
        sub.close()


def test_mosquitto_v5_puback_says_no_matching_subscribers(mqtt_server: MqttServer) -> None:
    r = _pub(mqtt_server, "-d", "-q", "1", "-t", _uid("nobody"), "-m", "x")
    assert "received PUBACK" in r.stdout and "RC:16" in r.stdout, f"PUBACK 0x10 (MQTT 5 §3.4.2.1): {r.stdout}"


def test_mosquitto_v5_session_and_message_expiry(mqtt_server: MqttServer) -> None:
    _, sub = _tools()
    t = _uid("expiry")
    keep, gone = _uid("keep"), _uid("gone")
    # Two persistent sessions: one for 60 s, one for 1 s. -E: subscribe and leave.
    for cid, secs in ((keep, "60"), (gone, "1")):
        r = subprocess.run([sub, *_conn(mqtt_server), "-c", "-i", cid, "-x", secs, "-q", "1", "-t", f"{t}/#", "-E"],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
    _pub(mqtt_server, "-t", f"{t}/short", "-m", "short", "-q", "1", "-D", "publish", "message-expiry-interval", "1")
    _pub(mqtt_server, "-t", f"{t}/long", "-m", "long", "-q", "1", "-D", "publish", "message-expiry-interval", "120")
    time.sleep(2.5)  # past both 1 s intervals
    r = subprocess.run([sub, *_conn(mqtt_server), "-c", "-i", keep, "-x", "60", "-q", "1", "-t", f"{t}/#",
                        "-C", "1", "-W", "5", "-F", "%t|%p|%E"], capture_output=True, text=True, timeout=20)
    topic, payload, expiry = r.stdout.strip().split("|")
    assert (topic, payload) == (f"{t}/long", "long"), f"the expired message is not delivered: {r.stdout}"
    assert int(expiry) <= 118, f"forwarded with what is left: {r.stdout}"
    r = subprocess.run([sub, *_conn(mqtt_server), "-c", "-i", gone, "-x", "1", "-q", "1", "-t", f"{t}/#",
                        "-C", "1", "-W", "2"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 27 and r.stdout == "", f"the 1 s session expired with its messages: {r.returncode} {r.stdout}"


def test_mosquitto_v5_shared_subscription_spreads_the_load(mqtt_server: MqttServer) -> None:
    t = _uid("shared")
    members = [_sub(mqtt_server, "-t", f"$share/g/{t}/jobs/#", "-t", f"{t}/ready/{k}", "-q", "1") for k in range(3)]
    try:
        for k, m in enumerate(members):
            _synced(mqtt_server, m, f"{t}/ready/{k}")
        pub, _ = _tools()
        lines = "".join(f"job {i}\n" for i in range(30))
        r = subprocess.run([pub, *_conn(mqtt_server), "-t", f"{t}/jobs/x", "-q", "1", "-l"],
                           input=lines, capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        counts = []
        for m in members:
            got = 0
            try:
                while True:
                    m.wait_for(lambda line: line.startswith(f"{t}/jobs/"), timeout=1.0)
                    got += 1
            except AssertionError:
                pass
            counts.append(got)
        assert sum(counts) == 30, f"each job once: {counts}"
        assert counts == [10, 10, 10], f"round robin over the group (docs/mqtt.md): {counts}"
    finally:
        for m in members:
            m.close()


# -- paho-mqtt ---------------------------------------------------------------------------------


def _require_paho():
    if paho is None:
        pytest.fail(f"paho-mqtt is not installed; install it with: {PIP_HINT}", pytrace=False)


class Peer:
    """A paho MQTT 5 client driven with `loop()` from the test thread, plus what it saw."""

    def __init__(self, srv: MqttServer, client_id: str = "", manual_ack: bool = False):
        _require_paho()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5,
                             manual_ack=manual_ack)
        self.srv = srv
        self.connack = None
        self.messages: list = []
        self.acks: dict[str, list] = {"sub": [], "unsub": [], "pub": []}
        self.disconnected = None
        self.log: list[str] = []
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.messages.append(m)
        self.c.on_subscribe = lambda c, u, mid, codes, props: self.acks["sub"].append(codes)
        self.c.on_unsubscribe = lambda c, u, mid, codes, props: self.acks["unsub"].append(codes)
        self.c.on_publish = lambda c, u, mid, code, props: self.acks["pub"].append(code)
        self.c.on_disconnect = self._on_disconnect
        self.c.on_log = lambda c, u, level, text: self.log.append(text)

    def _on_connect(self, client, userdata, flags, reason, properties):
        self.connack = (flags.session_present, reason.value, properties)

    def _on_disconnect(self, client, userdata, flags, reason, properties):
        self.disconnected = reason.value

    def pump(self, until, timeout: float = 10.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; log: {self.log[-15:]}\n{self.srv.log_tail()}")
            self.c.loop(timeout=0.05)

    def connect(self, clean_start: bool = True, **props) -> tuple:
        p = Properties(PacketTypes.CONNECT)
        for k, v in props.items():
            setattr(p, k, v)
        self.c.connect("127.0.0.1", self.srv.tcp_port, keepalive=30, clean_start=clean_start,
                       properties=p if props else None)
        self.pump(lambda: self.connack is not None, what="CONNACK")
        return self.connack

    def subscribe(self, topic: str, qos: int = 1, sub_id: int | None = None, **opts) -> int:
        props = None
        if sub_id is not None:
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = sub_id
        n = len(self.acks["sub"])
        self.c.subscribe(topic, options=SubscribeOptions(qos=qos, **opts), properties=props)
        self.pump(lambda: len(self.acks["sub"]) > n, what="SUBACK")
        return self.acks["sub"][-1][0].value

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, **props) -> int | None:
        p = None
        if props:
            p = Properties(PacketTypes.PUBLISH)
            for k, v in props.items():
                setattr(p, k, v)
        n = len(self.acks["pub"])
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=p)
        self.pump(info.is_published, what=f"publish QoS {qos}")
        return self.acks["pub"][-1].value if qos and len(self.acks["pub"]) > n else None

    def wait_messages(self, n: int, what: str = "messages") -> list:
        self.pump(lambda: len(self.messages) >= n, what=what)
        return self.messages

    def disconnect(self) -> None:
        self.c.disconnect()
        for _ in range(5):
            self.c.loop(timeout=0.05)


def _both(*peers: Peer, until, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        for p in peers:
            p.c.loop(timeout=0.02)


def test_paho_v5_connack_and_assigned_client_id(mqtt_server: MqttServer) -> None:
    p = Peer(mqtt_server)
    present, code, props = p.connect(SessionExpiryInterval=30)
    assert (present, code) == (False, 0)
    assert props.AssignedClientIdentifier.startswith("quiclab-"), props
    assert props.TopicAliasMaximum == 10 and props.ReceiveMaximum == 1000, props
    p.disconnect()


def test_paho_v5_session_expiry(mqtt_server: MqttServer) -> None:
    cid = _uid("paho-session")
    p = Peer(mqtt_server, cid)
    p.connect(SessionExpiryInterval=60)
    p.subscribe(f"{cid}/#")
    p.disconnect()
    q = Peer(mqtt_server, cid)
    assert q.connect(clean_start=False, SessionExpiryInterval=1)[0] is True, "session present within its expiry"
    q.disconnect()
    time.sleep(2.0)  # past the 1 s set on the last connection
    r = Peer(mqtt_server, cid)
    assert r.connect(clean_start=False, SessionExpiryInterval=1)[0] is False, "the session expired"
    r.disconnect()


def test_paho_v5_request_response_with_correlation_data(mqtt_server: MqttServer) -> None:
    t = _uid("rr")
    responder, requester = Peer(mqtt_server), Peer(mqtt_server)
    responder.connect()
    requester.connect()
    responder.subscribe(f"{t}/requests")
    requester.subscribe(f"{t}/replies")
    requester.publish(f"{t}/requests", b"what time is it", ResponseTopic=f"{t}/replies", CorrelationData=b"\x01\x02")
    req = responder.wait_messages(1, "the request")[0]
    assert req.properties.ResponseTopic == f"{t}/replies" and req.properties.CorrelationData == b"\x01\x02"
    responder.publish(req.properties.ResponseTopic, b"noon", CorrelationData=req.properties.CorrelationData,
                      UserProperty=[("answered-by", "paho")])
    reply = requester.wait_messages(1, "the reply")[0]
    assert reply.payload == b"noon" and reply.properties.CorrelationData == b"\x01\x02"
    assert ("answered-by", "paho") in reply.properties.UserProperty
    responder.disconnect()
    requester.disconnect()


def test_paho_v5_topic_alias(mqtt_server: MqttServer) -> None:
    t = _uid("alias")
    sub, pub = Peer(mqtt_server), Peer(mqtt_server)
    sub.connect()
    pub.connect()
    sub.subscribe(f"{t}/#")
    pub.publish(f"{t}/a/long/topic/name", b"1", TopicAlias=1)
    pub.publish("", b"2", TopicAlias=1)  # the alias alone names the topic
    got = sub.wait_messages(2)
    assert [(m.topic, m.payload) for m in got] == [(f"{t}/a/long/topic/name", b"1"), (f"{t}/a/long/topic/name", b"2")]
    # The other way: a subscriber that accepts aliases gets the name once with an alias, then
    # the alias alone. (paho 2.2 hands an aliased message over with an empty topic and the
    # alias in its properties: the test keeps the map a client would.)
    asks = Peer(mqtt_server)
    asks.connect(TopicAliasMaximum=5)
    asks.subscribe(f"{t}/#")
    for i in range(3):
        pub.publish(f"{t}/a/long/topic/name", str(i).encode())
    got = asks.wait_messages(3)
    aliases, resolved = {}, []
    for m in got:
        alias = getattr(m.properties, "TopicAlias", None)
        if m.topic:
            aliases[alias] = m.topic
        resolved.append((m.topic or aliases[alias], alias, m.payload))
    name = f"{t}/a/long/topic/name"
    assert resolved == [(name, 1, b"0"), (name, 1, b"1"), (name, 1, b"2")], resolved
    assert [m.topic for m in got] == [name, "", ""], "the name once, then the alias alone"
    asks.disconnect()
    # Above the Topic Alias Maximum (10): DISCONNECT 0x94.
    pub.c.publish(f"{t}/x", b"3", qos=0, properties=_props(PacketTypes.PUBLISH, TopicAlias=11))
    pub.pump(lambda: pub.disconnected is not None, what="the server's DISCONNECT")
    assert pub.disconnected == 0x94, pub.disconnected
    sub.disconnect()


def _props(kind, **kw):
    p = Properties(kind)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def test_paho_v5_subscription_options_and_identifiers(mqtt_server: MqttServer) -> None:
    t = _uid("opts")
    me, other = Peer(mqtt_server), Peer(mqtt_server)
    me.connect()
    other.connect()
    # No Local: my own messages do not come back; another client's do.
    assert me.subscribe(f"{t}/chat", noLocal=True) == 1
    me.publish(f"{t}/chat", b"mine")
    other.publish(f"{t}/chat", b"theirs")
    assert [m.payload for m in me.wait_messages(1)] == [b"theirs"]
    # Retained message first, then: Retain Handling 2 sends nothing, 0 sends it.
    other.publish(f"{t}/state", b"on", retain=True)
    me.subscribe(f"{t}/state", retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
    me.subscribe(f"{t}/+", retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE, sub_id=77)
    got = me.wait_messages(2)
    assert got[1].payload == b"on" and got[1].retain, "only the 0 subscription got the retained message"
    # Overlapping subscriptions with identifiers: one delivery carrying both (MQTT 5 §3.3.4).
    me.subscribe(f"{t}/#", sub_id=78, retainAsPublished=True, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
    other.publish(f"{t}/state", b"off", retain=True)
    msg = me.wait_messages(3)[2]
    assert msg.payload == b"off"
    assert sorted(msg.properties.SubscriptionIdentifier) == [77, 78], msg.properties
    assert msg.retain, "Retain As Published on one of the matching subscriptions"
    me.disconnect()
    other.disconnect()


def test_paho_v5_reason_codes_on_acknowledgements(mqtt_server: MqttServer) -> None:
    t = _uid("codes")
    p = Peer(mqtt_server)
    p.connect()
    assert p.publish(f"{t}/nobody", b"x") == 0x10, "PUBACK: no matching subscribers"
    assert p.subscribe(f"{t}/s", qos=2) == 2
    p.c.unsubscribe([f"{t}/s", f"{t}/never"])
    p.pump(lambda: p.acks["unsub"], what="UNSUBACK")
    assert [c.value for c in p.acks["unsub"][0]] == [0x00, 0x11]
    p.disconnect()


def test_paho_v5_server_disconnect_on_takeover(mqtt_server: MqttServer) -> None:
    cid = _uid("takeover")
    first, second = Peer(mqtt_server, cid), Peer(mqtt_server, cid)
    first.connect()
    second.connect()
    first.pump(lambda: first.disconnected is not None, what="the DISCONNECT of the taken-over connection")
    assert first.disconnected == 0x8E, "Session taken over (MQTT 5 §3.14.2.1)"
    second.disconnect()


def test_paho_v5_receive_maximum_bounds_what_is_in_flight(mqtt_server: MqttServer) -> None:
    t = _uid("recvmax")
    slow = Peer(mqtt_server, manual_ack=True)
    slow.connect(ReceiveMaximum=2)
    slow.subscribe(f"{t}/q", qos=1)
    pub = Peer(mqtt_server)
    pub.connect()
    for i in range(5):
        pub.publish(f"{t}/q", str(i).encode())
    # Nothing acknowledged: the broker sends two and holds the rest.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        slow.c.loop(timeout=0.05)
    assert len(slow.messages) == 2, [m.payload for m in slow.messages]
    slow.c.ack(slow.messages[0].mid, 1)
    slow.wait_messages(3, "the third, once one is acknowledged")
    for m in slow.messages[1:]:
        slow.c.ack(m.mid, 1)
    slow.wait_messages(5)
    assert [m.payload for m in slow.messages] == [b"0", b"1", b"2", b"3", b"4"]
    slow.disconnect()
    pub.disconnect()


def test_paho_v5_will_delay(mqtt_server: MqttServer) -> None:
    t = _uid("will")
    watcher = Peer(mqtt_server)
    watcher.connect()
    watcher.subscribe(f"{t}/#")
    dev = Peer(mqtt_server)
    dev.c.will_set(f"{t}/dev", b"gone", qos=1, properties=_props(PacketTypes.WILLMESSAGE, WillDelayInterval=2))
    dev.connect(SessionExpiryInterval=30)
    cut = time.monotonic()
    dev.c.socket().close()  # gone without DISCONNECT
    watcher.wait_messages(1, "the will")
    waited = time.monotonic() - cut
    assert watcher.messages[0].payload == b"gone"
    assert waited >= 1.5, f"published after its Will Delay Interval, not at once ({waited:.2f} s)"
    watcher.disconnect()


def test_paho_v5_shared_subscription_members_take_turns(mqtt_server: MqttServer) -> None:
    t = _uid("paho-shared")
    workers = [Peer(mqtt_server) for _ in range(2)]
    for w in workers:
        w.connect()
        w.subscribe(f"$share/pool/{t}/#")
    pub = Peer(mqtt_server)
    pub.connect()
    for i in range(10):
        pub.publish(f"{t}/job", str(i).encode())
    _both(*workers, until=lambda: sum(len(w.messages) for w in workers) >= 10, what="all jobs")
    assert [len(w.messages) for w in workers] == [5, 5]
    for w in workers:
        w.disconnect()
    pub.disconnect()


# -- MQTT 5 over QUIC --------------------------------------------------------------------------


class RawQuic(QuicConnectionProtocol):
    """The bytes of each stream, as they arrive."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.data: dict[int, bytearray] = {}
        self.event = asyncio.Event()

    def quic_event_received(self, event) -> None:
        if isinstance(event, StreamDataReceived):
            self.data.setdefault(event.stream_id, bytearray()).extend(event.data)
            self.event.set()

    async def packet(self, stream_id: int) -> tuple[int, bytes]:
        """The next whole MQTT packet on the stream: (first byte, body)."""
        while True:
            buf = self.data.setdefault(stream_id, bytearray())
            if len(buf) >= 2:
                n, shift, i = 0, 0, 1
                while i < len(buf):
                    n |= (buf[i] & 0x7F) << shift
                    shift += 7
                    i += 1
                    if not buf[i - 1] & 0x80:
                        break
                if len(buf) >= i + n and not buf[i - 1] & 0x80:
                    first, body = buf[0], bytes(buf[i:i + n])
                    del buf[:i + n]
                    return first, body
            self.event.clear()
            await asyncio.wait_for(self.event.wait(), 10)


def _frame(first: int, body: bytes) -> bytes:
    n, out = len(body), bytearray([first])
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out) + body


def _s(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def test_mqtt5_connect_over_quic(server: Server) -> None:
    """An MQTT 5 CONNECT on the control stream of an MQTT-over-QUIC connection (docs/
    mqtt-over-quic.md): the CONNACK is MQTT 5's, a SUBSCRIBE with a Subscription Identifier and
    a PUBLISH with a user property come back as a PUBLISH carrying both. The properties are
    packed and read with paho-mqtt's property codec; the rest of each packet is built here."""
    _require_paho()
    if _AIOQUIC_ERROR is not None:
        pytest.fail(f"aioquic is not importable ({_AIOQUIC_ERROR}); install it with: {PIP_HINT}", pytrace=False)
    topic = _uid("quic5")

    async def scenario():
        config = QuicConfiguration(is_client=True, alpn_protocols=["mqtt"])
        config.server_name = "localhost"
        config.verify_mode = ssl.CERT_REQUIRED
        config.load_verify_locations(cafile=str(server.ca))
        async with quic_connect("127.0.0.1", server.udp_port, configuration=config, create_protocol=RawQuic) as c:
            s0 = c._quic.get_next_available_stream_id()
            props = _props(PacketTypes.CONNECT, SessionExpiryInterval=0, ReceiveMaximum=10).pack()
            connect = _s("MQTT") + bytes([5, 0x02]) + (30).to_bytes(2, "big") + props + _s("")
            c._quic.send_stream_data(s0, _frame(0x10, connect))
            c.transmit()
            first, body = await c.packet(s0)
            assert first == 0x20 and body[1] == 0, f"CONNACK 0x00: {body.hex()}"
            ack_props = Properties(PacketTypes.CONNACK)
            ack_props.unpack(body[2:])
            assert ack_props.AssignedClientIdentifier.startswith("quiclab-"), ack_props

            sub_props = _props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=5).pack()
            subscribe = (1).to_bytes(2, "big") + sub_props + _s(f"{topic}/#") + bytes([1])
            c._quic.send_stream_data(s0, _frame(0x82, subscribe))
            c.transmit()
            first, body = await c.packet(s0)
            assert first == 0x90 and body[-1] == 1, f"SUBACK granting QoS 1: {body.hex()}"

            pub_props = _props(PacketTypes.PUBLISH, UserProperty=[("via", "quic")]).pack()
            publish = _s(f"{topic}/x") + (2).to_bytes(2, "big") + pub_props + b"over quic"
            c._quic.send_stream_data(s0, _frame(0x32, publish))
            c.transmit()
            got = {}
            for _ in range(2):  # the PUBACK and the delivery, in either order
                first, body = await c.packet(s0)
                got[first >> 4] = body
            assert 4 in got and got[4][:2] == (2).to_bytes(2, "big"), f"PUBACK: {got}"
            body = got[3]
            n = int.from_bytes(body[:2], "big")
            assert body[2:2 + n].decode() == f"{topic}/x"
            rest = body[2 + n + 2:]  # after the topic and the packet id
            pp = Properties(PacketTypes.PUBLISH)
            used = pp.unpack(rest)[1]
            assert rest[used:] == b"over quic"
            assert pp.SubscriptionIdentifier == [5] and ("via", "quic") in pp.UserProperty, pp
            c._quic.send_stream_data(s0, _frame(0xE0, b""), end_stream=False)
            c.transmit()

    asyncio.run(asyncio.wait_for(scenario(), 30))
