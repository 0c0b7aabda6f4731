"""Client certificates with Debian's mosquitto 2.0: `quiclab serve --mqtt-require-certificate`
lets `mosquitto_pub/sub --cafile --cert --key` in over TLS with a certificate made by `quiclab
certs --client NAME`, and refuses them without one (exit status, and quiclab's log line says
why) or with one from another CA; and real mosquitto, configured with `require_certificate
true` over the same development CA, accepts the very same files (they are standard X.509/PEM,
not something only quiclab reads).

A missing tool FAILS with the command that installs it, as everywhere in this suite.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port, require_executable
from launch import end_process
from mqtt_fixtures import APT_HINT, LineReader, MqttServer, mqtt_server_with  # noqa: F401 (fixture)

BROKER_HINT = "apt-get install -y mosquitto (Debian; or run: bash .ci/run)"


@pytest.fixture(scope="module")
def cert_server(mqtt_server_with) -> MqttServer:
    return mqtt_server_with("--mqtt-require-certificate")


def _client_cert(quiclab_bin: Path, certs: Path, name: str) -> tuple[Path, Path]:
    """`quiclab certs --client NAME --certs CERTS`: (certificate, key)."""
    r = subprocess.run([str(quiclab_bin), "certs", "--client", name, "--certs", str(certs)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    cert, key = certs / f"client-{name}.pem", certs / f"client-{name}-key.pem"
    assert cert.is_file() and key.is_file(), r.stdout
    assert "mosquitto_pub" in r.stdout and f"--cert {cert}" in r.stdout, r.stdout
    return cert, key


def _tls(port: int, ca: Path, cert: tuple[Path, Path] | None) -> list[str]:
    args = ["-h", "localhost", "-p", str(port), "--cafile", str(ca), "-V", "mqttv311"]
    if cert is not None:
        args += ["--cert", str(cert[0]), "--key", str(cert[1])]
    return args


def _pub(port: int, ca: Path, cert: tuple[Path, Path] | None, *args: str) -> subprocess.CompletedProcess:
    pub = require_executable("mosquitto_pub", APT_HINT)
    return subprocess.run([pub, *_tls(port, ca, cert), *args], capture_output=True, text=True, timeout=20)


def _wait_for_log(log: Path, needle: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{log} never said {needle!r}:\n{log.read_text(errors='replace')[-3000:]}"
        time.sleep(0.05)


def test_mosquitto_clients_with_a_client_certificate(cert_server: MqttServer, quiclab_bin: Path) -> None:
    """mosquitto_sub and mosquitto_pub, both presenting `certs --client` certificates, talk
    through quiclab over TLS."""
    sub_bin = require_executable("mosquitto_sub", APT_HINT)
    certs = cert_server.ca.parent
    alice = _client_cert(quiclab_bin, certs, "alice")
    bob = _client_cert(quiclab_bin, certs, "bob")
    sub = LineReader(subprocess.Popen(
        [sub_bin, *_tls(cert_server.tls_port, cert_server.ca, alice), "-t", "certs/#", "-q", "1", "-C", "1",
         "-F", "%t|%p"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL))
    try:
        # Publish until the subscriber shows the message: its subscription is then active.
        got = None
        deadline = time.monotonic() + 10
        while got is None:
            assert time.monotonic() < deadline, f"mosquitto_sub got nothing: {sub.seen}\n{cert_server.log_tail()}"
            r = _pub(cert_server.tls_port, cert_server.ca, bob, "-t", "certs/hello", "-q", "1", "-m", "from bob")
            assert r.returncode == 0, f"mosquitto_pub with a certificate refused ({r.returncode}): {r.stderr}"
            try:
                got = sub.wait_for(lambda s: True, timeout=0.5)
            except AssertionError as e:
                if "process ended" in str(e):
                    raise
        assert got == "certs/hello|from bob"
        assert sub.proc.wait(timeout=10) == 0
    finally:
        sub.close()


def test_mosquitto_pub_without_or_with_a_foreign_certificate_is_refused(
    cert_server: MqttServer, quiclab_bin: Path, tmp_path: Path
) -> None:
    r = _pub(cert_server.tls_port, cert_server.ca, None, "-t", "certs/none", "-m", "x")
    assert r.returncode != 0, "mosquitto_pub without --cert must be refused"
    _wait_for_log(cert_server.log, "mqtt+tls: no client certificate; refused (client certificate required)")
    # A certificate from another CA (a second development CA) is refused too.
    mallory = _client_cert(quiclab_bin, tmp_path / "other-ca", "mallory")
    r = _pub(cert_server.tls_port, cert_server.ca, mallory, "-t", "certs/foreign", "-m", "x")
    assert r.returncode != 0, "a certificate from another CA must be refused"
    _wait_for_log(cert_server.log, "mqtt+tls: client certificate rejected")


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"mosquitto exited ({proc.returncode}):\n{log.read_text(errors='replace')}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            assert time.monotonic() < deadline, f"mosquitto not listening on {port}:\n{log.read_text()}"
            time.sleep(0.05)


def test_real_mosquitto_accepts_the_same_files(cert_server: MqttServer, quiclab_bin: Path, tmp_path: Path) -> None:
    """mosquitto with `require_certificate true` and the development CA as `cafile` takes the
    client certificate `quiclab certs --client` made, and refuses a client without one."""
    broker = require_executable("mosquitto", BROKER_HINT)
    certs = cert_server.ca.parent
    carol = _client_cert(quiclab_bin, certs, "carol")
    port = free_port("127.0.0.1")
    conf = tmp_path / "mosquitto.conf"
    lines = []
    if os.geteuid() == 0:
        lines.append("user root")  # read the 0600 keys in root's temporary directory
    lines += [
        f"listener {port} 127.0.0.1",
        f"cafile {certs / 'ca.pem'}",
        f"certfile {certs / 'cert.pem'}",
        f"keyfile {certs / 'key.pem'}",
        "require_certificate true",
        "allow_anonymous true",
    ]
    conf.write_text("\n".join(lines) + "\n")
    log = tmp_path / "mosquitto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([broker, "-c", str(conf), "-v"], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        _wait_listening(port, proc, log)
        r = _pub(port, cert_server.ca, carol, "-t", "certs/real", "-q", "1", "-m", "x")
        assert r.returncode == 0, f"mosquitto refused the certificate: {r.stderr}\n{log.read_text()}"
        r = _pub(port, cert_server.ca, None, "-t", "certs/real", "-m", "x")
        assert r.returncode != 0, "mosquitto let a client without a certificate in"
        _wait_for_log(log, "peer did not return a certificate")
    finally:
        # Only the process this test started, by its PID.
        end_process(proc)
