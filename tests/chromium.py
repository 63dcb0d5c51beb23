"""Headless Chromium (the Debian package) driven over the DevTools protocol, for tests that check
a page in a real browser.

The protocol runs over a pipe (``--remote-debugging-pipe``: fd 3 in, fd 4 out, one JSON message
per NUL-terminated chunk), so no port and no websocket library are needed. Tests that use it are
marked ``chromium`` and skipped, with the reason, where Chromium is not installed
(``apt-get install chromium``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

__all__ = ["Chromium", "chromium_exe", "requires_chromium"]


def chromium_exe() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


def requires_chromium(test: Any) -> Any:
    """Mark ``test`` ``chromium`` and skip it, saying why, where Chromium is not installed."""
    skip = pytest.mark.skipif(chromium_exe() is None,
                              reason="headless Chromium not installed (apt-get install chromium)")
    return pytest.mark.chromium(skip(test))


class Chromium:
    """One headless Chromium with one page; ``evaluate`` runs JavaScript in it (or in a frame of it)."""

    def __init__(self, width: int = 1400, height: int = 900) -> None:
        exe = chromium_exe()
        if exe is None:
            raise RuntimeError("Chromium is not installed")
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds() -> None:  # in the child: the pipe ends on the fds Chromium expects
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check", "--mute-audio",
             f"--window-size={width},{height}", f"--user-data-dir={self._profile.name}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime"):
            self.send(f"{domain}.enable", session=True)
        # a sandboxed iframe (MLflow's HTML artifact viewer) runs in its own process: attach to it too
        self.send("Target.setAutoAttach", session=True, autoAttach=True, waitForDebuggerOnStart=False, flatten=True)
        self.send("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    # -- protocol ------------------------------------------------------------------------------
    def _read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from Chromium")
            import select

            ready, _, _ = select.select([self._from_chrome], [], [], 0.5)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the pipe")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: bool | str = False, timeout: float = 60.0, **params: Any) -> dict[str, Any]:
        """Call ``method``: on the browser, on the page (``session=True``) or on a frame's session id."""
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session if session is True else session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    # -- page ----------------------------------------------------------------------------------
    def open(self, url: str, wait_for: str = "document.readyState === 'complete'", timeout: float = 60.0) -> None:
        self.send("Page.navigate", session=True, url=url)
        self.wait(wait_for, timeout)

    def evaluate(self, expression: str, context: str | None = None) -> Any:
        """The value of ``expression`` in the page, or in the frame whose session is ``context``."""
        params: dict[str, Any] = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        result = self.send("Runtime.evaluate", session=context or True, **params)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 60.0, context: str | None = None) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression, context)
            except RuntimeError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout} s: {expression}")
            time.sleep(0.25)

    def frame_context(self, url_prefix: str, timeout: float = 60.0) -> str:
        """The session of the out-of-process (i)frame whose URL starts with ``url_prefix``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            targets = self.send("Target.getTargets")["targetInfos"]  # also reads the events that arrived
            wanted = {t["targetId"] for t in targets if t.get("url", "").startswith(url_prefix)}
            for event in self.events:
                if event.get("method") == "Target.attachedToTarget" and \
                        event["params"]["targetInfo"]["targetId"] in wanted:
                    return event["params"]["sessionId"]
            time.sleep(0.5)
        raise TimeoutError(f"no frame with a URL starting {url_prefix!r}")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for fd in (self._to_chrome, self._from_chrome):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._profile.cleanup()
