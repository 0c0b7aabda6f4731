"""Passwords and ACLs with real peers, and the same files in real mosquitto (docs/mqtt.md,
"Authentication and authorization").

- A password file made with Debian's `mosquitto_passwd` is loaded by `quiclab serve
  --mqtt-password-file`; `mosquitto_pub -u/-P` gets the same CONNACK codes from quiclab (TCP
  and TLS) as from mosquitto 2.0.11 with the same file.
- A file written by `quiclab mqtt passwd` works in mosquitto.
- paho-mqtt over TCP and an aioquic + amqtt MQTT-over-QUIC client are refused without
  credentials and accepted with them.
- One ACL file, one table of publishes, wills and retained messages: the messages each
  subscriber receives are the same from quiclab (TCP and TLS) and from mosquitto. The one
  documented difference, a SUBACK of 0x80 for a filter nothing could pass, is asserted too.

A subscription is known to be active when a marker message published to it comes back; the
end of a run is a marker too, so no test sleeps for a guessed time.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Server, require_executable
from mqtt_fixtures import (  # noqa: F401 (fixture)
    APT_HINT,
    MOSQUITTO_HINT,
    LineReader,
    MqttServer,
    mosquitto_broker,
    mqtt_ports,
)

ACL = """\
# anonymous clients
topic read public/#
topic write anon/in

user alice
topic readwrite alice/#
topic deny alice/secret/#
topic read public/#
topic write public/alice

user bob
topic read #

pattern readwrite clients/%c/#
pattern write outbox/%u
"""

ALICE = ["-u", "alice", "-P", "secret"]
BOB = ["-u", "bob", "-P", "p@ss:w0rd"]
NOT_AUTHORIZED = 5  # CONNACK 0x05, what mosquitto 2.0.11 answers to every refusal

_ids = itertools.count(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(password file made by mosquitto_passwd, ACL file)."""
    passwd = require_executable("mosquitto_passwd", MOSQUITTO_HINT)
    d = tmp_path_factory.mktemp("auth")
    pw = d / "passwords"
    for args in (["-c", "-b", str(pw), "alice", "secret"], ["-b", str(pw), "bob", "p@ss:w0rd"]):
        r = subprocess.run([passwd, *args], capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, f"mosquitto_passwd {args}: {r.stderr}"
    assert pw.read_text().startswith("alice:$7$101$"), pw.read_text()
    acl = d / "acl"
    acl.write_text(ACL)
    return pw, acl


class Target:
    """One broker endpoint for mosquitto_pub/sub."""

    def __init__(self, name: str, conn: list[str], log_tail):
        self.name, self.conn, self.log_tail = name, conn, log_tail

    def __repr__(self) -> str:
        return self.name


def _quiclab_targets(srv: Server) -> list[Target]:
    m = mqtt_ports(srv.banner, srv.ca, srv.log)
    return [
        Target("quiclab-tcp", ["-h", "127.0.0.1", "-p", str(m.tcp_port)], m.log_tail),
        Target("quiclab-tls", ["-h", "localhost", "-p", str(m.tls_port), "--cafile", str(m.ca)], m.log_tail),
    ]


def _mosquitto_target(mosq) -> Target:
    return Target("mosquitto", ["-h", "127.0.0.1", "-p", str(mosq.port)], mosq.log_tail)


def _connack(t: Target, *auth: str) -> int:
    """The CONNACK code mosquitto_pub gets (-d prints it)."""
    pub = require_executable("mosquitto_pub", APT_HINT)
    r = subprocess.run([pub, *t.conn, "-V", "mqttv311", "-d", "-t", "probe", "-m", "x", *auth],
                       capture_output=True, text=True, timeout=20)
    m = re.search(r"received CONNACK \((\d+)\)", r.stdout + r.stderr)
    assert m, f"{t}: no CONNACK: {r.stdout}{r.stderr}\n{t.log_tail()}"
    code = int(m.group(1))
    assert (r.returncode == 0) == (code == 0), f"{t}: exit {r.returncode} with CONNACK {code}"
    return code


def _pub(t: Target, *args: str) -> None:
    pub = require_executable("mosquitto_pub", APT_HINT)
    r = subprocess.run([pub, *t.conn, "-V", "mqttv311", "-q", "1", *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, f"{t}: mosquitto_pub {args} failed ({r.returncode}): {r.stderr}\n{t.log_tail()}"


def _sub(t: Target, *args: str) -> LineReader:
    """mosquitto_sub printing `topic|payload|retain` per message."""
    sub = require_executable("mosquitto_sub", APT_HINT)
    proc = subprocess.Popen([sub, *t.conn, "-V", "mqttv311", "-q", "1", "-F", "%t|%p|%r", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    return LineReader(proc)


def _sync(t: Target, readers: list[LineReader], marker: str, *pub_args: str) -> None:
    """Publish `marker` (pub_args: who and where) until every reader printed it."""
    deadline = time.monotonic() + 10
    pending = list(readers)
    while pending:
        _pub(t, *pub_args, "-m", marker)
        still = []
        for r in pending:
            try:
                r.wait_for(lambda line: line.split("|")[1:2] == [marker], timeout=0.5)
            except AssertionError:
                if time.monotonic() > deadline or r.proc.poll() is not None:
                    raise AssertionError(f"{t}: a subscriber never saw {marker}: {r.seen}\n{t.log_tail()}")
                still.append(r)
        pending = still


def _received(r: LineReader, until: str) -> set[str]:
    """What `r` printed up to the marker `until`, markers left out."""
    is_marker = lambda line: line.split("|")[1:2] == [until]  # noqa: E731
    if not any(is_marker(line) for line in r.seen):
        r.wait_for(is_marker)
    return {line for line in r.seen if line.split("|")[1] not in ("sync", "end", "sync2", "sync3", "end2")}


def _suback(t: Target, flt: str, *auth: str) -> int:
    sub = require_executable("mosquitto_sub", APT_HINT)
    r = subprocess.run([sub, *t.conn, "-V", "mqttv311", "-d", "-t", flt, "-W", "1", *auth],
                       capture_output=True, text=True, timeout=20)
    m = re.search(r"Subscribed \(mid: \d+\): (\d+)", r.stdout + r.stderr)
    assert m, f"{t}: no SUBACK: {r.stdout}{r.stderr}"
    return int(m.group(1))


# ---------------------------------------------------------------------------------------------
# Passwords


def test_mosquitto_passwd_file_same_connack_codes(files, spawn_server, mosquitto_broker) -> None:  # noqa: F811
    pw, _ = files
    quiclab = spawn_server("127.0.0.1:0", "--mqtt-password-file", str(pw))  # anonymous: default (no)
    mosq = mosquitto_broker(f"password_file {pw}")  # mosquitto 2: allow_anonymous false
    rows = [
        ("alice", ALICE, 0),
        ("bob, ':' in the password", BOB, 0),
        ("alice, wrong password", ["-u", "alice", "-P", "Secret"], NOT_AUTHORIZED),
        ("alice, no password", ["-u", "alice"], NOT_AUTHORIZED),
        ("unknown user", ["-u", "mallory", "-P", "secret"], NOT_AUTHORIZED),
        ("anonymous", [], NOT_AUTHORIZED),
    ]
    for t in [*_quiclab_targets(quiclab), _mosquitto_target(mosq)]:
        got = [(row, _connack(t, *auth)) for row, auth, _ in rows]
        assert got == [(row, code) for row, _, code in rows], t


def test_quiclab_passwd_file_works_in_mosquitto(quiclab_bin, tmp_path, spawn_server, mosquitto_broker) -> None:  # noqa: F811
    f = tmp_path / "written-by-quiclab"
    r = subprocess.run([str(quiclab_bin), "mqtt", "passwd", "-c", "-b", str(f), "carol", "c pw"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    # Without -b the password is one line of stdin (not a terminal here).
    r = subprocess.run([str(quiclab_bin), "mqtt", "passwd", str(f), "dave"], input="dave's pw\n",
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert [line.split(":")[0] for line in f.read_text().splitlines()] == ["carol", "dave"]
    mosq = mosquitto_broker(f"password_file {f}")
    quiclab = spawn_server("127.0.0.1:0", "--mqtt-password-file", str(f))
    rows = [(["-u", "carol", "-P", "c pw"], 0), (["-u", "dave", "-P", "dave's pw"], 0),
            (["-u", "carol", "-P", "dave's pw"], NOT_AUTHORIZED)]
    for t in [_mosquitto_target(mosq), *_quiclab_targets(quiclab)]:
        assert [_connack(t, *auth) for auth, _ in rows] == [code for _, code in rows], t


def test_paho_over_tcp_refused_without_credentials(files, spawn_server, mosquitto_broker) -> None:  # noqa: F811
    from test_paho import Peer

    pw, _ = files
    quiclab = spawn_server("127.0.0.1:0", "--mqtt-password-file", str(pw))
    mosq = mosquitto_broker(f"password_file {pw}")
    m = mqtt_ports(quiclab.banner, quiclab.ca, quiclab.log)
    as_mosquitto = MqttServer(mosq.port, 0, quiclab.ca, mosq.log, "")
    for srv in (m, as_mosquitto):
        for creds, want in [(None, 135), (("alice", "wrong"), 135), (("alice", "secret"), 0)]:
            p = Peer(srv, f"paho-auth-{next(_ids)}", clean=True)
            if creds:
                p.c.username_pw_set(*creds)
            # paho 2 reports a 3.1.1 CONNACK 0x05 as reason code 0x87 "Not authorized"; after a
            # refusal its loop returns an error once the broker has closed the connection
            # (§3.2.2-5), so it is driven here rather than with Peer.pump.
            p.c.connect("127.0.0.1", srv.tcp_port, keepalive=30)
            deadline = time.monotonic() + 10
            rc = 0
            while p.connack is None or (want != 0 and rc == 0):
                assert time.monotonic() < deadline, f"no CONNACK/close: {p.log[-10:]}"
                rc = p.c.loop(timeout=0.05)
            assert p.connack == (False, want), (srv.tcp_port, creds, p.log[-5:])
            if want == 0:
                p.disconnect()
            else:
                p.c.disconnect()


def test_aioquic_client_refused_without_credentials(files, spawn_server) -> None:
    from test_mqtt_quic import (
        ConnackPacket,
        ConnectPacket,
        ConnectPayload,
        ConnectVariableHeader,
        DisconnectPacket,
        MqttQuicClient,
        _config,
        _run,
        connect,
    )

    pw, _ = files
    srv = spawn_server("127.0.0.1:0", "--mqtt-password-file", str(pw))

    async def attempt(user: str | None, password: str | None) -> int:
        async with connect("127.0.0.1", srv.udp_port, configuration=_config(str(srv.ca)),
                           create_protocol=MqttQuicClient) as client:
            control = client.open_stream()
            vh = ConnectVariableHeader()
            vh.clean_session_flag = True
            vh.keep_alive = 30
            vh.username_flag = user is not None
            vh.password_flag = password is not None
            payload = ConnectPayload(client_id=f"aioquic-auth-{next(_ids)}", username=user, password=password)
            client.send(control, ConnectPacket(variable_header=vh, payload=payload))
            connack = await client.expect(control, ConnackPacket)
            if connack.return_code == 0:
                client.send(control, DisconnectPacket())
            # Refused: the broker closes the connection (§3.2.2-5); accepted: after DISCONNECT.
            await client.wait_terminated()
            return connack.return_code

    assert _run(attempt(None, None)) == NOT_AUTHORIZED
    assert _run(attempt("alice", "wrong")) == NOT_AUTHORIZED
    assert _run(attempt("alice", "secret")) == 0


# ---------------------------------------------------------------------------------------------
# ACLs


def _acl_run(t: Target) -> dict[str, set[str]]:
    """The ACL table on one broker: what each subscriber received."""
    n = next(_ids)
    readers = {
        "alice": _sub(t, "-t", "#", "-i", f"sub-alice-{n}", *ALICE),
        "bob": _sub(t, "-t", "#", "-i", f"sub-bob-{n}", *BOB),
        "anon": _sub(t, "-t", "#", "-i", f"sub-anon-{n}"),
        # Client id "+": `clients/%c/#` would read every client's topics; patterns deny it.
        "plus id": _sub(t, "-t", "clients/#", "-t", "public/alice", "-i", "+"),
    }
    dying: list[LineReader] = []
    late: dict[str, LineReader] = {}
    try:
        _sync(t, list(readers.values()), "sync", "-t", "public/alice", *ALICE)
        # Wills: allowed and denied topics (the CONNECT is accepted either way).
        for topic in ("alice/will", "forbidden/will"):
            dying.append(_sub(t, "-t", "public/alice", "-i", f"dying-{n}-{len(dying)}", *ALICE,
                              "--will-topic", topic, "--will-payload", "gone"))
        _sync(t, dying, "sync2", "-t", "public/alice", *ALICE)
        for d in dying:
            os.kill(d.proc.pid, signal.SIGKILL)  # no DISCONNECT: the broker publishes the will
            d.proc.wait()
        readers["bob"].wait_for(lambda line: line.startswith("alice/will|"))
        # Publishes (QoS 1: each is routed before mosquitto_pub returns).
        for who, payload, topic, extra in [
            (ALICE, "alice", "alice/x", []),
            (ALICE, "alice", "alice/secret/x", []),  # the user's deny beats their readwrite
            (ALICE, "alice", "public/x", []),  # alice may write public/alice only
            (ALICE, "alice", "public/alice", []),
            (ALICE, "alice", "alice/r", ["-r"]),
            (ALICE, "alice", f"clients/pub-alice-{n}/x", ["-i", f"pub-alice-{n}"]),  # pattern %c
            (ALICE, "alice", "clients/someone-else/x", ["-i", f"pub-alice2-{n}"]),
            (ALICE, "alice", "outbox/alice", []),  # pattern %u
            (BOB, "bob", "public/bob", []),  # bob reads only
            ([], "anon", "anon/in", []),
            ([], "anon", "public/x", []),  # anonymous clients read public/# only
            ([], "anon", "outbox/", []),  # %u patterns do not apply to anonymous clients
        ]:
            _pub(t, *who, "-t", topic, "-m", payload, *extra)
        _sync(t, list(readers.values()), "end", "-t", "public/alice", *ALICE)
        got = {name: _received(r, "end") for name, r in readers.items()}
        # The retained message reaches a later subscriber only if it may read it.
        late["anon"] = _sub(t, "-t", "#", "-i", f"late-anon-{n}")
        late["bob"] = _sub(t, "-t", "alice/#", "-i", f"late-bob-{n}", *BOB)
        _sync(t, [late["anon"]], "sync3", "-t", "public/alice", *ALICE)
        _sync(t, [late["bob"]], "end2", "-t", "alice/end2", *ALICE)
        got["late anon"] = _received(late["anon"], "sync3")
        got["late bob"] = _received(late["bob"], "end2")
        _pub(t, *ALICE, "-t", "alice/r", "-r", "-n")  # leave nothing retained
        return got
    finally:
        for r in [*readers.values(), *dying, *late.values()]:
            r.close()


def test_same_acl_outcomes_as_mosquitto(files, spawn_server, mosquitto_broker) -> None:  # noqa: F811
    pw, acl = files
    quiclab = spawn_server("127.0.0.1:0", "--mqtt-password-file", str(pw), "--mqtt-acl-file", str(acl),
                           "--mqtt-allow-anonymous", "true")
    mosq = mosquitto_broker(f"password_file {pw}", f"acl_file {acl}", "allow_anonymous true")
    expected = {
        "alice": {"alice/will|gone|0", "alice/x|alice|0", "public/alice|alice|0", "alice/r|alice|0"},
        "bob": {
            "alice/will|gone|0", "alice/x|alice|0", "public/alice|alice|0", "alice/r|alice|0",
            "clients/pub-alice-{n}/x|alice|0", "outbox/alice|alice|0", "anon/in|anon|0",
        },
        "anon": {"public/alice|alice|0"},
        "plus id": {"public/alice|alice|0"},
        "late anon": set(),
        "late bob": {"alice/r|alice|1"},
    }
    outcomes = {}
    for t in [_mosquitto_target(mosq), *_quiclab_targets(quiclab)]:
        got = _acl_run(t)
        # The %c topic names the run; normalise it.
        got = {k: {re.sub(r"pub-alice-\d+", "pub-alice-{n}", x) for x in v} for k, v in got.items()}
        outcomes[t.name] = got
        assert got == expected, f"{t}: {got}"
    assert outcomes["quiclab-tcp"] == outcomes["mosquitto"] == outcomes["quiclab-tls"]
    # Where quiclab differs, on purpose: a filter nothing could pass is refused at SUBSCRIBE.
    for t, code in [(_mosquitto_target(mosq), 0), *[(q, 0x80) for q in _quiclab_targets(quiclab)]]:
        assert _suback(t, "alice/secret/#", *ALICE) == code, t
        assert _suback(t, "alice/#", *ALICE) == 0, t
