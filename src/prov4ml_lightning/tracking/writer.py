"""Background writer: moves buffered points off the training thread into the sidecar file and MLflow;
and :func:`read_sidecar`, the one reader of that file (resume, rank parts, recovery, sync).

The caller's ``log_metric`` only appends a tuple to a list. This thread wakes every
``flush_interval`` seconds (or sooner when the buffer fills), converts tensors to floats, updates
the series summaries, appends the points to the run's sidecar CSV (which doubles as a crash
journal) and sends them to MLflow in batches. A failing MLflow store warns once; unsent points
are retried with backoff and, if the store never comes back, spilled to a file for
``prov4ml sync``.
"""

from __future__ import annotations

import collections
import csv
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch

from prov4ml_lightning.errors import Prov4MLWarning, TrackingUnavailableError, warn
from prov4ml_lightning.tracking.journal import ends_without_newline
from prov4ml_lightning.tracking.validation import to_floats

__all__ = ["SIDECAR_HEADER", "MetricWriter", "Point", "read_sidecar"]

log = logging.getLogger(__name__)

# (key, context value, mlflow key, step, value, timestamp_ms)
Point = tuple[str, str, str, int, Any, int]

#: the columns of the metric sidecar CSV, one row per point
SIDECAR_HEADER = ["key", "context", "mlflow_key", "step", "value", "timestamp_ms"]
_MAX_PENDING = 200_000  # unsent MLflow points kept in memory before spilling to disk


class MetricWriter(threading.Thread):
    """Drains a recorder's point buffer on a daemon thread.

    Args:
        take: returns and clears the recorder's buffered points (called under its lock).
        summarise: receives converted points to update series summaries.
        sidecar: path of the CSV holding every point.
        send: ships ``(mlflow_key, value, ts, step)`` points to MLflow; may raise, or return a
            ``Future`` of a delivery that happens later (one failing with
            :class:`TrackingUnavailableError` gives the points back).
        spill: path where points MLflow never accepted are written at close.
        flush_interval: seconds between background drains.
    """

    def __init__(
        self,
        take: Callable[[], list[Point]],
        summarise: Callable[[list[Point]], None],
        sidecar: Path,
        send: Callable[[list[tuple[str, float, int, int]]], None],
        spill: Path,
        flush_interval: float = 2.0,
    ) -> None:
        super().__init__(name="prov4ml-writer", daemon=True)
        self._take = take
        self._summarise = summarise
        self._send = send
        self.spill = spill
        self.sidecar = sidecar
        self.flush_interval = flush_interval
        self._wake = threading.Event()
        self._stop_event = threading.Event()
        self._io_lock = threading.Lock()
        self._pending: list[tuple[str, float, int, int]] = []
        # batches handed over whose delivery failed later (the MLflow service died): taken back by
        # the next flush; appended on the answer thread, which must not wait for the I/O lock
        self._returned: collections.deque[list[tuple[str, float, int, int]]] = collections.deque()
        self._failures = 0
        self._retry_at = 0.0
        self._warned = False
        self._sidecar_warned = False
        self.points_written = 0
        self.points_sent = 0
        new = not sidecar.exists()
        cut_short = ends_without_newline(sidecar)
        self._file = open(sidecar, "a", newline="", encoding="utf-8")  # noqa: SIM115 - kept open
        if cut_short:  # a killed run left half a row: start the next on a line of its own
            self._file.write("\r\n")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(SIDECAR_HEADER)
            self._file.flush()

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        wait = self.flush_interval
        while not self._stop_event.is_set():
            self._wake.wait(wait)
            self._wake.clear()
            if self._stop_event.is_set():
                break
            started = time.monotonic()
            try:
                self.flush(final=False)
            except Exception:  # the training must go on; flush() at end_run re-raises nothing either
                log.exception("prov4ml background writer failed")
            # The interval runs from the start of a drain: when MLflow is behind, the next batch goes
            # at once instead of idling a full interval, so end_run inherits a small backlog.
            wait = max(0.0, self.flush_interval - (time.monotonic() - started))

    def flush(self, final: bool = True) -> None:
        """Drain everything buffered so far. ``final`` also retries MLflow now and spills leftovers."""
        with self._io_lock:
            points = _to_floats(self._take())
            if points:
                self._summarise(points)
                self._pending.extend((p[2], p[4], p[5], p[3]) for p in points)
                self.points_written += len(points)
                self._write_sidecar(points)
            self._push(force=final)
            if final and self._pending:
                self._spill_pending()

    def close(self) -> None:
        self._stop_event.set()
        self._wake.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=30)
        self.flush(final=True)
        try:
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as err:
            log.warning("prov4ml: could not sync %s to disk (%s)", self.sidecar, err)

    def _write_sidecar(self, points: list[Point]) -> None:
        # A full disk must not cost the points their way to MLflow and PROV: warn once, go on.
        try:
            self._csv.writerows(points)
            self._file.flush()
        except OSError as err:
            if not self._sidecar_warned:
                self._sidecar_warned = True
                warn(f"prov4ml: could not append metric points to {self.sidecar} ({err}); they still go "
                     "to MLflow and the PROV summary", Prov4MLWarning)

    # -- MLflow delivery -----------------------------------------------------------------
    def _push(self, force: bool) -> None:
        while self._returned:  # oldest first, before what is pending now
            returned = self._returned.pop()
            self._pending[:0] = returned
            self.points_sent -= len(returned)
        if not self._pending or (not force and time.monotonic() < self._retry_at):
            return
        batch, self._pending = self._pending, []
        try:
            handed = self._send(batch)
        except Exception as err:
            self._pending = batch + self._pending
            self._failures += 1
            self._retry_at = time.monotonic() + min(60.0, 2.0**self._failures)
            if not self._warned and not isinstance(err, TrackingUnavailableError):  # the guard warned
                self._warned = True
                warn(
                    f"prov4ml: MLflow rejected or could not take metrics ({err!r}); training goes on, "
                    "points are kept and retried, and spilled to disk if MLflow does not come back.",
                    Prov4MLWarning,
                )
            if len(self._pending) > _MAX_PENDING:
                self._spill_pending()
            return
        self.points_sent += len(batch)
        self._failures = 0
        if isinstance(handed, Future):  # handed over, not written yet (the MLflow service)
            handed.add_done_callback(functools.partial(self._delivered, batch))

    def _delivered(self, batch: list[tuple[str, float, int, int]], handed: Future[Any]) -> None:
        """A batch's delivery is known: one that never reached the store (the MLflow service died
        with it) is taken back, retried and, at ``end_run``, spilled with the rest."""
        if isinstance(handed.exception(), TrackingUnavailableError):
            self._returned.append(batch)

    def _spill_pending(self) -> None:
        new = not self.spill.exists()
        try:
            with open(self.spill, "a", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                if new:
                    writer.writerow(["mlflow_key", "value", "timestamp_ms", "step"])
                writer.writerows(self._pending)
        except OSError as err:
            warn(f"prov4ml: could not save {len(self._pending)} metric points MLflow did not take to "
                 f"{self.spill} ({err}); the sidecar {self.sidecar.name} still has them for `prov4ml sync`",
                 Prov4MLWarning)
            return
        log.warning("prov4ml: %d metric points MLflow did not accept were saved to %s",
                    len(self._pending), self.spill)
        self._pending = []


def _to_floats(points: list[Point]) -> list[Point]:
    """Points with their tensor values turned into floats (:func:`to_floats`: one sync per device and
    dtype per flush); other values stay as they are."""
    tensors = [i for i, p in enumerate(points) if type(p[4]) is not float and isinstance(p[4], torch.Tensor)]
    if not tensors:
        return points
    out = list(points)
    for i, value in zip(tensors, to_floats([points[i][4] for i in tensors])):
        key, ctx, mkey, step, _, ts = out[i]
        out[i] = (key, ctx, mkey, step, value, ts)
    return out


def read_sidecar(path: str | os.PathLike[str]) -> list[tuple[str, str, str, int, float, int]]:
    """The metric points of a sidecar CSV (:data:`Point` with float values); rows a crash cut short are skipped."""
    p = Path(path)
    if not p.exists():
        return []
    points = []
    with open(p, newline="", encoding="utf-8", errors="replace") as fh:
        for row in csv.reader(fh):
            if row == SIDECAR_HEADER or len(row) != len(SIDECAR_HEADER):
                continue
            key, ctx, mkey, step, value, ts = row
            try:
                points.append((key, ctx, mkey, int(step), float(value), int(ts)))
            except ValueError:
                log.info("prov4ml: skipping a cut-short row of %s", p)
    return points
