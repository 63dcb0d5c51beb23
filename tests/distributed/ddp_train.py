"""A 2-process Lightning DDP fit on CPU (gloo) with Prov4MLCallback, run as a script by
tests/distributed/test_distributed.py (Lightning's launcher starts the second process itself, so pytest is
never forked).

Usage: ``python tests/distributed/ddp_train.py ROOT [--strategy ddp|ddp_spawn] [--fail-rank K] [--tracking-uri URI]
[--upload-checkpoints] [--test]``. Prints ``RANK <k> RUN <run_id> OUT <PROV-JSON path>`` per rank.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `tests.` importable in Lightning's children

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import prov4ml_lightning as prov4ml
from tests.lightning_models import TinyDataModule, TinyModel


class RankModel(TinyModel):
    """TinyModel whose rank ``fail_rank`` raises at step ``fail_at``; also logs its rank."""

    def __init__(self, fail_rank: int = -1, fail_at: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_rank == self.hparams.fail_rank and self.global_step >= self.hparams.fail_at:
            raise RuntimeError(f"boom on rank {self.global_rank} at step {self.global_step}")
        return super().training_step(batch, batch_idx)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--tracking-uri")
    parser.add_argument("--upload-checkpoints", action="store_true")
    parser.add_argument("--test", action="store_true", help="then test the best checkpoint (a second session)")
    args = parser.parse_args()
    root = Path(args.root)
    torch.manual_seed(0)
    callback = prov4ml.Prov4MLCallback(
        prov_user_namespace="www.example.org", experiment_name="ddp", provenance_save_dir=root / "prov",
        mlflow_save_dir=root / "mlflow", tracking_uri=args.tracking_uri, log_system_metrics=True,
        system_metrics_interval=0.05, upload_checkpoints=args.upload_checkpoints,
    )
    trainer = pl.Trainer(
        default_root_dir=str(root), accelerator="cpu", devices=2, strategy=args.strategy, max_epochs=3,
        logger=False, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=2,
        num_sanity_val_steps=1, callbacks=[callback, ModelCheckpoint(dirpath=root / "ckpt", monitor="val_loss")],
    )
    try:
        data = TinyDataModule(batch_size=8)
        trainer.fit(RankModel(fail_rank=args.fail_rank), datamodule=data)
        if args.test:
            trainer.test(datamodule=data, ckpt_path="best")
    finally:
        # with ddp_spawn this process launched the ranks and is none of them: rank 0 handed the run back
        outputs = callback.outputs
        sys.stdout.write(f"RANK {trainer.global_rank} RUN {callback.run_id} "
                         f"OUT {outputs.prov_json if outputs is not None else None}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
