"""One node of a 2-node Lightning DDP job (gloo, CPU), run by tests/distributed/test_two_nodes.py under two
``torchrun --nnodes=2 --node_rank=<k> --nproc_per_node=1 --master_addr=127.0.0.1`` launchers on one machine.

Usage: ``two_node_train.py ROOT [--die-at STEP]``: with ``--die-at``, the node-1 rank kills its whole
launcher (its process group, SIGKILL) at that step, as a node that loses power. Prints ``RANK <k> RUN <id>``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lightning.pytorch as pl
import torch

import prov4ml_lightning as prov4ml
from tests.lightning_models import TinyDataModule, TinyModel


class NodeModel(TinyModel):
    def __init__(self, die_at: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.die_at = die_at

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.trainer.node_rank == 1 and self.global_step == self.die_at:
            # the node goes away: its launcher (torchrun, our parent) and this rank at once
            os.kill(os.getppid(), signal.SIGKILL)
            os.killpg(os.getpgid(0), signal.SIGKILL)
        return super().training_step(batch, batch_idx)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--die-at", type=int, default=-1)
    args = parser.parse_args()
    root = Path(args.root)
    torch.manual_seed(0)
    callback = prov4ml.Prov4MLCallback(prov_user_namespace="www.example.org", experiment_name="two-nodes",
                                       provenance_save_dir=root / "prov", mlflow_save_dir=root / "mlflow")
    trainer = pl.Trainer(default_root_dir=str(root), accelerator="cpu", devices=1, num_nodes=2, strategy="ddp",
                         max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, log_every_n_steps=2, num_sanity_val_steps=0,
                         callbacks=[callback])
    try:
        trainer.fit(NodeModel(die_at=args.die_at), datamodule=TinyDataModule(batch_size=8))
    finally:
        sys.stdout.write(f"RANK {trainer.global_rank} RUN {callback.run_id}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
