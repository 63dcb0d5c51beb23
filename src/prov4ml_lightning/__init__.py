"""prov4ml-lightning: full provenance of PyTorch and Lightning training runs.

Every run is written twice: as an MLflow run and as a W3C PROV document with its graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prov4ml_lightning.version import __version__

# Every public name is loaded on first use (PEP 562), so `import prov4ml_lightning` and the
# `prov4ml` command line (whose modules live in this package) do not import torch, MLflow or
# Lightning until a name that needs them is asked for: `prov4ml --help` stays fast.
_SOURCES = {
    "prov4ml_lightning.api": (
        "active_run", "end_run", "get_run_id", "log_artifact", "log_dataset", "log_metric", "log_metrics",
        "log_model", "log_param", "log_params", "save_model_version", "start_run", "start_run_ctx",
        "wait_for_mlflow",
    ),
    "prov4ml_lightning.api_measures": (
        "log_carbon_metrics", "log_current_execution_time", "log_execution_end_time", "log_execution_start_time",
        "log_flops_per_batch", "log_flops_per_epoch", "log_model_memory_footprint", "log_optimizer",
        "log_system_metrics",
    ),
    "prov4ml_lightning.context": ("Context",),
    "prov4ml_lightning.errors": (
        "NoActiveRunError", "Prov4MLError", "Prov4MLInputError", "Prov4MLWarning", "RunAlreadyActiveError",
        "TrackingUnavailableError",
    ),
    "prov4ml_lightning.signals": ("RunTerminated", "install_signal_handlers"),
    "prov4ml_lightning.tracking.config": ("RunConfig",),
    "prov4ml_lightning.tracking.recorder": ("RunOutputs", "RunRecorder"),
    # the callback and the loggers import Lightning (seconds)
    "prov4ml_lightning.lightning.callback": ("Prov4MLCallback",),
    "prov4ml_lightning.lightning.loggers": ("ProvMLLogger", "ModelVersioningLogger", "get_mlflow_logger"),
}
_SOURCE_OF = {name: module for module, names in _SOURCES.items() for name in names}

if TYPE_CHECKING:  # what type checkers and IDEs see
    from prov4ml_lightning.api import (
        active_run,
        end_run,
        get_run_id,
        log_artifact,
        log_dataset,
        log_metric,
        log_metrics,
        log_model,
        log_param,
        log_params,
        save_model_version,
        start_run,
        start_run_ctx,
        wait_for_mlflow,
    )
    from prov4ml_lightning.api_measures import (
        log_carbon_metrics,
        log_current_execution_time,
        log_execution_end_time,
        log_execution_start_time,
        log_flops_per_batch,
        log_flops_per_epoch,
        log_model_memory_footprint,
        log_optimizer,
        log_system_metrics,
    )
    from prov4ml_lightning.context import Context
    from prov4ml_lightning.errors import (
        NoActiveRunError,
        Prov4MLError,
        Prov4MLInputError,
        Prov4MLWarning,
        RunAlreadyActiveError,
        TrackingUnavailableError,
    )
    from prov4ml_lightning.lightning.callback import Prov4MLCallback
    from prov4ml_lightning.lightning.loggers import ModelVersioningLogger, ProvMLLogger, get_mlflow_logger
    from prov4ml_lightning.signals import RunTerminated, install_signal_handlers
    from prov4ml_lightning.tracking.config import RunConfig
    from prov4ml_lightning.tracking.recorder import RunOutputs, RunRecorder

__all__ = [
    "Context",
    "ModelVersioningLogger",
    "NoActiveRunError",
    "Prov4MLCallback",
    "Prov4MLError",
    "Prov4MLInputError",
    "Prov4MLWarning",
    "ProvMLLogger",
    "RunAlreadyActiveError",
    "RunConfig",
    "RunOutputs",
    "RunRecorder",
    "RunTerminated",
    "TrackingUnavailableError",
    "__version__",
    "active_run",
    "end_run",
    "get_mlflow_logger",
    "get_run_id",
    "install_signal_handlers",
    "log_artifact",
    "log_carbon_metrics",
    "log_current_execution_time",
    "log_dataset",
    "log_execution_end_time",
    "log_execution_start_time",
    "log_flops_per_batch",
    "log_flops_per_epoch",
    "log_metric",
    "log_metrics",
    "log_model",
    "log_model_memory_footprint",
    "log_optimizer",
    "log_param",
    "log_params",
    "log_system_metrics",
    "save_model_version",
    "start_run",
    "start_run_ctx",
    "wait_for_mlflow",
]


def __getattr__(name: str):
    module = _SOURCE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
