"""A Lightning CNN on synthetic MNIST-like digits, recorded by ``Prov4MLCallback`` with no logging code.

The data are 28x28 grayscale images of ten classes, each class a fixed random stroke pattern
plus noise and a random shift, generated on the fly (no download). The script trains with
checkpointing and early stopping, tests the best checkpoint, and prints where the MLflow run,
the PROV document and its graph were written.

Run: python examples/lightning_mnist_like.py [--out DIR] [--epochs N]
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prov4ml_lightning as prov4ml


def synthetic_digits(n: int, seed: int) -> TensorDataset:
    """``n`` images of ten classes: a class template (fixed seed) shifted by up to 2 pixels, plus noise."""
    templates = (torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(1234)) > 0.8).float()
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    shifts = torch.randint(-2, 3, (n, 2), generator=g)
    images = torch.stack([torch.roll(templates[y], (int(dx), int(dy)), dims=(1, 2))
                          for y, (dx, dy) in zip(labels.tolist(), shifts)])
    images = (images + 0.3 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    return TensorDataset(images, labels)


class DigitsData(L.LightningDataModule):
    def __init__(self, n_train: int = 2048, n_val: int = 512, n_test: int = 512, batch_size: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        self.train_set = synthetic_digits(self.hparams.n_train, seed=0)
        self.val_set = synthetic_digits(self.hparams.n_val, seed=1)
        self.test_set = synthetic_digits(self.hparams.n_test, seed=2)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)


class SmallCNN(L.LightningModule):
    def __init__(self, channels: int = 16, lr: float = 2e-3, weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * channels * 7 * 7, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        return nn.functional.cross_entropy(logits, y), (logits.argmax(dim=1) == y).float().mean()

    def training_step(self, batch, batch_idx):
        loss, acc = self._step(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        self.log("train_acc", acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, acc = self._step(batch)
        self.log("val_loss", loss)
        self.log("val_acc", acc)

    def test_step(self, batch, batch_idx):
        loss, acc = self._step(batch)
        self.log("test_loss", loss)
        self.log("test_acc", acc)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="example_output/lightning_mnist_like", help="output folder")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    out = Path(args.out)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")

    L.seed_everything(0, verbose=False)  # recorded as trainer/seed
    callback = prov4ml.Prov4MLCallback(
        prov_user_namespace="www.example.org",
        experiment_name="lightning_mnist_like",
        provenance_save_dir=out / "prov",
        mlflow_save_dir=out / "mlflow",
        description="A small CNN on synthetic MNIST-like digits, recorded by Prov4MLCallback",
    )
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,  # the callback records everything; no second logger needed
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=8,
        default_root_dir=out,
        callbacks=[
            callback,
            ModelCheckpoint(dirpath=out / "checkpoints", monitor="val_loss", save_top_k=2, save_last=True),
            EarlyStopping(monitor="val_loss", patience=2),
        ],
    )
    model, data = SmallCNN(), DigitsData()
    trainer.fit(model, datamodule=data)
    trainer.test(datamodule=data, ckpt_path="best")  # the same run gains a TestLoop activity

    outputs = callback.outputs
    mlflow_dir = (out / "mlflow").resolve()
    print(f"MLflow store:    {outputs.tracking_uri}")
    print(f"MLflow run id:   {outputs.run_id}")
    print(f"PROV document:   {outputs.prov_json}")
    print(f"PROV graph:      {outputs.prov_svg or outputs.prov_dot}")
    print(f"Metric points:   {outputs.metrics_file}")
    print(f"Browse the run:  mlflow ui --backend-store-uri sqlite:///{mlflow_dir}/mlflow.db")


if __name__ == "__main__":
    main()
