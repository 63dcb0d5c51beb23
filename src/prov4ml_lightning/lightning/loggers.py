"""The original prov4ml's Lightning loggers: ``self.log`` values into the current run.

A third front door, as thin as the other two: :class:`ProvMLLogger` hands what Lightning gives its
loggers (``log_metrics``, ``log_hyperparams``) to the run opened with ``prov4ml.start_run``;
:class:`ModelVersioningLogger` does the same and records each checkpoint Lightning saves as a
model version. :func:`mlflow_logger_for` is ``prov4ml.get_mlflow_logger()``: Lightning's own
``MLFlowLogger`` bound to the run's store and id.

Both loggers of the original example in one Trainer receive the same ``metrics`` dict from
Lightning; the second to see it records nothing, so a point is never recorded twice.
"""

from __future__ import annotations

import os
import threading
import weakref
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from prov4ml_lightning.capture.model_info import file_state_dict_sha256
from prov4ml_lightning.capture.versions import MODEL_VERSION_KIND
from prov4ml_lightning.context import Context
from prov4ml_lightning.tracking.registry import current_run, require_run

__all__ = ["ModelVersioningLogger", "ProvMLLogger", "context_of_key", "get_mlflow_logger", "mlflow_logger_for"]

_lock = threading.Lock()
# run -> the last ``metrics`` dict Lightning handed one of our loggers (held, so its id is not reused)
_last_seen: weakref.WeakKeyDictionary[Any, Mapping[str, Any]] = weakref.WeakKeyDictionary()


def context_of_key(key: str) -> Context:
    """The phase of a key Lightning logged, from its name: ``val...`` validation, ``test...``
    testing (the key or one of its ``/`` parts), anything else training (a logger is not told
    which loop logged a value)."""
    parts = key.lower().split("/")
    if any(p.startswith("val") for p in parts):
        return Context.VALIDATION
    if any(p.startswith("test") for p in parts):
        return Context.TESTING
    return Context.TRAINING


class ProvMLLogger(Logger):
    """Lightning logger recording ``self.log`` values and hyperparameters into the current run.

    Open the run with ``prov4ml.start_run`` before ``trainer.fit``. Each value goes to
    ``log_metric`` under the key Lightning gives (with ``prefix``), at Lightning's step, in the
    context its name suggests (:func:`context_of_key`); ``epoch``, Lightning's x value, is not
    recorded as a metric. Hyperparameters go to ``log_params`` (a value already logged with
    another value is kept and warned about).

    Args:
        name: the experiment name Lightning shows (the run's own experiment is ``start_run``'s).
        version: the version Lightning shows.
        prefix: prepended to every metric key, with ``-`` (like Lightning's loggers).
        flush_logs_every_n_steps: accepted for the original signature; the run's background writer
            flushes every ``flush_interval`` seconds.

    Example::

        prov4ml.start_run("www.example.org", "demo", "prov", "mlflow")
        trainer = L.Trainer(logger=[prov4ml.ProvMLLogger()])
        trainer.fit(model, loader)
        prov4ml.end_run()
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(self, name: str | None = "lightning_logs", version: int | str | None = None, prefix: str = "",
                 flush_logs_every_n_steps: int = 100) -> None:
        super().__init__()
        self._name = name or ""
        self._version = version
        self._prefix = prefix
        self._flush_logs_every_n_steps = flush_logs_every_n_steps

    @property
    @override
    def name(self) -> str:
        return self._name

    @property
    @override
    def version(self) -> int | str | None:
        return self._version

    @property
    @override
    @rank_zero_experiment
    def experiment(self) -> Any:
        return require_run(f"{type(self).__name__}.experiment")

    @override
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        run = require_run(f"{type(self).__name__}.log_metrics")
        with _lock:
            if _last_seen.get(run) is metrics:  # another of our loggers recorded this dict already
                return
            _last_seen[run] = metrics
        for key, value in metrics.items():
            if key == "epoch":
                continue
            full = f"{self._prefix}{self.LOGGER_JOIN_CHAR}{key}" if self._prefix else key
            run.log_metric(full, value, context_of_key(key), step, call=f"{type(self).__name__}.log_metrics")

    @override
    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        if isinstance(params, Namespace):
            params = vars(params)
        if params:
            require_run(f"{type(self).__name__}.log_hyperparams").log_params(
                params, call=f"{type(self).__name__}.log_hyperparams", keep_conflicts=True)


class ModelVersioningLogger(ProvMLLogger):
    """:class:`ProvMLLogger` that also records every checkpoint Lightning saves as a model version
    (an entity with the file's sha256 and the ``state_dict_sha256`` of the weights it holds,
    derived from the previous version, uploaded to the MLflow artifacts ``model_versions/``).

    Args:
        save_dir: the folder Lightning puts this logger's files (and, as first logger, the
            checkpoints) in.
        name, version, prefix, flush_logs_every_n_steps: as :class:`ProvMLLogger`.
    """

    def __init__(self, save_dir: str | os.PathLike[str], name: str | None = "lightning_logs",
                 version: int | str | None = None, prefix: str = "", flush_logs_every_n_steps: int = 100) -> None:
        super().__init__(name, version, prefix, flush_logs_every_n_steps)
        self._save_dir = os.fspath(save_dir)
        self._previous: str | None = None
        self._seen: set[str] = set()

    @property
    @override
    def save_dir(self) -> str:
        return self._save_dir

    @override
    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        run = current_run()
        if run is None or run.ended:
            return
        paths = [getattr(checkpoint_callback, attr, "") for attr in ("last_model_path", "best_model_path")]
        for path in dict.fromkeys(p for p in paths if p):
            if not os.path.isfile(path):
                continue
            stamp = f"{os.path.abspath(path)}:{os.stat(path).st_mtime_ns}"
            if stamp in self._seen:
                continue
            self._seen.add(stamp)
            record = run.log_artifact(path, artifact_path="model_versions", kind=MODEL_VERSION_KIND,
                                      name=os.path.splitext(os.path.basename(path))[0],
                                      derived_from=self._previous, call="ModelVersioningLogger",
                                      attributes={"model_name": self.name,
                                                  "saved_by": type(checkpoint_callback).__name__,
                                                  "state_dict_sha256": file_state_dict_sha256(path)})
            self._previous = record.name


class _RunMLFlowLogger(MLFlowLogger):
    # The run belongs to prov4ml: Lightning's end of fit must not end it (end_run does, with the PROV files).
    @override
    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if self._initialized and self._checkpoint_callback:
            self._scan_and_log_checkpoints(self._checkpoint_callback)


def mlflow_logger_for(run: Any, **kwargs: Any) -> MLFlowLogger:
    """A Lightning ``MLFlowLogger`` on ``run``'s MLflow store and run id; it does not end the run."""
    return _RunMLFlowLogger(experiment_name=run.info.experiment_name, tracking_uri=run.info.tracking_uri,
                            run_id=run.run_id, **kwargs)


def get_mlflow_logger() -> MLFlowLogger:
    """A Lightning ``MLFlowLogger`` writing into the current run (same store, same run id), as the
    original prov4ml's ``get_mlflow_logger()``.

    Lightning's ``self.log`` values then reach the MLflow run directly (not PROV: use
    :class:`ProvMLLogger` or ``Prov4MLCallback`` for that); the logger leaves ending the run to
    ``prov4ml.end_run``.
    """
    return mlflow_logger_for(require_run("get_mlflow_logger"))
