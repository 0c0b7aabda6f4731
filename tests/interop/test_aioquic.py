"""aioquic: a pure-Python QUIC + HTTP/3 stack (its own TLS 1.3, QPACK via pylsqpack).

The client below is written against aioquic's public API (QuicConnectionProtocol + H3Connection).
It connects to 127.0.0.1 with SNI and :authority "localhost", verifies the server against the
development CA, and runs several requests concurrently on one connection.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass, field

import pytest

from conftest import PIP_HINT, Server, assert_pattern

TIMEOUT_S = 30

try:
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent

    _IMPORT_ERROR = None
except ImportError as e:  # a missing peer fails, never skips
    _IMPORT_ERROR = e
    QuicConnectionProtocol = object  # so the class below still defines


@pytest.fixture(autouse=True)
def _need_aioquic():
    if _IMPORT_ERROR is not None:
        pytest.fail(f"aioquic is not importable ({_IMPORT_ERROR}); install it with: {PIP_HINT}", pytrace=False)


@dataclass
class Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


class H3Client(QuicConnectionProtocol):
    """Minimal HTTP/3 client: one future per request stream."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.alpn: str | None = None
        self.terminated: ConnectionTerminated | None = None
        self._responses: dict[int, Response] = {}
        self._waiters: dict[int, asyncio.Future[Response]] = {}

    async def request(self, method: str, authority: str, path: str, headers=(), body: bytes | None = None) -> Response:
        stream_id = self._quic.get_next_available_stream_id()
        fields = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            (b"user-agent", b"quiclab-interop-aioquic"),
            *[(k.lower().encode(), v.encode()) for k, v in headers],
        ]
        self.h3.send_headers(stream_id, fields, end_stream=body is None)
        if body is not None:
            self.h3.send_data(stream_id, body, end_stream=True)
        waiter = self._loop.create_future()
        self._responses[stream_id] = Response()
        self._waiters[stream_id] = waiter
        self.transmit()
        return await waiter

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.alpn = event.alpn_protocol
        elif isinstance(event, ConnectionTerminated):
            self.terminated = event
            for waiter in self._waiters.values():
                if not waiter.done():
                    waiter.set_exception(
                        ConnectionError(f"connection closed: {event.error_code:#x} {event.reason_phrase}")
                    )
        for h3_event in self.h3.handle_event(event):
            self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        stream_id = getattr(event, "stream_id", None)
        resp = self._responses.get(stream_id)
        if resp is None:
            return
        if isinstance(event, HeadersReceived):
            if resp.status == 0:  # the response header section (a second one is trailers)
                for name, value in event.headers:
                    if name == b":status":
                        resp.status = int(value)
                    else:
                        resp.headers[name.decode()] = value.decode()
        elif isinstance(event, DataReceived):
            resp.body += event.data
        if getattr(event, "stream_ended", False):
            waiter = self._waiters.pop(stream_id)
            if not waiter.done():
                waiter.set_result(resp)


def _config(cafile: str | None) -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    config.server_name = "localhost"  # SNI; the socket goes to 127.0.0.1
    config.verify_mode = ssl.CERT_REQUIRED
    if cafile is not None:
        config.load_verify_locations(cafile=cafile)
    return config


async def _fetch_all(server: Server, requests: list[tuple[str, str, list, bytes | None]]):
    authority = f"localhost:{server.udp_port}"
    async with connect(
        "127.0.0.1", server.udp_port, configuration=_config(str(server.ca)), create_protocol=H3Client
    ) as client:
        assert isinstance(client, H3Client)
        responses = await asyncio.gather(
            *(client.request(m, authority, p, headers=h, body=b) for m, p, h, b in requests)
        )
        return client.alpn, responses


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S))


def test_bytes_and_headers_concurrently(server: Server):
    alpn, (big, hdrs) = _run(
        _fetch_all(
            server,
            [
                ("GET", "/bytes/100k", [], None),
                ("GET", "/headers", [("X-Interop-Probe", "aioquic 1")], None),
            ],
        )
    )
    assert alpn == "h3"
    assert big.status == 200
    assert big.headers.get("content-type") == "application/octet-stream"
    assert_pattern(bytes(big.body), 100 * 1024)

    assert hdrs.status == 200
    assert hdrs.headers.get("content-type", "").startswith("application/json")
    seen = json.loads(hdrs.body)
    assert seen.get("x-interop-probe") == "aioquic 1", seen
    assert seen.get("user-agent") == "quiclab-interop-aioquic", seen


def test_echo_and_status(server: Server):
    body = bytes(range(251)) * 1000  # 251 kB upload
    _, (echo, teapot) = _run(
        _fetch_all(
            server,
            [
                ("POST", "/echo", [("content-type", "application/x-aioquic")], body),
                ("GET", "/status/418", [], None),
            ],
        )
    )
    assert echo.status == 200
    assert echo.headers.get("content-type") == "application/x-aioquic"
    assert bytes(echo.body) == body
    assert teapot.status == 418


def test_untrusted_ca_is_refused(server: Server):
    """Control: certificate verification is really on (the server's chain does not verify
    against an unrelated trust store), so the passes above prove the CA chain is right."""

    made: list[H3Client] = []

    def factory(*args, **kwargs) -> H3Client:
        made.append(H3Client(*args, **kwargs))
        return made[-1]

    async def attempt():
        config = _config(None)
        config.load_verify_locations(cadata=_unrelated_ca_pem())
        async with connect("127.0.0.1", server.udp_port, configuration=config, create_protocol=factory):
            pass

    with pytest.raises(ConnectionError):
        _run(attempt())
    # The client itself closed with CRYPTO_ERROR + TLS alert bad_certificate (42), RFC 9001 §4.8.
    closed = made[0].terminated if made else None
    assert closed is not None and closed.error_code == 0x100 + 42, closed


def _unrelated_ca_pem() -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import datetime

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unrelated interop CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)
