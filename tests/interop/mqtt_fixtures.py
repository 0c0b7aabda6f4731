"""Fixtures and helpers for the MQTT interop tests (test_mosquitto.py, test_paho.py,
test_mqtt_certs.py).

`mqtt_server` starts `quiclab serve` with MQTT over TCP and over TLS on ephemeral loopback
ports (its own certificate directory) and parses the addresses from the banner lines

    MQTT             mqtt://localhost:PORT  (MQTT/TCP 127.0.0.1:PORT)
    MQTT over TLS    mqtts://localhost:PORT  (MQTT/TLS 127.0.0.1:PORT)

A missing peer FAILS with the command that installs it (never a skip), as in conftest.py.
"""

from __future__ import annotations

import dataclasses
import queue
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from launch import end_process, launch_serve, log_tail, stop_serve

APT_HINT = "apt-get install -y mosquitto-clients (Debian; or run: bash .ci/run)"


@dataclasses.dataclass(frozen=True)
class MqttServer:
    tcp_port: int
    tls_port: int
    ca: Path
    log: Path
    banner: str

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log, lines)


def _start(quiclab_bin: Path, workdir: Path, flags: tuple[str, ...] = ()):
    certs = workdir / "certs"
    args = ["--listen", "127.0.0.1:0", "--certs", str(certs), "--mqtt-tcp", "127.0.0.1:0", "--mqtt-tls", "127.0.0.1:0"]
    args += list(flags)
    try:
        launched = launch_serve(quiclab_bin, workdir, args)
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    proc, text, log = launched.proc, launched.banner, launched.log
    tcp = re.search(r"\(MQTT/TCP \S+:(\d+)\)", text)
    tls = re.search(r"\(MQTT/TLS \S+:(\d+)\)", text)
    if tcp is None or tls is None:
        proc.kill()
        pytest.fail(f"the banner names no MQTT/TCP and MQTT/TLS listeners:\n{text}")
    srv = MqttServer(int(tcp.group(1)), int(tls.group(1)), certs / "ca.pem", log, text)
    return proc, srv


def _stop(proc: subprocess.Popen, srv: MqttServer) -> None:
    problem = stop_serve(proc, srv.log)
    if problem:
        pytest.fail(problem)


@pytest.fixture(scope="module")
def mqtt_server(quiclab_bin: Path, tmp_path_factory: pytest.TempPathFactory):
    """A running `quiclab serve` with MQTT on ephemeral loopback ports (TCP and TLS)."""
    proc, srv = _start(quiclab_bin, tmp_path_factory.mktemp("quiclab-mqtt"))
    yield srv
    _stop(proc, srv)


@pytest.fixture(scope="module")
def mqtt_server_with(quiclab_bin: Path, tmp_path_factory: pytest.TempPathFactory):
    """Start brokers with flags of their own: `mqtt_server_with(*flags)` runs `quiclab serve`
    as `mqtt_server` does, plus FLAGS (e.g. "--mqtt-require-certificate"), each with a fresh
    certificate directory (`srv.ca.parent`); all are stopped (SIGTERM to their own PIDs) when
    the module ends."""
    started: list[tuple[subprocess.Popen, MqttServer]] = []

    def start(*flags: str) -> MqttServer:
        proc, srv = _start(quiclab_bin, tmp_path_factory.mktemp("quiclab-mqtt-flags"), flags)
        started.append((proc, srv))
        return srv

    yield start
    for proc, srv in started:
        _stop(proc, srv)


class LineReader:
    """Collects a child process's stdout lines on a thread."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pred, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching line within {timeout} s; got {self.seen}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the process ended (status {self.proc.wait()}); got {self.seen}")
            self.seen.append(line)
            if pred(line):
                return line

    def close(self) -> None:
        end_process(self.proc)


MOSQUITTO_HINT = "apt-get install -y mosquitto (Debian; or run: bash .ci/run)"


def mqtt_ports(banner: str, ca: Path, log: Path) -> MqttServer:
    """The MQTT listeners named in a `quiclab serve` banner (e.g. of `spawn_server`)."""
    tcp = re.search(r"\(MQTT/TCP \S+:(\d+)\)", banner)
    tls = re.search(r"\(MQTT/TLS \S+:(\d+)\)", banner)
    assert tcp is not None and tls is not None, f"the banner names no MQTT/TCP and MQTT/TLS listeners:\n{banner}"
    return MqttServer(int(tcp.group(1)), int(tls.group(1)), ca, log, banner)


@dataclasses.dataclass
class Mosquitto:
    """A real mosquitto broker started by a test (see `mosquitto_broker`)."""

    proc: subprocess.Popen
    port: int
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log, lines)


@pytest.fixture
def mosquitto_broker(tmp_path_factory: pytest.TempPathFactory):
    """Start Debian's mosquitto: `mosquitto_broker(*conf_lines)` writes a mosquitto.conf with a
    plain TCP listener on a free loopback port plus those lines, runs `mosquitto -c` on it, waits
    until the port accepts connections, and returns a `Mosquitto`. Each is stopped with SIGTERM to
    its own PID when the test ends."""
    from conftest import free_port, require_executable

    exe = require_executable("mosquitto", MOSQUITTO_HINT)
    started: list[subprocess.Popen] = []

    def start(*lines: str) -> Mosquitto:
        import os
        import socket

        workdir = tmp_path_factory.mktemp("mosquitto")
        port = free_port("127.0.0.1")
        conf = [f"listener {port} 127.0.0.1", "log_dest stderr", "log_type all", *lines]
        if os.geteuid() == 0:
            conf.append("user root")  # else mosquitto drops to user `mosquitto`, who cannot read tmp files
        (workdir / "mosquitto.conf").write_text("\n".join(conf) + "\n")
        log = workdir / "mosquitto.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen([exe, "-c", str(workdir / "mosquitto.conf")], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err)
        started.append(proc)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return Mosquitto(proc, port, log)
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mosquitto did not start (status {proc.poll()}):\n{log_tail(log)}", pytrace=False)
                time.sleep(0.05)

    yield start

    for proc in started:
        end_process(proc)
