"""The shared Lightning workload of the peer benchmark, and the timing probe every config carries.

A small MLP regresses a noisy linear target on synthetic data: ``STEPS`` training batches per
epoch, ``VAL_STEPS`` validation batches, two metrics logged every training step
(``train_loss``, ``train_mae``) and one per validation epoch (``val_loss``). Lightning is told to
hand every step to its loggers (``log_every_n_steps=1``), so every config has the same number of
points to keep.
"""

from __future__ import annotations

import os
import time
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["KEYS", "STEPS", "VAL_STEPS", "Probe", "Regressor", "expected_points", "loaders", "make_trainer"]

STEPS = int(os.environ.get("PROV4ML_BENCH_STEPS", "250"))  # peers.py --steps (issue 17's workload: 256)
VAL_STEPS = 50
BATCH = 32
FEATURES = 32
KEYS = ("train_loss", "train_mae", "val_loss")


def expected_points(epochs: int) -> dict[str, int]:
    """The points a config that drops nothing keeps, per key."""
    return {"train_loss": STEPS * epochs, "train_mae": STEPS * epochs, "val_loss": epochs}


class Regressor(pl.LightningModule):
    def __init__(self, hidden: int = 64, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        pred = self.net(x)
        loss = nn.functional.mse_loss(pred, y)
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        self.log("train_mae", (pred - y).abs().mean(), on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y), on_step=False, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def loaders(seed: int = 0) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(FEATURES, 1, generator=g)

    def data(n: int) -> TensorDataset:
        x = torch.randn(n, FEATURES, generator=g)
        return TensorDataset(x, x @ w + 0.1 * torch.randn(n, 1, generator=g))

    return (DataLoader(data(STEPS * BATCH), batch_size=BATCH, shuffle=False),
            DataLoader(data(VAL_STEPS * BATCH), batch_size=BATCH))


class Probe(pl.Callback):
    """Records when each training batch starts and when the last one ended (perf_counter)."""

    def __init__(self) -> None:
        self.batch_starts: list[list[float]] = []
        self.last_batch_end = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.batch_starts.append([])

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.batch_starts[-1].append(time.perf_counter())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.last_batch_end = time.perf_counter()


def make_trainer(epochs: int, probe: Probe, logger: Any = False, callbacks: list[Any] | None = None,
                 default_root_dir: str | None = None) -> pl.Trainer:
    # The probe goes first so its batch-start time is taken before any other callback runs.
    return pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=logger, callbacks=[probe, *(callbacks or [])],
        log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=default_root_dir,
    )
