"""The functional API, with the names and parameters of the original prov4ml.

Each function looks the current run up at call time (so tests and the callback can swap it)
and is a one- or two-line call into :class:`~prov4ml_lightning.tracking.recorder.RunRecorder`.

Example::

    import prov4ml_lightning as prov4ml

    prov4ml.start_run(prov_user_namespace="www.example.org", experiment_name="demo",
                      provenance_save_dir="prov", mlflow_save_dir="mlflow")
    prov4ml.log_param("lr", 1e-3)
    for step in range(100):
        prov4ml.log_metric("loss", 1 / (step + 1), prov4ml.Context.TRAINING, step=step)
    prov4ml.log_model(model, "mlp")
    prov4ml.end_run()
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from prov4ml_lightning.capture import sample_system_metrics_into
from prov4ml_lightning.context import Context
from prov4ml_lightning.distributed.parts import start_on_ranks
from prov4ml_lightning.runs import open_run
from prov4ml_lightning.tracking.config import RunConfig
from prov4ml_lightning.tracking.recorder import RunOutputs, RunRecorder
from prov4ml_lightning.tracking.registry import current_run, require_run

__all__ = [
    "active_run",
    "end_run",
    "get_run_id",
    "log_artifact",
    "log_current_execution_time",
    "log_metric",
    "log_metrics",
    "log_model",
    "log_param",
    "log_params",
    "log_system_metrics",
    "start_run",
]


def start_run(
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
    system_metrics_interval: float = 10.0,
    provenance_formats: tuple[str, ...] = ("json",),
    collect_all_ranks: bool = False,
    flush_interval: float = 2.0,
) -> RunRecorder:
    """Open a run; usable as a context manager (an exception inside ends it FAILED and re-raises).

    Args:
        prov_user_namespace: namespace of the PROV records, e.g. ``"www.example.org"``
            (normalised to the absolute IRI ``http://www.example.org/``).
        experiment_name: MLflow experiment (created when missing); no path separators.
        provenance_save_dir: folder for the PROV document, its graph and the metric sidecar.
        mlflow_save_dir: folder of the embedded MLflow store (``sqlite:///<dir>/mlflow.db``,
            artifacts in ``<dir>/artifacts``) used unless ``tracking_uri`` or
            ``MLFLOW_TRACKING_URI`` names another store.
        nested: start a child of the run already open instead of failing.
        tags: MLflow run tags, also PROV attributes of the run.
        description: MLflow run description, also a PROV attribute.
        log_system_metrics: sample CPU/memory/disk/GPU on a background thread every
            ``system_metrics_interval`` seconds.
        tracking_uri: an MLflow tracking URI (``http://host:port``, ``sqlite:///...``).
        run_name: MLflow run name (MLflow picks one when omitted).
        system_metrics_interval: seconds between background system-metric samples.
        provenance_formats: PROV serialisations written by ``end_run`` among
            ``json`` (always), ``provn``, ``ttl`` and ``xml``.
        collect_all_ranks: in a distributed job (``torchrun``: rank and world size from
            ``torch.distributed`` or ``RANK``/``WORLD_SIZE``), whether ranks other than zero
            record too. Either way global rank zero alone writes the MLflow run and the PROV
            document. ``False``: the other ranks get a run that records nothing (no rank
            communicates). ``True``: every rank must call ``start_run`` after
            ``torch.distributed.init_process_group`` (the run id is broadcast); each records
            into its part folder, which rank zero merges at ``end_run`` (metrics as
            ``rank<k>/<key>``). See docs/distributed-and-servers.md.
        flush_interval: seconds between the background writer's drains of the metric buffer
            into the sidecar file and MLflow (a process killed hard loses at most this much).

    Raises:
        RunAlreadyActiveError: a run is open and ``nested`` is false.
        Prov4MLInputError: a name, namespace or folder is unusable.
    """
    config = RunConfig(
        prov_user_namespace=prov_user_namespace, experiment_name=experiment_name,
        provenance_save_dir=provenance_save_dir, mlflow_save_dir=mlflow_save_dir, nested=nested, tags=tags,
        description=description, log_system_metrics=log_system_metrics, tracking_uri=tracking_uri,
        run_name=run_name, system_metrics_interval=system_metrics_interval, provenance_formats=provenance_formats,
        collect_all_ranks=collect_all_ranks, flush_interval=flush_interval,
    )
    return start_on_ranks(lambda rank: open_run(config, rank=rank), config)


def end_run(status: str = "FINISHED") -> RunOutputs | None:
    """End the current run: flush, end the MLflow run, write the PROV files and return their paths.

    Safe to call twice: with no run open it returns ``None``.
    """
    run = current_run()
    return None if run is None else run.end(status)


def log_metric(key: str, value: Any, context: Context = Context.TRAINING, step: int | None = None,
               timestamp: int | None = None) -> None:
    """Log one point of metric ``key`` in ``context``.

    ``value`` may be a Python or NumPy number or a one-element tensor (converted off the
    training thread). ``step`` defaults to one past the series' last step; ``timestamp`` is in
    milliseconds since the epoch (default: now).
    """
    require_run("log_metric").log_metric(key, value, context, step, timestamp)


def log_metrics(metrics: Mapping[str, Any], context: Context = Context.TRAINING,
                step: int | None = None) -> None:
    """Log several metrics at the same step and time."""
    require_run("log_metrics").log_metrics(metrics, context, step)


def log_param(key: str, value: Any) -> None:
    """Log one hyperparameter; a dict value is flattened to ``key/sub`` params."""
    require_run("log_param").log_params({key: value}, call="log_param")


def log_params(params: Mapping[str, Any]) -> None:
    """Log hyperparameters; nested dicts are flattened with ``/``."""
    require_run("log_params").log_params(params)


def log_artifact(path: str | os.PathLike[str], context: Context | None = None, *,
                 artifact_path: str | None = None) -> None:
    """Copy a file or folder into the run's artifacts and record it (with its sha256) in PROV."""
    require_run("log_artifact").log_artifact(path, context, artifact_path=artifact_path)


def log_model(model: torch.nn.Module, model_name: str, log_model_info: bool = True,
              **mlflow_kwargs: Any) -> None:
    """Log ``model`` with MLflow's pytorch flavour and record it in PROV as generated by the run.

    With ``log_model_info`` the parameter counts and memory footprint by dtype are recorded
    too. Calling it again with the same name records a new version. Extra keyword arguments
    (``input_example``, ``signature``, ...) go to ``mlflow.pytorch.log_model``.
    """
    require_run("log_model").log_model(model, model_name, log_model_info, **mlflow_kwargs)


def log_current_execution_time(label: str, context: Context = Context.TRAINING,
                               step: int | None = None) -> None:
    """Log the seconds elapsed since the run started as metric ``execution_time/<label>``."""
    run = require_run("log_current_execution_time")
    run.log_metric(f"execution_time/{label}", run.elapsed(), context, step,
                   call="log_current_execution_time")


def log_system_metrics(context: Context = Context.TRAINING, step: int | None = None) -> None:
    """Log one sample of CPU, memory, disk and (when present) GPU metrics."""
    run = require_run("log_system_metrics")
    if isinstance(run, RunRecorder):  # not a rank's run that records nothing
        sample_system_metrics_into(run, context, step)


def get_run_id() -> str:
    """The MLflow run id of the current run (``None`` on a rank other than zero that records
    nothing: ``start_run(collect_all_ranks=False)`` in a distributed job)."""
    return require_run("get_run_id").run_id


def active_run() -> RunRecorder | None:
    """The current run, or ``None``."""
    return current_run()
