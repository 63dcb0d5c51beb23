"""Tiny modules for the parity and non-interference tests: each setup of issue 16 in a few batches.

Importable (``tests.lightning.parity_models``) so a logged module can be unpickled.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

__all__ = ["NoisyDataset", "ParityDataModule", "ParityModel", "Stream", "TwoOptimizers", "make_data"]


def make_data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, (x.sum(dim=1, keepdim=True) > 0).float())


class NoisyDataset(Dataset):
    """Items jittered with Python's global ``random``: a fit that draws from every global generator."""

    def __init__(self, n: int = 16) -> None:
        self.base = make_data(n, 3)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[i]
        return x + random.gauss(0.0, 0.1), y


class Stream(IterableDataset):
    """An iterable dataset of 8 samples (no length: Lightning counts batches as it goes)."""

    def __iter__(self):
        data = make_data(8, 4)
        return iter([data[i] for i in range(len(data))])


class ParityModel(pl.LightningModule):
    """A 4-8-1 MLP with dropout; ``variant`` switches what it logs (see each method)."""

    def __init__(self, lr: float = 0.05, variant: str = "plain", **extra: Any) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x).float()
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        return loss, ((logits > 0).float() == y).float().mean()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, acc = self._loss(batch)
        if self.hparams.variant == "log_dict":
            self.log_dict({"train_loss": loss, "train_acc": acc}, on_step=True, on_epoch=True)
        elif self.hparams.variant == "user_step":
            self.log("train_loss", loss)
            self.log("step", float(10 * (self.global_step + 1)))  # Lightning's x value, not a metric
        elif self.hparams.variant == "odd_names":
            self.log("acc@1 (%)", acc, on_step=True, on_epoch=False)
            self.log("n" * 260, loss, on_step=True, on_epoch=False)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
        else:
            self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("epoch_marker", float(self.current_epoch))

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        loss, acc = self._loss(batch)
        self.log("val_loss", loss)
        self.log("val_acc_step_level", acc, on_step=True, on_epoch=False)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        loss, acc = self._loss(batch)
        self.log("test_loss", loss)
        self.log("test_acc", acc, on_step=True, on_epoch=True)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class TwoOptimizers(ParityModel):
    """Manual optimization with two optimizers (a GAN-like alternation on two halves of the net)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        first, second = self.optimizers()
        for opt in (first, second):
            loss, _ = self._loss(batch)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        self.log("train_loss", loss, on_step=True, on_epoch=True)

    def configure_optimizers(self) -> Any:
        return (torch.optim.SGD(self.net[0].parameters(), lr=self.hparams.lr),
                torch.optim.Adam(self.net[3].parameters(), lr=self.hparams.lr))


class ParityDataModule(pl.LightningDataModule):
    """8 training samples (4 batches of 2), 4 validation and test samples per loader."""

    def __init__(self, loaders: int = 1, iterable: bool = False, noisy: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()

    def train_dataloader(self) -> DataLoader:
        if self.hparams.iterable:
            return DataLoader(Stream(), batch_size=2)
        data = NoisyDataset() if self.hparams.noisy else make_data(8, 0)
        return DataLoader(data, batch_size=2, shuffle=True)

    def _eval(self, seed: int) -> Any:
        loaders = [DataLoader(make_data(4, seed + i), batch_size=2) for i in range(self.hparams.loaders)]
        return loaders[0] if len(loaders) == 1 else loaders

    def val_dataloader(self) -> Any:
        return self._eval(10)

    def test_dataloader(self) -> Any:
        return self._eval(20)

    def predict_dataloader(self) -> Any:
        return self._eval(30)
