"""MLflow in a service process: the training process hands its MLflow work over and goes on.

Importing MLflow (about 1.5 s of CPU), creating and migrating a new store (about 2 s of
alembic), creating the run, the inserts and ``log_model``'s requirement checks all cost CPU;
done in the training process they hold the GIL, delay the first batch and slow the first epochs.
So for a database store (the embedded SQLite default, PostgreSQL, ...) each training process
starts one service process (``service_process.py``, which loads only ``sink.py`` and MLflow) at
its first ``start_run`` and every run of the process (nested runs, sweep trials, several stores)
hands it its MLflow calls over a pipe. The service does them in order on another core.

- The training process draws the run id (and a model's id) itself, so its files and PROV
  records are named at once; the service creates the run and the model under those ids.
- Writes return at once. A write the service fails warns (:class:`Prov4MLWarning`) as soon as
  its answer arrives; the record stays in the journal, the metric sidecar and the PROV files,
  from which ``prov4ml sync`` completes MLflow. A store that cannot be opened or a run that
  cannot be created is announced the same way and the run goes on offline.
- Reads (``get_run`` ...) and :meth:`ServiceSink.run_created` wait for their answer, GIL released.
- Requests are written straight into the pipe (enlarged to 1 MiB; the service reads it into
  memory as it comes, even while it imports MLflow), so nothing handed over is lost when the
  training process exits: the service finishes the work, then exits on its own.
- A file the user may change or delete later (an artifact outside the run's provenance folder,
  a checkpoint) is copied into the provenance folder's ``.prov4ml_staging`` first; the service
  uploads the copy and removes it. ``log_model`` saves the model there (``torch.save`` with
  cloudpickle, as MLflow's pytorch flavour does) and the service logs that file as the model, without torch.

:func:`wait_for_mlflow` waits until the service has done everything handed to it so far.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import uuid
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from prov4ml_lightning.errors import Prov4MLError, Prov4MLWarning, TrackingUnavailableError, warn
from prov4ml_lightning.files import copy_files, folder_files
from prov4ml_lightning.sinks.mlflow.pickling import local_modules_by_value

__all__ = ["MlflowService", "ServiceSink", "get_service", "save_model_file", "wait_at_exit", "wait_for_mlflow"]

log = logging.getLogger(__name__)

_SCRIPT = Path(__file__).resolve().with_name("service_process.py")
_PIPE_BYTES = 1 << 20
_EXIT_WAIT_S = 120.0  # how long the exit of the training process waits for the service
STAGING = ".prov4ml_staging"  # folder in the provenance folder for files handed to the service


#: the longest the service holds its work back while the training uses every core (seconds, >= 0;
#: 0: never held); read by ``service_process._Yield``
DEFER_ENV = "PROV4ML_SERVICE_DEFER_S"
DEFER_DEFAULT_S = 10.0


def _defer_seconds() -> float:
    """``$PROV4ML_SERVICE_DEFER_S`` as a finite number of seconds >= 0; anything else is warned about
    and the default is used (a NaN or infinity would leave the MLflow view's lag unbounded)."""
    text = os.environ.get(DEFER_ENV)
    if text is None or not text.strip():
        return DEFER_DEFAULT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and value >= 0:
        return value
    warn(f"start_run: {DEFER_ENV}={text!r} is not a number of seconds >= 0 (0: the MLflow service never holds "
         f"its work back); using {DEFER_DEFAULT_S:g}", Prov4MLWarning)
    return DEFER_DEFAULT_S


class MlflowService:
    """The service process of this training process and its pipe (see the module docstring)."""

    def __init__(self) -> None:
        env = dict(os.environ)
        # The service must import what this process imports (a path added at run time included).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env[DEFER_ENV] = str(_defer_seconds())
        self._proc = subprocess.Popen(
            [sys.executable, str(_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env,
            start_new_session=True,  # a Ctrl-C for the training does not stop it half-way through its work
        )
        self.pid = self._proc.pid
        assert self._proc.stdin is not None and self._proc.stdout is not None
        for pipe in (self._proc.stdin, self._proc.stdout):
            # not Linux, or over the system's limit: the default 64 KiB it is
            with contextlib.suppress(ImportError, AttributeError, OSError):
                import fcntl

                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        self._lock = threading.Lock()  # one request at a time into the pipe, in the order of _pending
        # (answer, error handler, what it is: the request's kind or the sink method it calls)
        self._pending: deque[tuple[Future[Any], Callable[[str], None] | None, str]] = deque()
        self.dead: str | None = None  # why the service stopped, once it has
        self._sinks: weakref.WeakSet[ServiceSink] = weakref.WeakSet()  # the runs told when it dies
        threading.Thread(target=self._read, name="prov4ml-service-answers", daemon=True).start()
        log.info("prov4ml: MLflow service process %d started", self.pid)

    def request(self, message: tuple[Any, ...], on_error: Callable[[str], None] | None = None) -> Future[Any]:
        """Hand ``message`` over; its future holds the answer. ``on_error(text)`` is called (on the
        answer thread) when the service fails it; the future then holds a :class:`Prov4MLError`."""
        future: Future[Any] = Future()
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if self.dead is None:
                try:
                    self._proc.stdin.write(payload)  # type: ignore[union-attr]
                    self._proc.stdin.flush()  # type: ignore[union-attr]
                    what = str(message[2]) if message[0] == "call" else str(message[0])
                    self._pending.append((future, on_error, what))
                    return future
                except (OSError, ValueError):  # the pipe is closed: the service is gone
                    pass
        self._died()
        future.set_exception(TrackingUnavailableError(self.dead or "the MLflow service process stopped"))
        return future

    def watch(self, sink: ServiceSink) -> None:
        """Tell ``sink`` (:meth:`ServiceSink.service_died`) if this service dies."""
        with self._lock:
            self._sinks.add(sink)

    def _read(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        while True:
            try:
                status, detail, said = pickle.load(stdout)
            except Exception:  # EOF: the service was killed or crashed (it never exits while we run)
                self._died()
                return
            for name, level, text in said:  # MLflow's warnings, where the user sees them
                logging.getLogger(name).log(level, "%s", text)
            with self._lock:
                future, on_error, _ = self._pending.popleft() if self._pending else (None, None, "")
            if future is None:
                continue
            if status == "ok":
                future.set_result(detail)
                continue
            if on_error is not None:
                try:
                    on_error(str(detail))
                except Exception:  # a failing handler must not stop the answers
                    log.exception("prov4ml: handling an MLflow service error")
            future.set_exception(Prov4MLError(f"MLflow (service process): {detail}"))

    def _died(self) -> None:
        """The service is gone (its pipe closed): once, say so for the runs it was writing, which
        go on without MLflow, then fail what it had not answered (the callers keep that work)."""
        with self._lock:
            if self.dead is not None:
                return
            self.dead = self._death()
            pending = list(self._pending)
            self._pending.clear()
            sinks = list(self._sinks)
        affected = [sink for sink in sinks if sink.service_died(self.dead)]
        if affected:
            runs = "; ".join(f"run {sink.run_id} (`prov4ml sync {sink.provenance_dir}`)" for sink in affected)
            warn(f"prov4ml: {self.dead}; MLflow's copy of {runs} is incomplete. Training goes on: the journal, the "
                 "metric sidecar, the PROV files and mlflow_unsent_<run id>.csv in the provenance folder keep "
                 "everything MLflow has not taken, and once the run has ended that command completes MLflow",
                 Prov4MLWarning)
        else:
            log.info("prov4ml: %s", self.dead)
        for future, _, _ in pending:
            if not future.done():
                future.set_exception(TrackingUnavailableError(self.dead))

    def _death(self) -> str:
        """How the service process ended, for a person."""
        try:
            code = self._proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return f"the MLflow service process {self.pid} stopped answering (its pipe closed)"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"the MLflow service process {self.pid} was killed ({signal.Signals(-code).name})"
        return f"the MLflow service process {self.pid} stopped (exit status {code})"

    def pending(self) -> str:
        """The requests handed over and not answered yet, counted by kind (``""``: none)."""
        with self._lock:
            counts = Counter(what for _, _, what in self._pending)
        return ", ".join(f"{n} {what}" for what, n in counts.most_common())

    def wait(self, timeout: float | None = None) -> bool:
        """Wait (GIL released) until every request handed over so far is answered; whether they were."""
        with self._lock:
            last = self._pending[-1][0] if self._pending else None
        if last is None:
            return True
        try:
            last.exception(timeout=timeout)
        except FutureTimeout:
            return False
        return True


_SERVICE: MlflowService | None = None
_SERVICE_LOCK = threading.Lock()


def get_service() -> MlflowService | None:
    """This process's service, started when needed; ``None`` when it cannot start (the caller
    then uses MLflow in-process)."""
    global _SERVICE
    with _SERVICE_LOCK:
        if _SERVICE is None or _SERVICE.dead is not None:
            try:
                _SERVICE = MlflowService()
            except (OSError, ValueError) as err:
                log.info("prov4ml: the MLflow service process could not start (%s); MLflow runs in-process", err)
                _SERVICE = None
        return _SERVICE


_ABANDONED: list[MlflowService] = []


def _after_fork_in_child() -> None:
    # A forked child (a DataLoader worker) starts its own service if it ever needs one. Its copy of
    # the parent's is kept, neither used nor closed: closing a pipe takes the pipe object's lock,
    # which the parent's answer thread (not copied by fork) may have held at the fork, forever.
    global _SERVICE
    if _SERVICE is not None:
        _ABANDONED.append(_SERVICE)
    _SERVICE = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def wait_for_mlflow(timeout: float | None = None) -> bool:
    """Wait until MLflow holds everything this process's runs have handed to the service so far
    (their metrics, params, tags, files, models and ends); whether it does within ``timeout``
    seconds (``None``: no limit). Returns ``True`` at once when there is no service."""
    service = _SERVICE
    return True if service is None else service.wait(timeout)


def wait_at_exit() -> None:
    """At interpreter exit (after the runs ended): give the service up to ``_EXIT_WAIT_S`` to finish
    what this process handed it, so MLflow is complete when the script returns and a failure
    (a broken store) is still warned. Past that, it goes on alone and says so."""
    service = _SERVICE
    if service is None or service.dead is not None or not service._pending:
        return
    log.info("prov4ml: waiting for the MLflow service process %d to finish %d request(s)", service.pid,
             len(service._pending))
    if not service.wait(_EXIT_WAIT_S):
        warn(f"prov4ml: the MLflow service process {service.pid} is still writing after {_EXIT_WAIT_S:.0f} "
             "s; it finishes in the background (`prov4ml sync` completes MLflow if it is cut short)",
             Prov4MLWarning)


def _headline(text: str) -> str:
    """The first line of an error (SQLAlchemy appends the SQL and a link on the next ones)."""
    first = text.strip().splitlines()[0] if text.strip() else text
    return first[:500]


def _unstage(stage: Path) -> None:
    """Remove a staged copy and the staging folder once it is empty."""
    shutil.rmtree(stage, ignore_errors=True)
    with contextlib.suppress(OSError):
        stage.parent.rmdir()


def save_model_file(model: Any, path: Path) -> str | None:
    """Save ``model`` whole, as MLflow's pytorch flavour does (``torch.save`` with cloudpickle), for
    the service to log; the classes of ``__main__`` and of the user's own modules travel by value
    (:func:`~prov4ml_lightning.sinks.mlflow.pickling.local_modules_by_value`). Return torch's
    version when the file is the module as MLflow's pickle format holds it (the service then logs
    the file without torch), ``None`` for a ``ScriptModule`` (MLflow saves those with ``torch.jit``)."""
    import cloudpickle
    import torch

    with local_modules_by_value():
        for attempt in range(5):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.save(model, path, pickle_module=cloudpickle)
                return None if isinstance(model, torch.jit.ScriptModule) else str(torch.__version__)
            except (RuntimeError, FileNotFoundError):
                # the service removes the staging folder once it is empty (after an upload): it may have
                # done so between the mkdir and the save; the folder is made again
                if path.parent.is_dir() or attempt == 4:
                    raise


class ServiceSink:
    """A :class:`~prov4ml_lightning.sinks.base.TrackingSink` over the MLflow service process.

    Args:
        service: this process's :class:`MlflowService`.
        tracking_uri: a database store (``sqlite:///...``, ``postgresql://...``).
        mlflow_save_dir: the embedded store's folder.
        provenance_dir: the run's provenance folder (files in it are the run's own and are
            uploaded as they are; anything else is copied first, see the module docstring).
    """

    def __init__(self, service: MlflowService, tracking_uri: str, mlflow_save_dir: str | os.PathLike[str],
                 provenance_dir: Path) -> None:
        self.service = service
        self.tracking_uri = tracking_uri
        self.mlflow_save_dir = Path(mlflow_save_dir).resolve()
        self.provenance_dir = provenance_dir
        self.offline = False
        self.failure: str | None = None  # why this run has no MLflow run, once known
        self._store = (tracking_uri, str(self.mlflow_save_dir))
        self._created: Future[Any] | None = None
        self._warned: set[str] = set()
        self.run_id: str | None = None  # the run this sink writes (known at start_run / reopen)
        self._ended = False  # MLflow ended the run: the service's death no longer concerns it
        self._lost: str | None = None  # the service died before MLflow had all of the run

    @property
    def public_uri(self) -> str:
        from prov4ml_lightning.redact import redact_url

        return redact_url(self.tracking_uri)

    # -- the pipe -------------------------------------------------------------------------------
    def _send(self, kind: str, *body: Any, what: str | None) -> Future[Any]:
        """Hand a request over; ``what`` names a write whose failure warns (reads raise instead)."""
        if self.failure is not None:
            raise TrackingUnavailableError(self.failure)
        on_error = None if what is None else (lambda text: self._failed(what, text))
        return self.service.request((kind, self._store, *body), on_error)

    def _call(self, method: str, *args: Any, what: str | None, **kwargs: Any) -> Future[Any]:
        return self._send("call", method, args, kwargs, what=what)

    def _failed(self, what: str, text: str) -> None:
        log.info("prov4ml: MLflow service could not %s: %s", what, text)
        text = _headline(text)
        if what in self._warned or self.failure is not None:  # announced once (a run never created: at start)
            return
        self._warned.add(what)
        warn(f"prov4ml: MLflow could not {what} ({text}); the run goes on, and the record stays in the "
             f"journal, metric sidecar and PROV files in {self.provenance_dir}, from which "
             f"`prov4ml sync {self.provenance_dir}` completes MLflow", Prov4MLWarning)

    def _answer(self, future: Future[Any]) -> Any:
        return future.result()  # waits with the GIL released

    def _bind(self, run_id: str) -> None:
        """This sink writes run ``run_id``: told if the service dies."""
        self.run_id = run_id
        self.service.watch(self)

    def service_died(self, reason: str) -> bool:
        """The service stopped (called once, by :class:`MlflowService`): every call fails at once
        from now on (the callers keep the data for ``prov4ml sync``). Whether this sink's run was
        affected: started, not ended in MLflow, and not already offline (which was warned)."""
        if self.run_id is None or self._ended or self.failure is not None:
            return False
        self._lost = reason
        self.failure = f"{reason}; `prov4ml sync {self.provenance_dir}` completes MLflow once the run has ended"
        return True

    def incomplete(self) -> str:
        return self._lost or ""

    # -- state ----------------------------------------------------------------------------------
    def available(self) -> bool:
        return self.failure is None and self.service.dead is None

    def go_offline(self) -> None:
        """The run has no MLflow run: every call from now on fails at once."""
        self.offline = True
        self.failure = self.failure or "the run has no MLflow run (it went offline)"

    def recheck(self) -> None:
        pass

    def flush(self, timeout: float | None = None) -> bool:
        return self.service.wait(timeout)

    def pending(self) -> str:
        return self.service.pending()

    def run_created(self, timeout: float | None = None) -> bool:
        if self._created is None:
            return not self.offline
        try:
            self._created.result(timeout=timeout)
        except Exception:
            return False
        return True

    # -- run lifecycle --------------------------------------------------------------------------
    def start_run(self, run_id: str, experiment_name: str, run_name: str, tags: Mapping[str, str],
                  description: str | None, parent_run_id: str | None, start_time_ms: int,
                  on_created: Callable[[str], None]) -> None:
        """Have the service create experiment ``experiment_name`` (when needed) and run ``run_id``;
        ``on_created(experiment_id)`` is called once it has. A failure warns as soon as it is
        known and makes the run offline (every later call fails at once; ``prov4ml sync``)."""
        def failed(text: str) -> None:
            log.info("prov4ml: MLflow service could not create run %s: %s", run_id, text)
            self.failure = f"the MLflow store {self.public_uri} could not take run {run_id}: {_headline(text)}"
            self.offline = True
            warn(f"start_run: {self.failure}; the run goes on offline: metrics and provenance are kept in "
                 f"{self.provenance_dir}, and `prov4ml sync {self.provenance_dir}` writes them to MLflow "
                 "once the store works", Prov4MLWarning)

        self._bind(run_id)
        self._created = self.service.request(
            ("start_run", self._store, run_id, experiment_name, run_name, dict(tags), description, parent_run_id,
             start_time_ms), failed)
        self._created.add_done_callback(
            lambda f: on_created(str(f.result()[0])) if f.exception() is None else None)

    def experiment_id(self, name: str) -> str:
        return str(self._answer(self._call("experiment_id", name, what=None)))

    def create_run(self, experiment_id: str, run_name: str | None, tags: Mapping[str, str],
                   description: str | None, parent_run_id: str | None, start_time_ms: int) -> tuple[str, str]:
        run_id, name = self._answer(self._call("create_run", experiment_id, run_name, dict(tags), description,
                                               parent_run_id, start_time_ms, what=None))
        return str(run_id), str(name)

    def reopen_run(self, run_id: str) -> dict[str, Any]:
        self._bind(run_id)
        return dict(self._answer(self._call("reopen_run", run_id, what=None)))

    def reopen_run_later(self, run_id: str) -> None:
        """Have the service mark ``run_id`` running again (a reopened run whose journal already says
        what :meth:`reopen_run` would read); a failure warns."""
        self._bind(run_id)
        self._call("reopen_run", run_id, what="reopen the run")

    def end_run(self, run_id: str, status: str, end_time_ms: int) -> None:
        future = self._call("end_run", run_id, status, end_time_ms, what="end the run")
        future.add_done_callback(lambda f: setattr(self, "_ended", f.exception() is None))

    # -- data -----------------------------------------------------------------------------------
    def log_metrics(self, run_id: str, points: Sequence[tuple[str, float, int, int]]) -> Future[Any]:
        """Hand the points over; the returned future fails with :class:`TrackingUnavailableError`
        when the service died before MLflow had them (the metric writer then keeps them)."""
        return self._call("log_metrics", run_id, list(points), what="log metrics")

    def log_params(self, run_id: str, params: Iterable[tuple[str, str]]) -> None:
        self._call("log_params", run_id, list(params), what="log params")

    def set_tags(self, run_id: str, tags: Iterable[tuple[str, str]]) -> None:
        self._call("set_tags", run_id, list(tags), what="set tags")

    def log_dataset_inputs(self, run_id: str, datasets: Sequence[Mapping[str, Any]]) -> None:
        self._call("log_dataset_inputs", run_id, [dict(d) for d in datasets], what="log dataset inputs")

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        path = Path(local_path)
        what = f"upload {path.name}"
        if self.failure is not None:
            raise TrackingUnavailableError(self.failure)
        try:
            ours = path.resolve().is_relative_to(self.provenance_dir.resolve())
        except OSError:
            ours = False
        if ours:
            self._call("log_artifact", run_id, str(path), artifact_path, what=what)
            return
        # The user's file: they may change or delete it once this returns, so the service gets a copy.
        staging = self.provenance_dir / STAGING
        stage = staging / uuid.uuid4().hex
        copy = stage / path.name
        try:
            stage.mkdir(parents=True)
            if path.is_dir():  # the files the recorder hashed: links followed, loops refused, bounded
                copy_files(folder_files(path, call=f"log_artifact({str(path)!r})", refuse=self.provenance_dir), copy)
            else:
                shutil.copy2(path, copy)
        except BaseException:  # a full disk, a refused folder, Ctrl-C: no copy is left behind
            shutil.rmtree(stage, ignore_errors=True)
            with contextlib.suppress(OSError):
                staging.rmdir()  # once empty
            raise
        future = self._send("log_staged", run_id, str(copy), artifact_path, str(stage), what=what)
        # a service that died before the upload leaves its copy: removed here (`prov4ml sync` uploads
        # the user's file itself while it still has the sha256 the run recorded)
        future.add_done_callback(lambda f: _unstage(stage) if isinstance(f.exception(), TrackingUnavailableError)
                                 else None)

    def log_model(self, run_id: str, model: Any, name: str, *, pip_requirements: list[str] | None = None,
                  params: Mapping[str, Any] | None = None, **kwargs: Any) -> tuple[str, str | None]:
        """Save ``model`` to a file here (the only part the caller waits for) and hand it to the
        service, which logs it as MLflow model ``models:/<model_id>``; return that URI and id."""
        if self.failure is not None:
            raise TrackingUnavailableError(self.failure)
        model_id = f"m-{uuid.uuid4().hex}"
        path = self.provenance_dir / STAGING / f"{model_id}.pth"
        pytorch_version = save_model_file(model, path)
        # pickled here, unpickled by the service once MLflow is imported: the options may hold MLflow
        # objects (a signature), and the service's reader thread must not import MLflow while its main
        # thread does (one of them would see a half-imported module)
        options = pickle.dumps({"pytorch_version": pytorch_version, "pip_requirements": pip_requirements,
                                "params": dict(params or {}), **kwargs}, protocol=pickle.HIGHEST_PROTOCOL)
        self._send("log_model_file", run_id, str(path), name, model_id, options, what=f"log model {name!r}")
        return f"models:/{model_id}", model_id

    # -- reading back -----------------------------------------------------------------------------
    def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self._answer(self._call("get_run", run_id, what=None))  # type: ignore[no-any-return]

    def get_metric_history(self, run_id: str, key: str) -> set[tuple[int, int]]:
        return set(self._answer(self._call("get_metric_history", run_id, key, what=None)))

    def search_runs(self, experiment_id: str, tag: str, value: str) -> list[str]:
        return list(self._answer(self._call("search_runs", experiment_id, tag, value, what=None)))

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        return list(self._answer(self._call("list_artifacts", run_id, path, what=None)))

    def find_weights(self, digest: str) -> list[dict[str, Any]]:
        return list(self._answer(self._call("find_weights", digest, what=None)))
