"""The evaluation loops of a Lightning run (validation inside fit, ``validate``, ``test``,
``predict``): one PROV activity each, with its step values and its epoch values.

Validation loops inside ``fit`` are named ``<epoch>.validation_<k>`` and informed by their
training epoch; stand-alone stages are named ``<stage>_<time>_<random>`` (unique across the
sessions of a reopened run) and informed by the run's last fit.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from prov4ml_lightning._lightning_metrics import EpochDiff, step_metrics
from prov4ml_lightning.context import Context

__all__ = ["STAGES", "LoopTracker", "stage_ident"]

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

    def start(self, trainer: Any, link: Any, ident: str, stage: str, label: str, *,
              informed_by: str | None, used: list[tuple[str, str]],
              attributes: dict[str, Any] | None = None) -> None:
        kind, context, _, _ = STAGES[stage]
        self.ident, self.context, self._step_keys = ident, context, set()
        link.start(ident, kind, label, informed_by=informed_by, used=used,
                   attributes={"epoch": trainer.current_epoch, "global_step": trainer.global_step,
                               **(attributes or {})})
        self._diff.start(trainer)

    def batch_end(self, trainer: Any, link: Any) -> None:
        if self.ident is None or self.context is None:
            return
        values = step_metrics(trainer)
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
        self.ident = None
        return True
