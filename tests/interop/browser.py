"""Headless Chromium driven over the DevTools protocol, for pages whose result takes real time
(fetch chains, a WebSocket that waits for a message).

`--dump-dom` (test_chromium.py) prints the DOM once the page's virtual time budget is spent, which
suits a page that settles by itself; a page that must wait for an outside event needs real time
and polling. Chromium is started with `--remote-debugging-port=0` and writes the port it chose
to `DevToolsActivePort` in its profile; the page target's WebSocket is then driven with the
`websockets` package (already a requirement of the suite): `Page.navigate`, `Runtime.evaluate`.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import PIP_HINT, Server, require_executable

INSTALL = "apt-get install chromium   (Debian)"

try:
    from websockets.sync.client import connect as ws_connect
except ImportError:  # pragma: no cover - reported as a failure below
    ws_connect = None


def chromium_flags(server: Server, profile: Path) -> list[str]:
    """The flags every headless run uses: a fresh profile, the server's leaf pinned by SPKI hash
    (Chromium ignores a CA file given any other way), localhost mapped to loopback."""
    return [
        "--headless",
        "--no-sandbox",  # runs as root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--ignore-certificate-errors-spki-list={server.spki}",
        "--host-resolver-rules=MAP localhost 127.0.0.1",
    ]


class Browser:
    """One headless Chromium with one page, closed (by its PID) on exit."""

    def __init__(self, server: Server, tmp_path: Path, *flags: str):
        if ws_connect is None:
            pytest.fail(f"the websockets package is not installed; install it with: {PIP_HINT}", pytrace=False)
        exe = require_executable("chromium", INSTALL, env_var="CHROMIUM_BIN")
        profile = tmp_path / "cdp-profile"
        profile.mkdir()
        self.stderr_path = tmp_path / "chromium.stderr"
        self.cmd = [exe, *chromium_flags(server, profile), "--remote-debugging-port=0", *flags, "about:blank"]
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr)
        self.ws = None
        self._next_id = 0
        try:
            port = self._devtools_port(profile / "DevToolsActivePort", 30)
            self.ws = ws_connect(self._page_ws_url(port, 15), max_size=None, open_timeout=10)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def context(self) -> str:
        tail = "\n".join(
            line for line in self.stderr_path.read_text("utf-8", "replace").splitlines() if "dbus" not in line
        )
        return f"command: {self.cmd}\nchromium stderr (tail): {tail[-3000:]}"

    def _devtools_port(self, path: Path, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"chromium exited with {self.proc.returncode} before DevTools opened\n{self.context()}")
            try:
                first = path.read_text().split("\n", 1)[0].strip()
                if first:
                    return int(first)
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.1)
        pytest.fail(f"chromium wrote no {path} within {timeout_s} s\n{self.context()}")

    def _page_ws_url(self, port: int, timeout_s: float) -> str:
        # No proxy: the DevTools endpoint is on loopback.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with opener.open(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                targets = json.load(r)
            pages = [t for t in targets if t.get("type") == "page" and "webSocketDebuggerUrl" in t]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.1)
        pytest.fail(f"chromium listed no page target within {timeout_s} s\n{self.context()}")

    def call(self, method: str, params: dict | None = None, timeout_s: float = 20) -> dict:
        """One DevTools command; events that arrive meanwhile are ignored."""
        self._next_id += 1
        my_id = self._next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no answer to {method} within {timeout_s} s\n{self.context()}")
            msg = json.loads(self.ws.recv(timeout=left))
            if msg.get("id") == my_id:
                if "error" in msg:
                    pytest.fail(f"{method} failed: {msg['error']}\n{self.context()}")
                return msg.get("result", {})

    def navigate(self, url: str) -> None:
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            pytest.fail(f"navigating to {url} failed: {result['errorText']}\n{self.context()}")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            return None
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, what: str, timeout_s: float = 30):
        """Poll `expression` until it is truthy; fail with the page's text if it never is."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        text = self.evaluate("document.body ? document.body.innerText : ''") or ""
        pytest.fail(f"timed out after {timeout_s} s waiting for {what}\npage text: {text[:3000]}\n{self.context()}")

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass
            self.ws = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._stderr.close()
