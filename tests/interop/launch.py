"""Start `quiclab serve` and read its banner: the one place the interop fixtures do it."""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

# How long the server may take to print its banner (it creates certificates on first start).
BANNER_TIMEOUT_S = 30


@dataclasses.dataclass
class Launched:
    proc: subprocess.Popen
    banner: str  # everything up to and including the SPKI line
    log: Path  # the server's stderr


def launch_serve(quiclab_bin: Path, workdir: Path, args: list[str], env_extra: dict[str, str] | None = None) -> Launched:
    """Run `quiclab serve ARGS` in `workdir` (stderr to workdir/server.log, RUST_LOG=info unless
    set, NO_COLOR) and wait for its banner. Its stdout keeps being drained on a thread, so the
    server never blocks on a full pipe. Raises RuntimeError (after killing the process) if it
    exits or prints no complete banner in time."""
    log = workdir / "server.log"
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "info")
    env["NO_COLOR"] = "1"  # plain server.log (tracing-subscriber honours NO_COLOR)
    env.pop("SSLKEYLOGFILE", None)
    env.update(env_extra or {})
    cmd = [str(quiclab_bin), "serve", *args]
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file, cwd=workdir, env=env)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode("utf-8", "replace"))
        lines.put(None)

    threading.Thread(target=pump, name="quiclab-stdout", daemon=True).start()
    banner: list[str] = []
    deadline = time.monotonic() + BANNER_TIMEOUT_S
    while not any("SPKI sha256" in line for line in banner):
        remaining = deadline - time.monotonic()
        line: str | None = ""
        if remaining > 0:
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
        if line is None or remaining <= 0:
            proc.kill()
            proc.wait()
            why = f"exited with status {proc.returncode}" if line is None else f"no complete banner within {BANNER_TIMEOUT_S} s"
            raise RuntimeError(
                f"{' '.join(cmd)}: {why}\nstdout:\n{''.join(banner)}\nstderr:\n{log.read_text(errors='replace')[-3000:]}"
            )
        banner.append(line)
    return Launched(proc, "".join(banner), log)


def log_tail(log: Path, lines: int = 40) -> str:
    """The last `lines` lines of a server log, for failure messages."""
    try:
        text = log.read_text(errors="replace")
    except OSError as e:  # pragma: no cover - diagnostic only
        return f"(cannot read {log}: {e})"
    return "\n".join(text.splitlines()[-lines:])


# How long a graceful shutdown may take after SIGTERM (the server's default grace is 5 s).
SHUTDOWN_TIMEOUT_S = 15


def end_process(proc: subprocess.Popen, timeout: float = 5) -> None:
    """SIGTERM to a process this test started (only it, by its handle), then SIGKILL if it has
    not ended within `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_serve(proc: subprocess.Popen, log: Path, what: str = "quiclab") -> str | None:
    """SIGTERM to the process we started (and only to it), and wait. Returns None after a clean
    exit 0, else what went wrong (with the log's tail). A panic in the log is a failure too."""
    tail = lambda: log_tail(log)  # noqa: E731
    if proc.poll() is not None:
        return f"{what} exited during the test with status {proc.returncode}\n{tail()}"
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return f"{what} did not exit within {SHUTDOWN_TIMEOUT_S} s of SIGTERM\n{tail()}"
    if rc != 0:
        return f"{what} exited with status {rc} after SIGTERM\n{tail()}"
    if "panicked" in log.read_text(errors="replace"):
        return f"the {what} log shows a panic:\n{tail()}"
    return None
