"""The original prov4ml's measurement calls of the functional API: model footprint, optimizer,
execution times, FLOPs, system and carbon metrics. Like :mod:`prov4ml_lightning.api`, each looks the
current run up at call time and calls into the recorder or the ``capture`` plug-ins."""

from __future__ import annotations

from typing import Any

import torch

from prov4ml_lightning.capture import sample_system_metrics_into
from prov4ml_lightning.capture.measures import measures_of
from prov4ml_lightning.capture.model_info import memory_footprint
from prov4ml_lightning.capture.versions import note_initial_weights
from prov4ml_lightning.context import Context
from prov4ml_lightning.errors import Prov4MLInputError
from prov4ml_lightning.runs import log_execution_time
from prov4ml_lightning.tracking.recorder import RunRecorder
from prov4ml_lightning.tracking.registry import require_run

__all__ = [
    "log_carbon_metrics",
    "log_current_execution_time",
    "log_execution_end_time",
    "log_execution_start_time",
    "log_flops_per_batch",
    "log_flops_per_epoch",
    "log_model_memory_footprint",
    "log_optimizer",
    "log_system_metrics",
]


def log_model_memory_footprint(model: torch.nn.Module, model_name: str = "default") -> None:
    """Log the original prov4ml's footprint params: ``model_name``, ``total_params``,
    ``memory_of_model`` and ``total_memory_load_of_model`` (megabytes; parameters at the precision
    of the attached Lightning trainer, else their own dtype, plus fp32 gradients and one fp32
    optimizer state). A second model's values go under ``<model_name>/<param>``, as params are
    immutable in a run. The first call for a model records its weights as the run's initial
    weights (an entity with their ``state_dict_sha256``), linked to the earlier run that produced
    them when the tracking store knows one (docs/lineage.md)."""
    run = require_run("log_model_memory_footprint")
    values = memory_footprint(model, model_name, "log_model_memory_footprint")
    note_initial_weights(run, model, model_name)
    taken = run.log_params(values, call="log_model_memory_footprint", keep_conflicts=True)
    if taken:
        run.log_params({f"{model_name}/{k}": val for k, val in taken.items()}, call="log_model_memory_footprint")


def log_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Log params ``optimizer_name``, ``lr`` (of the first parameter group) and the first group's
    other hyperparameters as ``optimizer/<name>`` (betas, weight_decay, ...)."""
    call = "log_optimizer"
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise Prov4MLInputError(f"{call}: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    params: dict[str, Any] = {"optimizer_name": type(optimizer).__name__}
    if "lr" in group:
        params["lr"] = float(group["lr"])
    params.update({f"optimizer/{k}": (list(val) if isinstance(val, tuple) else val)
                   for k, val in group.items() if k not in ("params", "lr") and not isinstance(val, torch.Tensor)})
    require_run(call).log_params(params, call=call)


def log_execution_start_time() -> None:
    """Log the MLflow param ``execution_start_time``: now, in seconds since the epoch. ``start_run``
    logs it already, as the original prov4ml's did; a later call is recorded as
    ``execution_start_time/<n>`` (params are immutable)."""
    log_execution_time(require_run("log_execution_start_time"), "execution_start_time")


def log_execution_end_time() -> None:
    """Log the MLflow param ``execution_end_time``: now, in seconds since the epoch. ``end_run`` logs it
    already, as the original prov4ml's did; an earlier call is recorded as ``execution_end_time``
    and the end's as ``execution_end_time/<n>``."""
    log_execution_time(require_run("log_execution_end_time"), "execution_end_time")


def log_current_execution_time(label: str, context: Context = Context.TRAINING,
                               step: int | None = None) -> None:
    """Log the seconds elapsed since the run started as metric ``execution_time/<label>``."""
    run = require_run("log_current_execution_time")
    run.log_metric(f"execution_time/{label}", run.elapsed(), context, step,
                   call="log_current_execution_time")


def log_flops_per_batch(label: str, model: torch.nn.Module, batch: Any, context: Context = Context.TRAINING,
                        step: int | None = None) -> int:
    """Count the forward FLOPs of ``model`` on ``batch`` (its first element for ``(x, y)``) with
    ``torch.utils.flop_counter`` and log the running total of ``label`` as metric ``label``, as
    the original prov4ml did. The extra forward pass changes neither the model's modes nor the
    random generators. Returns the total."""
    run = require_run("log_flops_per_batch")
    total = measures_of(run).flops.add_batch(label, model, batch)
    run.log_metric(label, total, context, step, call="log_flops_per_batch")
    return total


def log_flops_per_epoch(label: str, model: torch.nn.Module, dataset: Any, context: Context = Context.TRAINING,
                        step: int | None = None) -> int:
    """Log the running total of ``label``: the FLOPs of a forward pass over ``dataset`` (one
    item's FLOPs times its length, as the original prov4ml counted) added at each call."""
    run = require_run("log_flops_per_epoch")
    total = measures_of(run).flops.add_epoch(label, model, dataset)
    run.log_metric(label, total, context, step, call="log_flops_per_epoch")
    return total


def log_system_metrics(context: Context = Context.TRAINING, step: int | None = None, synchronous: bool = True,
                       timestamp: int | None = None) -> None:
    """Log one sample of CPU, memory, disk and (when present) GPU metrics.
    ``synchronous`` and ``timestamp`` are accepted for the original prov4ml's signature."""
    run = require_run("log_system_metrics")
    if isinstance(run, RunRecorder):  # not a rank's run that records nothing
        sample_system_metrics_into(run, context, step)


def log_carbon_metrics(context: Context = Context.TRAINING, step: int | None = None, synchronous: bool = True,
                       timestamp: int | None = None) -> dict[str, float]:
    """Log the energy, emissions and power measured by CodeCarbon since the run's first call.

    Metrics (CodeCarbon's names and units): ``emissions`` (kg CO2eq), ``emissions_rate``
    (kg/s), ``cpu_power``/``gpu_power``/``ram_power`` (W), ``cpu_energy``/``gpu_energy``/
    ``ram_energy``/``energy_consumed`` (kWh). CodeCarbon runs offline (no network; the carbon
    intensity of the country ``PROV4ML_CARBON_COUNTRY``, default ``USA``), one tracker per run,
    stopped by ``end_run``. Without CodeCarbon (the ``energy`` extra) the first call warns once
    and nothing is logged. Returns the values logged (``{}`` without CodeCarbon).
    """
    run = require_run("log_carbon_metrics")
    if not isinstance(run, RunRecorder):
        return {}
    values = measures_of(run).carbon.read()
    if values:
        run.log_metrics(values, context, step, timestamp)
    return values
