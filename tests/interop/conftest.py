"""Shared fixtures for the external-peer interop suite.

One quiclab server is started per pytest session (`serve --listen 127.0.0.1:0` with a fresh
certificate directory) and every test talks to it with a peer that is not quiclab's own code:
curl_cffi (libcurl + ngtcp2), aioquic, Debian's ngtcp2 client and headless Chromium.

A missing peer is a FAILED test with the command that installs it, never a skip: a green run
must mean every peer really spoke to the server.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from launch import launch_serve, log_tail, stop_serve

REPO_ROOT = Path(__file__).resolve().parents[2]
INTEROP_DIR = Path(__file__).resolve().parent

# A cold debug build takes about 75 s on 2 cores; leave room for a slow machine.
BUILD_TIMEOUT_S = 1200

PIP_HINT = "pip install -r tests/interop/requirements.txt (or run: bash tests/interop/run.sh)"


@dataclasses.dataclass(frozen=True)
class Server:
    """What the banner of a running `quiclab serve` told us."""

    udp_addr: str  # "127.0.0.1:PORT": HTTP/3 (ALPN h3)
    tcp_addr: str  # "127.0.0.1:PORT": TLS with ALPN h2 and http/1.1
    udp_port: int
    tcp_port: int
    ca: Path  # PEM of the development CA that signed the leaf
    spki: str  # base64 SHA-256 of the leaf's SubjectPublicKeyInfo (Chromium's pin format)
    certs_dir: Path
    log: Path  # the server's stderr
    banner: str
    keylog: Path  # SSLKEYLOGFILE the server writes (QUIC and TLS/TCP secrets)

    @property
    def h3_origin(self) -> str:
        """https://localhost:PORT for HTTP/3 (connect to 127.0.0.1, SNI/authority localhost)."""
        return f"https://localhost:{self.udp_port}"

    @property
    def tcp_origin(self) -> str:
        return f"https://localhost:{self.tcp_port}"

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log, lines)


def pattern(n: int) -> bytes:
    """The body of /bytes/N: byte i == i % 251."""
    block = bytes(range(251))
    reps, rest = divmod(n, 251)
    return block * reps + block[:rest]


def assert_pattern(body: bytes, n: int) -> None:
    """Assert that body is exactly /bytes/N, naming the first wrong byte if it is not."""
    assert len(body) == n, f"expected {n} bytes, got {len(body)}"
    if body != pattern(n):
        first = next(i for i, b in enumerate(body) if b != i % 251)
        raise AssertionError(
            f"byte {first} is {body[first]}, expected {first % 251} (byte i must be i % 251)"
        )


def require_executable(name: str, install_hint: str, env_var: str | None = None) -> str:
    """Path of an external tool, or a FAILED test that says how to install it."""
    if env_var and os.environ.get(env_var):
        path = os.environ[env_var]
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            pytest.fail(f"{env_var}={path} is not an executable file", pytrace=False)
        return path
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` not found on PATH; install it with: {install_hint}", pytrace=False)
    return path


def _locate_binary() -> Path:
    override = os.environ.get("QUICLAB_BIN")
    if override:
        path = Path(override)
        if not path.is_file():
            pytest.exit(f"QUICLAB_BIN={override} does not exist", returncode=4)
        return path
    path = REPO_ROOT / "target" / "debug" / "quiclab"
    if not path.is_file():
        cargo = shutil.which("cargo")
        if cargo is None:
            pytest.exit(f"{path} is missing and cargo is not on PATH", returncode=4)
        print(f"\n{path} is missing: running cargo build", file=sys.stderr)
        subprocess.run(
            [cargo, "build", "--bin", "quiclab"],
            cwd=REPO_ROOT,
            check=True,
            stdin=subprocess.DEVNULL,
            timeout=BUILD_TIMEOUT_S,
        )
    if not path.is_file():
        pytest.exit(f"cargo build did not produce {path}", returncode=4)
    return path


_ADDR_RE = {
    "udp": re.compile(r"\(UDP (\S+?)\)"),
    "tcp": re.compile(r"\(TCP (\S+?)\)"),
    "ca": re.compile(r"^\s*CA\s+(\S+)", re.M),
    "spki": re.compile(r"SPKI sha256\s+(\S+)"),
}


def _port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


@pytest.fixture(scope="session")
def quiclab_bin() -> Path:
    return _locate_binary()


@pytest.fixture(scope="session")
def server(quiclab_bin: Path, tmp_path_factory: pytest.TempPathFactory):
    """A running `quiclab serve --listen 127.0.0.1:0`, stopped with SIGTERM at the end.

    The teardown fails the session if the server does not exit 0 after SIGTERM (graceful
    shutdown is part of what the suite checks)."""
    workdir = tmp_path_factory.mktemp("quiclab")
    certs = workdir / "certs"
    keylog = workdir / "keys.log"  # the tshark test decrypts captures with it
    args = [
        "--listen", "127.0.0.1:0",
        "--mqtt-tcp", "127.0.0.1:0",
        "--mqtt-tls", "127.0.0.1:0",
        "--mqtt-ws", "127.0.0.1:0",  # plaintext MQTT over WebSocket (test_paho_ws.py)
        "--certs", str(certs),
    ]
    try:
        launched = launch_serve(quiclab_bin, workdir, args, {"SSLKEYLOGFILE": str(keylog)})
        found = {k: r.search(launched.banner) for k, r in _ADDR_RE.items()}
        missing = [k for k, m in found.items() if m is None]
        if missing:
            launched.proc.kill()
            raise RuntimeError(f"banner lacks {missing}:\n{launched.banner}")
    except RuntimeError as e:
        pytest.exit(f"quiclab serve did not start: {e}", returncode=3)
    proc, text, log = launched.proc, launched.banner, launched.log
    udp = found["udp"].group(1)
    tcp = found["tcp"].group(1)
    ca = Path(found["ca"].group(1))
    if not ca.is_file():  # fall back to the documented location
        ca = certs / "ca.pem"
    srv = Server(
        udp_addr=udp,
        tcp_addr=tcp,
        udp_port=_port(udp),
        tcp_port=_port(tcp),
        ca=ca,
        spki=found["spki"].group(1),
        certs_dir=certs,
        log=log,
        banner=text,
        keylog=keylog,
    )
    assert srv.ca.is_file(), f"CA file {srv.ca} missing"
    yield srv

    # Graceful shutdown: SIGTERM to the PID we started, and only to it.
    problem = stop_serve(proc, srv.log)
    if problem:
        pytest.fail(problem, pytrace=False)


# ---------------------------------------------------------------------------------------------
# Extra servers with their own flags (test_zero_rtt.py, test_migration.py).


def free_port(host: str = "0.0.0.0") -> int:
    """A port free for both UDP and TCP on `host` right now (for servers that must know their port
    before they start, e.g. to advertise it as a preferred address)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no port free for both UDP and TCP")


@pytest.fixture
def spawn_server(quiclab_bin: Path, server: Server, tmp_path_factory: pytest.TempPathFactory):
    """Start extra servers: `spawn_server(listen, *flags)` runs
    `quiclab serve --listen LISTEN --certs <the session server's certs> FLAGS...` (same CA,
    RUST_LOG=info, SSLKEYLOGFILE) and returns its `Server`. Each is stopped with SIGTERM (to its
    own PID) when the test ends and must exit 0."""
    started: list[tuple[subprocess.Popen, Path]] = []  # (process, its stderr log)

    def spawn(listen: str, *flags: str) -> Server:
        workdir = tmp_path_factory.mktemp("quiclab-extra")
        keylog = workdir / "keys.log"
        args = ["--listen", listen, "--mqtt-tcp", "127.0.0.1:0", "--mqtt-tls", "127.0.0.1:0"]
        args += ["--certs", str(server.certs_dir), *flags]
        try:
            launched = launch_serve(quiclab_bin, workdir, args, {"SSLKEYLOGFILE": str(keylog)})
        except RuntimeError as e:
            pytest.fail(str(e), pytrace=False)
        proc, text, log = launched.proc, launched.banner, launched.log
        started.append((proc, log))
        found = {k: r.search(text) for k, r in _ADDR_RE.items()}
        assert all(found.values()), f"banner lacks {[k for k, m in found.items() if m is None]}:\n{text}"
        udp, tcp = found["udp"].group(1), found["tcp"].group(1)
        srv = Server(
            udp_addr=udp,
            tcp_addr=tcp,
            udp_port=_port(udp),
            tcp_port=_port(tcp),
            ca=server.ca,
            spki=found["spki"].group(1),
            certs_dir=server.certs_dir,
            log=log,
            banner=text,
            keylog=keylog,
        )
        return srv

    yield spawn

    failures = [p for proc, log in started if (p := stop_serve(proc, log, "extra server"))]
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)
