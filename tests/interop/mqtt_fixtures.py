"""Fixtures and helpers for the MQTT interop tests (test_mosquitto.py, test_paho.py).

`mqtt_server` starts `quiclab serve` with MQTT over TCP and over TLS on ephemeral loopback
ports (its own certificate directory) and parses the addresses from the banner lines

    MQTT             mqtt://localhost:PORT  (MQTT/TCP 127.0.0.1:PORT)
    MQTT over TLS    mqtts://localhost:PORT  (MQTT/TLS 127.0.0.1:PORT)

A missing peer FAILS with the command that installs it (never a skip), as in conftest.py.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

BANNER_TIMEOUT_S = 30
SHUTDOWN_TIMEOUT_S = 15
APT_HINT = "apt-get install -y mosquitto-clients (Debian; or run: bash .ci/run)"


@dataclasses.dataclass(frozen=True)
class MqttServer:
    tcp_port: int
    tls_port: int
    ca: Path
    log: Path
    banner: str

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as e:  # pragma: no cover - diagnostic only
            return f"(cannot read {self.log}: {e})"
        return "\n".join(text.splitlines()[-lines:])


def _start(quiclab_bin: Path, workdir: Path):
    certs = workdir / "certs"
    log = workdir / "server.log"
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "info")
    env["NO_COLOR"] = "1"
    cmd = [
        str(quiclab_bin), "serve", "--listen", "127.0.0.1:0", "--certs", str(certs),
        "--mqtt-tcp", "127.0.0.1:0", "--mqtt-tls", "127.0.0.1:0",
    ]
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file,
                                cwd=workdir, env=env)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode("utf-8", "replace"))
        lines.put(None)

    threading.Thread(target=pump, name="quiclab-mqtt-stdout", daemon=True).start()
    banner: list[str] = []
    deadline = time.monotonic() + BANNER_TIMEOUT_S
    while not any("SPKI sha256" in line for line in banner):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc.kill()
            pytest.fail(f"no banner within {BANNER_TIMEOUT_S} s: {''.join(banner)}\n{log.read_text()[-3000:]}")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            pytest.fail(f"quiclab serve exited with {proc.wait()}:\n{''.join(banner)}\n{log.read_text()[-3000:]}")
        banner.append(line)
    text = "".join(banner)
    tcp = re.search(r"\(MQTT/TCP \S+:(\d+)\)", text)
    tls = re.search(r"\(MQTT/TLS \S+:(\d+)\)", text)
    if tcp is None or tls is None:
        proc.kill()
        pytest.fail(f"the banner names no MQTT/TCP and MQTT/TLS listeners:\n{text}")
    srv = MqttServer(int(tcp.group(1)), int(tls.group(1)), certs / "ca.pem", log, text)
    return proc, srv


def _stop(proc: subprocess.Popen, srv: MqttServer) -> None:
    if proc.poll() is not None:
        pytest.fail(f"quiclab exited during the tests with status {proc.returncode}\n{srv.log_tail()}")
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"quiclab did not exit within {SHUTDOWN_TIMEOUT_S} s of SIGTERM\n{srv.log_tail()}")
    if rc != 0:
        pytest.fail(f"quiclab exited with status {rc} after SIGTERM\n{srv.log_tail()}")
    if "panicked" in srv.log.read_text(errors="replace"):
        pytest.fail(f"the server log shows a panic:\n{srv.log_tail()}")


@pytest.fixture(scope="module")
def mqtt_server(quiclab_bin: Path, tmp_path_factory: pytest.TempPathFactory):
    """A running `quiclab serve` with MQTT on ephemeral loopback ports (TCP and TLS)."""
    proc, srv = _start(quiclab_bin, tmp_path_factory.mktemp("quiclab-mqtt"))
    yield srv
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
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
