"""Bring MLflow up to date with what a run recorded locally: ``prov4ml sync DIR``.

The local files are the reference: the journal (params, tags, artifacts, status), the metric
sidecar (every point) and the PROV files. For each run journal in the folder :func:`sync`:

1. finds the MLflow run: the run's own id; for a run started *offline* (the tracking server was
   unreachable at ``start_run``) the run tagged ``prov4ml.local_run_id=<local id>``, created in
   the same experiment the first time (the PROV document keeps the local id). A run MLflow's
   service never created (a store that could not be opened, a service killed first) is created
   then, under its own id in a database store;
2. logs the params MLflow lacks and sets the tags, the ``prov4ml.weights.<hash>`` tags included
   (later runs find the weights it produced by them: ``tracking/lineage.index_weights``);
3. sends every sidecar point MLflow lacks, compared by ``(key, step, timestamp)`` per metric,
   so points spilled to ``mlflow_unsent_<run_id>.csv``, points a ``SIGKILL`` left unsent and
   points of an offline run all arrive, and running it twice sends nothing twice; the spill
   file is removed once everything is in;
4. uploads artifacts whose upload failed (when the local file still has its recorded sha256)
   and the PROV files, the sidecar and ``long_params`` under ``prov/``/``params/``;
5. ends the MLflow run with the recorded status (``FAILED`` plus the tag ``prov4ml.crashed=true``
   for a recovered run), and appends a ``synced`` event to the journal.

Before that, an embedded SQLite store a killed process left half-created is moved aside and
replaced by a new one (``SyncedRun.notes`` says where it went; ``sinks.mlflow.store``); a store
MLflow cannot open that holds records is left alone and the run is skipped, with the reason on
one line.

A run still in progress is skipped, and so is a crashed one that was not recovered yet
(``prov4ml recover DIR`` recovers and then syncs). Models whose logging failed cannot be
replayed (the object is gone): they are reported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prov4ml_lightning.errors import Prov4MLInputError, TrackingUnavailableError
from prov4ml_lightning.files import sha256_path
from prov4ml_lightning.recovery.recover import (
    CRASHED,
    CRASHED_TAG,
    JournaledRun,
    load_run,
    process_alive,
    read_sidecar,
    run_journals,
    wait_for_service,
)
from prov4ml_lightning.redact import REDACTED, redact_url
from prov4ml_lightning.sinks.mlflow.guard import TrackingGuard
from prov4ml_lightning.sinks.mlflow.rules import is_database_uri
from prov4ml_lightning.sinks.mlflow.service import STAGING
from prov4ml_lightning.tracking.journal import Journal
from prov4ml_lightning.tracking.validation import STEP_MAX, STEP_MIN

__all__ = ["LOCAL_RUN_TAG", "SyncedRun", "sync", "sync_run"]

log = logging.getLogger(__name__)

#: MLflow tag linking a run created by ``sync`` to the local id its PROV document uses.
LOCAL_RUN_TAG = "prov4ml.local_run_id"
_CHUNK = 1000
_HEX_ID = re.compile(r"[0-9a-f]{32}")  # a run id the training process drew (uuid4().hex)
_SERVICE_WAIT_S = 300.0  # how long sync waits for a dead run's MLflow service to finish its work


@dataclass
class SyncedRun:
    """What :func:`sync` did for one run."""

    run_id: str
    mlflow_run_id: str | None = None
    created: bool = False
    metric_points: int = 0
    params: int = 0
    artifacts: int = 0
    status: str | None = None
    skipped: str | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was repaired on the way (a half-created store replaced)


def _tracking_uri(run: JournaledRun, override: str | None) -> str:
    if override:
        return override
    recorded = run.info.tracking_uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    # The run stored its URI through the same redactor: equal outputs mean the same store.
    if env and redact_url(env) == recorded:
        return env
    if REDACTED in recorded:
        raise Prov4MLInputError(
            f"sync: run {run.run_id} was tracked at {recorded}, whose credentials are not stored; pass "
            "tracking_uri= (--tracking-uri) or set MLFLOW_TRACKING_URI"
        )
    return recorded


def sync(directory: str | os.PathLike[str], *, tracking_uri: str | None = None,
         run_id: str | None = None) -> list[SyncedRun]:
    """Sync every run journaled in ``directory`` (or only ``run_id``) to MLflow; see the module docstring.

    Args:
        directory: a ``provenance_save_dir``.
        tracking_uri: the MLflow store to write to; default: the one each run recorded.
        run_id: only this run (its local id).
    """
    out = []
    for journal in run_journals(directory):
        run = load_run(journal)
        if run_id is None or run.run_id == run_id:
            out.append(sync_run(run, tracking_uri=tracking_uri))
    if run_id is not None and not out:
        raise Prov4MLInputError(f"sync: no journal of run {run_id!r} in {directory}")
    return out


def sync_run(run: JournaledRun, *, tracking_uri: str | None = None) -> SyncedRun:
    """Sync one journaled run; failures are reported in the result, never raised."""
    report = SyncedRun(run.run_id)
    status = run.final_status
    if status is None:
        report.skipped = ("still running" if process_alive(run)
                          else "it did not end cleanly: run `prov4ml recover` on its folder first")
        return report
    try:
        uri = _tracking_uri(run, tracking_uri)
    except Prov4MLInputError as err:
        report.skipped = str(err)
        return report
    if not wait_for_service(run, _SERVICE_WAIT_S):
        report.skipped = (f"the MLflow service process {run.start.get('mlflow_service_pid')} of the run is still "
                          f"writing after {_SERVICE_WAIT_S:.0f} s; sync again once it has exited")
        return report
    from prov4ml_lightning.sinks.mlflow.sink import MlflowSink
    from prov4ml_lightning.sinks.mlflow.store import database_file, forget_engine, prepare_sqlite_store

    # (A SQLite store keeps new experiments' artifacts beside its database: MlflowSink.experiment_id.)
    try:
        # a store a killed process left half-created is moved aside and replaced (said in the report)
        if (file := database_file(uri)) is not None and (replaced := prepare_sqlite_store(file)):
            report.notes.append(replaced)
            forget_engine(uri)
        store = MlflowSink(uri, run.start.get("mlflow_save_dir") or run.directory)
    except Exception as err:  # a store MLflow cannot open: said in one line, never a traceback
        report.skipped = f"the MLflow store {redact_url(uri)} cannot be opened: {_first_line(err)}"
        return report
    sink = TrackingGuard(store)
    if not sink.available():
        report.skipped = f"tracking server {sink.public_uri} is unreachable"
        return report
    try:
        _sync(run, sink, status, report, store)
    except TrackingUnavailableError as err:
        report.problems.append(str(err))
    except Exception as err:  # MLflow refused a write: the rest of the run waits for the next sync
        report.problems.append(f"MLflow failed: {_first_line(err)}")
    if not report.problems:
        writer = Journal(run.journal)
        try:
            writer.write("synced", mlflow_run_id=report.mlflow_run_id, tracking_uri=sink.public_uri,
                         metric_points=report.metric_points)
        finally:
            writer.close()
    return report


def _mlflow_run(run: JournaledRun, sink: TrackingGuard, report: SyncedRun, store: Any) -> str | None:
    if not run.start.get("offline") and sink.get_run(run.run_id) is not None:
        return run.run_id
    # An offline run, a run whose MLflow service could not create it (a broken store, a service
    # killed before it had), or a run synced into another store: created now, tagged with the local id.
    if run.synced and run.synced.get("mlflow_run_id") and sink.get_run(run.synced["mlflow_run_id"]) is not None:
        return str(run.synced["mlflow_run_id"])
    experiment_id = sink.experiment_id(run.info.experiment_name)
    found = sink.search_runs(experiment_id, LOCAL_RUN_TAG, run.run_id)
    if found:
        return found[0]
    tags = {**run.info.tags, LOCAL_RUN_TAG: run.run_id}
    start_ms = int(run.info.start_time * 1000)
    if not run.start.get("offline") and is_database_uri(store.tracking_uri) and _HEX_ID.fullmatch(run.run_id):
        # the id the PROV document and the run's files already name (a database store takes a chosen id)
        mlflow_id, _ = store.create_run_with_id(run.run_id, experiment_id, run.info.run_name, tags,
                                                run.info.description, None, start_ms)
    else:  # a remote server draws its own ids
        mlflow_id, _ = sink.create_run(experiment_id, run.info.run_name, tags, run.info.description, None, start_ms)
    report.created = True
    return mlflow_id


def _sync(run: JournaledRun, sink: TrackingGuard, status: str, report: SyncedRun, store: Any) -> None:
    mlflow_id = _mlflow_run(run, sink, report, store)
    if mlflow_id is None:
        return
    report.mlflow_run_id = mlflow_id
    state = sink.get_run(mlflow_id) or {"params": {}, "tags": {}, "status": None}

    missing = [(k, v) for k, v in run.mlflow_params.items() if k not in state["params"]]
    if missing:
        sink.log_params(mlflow_id, missing)
    report.params = len(missing)
    tags = dict(run.info.tags)
    if run.recovered is not None and run.recovered.get("status") == CRASHED:
        tags[CRASHED_TAG] = "true"
    tags["prov4ml.provenance_file"] = f"prov/provgraph_{run.run_id}.json"
    tags.update(run.weights_tags)  # what later runs find it by: the hashes of the weights it produced
    from prov4ml_lightning.sinks.mlflow.sink import mlflow_safe_key

    safe = {mlflow_safe_key(k): str(v) for k, v in tags.items()}
    changed = [(k, v) for k, v in safe.items() if state["tags"].get(k) != v]
    if changed:
        sink.set_tags(mlflow_id, changed)

    report.metric_points = _sync_metrics(run, sink, mlflow_id, report)
    spill = run.directory / f"mlflow_unsent_{run.run_id}.csv"
    if spill.exists():
        spill.unlink()  # every sidecar point is in MLflow now; the sidecar stays the full record

    report.artifacts = _sync_artifacts(run, sink, mlflow_id, report)
    for model in run.models:
        staged = run.directory / STAGING / f"{model.model_id}.pth"
        if model.model_id and staged.is_file():
            # the MLflow service saved it but could not log it: log it now, under the id PROV names
            try:
                store.log_model_file(mlflow_id, str(staged), model.name, model.model_id)
            except Exception as err:
                report.problems.append(f"model {model.name!r} v{model.version}: {type(err).__name__}: "
                                       f"{str(err).splitlines()[0] if str(err) else ''}")
            else:
                staged.unlink()
                with contextlib.suppress(OSError):
                    staged.parent.rmdir()  # the staging folder, once empty
                report.artifacts += 1
        elif not model.model_uri:
            report.problems.append(f"model {model.name!r} v{model.version} was never stored in MLflow and cannot "
                                   "be replayed (log it again); PROV records it")
    end_ms = int(float((run.end or run.recovered or {}).get("end_time", run.last_time)) * 1000)
    if state.get("status") != status:
        sink.end_run(mlflow_id, status, end_ms)
    report.status = status


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__


def _sync_metrics(run: JournaledRun, sink: TrackingGuard, mlflow_id: str, report: SyncedRun) -> int:
    """Send the sidecar points MLflow lacks; the points it refuses (a step outside its 64-bit range,
    written by an older version) are skipped and named in ``report.problems``, the others all go."""
    by_key: dict[str, list[tuple[str, float, int, int]]] = defaultdict(list)
    refused: list[tuple[str, int, str]] = []
    for _key, _ctx, mkey, step, value, ts in read_sidecar(run.sidecar):
        if not STEP_MIN <= step <= STEP_MAX or not 0 <= ts <= STEP_MAX:
            refused.append((mkey, step, "step or timestamp outside MLflow's 64-bit range"))
            continue
        by_key[mkey].append((mkey, value, ts, step))
    sent = 0
    for mkey, points in by_key.items():
        have = sink.get_metric_history(mlflow_id, mkey)
        todo = [p for p in points if (p[3], p[2]) not in have]
        for start in range(0, len(todo), _CHUNK):
            chunk = todo[start : start + _CHUNK]
            try:
                sink.log_metrics(mlflow_id, chunk)
                sent += len(chunk)
                continue
            except TrackingUnavailableError:
                raise
            except Exception:  # one bad point fails its whole batch: find it, send the others
                pass
            for point in chunk:
                try:
                    sink.log_metrics(mlflow_id, [point])
                    sent += 1
                except TrackingUnavailableError:
                    raise
                except Exception as err:
                    refused.append((mkey, point[3], _first_line(err)))
    if refused:
        named = "; ".join(f"{mkey!r} step {step} ({why})" for mkey, step, why in refused[:5])
        more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
        report.problems.append(f"MLflow cannot store {len(refused)} metric points of the sidecar, skipped: "
                               f"{named}{more}; the sidecar and PROV keep them")
    return sent


def _sync_artifacts(run: JournaledRun, sink: TrackingGuard, mlflow_id: str, report: SyncedRun) -> int:
    uploaded = 0
    listed: dict[str | None, set[str]] = {}

    def present(folder: str | None, name: str) -> bool:
        if folder not in listed:
            listed[folder] = set(sink.list_artifacts(mlflow_id, folder))
        return (f"{folder}/{name}" if folder else name) in listed[folder]

    for record, upload in zip(run.artifacts, run.uploads):
        local = Path(record.local_path)
        folder = upload.get("artifact_path")
        if not upload.get("upload", True) or present(folder, local.name):
            continue
        if not local.exists() or sha256_path(local)[0] != record.sha256:
            report.problems.append(f"artifact {local} is gone or changed since it was recorded; not uploaded")
            continue
        sink.log_artifact(mlflow_id, str(local), folder)
        uploaded += 1
    long_params = run.directory / f"long_params_{run.run_id}.json"
    if long_params.exists():
        sink.log_artifact(mlflow_id, str(long_params), "params")
    # the session's side files where start_run uploads them (code/, environment/) and, as at end_run,
    # beside the document in prov/ (where `prov4ml show/diff <run id>` looks): a service that died
    # early uploaded neither
    side = []
    for part, keys in (("code", ("git_diff_file", "untracked_file")), ("environment", ("packages_file",))):
        attrs = (run.context or {}).get(part) or {}
        for key in keys:
            if attrs.get(key) and (run.directory / str(attrs[key])).is_file():
                path = run.directory / str(attrs[key])
                side.append(path)
                if not present(part, path.name):
                    sink.log_artifact(mlflow_id, str(path), part)
    base = run.directory / f"provgraph_{run.run_id}"
    for path in [*(base.with_suffix(s) for s in (".json", ".dot", ".svg", ".html", ".provn", ".ttl", ".xml")),
                 run.sidecar, *side]:
        if path.exists():
            sink.log_artifact(mlflow_id, str(path), "prov")
    return uploaded
