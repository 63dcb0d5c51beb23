"""Tiny LightningModules and a DataModule for callback tests (CPU, milliseconds per step).

Importable as ``tests.lightning_models`` so MLflow can unpickle a logged module in the tests.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["FailingModel", "ManualOptModel", "TinyDataModule", "TinyModel", "fast_trainer"]


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x.sum(dim=1, keepdim=True) > 0).float()
    return TensorDataset(x, y)


class TinyDataModule(pl.LightningDataModule):
    """64 train / 32 val / 32 test samples of a 4-feature binary problem."""

    def __init__(self, batch_size: int = 8, n_train: int = 64, val_loaders: int = 1) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        self.train_set, self.val_set, self.test_set = _data(self.hparams.n_train, 0), _data(32, 1), _data(32, 2)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> Any:
        loaders = [DataLoader(self.val_set, batch_size=16) for _ in range(self.hparams.val_loaders)]
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=16)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=16)


class TinyModel(pl.LightningModule):
    """A 4-8-1 MLP logging ``train_loss`` (step and epoch), ``val_loss``, ``val_acc``, ``test_acc``."""

    def __init__(self, lr: float = 0.1, hidden: int = 8, optimizer: str = "sgd", scheduler: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        acc = ((logits > 0).float() == y).float().mean()
        return loss, acc

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        loss, acc = self._loss(batch)
        self.log("val_loss", loss)
        self.log("val_acc", acc)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        loss, acc = self._loss(batch)
        self.log("test_loss", loss)
        self.log("test_acc", acc)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> Any:
        if self.hparams.optimizer == "adam":
            opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        else:
            opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        if not self.hparams.scheduler:
            return opt
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class FailingModel(TinyModel):
    """Raises in ``training_step`` once ``global_step`` reaches ``fail_at``."""

    def __init__(self, fail_at: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step >= self.hparams.fail_at:
            raise RuntimeError(f"boom at step {self.global_step}")
        return super().training_step(batch, batch_idx)


class ManualOptModel(TinyModel):
    """Manual optimization: one ``optimizer.step()`` per batch."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        loss, _ = self._loss(batch)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.log("train_loss", loss)
        return loss


def fast_trainer(root: Any, callbacks: list, **kwargs: Any) -> pl.Trainer:
    """A CPU trainer without progress bar, summary or logger (the callback is what is tested);
    ``root`` is its ``default_root_dir`` (where the default ModelCheckpoint writes)."""
    settings: dict[str, Any] = dict(
        default_root_dir=str(root), accelerator="cpu", devices=1, max_epochs=2, logger=False,
        enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=2, num_sanity_val_steps=1,
    )
    settings.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **settings)
