"""The checkpoint hooks of :class:`~prov4ml_lightning.lightning.callback.Prov4MLCallback`: the
checkpoint Lightning loads (resume, or a test of a checkpoint) and the files ModelCheckpoint saves,
hashed once they are on disk. A part of the callback: its state lives in ``Prov4MLCallback``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from prov4ml_lightning.capture.model_info import state_dict_sha256

__all__ = ["CheckpointHooks"]


class CheckpointHooks(Callback):
    """Checkpoint hooks (mixed into ``Prov4MLCallback``)."""

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        weights = checkpoint.get("state_dict") if trainer.is_global_zero else None  # rank zero records
        self._loaded = {"global_step": int(checkpoint.get("global_step", 0)), "epoch": checkpoint.get("epoch"),
                        "weights": state_dict_sha256(weights) if isinstance(weights, Mapping) else None}

    def _used_checkpoint(self, trainer: pl.Trainer, activity: str, restored_model: bool) -> dict[str, Any]:
        """Record the checkpoint Lightning loaded for this stage (if any); its attributes for the activity."""
        loaded, self._loaded = self._loaded, None
        if loaded is None or not trainer.ckpt_path:
            return {}
        # A resumed fit's weights as the module holds them after loading (strict_loading=False may load part).
        restored = (state_dict_sha256(trainer.lightning_module.state_dict())
                    if restored_model and trainer.is_global_zero else None)
        self.link.use_checkpoint(str(trainer.ckpt_path), loaded["global_step"], loaded["epoch"], activity,
                                 restored_model=restored_model, weights=loaded.get("weights"), restored=restored)
        return {"resumed_from" if restored_model else "checkpoint": str(trainer.ckpt_path),
                "start_step": loaded["global_step"]}

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # The file is written after this hook; it is hashed at the next hook (see _poll_checkpoints).
        if self.log_checkpoints:
            self._poll_checkpoints(trainer)  # an earlier save of this step (top-k before last) is on disk now
            self._ckpt_pending = (trainer.global_step, trainer.current_epoch)
            if "state_dict" in checkpoint:  # the weights written: ties the logged model to this file
                self.link.note_weights(trainer.global_step, checkpoint["state_dict"])
            # state_dict() ran before that poll: give this checkpoint the names known now
            state = checkpoint.get("callbacks", {}).get(self.state_key)
            if state is not None:
                state["checkpoints"] = {**self._earlier_checkpoints, **self.link.checkpoint_names()}

    def _poll_checkpoints(self, trainer: pl.Trainer, force: bool = False) -> None:
        """Record checkpoint files saved since the last poll; ``force`` looks even without a
        save seen in ``on_save_checkpoint`` (weights-only checkpoints skip that hook)."""
        if not self.log_checkpoints or (self._ckpt_pending is None and not force) or self._fit is None:
            return
        step, epoch = self._ckpt_pending or (trainer.global_step, trainer.current_epoch)
        self._ckpt_pending = None
        self.link.poll_checkpoints(trainer, self._epochs.ident or self._fit, step, epoch, self.upload_checkpoints)
