"""What a run ran on and what it measures, plugged into the core from outside (``runs.open_run``).

- :func:`capture_into`: once per session of a run, its code, environment, host and seed
  (:func:`capture_context`: cheap, no ``pip freeze``, a handful of ``git`` calls with timeouts;
  a part that fails warns with :class:`~prov4ml_lightning.errors.Prov4MLWarning` and is left
  out), and the model statistics ``log_model`` records;
- :func:`sample_system_metrics_into` / :func:`start_system_metrics`: CPU, memory, disk and GPU
  samples logged as metrics, once or on a background thread stopped when the run ends.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prov4ml_lightning.capture.code import capture_code
from prov4ml_lightning.capture.environment import capture_environment
from prov4ml_lightning.capture.model_info import model_statistics, weight_groups
from prov4ml_lightning.capture.reproduction import REPRODUCES_TAG, reproduction_marker
from prov4ml_lightning.capture.seeds import SeedInfo, detect_seed
from prov4ml_lightning.capture.system_metrics import SystemMetricsSampler, sample_system_metrics
from prov4ml_lightning.context import Context
from prov4ml_lightning.errors import Prov4MLWarning, warn
from prov4ml_lightning.tracking.registry import PROCESS_KEY

if TYPE_CHECKING:
    from prov4ml_lightning.tracking.recorder import RunRecorder

__all__ = ["RunContext", "capture_context", "capture_into", "sample_system_metrics_into", "start_system_metrics"]

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What :func:`capture_context` found for one run.

    Attributes:
        code: attributes of the ``code`` entity (empty when capture failed).
        environment: attributes of the ``environment`` entity.
        seed_at_start: the seed detected when the run started.
        files: ``(local file, MLflow artifact folder)`` pairs to attach to the run.
        seconds: how long the capture took.
        session: which session of the run this is: 1, or ``n`` for the ``n``-th time a run was
            reopened in a process (resume, validate/test after fit), whose code and environment
            may differ from the first one's and are recorded beside them, not over them.
        started_at: when this session captured its context (Unix seconds).
    """

    code: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    seed_at_start: SeedInfo = field(default_factory=lambda: SeedInfo(None, None, None))
    files: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0
    session: int = 1
    started_at: float = field(default_factory=time.time)
    #: the run this process reproduces (``capture.reproduction``), or empty
    reproduces: dict[str, Any] = field(default_factory=dict)

    def run_attributes(self) -> dict[str, Any]:
        """Seed attributes of the run activity: the start-time seed, else one set during the run
        (a functional-API script often seeds right after ``start_run``)."""
        seed, when = self.seed_at_start, "run start"
        if seed.seed is None:
            later = detect_seed()
            if later.seed is not None:
                seed, when = later, "run end"
        attrs: dict[str, Any] = seed.attributes()
        if seed.seed is not None:
            attrs["seed_detected_at"] = when
        if self.reproduces:
            attrs["reproduces"] = self.reproduces["run_id"]
        return attrs

    def for_prov(self) -> dict[str, Any]:
        """The plain mapping the PROV builder reads (``code``, ``environment``, ``run``, ``session``,
        ``started_at``)."""
        return {"code": self.code, "environment": self.environment, "run": self.run_attributes(),
                "session": self.session, "started_at": self.started_at,
                "process": {"pid": os.getpid(), "process_key": PROCESS_KEY},
                **({"reproduces": self.reproduces} if self.reproduces else {})}


def _part(what: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as err:  # capture is best effort: the run must go on
        warn(f"start_run: could not capture the {what} ({err!r}); it is left out of the provenance",
             Prov4MLWarning)
        return None


def capture_context(out_dir: Path, run_id: str, session: int = 1) -> RunContext:
    """Capture code, environment and seed of session ``session`` of run ``run_id``, writing its
    files into ``out_dir`` (named by the run, and from the second session on by the session too)."""
    t0 = time.perf_counter()
    ctx = RunContext(session=session)
    stem = run_id if session == 1 else f"{run_id}.session_{session}"
    code = _part("code (script, git)", capture_code, out_dir, stem)
    if code is not None:
        ctx.code, diff = code
        if diff is not None:
            ctx.files.append((diff, "code"))
        snapshot = ctx.code.pop("untracked_snapshot", None)
        if snapshot is not None:
            ctx.files.append((snapshot, "code"))
    env = _part("environment", capture_environment, out_dir, stem)
    if env is not None:
        ctx.environment, packages = env
        ctx.files.append((packages, "environment"))
    ctx.seed_at_start = _part("seed", detect_seed) or ctx.seed_at_start
    ctx.reproduces = _part("reproduction mark", reproduction_marker) or {}
    ctx.seconds = time.perf_counter() - t0
    log.debug("captured the context of run %s in %.3f s", run_id, ctx.seconds)
    return ctx


#: this process's context of each run it opened: a run reopened by the same process (``test``
#: after ``fit``) is the same session, with the same code and environment, not a new one.
_SESSIONS: dict[str, RunContext] = {}


def capture_into(run: RunRecorder) -> None:
    """Plug capture into ``run``: this session's context (captured once per process and run), and
    model statistics for ``log_model``, the tensor groups of weights for partial loads."""
    run.describe_model = model_statistics
    run.weight_groups = weight_groups
    ctx = _SESSIONS.get(run.run_id)
    if ctx is None or ctx.session != run.session:
        ctx = _SESSIONS[run.run_id] = capture_context(run.provenance_dir, run.run_id, run.session)
    run.set_context(ctx)
    if ctx.reproduces and run.info.tags.get(REPRODUCES_TAG) != ctx.reproduces["run_id"]:
        run.set_tags({REPRODUCES_TAG: ctx.reproduces["run_id"]})


def sample_system_metrics_into(run: RunRecorder, context: Context = Context.TRAINING,
                               step: int | None = None) -> dict[str, float]:
    """Log one sample of CPU, memory, disk and (when present) GPU metrics into ``run``; return it."""
    sample = sample_system_metrics(run.provenance_dir)
    run.log_metrics(_named(run, sample), context, step)
    return sample


def start_system_metrics(run: RunRecorder, interval: float) -> None:
    """Sample into ``run`` every ``interval`` seconds on a background thread until it ends."""
    sampler = SystemMetricsSampler(
        lambda sample, i: run.log_metrics(_named(run, sample), Context.TRAINING, i), interval, run.provenance_dir,
    )
    run.add_closer(sampler.stop)
    sampler.start()


def _named(run: RunRecorder, sample: dict[str, float]) -> dict[str, float]:
    # In a distributed run every rank's system metrics name the rank (rank0/cpu_usage, rank0/system/...).
    prefix = run.system_prefix
    return {f"{prefix}{k}": val for k, val in sample.items()} if prefix else sample
