"""A LightningModule and Trainer instrumented the way a user of the original prov4ml would.

Written for this project in the style of the original prov4ml's examples: it uses only the
original library's API names (``start_run_ctx``, ``log_optimizer``, ``log_flops_per_batch``,
``ProvMLLogger``, ``ModelVersioningLogger``...); no code was copied from there. A user of the
original would switch to this package by changing ``import prov4ml`` into
``import prov4ml_lightning as prov4ml``, which is the only import of the package below.

Run it as ``python lightning_module_example.py`` from the folder it should write into: the MLflow
store goes to ``./test_runs``, the provenance files to ``./prov``, Lightning's checkpoints under
``./tiny_classifier``. The data are synthetic (made here, no download); two epochs on the CPU take
a few seconds.
"""

import shutil
import subprocess

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prov4ml_lightning as prov4ml

EPOCHS = 2
BATCH_SIZE = 16
FEATURES = 8
CLASSES = 3


def shifted_circles(size: int, seed: int) -> TensorDataset:
    """Noisy points on ``CLASSES`` unit circles shifted along the diagonal, labelled by their circle
    (two features carry the circles, the others only noise)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (size,), generator=gen)
    t = torch.rand(size, 1, generator=gen) * 6.28
    base = torch.cat([torch.cos(t), torch.sin(t)], dim=1) + labels.unsqueeze(1).float() * 1.5
    noise = 0.2 * torch.randn(size, FEATURES, generator=gen)
    features = torch.cat([base, torch.zeros(size, FEATURES - 2)], dim=1) + noise
    return TensorDataset(features, labels)


class TinyClassifier(L.LightningModule):
    def __init__(self, hidden: int = 24, learning_rate: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()  # handed to the loggers: params of the run
        self.body = nn.Sequential(nn.Linear(FEATURES, hidden), nn.Tanh(), nn.Linear(hidden, CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        # through the Lightning loggers...
        self.log("CE_train", loss)
        # ...or straight into the run
        prov4ml.log_metric("CE_train_direct", loss, prov4ml.Context.TRAINING, step=self.current_epoch)
        prov4ml.log_flops_per_batch("train_flops", self, batch, prov4ml.Context.TRAINING, step=self.current_epoch)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("test_loss", loss)
        prov4ml.log_metric("CE_test", loss, prov4ml.Context.EVALUATION, step=batch_idx)

    def on_train_epoch_end(self) -> None:
        epoch = self.current_epoch
        prov4ml.log_metric("epoch", epoch, prov4ml.Context.TRAINING, step=epoch)
        prov4ml.save_model_version(self, f"classifier_version_{epoch}", prov4ml.Context.TRAINING, step=epoch)
        prov4ml.log_system_metrics(prov4ml.Context.TRAINING, step=epoch)
        prov4ml.log_carbon_metrics(prov4ml.Context.TRAINING, step=epoch)
        prov4ml.log_current_execution_time("train_epoch_time", prov4ml.Context.TRAINING, epoch)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.learning_rate, momentum=0.9)
        prov4ml.log_optimizer(optimizer)
        return optimizer


torch.manual_seed(0)
train_loader = DataLoader(shifted_circles(4 * BATCH_SIZE, seed=11), batch_size=BATCH_SIZE, shuffle=True)
val_loader = DataLoader(shifted_circles(2 * BATCH_SIZE, seed=12), batch_size=BATCH_SIZE)
test_loader = DataLoader(shifted_circles(2 * BATCH_SIZE, seed=13), batch_size=BATCH_SIZE)

with prov4ml.start_run_ctx(
    prov_user_namespace="www.example.org",
    experiment_name="original_style_lightning",
    provenance_save_dir="prov",
    mlflow_save_dir="test_runs",
    create_graph=True,
):
    # a nested dict: one param per leaf
    prov4ml.log_param("dataset", {"train": len(train_loader.dataset), "val": len(val_loader.dataset),
                                  "test": len(test_loader.dataset)})
    model = TinyClassifier()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=EPOCHS,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=[prov4ml.ProvMLLogger(name="tiny_classifier"),
                prov4ml.ModelVersioningLogger(".", name="tiny_classifier")],
    )
    trainer.fit(model, train_loader, val_loader)
    prov4ml.log_model(model, "classifier_final")
    trainer.test(model, test_loader)
    # the run id names the graph's file: ask for it while the run is still open
    run_id = prov4ml.get_run_id()

dot_path = f"prov/provgraph_{run_id}.dot"
if shutil.which("dot"):
    subprocess.run(["dot", "-Tsvg", "-O", dot_path], check=True)
