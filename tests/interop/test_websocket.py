"""WebSocket peers that share no code with quiclab.

* Python `websockets` (PyPI) against `/ws` over HTTP/1.1 + TLS: text, binary, a fragmented
  message, ping/pong, the size limit (close 1009) and the close code echoed.
* aioquic attempting a WebSocket over HTTP/3 (RFC 9220 extended CONNECT with
  `:protocol = websocket`). quiclab cannot serve it: h3 0.0.8 rejects that `:protocol` value while
  parsing the request and resets the stream with H3_MESSAGE_ERROR (docs/site.md, "WebSocket").
  The test asserts exactly what a client sees today, so the day h3 learns the value this test
  fails and says so.
"""

from __future__ import annotations

import asyncio
import ssl

import pytest

from conftest import PIP_HINT, Server

try:
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosedError

    _WS_ERROR = None
except ImportError as e:  # pragma: no cover - reported as a failure below
    _WS_ERROR = e

try:
    from aioquic.asyncio.client import connect as quic_connect
    from aioquic.h3.connection import Setting
    from aioquic.quic.events import StreamReset

    from test_aioquic import H3Client, _config

    _AIOQUIC_ERROR = None
except ImportError as e:  # pragma: no cover - reported as a failure below
    _AIOQUIC_ERROR = e

TIMEOUT_S = 20
# The server's default WebSocket message limit (`--ws-max-message`, 1 MiB).
LIMIT = 1 << 20
# RFC 9114 §8.1.
H3_MESSAGE_ERROR = 0x10E


def _need_websockets():
    if _WS_ERROR is not None:
        pytest.fail(f"websockets is not importable ({_WS_ERROR}); install it with: {PIP_HINT}", pytrace=False)


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S))


def _connect(server: Server, path: str = "/ws", **kwargs):
    ctx = ssl.create_default_context(cafile=str(server.ca))
    # Connect to 127.0.0.1 and name the server localhost (SNI, Host), which its certificate covers.
    return ws_connect(
        f"wss://localhost:{server.tcp_port}{path}",
        ssl=ctx,
        host="127.0.0.1",
        port=server.tcp_port,
        proxy=None,
        max_size=None,
        open_timeout=TIMEOUT_S,
        **kwargs,
    )


def test_echo_text_binary_fragmented_ping(server: Server):
    _need_websockets()

    async def go():
        async with _connect(server) as ws:
            await ws.send("hello from websockets")
            assert await ws.recv() == "hello from websockets"
            payload = bytes(range(256)) * 40
            await ws.send(payload)
            assert await ws.recv() == payload
            # An iterable is sent as one fragmented message (RFC 6455 §5.4); one message back.
            await ws.send(["frag", "men", "ted"])
            assert await ws.recv() == "fragmented"
            await ws.send([b"\x00\x01", b"\x02"])
            assert await ws.recv() == b"\x00\x01\x02"
            pong = await ws.ping(b"ping payload")
            await asyncio.wait_for(pong, TIMEOUT_S)
            # Exactly the limit is still echoed.
            big = b"z" * LIMIT
            await ws.send(big)
            assert await ws.recv() == big

    _run(go())


def test_close_code_is_echoed(server: Server):
    _need_websockets()

    async def go():
        async with _connect(server) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
            await ws.close(code=4000, reason="done here")
            rcvd = ws.protocol.close_rcvd
            assert rcvd is not None, "the server answered no Close frame"
            assert rcvd.code == 4000, rcvd

    _run(go())


def test_oversize_message_closes_with_1009(server: Server):
    _need_websockets()

    async def go():
        async with _connect(server) as ws:
            await ws.send(b"y" * (LIMIT + 1))
            with pytest.raises(ConnectionClosedError) as info:
                await ws.recv()
            assert info.value.rcvd is not None, "no Close frame from the server"
            assert info.value.rcvd.code == 1009, info.value.rcvd

    _run(go())


def test_mqtt_endpoint_requires_its_subprotocol(server: Server):
    _need_websockets()
    from websockets.exceptions import InvalidStatus

    async def go():
        with pytest.raises(InvalidStatus) as info:
            async with _connect(server, path="/mqtt"):
                pass
        assert info.value.response.status_code == 400
        async with _connect(server, path="/mqtt", subprotocols=["mqtt"]) as ws:
            assert ws.subprotocol == "mqtt"

    _run(go())


def test_http3_websocket_is_reset_with_message_error(server: Server):
    """RFC 9220 over HTTP/3: what a client sees today (see the module doc)."""
    if _AIOQUIC_ERROR is not None:
        pytest.fail(f"aioquic is not importable ({_AIOQUIC_ERROR}); install it with: {PIP_HINT}", pytrace=False)

    class Watcher(H3Client):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.resets: dict[int, asyncio.Future[int]] = {}

        def quic_event_received(self, event) -> None:
            if isinstance(event, StreamReset):
                fut = self.resets.get(event.stream_id)
                if fut is not None and not fut.done():
                    fut.set_result(event.error_code)
            super().quic_event_received(event)

    async def go():
        authority = f"localhost:{server.udp_port}"
        async with quic_connect(
            "127.0.0.1", server.udp_port, configuration=_config(str(server.ca)), create_protocol=Watcher
        ) as client:
            first = await client.request("GET", authority, "/bytes/10")
            assert first.status == 200
            # quiclab does not offer extended CONNECT on HTTP/3 (RFC 9220 §3).
            settings = client.h3.received_settings or {}
            assert settings.get(Setting.ENABLE_CONNECT_PROTOCOL, 0) == 0, settings
            stream_id = client._quic.get_next_available_stream_id()
            reset = client._loop.create_future()
            client.resets[stream_id] = reset
            # RFC 9220 §3 / RFC 8441 §4: pseudo-header fields first, :protocol among them.
            client.h3.send_headers(
                stream_id,
                [
                    (b":method", b"CONNECT"),
                    (b":protocol", b"websocket"),
                    (b":scheme", b"https"),
                    (b":authority", authority.encode()),
                    (b":path", b"/ws"),
                    (b"sec-websocket-version", b"13"),
                ],
                end_stream=False,
            )
            client.transmit()
            code = await asyncio.wait_for(reset, TIMEOUT_S)
            assert code == H3_MESSAGE_ERROR, f"stream reset with {code:#x}, expected H3_MESSAGE_ERROR"
            # The connection survives the refused stream.
            after = await client.request("GET", authority, "/bytes/10")
            assert after.status == 200

    _run(go())
