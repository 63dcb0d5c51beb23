"""The loops of a Lightning run, one PROV activity each with its step and epoch values:
training epochs (:class:`EpochTracker`) and evaluation loops (:class:`LoopTracker`: validation
inside fit, ``validate``, ``test``, ``predict``).

Validation loops inside ``fit`` are named ``<epoch>.validation_<k>`` and informed by their
training epoch; stand-alone stages are named ``<stage>_<time>_<random>`` (unique across the
sessions of a reopened run) and informed by the run's last fit.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from prov4ml_lightning.context import Context
from prov4ml_lightning.lightning.hparams import lr_names
from prov4ml_lightning.lightning.logged import EpochDiff, loop_results, should_log_step, step_metrics

__all__ = ["STAGES", "EpochTracker", "LoopTracker", "stage_ident"]

#: stage -> (activity kind, metric context, dataset role, trainer attribute with its dataloaders)
STAGES: dict[str, tuple[str, Context | None, str, str]] = {
    "validate": ("ValidationLoop", Context.VALIDATION, "val", "val_dataloaders"),
    "test": ("TestLoop", Context.TESTING, "test", "test_dataloaders"),
    "predict": ("PredictLoop", None, "predict", "predict_dataloaders"),
}


def stage_ident(stage: str) -> str:
    """The activity id of a stand-alone ``validate``/``test``/``predict`` call."""
    return f"{stage}_{time.strftime('%Y%m%dT%H%M%S')}_{uuid.uuid4().hex[:4]}"


class LoopTracker:
    """The one evaluation loop running now.

    Step values (metrics logged with ``on_step=True`` in ``validation_step``/``test_step``) are
    recorded every batch, as Lightning logs them, at a running batch count per context
    (:attr:`batches`, kept in the callback's checkpoint state); epoch values at the loop's end,
    at ``trainer.global_step``.
    """

    def __init__(self) -> None:
        self.ident: str | None = None
        self.context: Context | None = None
        self.batches: dict[str, int] = {}
        self._diff = EpochDiff()
        self._step_keys: set[str] = set()
        self._results: Any = None

    def start(self, trainer: Any, link: Any, ident: str, stage: str, label: str, *,
              informed_by: str | None, used: list[tuple[str, str]],
              attributes: dict[str, Any] | None = None, part_of: str | None = None) -> None:
        kind, context, _, _ = STAGES[stage]
        self.ident, self.context, self._step_keys = ident, context, set()
        link.start(ident, kind, label, informed_by=informed_by, used=used, part_of=part_of,
                   attributes={"epoch": trainer.current_epoch, "global_step": trainer.global_step,
                               **(attributes or {})})
        self._diff.start(trainer)
        self._results = loop_results(trainer)

    def batch_end(self, trainer: Any, link: Any) -> None:
        if self.ident is None or self.context is None:
            return
        values = step_metrics(trainer, self._results)
        if values:
            counter = self.batches.get(self.context.value, 0)
            self.batches[self.context.value] = counter + 1
            link.log(values, self.context, counter, self.ident)
            self._step_keys.update(values)

    def end(self, trainer: Any, link: Any, status: str = "FINISHED") -> bool:
        """End the loop (if one runs): its epoch values, then its activity. Returns whether one ran."""
        if self.ident is None:
            return False
        if self.context is not None and status == "FINISHED":
            values = self._diff.collect(trainer, exclude=self._step_keys)
            link.log(values, self.context, trainer.global_step, self.ident)
        link.end(self.ident, {"status": status})
        self.ident, self._results = None, None
        return True


class EpochTracker:
    """The training epoch running now: its activity, its step values (every ``log_every_n_steps``
    optimizer steps, with the learning rates) and its epoch values."""

    def __init__(self) -> None:
        self.ident: str | None = None
        self._fit: str | None = None
        self._previous: str | None = None  # the last epoch ended in this fit
        self.loops = 0  # validation loops run inside this epoch
        self._values: dict[str, Any] | None = None
        self._diff = EpochDiff()
        self._last_step: int | None = None
        self._lrs: dict[str, Any] = {}
        self._results: Any = None

    def fit_started(self, trainer: Any) -> None:
        self._last_step = trainer.global_step  # restored by now when resuming

    def start(self, trainer: Any, link: Any, fit: str | None, used: list[tuple[str, str]]) -> None:
        epoch = trainer.current_epoch
        # part of the fit (started by it); informed by the epoch whose weights it goes on training
        previous, self._previous = self._previous if self._fit == fit else None, None
        self.ident, self.loops, self._values, self._fit = f"{fit}.epoch_{epoch}", 0, None, fit
        self._results = loop_results(trainer)
        link.start(self.ident, "TrainingEpoch", f"epoch {epoch}", informed_by=previous, part_of=fit,
                   attributes={"epoch": epoch, "first_step": trainer.global_step}, used=used)

    def batch_start(self, trainer: Any, learning_rates: bool) -> None:
        if learning_rates:
            # Read before the step: Lightning steps schedulers before on_train_batch_end, and the
            # rate to record is the one this batch trained with.
            self._lrs = {name: opt.param_groups[j]["lr"] for name, opt, j in lr_names(trainer)}

    def batch_end(self, trainer: Any, link: Any, automatic: bool, every: int) -> None:
        step = trainer.global_step
        stepped, self._last_step = step != self._last_step, step
        if automatic and not stepped:
            return  # accumulating gradients: Lightning logs nothing either
        if not should_log_step(trainer, every):
            return
        link.log(step_metrics(trainer, self._results), Context.TRAINING, step, self.ident)
        link.log(self._lrs, Context.TRAINING, step, self.ident)

    def epoch_end(self, trainer: Any) -> None:
        # Values logged in training_step with on_epoch=True are final here; the module's own
        # on_train_epoch_end runs after the callback's, so its values are collected at close.
        self._values = step_metrics(trainer)
        self._diff.start(trainer)

    def log_epoch_values(self, trainer: Any, link: Any) -> None:
        if self.ident is not None and self._values is not None:
            values = {**self._values, **self._diff.collect(trainer)}
            link.log(values, Context.TRAINING, trainer.global_step, self.ident)
            self._values = None

    def end(self, link: Any, attributes: dict[str, Any]) -> None:
        link.end(self.ident, attributes)
        self._previous, self.ident, self._results = self.ident, None, None
