"""Where the front doors put a run together: the core's recorder with the plug-ins it does not know.

``prov4ml.start_run`` and ``Prov4MLCallback`` both open their run with :func:`open_run`: the
core (:mod:`prov4ml_lightning.tracking`) opens or reopens the recorder, and this module plugs
in, before the run becomes current, what lives outside the core: the code/environment capture
and model statistics (``capture/``), the ranks of a distributed job (``distributed/``), the
system-metrics sampler, stopped when the run ends, and the original prov4ml's execution-time params.
"""

from __future__ import annotations

import time

from prov4ml_lightning.capture import capture_into, start_system_metrics
from prov4ml_lightning.distributed.parts import attach_ranks
from prov4ml_lightning.distributed.ranks import RankInfo
from prov4ml_lightning.tracking.config import RunConfig
from prov4ml_lightning.tracking.recorder import RunRecorder
from prov4ml_lightning.tracking.start import open_recorder

__all__ = ["log_execution_time", "open_run"]


def open_run(config: RunConfig, *, rank: RankInfo | None = None, run_id: str | None = None) -> RunRecorder:
    """Open (or, with ``run_id``, reopen) the run ``config`` describes and make it the current one.

    ``rank`` (global rank zero of a distributed job) makes it the run of the job;
    ``config.collect_all_ranks`` says whether the other ranks send their parts.
    """

    def plug_in(run: RunRecorder) -> None:
        capture_into(run)
        log_execution_time(run, "execution_start_time")
        run.before_end(lambda r, _status: log_execution_time(r, "execution_end_time"))
        if rank is not None and rank.distributed:
            attach_ranks(run, rank, config.collect_all_ranks)
        if config.log_system_metrics:
            start_system_metrics(run, config.system_metrics_interval)

    return open_recorder(config, run_id=run_id, prepare=plug_in)


def log_execution_time(run: RunRecorder, name: str) -> None:
    """The original prov4ml's param ``name`` (``execution_start_time`` at the start, ``execution_end_time``
    at the end; seconds since the epoch), in MLflow only: PROV has them as the run's start and end.
    Params are immutable: a reopened run (resume, test after fit) keeps its first opening's value
    and records the n-th opening's as ``<name>/<n>``."""
    now = time.time()
    if run.log_mlflow_params({name: now}, call=name):
        n = 2
        while f"{name}/{n}" in run.mlflow_only_params:
            n += 1
        run.log_mlflow_params({f"{name}/{n}": now}, call=name)
