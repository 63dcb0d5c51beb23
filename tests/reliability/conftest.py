"""Fixtures of the fault-injection suite: the real MLflow server and training scripts in subprocesses."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import wait_until
from tests.mlflow_server import mlflow_server, mlflow_server_factory, mlflow_server_session  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
SCRIPT_TIMEOUT_S = 120


class Script:
    """A Python script run in a subprocess, with every wait bounded."""

    def __init__(self, path: Path, cwd: Path, env: dict[str, str]) -> None:
        self.path, self.cwd, self.env = path, cwd, env
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    def run(self, *args: str, timeout: float = SCRIPT_TIMEOUT_S) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(self.path), *args], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, *args: str) -> Script:
        self.proc = subprocess.Popen([sys.executable, str(self.path), *args], cwd=self.cwd, env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Readers on threads: select() on a buffered pipe misses lines already read into the buffer,
        # and an unread stderr pipe that fills up would stall the child.
        self._stdout: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str | None] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._stdout.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self._stderr.append), daemon=True).start()
        return self

    @staticmethod
    def _pump(stream, put) -> None:
        for line in stream:
            put(line.rstrip("\n"))
        put(None)

    def wait_for(self, prefix: str, timeout: float = SCRIPT_TIMEOUT_S) -> str:
        """The first stdout line starting with ``prefix`` (fails on exit or timeout)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._stdout.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        self.kill()
        self._wait_stderr(5)  # let the stderr reader catch up with the killed child
        err = "\n".join(line for line in self._stderr if line is not None)
        pytest.fail(f"{self.path.name} never printed {prefix!r}; stdout {self.lines}; stderr {err[-3000:]}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def finish(self, timeout: float = SCRIPT_TIMEOUT_S) -> tuple[int, str, str]:
        """Wait for the exit; return ``(returncode, rest of stdout, stderr)``."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            err = "\n".join(line for line in self._stderr if line is not None)
            pytest.fail(f"{self.path.name} did not exit within {timeout} s: {err[-3000:]}")
        rest = []
        while (line := self._stdout.get(timeout=30)) is not None:
            rest.append(line)
        self.lines.extend(rest)
        self._wait_stderr(30)
        err = "\n".join(line for line in self._stderr if line is not None)
        return self.proc.returncode, "\n".join(rest), err

    def _wait_stderr(self, timeout: float) -> None:
        """Until the stderr reader has seen the end of the stream (or ``timeout`` s: report what came)."""
        with contextlib.suppress(AssertionError):
            wait_until(lambda: self._stderr and self._stderr[-1] is None, timeout, interval=0.01,
                       what=f"the end of {self.path.name}'s stderr")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def script(tmp_path: Path):
    """``script(source)`` writes a training script to ``tmp_path`` and returns a :class:`Script`."""
    made: list[Script] = []

    def make(source: str, name: str = "train.py", env: dict[str, str] | None = None, cwd: Path | None = None) -> Script:
        path = (cwd or tmp_path) / name
        path.write_text(textwrap.dedent(source))
        full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")])
        full_env.update(env or {})
        s = Script(path, cwd or tmp_path, full_env)
        made.append(s)
        return s

    yield make
    for s in made:
        s.kill()


@pytest.fixture
def measure(record_property):
    """``measure(label, **numbers)``: keep a measurement in the JUnit report and, when
    ``$PROV4ML_RELIABILITY_REPORT`` names a file, append it there as a JSON line (docs/reliability.md
    is filled from such a file)."""
    import json

    def record(label: str, **numbers: float) -> None:
        for key, value in numbers.items():
            record_property(f"{label}.{key}", value)
        target = os.environ.get("PROV4ML_RELIABILITY_REPORT")
        if target:
            with open(target, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"label": label, **numbers}) + "\n")

    return record
