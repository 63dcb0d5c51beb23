"""End the current run cleanly when the process is asked to stop (``SIGTERM``), on request only.

A library must not take over a process's signals by itself, so nothing here runs unless the
user calls :func:`install_signal_handlers`. It then makes ``SIGTERM`` (by default) behave like
``Ctrl+C`` does for ``KeyboardInterrupt``: any Python handler installed before is called first
(chained), then :class:`RunTerminated` is raised in the main thread. It is a ``SystemExit`` with
code ``128 + signum`` (143 for ``SIGTERM``, the shell convention), so it unwinds through ``with
prov4ml.start_run(...)`` (which ends the run ``KILLED`` and writes the PROV files), is not
swallowed by ``except Exception``, and ends the process with that code without a traceback.
A run still open when the interpreter exits is ended ``KILLED`` too.

With Lightning: ``Trainer.fit`` installs its own ``SIGTERM`` handler (``_SignalConnector``) for
the duration of the fit, and keeps any handler installed before it in the chain. Without ours,
Lightning sets ``trainer.received_sigterm`` and raises its ``SIGTERMException`` (also a
``SystemExit``) at the next batch boundary; ``Prov4MLCallback.on_exception`` then ends the run
``KILLED``. With ours installed before ``fit``, Lightning's handler runs first (it notifies other
ranks), then ours raises at once, mid-batch; the callback sees the same ``on_exception``. Both
paths end the run with its PROV files written; ``SIGKILL`` cannot be caught at all, see
:mod:`prov4ml_lightning.recovery.recover`.

Example::

    import prov4ml_lightning as prov4ml
    from prov4ml_lightning.signals import install_signal_handlers

    restore = install_signal_handlers()
    with prov4ml.start_run(...):
        train()
    restore()
"""

from __future__ import annotations

import atexit
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from prov4ml_lightning.errors import Prov4MLInputError

__all__ = ["RunTerminated", "install_signal_handlers"]

log = logging.getLogger(__name__)

_received: list[int] = []
_atexit_registered = False


class RunTerminated(SystemExit):
    """Raised in the main thread when a handled termination signal arrives; exits with ``128 + signum``."""

    #: read by ``RunRecorder.__exit__``: the run ends KILLED, not FAILED.
    prov4ml_status = "KILLED"

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"terminated by signal {signal.Signals(self.signum).name}"


def _end_runs_killed() -> None:
    # Registered when the first signal arrives, after the recorder's own atexit hook, so it runs first.
    if not _received:
        return
    from prov4ml_lightning.tracking.registry import current_run

    while (run := current_run()) is not None:
        log.warning("prov4ml: ending run %s as KILLED after signal %d", run.run_id, _received[-1])
        try:
            run.end("KILLED")
        except Exception:
            log.exception("prov4ml: could not end run %s", run.run_id)
            break


def install_signal_handlers(signals: Iterable[int] = (signal.SIGTERM,)) -> Callable[[], None]:
    """Turn ``signals`` into :class:`RunTerminated` so the current run ends ``KILLED`` with its provenance.

    Call it from the main thread (Python delivers signals there). Returns a function that puts
    the previous handlers back.

    Raises:
        Prov4MLInputError: not called from the main thread (also a ``ValueError``).
    """
    if threading.current_thread() is not threading.main_thread():
        raise Prov4MLInputError("install_signal_handlers: call it from the main thread (signals are delivered there)")
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        global _atexit_registered
        _received.append(signum)
        if not _atexit_registered:
            # registered now, when a signal came, not at install time: atexit runs its hooks last in,
            # first out, so this one runs before the recorder's (which would end the run FINISHED)
            # however the modules were imported (the package loads them on first use)
            atexit.register(_end_runs_killed)
            _atexit_registered = True
        before = previous.get(signum)
        if callable(before):
            before(signum, frame)
        raise RunTerminated(signum)

    for signum in signals:
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, handler)

    def restore() -> None:
        for signum, before in previous.items():
            if signal.getsignal(signum) is handler:
                signal.signal(signum, before if before is not None else signal.SIG_DFL)

    return restore
