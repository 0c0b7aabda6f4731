"""MQTT over QUIC (docs/mqtt-over-quic.md) with aioquic as the transport and amqtt as the codec.

Neither side of the client is quiclab's code: aioquic (QuicConnectionProtocol) carries the
bytes, and every MQTT 3.1.1 packet is encoded with amqtt's packet classes (`to_bytes()`) and
decoded from each QUIC stream's bytes with amqtt's own stream decoder
(`MQTTFixedHeader.from_stream` + `packet_class(...).from_stream`, as amqtt's broker does).
The client connects to the session server's shared UDP port with ALPN `mqtt`, SNI `localhost`,
and verifies the server against the development CA.

- single-stream mode (spec 2.2): every packet on stream 0.
- multi-stream mode (spec 2.1, 2.3-2.5): CONNECT/PING on stream 0, SUBSCRIBE on stream 4,
  PUBLISH on stream 8; acknowledgements on the publishing stream, deliveries and SUBACK on the
  subscribing stream, QoS 1 and QoS 2 both ways.
"""

from __future__ import annotations

import asyncio
import os
import ssl

import pytest

from conftest import PIP_HINT, Server

TIMEOUT_S = 30  # whole test
PACKET_TIMEOUT_S = 10  # one expected packet
QUIET_S = 0.3  # how long to wait before asserting that a stream got nothing more

try:
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent, StreamDataReceived

    _AIOQUIC_ERROR = None
except ImportError as e:  # a missing peer fails, never skips
    _AIOQUIC_ERROR = e
    QuicConnectionProtocol = object  # so the class below still defines

try:
    from amqtt.adapters import StreamReaderAdapter
    from amqtt.mqtt import packet_class
    from amqtt.mqtt.connack import ConnackPacket
    from amqtt.mqtt.connect import ConnectPacket, ConnectPayload, ConnectVariableHeader
    from amqtt.mqtt.disconnect import DisconnectPacket
    from amqtt.mqtt.packet import MQTTFixedHeader
    from amqtt.mqtt.pingreq import PingReqPacket
    from amqtt.mqtt.pingresp import PingRespPacket
    from amqtt.mqtt.puback import PubackPacket
    from amqtt.mqtt.pubcomp import PubcompPacket
    from amqtt.mqtt.publish import PublishPacket
    from amqtt.mqtt.pubrec import PubrecPacket
    from amqtt.mqtt.pubrel import PubrelPacket
    from amqtt.mqtt.suback import SubackPacket
    from amqtt.mqtt.subscribe import SubscribePacket

    _AMQTT_ERROR = None
except ImportError as e:
    _AMQTT_ERROR = e


@pytest.fixture(autouse=True)
def _need_peers():
    if _AIOQUIC_ERROR is not None:
        pytest.fail(f"aioquic is not importable ({_AIOQUIC_ERROR}); install it with: {PIP_HINT}", pytrace=False)
    if _AMQTT_ERROR is not None:
        pytest.fail(
            f"amqtt (the MQTT codec) is not importable ({_AMQTT_ERROR}); install it with: {PIP_HINT}",
            pytrace=False,
        )


_EOF = object()  # queued when a stream ends


class MqttQuicClient(QuicConnectionProtocol):
    """MQTT over QUIC client: amqtt packets on client-initiated bidirectional streams.

    The bytes of each stream (aioquic `StreamDataReceived`) go into an asyncio.StreamReader of
    that stream; a task per stream decodes them with amqtt and queues the packets per stream id,
    so a test can assert on which stream each packet arrived."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpn: str | None = None
        self.terminated: ConnectionTerminated | None = None
        self._terminated_event = asyncio.Event()
        self._readers: dict[int, asyncio.StreamReader] = {}
        self._queues: dict[int, asyncio.Queue] = {}
        self._decoders: list[asyncio.Task] = []

    # -- streams ---------------------------------------------------------------------------

    def open_stream(self) -> int:
        stream_id = self._quic.get_next_available_stream_id()
        self._stream(stream_id)
        return stream_id

    def _stream(self, stream_id: int) -> asyncio.StreamReader:
        reader = self._readers.get(stream_id)
        if reader is None:
            reader = self._readers[stream_id] = asyncio.StreamReader()
            self._queues[stream_id] = asyncio.Queue()
            self._decoders.append(asyncio.ensure_future(self._decode(stream_id, reader)))
        return reader

    async def _decode(self, stream_id: int, reader: asyncio.StreamReader) -> None:
        adapter = StreamReaderAdapter(reader)
        queue = self._queues[stream_id]
        try:
            while True:
                fixed = await MQTTFixedHeader.from_stream(adapter)
                if fixed is None:  # end of stream
                    queue.put_nowait(_EOF)
                    return
                packet = await packet_class(fixed).from_stream(adapter, fixed_header=fixed)
                queue.put_nowait(packet)
        except asyncio.IncompleteReadError:
            queue.put_nowait(AssertionError(f"stream {stream_id} ended inside an MQTT packet"))
        except Exception as e:  # a decoding error is a test failure, reported where awaited
            queue.put_nowait(e)

    def send(self, stream_id: int, packet, end_stream: bool = False) -> None:
        self._quic.send_stream_data(stream_id, packet.to_bytes(), end_stream=end_stream)
        self.transmit()

    async def expect(self, stream_id: int, kind: type):
        """The next packet on `stream_id`, which must be a `kind`."""
        packet = await self._next(stream_id)
        assert isinstance(packet, kind), (
            f"stream {stream_id}: expected {kind.__name__}, got {packet!r}; {self.pending()}"
        )
        return packet

    async def expect_all(self, stream_id: int, kinds: list[type]) -> dict[type, object]:
        """The next len(kinds) packets on `stream_id`, one of each kind, in any order."""
        got: dict[type, object] = {}
        for _ in kinds:
            packet = await self._next(stream_id)
            kind = type(packet)
            assert kind in kinds and kind not in got, (
                f"stream {stream_id}: expected one each of {[k.__name__ for k in kinds]}, got {packet!r} "
                f"after {list(got.values())!r}; {self.pending()}"
            )
            got[kind] = packet
        return got

    async def _next(self, stream_id: int):
        try:
            item = await asyncio.wait_for(self._queues[stream_id].get(), PACKET_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"stream {stream_id}: no MQTT packet within {PACKET_TIMEOUT_S} s; "
                f"{self.pending()}; connection closed: {self._closed_text()}"
            ) from None
        if isinstance(item, BaseException):
            raise item
        if item is _EOF:
            raise AssertionError(f"stream {stream_id} ended; connection closed: {self._closed_text()}")
        return item

    def pending(self) -> str:
        """What arrived but was not consumed, per stream (for assertion messages)."""
        parts = []
        for sid, q in self._queues.items():
            items = list(q._queue)  # noqa: SLF001 - diagnostics only
            parts.append(f"stream {sid} holds {items!r}")
        return "; ".join(parts) or "no streams"

    async def assert_quiet(self, *stream_ids: int) -> None:
        """Nothing more (no duplicate delivery, no stray acknowledgement) on these streams."""
        await asyncio.sleep(QUIET_S)
        for sid in stream_ids:
            assert self._queues[sid].empty(), f"unexpected packets: {self.pending()}"

    def _closed_text(self) -> str:
        t = self.terminated
        return "no" if t is None else f"error {t.error_code:#x} frame {t.frame_type} {t.reason_phrase!r}"

    async def wait_terminated(self) -> ConnectionTerminated:
        try:
            await asyncio.wait_for(self._terminated_event.wait(), PACKET_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise AssertionError(f"server did not close the connection within {PACKET_TIMEOUT_S} s") from None
        assert self.terminated is not None
        return self.terminated

    # -- aioquic events ----------------------------------------------------------------------

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.alpn = event.alpn_protocol
        elif isinstance(event, StreamDataReceived):
            reader = self._stream(event.stream_id)
            if event.data:
                reader.feed_data(event.data)
            if event.end_stream:
                reader.feed_eof()
        elif isinstance(event, ConnectionTerminated):
            self.terminated = event
            self._terminated_event.set()
            for reader in self._readers.values():
                if not reader.at_eof():
                    reader.feed_eof()


def _config(cafile: str) -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=["mqtt"])
    config.server_name = "localhost"  # SNI; the socket goes to 127.0.0.1
    config.verify_mode = ssl.CERT_REQUIRED
    config.load_verify_locations(cafile=cafile)
    return config


def _connect_packet(client_id: str) -> ConnectPacket:
    vh = ConnectVariableHeader()  # protocol name "MQTT", level 4 (3.1.1)
    vh.clean_session_flag = True
    vh.keep_alive = 30
    return ConnectPacket(variable_header=vh, payload=ConnectPayload(client_id=client_id))


async def _mqtt_connect(client: MqttQuicClient, client_id: str) -> int:
    assert client.alpn == "mqtt", f"negotiated ALPN {client.alpn!r}"
    control = client.open_stream()
    assert control == 0, f"first client bidi stream is {control}, expected 0"
    client.send(control, _connect_packet(client_id))
    connack = await client.expect(control, ConnackPacket)
    assert connack.return_code == 0, f"CONNACK return code {connack.return_code}"
    assert connack.session_parent == 0, "clean session must not report a present session"
    return control


async def _disconnect(client: MqttQuicClient, control: int) -> None:
    client.send(control, DisconnectPacket())
    # spec 3.2: a DISCONNECT ends the connection with application error 0x0 (NO_ERROR).
    closed = await client.wait_terminated()
    assert closed.error_code == 0x0, f"close after DISCONNECT: {client._closed_text()}"


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S))


def _client_id(mode: str) -> str:
    return f"aioquic-amqtt-{mode}-{os.getpid()}"


def test_single_stream_mode(server: Server):
    """Everything on stream 0, as MQTT over TCP would use its byte stream (spec 2.2)."""

    async def scenario():
        async with connect(
            "127.0.0.1", server.udp_port, configuration=_config(str(server.ca)), create_protocol=MqttQuicClient
        ) as client:
            assert isinstance(client, MqttQuicClient)
            s0 = await _mqtt_connect(client, _client_id("single"))

            client.send(s0, SubscribePacket.build([("a/#", 1)], packet_id=1))
            suback = await client.expect(s0, SubackPacket)
            assert suback.variable_header.packet_id == 1
            assert suback.payload.return_codes == [1], suback

            payload = b"single-stream payload \x00\xff"
            client.send(s0, PublishPacket.build("a/b", payload, packet_id=2, dup_flag=False, qos=1, retain=False))
            got = await client.expect_all(s0, [PubackPacket, PublishPacket])
            assert got[PubackPacket].packet_id == 2
            delivery = got[PublishPacket]
            assert delivery.topic_name == "a/b"
            assert bytes(delivery.data) == payload
            assert delivery.qos == 1
            assert delivery.packet_id is not None and delivery.packet_id > 0
            assert not delivery.retain_flag and not delivery.dup_flag
            client.send(s0, PubackPacket.build(delivery.packet_id))

            client.send(s0, PingReqPacket())
            await client.expect(s0, PingRespPacket)
            await client.assert_quiet(s0)  # the PUBACK ended the delivery: no redelivery

            await _disconnect(client, s0)

    _run(scenario())


def test_multi_stream_mode(server: Server):
    """Control stream 0, SUBSCRIBE on data stream 4, PUBLISH on data stream 8 (spec 2.1-2.5):
    acknowledgements on the publishing stream, SUBACK and deliveries on the subscribing one."""

    async def scenario():
        async with connect(
            "127.0.0.1", server.udp_port, configuration=_config(str(server.ca)), create_protocol=MqttQuicClient
        ) as client:
            assert isinstance(client, MqttQuicClient)
            s0 = await _mqtt_connect(client, _client_id("multi"))
            # Subscription at QoS 2, so both QoS 1 and QoS 2 publications are delivered at theirs.
            sub = client.open_stream()
            assert sub == 4, sub
            client.send(sub, SubscribePacket.build([("a/#", 2)], packet_id=1))
            suback = await client.expect(sub, SubackPacket)
            assert suback.variable_header.packet_id == 1
            assert suback.payload.return_codes == [2], suback

            # QoS 1: PUBACK on the publishing stream 8, delivery on the subscribing stream 4.
            # Packet id 1 on stream 8 while id 1 was the SUBSCRIBE's on stream 4 (spec 2.6).
            pub = client.open_stream()
            assert pub == 8, pub
            p1 = b"qos1 over stream 8"
            client.send(pub, PublishPacket.build("a/b", p1, packet_id=1, dup_flag=False, qos=1, retain=False))
            puback = await client.expect(pub, PubackPacket)
            assert puback.packet_id == 1
            d1 = await client.expect(sub, PublishPacket)
            assert (d1.topic_name, bytes(d1.data), d1.qos) == ("a/b", p1, 1), d1
            client.send(sub, PubackPacket.build(d1.packet_id))

            # QoS 2: PUBREC, PUBREL, PUBCOMP all on stream 8; the delivery (QoS 2) on stream 4,
            # whose flow (PUBREC -> server PUBREL -> PUBCOMP) stays on stream 4.
            p2 = b"qos2 over stream 8"
            client.send(pub, PublishPacket.build("a/b", p2, packet_id=2, dup_flag=False, qos=2, retain=False))
            pubrec = await client.expect(pub, PubrecPacket)
            assert pubrec.packet_id == 2
            client.send(pub, PubrelPacket.build(2))
            pubcomp = await client.expect(pub, PubcompPacket)
            assert pubcomp.packet_id == 2

            d2 = await client.expect(sub, PublishPacket)
            assert (d2.topic_name, bytes(d2.data), d2.qos) == ("a/b", p2, 2), d2
            assert d2.packet_id is not None and d2.packet_id > 0
            client.send(sub, PubrecPacket.build(d2.packet_id))
            rel = await client.expect(sub, PubrelPacket)
            assert rel.packet_id == d2.packet_id
            client.send(sub, PubcompPacket.build(d2.packet_id))

            client.send(s0, PingReqPacket())
            await client.expect(s0, PingRespPacket)
            # Nothing went to the wrong stream: no delivery on 8, no acknowledgement on 4 or 0,
            # and each message was delivered exactly once.
            await client.assert_quiet(s0, sub, pub)

            await _disconnect(client, s0)

    _run(scenario())
