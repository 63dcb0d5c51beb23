"""The one process-wide current run, guarded by an ``RLock`` (not a per-thread stack).

A metric logged from any thread lands in the same run. Nothing starts a run implicitly, and an
``atexit`` hook ends a run the user forgot. Every kind of run (a recorder, a rank's part, a
silent run) becomes current through :func:`make_current` and leaves through :func:`release`.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from prov4ml_lightning.errors import NoActiveRunError, RunAlreadyActiveError

__all__ = ["PROCESS_KEY", "closing", "current_run", "make_current", "release", "require_run"]

log = logging.getLogger(__name__)

R = TypeVar("R")

#: identifies this process among the sessions of a run (a pid alone is reused, and repeats on other hosts)
PROCESS_KEY = uuid.uuid4().hex

_lock = threading.RLock()
_current: Any = None


def current_run() -> Any:
    """The open run of this process, or ``None``."""
    return _current


def require_run(call: str) -> Any:
    """The open run, or a :class:`NoActiveRunError` naming ``call``."""
    run = _current
    if run is None:
        raise NoActiveRunError(f"{call}: no run is open; call prov4ml.start_run(...) first")
    return run


def make_current(make: Callable[[Any], R], call: str, nested: bool = False) -> R:
    """Make ``make(parent)`` the current run; ``parent`` is the run open now, which only a
    ``nested`` run may have. ``make`` runs under the lock: a run it fails to build never becomes current.

    Raises:
        RunAlreadyActiveError: a run is open and ``nested`` is false.
    """
    global _current
    with _lock:
        if _current is not None and not nested:
            raise RunAlreadyActiveError(f"{call}: run {_current.run_id} is still open; call end_run() first "
                                        "or pass nested=True to start a child run")
        run = make(_current)
        _current = run
        return run


def release(run: Any) -> None:
    """``run`` has ended: its parent is the current run again."""
    global _current
    with _lock:
        if _current is run:
            _current = run.parent


@contextmanager
def closing(run: Any, status: str) -> Iterator[None]:
    """Hold the lock while ``run`` ends: a child still open ends first (with ``status``), and
    ``run`` is released afterwards, even when ending it fails."""
    with _lock:
        while _current is not None and _current is not run and run in _current.ancestors():
            _current.end(status)
        try:
            yield
        finally:
            release(run)


#: called at interpreter exit once every run has ended (the MLflow service's last wait)
_EXIT_HOOKS: list[Callable[[], None]] = []


def at_exit(fn: Callable[[], None]) -> None:
    """Call ``fn()`` at interpreter exit after the runs still open were ended (once per ``fn``)."""
    if fn not in _EXIT_HOOKS:
        _EXIT_HOOKS.append(fn)


@atexit.register
def _end_forgotten_runs() -> None:
    """End runs still open at interpreter exit; FAILED when the program died of an exception."""
    status = "FAILED" if getattr(sys, "last_type", None) is not None else "FINISHED"
    while _current is not None:
        run = _current
        log.warning("prov4ml: run %s was not ended; ending it as %s at exit", run.run_id, status)
        try:
            run.end(status)
        except Exception:
            log.exception("prov4ml: could not end run %s at exit", run.run_id)
            break
    for fn in _EXIT_HOOKS:
        try:
            fn()
        except BaseException:  # a Ctrl-C during the wait, a failing hook: the exit goes on
            log.exception("prov4ml: exit hook %r failed", fn)
