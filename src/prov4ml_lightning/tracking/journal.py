"""Append-only journal of a run's non-metric events, so a killed run can be recovered.

``journal_<run_id>.jsonl`` sits next to the metric sidecar ``metrics_<run_id>.csv`` in the
provenance folder. Each line is one JSON object with ``event`` and ``time`` (seconds since the
epoch) and the event's data; metric points are not journaled (the sidecar has them).

Events, in the order a run writes them:

=================== ==========================================================================
``start``           ``info`` (the :class:`RunInfo`, tracking URI already redacted), ``pid``,
                    ``host``, ``software_version``, ``formats``, ``offline``, ``mlflow_save_dir``,
                    ``metrics_file``
``params``          ``params`` (key -> value as recorded in PROV, long values whole) and
                    ``mlflow`` (the ``[key, text]`` pairs sent to MLflow)
``tags``            ``tags`` (key -> text)
``artifact``        ``record`` (an :class:`ArtifactRecord`), ``artifact_path``, ``upload``
``model``           ``record`` (a :class:`ModelRecord`)
``activity_start``  ``record`` (an :class:`ActivityRecord`)
``activity_end``    ``ident``, ``end_time``, ``attributes``
``entity``          ``entity`` (an extra entity: kind, type, name, label, attributes, relation)
``entity_update``   ``kind``, ``name``, ``attributes`` (restated: a dataset's fingerprint, a
                    checkpoint's ``best``) and ``prov_name`` when the entity is renamed
``end``             ``status``, ``end_time`` (the run ended normally; nothing to recover)
``recovered``       ``status``, ``end_time`` (written by :func:`prov4ml_lightning.recovery.recover.recover`)
``synced``          ``mlflow_run_id``, ``tracking_uri`` (written by :mod:`prov4ml_lightning.recovery.sync`)
=================== ==========================================================================

Durability: every line is written with one ``write`` straight to the operating system, so it
survives the death of the process (``SIGKILL``, a segfault, the OOM killer); it is
``fsync``-ed to the disk only when the journal is closed at ``end_run`` (a power cut may lose the
lines of the last seconds of a running job, never lines of an ended run). Events are rare (a
run writes tens to hundreds of lines), so the cost is one small write per ``log_param`` call.
A full disk cuts the file back to its last whole line (:class:`~prov4ml_lightning.files.RecordFile`);
the run's journal holds a 64 KiB spare file (``.journal_<run_id>.jsonl.reserve``) that it gives up
then, so the run's last events (its ``end``) still fit, and ``prov4ml recover`` finds the status.

The journal holds what the PROV document holds and nothing else: the tracking URI is the
redacted one, and captured environment and command lines arrive already redacted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prov4ml_lightning.errors import Prov4MLWarning, warn
from prov4ml_lightning.files import RecordFile

__all__ = ["JOURNAL_PREFIX", "Journal", "ends_without_newline", "journal_path", "read_journal"]

log = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal_"


def journal_path(provenance_dir: str | os.PathLike[str], run_id: str) -> Path:
    """Where the journal of ``run_id`` lives."""
    return Path(provenance_dir) / f"{JOURNAL_PREFIX}{run_id}.jsonl"


def _jsonable(value: Any) -> Any:
    """JSON for what ``json`` cannot encode by itself: dataclasses, paths, enums, tensors, sets."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    return str(value)


class Journal:
    """Appends events to a run's journal file; a failing disk warns once and the run goes on.

    Args:
        path: the ``journal_<run_id>.jsonl`` file (appended to when it exists, e.g. on resume).
        reserve: bytes held in a spare file while the journal is open and given up when the disk
            fills, so the last events (the run's end) still fit (:class:`~prov4ml_lightning.files.RecordFile`).

    Raises:
        OSError: the file cannot be opened (``start_run`` turns this into a clear error).
    """

    def __init__(self, path: Path, reserve: int = 0) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file = RecordFile(path, reserve)
        self._warned = False
        self.lost = 0  # events the disk did not take
        if self._file.ends_mid_record():  # a killed writer left half a line: start ours on a line of its own
            with contextlib.suppress(OSError):
                self._file.append(b"\n")

    def write(self, event: str, **data: Any) -> bool:
        """Append one event line (one ``write``: the line is whole in the file or not there at all);
        whether it was written."""
        line = json.dumps({"event": event, "time": time.time(), **data}, default=_jsonable,
                          ensure_ascii=False, allow_nan=True)
        with self._lock:
            if self._file.closed:
                return False
            try:
                self._file.append((line + "\n").encode("utf-8", "surrogatepass"))
                return True
            except OSError as err:  # disk full: the in-memory run is intact, only crash safety suffers
                self.lost += 1
                if not self._warned:
                    self._warned = True
                    warn(f"prov4ml: could not append to the run journal {self.path} ({err}); the run goes "
                         "on, but a crash now could not be recovered from disk", Prov4MLWarning)
                return False

    def close(self) -> None:
        """``fsync`` and close; idempotent."""
        with self._lock:
            try:
                self._file.close()
            except OSError as err:
                log.warning("prov4ml: could not sync the run journal %s (%s)", self.path, err)


def ends_without_newline(path: Path) -> bool:
    """Whether ``path`` exists, is not empty and its last byte is not a newline."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return False
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except FileNotFoundError:
        return False


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        yield from enumerate(fh, start=1)


def read_journal(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The events of a journal, in order.

    A process killed in the middle of a write leaves a partial last line: it is skipped. Any
    other unreadable line is skipped with a :class:`Prov4MLWarning` naming it.
    """
    p = Path(path)
    events: list[dict[str, Any]] = []
    lines = list(_iter_lines(p))
    for number, line in lines:
        if not line.strip():
            continue
        try:
            event = json.loads(line, parse_constant=lambda c: {"NaN": math.nan, "Infinity": math.inf,
                                                                 "-Infinity": -math.inf}[c])
        except json.JSONDecodeError:
            if number == len(lines) and not line.endswith("\n"):
                log.info("prov4ml: skipping the partial last line of %s (the process died while writing it)", p)
            else:
                warn(f"prov4ml: {p}:{number} is cut short or not JSON (a process died while writing it?); "
                     "skipped", Prov4MLWarning)
            continue
        if isinstance(event, dict) and "event" in event:
            events.append(event)
    return events
