"""Debian's mosquitto clients (mosquitto_pub, mosquitto_sub 2.0) against quiclab's broker, over
TCP and TLS: QoS 0/1/2, retained messages, the last will, and quiclab's own `mqtt pub/sub` CLI
talking to mosquitto's.

A subscription is known to be active when a "sync" message published to it comes back, so no
test sleeps for a guessed time.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time

import pytest

from conftest import require_executable
from mqtt_fixtures import APT_HINT, LineReader, MqttServer, mqtt_server  # noqa: F401 (fixture)

_ids = itertools.count(1)


def _tools() -> tuple[str, str]:
    return (
        require_executable("mosquitto_pub", APT_HINT),
        require_executable("mosquitto_sub", APT_HINT),
    )


def _conn(srv: MqttServer, tls: bool) -> list[str]:
    if tls:
        return ["-h", "localhost", "-p", str(srv.tls_port), "--cafile", str(srv.ca)]
    return ["-h", "127.0.0.1", "-p", str(srv.tcp_port)]


def _pub(srv: MqttServer, tls: bool, *args: str) -> None:
    pub, _ = _tools()
    r = subprocess.run([pub, *_conn(srv, tls), "-V", "mqttv311", *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, f"mosquitto_pub {args} failed ({r.returncode}): {r.stderr}\n{srv.log_tail()}"


def _sub(srv: MqttServer, tls: bool, *args: str) -> LineReader:
    """mosquitto_sub printing `topic|qos|retain|payload` per message."""
    _, sub = _tools()
    proc = subprocess.Popen(
        [sub, *_conn(srv, tls), "-V", "mqttv311", "-F", "%t|%q|%r|%p", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    return LineReader(proc)


def _synced(srv: MqttServer, tls: bool, reader: LineReader, topic: str) -> None:
    """Publish to `topic` until the subscriber shows it: its subscription is then active."""
    deadline = time.monotonic() + 10
    while True:
        _pub(srv, tls, "-t", topic, "-m", "sync")
        try:
            reader.wait_for(lambda line: line.startswith(f"{topic}|"), timeout=0.5)
            return
        except AssertionError:
            if time.monotonic() > deadline or reader.proc.poll() is not None:
                err = reader.proc.stderr.read().decode() if reader.proc.poll() is not None else ""
                raise AssertionError(f"subscriber never saw {topic}: {reader.seen} {err}\n{srv.log_tail()}")


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_qos_0_1_2(mqtt_server: MqttServer, tls: bool) -> None:
    n = next(_ids)
    sub = _sub(mqtt_server, tls, "-t", f"q{n}/#", "-q", "2")
    try:
        _synced(mqtt_server, tls, sub, f"q{n}/sync")
        for qos in (0, 1, 2):
            _pub(mqtt_server, tls, "-t", f"q{n}/m{qos}", "-q", str(qos), "-m", f"hello {qos}")
            line = sub.wait_for(lambda s, q=qos: s.startswith(f"q{n}/m{q}|"))
            # Delivered at min(granted 2, published) = the published QoS (MQTT 3.1.1 §3.8.4).
            assert line == f"q{n}/m{qos}|{qos}|0|hello {qos}"
    finally:
        sub.close()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_retained(mqtt_server: MqttServer, tls: bool) -> None:
    n = next(_ids)
    _pub(mqtt_server, tls, "-t", f"r{n}/a", "-q", "1", "-r", "-m", "first")
    _pub(mqtt_server, tls, "-t", f"r{n}/a", "-q", "1", "-r", "-m", "second")
    _pub(mqtt_server, tls, "-t", f"r{n}/b", "-q", "0", "-r", "-m", "bee")
    _pub(mqtt_server, tls, "-t", f"r{n}/gone", "-q", "0", "-r", "-m", "soon cleared")
    _pub(mqtt_server, tls, "-t", f"r{n}/gone", "-r", "-n")  # an empty retained message clears
    sub = _sub(mqtt_server, tls, "-t", f"r{n}/+", "-q", "1")
    try:
        got = sorted([sub.wait_for(lambda s: True), sub.wait_for(lambda s: True)])
        assert got == [f"r{n}/a|1|1|second", f"r{n}/b|0|1|bee"]
        # Live messages to an existing subscription carry RETAIN 0 (§3.3.1-9).
        _pub(mqtt_server, tls, "-t", f"r{n}/a", "-q", "1", "-r", "-m", "live")
        assert sub.wait_for(lambda s: True) == f"r{n}/a|1|0|live"
        assert not any("gone" in line for line in sub.seen)
    finally:
        sub.close()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_will_on_abnormal_disconnect(mqtt_server: MqttServer, tls: bool) -> None:
    n = next(_ids)
    watcher = _sub(mqtt_server, tls, "-t", f"w{n}/#", "-q", "1")
    dying = None
    try:
        _synced(mqtt_server, tls, watcher, f"w{n}/sync")
        dying = _sub(mqtt_server, tls, "-t", f"w{n}/sync2", "-i", f"dying{n}",
                     "--will-topic", f"w{n}/status", "--will-payload", "offline", "--will-qos", "1")
        _synced(mqtt_server, tls, dying, f"w{n}/sync2")
        os.kill(dying.proc.pid, signal.SIGKILL)  # no DISCONNECT: the broker publishes the will
        dying.proc.wait()
        line = watcher.wait_for(lambda s: s.startswith(f"w{n}/status|"))
        assert line == f"w{n}/status|1|0|offline"
        # A clean disconnect (mosquitto_sub -C 1 exits with DISCONNECT) publishes nothing.
        _, sub = _tools()
        polite = subprocess.Popen(
            [sub, *_conn(mqtt_server, tls), "-t", f"w{n}/sync3", "-C", "1", "-i", f"polite{n}",
             "--will-topic", f"w{n}/polite", "--will-payload", "should not appear"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while polite.poll() is None and time.monotonic() < deadline:
            _pub(mqtt_server, tls, "-t", f"w{n}/sync3", "-m", "x")
            time.sleep(0.1)
        assert polite.wait(timeout=5) == 0
        _pub(mqtt_server, tls, "-t", f"w{n}/end", "-q", "1", "-m", "end")
        watcher.wait_for(lambda s: s.startswith(f"w{n}/end|"))
        assert not any("polite" in line for line in watcher.seen), watcher.seen
    finally:
        watcher.close()
        if dying is not None:
            dying.close()


def test_quiclab_cli_with_mosquitto(mqtt_server: MqttServer, quiclab_bin) -> None:
    """`quiclab mqtt sub` receives what mosquitto_pub sends, and mosquitto_sub what `quiclab
    mqtt pub` sends, over TCP and TLS."""
    n = next(_ids)
    url_tcp = f"mqtt://127.0.0.1:{mqtt_server.tcp_port}"
    url_tls = f"mqtts://localhost:{mqtt_server.tls_port}"
    qsub = subprocess.Popen(
        [str(quiclab_bin), "mqtt", "sub", "--url", url_tls, "--cacert", str(mqtt_server.ca),
         "-t", f"c{n}/#", "-q", "2", "-C", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader = LineReader(qsub)
    try:
        _synced_cli = time.monotonic() + 10
        while True:
            _pub(mqtt_server, False, "-t", f"c{n}/sync", "-q", "1", "-m", "s")
            try:
                reader.wait_for(lambda s: s.startswith(f"c{n}/sync\t"), timeout=0.5)
                break
            except AssertionError:
                assert time.monotonic() < _synced_cli, f"quiclab mqtt sub never subscribed: {reader.seen}"
        _pub(mqtt_server, False, "-t", f"c{n}/x", "-q", "2", "-m", "from mosquitto")
        line = reader.wait_for(lambda s: s.startswith(f"c{n}/x\t"))
        assert line == f"c{n}/x\tqos=2\tretain=0\tfrom mosquitto"
        assert qsub.wait(timeout=10) == 0
    finally:
        reader.close()
    sub = _sub(mqtt_server, True, "-t", f"c{n}/y", "-q", "1", "-C", "1")
    try:
        got = None
        deadline = time.monotonic() + 10
        while got is None:
            assert time.monotonic() < deadline, f"mosquitto_sub never got the message: {sub.seen}"
            r = subprocess.run([str(quiclab_bin), "mqtt", "pub", "--url", url_tcp, "-t", f"c{n}/y", "-q", "1",
                                "-m", "from quiclab"], capture_output=True, text=True, timeout=20)
            assert r.returncode == 0, r.stderr
            try:
                got = sub.wait_for(lambda s: True, timeout=0.5)
            except AssertionError as e:
                if "process ended" in str(e):
                    raise
        assert got == f"c{n}/y|1|0|from quiclab"
    finally:
        sub.close()
