"""A real ``mlflow server`` for tests: SQLite backend, local artifact root, served artifacts.

Use the fixtures from any test folder by importing them into its ``conftest.py``::

    from tests.mlflow_server import mlflow_server, mlflow_server_factory, mlflow_server_session  # noqa: F401

``mlflow_server`` is one server for the whole session, held by ``mlflow_server_session``
(starting one costs about 10 s on two cores); a test that kills it should leave it running
again (``restart()``), and the fixture restarts it anyway when a test left it down.
``mlflow_server_factory(tmp_path)`` starts a private one. Every wait is bounded; the server
runs in its own process group, so ``stop()`` and ``kill()`` also end the uvicorn worker it spawns.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

__all__ = ["MlflowServer", "free_port", "mlflow_server", "mlflow_server_factory", "mlflow_server_session"]

START_TIMEOUT_S = 90.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """One ``mlflow server`` process on 127.0.0.1.

    Args:
        root: folder for ``mlflow.db``, ``artifacts/`` and ``server.log``.
        port: the port (a free one when omitted); ``restart()`` reuses it.
    """

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.backend_uri = f"sqlite:///{self.root / 'mlflow.db'}"
        self.artifacts = self.root / "artifacts"
        self.log_path = self.root / "server.log"
        self.workers = 1
        self.env: dict[str, str] = {}  # extra environment of the server (a team stack's store credentials)
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self, timeout: float = 1.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=timeout) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = START_TIMEOUT_S) -> MlflowServer:
        """Start the server and wait until ``/health`` answers."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        env = {**os.environ, **self.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend_uri,
            "--artifacts-destination", str(self.artifacts),
            "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root,
                                         start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}: {self._log_tail()}")
            if self.healthy():
                return self
            time.sleep(0.2)
        self.kill()
        raise TimeoutError(f"mlflow server not healthy after {timeout:g} s: {self._log_tail()}")

    def _signal(self, sig: int, timeout: float) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # the port must be free again before a restart binds it
        deadline = time.monotonic() + 10
        while self.healthy(timeout=0.2) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.proc = None

    def stop(self, timeout: float = 15.0) -> None:
        """End the server politely (SIGTERM to its process group)."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """End the server at once (SIGKILL to its process group), as a crash would."""
        self._signal(signal.SIGKILL, 5.0)

    def restart(self, timeout: float = START_TIMEOUT_S) -> MlflowServer:
        """Start again on the same port with the same store."""
        self.stop()
        return self.start(timeout)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


@pytest.fixture(scope="session")
def mlflow_server_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


@pytest.fixture
def mlflow_server(mlflow_server_session: MlflowServer) -> MlflowServer:
    """The session's real tracking server, running (restarted if a test left it down)."""
    if not mlflow_server_session.healthy(timeout=2.0):
        mlflow_server_session.restart()
    return mlflow_server_session


@pytest.fixture
def mlflow_server_factory() -> Iterator[Callable[[Path], MlflowServer]]:
    """Start private servers: ``server = mlflow_server_factory(tmp_path / "srv")``; all stopped at teardown."""
    started: list[MlflowServer] = []

    def make(root: Path, port: int | None = None) -> MlflowServer:
        server = MlflowServer(root, port).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
