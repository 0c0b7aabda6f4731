"""Helpers for the transport-feature interop tests (test_zero_rtt.py, test_migration.py).

- `TransportClient`: an aioquic HTTP/3 client (QuicConnectionProtocol + H3Connection) that
  records what 0-RTT and migration need: whether each request left before the handshake
  completed (0-RTT), aioquic's HandshakeCompleted event
  (`early_data_accepted`, `session_resumed`), and can move to a new local UDP socket mid-connection
  (`rebind()`).
- `FrameLogger`: an aioquic QuicLogger that keeps only PATH_CHALLENGE / PATH_RESPONSE frames and
  the streams sent in 0-RTT packets; `TicketJar` collects session tickets.
- `run_gtlsclient`: runs Debian's ngtcp2 client and returns its log (it exits 0 even on failure).
- `capture`: a tshark capture on lo that is known to be running before the body starts.
- `split_gso`: rewrites a libpcap capture so that each UDP GSO batch (one captured datagram
  holding several equal-sized QUIC short-header packets) becomes one datagram per packet, which
  tshark 4.0 cannot do itself.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import PIP_HINT, Server, require_executable

try:
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent
    from aioquic.quic.logger import QuicLogger, QuicLoggerTrace
    from aioquic.tls import SessionTicket

    AIOQUIC_IMPORT_ERROR: ImportError | None = None
except ImportError as e:  # a missing peer fails, never skips
    AIOQUIC_IMPORT_ERROR = e
    QuicConnectionProtocol = object  # so the classes below still define
    QuicLogger = QuicLoggerTrace = object


def need_aioquic() -> None:
    if AIOQUIC_IMPORT_ERROR is not None:
        pytest.fail(f"aioquic is not importable ({AIOQUIC_IMPORT_ERROR}); install it with: {PIP_HINT}", pytrace=False)


GTLSCLIENT_INSTALL = "apt-get install ngtcp2-client   (Debian; provides /usr/bin/gtlsclient)"
TSHARK_INSTALL = "apt-get install -y tshark"


# --------------------------------------------------------------------------------------------
# aioquic


@dataclass
class Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    # The request's HEADERS were handed to aioquic before its handshake completed, i.e. they
    # went out in 0-RTT packets (aioquic sends stream data in 0-RTT when it has early keys).
    sent_before_handshake: bool = False


class _SelectiveTrace(QuicLoggerTrace):
    """A qlog trace that keeps only what the transport tests look at: PATH_CHALLENGE and
    PATH_RESPONSE frames (sent and received), and the streams whose STREAM frames were sent in
    0-RTT packets.

    aioquic logs `transport:packet_received` before it parses the payload and fills that event's
    frame list afterwards, so a received packet's list is read when the next event arrives (or
    when `path_frames()` is asked for)."""

    def __init__(self, *, is_client: bool, odcid: bytes) -> None:
        super().__init__(is_client=is_client, odcid=odcid)
        self._frames: list[tuple[str, str, str]] = []  # (packet_received|packet_sent, frame_type, data)
        self._unread: list[dict] | None = None
        self.zero_rtt_streams: set[int] = set()

    def _scan(self, event: str, frames: list[dict]) -> None:
        for frame in frames:
            if frame.get("frame_type") in ("path_challenge", "path_response"):
                self._frames.append((event, frame["frame_type"], frame.get("data", "")))

    def path_frames(self) -> list[tuple[str, str, str]]:
        if self._unread is not None:
            self._scan("packet_received", self._unread)
            self._unread = None
        return self._frames

    def log_event(self, *, category: str, event: str, data: dict) -> None:
        if category != "transport" or event not in ("packet_received", "packet_sent"):
            return
        self.path_frames()  # the previous received packet's frames are complete by now
        frames = data.get("frames", [])
        if event == "packet_received":
            self._unread = frames
            return
        self._scan(event, frames)
        if data.get("header", {}).get("packet_type") == "0RTT":
            self.zero_rtt_streams.update(f["stream_id"] for f in frames if f.get("frame_type") == "stream")


class FrameLogger(QuicLogger):
    """aioquic's in-memory QuicLogger (`QuicConfiguration(quic_logger=...)`), keeping only the
    frames the tests need (a full trace of a multi-megabyte download is thousands of events)."""

    def start_trace(self, is_client: bool, odcid: bytes) -> QuicLoggerTrace:
        trace = _SelectiveTrace(is_client=is_client, odcid=odcid)
        self._traces.append(trace)
        return trace

    @property
    def path_frames(self) -> list[tuple[str, str, str]]:
        """(event, frame type, hex data) in order: event is packet_received or packet_sent,
        frame type path_challenge or path_response."""
        return [f for t in self._traces for f in t.path_frames()]

    @property
    def zero_rtt_streams(self) -> set[int]:
        """Stream IDs with STREAM frames this endpoint sent in 0-RTT packets."""
        return {s for t in self._traces for s in t.zero_rtt_streams}


class TicketJar:
    """`session_ticket_handler` for aioquic's connect(): keeps the NewSessionTicket messages."""

    def __init__(self) -> None:
        self.tickets: list[SessionTicket] = []

    def __call__(self, ticket: SessionTicket) -> None:
        self.tickets.append(ticket)

    async def wait(self, count: int = 1, timeout: float = 5.0) -> SessionTicket:
        """The newest ticket once at least `count` have arrived."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.tickets) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{len(self.tickets)} session ticket(s) within {timeout} s, expected {count}")
            await asyncio.sleep(0.01)
        return self.tickets[-1]


def client_config(server: Server, *, ticket=None, quic_logger=None) -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, quic_logger=quic_logger)
    config.server_name = "localhost"  # SNI; the socket goes to 127.0.0.1
    config.verify_mode = ssl.CERT_REQUIRED
    config.load_verify_locations(cafile=str(server.ca))
    config.session_ticket = ticket  # resumption (and 0-RTT when the ticket allows early data)
    return config


@dataclass
class Rebind:
    old_port: int
    new_port: int
    old_dcid: str  # hex; the server's connection ID the client sent to before the move
    new_dcid: str  # ... and after


class TransportClient(QuicConnectionProtocol):
    """HTTP/3 client recording 0-RTT facts; can move to a new local socket (`rebind()`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.handshake: HandshakeCompleted | None = None
        self.terminated: ConnectionTerminated | None = None
        self._responses: dict[int, Response] = {}
        self._waiters: dict[int, asyncio.Future[Response]] = {}
        self.stream_of: dict[asyncio.Future[Response], int] = {}

    def start_request(
        self, authority: str, path: str, method: str = "GET", body: bytes | None = None
    ) -> asyncio.Future[Response]:
        """Queue a request and transmit at once (in 0-RTT if the handshake is not done yet).
        Returns the future of its response; its stream ID is `self.stream_of[future]`."""
        stream_id = self._quic.get_next_available_stream_id()
        fields = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            (b"user-agent", b"quiclab-interop-aioquic"),
        ]
        self.h3.send_headers(stream_id, fields, end_stream=body is None)
        if body is not None:
            self.h3.send_data(stream_id, body, end_stream=True)
        waiter = self._loop.create_future()
        self._responses[stream_id] = Response(sent_before_handshake=self.handshake is None)
        self._waiters[stream_id] = waiter
        self.stream_of[waiter] = stream_id
        self.transmit()
        return waiter

    def received(self, future: asyncio.Future[Response]) -> int:
        """Body bytes received so far for the request behind `future`."""
        return len(self._responses[self.stream_of[future]].body)

    async def rebind(self) -> Rebind:
        """Move the connection to a new local UDP socket (a client-side address change, RFC 9000
        §9) and switch to a fresh server connection ID for the new path (RFC 9000 §9.5:
        `change_connection_id()`, which also retires the old one).

        The old socket is closed, so everything received afterwards came through the new one."""
        old_transport = self._transport
        old_port = old_transport.get_extra_info("sockname")[1]
        old_cid = self._quic._peer_cid.cid  # aioquic keeps the DCID it sends with here
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)  # dual-stack, as connect() does
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0, 0, 0))
        # create_datagram_endpoint calls self.connection_made(new transport): from now on
        # transmit() sends through the new socket.
        await self._loop.create_datagram_endpoint(lambda: self, sock=sock)
        old_transport.close()
        self.change_connection_id()  # transmits (RETIRE_CONNECTION_ID) from the new socket
        return Rebind(old_port, sock.getsockname()[1], old_cid.hex(), self._quic._peer_cid.cid.hex())

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.handshake = event
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
            if resp.status == 0:
                for name, value in event.headers:
                    if name == b":status":
                        resp.status = int(value)
                    else:
                        resp.headers[name.decode()] = value.decode()
        elif isinstance(event, DataReceived):
            resp.body += event.data
        if getattr(event, "stream_ended", False):
            waiter = self._waiters.get(stream_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(resp)


# --------------------------------------------------------------------------------------------
# gtlsclient


@dataclass
class GtlsRun:
    log: str
    cmd: list[str]
    download: Path

    def context(self, lines: int = 40) -> str:
        tail = "\n".join(self.log.splitlines()[-lines:])
        return f"command: {' '.join(self.cmd)}\nlast lines of its log:\n{tail}"


def run_gtlsclient(host: str, port: int, urls: list[str], download: Path, extra: list[str] = (), timeout: float = 50) -> GtlsRun:
    """Run gtlsclient with the suite's usual flags; its log is stdout + stderr (it exits 0 even on
    failure, so callers assert on the log)."""
    exe = require_executable("gtlsclient", GTLSCLIENT_INSTALL, env_var="GTLSCLIENT_BIN")
    download.mkdir(parents=True, exist_ok=True)
    cmd = [
        exe,
        "--exit-on-all-streams-close",
        "--no-quic-dump",
        "--no-http-dump",
        "--sni=localhost",
        "--handshake-timeout=10s",
        "--timeout=20s",
        f"--download={download}",
        *extra,
        host,
        str(port),
        *urls,
    ]
    p = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout)
    log = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
    run = GtlsRun(log=log, cmd=cmd, download=download)
    assert p.returncode == 0, f"exit {p.returncode}\n{run.context()}"
    assert "ERR_HANDSHAKE_TIMEOUT" not in log, run.context()
    return run


# --------------------------------------------------------------------------------------------
# pcap


def _ip_checksum(header: bytes) -> int:
    s = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _gso_segments(payload: bytes, cid_len: int = 8, min_segment: int = 1200) -> list[bytes] | None:
    """Split a UDP payload that holds several QUIC short-header packets of one GSO batch.

    A GSO batch is a run of equal-sized segments (the last may be shorter), each a whole QUIC
    packet. A short-header packet starts with a byte whose top bit is 0 followed by the
    destination connection ID in clear; all packets of a batch carry the same DCID. The segment
    size is the smallest offset >= 1200 (QUIC's minimum datagram size, which quinn never goes
    below) where that DCID repeats, and it must repeat at every multiple of that offset."""
    if len(payload) <= min_segment + 1 + cid_len or payload[0] & 0x80:
        return None
    cid = payload[1 : 1 + cid_len]
    for size in range(min_segment, len(payload) - cid_len):
        if payload[size] & 0x80 == 0 and payload[size + 1 : size + 1 + cid_len] == cid:
            starts = range(0, len(payload), size)
            if all(payload[s] & 0x80 == 0 and payload[s + 1 : s + 1 + cid_len] == cid for s in starts):
                return [payload[s : s + size] for s in starts]
            return None
    return None


def split_gso(src: Path, dst: Path, cid_len: int = 8) -> tuple[int, int]:
    """Copy the libpcap file `src` (Ethernet link type, as tshark writes for `lo`) to `dst`,
    replacing every IPv4/UDP datagram that is a GSO batch of QUIC short-header packets by one
    datagram per packet (fixed IP total length and header checksum, UDP checksum 0).

    Needed because the kernel hands the packet tap one large datagram for a whole GSO batch on
    loopback; tshark then decrypts only its first packet, and its packet number recovery later
    goes wrong, so even single packets (such as a PATH_CHALLENGE) stop decrypting. quinn's
    connection IDs are 8 bytes (`cid_len`). Returns (batches split, datagrams written)."""
    data = src.read_bytes()
    if data[:4] not in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        raise ValueError(f"{src} is not a little-endian libpcap file (capture with -F pcap)")
    (linktype,) = struct.unpack("<I", data[20:24])
    if linktype != 1:
        raise ValueError(f"{src}: link type {linktype}, expected 1 (Ethernet, as on lo)")
    out = [data[:24]]
    off = 24
    batches = written = 0
    while off + 16 <= len(data):
        ts_s, ts_frac, incl, orig = struct.unpack("<IIII", data[off : off + 16])
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        segments = None
        if incl == orig and len(frame) >= 42 and frame[12:14] == b"\x08\x00" and frame[23] == 17:
            ip = frame[14:]
            ihl = (ip[0] & 0x0F) * 4
            udp = ip[ihl:]
            segments = _gso_segments(udp[8:], cid_len)
        if not segments:
            out.append(data[off - 16 - incl : off])
            written += 1
            continue
        batches += 1
        for seg in segments:
            new_udp = udp[:4] + struct.pack("!HH", 8 + len(seg), 0) + seg
            iph = bytearray(ip[:ihl])
            struct.pack_into("!H", iph, 2, ihl + len(new_udp))  # total length
            struct.pack_into("!H", iph, 10, 0)
            struct.pack_into("!H", iph, 10, _ip_checksum(bytes(iph)))
            new_frame = frame[:14] + bytes(iph) + new_udp
            out.append(struct.pack("<IIII", ts_s, ts_frac, len(new_frame), len(new_frame)) + new_frame)
            written += 1
    dst.write_bytes(b"".join(out))
    return batches, written


@contextmanager
def capture(tshark: str, pcap: Path, bpf: str, timeout: float = 20) -> Iterator[None]:
    """Capture `bpf` on lo into the libpcap file `pcap` while the body runs.

    tshark prints "Capturing on 'Loopback: lo'" before dumpcap really captures (under load the
    first packets of a connection can be missed), so this also captures a probe port and sends
    datagrams to it until one shows up in the file. Probe datagrams go to a socket of this
    process on another port, so the filters of the caller's analysis never match them."""
    probe_rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe_rx.bind(("127.0.0.1", 0))
    probe_port = probe_rx.getsockname()[1]
    probe_tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    err = pcap.with_suffix(".tshark.err")
    with open(err, "wb") as err_file:
        cap = subprocess.Popen(
            [tshark, "-q", "-n", "-i", "lo", "-f", f"({bpf}) or udp port {probe_port}", "-F", "pcap", "-w", str(pcap)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
    try:
        deadline = time.monotonic() + timeout
        # dumpcap writes the 24-byte file header at once and packets when it flushes.
        while not (pcap.exists() and pcap.stat().st_size > 24):
            assert cap.poll() is None, f"tshark exited: {err.read_text(errors='replace')}"
            assert time.monotonic() < deadline, (
                f"tshark captured nothing within {timeout} s (needs root or CAP_NET_RAW): "
                f"{err.read_text(errors='replace')}"
            )
            probe_tx.sendto(b"capture probe", ("127.0.0.1", probe_port))
            time.sleep(0.02)
        yield
        time.sleep(0.5)  # let the last packets reach the capture
    finally:
        cap.send_signal(signal.SIGINT)  # to the tshark we started, and only to it
        try:
            cap.wait(timeout=30)
        except subprocess.TimeoutExpired:
            cap.kill()
            cap.wait()
        probe_rx.close()
        probe_tx.close()


def tshark_fields(tshark: str, pcap: Path, keylog: Path | None, display: str, fields: list[str]) -> list[list[str]]:
    """Rows of `-T fields` output (tab-separated) for the packets matching `display`."""
    cmd = [tshark, "-n", "-r", str(pcap)]
    if keylog is not None:
        cmd += ["-o", f"tls.keylog_file:{keylog}"]
    cmd += ["-Y", display, "-T", "fields", "-E", "separator=/t"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"tshark failed: {out.stderr}"
    return [line.split("\t") for line in out.stdout.splitlines() if line.strip()]
