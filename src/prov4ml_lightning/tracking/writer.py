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
import contextlib
import csv
import functools
import io
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
from prov4ml_lightning.files import RecordFile
from prov4ml_lightning.tracking.journal import ends_without_newline
from prov4ml_lightning.tracking.validation import to_floats

__all__ = ["SIDECAR_HEADER", "MetricWriter", "Point", "read_sidecar"]

log = logging.getLogger(__name__)

# (key, context value, mlflow key, step, value, timestamp_ms)
Point = tuple[str, str, str, int, Any, int]

#: the columns of the metric sidecar CSV, one row per point
SIDECAR_HEADER = ["key", "context", "mlflow_key", "step", "value", "timestamp_ms"]
_MAX_PENDING = 200_000  # unsent MLflow points kept in memory before spilling to disk
_MAX_UNWRITTEN = 1_000_000  # points kept in memory while the disk is full, before the oldest are lost
_SIDECAR_BLOCK = 1000  # rows per write (~50 KB): a full disk cuts the sidecar at the last whole block


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
        #: points the sidecar could not take yet (a full disk), written first by the next drain
        self.unwritten: list[Point] = []
        #: points the sidecar never got: ``(key, context) -> [count, first step, last step]``
        self.lost: dict[tuple[str, str], list[int]] = {}
        self._file = RecordFile(sidecar)
        # a killed run left half a row: the next starts on a line of its own; a new file starts with the header
        self._prefix = (b"\r\n" if self._file.ends_mid_record() else
                        _csv_bytes([SIDECAR_HEADER]) if self._file.size == 0 else b"")
        with contextlib.suppress(OSError):  # a full disk: it goes with the first block written
            self._write_prefix()

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
            if points or self.unwritten:
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
        with self._io_lock:
            for point in self.unwritten:  # the last drain could not write them either: the disk is still full
                self._count_lost(point)
            self.unwritten = []
        try:
            self._file.close()
        except OSError as err:
            log.warning("prov4ml: could not sync %s to disk (%s)", self.sidecar, err)

    @property
    def points_lost(self) -> int:
        """Points the sidecar never got (counted at :meth:`close`, and beyond the memory bound before)."""
        return sum(n for n, _, _ in self.lost.values())

    def describe_lost(self) -> str:
        """``"loss (training) steps 5712-99999"``, one entry per series with lost points."""
        return ", ".join(f"{key} ({ctx}) {'step' if lo == hi else 'steps'} {lo if lo == hi else f'{lo}-{hi}'}"
                         f"{'' if n == hi - lo + 1 else f' ({n} points)'}"
                         for (key, ctx), (n, lo, hi) in self.lost.items())

    def _write_sidecar(self, points: list[Point]) -> None:
        # Whole blocks of rows, each written at once or not at all: a full disk leaves the file on a row
        # boundary, and the rows it did not take are kept and written first by the next drain.
        rows = self.unwritten + points if self.unwritten else points
        self.unwritten = []
        for start in range(0, len(rows), _SIDECAR_BLOCK):
            try:
                self._write_prefix()
                self._file.append(_csv_bytes(rows[start : start + _SIDECAR_BLOCK]))
            except OSError as err:
                self.unwritten = rows[start:]
                if not self._sidecar_warned:
                    self._sidecar_warned = True
                    warn(f"prov4ml: could not append metric points to {self.sidecar} ({err}); training goes on, "
                         "they are kept in memory and written as soon as the disk takes them, and they still go "
                         "to MLflow and the PROV summary", Prov4MLWarning)
                break
        if len(self.unwritten) > _MAX_UNWRITTEN:  # a disk full for long: the oldest points give way
            for point in self.unwritten[: len(self.unwritten) - _MAX_UNWRITTEN]:
                self._count_lost(point)
            self.unwritten = self.unwritten[-_MAX_UNWRITTEN:]

    def _write_prefix(self) -> None:
        if self._prefix:
            self._file.append(self._prefix)
            self._prefix = b""

    def _count_lost(self, point: Point) -> None:
        key, ctx, _, step = point[0], point[1], point[2], point[3]
        entry = self.lost.get((key, ctx))
        if entry is None:
            self.lost[(key, ctx)] = [1, step, step]
        else:
            entry[0] += 1
            entry[1], entry[2] = min(entry[1], step), max(entry[2], step)

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
        try:
            spill = RecordFile(self.spill)
            try:
                spill.append(_csv_bytes(([["mlflow_key", "value", "timestamp_ms", "step"]] if spill.size == 0 else [])
                                        + self._pending))
            finally:
                spill.close()
        except OSError as err:
            warn(f"prov4ml: could not save {len(self._pending)} metric points MLflow did not take to "
                 f"{self.spill} ({err}); the sidecar {self.sidecar.name} still has them for `prov4ml sync`",
                 Prov4MLWarning)
            return
        log.warning("prov4ml: %d metric points MLflow did not accept were saved to %s",
                    len(self._pending), self.spill)
        self._pending = []


def _csv_bytes(rows: list[Any]) -> bytes:
    """``rows`` as the sidecar's CSV text (``\\r\\n`` after each row), encoded."""
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue().encode("utf-8", "surrogatepass")


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
    """The metric points of a sidecar CSV (:data:`Point` with float values); rows a crash cut short are
    skipped (a last row without its line end: the process died while writing it)."""
    p = Path(path)
    if not p.exists():
        return []
    cut = ends_without_newline(p)
    points = []
    with open(p, newline="", encoding="utf-8", errors="replace") as fh:
        rows = csv.reader(fh)
        row = next(rows, None)
        while row is not None:
            try:
                following = next(rows, None)
            except csv.Error:  # a cut inside a quoted field
                following = None
            if following is None and cut:
                log.info("prov4ml: skipping the cut-short last row of %s", p)
                break
            if row != SIDECAR_HEADER and len(row) == len(SIDECAR_HEADER):
                key, ctx, mkey, step, value, ts = row
                try:
                    points.append((key, ctx, mkey, int(step), float(value), int(ts)))
                except ValueError:
                    log.info("prov4ml: skipping a cut-short row of %s", p)
            row = following
    return points
