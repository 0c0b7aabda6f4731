"""0-RTT: session resumption with early data (RFC 9001 §4.6, RFC 8446 §4.2.10) from peers that are
not quiclab's own client.

quiclab's QUIC endpoint issues session tickets that allow early data (rustls' stateful cache,
max_early_data_size 0xffffffff as RFC 9001 §4.6.1 requires) and accepts requests in 0-RTT. A
request the server accepted before its handshake completed is answered with
`quiclab-early-data: 1`; GET/HEAD/OPTIONS are served from early data, other methods get
`425 Too Early` (RFC 8470 §5.2). `/conn` reports `"early_data"` for the request that asked.

- aioquic: connection 1 collects a ticket (connect(session_ticket_handler=...)); connections 2..5
  each resume with the newest ticket (QuicConfiguration.session_ticket), use
  connect(wait_connected=False) and send their requests before the first flight leaves, so they
  go in 0-RTT packets (seen in aioquic's quic_logger); aioquic's HandshakeCompleted event reports
  `early_data_accepted` and `session_resumed`.
- gtlsclient (ngtcp2 0.12.1 + GnuTLS): `--session-file` / `--tp-file` carry the session and the
  server's transport parameters from run 1 to runs 2-4, which send their request in 0-RTT;
  ngtcp2's example client prints "Early data was rejected by server" on rejection and nothing on
  success, so a control test shows that line appearing when the session is presented to another
  server.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from conftest import Server, assert_pattern
from transport_peers import (
    FrameLogger,
    TicketJar,
    TransportClient,
    client_config,
    need_aioquic,
    run_gtlsclient,
)

TIMEOUT_S = 45
EARLY_HEADER = "quiclab-early-data"
RESUMED_CONNECTIONS = 4
RESUMED_GTLS_RUNS = 3
# RFC 9001 §4.6.1: a ticket that allows 0-RTT in QUIC has max_early_data_size 0xffffffff.
QUIC_MAX_EARLY_DATA = 0xFFFFFFFF


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S))


async def _aioquic_connection(server: Server, jar: TicketJar, ticket) -> dict:
    """One connection: GET /bytes/1k, GET /conn and POST /echo, all written before the first
    flight when resuming (0-RTT); returns what the client saw, after the next ticket arrived."""
    from aioquic.asyncio.client import connect

    authority = f"localhost:{server.udp_port}"
    logger = FrameLogger()
    tickets_before = len(jar.tickets)
    resuming = ticket is not None
    async with connect(
        "127.0.0.1",
        server.udp_port,
        configuration=client_config(server, ticket=ticket, quic_logger=logger),
        create_protocol=TransportClient,
        session_ticket_handler=jar,
        # connect() returns right after QuicConnection.connect() without transmitting, so the
        # requests below are queued before the ClientHello leaves and ride in 0-RTT packets.
        wait_connected=not resuming,
    ) as client:
        assert isinstance(client, TransportClient)
        futures = {
            "bytes": client.start_request(authority, "/bytes/1k"),
            "conn": client.start_request(authority, "/conn"),
            "post": client.start_request(authority, "/echo", method="POST", body=b"early bird"),
        }
        responses = dict(zip(futures, await asyncio.gather(*futures.values())))
        streams = {name: client.stream_of[f] for name, f in futures.items()}
        new_ticket = await jar.wait(tickets_before + 1)
        return {
            "handshake": client.handshake,
            "tls_early_data_accepted": client._quic.tls.early_data_accepted,  # aioquic.tls.Context
            "responses": responses,
            "streams": streams,
            "zero_rtt_streams": logger.zero_rtt_streams,
            "ticket": new_ticket,
        }


async def _aioquic_chain(server: Server) -> list[dict]:
    jar = TicketJar()
    results = [await _aioquic_connection(server, jar, None)]
    for _ in range(RESUMED_CONNECTIONS):
        # rustls takes a stateful session out of its cache on use (single-use tickets), so each
        # connection resumes with the newest ticket from the one before.
        results.append(await _aioquic_connection(server, jar, results[-1]["ticket"]))
    return results


def test_aioquic_resumption_with_0rtt(server: Server):
    need_aioquic()
    results = _run(_aioquic_chain(server))

    first = results[0]
    assert first["handshake"] is not None and first["handshake"].alpn_protocol == "h3"
    assert not first["handshake"].session_resumed and not first["handshake"].early_data_accepted
    assert first["zero_rtt_streams"] == set(), "no 0-RTT without a ticket"
    assert first["ticket"].max_early_data_size == QUIC_MAX_EARLY_DATA, (
        f"the server's ticket must allow 0-RTT: max_early_data_size={first['ticket'].max_early_data_size}"
    )
    assert_pattern(bytes(first["responses"]["bytes"].body), 1024)
    assert json.loads(first["responses"]["conn"].body)["early_data"] is False
    assert first["responses"]["post"].status == 200 and bytes(first["responses"]["post"].body) == b"early bird"
    for resp in first["responses"].values():
        assert EARLY_HEADER not in resp.headers, resp.headers

    flagged = []  # (connection, request) whose response says the server took it from 0-RTT
    for i, r in enumerate(results[1:], start=2):
        hs = r["handshake"]
        assert hs is not None and hs.session_resumed, f"connection {i} did not resume: {hs}"
        # aioquic: HandshakeCompleted.early_data_accepted mirrors tls.Context.early_data_accepted,
        # set from the early_data extension in the server's EncryptedExtensions.
        assert hs.early_data_accepted and r["tls_early_data_accepted"], f"connection {i}: 0-RTT rejected: {hs}"
        for name, resp in r["responses"].items():
            assert resp.sent_before_handshake, f"connection {i}: {name} was not written before the handshake"
            assert r["streams"][name] in r["zero_rtt_streams"], (
                f"connection {i}: {name} (stream {r['streams'][name]}) not sent in a 0-RTT packet; "
                f"0-RTT streams: {sorted(r['zero_rtt_streams'])}"
            )
            early = resp.headers.get(EARLY_HEADER) == "1"
            if early:
                flagged.append((i, name))
            if name == "bytes":
                assert resp.status == 200
                assert_pattern(bytes(resp.body), 1024)
            elif name == "conn":
                assert resp.status == 200
                info = json.loads(resp.body)
                assert info["early_data"] is early, f"connection {i}: /conn says {info['early_data']}, header {early}"
            else:
                # RFC 8470: an unsafe method from early data is refused with 425; once the
                # handshake is done it is served.
                if early:
                    assert resp.status == 425, f"connection {i}: POST in early data answered {resp.status}"
                else:
                    assert resp.status == 200 and bytes(resp.body) == b"early bird"
    # The server marks a request as early data when it accepts the request stream before its
    # handshake has completed. On loopback the client's Finished can reach the server first (in
    # about 7% of requests here, more under load), so a request that really travelled in 0-RTT
    # (asserted above from aioquic's own log) is sometimes answered without the header. Hence:
    # the header in at least one of the 12 responses, and every header consistent with /conn and
    # with 425 for the POST.
    assert flagged, (
        f"none of {3 * RESUMED_CONNECTIONS} requests sent in accepted 0-RTT got `{EARLY_HEADER}: 1`"
    )


# --------------------------------------------------------------------------------------------
# gtlsclient

REJECTED = "Early data was rejected by server"
# ngtcp2's debug log: "frm tx <pkn> 0RTT STREAM(0x0b) id=0x0 fin=1 ..." is the whole GET on
# stream 0 (frame type 0x08 | LEN 0x02 | FIN 0x01) sent in a 0-RTT packet.
ZERO_RTT_REQUEST = re.compile(r"frm tx \d+ 0RTT STREAM\(0x0[89a-f]\) id=0x0 fin=1 ")


def test_gtlsclient_sends_0rtt_that_quiclab_accepts(server: Server, tmp_path: Path):
    session, tp = tmp_path / "session.pem", tmp_path / "tp.pem"
    files = [f"--session-file={session}", f"--tp-file={tp}"]
    url = f"{server.h3_origin}/bytes/1k"

    first = run_gtlsclient("127.0.0.1", server.udp_port, [url], tmp_path / "d1", files)
    assert "Negotiated ALPN is h3" in first.log, first.context()
    assert session.stat().st_size > 0 and tp.stat().st_size > 0, "run 1 wrote no session / transport parameters"
    assert "type=0RTT" not in first.log, "run 1 had no session, it cannot send 0-RTT"
    assert f"[{EARLY_HEADER}: 1]" not in first.log, first.context()
    assert_pattern((tmp_path / "d1" / "1k").read_bytes(), 1024)

    # Runs 2..4 resume (each writes the next single-use session back to the file) and send the
    # GET in 0-RTT. Every one must be accepted; see below for the response header.
    flagged = []
    for n in range(2, 2 + RESUMED_GTLS_RUNS):
        run = run_gtlsclient("127.0.0.1", server.udp_port, [url], tmp_path / f"d{n}", files)
        log, context = run.log, f"run {n}: " + run.context()
        assert "Negotiated ALPN is h3" in log, context
        assert ZERO_RTT_REQUEST.search(log), f"no request sent in 0-RTT\n{context}"
        assert "QUIC handshake has completed" in log, context
        assert REJECTED not in log, context
        # gtlsclient prints each response header as "http: stream 0x0 [name: value]" (not
        # silenced by --no-http-dump, which only drops bodies).
        assert "http: stream 0x0 [:status: 200]" in log, context
        assert "HTTP stream 0 closed with error code 256" in log, context
        assert_pattern((tmp_path / f"d{n}" / "1k").read_bytes(), 1024)
        flagged.append(f"http: stream 0x0 [{EARLY_HEADER}: 1]" in log)
    # The header says the server accepted the request stream before its handshake completed.
    # gtlsclient sends its Finished late (after a PTO), so that is nearly always so, but under
    # heavy CPU load the server can pick the request up after the handshake (seen once in 12
    # loaded runs); so at least one of the runs.
    assert any(flagged), f"0-RTT was accepted {RESUMED_GTLS_RUNS} times, but no response carried `{EARLY_HEADER}: 1`"


def test_gtlsclient_0rtt_rejection_is_visible(server: Server, spawn_server, tmp_path: Path):
    """Control for the test above: the same kind of session, presented to another server (whose
    session cache does not know it), is refused and gtlsclient says so. So the absence of that
    line above means acceptance, not a client that stays silent."""
    other = spawn_server("127.0.0.1:0")
    session, tp = tmp_path / "session.pem", tmp_path / "tp.pem"
    files = [f"--session-file={session}", f"--tp-file={tp}"]
    run_gtlsclient("127.0.0.1", server.udp_port, [f"{server.h3_origin}/bytes/1k"], tmp_path / "d1", files)
    run = run_gtlsclient("127.0.0.1", other.udp_port, [f"{other.h3_origin}/bytes/1k"], tmp_path / "d2", files)
    assert ZERO_RTT_REQUEST.search(run.log), f"no 0-RTT attempt\n{run.context()}"
    assert REJECTED in run.log, run.context()
    assert f"[{EARLY_HEADER}: 1]" not in run.log, run.context()
    # After the rejection the request is sent again in 1-RTT and still succeeds (RFC 9001 §4.6.2).
    assert "HTTP stream 0 closed with error code 256" in run.log, run.context()
    assert_pattern((tmp_path / "d2" / "1k").read_bytes(), 1024)
