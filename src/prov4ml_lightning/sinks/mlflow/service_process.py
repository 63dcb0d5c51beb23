"""The MLflow service process: it does a training process's MLflow work, so that process never waits.

Started once per training process by :mod:`.service` (at its first ``start_run`` on a database
store) and shared by every run and store of that process. Importing MLflow, creating and
migrating a store, creating runs, every insert, upload and model, and the runs' ends happen
here, on another core, in the order they were asked for.

Run as a script, not imported: importing the package would import torch for nothing, so it loads
``files.py``, ``rules.py``, ``store.py`` and ``sink.py`` (which import only MLflow) by path;
a model arrives as the file MLflow's pytorch flavour would write and is logged without torch
(torch is imported only for a ``log_model`` option that needs the module itself:
``MlflowSink.log_model_file``). Protocol on stdin/stdout, pickled; every request
is answered, in order:

- ``("call", store, method, args, kwargs)``: ``MlflowSink(*store).method(*args, **kwargs)``,
  the sink of each ``store = (tracking_uri, mlflow_save_dir)`` opened at its first use;
- ``("start_run", store, run_id, experiment_name, run_name, tags, description, parent, start_ms)``:
  the experiment (created when needed) and the run under the id the training process drew;
- ``("log_model_file", store, run_id, path, name, model_id, options)``: the model the training
  process saved to ``path`` (torch + cloudpickle), logged under ``model_id`` (the file becomes the
  model's ``data/model.pth``; ``options``: its keyword arguments, pickled by the training process and
  loaded here once MLflow is imported, as they may hold MLflow objects); the file is then removed;
- ``("log_staged", store, run_id, path, artifact_path, stage)``: a copy of the user's file or
  folder uploaded, then its staging folder ``stage`` removed;
- ``None`` or the end of stdin: finish what was asked, then exit.

Answers are ``("ok", result, said)`` or ``("error", text, said)``, ``said`` the ``(logger, level,
message)`` of what MLflow warned meanwhile (the training process logs them again). A reader
thread takes the requests off the pipe at once (while MLflow is still being imported), so the
training process never blocks on a full pipe; when the training process has exited, the work
goes on and the answers are dropped.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import logging
import os
import pickle
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__: list[str] = []

_HERE = Path(__file__).resolve().parent
_RETRY_BROKEN_S = 30.0  # a store that could not be opened is not tried again for this long
#: the service's CPU priority below the training's. Not SCHED_IDLE nor nice 19: an unprivileged process
#: can never raise its priority again, and the service must finish the run's end (which end_run waits
#: for) on a machine other jobs keep busy: under SCHED_IDLE a DDP test's service, behind one other busy
#: process, did not end its run within 120 s (docs/performance.md, "The whole process").
_NICENESS = 10
#: the longest the service holds its work back while the training uses every core (seconds; env
#: ``PROV4ML_SERVICE_DEFER_S``, 0: never held). See :class:`_Yield`.
_DEFER_MAX_S = 10.0
_SAMPLE_S = 0.1  # one look at the machine's and the training process's CPU
_BURST_S = 0.5  # once let through, the service works this long before it looks again
#: what a request may call on a sink (nothing else of the object is reachable from the pipe).
_CALLS = frozenset({
    "experiment_id", "create_run", "reopen_run", "end_run", "log_metrics", "log_params", "set_tags",
    "log_dataset_inputs", "log_artifact", "get_run", "get_metric_history", "search_runs", "list_artifacts",
    "find_weights",
})


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _load_direct_module() -> Any:
    """:mod:`.direct` and what it imports, without MLflow."""
    # registered under their package names first, they are found without importing the package (and torch)
    _load("prov4ml_lightning.files", _HERE.parents[1] / "files.py")
    _load("prov4ml_lightning.installs", _HERE.parents[1] / "installs.py")
    _load("prov4ml_lightning.sinks.mlflow.rules", _HERE / "rules.py")
    _load("prov4ml_lightning.sinks.mlflow.pickling", _HERE / "pickling.py")
    _load("prov4ml_lightning.sinks.mlflow.store", _HERE / "store.py")
    _load("prov4ml_lightning.sinks.mlflow.model_folder", _HERE / "model_folder.py")
    return _load("prov4ml_lightning.sinks.mlflow.direct", _HERE / "direct.py")


def _load_sink_module() -> Any:
    """:mod:`.sink` (after :func:`_load_direct_module`), then MLflow."""
    module = _load("prov4ml_lightning_service_sink", _HERE / "sink.py")
    import mlflow  # noqa: F401  (it configures its loggers when imported: the caller's handler goes on after)

    return module


class _Inbox:
    """Requests read off stdin by a thread as they come; ``None`` once stdin is closed."""

    def __init__(self, stdin: Any) -> None:
        self._stdin = stdin
        self._items: collections.deque[Any] = collections.deque()
        self._ready = threading.Condition()
        threading.Thread(target=self._read, name="prov4ml-service-inbox", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                message = pickle.load(self._stdin)
            except Exception:  # EOF: the training process closed the pipe or exited
                message = None
            with self._ready:
                self._items.append(message)
                self._ready.notify()
            if message is None:
                return

    def __len__(self) -> int:
        return len(self._items)

    def get(self) -> Any:
        with self._ready:
            while not self._items:
                self._ready.wait()
            return self._items.popleft()


class _Yield:
    """Holds the service's work back while the training uses the CPU (issue 27): on a machine whose
    cores torch's threads already use, work done "in the background" is taken from the training
    (a torch thread waiting for a core stalls the others at their next barrier), however low its
    priority. :meth:`wait` returns when a core is free (``/proc/stat``'s idle time over
    :data:`_SAMPLE_S`), when the training process is idle (its own CPU time: it is waiting, for
    this service at ``end_run`` or at its exit, for data, or is gone), or once work has been held
    :data:`_DEFER_MAX_S`; then the work runs, at ``nice``, for :data:`_BURST_S` before it looks
    again. Where ``/proc`` cannot be read it never holds anything."""

    def __init__(self, parent: int, max_s: float) -> None:
        self._parent = parent
        self._max_s = max_s
        self._passed = -1e9  # monotonic time of the last pass
        self._held_since: float | None = None
        self._catching_up = False
        self._training_idle = False  # in the last sample

    def _sample(self) -> tuple[float, float] | None:
        """(idle jiffies of the machine, CPU jiffies of the training process), or None."""
        try:
            with open("/proc/stat", "rb") as f:
                fields = f.readline().split()[1:]
            idle = float(fields[3]) + float(fields[4])  # idle + iowait
            with open(f"/proc/{self._parent}/stat", "rb") as f:
                stat = f.read()
            after = stat[stat.rindex(b")") + 2 :].split()
            busy = float(after[11]) + float(after[12])  # utime + stime
        except (OSError, ValueError, IndexError):
            return None
        return idle, busy

    def _free(self) -> bool:
        first = self._sample()
        if first is None or os.getppid() != self._parent:
            return True  # cannot tell, or the training process is gone: nothing to yield to
        time.sleep(_SAMPLE_S)
        second = self._sample()
        if second is None:
            return True
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        span = _SAMPLE_S * hz
        idle_cores = (second[0] - first[0]) / span
        training = (second[1] - first[1]) / span
        # the training idle twice in a row: it waits (for this service, for data), not a moment's
        # pause (a subprocess it runs, a file it writes)
        idle_before, self._training_idle = self._training_idle, training <= 0.2
        return idle_cores >= 0.6 or (idle_before and self._training_idle)

    def wait(self, backlog: int = 0) -> None:
        """Return when the next piece of work may run; ``backlog``: requests waiting behind it.
        Work held the longest time is not held again until the backlog is done (a training that
        never leaves a core free still has its points written, in catch-ups, not one burst per
        :data:`_DEFER_MAX_S`)."""
        now = time.monotonic()
        if self._max_s <= 0 or now - self._passed < _BURST_S or (self._catching_up and backlog):
            return
        self._catching_up = False
        if self._held_since is None:
            self._held_since = now
        while not self._free():
            if time.monotonic() - self._held_since >= self._max_s:
                self._catching_up = True
                break
        self._held_since = None
        self._passed = time.monotonic()


class _Broken(Exception):
    """A store that could not be opened a moment ago; the text is that failure's."""


class _Said(logging.Handler):
    """Collects what MLflow warns while it serves a request: ``(logger name, level, message)``."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append((record.name, record.levelno, record.getMessage()[:4000]))

    def take(self) -> list[tuple[str, int, str]]:
        out, self._records = self._records, []
        return out


def main() -> None:
    # Background work: on a busy machine the training processes get the CPU first.
    with contextlib.suppress(OSError, AttributeError):
        os.nice(_NICENESS)
    # Run as a script, this folder is sys.path[0]: its module names must not shadow real ones.
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != _HERE]
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stdout carries the answers; stray prints must not corrupt them
    inbox = _Inbox(stdin)
    answering = True
    said = _Said()

    def answer(message: tuple[str, Any]) -> None:
        nonlocal answering
        message = (*message, said.take())
        if not answering:
            return
        try:
            pickle.dump(message, stdout, protocol=pickle.HIGHEST_PROTOCOL)
            stdout.flush()
        except (OSError, ValueError):  # the training process is gone: finish the work unanswered
            answering = False

    try:  # checked and warned about by the training process (service._defer_seconds)
        max_s = float(os.environ.get("PROV4ML_SERVICE_DEFER_S", _DEFER_MAX_S))
    except ValueError:
        max_s = _DEFER_MAX_S
    if not (max_s >= 0 and max_s != float("inf")):  # NaN, infinity, negative
        max_s = _DEFER_MAX_S
    held = _Yield(os.getppid(), max_s)
    # what MLflow and the store opener warn (a half-created store replaced) goes back with the answer,
    # for the training process to log where the user sees them
    logging.getLogger("prov4ml_lightning").addHandler(said)
    failure = ""
    try:
        direct = _load_direct_module()
    except BaseException as err:
        direct, failure = None, f"the MLflow service could not load its modules: {type(err).__name__}: {err}"
    sink_module: Any = None
    direct_sinks: dict[tuple[str, str], Any] = {}  # None: the store is MLflow's to open
    sinks: dict[tuple[str, str], Any] = {}
    broken: dict[tuple[str, str], tuple[float, str]] = {}  # store -> (when, why) it could not be opened

    def mlflow_sink(store: tuple[str, str]) -> Any:
        nonlocal sink_module, failure
        if sink_module is None:
            if direct is None:
                raise RuntimeError(failure)
            try:
                sink_module = _load_sink_module()
            except BaseException as err:
                failure = f"MLflow could not be imported: {type(err).__name__}: {err}"
                raise RuntimeError(failure) from None
            logging.getLogger("mlflow").addHandler(said)
        if store not in sinks:
            when, why = broken.get(store, (0.0, ""))
            if time.monotonic() - when < _RETRY_BROKEN_S:  # opening it again would fail the same, slowly
                raise _Broken(why)
            try:
                sinks[store] = sink_module.MlflowSink(*store)
            except Exception as err:
                broken[store] = (time.monotonic(), f"{type(err).__name__}: {str(err)[:2000]}")
                raise
        return sinks[store]

    def direct_sink(store: tuple[str, str]) -> Any:
        """The store's :class:`.direct.DirectSink`, or ``None`` where MLflow opens it."""
        if direct is None:
            return None
        if store not in direct_sinks:
            try:
                direct_sinks[store] = direct.open_direct(store[0])  # artifacts go beside the database
            except Exception as err:  # a store it cannot tell about: MLflow's opening says what is wrong
                logging.getLogger(__name__).debug("direct store %s: %r", store[0], err)
                direct_sinks[store] = None
        return direct_sinks[store]

    def serve(sink: Any, kind: str, rest: list[Any]) -> Any:
        if kind == "call":
            method, args, kwargs = rest
            if method not in _CALLS:
                raise ValueError(f"unknown call {method!r}")
            if not hasattr(sink, method):
                raise direct.NeedsMlflow(method)
            result = getattr(sink, method)(*args, **kwargs)
            return len(args[1]) if method == "log_metrics" else result
        if kind == "start_run":
            run_id, experiment_name, run_name, tags, description, parent, start_ms = rest
            experiment_id = sink.experiment_id(experiment_name)
            _, name = sink.create_run_with_id(run_id, experiment_id, run_name, tags, description, parent, start_ms)
            return (experiment_id, name)
        if kind == "log_model_file":
            run_id, path, name, model_id, kwargs = rest
            return sink.log_model_file(run_id, path, name, model_id, **kwargs)
        if kind == "log_staged":
            run_id, path, artifact_path, _ = rest
            return sink.log_artifact(run_id, path, artifact_path)
        raise ValueError(f"unknown request {kind!r}")

    def handle(kind: str, store: tuple[str, str], rest: list[Any]) -> Any:
        """The request on the store's direct sink, or with MLflow where that one cannot do it."""
        sink = direct_sink(store)
        if sink is not None:
            try:
                return serve(sink, kind, rest)
            except direct.NeedsMlflow:
                pass
        return serve(mlflow_sink(store), kind, rest)

    while True:
        message = inbox.get()
        if message is None:
            return
        kind, store, *rest = message
        held.wait(len(inbox))
        try:
            if kind == "log_model_file":  # the options were pickled by the training process (service.log_model)
                rest[-1] = pickle.loads(rest[-1])  # an MLflow object among them imports MLflow's module here
            try:
                result = handle(kind, store, rest)
            finally:
                if kind == "log_staged":
                    shutil.rmtree(rest[3], ignore_errors=True)
                    with contextlib.suppress(OSError):
                        os.rmdir(os.path.dirname(rest[3]))  # the staging folder, once empty
            if kind == "log_model_file":  # kept when not logged: `prov4ml sync` logs it later
                with contextlib.suppress(OSError):
                    os.remove(rest[1])
                    os.rmdir(os.path.dirname(rest[1]))  # the staging folder, once empty
        except _Broken as err:
            answer(("error", str(err)))
        except Exception as err:
            answer(("error", f"{type(err).__name__}: {str(err)[:2000]}"))
        else:
            answer(("ok", result))


if __name__ == "__main__":
    main()
