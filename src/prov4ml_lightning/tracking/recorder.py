"""The run recorder: the one core both front doors (functional API, Lightning callback) call into.

There is one process-wide current run guarded by an ``RLock`` (not a per-thread stack), so a
metric logged from any thread lands in the same run. Nothing starts a run implicitly, and an
``atexit`` hook ends a run the user forgot.
"""

from __future__ import annotations

import atexit
import csv
import getpass
import json
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import torch

from prov4ml_lightning.capture.model_info import model_statistics
from prov4ml_lightning.context import Context
from prov4ml_lightning.errors import (
    NoActiveRunError,
    Prov4MLError,
    Prov4MLInputError,
    Prov4MLWarning,
    RunAlreadyActiveError,
    TrackingUnavailableError,
)
from prov4ml_lightning.files import sha256_path
from prov4ml_lightning.sinks.mlflow.guard import TrackingGuard
from prov4ml_lightning.sinks.mlflow.uploader import MetricUploader
from prov4ml_lightning.tracking import validation as v
from prov4ml_lightning.tracking.journal import Journal, journal_path, read_journal
from prov4ml_lightning.tracking.records import ActivityRecord, ArtifactRecord, MetricSeries, ModelRecord, RunInfo
from prov4ml_lightning.tracking.writer import MetricWriter, Point

if TYPE_CHECKING:
    from prov4ml_lightning.distributed.parts import RankGroup
    from prov4ml_lightning.distributed.ranks import RankInfo

__all__ = ["RunOutputs", "RunRecorder", "current_run", "require_run"]

log = logging.getLogger(__name__)

_lock = threading.RLock()
_current: RunRecorder | None = None
_STATUSES = ("FINISHED", "FAILED", "KILLED")
_BUFFER_WAKE = 50_000  # buffered points that wake the writer early


def current_run() -> RunRecorder | None:
    """The open run of this process, or ``None``."""
    return _current


def require_run(call: str) -> RunRecorder:
    """The open run, or a :class:`NoActiveRunError` naming ``call``."""
    run = _current
    if run is None:
        raise NoActiveRunError(f"{call}: no run is open; call prov4ml.start_run(...) first")
    return run


@dataclass(frozen=True)
class RunOutputs:
    """Where a run was written."""

    run_id: str
    tracking_uri: str
    provenance_dir: Path
    prov_json: Path
    prov_dot: Path
    prov_svg: Path | None
    metrics_file: Path
    extra: Mapping[str, Path]

    def __iter__(self):  # tuple-like unpacking of the main paths
        return iter((self.prov_json, self.prov_dot, self.prov_svg))


class RunRecorder:
    """One run: buffers records and hands them to the MLflow and PROV sinks.

    Create it with :meth:`start`; use the functional API or the callback rather than calling
    it directly.
    """

    def __init__(self, info: RunInfo, sink: Any, *, parent: RunRecorder | None,
                 flush_interval: float, provenance_formats: tuple[str, ...]) -> None:
        self.info = info
        self.sink = sink
        self.parent = parent
        self.provenance_dir = Path(info.provenance_dir)
        self.provenance_formats = provenance_formats
        self._lock = threading.Lock()  # guards the hot-path buffer only
        self._buffer: list[Point] = []
        self._next_step: dict[tuple[str, Context], int] = {}
        self._mlflow_keys: dict[tuple[str, Context], tuple[str, str]] = {}  # -> (MLflow key, context value)
        self.series: dict[tuple[str, Context], MetricSeries] = {}
        self.params: dict[str, Any] = {}
        self._long_params: dict[str, str] = {}
        self.artifacts: list[ArtifactRecord] = []
        self.models: list[ModelRecord] = []
        self.activities: dict[str, ActivityRecord] = {}
        self.extra_entities: list[dict[str, Any]] = []
        self._previous_document: str | None = None  # PROV-JSON of an earlier session of this run
        self.context: Any = None  # capture.RunContext: code, environment, seed
        self._sampler: Any = None
        self.ranks: RankGroup | None = None  # rank zero's run of a distributed job
        # Which session of the run this process records: 1, or n for its n-th opening (a reopened
        # run: resume, validate/test after fit). Names this session's code, environment and ranks.
        self.session = 1
        self._ended = False
        self.outputs: RunOutputs | None = None
        self._t0 = time.monotonic()
        self._sink_warned = False
        # Crash safety: every non-metric event goes to an append-only journal (see journal.py).
        self.journal = Journal(journal_path(self.provenance_dir, info.run_id))
        self.journal.write("start", info=info, pid=os.getpid(), host=_hostname(), software_version=_version(),
                           formats=list(provenance_formats), offline=bool(getattr(sink, "offline", False)),
                           mlflow_save_dir=str(getattr(sink, "mlflow_save_dir", "")),
                           metrics_file=f"metrics_{info.run_id}.csv")
        # Sends in-process, or from a child process once MLflow's inserts cost the training time.
        self._uploader = MetricUploader(sink, info.run_id)
        self.writer = MetricWriter(
            take=self._take_buffer,
            summarise=self._summarise,
            sidecar=self.provenance_dir / f"metrics_{info.run_id}.csv",
            send=self._uploader,
            spill=self.provenance_dir / f"mlflow_unsent_{info.run_id}.csv",
            flush_interval=flush_interval,
        )
        self.writer.start()

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        prov_user_namespace: str,
        experiment_name: str,
        provenance_save_dir: str | os.PathLike[str],
        mlflow_save_dir: str | os.PathLike[str],
        nested: bool = False,
        tags: Mapping[str, Any] | None = None,
        description: str | None = None,
        log_system_metrics: bool = False,
        *,
        tracking_uri: str | None = None,
        run_name: str | None = None,
        run_id: str | None = None,
        system_metrics_interval: float = 10.0,
        flush_interval: float = 2.0,
        provenance_formats: tuple[str, ...] = ("json",),
        rank: RankInfo | None = None,
        collect_all_ranks: bool = False,
    ) -> RunRecorder:
        """Open (or, with ``run_id``, reopen) a run and make it the current one.

        ``rank`` (a ``_distributed.RankInfo`` of global rank zero) makes it the run of a
        distributed job; ``collect_all_ranks`` says whether the other ranks send their parts.
        """
        global _current
        call = "start_run"
        namespace = v.normalise_namespace(prov_user_namespace, call)
        v.check_name(experiment_name, call, "experiment_name")
        if run_name is not None:
            v.check_name(run_name, call, "run_name")
        if tags is not None and not isinstance(tags, Mapping):
            raise Prov4MLInputError(f"{call}: tags must be a dict, got {type(tags).__name__}")
        if description is not None and not isinstance(description, str):
            raise Prov4MLInputError(f"{call}: description must be a string, got {type(description).__name__}")
        if system_metrics_interval <= 0:
            raise Prov4MLInputError(f"{call}: system_metrics_interval must be > 0 seconds")
        bad = [f for f in provenance_formats if f not in ("json", "provn", "ttl", "xml")]
        if bad:
            raise Prov4MLInputError(f"{call}: provenance_formats must be among json, provn, ttl, xml; got {bad}")
        prov_dir = Path(provenance_save_dir).resolve()
        _check_writable(prov_dir, call)

        from prov4ml_lightning.sinks.mlflow.sink import MlflowSink, default_tracking_uri

        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(mlflow_save_dir)
        str_tags = {str(k): v.param_text(val) for k, val in (tags or {}).items()}
        with _lock:
            parent = _current
            if parent is not None and not nested:
                raise RunAlreadyActiveError(
                    f"{call}: run {parent.info.run_id} is still open; call end_run() first "
                    "or pass nested=True to start a child run"
                )
            sink = TrackingGuard(MlflowSink(uri, mlflow_save_dir), uri)
            start = time.time()
            reopened: dict[str, Any] | None = None
            if run_id is None:
                try:
                    if parent is not None and getattr(parent.sink, "offline", False):
                        raise TrackingUnavailableError("the parent run is offline")
                    if not sink.available():
                        raise TrackingUnavailableError("no answer to GET /health")
                    experiment_id = sink.experiment_id(experiment_name)
                    run_id, run_name = sink.create_run(
                        experiment_id, run_name, _mlflow_tags(str_tags), description,
                        parent.info.run_id if parent else None, int(start * 1000),
                    )
                except TrackingUnavailableError as err:
                    # Offline: a local id now, the MLflow run later (`prov4ml sync`); never block here.
                    sink.go_offline()
                    run_id, experiment_id = uuid.uuid4().hex, ""
                    run_name = run_name or f"offline-{run_id[:8]}"
                    warnings.warn(
                        f"{call}: the MLflow tracking server {sink.public_uri} is unreachable ({err}); the run goes "
                        f"on offline as local run {run_id}: metrics and provenance are written to {prov_dir}, and "
                        f"`prov4ml sync {prov_dir}` creates the MLflow run once the server is back",
                        Prov4MLWarning, stacklevel=3,
                    )
            else:
                reopened = sink.reopen_run(run_id)
                experiment_id, run_name = reopened["experiment_id"], reopened["run_name"]
                if reopened.get("start_time_ms"):
                    start = reopened["start_time_ms"] / 1000  # the run began with its first session
            info = RunInfo(
                run_id=run_id, experiment_name=experiment_name, experiment_id=experiment_id,
                run_name=run_name or run_id, namespace=namespace, tracking_uri=_redact_uri(uri),
                provenance_dir=str(prov_dir), start_time=start, user=_user(), tags=str_tags,
                description=description, parent_run_id=parent.info.run_id if parent else None,
            )
            run = cls(info, sink, parent=parent, flush_interval=flush_interval,
                      provenance_formats=tuple(provenance_formats))
            if reopened is not None:
                run.session = run._continue_earlier_session()
            run._capture_context()
            if rank is not None and rank.distributed:
                from prov4ml_lightning.distributed.parts import attach_ranks

                attach_ranks(run, rank, collect_all_ranks)
            if log_system_metrics:
                run.start_system_metrics(system_metrics_interval)
            _current = run
        log.info("prov4ml run %s started (tracking %s)", run_id, info.tracking_uri)
        return run

    def _capture_context(self) -> None:
        """Code, environment and seed, once per session of the run; their files go to MLflow right
        away, so a process killed before ``end_run`` still leaves them (see ``capture/``)."""
        from prov4ml_lightning.capture import capture_context

        self.context = capture_context(self.provenance_dir, self.run_id, self.session)
        self.journal.write("context", context=self.context.for_prov())
        for path, folder in self.context.files:
            self._safely(f"upload {path.name}", self.sink.log_artifact, self.run_id, str(path), folder)

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt) or getattr(exc, "prov4ml_status", None) == "KILLED":
            status = "KILLED"
        else:
            status = "FAILED"
        self.end(status)

    def ancestors(self) -> list[RunRecorder]:
        out, run = [], self.parent
        while run is not None:
            out.append(run)
            run = run.parent
        return out

    @property
    def run_id(self) -> str:
        return self.info.run_id

    @property
    def ended(self) -> bool:
        return self._ended

    def elapsed(self) -> float:
        """Seconds since the run started (monotonic clock)."""
        return time.monotonic() - self._t0

    # -- metrics (hot path) --------------------------------------------------------------------
    def log_metric(self, key: str, value: Any, context: Any = Context.TRAINING, step: int | None = None,
                   timestamp: int | None = None, *, call: str = "log_metric") -> float | int | torch.Tensor:
        """Buffer one point; returns the value as buffered (a number, or a detached 0-d tensor)."""
        ctx = context if type(context) is Context else v.check_context(context, f"{call}({key!r})")
        number = v.to_number(value, call, key)
        series_key = (key, ctx)
        with self._lock:
            if self._ended:  # the writer is closed: a point appended now would be lost silently
                raise NoActiveRunError(f"{call}({key!r}): run {self.run_id} has ended")
            names = self._mlflow_keys.get(series_key)
            if names is None:
                names = self._new_series(key, ctx, call)
            if step is None:
                step = self._next_step[series_key]
            elif type(step) is not int:
                step = _check_step(step, f"{call}({key!r})")
            self._next_step[series_key] = step + 1
            self._buffer.append((key, names[1], names[0], step, number,
                                 timestamp if timestamp is not None else int(time.time() * 1000)))
            if len(self._buffer) >= _BUFFER_WAKE:
                self.writer.wake()
        return number

    def log_metrics(self, metrics: Mapping[str, Any], context: Any = Context.TRAINING,
                    step: int | None = None, timestamp: int | None = None) -> None:
        if not isinstance(metrics, Mapping):
            raise Prov4MLInputError(f"log_metrics: metrics must be a dict, got {type(metrics).__name__}")
        ts = timestamp if timestamp is not None else int(time.time() * 1000)
        for key, value in metrics.items():
            self.log_metric(key, value, context, step, ts, call="log_metrics")

    def _new_series(self, key: Any, ctx: Context, call: str) -> tuple[str, str]:
        v.check_key(key, call)
        if self._ended:
            raise NoActiveRunError(f"{call}({key!r}): run {self.run_id} has ended")
        full = f"{ctx.value}/{key}"
        mkey = v.mlflow_safe_key(full)
        if mkey != full:
            warnings.warn(f"{call}: metric key {key!r} is stored in MLflow as {mkey!r} "
                          "(MLflow's name rules); PROV keeps the original", Prov4MLWarning, stacklevel=4)
        names = self._mlflow_keys[(key, ctx)] = (mkey, ctx.value)
        self._next_step[(key, ctx)] = 0
        return names

    def _take_buffer(self) -> list[Point]:
        with self._lock:
            points, self._buffer = self._buffer, []
        return points

    def _summarise(self, points: list[Point]) -> None:
        series = self.series
        for key, ctx, mkey, step, value, ts in points:
            s = series.get((key, ctx))
            if s is None:
                s = series[(key, ctx)] = MetricSeries(key, Context(ctx), mkey)
            seen_non_finite = s.non_finite
            s.add(step, value, ts)
            if s.non_finite and not seen_non_finite:
                v.check_finite(value, f"metric {key!r} ({ctx}) at step {step}")

    def flush(self) -> None:
        """Write every buffered point to the sidecar file and MLflow now."""
        self.writer.flush(final=False)

    # -- params, tags ----------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any], *, call: str = "log_params") -> None:
        self._require_open(call)
        flat = v.flatten_params(params, call)
        new: list[tuple[str, str]] = []
        added: list[str] = []
        for key, value in flat.items():
            text = v.param_text(value)
            if key in self.params:
                if v.param_text(self.params[key]) != text:
                    raise Prov4MLInputError(
                        f"{call}: param {key!r} was already logged as {self.params[key]!r}, got {value!r}; "
                        "params are immutable in a run (log a metric or a new key instead)"
                    )
                continue
            mkey = v.mlflow_safe_key(key)
            if len(text) > v.MAX_PARAM_VALUE_LENGTH:
                self._long_params[key] = text
                note = f"...[truncated; full value in artifact params/long_params.json, {len(text)} chars]"
                text = text[: v.MAX_PARAM_VALUE_LENGTH - len(note)] + note
                warnings.warn(f"{call}: param {key!r} is {len(self._long_params[key])} characters; MLflow keeps "
                              "a truncated copy, PROV and params/long_params.json keep it whole",
                              Prov4MLWarning, stacklevel=3)
            # PROV keeps numbers, bools and lists typed (a list becomes JSON text there, not a Python repr)
            self.params[key] = (value if isinstance(value, (int, float, str, bool)) or value is None
                                else list(value) if isinstance(value, (list, tuple)) else text)
            new.append((mkey, text))
            added.append(key)
        if new:
            self.journal.write("params", params={k: self._long_params.get(k, self.params[k]) for k in added},
                               mlflow=new)
            self._safely("log params", self.sink.log_params, self.run_id, new)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._require_open("set_tags")
        items = [(str(k), v.param_text(val)) for k, val in tags.items()]
        self.info.tags.update(items)
        self.journal.write("tags", tags=dict(items))
        self._safely("set tags", self.sink.set_tags, self.run_id, list(_mlflow_tags(dict(items)).items()))

    # -- artifacts and models -----------------------------------------------------------------
    def log_artifact(self, path: str | os.PathLike[str], context: Any = None, *,
                     artifact_path: str | None = None, kind: str = "artifact",
                     activity: str | None = None, attributes: Mapping[str, Any] | None = None,
                     derived_from: str | None = None, upload: bool = True,
                     call: str = "log_artifact", name: str | None = None) -> ArtifactRecord:
        self._require_open(call)
        ctx = None if context is None else v.check_context(context, call)
        p = Path(path)
        if not p.exists():
            raise Prov4MLInputError(f"{call}({str(path)!r}): no such file or folder")
        if artifact_path is not None:
            _check_artifact_path(artifact_path, call)
        digest, size = sha256_path(p)
        base = name or p.name  # the PROV name; the file keeps its own name in MLflow
        name = base
        taken = {a.name for a in self.artifacts if a.kind == kind}
        n = 1
        while name in taken:
            n += 1
            name = f"{base}.{n}"
        uri = ""
        if upload and self._safely(f"upload artifact {p}", self.sink.log_artifact, self.run_id, str(p), artifact_path):
            uri = f"{artifact_path + '/' if artifact_path else ''}{p.name}"
        record = ArtifactRecord(
            name=name, local_path=str(p.resolve()), artifact_uri=uri, sha256=digest, size_bytes=size,
            is_dir=p.is_dir(), context=ctx, created=time.time(), kind=kind, activity=activity,
            attributes=dict(attributes or {}), derived_from=derived_from,
        )
        self.artifacts.append(record)
        self.journal.write("artifact", record=record, artifact_path=artifact_path, upload=upload)
        return record

    def log_model(self, model: Any, model_name: str, log_model_info: bool = True, **mlflow_kwargs: Any) -> ModelRecord:
        call = f"log_model(model, {model_name!r})"
        self._require_open(call)
        if not isinstance(model, torch.nn.Module):
            raise Prov4MLInputError(f"{call}: model must be a torch.nn.Module, got {type(model).__name__}")
        v.check_name(model_name, call, "model_name")
        version = 1 + sum(1 for m in self.models if m.name == model_name)
        info = model_statistics(model) if log_model_info else {}
        # pt2 (torch.export: a graph and weights, no pickled code) needs an input example to trace;
        # without one MLflow can only pickle the module. PROV says which one was used.
        mlflow_kwargs.setdefault("serialization_format",
                                 "pt2" if mlflow_kwargs.get("input_example") is not None else "pickle")
        info = {**info, "serialization_format": mlflow_kwargs["serialization_format"]}
        created = time.time()
        uri, model_id = "", None
        try:
            uri, model_id = self.sink.log_model(
                self.run_id, model, model_name, pip_requirements=_pip_requirements(),
                params={k: str(val) for k, val in info.items()} or None, **mlflow_kwargs,
            )
        except Exception as err:
            warnings.warn(f"{call}: MLflow could not store the model ({err!r}); PROV records it without a URI",
                          Prov4MLWarning, stacklevel=3)
        record = ModelRecord(model_name, version, uri, model_id, created, info)
        self.models.append(record)
        self.journal.write("model", record=record)
        return record

    # -- activities (used by the callback) -------------------------------------------------
    def start_activity(self, ident: str, kind: str, label: str, *, informed_by: str | None = None,
                       attributes: Mapping[str, Any] | None = None) -> ActivityRecord:
        self._require_open(f"start_activity({ident!r})")
        record = ActivityRecord(ident, kind, label, time.time(), informed_by=informed_by,
                                attributes=dict(attributes or {}))
        self.activities[ident] = record
        self.journal.write("activity_start", record=record)
        return record

    def end_activity(self, ident: str, attributes: Mapping[str, Any] | None = None) -> None:
        record = self.activities.get(ident)
        if record is None or record.end_time is not None:
            return
        record.end_time = time.time()
        record.attributes.update(attributes or {})
        self.journal.write("activity_end", ident=ident, end_time=record.end_time, attributes=dict(attributes or {}),
                           used=list(record.used))

    def add_entity(self, kind: str, type_: str, name: str, attributes: Mapping[str, Any], *,
                   label: str | None = None, relation: str = "used", activity: str | None = None,
                   derived_from: Sequence[tuple[str, str]] = (), member_of: tuple[str, ...] | None = None) -> None:
        """Record an extra entity (environment, code, dataset, ...) the run used or generated.

        ``activity`` names the sub-activity that used or generated it instead of the run;
        ``derived_from`` lists ``(kind, name)`` of entities it was derived from; ``member_of``
        is the id parts of a collection it belongs to (``("metric", context, key)``).
        """
        self._require_open(f"add_entity({kind!r}, {name!r})")
        self.extra_entities.append({"kind": kind, "type": type_, "name": name, "label": label or name,
                                    "attributes": dict(attributes), "relation": relation,
                                    "time": time.time(), "activity": activity,
                                    "derived_from": [list(d) for d in derived_from],
                                    "member_of": list(member_of) if member_of else None})
        self.journal.write("entity", entity=self.extra_entities[-1])

    # -- system metrics ----------------------------------------------------------------------
    def log_system_metrics(self, context: Any = Context.TRAINING, step: int | None = None) -> dict[str, float]:
        from prov4ml_lightning.capture.system_metrics import sample_system_metrics

        sample = sample_system_metrics(self.provenance_dir)
        self.log_metrics(self._rank_keys(sample), context, step)
        return sample

    def start_system_metrics(self, interval: float) -> None:
        from prov4ml_lightning.capture.system_metrics import SystemMetricsSampler

        if self._sampler is not None:
            return
        self._sampler = SystemMetricsSampler(
            lambda sample, i: self.log_metrics(self._rank_keys(sample), Context.TRAINING, i), interval,
            self.provenance_dir,
        )
        self._sampler.start()

    def _rank_keys(self, sample: dict[str, float]) -> dict[str, float]:
        # In a distributed run every rank's system metrics name the rank (rank0/system/...).
        prefix = self.ranks.prefix if self.ranks is not None else ""
        return {f"{prefix}{k}": val for k, val in sample.items()} if prefix else sample

    # -- the end --------------------------------------------------------------------------------
    def end(self, status: str = "FINISHED") -> RunOutputs:
        """Flush, write the PROV document and graph, end the MLflow run. Idempotent."""
        global _current
        if status not in _STATUSES:
            raise Prov4MLInputError(f"end_run(status={status!r}): status must be one of {', '.join(_STATUSES)}")
        if self.ranks is not None and not self._ended:
            # Before the run closes: the other ranks' points go in through log_metric. Outside
            # the lock: it may wait for a rank that has not ended yet (bounded).
            try:
                self.ranks.merge(self, status)
            except Exception as err:
                warnings.warn(f"end_run: could not merge the parts of the other ranks ({err!r}); rank 0's "
                              "records are written", Prov4MLWarning, stacklevel=2)
        with _lock:
            if self._ended:
                assert self.outputs is not None
                return self.outputs
            while _current is not None and _current is not self and self in _current.ancestors():
                _current.end(status)  # a child still open ends with its parent
            self._ended = True
            try:
                self.outputs = self._finish(status)
            finally:
                if _current is self:
                    _current = self.parent
        log.info("prov4ml run %s ended %s; provenance in %s", self.run_id, status, self.outputs.prov_json)
        return self.outputs

    def _finish(self, status: str) -> RunOutputs:
        if self._sampler is not None:
            self._sampler.stop()
        if hasattr(self.sink, "recheck"):
            self.sink.recheck()  # a server back from an outage gets the last points now, not after a backoff
        self.writer.close()
        self._uploader.close()
        now = time.time()
        for act in self.activities.values():
            if act.end_time is None:
                act.end_time = now
        self.info.end_time = now
        self.info.status = status
        extra: dict[str, Path] = {}
        if self._long_params:
            long_file = self.provenance_dir / f"long_params_{self.run_id}.json"
            long_file.write_text(json.dumps(self._long_params, indent=1), encoding="utf-8")
            self._safely("upload long params", self.sink.log_artifact, self.run_id, str(long_file), "params")
            extra["long_params"] = long_file
        if self.writer.points_sent < self.writer.points_written:
            extra["mlflow_unsent"] = self.writer._spill
        try:
            paths = self.write_provenance()
        except OSError as err:  # disk full, folder gone: the atomic writes left no half-written file
            self.journal.write("end", status=status, end_time=now, prov_error=str(err))
            self.journal.close()
            self._safely("end the MLflow run", self.sink.end_run, self.run_id, status, int(now * 1000))
            raise Prov4MLError(
                f"end_run: could not write the PROV files to {self.provenance_dir} ({err}); no half-written file "
                f"was left, and the journal and metric sidecar keep the run: free space, then run "
                f"`prov4ml recover {self.provenance_dir}`"
            ) from err
        self.journal.write("end", status=status, end_time=now)
        self.journal.close()
        for path in [paths["json"], paths["dot"], paths.get("svg"), self.writer.sidecar,
                     *(paths.get(f) for f in ("provn", "ttl", "xml")),
                     # packages list and code diff beside the document, where `prov4ml show/diff <run id>` looks
                     *(f for f, _ in (self.context.files if self.context is not None else ()) if f.exists())]:
            if path is not None:
                self._safely(f"upload {path.name}", self.sink.log_artifact, self.run_id, str(path), "prov")
        self._safely("set provenance tag", self.sink.set_tags, self.run_id,
                     [("prov4ml.provenance_file", f"prov/{paths['json'].name}")])
        self._safely("end the MLflow run", self.sink.end_run, self.run_id, status, int(now * 1000))
        return RunOutputs(
            run_id=self.run_id, tracking_uri=self.info.tracking_uri, provenance_dir=self.provenance_dir,
            prov_json=paths["json"], prov_dot=paths["dot"], prov_svg=paths.get("svg"),
            metrics_file=self.writer.sidecar,
            extra={**extra, **{k: p for k, p in paths.items() if k in ("provn", "ttl", "xml")}},
        )

    def snapshot(self) -> Any:
        from prov4ml_lightning import __version__
        from prov4ml_lightning.provenance import RunSnapshot

        return RunSnapshot(
            info=self.info, params={**self.params, **self._long_params},
            series=list(self.series.values()), artifacts=list(self.artifacts), models=list(self.models),
            activities=list(self.activities.values()), software_version=__version__,
            metrics_file=self.writer.sidecar.name, extra_entities=list(self.extra_entities),
            context=self.context.for_prov() if self.context is not None else None,
            previous_document=self._previous_document,
        )

    def _continue_earlier_session(self) -> int:
        """A reopened run (resume, or validate/test after fit) picks up what its earlier sessions
        left in the provenance folder: the series summaries from the metric sidecar (so series
        entities count every point and steps go on), and the PROV document, whose records the
        next document carries over (see ``_prov.merge_previous``). Returns this session's number:
        the start events in the run's journal, this one included."""
        doc = self.provenance_dir / f"provgraph_{self.run_id}.json"
        if doc.exists():
            self._previous_document = doc.read_text(encoding="utf-8")
        session = max(1, sum(1 for e in read_journal(self.journal.path) if e.get("event") == "start"))
        sidecar = self.writer.sidecar
        if not sidecar.exists():
            return session
        with open(sidecar, newline="", encoding="utf-8") as fh, self._lock:
            for row in csv.DictReader(fh):
                try:
                    key, ctx, step = row["key"], Context(row["context"]), int(row["step"])
                    value, ts = float(row["value"]), int(row["timestamp_ms"])
                except (KeyError, ValueError, TypeError):
                    continue  # a line cut short by a crash
                series = self.series.get((key, ctx.value))  # keyed like _summarise keys them
                if series is None:
                    series = self.series[(key, ctx.value)] = MetricSeries(key, ctx, row["mlflow_key"])
                    self._mlflow_keys[(key, ctx)] = (row["mlflow_key"], ctx.value)
                series.add(step, value, ts)
                self._next_step[(key, ctx)] = max(self._next_step.get((key, ctx), 0), step + 1)
        return session

    def write_provenance(self) -> dict[str, Path]:
        """Write the PROV document (and graph) of the run as it stands; return the paths."""
        from prov4ml_lightning.provenance import build_document, to_graph, write_document
        from prov4ml_lightning.provenance.graph import render_svg, to_dot

        doc = build_document(self.snapshot())
        base = self.provenance_dir / f"provgraph_{self.run_id}"
        paths = {"json": write_document(doc, base.with_suffix(".json"), "json")}
        for fmt in self.provenance_formats:
            if fmt != "json":
                paths[fmt] = write_document(doc, base.with_suffix(f".{fmt}"), fmt)
        dot_path = base.with_suffix(".dot")
        _atomic_write_text(dot_path, to_dot(to_graph(doc), f"{self.info.experiment_name} / {self.info.run_name}"))
        paths["dot"] = dot_path
        try:
            svg = render_svg(dot_path)
        except Exception as err:  # a broken Graphviz install must not lose the run
            warnings.warn(f"end_run: Graphviz could not render {dot_path} ({err!r})", Prov4MLWarning, stacklevel=2)
            svg = None
        if svg is not None:
            paths["svg"] = svg
        return paths

    def _require_open(self, call: str) -> None:
        # After end_run the PROV files are written: a late record would reach MLflow only, or nothing.
        if self._ended:
            raise NoActiveRunError(f"{call}: run {self.run_id} has ended; start a new run (or reopen this one "
                                   "with run_id=...)")

    def _safely(self, what: str, fn: Any, *args: Any) -> bool:
        """Call a sink; a failure warns and the run goes on (the PROV side keeps the record)."""
        try:
            fn(*args)
            return True
        except TrackingUnavailableError as err:  # the outage was announced once; the data is kept
            log.info("prov4ml: could not %s in MLflow (%s)", what, err)
            return False
        except Exception as err:
            warnings.warn(f"prov4ml: could not {what} in MLflow ({err!r}); the run goes on",
                          Prov4MLWarning, stacklevel=3)
            return False


def _mlflow_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """Tag keys MLflow accepts (``mlflow_safe_key``: no ``..``, ``:``, ...); PROV keeps the originals."""
    return {v.mlflow_safe_key(k): val for k, val in tags.items()}


def _make_current(make: Any, call: str, nested: bool = False) -> Any:
    """Make ``make(parent)`` the current run (a rank's part or silent run, see ``_rank_parts``);
    ``parent`` is the run open now, which only a ``nested`` run may have."""
    global _current
    with _lock:
        if _current is not None and not nested:
            raise RunAlreadyActiveError(f"{call}: run {_current.run_id} is still open; call end_run() first "
                                        "or pass nested=True to start a child run")
        _current = make(_current)
        return _current


def _release(run: Any) -> None:
    """``run`` (a rank's part or silent run) has ended: its parent is the current run again."""
    global _current
    with _lock:
        if _current is run:
            _current = run.parent


def _check_step(step: Any, call: str) -> int:
    if isinstance(step, bool) or type(step).__name__ == "bool_":  # NumPy's bool has __index__ too
        raise Prov4MLInputError(f"{call}: step must be an int, got {type(step).__name__}")
    if not isinstance(step, int):
        if hasattr(step, "__index__"):
            return int(step.__index__())
        raise Prov4MLInputError(f"{call}: step must be an int, got {type(step).__name__}")
    return int(step)


def _check_writable(path: Path, call: str) -> None:
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


def _check_artifact_path(artifact_path: str, call: str) -> None:
    parts = artifact_path.replace("\\", "/").split("/")
    if artifact_path.startswith(("/", "\\")) or ".." in parts or ":" in artifact_path:
        raise Prov4MLInputError(f"{call}: artifact_path {artifact_path!r} must be a relative path without '..'")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _version() -> str:
    from prov4ml_lightning import __version__

    return __version__


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _redact_uri(uri: str) -> str:
    from prov4ml_lightning.capture.redact import redact_url  # the one redaction module

    return redact_url(uri)


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in ("torch", "mlflow", "lightning", "numpy"):
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    return reqs


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

