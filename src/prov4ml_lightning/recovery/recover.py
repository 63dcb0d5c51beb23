"""Rebuild the provenance of a run that died without ``end_run`` (``SIGKILL``, OOM killer, power cut).

A run leaves two append-only files in its provenance folder while it trains: the journal
``journal_<run_id>.jsonl`` (every non-metric event, see :mod:`prov4ml_lightning.tracking.journal`) and the
metric sidecar ``metrics_<run_id>.csv`` (every metric point the background writer drained; it
drains every ``flush_interval`` seconds, so a ``SIGKILL`` loses at most the points of the last
interval). :func:`recover` folds both into the records the recorder had, writes the PROV files
(``provgraph_<run_id>.json``/``.dot``/``.svg``) exactly as ``end_run`` would, with the run's
``status`` set to ``CRASHED`` and its end time set to the last thing it recorded, and appends a
``recovered`` event to the journal. The MLflow side (ending the run as ``FAILED`` with the tag
``prov4ml.crashed=true``, sending the points MLflow lacks, uploading the PROV files) is
:func:`prov4ml_lightning.recovery.sync.sync`, which the ``prov4ml recover`` command runs afterwards.

A journal whose process is still alive on this host is left alone unless ``force=True``.

Example::

    from prov4ml_lightning.recovery.recover import recover
    for run in recover("prov_dir"):
        print(run.run_id, run.status, run.prov_json)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prov4ml_lightning.context import Context
from prov4ml_lightning.errors import Prov4MLInputError
from prov4ml_lightning.records import ActivityRecord, ArtifactRecord, MetricSeries, ModelRecord, RunInfo
from prov4ml_lightning.tracking.journal import JOURNAL_PREFIX, Journal, read_journal
from prov4ml_lightning.tracking.writer import read_sidecar  # the one reader of the sidecar, beside its writer

__all__ = ["CRASHED", "JournaledRun", "RecoveredRun", "load_run", "process_alive", "read_sidecar", "recover",
           "run_journals", "wait_for_service", "write_run_files"]

log = logging.getLogger(__name__)

#: ``p4l:status`` of a recovered run in PROV (MLflow has no such status: it gets FAILED + a tag).
CRASHED = "CRASHED"
#: MLflow run tag set on a recovered run.
CRASHED_TAG = "prov4ml.crashed"


@dataclass
class JournaledRun:
    """Everything a run's journal says, folded in order."""

    journal: Path
    info: RunInfo
    start: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    mlflow_params: dict[str, str] = field(default_factory=dict)
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    models: list[ModelRecord] = field(default_factory=list)
    activities: dict[str, ActivityRecord] = field(default_factory=dict)
    entities: list[dict[str, Any]] = field(default_factory=list)
    invalidations: list[dict[str, Any]] = field(default_factory=list)
    context: dict[str, Any] | None = None
    sessions: int = 1
    end: dict[str, Any] | None = None
    recovered: dict[str, Any] | None = None
    synced: dict[str, Any] | None = None
    last_time: float = 0.0
    #: the run tags ``prov4ml.weights.<hash>`` it set (``tracking/lineage.index_weights``), latest value per tag
    weights_tags: dict[str, str] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.info.run_id

    @property
    def directory(self) -> Path:
        return self.journal.parent

    @property
    def sidecar(self) -> Path:
        return self.directory / self.start.get("metrics_file", f"metrics_{self.run_id}.csv")

    @property
    def needs_recovery(self) -> bool:
        """No clean end, or an end whose PROV files could not be written."""
        if self.recovered is not None:
            return False
        return self.end is None or bool(self.end.get("prov_error"))

    @property
    def final_status(self) -> str | None:
        """The MLflow status the run should end with (``None`` while it may still be running)."""
        if self.end is not None:
            return str(self.end["status"])
        if self.recovered is not None:
            return "FAILED"
        return None


@dataclass(frozen=True)
class RecoveredRun:
    """What :func:`recover` did with one journal."""

    run_id: str
    status: str
    prov_json: Path | None
    metric_points: int
    skipped: str | None = None


def run_journals(directory: str | os.PathLike[str]) -> list[Path]:
    """The run journals in a provenance folder, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        raise Prov4MLInputError(f"{d}: no such provenance folder")
    return sorted(d.glob(f"{JOURNAL_PREFIX}*.jsonl"), key=lambda p: p.stat().st_mtime)


def load_run(journal: str | os.PathLike[str]) -> JournaledRun:
    """Fold a journal's events into a :class:`JournaledRun`."""
    path = Path(journal)
    events = read_journal(path)
    starts = [e for e in events if e["event"] == "start"]
    if not starts:
        raise Prov4MLInputError(f"{path}: the journal has no start event")
    run = JournaledRun(journal=path, info=_run_info(starts[-1]["info"]), start=starts[-1], sessions=len(starts))
    for e in events:
        kind = e["event"]
        run.last_time = max(run.last_time, float(e.get("time", 0.0)))
        if kind == "params":
            run.params.update(e.get("params", {}))
            run.mlflow_params.update({k: v for k, v in e.get("mlflow", [])})
        elif kind == "tags":
            run.info.tags.update(e.get("tags", {}))
        elif kind == "weights":
            run.weights_tags.update(e.get("tags", {}))
        elif kind == "artifact":
            run.artifacts.append(_artifact(e["record"]))
            run.uploads.append({"artifact_path": e.get("artifact_path"), "upload": e.get("upload", True)})
        elif kind == "model":
            run.models.append(ModelRecord(**e["record"]))
        elif kind == "activity_start":
            record = ActivityRecord(**e["record"])
            run.activities[record.ident] = record
        elif kind == "activity_end" and e.get("ident") in run.activities:
            act = run.activities[e["ident"]]
            act.end_time = e.get("end_time")
            act.attributes.update(e.get("attributes", {}))
            act.used = [tuple(u) for u in e.get("used", act.used)]
        elif kind == "entity":
            run.entities.append(e["entity"])
        elif kind == "entity_update":
            _update_entity(run.entities, e)
        elif kind == "invalidated":
            _invalidate(run, e)
        elif kind == "context":
            run.context = e["context"]
        elif kind == "end":
            run.end = e
        elif kind == "recovered":
            run.recovered = e
        elif kind == "synced":
            run.synced = e
    return run


def _update_entity(entities: list[dict[str, Any]], event: dict[str, Any]) -> None:
    """Apply an ``entity_update`` event to the latest entity it names (as ``update_entity`` did)."""
    for entity in reversed(entities):
        if entity.get("kind") == event.get("kind") and entity.get("name") == event.get("name"):
            entity["attributes"] = {**entity.get("attributes", {}), **event.get("attributes", {})}
            if event.get("prov_name"):
                entity["prov_name"] = event["prov_name"]
            if event.get("upstream"):
                entity["upstream"] = event["upstream"]
            return


def _invalidate(run: JournaledRun, event: dict[str, Any]) -> None:
    """Apply an ``invalidated`` event: to the artifact it names (``invalidate_artifact``), else as an
    invalidation of an entity recorded elsewhere (``invalidate_entity``)."""
    for record in run.artifacts:
        if record.kind == event.get("kind") and record.name == event.get("name"):
            if record.invalidated_at is None:
                record.invalidated_by, record.invalidated_at = event.get("activity"), event.get("at")
            return
    if not any(i["kind"] == event.get("kind") and i["name"] == event.get("name") for i in run.invalidations):
        run.invalidations.append({k: event.get(k) for k in ("kind", "name", "activity", "at")})


def _run_info(data: dict[str, Any]) -> RunInfo:
    known = set(RunInfo.__dataclass_fields__)
    return RunInfo(**{k: v for k, v in data.items() if k in known})


def _artifact(data: dict[str, Any]) -> ArtifactRecord:
    data = dict(data)
    if data.get("context") is not None:
        data["context"] = Context(data["context"])
    return ArtifactRecord(**data)


def _series(points: list[tuple[str, str, str, int, float, int]]) -> list[MetricSeries]:
    series: dict[tuple[str, str], MetricSeries] = {}
    for key, ctx, mkey, step, value, ts in points:
        s = series.get((key, ctx))
        if s is None:
            try:
                context = Context(ctx)
            except ValueError:
                continue
            s = series[(key, ctx)] = MetricSeries(key, context, mkey)
        s.add(step, value, ts)
    return list(series.values())


def process_alive(run: JournaledRun) -> bool:
    """Whether the process that wrote the journal still runs (on this host)."""
    pid, host = run.start.get("pid"), run.start.get("host")
    if not isinstance(pid, int) or host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for_service(run: JournaledRun, timeout: float) -> bool:
    """Wait until the MLflow service process of ``run`` (``sinks/mlflow/service.py``), which goes on
    writing after its training process died, has exited; whether it has within ``timeout`` seconds.

    Comparing MLflow with the local files while it still writes would send points twice and end
    the run under it. A service on another host, or a pid now used by another program, is not waited for.
    """
    pid, host = run.start.get("mlflow_service_pid"), run.start.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return True
    deadline = time.monotonic() + timeout
    while _is_service(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _is_service(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone (or no /proc: then nothing to wait for that we can see)
        return False
    state = ""
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return b"service_process.py" in cmdline and state != "Z"


def write_run_files(run: JournaledRun, status: str, end_time: float,
                    points: list[tuple[str, str, str, int, float, int]]) -> Path:
    """Write the PROV files of ``run`` as ``end_run`` would (the same writer); return the JSON path."""
    from prov4ml_lightning import provenance

    info = run.info
    info.status, info.end_time = status, end_time
    for act in run.activities.values():
        if act.end_time is None:
            act.end_time = end_time
    snapshot = provenance.RunSnapshot(
        info=info, params=run.params, series=_series(points), artifacts=run.artifacts, models=run.models,
        activities=list(run.activities.values()), software_version=str(run.start.get("software_version", "")),
        metrics_file=run.sidecar.name, extra_entities=run.entities, context=run.context,
        invalidations=run.invalidations,
    )
    base = run.directory / f"provgraph_{run.run_id}"
    if run.sessions > 1 and base.with_suffix(".json").exists():
        # A resumed run: the document its earlier session wrote carries the records of that session.
        snapshot.previous_document = base.with_suffix(".json").read_text(encoding="utf-8")
    paths = provenance.write_run_files(provenance.build_document(snapshot), base, run.start.get("formats", ["json"]),
                                       f"{info.experiment_name} / {info.run_name}", call="recover")
    return paths["json"]


def _write_long_params(run: JournaledRun) -> None:
    """``long_params_<run_id>.json`` (the params MLflow holds truncated, whole) when the run could not
    write it (a full disk at ``end_run``): the journal has them whole."""
    from prov4ml_lightning.files import atomic_write_text
    from prov4ml_lightning.sinks.mlflow.rules import truncate_param_value

    path = run.directory / f"long_params_{run.run_id}.json"
    long = {k: v for k, v in run.params.items() if isinstance(v, str) and truncate_param_value(v) != v}
    if long and not path.exists():
        atomic_write_text(path, json.dumps(long, indent=1))


def recover(directory: str | os.PathLike[str], *, run_id: str | None = None, force: bool = False) -> list[RecoveredRun]:
    """Rebuild the PROV files of every run in ``directory`` that did not end cleanly.

    Args:
        directory: the run's ``provenance_save_dir``.
        run_id: only this run.
        force: also rebuild runs whose process still seems alive, and runs already recovered.

    Returns:
        One :class:`RecoveredRun` per journal looked at (``skipped`` says why one was left alone).
    """
    out: list[RecoveredRun] = []
    for journal in run_journals(directory):
        run = load_run(journal)
        if run_id is not None and run.run_id != run_id:
            continue
        if not run.needs_recovery and not force:
            status = run.end["status"] if run.end else CRASHED
            reason = "ended cleanly" if run.end else "already recovered"
            out.append(RecoveredRun(run.run_id, str(status), None, 0, skipped=reason))
            continue
        if process_alive(run) and not force:
            out.append(RecoveredRun(run.run_id, "RUNNING", None, 0,
                                    skipped=f"process {run.start.get('pid')} is still running"))
            continue
        points = read_sidecar(run.sidecar)
        last = max([run.last_time, *(p[5] / 1000 for p in points)]) if points else run.last_time
        status = str(run.end["status"]) if run.end is not None else CRASHED
        end_time = float(run.end["end_time"]) if run.end is not None else last
        if status == CRASHED:
            run.info.tags[CRASHED_TAG] = "true"
        prov_json = write_run_files(run, status, end_time, points)
        _write_long_params(run)
        journal.with_name(f".{journal.name}.reserve").unlink(missing_ok=True)  # the killed run's spare space
        writer = Journal(journal)
        try:
            writer.write("recovered", status=status, end_time=end_time, recovered_at=time.time(),
                         metric_points=len(points))
        finally:
            writer.close()
        log.info("prov4ml: recovered run %s (%s, %d metric points) into %s", run.run_id, status, len(points), prov_json)
        out.append(RecoveredRun(run.run_id, status, prov_json, len(points)))
    if run_id is not None and not out:
        raise Prov4MLInputError(f"recover: no journal of run {run_id!r} in {directory}")
    return out
