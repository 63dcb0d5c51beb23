"""Once-per-run capture of what a run ran on: code, environment, host and seed.

:func:`capture_context` is the one call ``RunRecorder.start`` makes; it is cheap (no ``pip
freeze``, a handful of ``git`` calls with timeouts) and never stops a run: a part that fails
warns with :class:`~prov4ml_lightning.errors.Prov4MLWarning` and is left out.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prov4ml_lightning.capture.code import capture_code
from prov4ml_lightning.capture.environment import capture_environment
from prov4ml_lightning.capture.seeds import SeedInfo, detect_seed
from prov4ml_lightning.errors import Prov4MLWarning

__all__ = ["RunContext", "capture_context"]

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
        return attrs

    def for_prov(self) -> dict[str, Any]:
        """The plain mapping the PROV builder reads (``code``, ``environment``, ``run``, ``session``,
        ``started_at``)."""
        return {"code": self.code, "environment": self.environment, "run": self.run_attributes(),
                "session": self.session, "started_at": self.started_at}


def _part(what: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as err:  # capture is best effort: the run must go on
        warnings.warn(f"start_run: could not capture the {what} ({err!r}); it is left out of the provenance",
                      Prov4MLWarning, stacklevel=4)
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
    env = _part("environment", capture_environment, out_dir, stem)
    if env is not None:
        ctx.environment, packages = env
        ctx.files.append((packages, "environment"))
    ctx.seed_at_start = _part("seed", detect_seed) or ctx.seed_at_start
    ctx.seconds = time.perf_counter() - t0
    log.debug("captured the context of run %s in %.3f s", run_id, ctx.seconds)
    return ctx
