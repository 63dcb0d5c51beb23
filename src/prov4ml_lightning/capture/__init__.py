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
    """

    code: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    seed_at_start: SeedInfo = field(default_factory=lambda: SeedInfo(None, None, None))
    files: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0

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
        """The plain mapping the PROV builder reads (``code``, ``environment``, ``run``)."""
        return {"code": self.code, "environment": self.environment, "run": self.run_attributes()}


def _part(what: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as err:  # capture is best effort: the run must go on
        warnings.warn(f"start_run: could not capture the {what} ({err!r}); it is left out of the provenance",
                      Prov4MLWarning, stacklevel=4)
        return None


def capture_context(out_dir: Path, run_id: str) -> RunContext:
    """Capture code, environment and seed of run ``run_id``, writing its files into ``out_dir``."""
    t0 = time.perf_counter()
    ctx = RunContext()
    code = _part("code (script, git)", capture_code, out_dir, run_id)
    if code is not None:
        ctx.code, diff = code
        if diff is not None:
            ctx.files.append((diff, "code"))
    env = _part("environment", capture_environment, out_dir, run_id)
    if env is not None:
        ctx.environment, packages = env
        ctx.files.append((packages, "environment"))
    ctx.seed_at_start = _part("seed", detect_seed) or ctx.seed_at_start
    ctx.seconds = time.perf_counter() - t0
    log.debug("captured the context of run %s in %.3f s", run_id, ctx.seconds)
    return ctx
