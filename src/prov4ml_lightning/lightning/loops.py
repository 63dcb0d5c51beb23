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
from prov4ml_lightning.lightning.hparams import lr_stats

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
    """The one evaluation loop running now: its activity, context and the batches it ran.

    Its values are not read here: Lightning hands them to its loggers, and the callback takes them
    there (:mod:`.tap`), at Lightning's steps (step values at the batch count of their dataloader in
    this loop, epoch values at the count of training batches that stepped). The batches a loop ran
    (our count, which Lightning's loggers do not get) are an attribute of its activity.
    """

    def __init__(self) -> None:
        self.ident: str | None = None
        self.context: Context | None = None
        self.batches = 0

    def start(self, trainer: Any, link: Any, ident: str, stage: str, label: str, *,
              informed_by: str | None, used: list[tuple[str, str]],
              attributes: dict[str, Any] | None = None, part_of: str | None = None) -> None:
        kind, context, _, _ = STAGES[stage]
        self.ident, self.context, self.batches = ident, context, 0
        link.start(ident, kind, label, informed_by=informed_by, used=used, part_of=part_of,
                   attributes={"epoch": trainer.current_epoch, "global_step": trainer.global_step,
                               **(attributes or {})})

    def batch_end(self) -> None:
        if self.ident is not None:
            self.batches += 1

    def end(self, trainer: Any, link: Any, status: str = "FINISHED") -> bool:
        """End the loop's activity (if one runs). Returns whether one ran."""
        if self.ident is None:
            return False
        link.end(self.ident, {"status": status, "batches": self.batches})
        self.ident = None
        return True


class EpochTracker:
    """The training epoch running now (its activity), and the learning rates, which the callback
    records like Lightning's ``LearningRateMonitor``: at a batch's start when Lightning logs at
    that batch (per-step schedulers and optimizers without one), and at an epoch's start (per-epoch
    schedulers), at the count of batches that stepped."""

    def __init__(self) -> None:
        self.ident: str | None = None
        self._fit: str | None = None
        self._previous: str | None = None  # the last epoch ended in this fit
        self.loops = 0  # validation loops run inside this epoch
        self.completed = 0  # epochs of the running fit that ended FINISHED (the callback resets it per fit)

    def start(self, trainer: Any, link: Any, fit: str | None, used: list[tuple[str, str]]) -> None:
        epoch = trainer.current_epoch
        # part of the fit (started by it); informed by the epoch whose weights it goes on training
        previous, self._previous = self._previous if self._fit == fit else None, None
        self.ident, self.loops, self._fit = f"{fit}.epoch_{epoch}", 0, fit
        link.start(self.ident, "TrainingEpoch", f"epoch {epoch}", informed_by=previous, part_of=fit,
                   attributes={"epoch": epoch, "first_step": trainer.global_step}, used=used)

    def learning_rates(self, trainer: Any, link: Any, interval: str) -> None:
        """Record the learning rates ``LearningRateMonitor`` logs at this point (``interval``: ``"step"``
        from a batch's start, ``"epoch"`` from an epoch's start)."""
        if interval == "step" and not trainer._logger_connector.should_update_logs:
            return
        rates = lr_stats(trainer, interval)
        if rates:
            link.log(rates, Context.TRAINING, trainer.fit_loop.epoch_loop._batches_that_stepped, self.ident)

    def last_ended(self, fit: str | None) -> str | None:
        """The training epoch of ``fit`` that ended last (``None`` when none of its epochs ended)."""
        return self._previous if fit is not None and (self._previous or "").startswith(f"{fit}.") else None

    def end(self, link: Any, attributes: dict[str, Any]) -> None:
        link.end(self.ident, attributes)
        if attributes.get("status") == "FINISHED":
            self.completed += 1
        self._previous, self.ident = self.ident, None
