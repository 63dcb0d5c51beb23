"""Opening a run: a new MLflow run, an offline one when the server is unreachable, or an earlier
run reopened (resume, validate/test after fit), which picks up what its earlier sessions left.

:func:`open_recorder` is the core's whole opening; the front doors call it through
``prov4ml_lightning.runs.open_run``, which plugs capture, ranks and system metrics in.
"""

from __future__ import annotations

import getpass
import logging
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prov4ml_lightning.errors import Prov4MLInputError, Prov4MLWarning, TrackingUnavailableError, warn
from prov4ml_lightning.records import RunInfo
from prov4ml_lightning.redact import redact_url
from prov4ml_lightning.sinks.mlflow.guard import TrackingGuard
from prov4ml_lightning.sinks.mlflow.rules import MLFLOW_TAG_USER
from prov4ml_lightning.sinks.mlflow.service import ServiceSink, get_service, wait_at_exit
from prov4ml_lightning.tracking import registry
from prov4ml_lightning.tracking import validation as v
from prov4ml_lightning.tracking.config import RunConfig
from prov4ml_lightning.tracking.identity import IDENTITY_ENV
from prov4ml_lightning.tracking.journal import journal_path, read_journal
from prov4ml_lightning.tracking.recorder import RunRecorder
from prov4ml_lightning.tracking.writer import read_sidecar

__all__ = ["check_writable", "open_recorder", "resume"]

log = logging.getLogger(__name__)


def open_recorder(config: RunConfig, *, run_id: str | None = None,
                  prepare: Callable[[RunRecorder], None] | None = None) -> RunRecorder:
    """Open (or, with ``run_id``, reopen) a run and make it the current one.

    ``prepare(run)`` runs before the run becomes current (the front doors' plug-ins); a run it
    fails on never becomes current.

    Raises:
        RunAlreadyActiveError: a run is open and ``config.nested`` is false.
        Prov4MLInputError: the provenance folder is unusable.
    """
    call = "start_run"
    prov_dir = Path(config.provenance_save_dir).resolve()
    check_writable(prov_dir, call)

    from prov4ml_lightning.sinks.mlflow.rules import (
        generate_run_name,
        is_database_uri,
        resolve_tracking_uri,
        source_tags,
    )

    uri = resolve_tracking_uri(config.tracking_uri, config.mlflow_save_dir)
    _announce_environment_store(config, uri, call)
    str_tags = {str(k): v.param_text(val, "start_run(tags=...)", str(k)) for k, val in (config.tags or {}).items()}
    # MLflow's runs.user_id is taken from this tag when the run is created (its UI's "User", `attributes.user_id`
    # in searches); the other source tags follow once the code is captured
    create_tags = {MLFLOW_TAG_USER: _user(), **str_tags}

    def make(parent: Any) -> RunRecorder:
        start = time.time()
        nonlocal run_id
        run_name = config.run_name
        reopened = run_id is not None
        parent_offline = parent is not None and getattr(parent.sink, "offline", False)
        # A database store: MLflow's import, the store's creation and migration and the run's
        # creation go to this process's MLflow service (sinks/mlflow/service.py); a server is asked here.
        service = get_service() if is_database_uri(uri) else None
        sink: Any
        if service is not None:
            registry.at_exit(wait_at_exit)  # the script's exit lets the service finish (bounded)
            sink = ServiceSink(service, uri, config.mlflow_save_dir, prov_dir)
        else:
            from prov4ml_lightning.sinks.mlflow.sink import MlflowSink

            sink = TrackingGuard(MlflowSink(uri, config.mlflow_save_dir))
        deferred = False
        if run_id is None:
            try:
                if parent_offline:
                    raise TrackingUnavailableError("the parent run is offline")
                if service is not None:  # the id is drawn here; the service creates the run under it
                    run_id, experiment_id, deferred = uuid.uuid4().hex, "", True
                    run_name = run_name or str_tags.get("mlflow.runName") or generate_run_name()
                else:
                    if not sink.available():
                        raise TrackingUnavailableError("no answer to GET /health")
                    experiment_id = sink.experiment_id(config.experiment_name)
                    run_id, run_name = sink.create_run(
                        experiment_id, run_name, create_tags, config.description,
                        parent.info.run_id if parent else None, int(start * 1000),
                    )
            except TrackingUnavailableError as err:
                # Offline: a local id now, the MLflow run later (`prov4ml sync`); never block here.
                sink.go_offline()
                run_id, experiment_id = uuid.uuid4().hex, ""
                run_name = run_name or f"offline-{run_id[:8]}"
                warn(
                    f"{call}: the MLflow tracking server {sink.public_uri} is unreachable ({err}); the run goes "
                    f"on offline as local run {run_id}: metrics and provenance are written to {prov_dir}, and "
                    f"`prov4ml sync {prov_dir}` creates the MLflow run once the server is back",
                    Prov4MLWarning,
                )
        else:
            earlier = _first_start(prov_dir, run_id) if isinstance(sink, ServiceSink) else None
            if earlier is not None:  # known locally: MLflow marks it running in the background
                sink.reopen_run_later(run_id)
            else:
                earlier = sink.reopen_run(run_id)
            experiment_id, run_name = earlier["experiment_id"], earlier["run_name"]
            if earlier.get("start_time_ms"):
                start = earlier["start_time_ms"] / 1000  # the run began with its first session
        info = RunInfo(
            run_id=run_id, experiment_name=config.experiment_name, experiment_id=experiment_id,
            run_name=run_name or run_id, namespace=config.namespace,
            tracking_uri=redact_url(uri),
            provenance_dir=str(prov_dir), start_time=start, user=_user(), tags=str_tags,
            description=config.description, parent_run_id=parent.info.run_id if parent else None,
            responsible={k: getattr(config, k) for k in IDENTITY_ENV if getattr(config, k) is not None},
        )
        if deferred:
            sink.start_run(run_id, config.experiment_name, info.run_name, create_tags, config.description,
                           info.parent_run_id, int(start * 1000),
                           on_created=lambda experiment: setattr(info, "experiment_id", experiment))
        run = RunRecorder(config, info, sink, parent=parent)
        if reopened:
            resume(run)
        if prepare is not None:
            prepare(run)
        if not reopened and not getattr(sink, "offline", False):
            # MLflow's own tags (user, source, git) from what capture found: its UI's "Created by", "Source"
            code = getattr(run.context, "code", None) or {}
            run.call_sink("set source tags", sink.set_tags, run_id, source_tags(info.user, code).items())
        return run

    run = registry.make_current(make, call, config.nested)
    log.info("prov4ml run %s started (tracking %s)", run.run_id, run.info.tracking_uri)
    return run


def _first_start(prov_dir: Path, run_id: str) -> dict[str, Any] | None:
    """What ``reopen_run`` would read from MLflow, from the run's journal in ``prov_dir`` (its
    first start event): ``experiment_id``, ``run_name``, ``start_time_ms``; ``None`` without one."""
    path = journal_path(prov_dir, run_id)
    if not path.exists():
        return None
    for event in read_journal(path):
        info = event.get("info") if event.get("event") == "start" else None
        if isinstance(info, dict) and info.get("run_name"):
            return {"experiment_id": str(info.get("experiment_id") or ""), "run_name": str(info["run_name"]),
                    "start_time_ms": int(float(info.get("start_time") or 0) * 1000) or None}
    return None


#: (MLFLOW_TRACKING_URI, mlflow_save_dir) pairs already announced by this process
_ANNOUNCED: set[tuple[str, str]] = set()


def _announce_environment_store(config: RunConfig, uri: str, call: str) -> None:
    """Warn once per process and pair of values when ``MLFLOW_TRACKING_URI`` sends the run
    elsewhere than the embedded store in the ``mlflow_save_dir`` the caller gave.

    Precedence (``sinks.mlflow.sink.resolve_tracking_uri``): ``tracking_uri``, else
    ``MLFLOW_TRACKING_URI``, else ``sqlite:///<mlflow_save_dir>/mlflow.db``. An explicit
    ``tracking_uri`` is the caller's choice and is not announced.
    """
    from prov4ml_lightning.sinks.mlflow.rules import default_tracking_uri

    env = os.environ.get("MLFLOW_TRACKING_URI")
    # (uri is the variable's value made absolute when it is a relative sqlite:/// path)
    if (config.tracking_uri or not env or (uri != env and not _same_sqlite(uri, env))
            or _same_sqlite(env, default_tracking_uri(config.mlflow_save_dir))):
        return  # (the last: the variable names the embedded store itself, as an MLFlowLogger beside us may)
    save_dir = str(Path(config.mlflow_save_dir).resolve())
    if (env, save_dir) in _ANNOUNCED:
        return
    _ANNOUNCED.add((env, save_dir))
    warn(
        f"{call}: MLFLOW_TRACKING_URI={redact_url(env)} is set, so the run goes to that MLflow store and not to "
        f"the embedded store in mlflow_save_dir={save_dir!r}; pass tracking_uri=... to choose the store "
        "explicitly, or unset MLFLOW_TRACKING_URI to use mlflow_save_dir",
        Prov4MLWarning,
    )


def _same_sqlite(a: str, b: str) -> bool:
    """Whether two tracking URIs name the same SQLite file (``sqlite:///o3/mlflow.db`` is relative to
    the current folder, ``sqlite:////abs/o3/mlflow.db`` absolute)."""
    from prov4ml_lightning.sinks.mlflow.rules import sqlite_file

    file_a, file_b = sqlite_file(a), sqlite_file(b)
    if file_a is None or file_b is None:
        return a == b
    return file_a.resolve() == file_b.resolve()


def resume(run: RunRecorder) -> None:
    """A reopened run picks up what its earlier sessions left in the provenance folder: the series
    summaries from the metric sidecar (so series entities count every point and steps go on),
    the model versions, and the PROV document, whose records the next document carries over (see
    ``provenance.merge_previous``). Sets the run's session number: the processes that opened it
    (start events in its journal, this one included; a process reopening the run for ``test``
    after ``fit`` stays in its session), numbered in the order they first opened it."""
    doc = run.provenance_dir / f"provgraph_{run.run_id}.json"
    if doc.exists():
        run.previous_document = doc.read_text(encoding="utf-8")
    events = read_journal(run.journal.path)
    processes = list(dict.fromkeys(e.get("process") or f"{e.get('host')}:{e.get('pid')}:{i}"
                                   for i, e in enumerate(events) if e.get("event") == "start"))
    run.session = processes.index(registry.PROCESS_KEY) + 1 if registry.PROCESS_KEY in processes else max(
        1, len(processes))
    known: dict[str, Any] = {}
    for e in events:  # the params earlier sessions logged: a same value is not logged twice
        if e.get("event") == "params" and isinstance(e.get("params"), dict):
            known.update(e["params"])
            run.mlflow_only_params.update(str(k) for k, _ in e.get("mlflow", []) if k not in e["params"])
    run.earlier_params = known
    run.earlier_models = Counter(str(e["record"]["name"]) for e in events
                                 if e.get("event") == "model" and isinstance(e.get("record"), dict))
    run.earlier_artifacts = {(str(r.get("kind", "artifact")), str(r["name"])): (str(r.get("local_path")),
                                                                                  str(r.get("sha256")))
                             for e in events if e.get("event") == "artifact"
                             and isinstance(r := e.get("record"), dict) and "name" in r}
    run.replay(read_sidecar(run.writer.sidecar))


def check_writable(path: Path, call: str) -> None:
    """Create ``path`` if needed and prove it takes a real write.

    Raises:
        Prov4MLInputError: it cannot be created or written.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise Prov4MLInputError(f"{call}: provenance_save_dir {str(path)!r} cannot be created ({err})") from err
    if not os.access(path, os.W_OK):
        raise Prov4MLInputError(f"{call}: provenance_save_dir {str(path)!r} is not writable")
    try:  # os.access does not see a full disk or a read-only mount for root: try a real write
        with tempfile.TemporaryFile(dir=path) as fh:
            fh.write(b"prov4ml")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        raise Prov4MLInputError(f"{call}: provenance_save_dir {str(path)!r} is not writable ({err})") from err


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"
