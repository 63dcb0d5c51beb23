"""The run recorder: the one core both front doors (functional API, Lightning callback) call into.

A :class:`RunRecorder` buffers metric points on the hot path (a background :class:`MetricWriter`
drains them), records params, tags, artifacts, models, activities and entities, and at
:meth:`~RunRecorder.end` hands everything to the MLflow and PROV sinks (:mod:`.finish`).
Opening one is :func:`prov4ml_lightning.tracking.start.open_recorder`; the current run is
:mod:`.registry`'s. What the core does not know (code and environment capture, ranks, system
metrics) is plugged in from outside through :meth:`~RunRecorder.set_context`,
:attr:`~RunRecorder.describe_model`, :meth:`~RunRecorder.add_closer` and :meth:`~RunRecorder.before_end`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from prov4ml_lightning.context import Context, context_tags
from prov4ml_lightning.errors import NoActiveRunError, Prov4MLInputError, Prov4MLWarning, TrackingUnavailableError, warn
from prov4ml_lightning.records import ActivityRecord, ArtifactRecord, MetricSeries, ModelRecord, RunInfo
from prov4ml_lightning.sinks.mlflow.rules import mlflow_safe_key, truncate_param_value  # MLflow's rules
from prov4ml_lightning.tracking import registry
from prov4ml_lightning.tracking import validation as v
from prov4ml_lightning.tracking.config import WAIT_TIMEOUT_ENV, RunConfig
from prov4ml_lightning.tracking.finish import RunOutputs, publish, write_provenance
from prov4ml_lightning.tracking.journal import Journal, journal_path
from prov4ml_lightning.tracking.lineage import Lineage
from prov4ml_lightning.tracking.writer import MetricWriter, Point
from prov4ml_lightning.version import __version__

__all__ = ["RunOutputs", "RunRecorder"]

log = logging.getLogger(__name__)

_BUFFER_WAKE = 50_000  # buffered points that wake the writer early
JOURNAL_RESERVE = 64 * 1024  # bytes the journal holds back for the run's last events on a full disk
_NONE = object()


def _same_param(held: Any, value: Any) -> bool:
    """Whether a param value equals one already held (a tuple and its list, as the journal keeps it)."""
    if isinstance(value, tuple):
        value = list(value)
    return bool(held == value or v.param_text(held) == v.param_text(value))


class RunRecorder(Lineage):
    """One run: buffers records and hands them to the MLflow and PROV sinks.

    Open it with ``prov4ml.start_run`` or the callback rather than creating it directly.

    Args:
        config: the run options.
        info: the run's identity (id, names, folder, start time).
        sink: the MLflow sink (``sinks/mlflow``), or a part sink that writes nothing.
        parent: the run this one is nested in.
        document: end by writing the PROV document and ending the MLflow run; ``False`` for a
            rank's part, which only closes its journal and sidecar (rank zero merges them).
    """

    def __init__(self, config: RunConfig, info: RunInfo, sink: Any, *, parent: Any = None,
                 document: bool = True) -> None:
        self.config = config
        self.info = info
        self.sink = sink
        self.parent = parent
        self.document = document
        self.provenance_dir = Path(info.provenance_dir)
        self.provenance_formats = config.provenance_formats
        self._lock = threading.Lock()  # guards the hot-path buffer only
        self._buffer: list[Point] = []
        self._next_step: dict[tuple[str, Context], int] = {}
        self._mlflow_keys: dict[tuple[str, Context], tuple[str, str]] = {}  # -> (MLflow key, context value)
        self._taken_keys: dict[str, str] = {}  # MLflow key -> the context value its series holds
        self.series: dict[tuple[str, Context], MetricSeries] = {}
        self.params: dict[str, Any] = {}
        self.earlier_params: dict[str, Any] = {}  # params earlier sessions of a reopened run logged
        self.mlflow_only_params: set[str] = set()  # MLflow params that are no input of the run (this or earlier)
        self.long_params: dict[str, str] = {}  # params MLflow holds truncated, whole
        self.artifacts: list[ArtifactRecord] = []
        self.models: list[ModelRecord] = []
        self.activities: dict[str, ActivityRecord] = {}
        self.extra_entities: list[dict[str, Any]] = []
        self.invalidations: list[dict[str, Any]] = []  # entities recorded elsewhere that ceased to exist
        #: state_dict_sha256 or tensor group hash -> {"ids": entities holding it, "parts": [[prefix, n, of,
        #: kind, name...]] entities holding it as a part} (run tags ``prov4ml.weights.<hash>``)
        self.weights_held: dict[str, dict[str, list[list[Any]]]] = {}
        self.weights_started: set[str] = set()  # tensor groups of weights it started from
        self.lookups: list[threading.Thread] = []  # store lookups of where initial weights came from
        self.previous_document: str | None = None  # PROV-JSON of an earlier session of this run
        self.earlier_models: Counter[str] = Counter()  # models per name logged by earlier sessions
        #: (kind, PROV name) -> (local path, sha256) of the artifacts earlier sessions recorded: a new file
        #: never takes the name (the PROV id) of an earlier one (see ``Lineage.log_artifact``)
        self.earlier_artifacts: dict[tuple[str, str], tuple[str, str]] = {}
        self.context: Any = None  # code, environment, seed: see set_context
        #: model -> PROV attributes for ``log_model(log_model_info=True)`` (plugged in: capture/)
        self.describe_model: Callable[[Any], Mapping[str, Any]] = lambda model: {}
        #: state_dict_sha256 -> ({module prefix: (group hash, tensors)}, tensors) of weights this process
        #: hashed, or None (plugged in: capture/, ``model_info.weight_groups``): partial loads
        self.weight_groups: Callable[[str], Any] = lambda digest: None
        self.system_prefix = ""  # system metric keys start with it (a rank's ``rank<k>/``)
        self.ranks: Any = None  # the distributed plug-in's group of ranks; the core never reads it
        # Which session of the run this process records: 1, or n for its n-th opening (a reopened
        # run: resume, validate/test after fit). Names this session's code, environment and ranks.
        self.session = 1
        self._closers: list[Callable[[], None]] = []
        self._before_end: list[Callable[[RunRecorder, str], None]] = []
        self._ended = False
        self.outputs: RunOutputs | None = None
        self._t0 = time.monotonic()
        # Crash safety: every non-metric event goes to an append-only journal (see journal.py).
        self.journal = Journal(journal_path(self.provenance_dir, info.run_id), reserve=JOURNAL_RESERVE)
        self.journal.write("start", info=info, pid=os.getpid(), host=socket.gethostname(),
                           process=registry.PROCESS_KEY,
                           software_version=__version__, formats=list(config.provenance_formats),
                           offline=bool(getattr(sink, "offline", False)),
                           mlflow_save_dir=str(getattr(sink, "mlflow_save_dir", "")),
                           # the MLflow service that may still be writing after this process died (recover waits)
                           mlflow_service_pid=getattr(getattr(sink, "service", None), "pid", None),
                           metrics_file=f"metrics_{info.run_id}.csv")
        self.writer = MetricWriter(
            take=self._take_buffer,
            summarise=self._summarise,
            sidecar=self.provenance_dir / f"metrics_{info.run_id}.csv",
            send=lambda points: sink.log_metrics(info.run_id, points),
            spill=self.provenance_dir / f"mlflow_unsent_{info.run_id}.csv",
            flush_interval=config.flush_interval,
        )
        self.writer.start()
        #: the sub-activity of this run that starts the child runs opened now (a sweep's trial); None: the session
        self.children_part_of: str | None = None
        if parent is not None and document and isinstance(parent, RunRecorder) and not parent.ended:
            parent.start_child(self)  # the parent's document names each of its child runs

    # -- identity, hooks ------------------------------------------------------------------------
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

    def ancestors(self) -> list[Any]:
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

    def add_closer(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` when the run ends, before the last points are drained (a sampler's stop)."""
        self._closers.append(fn)

    def before_end(self, fn: Callable[[RunRecorder, str], None]) -> None:
        """Call ``fn(run, status)`` once when the run starts ending, while it still records (merging
        other ranks' parts); outside the registry lock, so it may wait."""
        self._before_end.append(fn)

    def set_context(self, context: Any) -> None:
        """Record this session's code, environment and seed (``capture.RunContext``: ``for_prov()``
        and ``files``); its files go to MLflow right away, so a process killed before ``end_run``
        still leaves them."""
        self.context = context
        self.journal.write("context", context=context.for_prov())
        for path, folder in context.files:
            self.call_sink(f"upload {path.name}", self.sink.log_artifact, self.run_id, str(path), folder)

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
            elif type(step) is not int or not v.STEP_MIN <= step <= v.STEP_MAX:
                step = v.check_step(step, f"{call}({key!r})")
            if timestamp is None:
                timestamp = int(time.time() * 1000)
            elif type(timestamp) is not int or timestamp < 0:
                timestamp = v.check_timestamp(timestamp, f"{call}({key!r})")
            self._next_step[series_key] = step + 1
            self._buffer.append((key, names[1], names[0], step, number, timestamp))
            if len(self._buffer) >= _BUFFER_WAKE:
                self.writer.wake()
        return number

    def log_metrics(self, metrics: Mapping[str, Any], context: Any = Context.TRAINING,
                    step: int | None = None, timestamp: int | None = None) -> None:
        if not isinstance(metrics, Mapping):
            raise Prov4MLInputError(f"log_metrics: metrics must be a dict, got {type(metrics).__name__}")
        ts = int(time.time() * 1000) if timestamp is None else v.check_timestamp(timestamp, "log_metrics")
        for key, value in metrics.items():
            self.log_metric(key, value, context, step, ts, call="log_metrics")

    def _new_series(self, key: Any, ctx: Context, call: str) -> tuple[str, str]:
        v.check_key(key, call)
        if self._ended:
            raise NoActiveRunError(f"{call}({key!r}): run {self.run_id} has ended")
        # The MLflow key is the key as given; one MLflow series holds one context's points, so a key
        # already logged in another context goes to `<context>/<key>` from then on (README: "Metric keys").
        mkey = mlflow_safe_key(key)
        if mkey != key:
            warn(f"{call}: metric key {key!r} is stored in MLflow as {mkey!r} "
                 "(MLflow's name rules); PROV keeps the original", Prov4MLWarning)
        if mkey in self._taken_keys:
            other = self._taken_keys[mkey]
            mkey = mlflow_safe_key(f"{ctx.value}/{key}")
            warn(f"{call}: metric {key!r} was already logged in context {other}; its {ctx.value} points "
                 f"go to the MLflow key {mkey!r} (PROV keeps both series under {key!r})",
                 Prov4MLWarning)
        self._taken_keys[mkey] = ctx.value
        names = self._mlflow_keys[(key, ctx)] = (mkey, ctx.value)
        self._next_step[(key, ctx)] = 0
        return names

    def _take_buffer(self) -> list[Point]:
        with self._lock:
            points, self._buffer = self._buffer, []
        return points

    def _summarise(self, points: list[Point]) -> None:
        series = self.series
        new: list[tuple[str, str]] = []
        for key, ctx, mkey, step, value, ts in points:
            s = series.get((key, ctx))
            if s is None:
                s = series[(key, ctx)] = MetricSeries(key, Context(ctx), mkey)
                new.append((mkey, ctx))
            seen_non_finite = s.non_finite
            s.add(step, value, ts)
            if s.non_finite and not seen_non_finite:
                v.check_finite(value, f"metric {key!r} ({ctx}) at step {step}")
        if new:  # on the writer thread, off the training thread
            self.call_sink("tag metric contexts", self.sink.set_tags, self.run_id, context_tags(new))

    def replay(self, points: Sequence[tuple[str, str, str, int, float, int]]) -> None:
        """Fold the points an earlier session left in the sidecar (:func:`.writer.read_sidecar`) into
        the series summaries, so series count every point and steps go on where they stopped."""
        with self._lock:
            for key, ctx_value, mkey, step, value, ts in points:
                try:
                    ctx = Context(ctx_value)
                except ValueError:
                    continue
                series = self.series.get((key, ctx.value))  # keyed like _summarise keys them
                if series is None:
                    series = self.series[(key, ctx.value)] = MetricSeries(key, ctx, mkey)
                    self._mlflow_keys[(key, ctx)] = (mkey, ctx.value)
                    self._taken_keys[mkey] = ctx.value
                series.add(step, value, ts)
                self._next_step[(key, ctx)] = max(self._next_step.get((key, ctx), 0), step + 1)

    def flush(self, *, wait_for_mlflow: bool | None = None) -> None:
        """Write every buffered point to the sidecar file now and hand it to MLflow; with
        ``wait_for_mlflow`` (``None``: the run's option), also wait until MLflow holds everything
        handed to it so far."""
        self.writer.flush(final=False)
        if self.config.waits_for_mlflow if wait_for_mlflow is None else wait_for_mlflow:
            self.sink.flush(self.config.mlflow_wait_s())

    def name_series(self, key: str, context: Any, mlflow_key: str, *, call: str = "log_metric") -> str:
        """Store the series ``(key, context)`` in MLflow under ``mlflow_key`` (MLflow's name rules
        applied: one warning when they change it) instead of the default rule; call before its first
        point. Its context tags are set with the first point, as for every series. Returns the MLflow
        key. The Lightning callback uses it to write the keys Lightning's loggers write."""
        ctx = v.check_context(context, f"{call}({key!r})")
        v.check_key(key, call)
        mkey = mlflow_safe_key(mlflow_key)
        if mkey != mlflow_key:
            warn(f"{call}: metric key {mlflow_key!r} is stored in MLflow as {mkey!r} (MLflow's name "
                 "rules: letters, digits, _ - . / and space, at most 250 characters); PROV keeps "
                 f"{key!r}", Prov4MLWarning)
        with self._lock:
            if (key, ctx) not in self._mlflow_keys:
                self._mlflow_keys[(key, ctx)] = (mkey, ctx.value)
                self._taken_keys.setdefault(mkey, ctx.value)
                self._next_step.setdefault((key, ctx), 0)
        return mkey

    # -- params, tags ----------------------------------------------------------------------------
    def log_mlflow_params(self, params: Mapping[str, Any], *, call: str) -> dict[str, Any]:
        """MLflow params that are no input of the run, such as the original prov4ml's execution
        times (PROV has them as the activity's start and end): in MLflow and in the journal, which
        ``prov4ml sync`` replays, but no PROV entity the run ``used``. Returns those the run already
        held (left as they are: params are immutable)."""
        self.require_open(call)
        new = [(mlflow_safe_key(k), v.param_text(val, call, k)) for k, val in params.items()
               if k not in self.mlflow_only_params and k not in self.params]
        self.mlflow_only_params.update(k for k in params)
        if new:
            self.journal.write("params", params={}, mlflow=new)
            self.call_sink("log params", self.sink.log_params, self.run_id, new)
        taken = {mkey for mkey, _ in new}
        return {k: val for k, val in params.items() if mlflow_safe_key(k) not in taken}

    def log_params(self, params: Mapping[str, Any], *, call: str = "log_params",
                   keep_conflicts: bool = False) -> dict[str, Any]:
        """Record params; params are immutable in a run.

        Returns:
            With ``keep_conflicts``, the params the run already holds with another value (left as
            they are); otherwise such a param raises.
        """
        self.require_open(call)
        flat = v.flatten_params(params, call)
        # every value written out first: one that cannot be is refused before anything is recorded
        texts = {key: v.param_text(value, call, key) for key, value in flat.items()}
        new: list[tuple[str, str]] = []
        added: list[str] = []
        conflicts: dict[str, Any] = {}
        for key, value in flat.items():
            text = texts[key]
            held = self.params[key] if key in self.params else self.earlier_params.get(key, _NONE)
            if held is not _NONE:
                if not _same_param(held, value):
                    if keep_conflicts:
                        conflicts[key] = value
                        continue
                    raise Prov4MLInputError(
                        f"{call}: param {key!r} was already logged as {held!r}, got {value!r}; "
                        "params are immutable in a run (log a metric or a new key instead)"
                    )
                continue
            mkey, mtext = mlflow_safe_key(key), truncate_param_value(text)  # MLflow's rules, the sink's to say
            if mkey != key:
                warn(f"{call}: param key {key!r} is stored in MLflow as {mkey!r} (MLflow's name rules); PROV keeps "
                     "the original", Prov4MLWarning)
            if mtext != text:
                self.long_params[key] = text
                warn(f"{call}: param {key!r} is {len(text)} characters; MLflow keeps a truncated copy, "
                     "PROV and params/long_params.json keep it whole", Prov4MLWarning)
            # PROV keeps numbers, bools and lists typed (a list becomes JSON text there, not a Python repr)
            self.params[key] = (value if isinstance(value, (int, float, str, bool)) or value is None
                                else list(value) if isinstance(value, (list, tuple)) and v.plain_json(value)
                                else text)
            new.append((mkey, mtext))
            added.append(key)
        if new:
            self.journal.write("params", params={k: self.long_params.get(k, self.params[k]) for k in added},
                               mlflow=new)
            self.call_sink("log params", self.sink.log_params, self.run_id, new)
        return conflicts

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.require_open("set_tags")
        items = [(v.param_text(k, "set_tags", "<a tag key>"), v.param_text(val, "set_tags", k))
                 for k, val in tags.items()]
        self.info.tags.update(items)
        self.journal.write("tags", tags=dict(items))
        self.call_sink("set tags", self.sink.set_tags, self.run_id, items)

    # -- the end --------------------------------------------------------------------------------
    def end(self, status: str = "FINISHED", error: str | None = None) -> RunOutputs | None:
        """Flush, write the PROV document and graph, end the MLflow run; the paths written (``None``
        for a rank's part). ``error`` goes into the journal's end event. Idempotent."""
        v.check_status(status)
        if not self._ended:
            for fn in self._before_end:
                fn(self, status)
            self._before_end = []
        with registry.closing(self, status):
            if self._ended:
                return self.outputs
            self._ended = True
            self.outputs = self._finish(status, error)
            parent = self.parent
            if self.document and isinstance(parent, RunRecorder) and not parent.ended:
                parent.end_child(self, status)
        if self.outputs is not None:
            log.info("prov4ml run %s ended %s; provenance in %s", self.run_id, status, self.outputs.prov_json)
        return self.outputs

    def _finish(self, status: str, error: str | None) -> RunOutputs | None:
        for close in self._closers:
            close()
        self.sink.recheck()  # a server back from an outage gets the last points now, not after a backoff
        self.writer.close()
        now = time.time()
        for act in self.activities.values():
            if act.end_time is None:
                act.end_time = now
        self.info.end_time = now
        self.info.status = status
        try:
            if self.document:
                return publish(self, status, now)
            self.journal.write("end", status=status, end_time=now, **({"error": error} if error else {}))
            self.journal.close()
            return None
        finally:
            wait_s = self.config.mlflow_wait_s()
            if self.config.waits_for_mlflow and not self.sink.flush(wait_s):
                warn(f"end_run: MLflow has not taken all of run {self.run_id} after {wait_s:g} s "
                     f"(pending: {self.sink.pending() or 'the last answers'}); the MLflow service goes on "
                     f"in the background until this process exits, and `prov4ml sync {self.provenance_dir}` "
                     f"completes MLflow if it is cut short (wait longer: {WAIT_TIMEOUT_ENV}=<seconds>)",
                     Prov4MLWarning)
            elif lost := self.sink.incomplete():
                self.writer.flush(final=True)  # the points the service died with go to the spill file too
                unsent = self.writer.spill
                warn(f"end_run: MLflow's copy of run {self.run_id} is incomplete ({lost}); the run itself is "
                     f"complete in {self.provenance_dir} (journal, metric sidecar, PROV files"
                     + (f", {unsent.name}" if unsent.exists() else "")
                     + f"): `prov4ml sync {self.provenance_dir}` completes MLflow", Prov4MLWarning)

    def write_provenance(self) -> dict[str, Path]:
        """Write the PROV document (and graph) of the run as it stands; return the paths."""
        return write_provenance(self)

    def require_open(self, call: str) -> None:
        # After end_run the PROV files are written: a late record would reach MLflow only, or nothing.
        if self._ended:
            raise NoActiveRunError(f"{call}: run {self.run_id} has ended; start a new run (or reopen this one "
                                   "with run_id=...)")

    def call_sink(self, what: str, fn: Any, *args: Any) -> bool:
        """Call a sink; a failure warns and the run goes on (the PROV side keeps the record)."""
        try:
            fn(*args)
            return True
        except TrackingUnavailableError as err:  # the outage was announced once; the data is kept
            log.info("prov4ml: could not %s in MLflow (%s)", what, err)
            return False
        except Exception as err:
            warn(f"prov4ml: could not {what} in MLflow ({err!r}); the run goes on",
                 Prov4MLWarning)
            return False

