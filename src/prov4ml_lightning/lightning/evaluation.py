"""The evaluation hooks of :class:`~prov4ml_lightning.lightning.callback.Prov4MLCallback`:
validation (in a fit, or stand-alone), test and predict loops and the sanity check, each an
activity with the datasets it read. A part of the callback: the state it reads (``_loops``,
``_epochs``, ``_fit``, the link) lives in ``Prov4MLCallback``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from prov4ml_lightning.lightning.loops import STAGES, stage_ident

__all__ = ["EvaluationHooks"]


class EvaluationHooks(Callback):
    """Validation, test, predict and sanity-check hooks (mixed into ``Prov4MLCallback``)."""

    def _start_loop(self, trainer: pl.Trainer, stage: str) -> None:
        in_fit = self._fit is not None and stage == "validate"
        link = self.link if in_fit else self._open(trainer)
        if self._ckpt_pending is not None:
            self._poll_checkpoints(trainer)
        role, loaders = STAGES[stage][2], getattr(trainer, STAGES[stage][3])
        used = link.datasets(loaders, role) if self.log_datasets else []
        if in_fit:
            self._epochs.loops += 1
            parent = self._epochs.ident or self._fit
            self._loops.start(trainer, link, f"{parent}.validation_{self._epochs.loops}", stage,
                              f"validation (epoch {trainer.current_epoch})", informed_by=parent, used=used,
                              part_of=parent)
            return
        self._stage = stage
        ident = stage_ident(stage)
        checkpoint = self._used_checkpoint(trainer, ident, restored_model=False)
        self._loops.start(trainer, link, ident, stage, stage, informed_by=self._last_fit, used=used,
                          attributes=checkpoint)

    def _end_loop(self, trainer: pl.Trainer, status: str = "FINISHED") -> None:
        self._loops.end(trainer, self.link, status)
        if self._stage is not None:  # a stand-alone stage: the run goes back to closed
            self._stage = None
            self._close(status)

    @override
    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        link = self.link
        used = link.datasets(trainer.val_dataloaders, "val") if self.log_datasets else []
        # part of the fit, started by it; it uses the untrained weights, informed by nothing earlier
        link.start(f"{self._fit}.sanity_check", "SanityCheck", "sanity check", used=used, part_of=self._fit)

    @override
    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        per_loader = [int(n) for n in trainer.num_sanity_val_batches]
        self.link.end(f"{self._fit}.sanity_check", {"status": "FINISHED", "batches": sum(per_loader),
                                                     "dataloaders": len(per_loader)})

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._start_loop(trainer, "validate")
        elif self.log_datasets and self._fit is not None:
            # the sanity check's dataloaders exist from here on (not yet at on_sanity_check_start)
            self.link.use(f"{self._fit}.sanity_check", self.link.datasets(trainer.val_dataloaders, "val"))

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._loops.batch_end()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._end_loop(trainer)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_loop(trainer, "test")

    @override
    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._loops.batch_end()

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_loop(trainer)

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_loop(trainer, "predict")

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_loop(trainer)
