"""Connection migration (RFC 9000 §9) and the server's preferred address (RFC 9000 §9.6), with
peers that are not quiclab's own code, and a packet capture as independent evidence.

- aioquic moves to a new local UDP socket in the middle of a download and switches to a fresh
  server connection ID (`change_connection_id()`, RFC 9000 §9.5). The server validates the new
  path with PATH_CHALLENGE (aioquic's quic_logger shows it arriving and the PATH_RESPONSE going
  back), the download finishes byte for byte, and the server itself reports the move: `/conn` on
  the same connection shows the new address and `path_changes >= 1`, its log has a
  `path_changed` line from the old port to the new one.
- tshark, decrypting with the server's SSLKEYLOGFILE, watches `quiclab get --rebind-after 1M`:
  client packets from two source ports, a different destination connection ID on each
  (RFC 9000 §9.5: no linkability), and PATH_CHALLENGE from the server to the new port answered by
  PATH_RESPONSE with the same data.
- gtlsclient (ngtcp2) against `serve --listen 0.0.0.0:P --preferred-address 127.0.0.2:P`: it takes
  the preferred address from the transport parameters, validates the path to 127.0.0.2 and
  downloads over it, byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

from conftest import Server, assert_pattern, free_port, require_executable
from transport_peers import (
    TSHARK_INSTALL,
    FrameLogger,
    TransportClient,
    capture,
    client_config,
    need_aioquic,
    run_gtlsclient,
    split_gso,
    tshark_fields,
)

TIMEOUT_S = 45


# --------------------------------------------------------------------------------------------
# aioquic

DOWNLOAD = 4 << 20  # /bytes/4M
MOVE_AFTER = 1 << 20  # rebind once this much of the body has arrived


async def _download_and_move(server: Server) -> dict:
    from aioquic.asyncio.client import connect

    authority = f"localhost:{server.udp_port}"
    logger = FrameLogger()
    async with connect(
        "127.0.0.1",
        server.udp_port,
        configuration=client_config(server, quic_logger=logger),
        create_protocol=TransportClient,
    ) as client:
        assert isinstance(client, TransportClient)
        download = client.start_request(authority, "/bytes/4M")
        while client.received(download) < MOVE_AFTER:
            if download.done():
                break
            await asyncio.sleep(0.002)
        moved_at = client.received(download)
        frames_before = len(logger.path_frames)
        move = await client.rebind()
        resp = await download
        conn = await client.start_request(authority, "/conn")  # same connection, new path
        return {
            "resp": resp,
            "moved_at": moved_at,
            "move": move,
            "frames_before": logger.path_frames[:frames_before],
            "frames_after": logger.path_frames[frames_before:],
            "conn": conn,
        }


def test_aioquic_migrates_mid_download(server: Server):
    need_aioquic()
    r = asyncio.run(asyncio.wait_for(_download_and_move(server), TIMEOUT_S))
    move = r["move"]
    assert r["moved_at"] < DOWNLOAD, "the download finished before the client could move"
    assert move.old_port != move.new_port
    assert move.new_dcid != move.old_dcid, "the client must use a new connection ID on the new path"

    # The download completes byte for byte across the move.
    assert r["resp"].status == 200
    assert_pattern(bytes(r["resp"].body), DOWNLOAD)

    # Path validation: after the move (the old socket is closed, so anything received came
    # through the new one) the server sent PATH_CHALLENGE and aioquic echoed its data.
    assert not any(f[1] == "path_challenge" for f in r["frames_before"]), r["frames_before"]
    challenges = [d for ev, kind, d in r["frames_after"] if (ev, kind) == ("packet_received", "path_challenge")]
    responses = [d for ev, kind, d in r["frames_after"] if (ev, kind) == ("packet_sent", "path_response")]
    assert challenges, f"no PATH_CHALLENGE received after the move; path frames: {r['frames_after']}"
    assert set(challenges) & set(responses), f"no PATH_RESPONSE echoed a challenge: {r['frames_after']}"

    # The server saw the move on this very connection.
    conn = json.loads(r["conn"].body)
    assert r["conn"].status == 200
    assert conn["remote"].endswith(f":{move.new_port}"), f"/conn remote {conn['remote']}, new port {move.new_port}"
    assert conn["path_changes"] >= 1, conn
    line = re.compile(rf"path_changed .*old=\S+:{move.old_port} new=\S+:{move.new_port}\b")
    log = server.log.read_text(errors="replace")
    assert line.search(log), f"no path_changed {move.old_port} -> {move.new_port} in the server log:\n{server.log_tail()}"


# --------------------------------------------------------------------------------------------
# tshark


def _values(cell: str) -> list[str]:
    """A -T fields cell holds one value per occurrence, comma-separated (coalesced packets)."""
    return [v for v in cell.split(",") if v]


def test_capture_shows_migration(server: Server, quiclab_bin: Path, tmp_path: Path):
    tshark = require_executable("tshark", TSHARK_INSTALL)
    raw = tmp_path / "migration.pcap"
    port = server.udp_port
    with capture(tshark, raw, f"udp port {port}"):
        get = subprocess.run(
            [str(quiclab_bin), "get", "--cacert", str(server.ca), "--rebind-after", "1M",
             f"{server.h3_origin}/bytes/8M", "-o", "/dev/null"],
            capture_output=True,
            timeout=30,
        )
        get_err = get.stderr.decode(errors="replace")
        assert get.returncode == 0, get_err
        assert "moved to a new local socket" in get_err, get_err

    # quinn sends with GSO: on loopback the tap sees a whole batch as one datagram, which tshark
    # 4.0 decrypts only in part (and its packet number recovery then goes wrong for later single
    # packets too). Split the batches into one datagram per QUIC packet first.
    pcap = tmp_path / "migration-split.pcap"
    batches, datagrams = split_gso(raw, pcap)
    keylog = server.keylog

    def rows(display: str, fields: list[str]) -> list[list[str]]:
        return tshark_fields(tshark, pcap, keylog, display, fields)

    # (a) The client's packets come from two source ports; the handshake from the first.
    initial_ports = {int(r[0]) for r in rows(f"udp.dstport == {port} && quic.long.packet_type == 0", ["udp.srcport"])}
    assert len(initial_ports) == 1, f"expected one connection's Initial packets, saw ports {initial_ports}"
    old_port = initial_ports.pop()
    client_rows = rows(f"udp.dstport == {port} && quic.header_form == 0", ["frame.number", "udp.srcport", "quic.dcid"])
    ports = {int(r[1]) for r in client_rows}
    assert old_port in ports and len(ports) == 2, f"client source ports {ports} (handshake from {old_port})"
    (new_port,) = ports - {old_port}

    # (b) A different destination connection ID on the new path (RFC 9000 §9.5).
    dcids = {p: {d for r in client_rows if int(r[1]) == p for d in _values(r[2])} for p in (old_port, new_port)}
    assert dcids[old_port] and dcids[new_port], f"undecoded DCIDs: {dcids}"
    assert not dcids[old_port] & dcids[new_port], f"a DCID was used on both paths: {dcids}"

    # (c) PATH_CHALLENGE from the server to the new port, PATH_RESPONSE with its data back.
    challenges = rows(
        f"udp.srcport == {port} && udp.dstport == {new_port} && quic.frame_type == 0x1a",
        ["frame.number", "quic.path_challenge.data"],
    )
    responses = rows(
        f"udp.srcport == {new_port} && udp.dstport == {port} && quic.frame_type == 0x1b",
        ["frame.number", "quic.path_response.data"],
    )
    context = (
        f"old port {old_port}, new port {new_port}; {batches} GSO batches split into {datagrams} datagrams; "
        f"PATH_CHALLENGE to new port: {challenges}; PATH_RESPONSE from it: {responses}"
    )
    assert challenges, f"no PATH_CHALLENGE from the server to the new port decoded; {context}"
    sent = {(int(r[0]), d) for r in challenges for d in _values(r[1])}
    echoed = {(int(r[0]), d) for r in responses for d in _values(r[1])}
    assert any(d == e and fe > fs for fs, d in sent for fe, e in echoed), f"no PATH_RESPONSE echoes a challenge; {context}"


# --------------------------------------------------------------------------------------------
# gtlsclient and the preferred address


def test_gtlsclient_uses_preferred_address(spawn_server, tmp_path: Path):
    port = free_port("0.0.0.0")
    srv = spawn_server(f"0.0.0.0:{port}", "--preferred-address", f"127.0.0.2:{port}")
    assert srv.udp_port == port
    url = f"https://localhost:{port}/bytes/2M"
    run = run_gtlsclient("127.0.0.1", port, [url], tmp_path / "d")
    log, context = run.log, run.context()
    assert "Negotiated ALPN is h3" in log, context
    # The server's transport parameters carry the address (ngtcp2 logs each parameter).
    assert "preferred_address.ipv4_addr=127.0.0.2" in log, context
    assert f"preferred_address.ipv4_port={port}" in log, context
    # ngtcp2's example client: after the handshake is confirmed it selects the address
    # (RFC 9000 §9.6.1) and validates the new path with PATH_CHALLENGE.
    assert f"selected server preferred_address is [127.0.0.2]:{port}" in log, context
    assert re.search(r"frm tx \d+ 1RTT PATH_CHALLENGE\(0x1a\)", log), context
    assert re.search(r"frm rx \d+ 1RTT PATH_RESPONSE\(0x1b\)", log), context
    assert re.search(rf"Path validation against path \{{local:\S+, remote:\[127\.0\.0\.2\]:{port}\}} succeeded", log), (
        f"the path to the preferred address was not validated (does the server answer from "
        f"127.0.0.2? ngtcp2 drops packets from another address: 'ignore packet from unknown path')\n{context}"
    )
    # The response really came over the new path: packets from 127.0.0.2.
    from_preferred = len(re.findall(rf"Received packet: local=\S+ remote=\[127\.0\.0\.2\]:{port} ", log))
    assert from_preferred > 0, context
    assert re.search(r"http: stream 0x0 \[:status: 200\]", log), context
    assert "HTTP stream 0 closed with error code 256" in log, context
    assert_pattern((tmp_path / "d" / "2M").read_bytes(), 2 << 20)
