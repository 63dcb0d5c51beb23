"""Moves MLflow metric inserts into a helper process once they start to cost the training time.

A database-backed MLflow store (``sqlite:``, ``postgresql:``, ...) runs in the caller's process:
``log_batch`` builds one SQLAlchemy object per point, about 50 us of Python each (13-22k points/s
on a laptop core). On the writer thread that work holds the GIL, and the training thread, whose
every torch call drops and retakes the GIL, waits for it: the run slows by about as much as the
writer works. So :class:`MetricUploader`, the metric writer's ``send``, times its in-process
sends, and once they have cost more than ``budget`` (2%) of the run's wall time it starts a child
(``upload_child.py``; it loads only ``sink.py`` and MLflow, not torch) and ships
later batches there over a pipe. The writer thread then waits on the pipe with the GIL released.

Short or sparse runs (tests, notebooks) never start the child. Until the child is ready, and for
good if it cannot start or dies, batches go through the in-process sink as before. A batch the
child's MLflow rejects raises in the writer like an in-process failure, so retry and spill are
unchanged. Remote (HTTP) stores are left in-process: the server does the database work there.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

from prov4ml_lightning.errors import Prov4MLError
from prov4ml_lightning.sinks.base import TrackingSink

__all__ = ["MetricUploader"]

log = logging.getLogger(__name__)

_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_MIN_ELAPSED_S = 1.0  # judge the cost over at least this much of the run
_STOP_TIMEOUT_S = 30.0
_CHILD = Path(__file__).resolve().with_name("upload_child.py")


def _is_database_uri(uri: str) -> bool:
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    return scheme in _DB_SCHEMES


class MetricUploader:
    """Sends ``(mlflow_key, value, timestamp_ms, step)`` batches of one run to MLflow.

    Args:
        sink: the run's sink; ``sink.log_metrics(run_id, points)`` is the in-process path, and its
            ``tracking_uri``/``mlflow_save_dir`` attributes tell the child where to write.
        run_id: the MLflow run.
        budget: share of the run's wall time in-process sends may take before the child starts;
            ``None`` never starts one.
    """

    def __init__(self, sink: TrackingSink, run_id: str, *, budget: float | None = 0.02) -> None:
        self._sink = sink
        self._run_id = run_id
        self.budget = budget
        uri = getattr(sink, "tracking_uri", None)
        save_dir = getattr(sink, "mlflow_save_dir", None)
        self._target = (uri, str(save_dir)) if isinstance(uri, str) and save_dir is not None else None
        self._t0 = time.monotonic()
        self.in_process_s = 0.0
        self.points_via_child = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._dead = False
        self._closing = False

    @property
    def eligible(self) -> bool:
        """Whether this run's store is one a child process can take the load of."""
        return (self.budget is not None and self._target is not None and _is_database_uri(self._target[0])
                and not getattr(self._sink, "offline", False))

    @property
    def child_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __call__(self, points: list[tuple[str, float, int, int]]) -> None:
        if self._ready.is_set() and not self._dead:
            self._send_to_child(points)
            return
        t = time.perf_counter()
        self._sink.log_metrics(self._run_id, points)
        self.in_process_s += time.perf_counter() - t
        if self._proc is None and not self._closing and self.eligible:
            elapsed = time.monotonic() - self._t0
            if elapsed >= _MIN_ELAPSED_S and self.in_process_s > self.budget * elapsed:  # type: ignore[operator]
                self.start()

    # -- the child ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the child now (normally :meth:`__call__` decides); batches use it once it is ready."""
        if self._proc is not None or self._target is None:
            return
        env = dict(os.environ)
        # The child must import what this process imports (a path added at run time included).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, str(_CHILD)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, env=env,
            )
            assert self._proc.stdin is not None
            # Credentials in a database URI go down the pipe, never on a command line.
            pickle.dump(self._target, self._proc.stdin)
            self._proc.stdin.flush()
        except (OSError, ValueError) as err:
            log.info("prov4ml: metric upload process could not start (%s); uploading in-process", err)
            self._dead = True
            return
        threading.Thread(target=self._await_ready, name="prov4ml-uploader-start", daemon=True).start()
        log.info("prov4ml: MLflow metric uploads moved to process %d", self._proc.pid)

    def _await_ready(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        try:
            reply = pickle.load(proc.stdout)
        except Exception:  # EOF: it died (or was stopped) while starting
            reply = ("error", "exited while starting")
        if reply[0] == "ready":
            self._ready.set()
        else:
            log.info("prov4ml: metric upload process failed to start (%s); uploading in-process", reply[1])
            self._dead = True

    def _send_to_child(self, points: list[tuple[str, float, int, int]]) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            pickle.dump((self._run_id, points), proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            proc.stdin.flush()
            status, detail = pickle.load(proc.stdout)
        except Exception as err:
            self._dead = True
            proc.kill()
            raise Prov4MLError(f"the MLflow upload process stopped ({err!r}); uploading in-process from now on"
                               ) from None
        if status != "ok":
            raise Prov4MLError(f"MLflow log_batch (upload process): {detail}")
        self.points_via_child += len(points)

    def close(self) -> None:
        """Stop the child (after the writer's last batch); safe to call twice."""
        self._closing = True
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if self._ready.is_set() and not self._dead:
                # Every batch was acknowledged after MLflow committed it, so nothing is left to wait
                # for: the child's interpreter shutdown (about a second with MLflow) is reaped off-thread.
                assert proc.stdin is not None
                pickle.dump(None, proc.stdin)
                proc.stdin.close()
            else:
                proc.kill()
        except Exception as err:
            log.info("prov4ml: stopping the metric upload process: %r", err)
            proc.kill()
        threading.Thread(target=_reap, args=(proc,), name="prov4ml-uploader-stop", daemon=True).start()
        self._dead = True


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
