"""A plain PyTorch training loop instrumented the way a user of the original prov4ml would.

Written for this project in the style of the original prov4ml's examples: it uses only the
original library's API names (``start_run``, ``log_param``, ``log_metric``, ``save_model_version``,
``end_run``...); no code was copied from there. A user of the original would switch to this
package by changing ``import prov4ml`` into ``import prov4ml_lightning as prov4ml``, which is the
only import of the package below.

Run it as ``python torch_loop_example.py`` from the folder it should write into: the MLflow store
goes to ``./test_runs``, the provenance files to ``./prov``. The data are synthetic (made here, no
download); two epochs take a few seconds on a CPU.
"""

import shutil
import subprocess

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import prov4ml_lightning as prov4ml

EPOCHS = 2
BATCH_SIZE = 32
FEATURES = 16
CLASSES = 4
TRAIN_ITEMS = 4 * BATCH_SIZE  # four batches an epoch
VAL_ITEMS = 2 * BATCH_SIZE
TEST_ITEMS = 2 * BATCH_SIZE


class Jitter:
    """Add Gaussian noise of standard deviation ``sigma`` to a feature vector."""

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sigma * torch.randn_like(x)

    def __repr__(self) -> str:
        return f"Jitter(sigma={self.sigma})"


class Clamp:
    """Keep every feature within ``[-bound, bound]``."""

    def __init__(self, bound: float) -> None:
        self.bound = bound

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-self.bound, self.bound)

    def __repr__(self) -> str:
        return f"Clamp(bound={self.bound})"


class Chain:
    """Apply transforms one after the other (what a user logs as "the" transformation)."""

    def __init__(self, *steps) -> None:
        self.steps = steps

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x

    def __repr__(self) -> str:
        return "Chain(" + ", ".join(repr(s) for s in self.steps) + ")"


class Clusters(Dataset):
    """``CLASSES`` Gaussian clusters in ``FEATURES`` dimensions; the label is the cluster."""

    CENTRES = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(7)) * 2.0

    def __init__(self, size: int, seed: int, transform=None) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, CLASSES, (size,), generator=gen)
        self.points = self.CENTRES[self.labels] + torch.randn(size, FEATURES, generator=gen)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        x = self.points[index]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[index]


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


torch.manual_seed(0)

prov4ml.start_run(
    prov_user_namespace="www.example.org",
    experiment_name="original_style_torch",
    provenance_save_dir="prov",
    mlflow_save_dir="test_runs",
    description="a tiny MLP on synthetic clusters",
)

transform = Chain(Jitter(0.1), Clamp(6.0))
# an object as a parameter: it is recorded as its text
prov4ml.log_param("data transformation", transform)
prov4ml.log_param("optimizer", "Adam")
prov4ml.log_param("batch_size", BATCH_SIZE)

train_ds = Clusters(TRAIN_ITEMS, seed=1, transform=transform)
val_ds = Clusters(VAL_ITEMS, seed=2)
test_ds = Clusters(TEST_ITEMS, seed=3)
train_loader = DataLoader(train_ds, batch_size=BATCH_SIZE, shuffle=True)
val_loader = DataLoader(val_ds, batch_size=BATCH_SIZE)
test_loader = DataLoader(test_ds, batch_size=BATCH_SIZE)

model = TinyMLP()
optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

for epoch in range(EPOCHS):
    model.train()
    for x, y in train_loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        # the loss tensor itself (it still requires grad), once a batch, at the epoch's step
        prov4ml.log_metric("CE_train", loss, context=prov4ml.Context.TRAINING, step=epoch)
        prov4ml.log_flops_per_batch("train_flops", model, (x, y), prov4ml.Context.TRAINING, step=epoch)

    model.eval()
    correct, total, summed = 0, 0, 0.0
    with torch.no_grad():
        for x, y in val_loader:
            logits = model(x)
            summed += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(dim=1) == y).sum().item()
            total += len(y)
    # several metrics at once, each paired with its own context
    prov4ml.log_metrics({
        "CE_val": (summed / total, prov4ml.Context.VALIDATION),
        "acc_val": (correct / total, prov4ml.Context.VALIDATION),
        "lr": (optimizer.param_groups[0]["lr"], prov4ml.Context.TRAINING),
    }, step=epoch)
    prov4ml.log_flops_per_epoch("val_flops", model, val_ds, prov4ml.Context.VALIDATION, step=epoch)

    # once an epoch: the machine, the energy, the time so far, and the weights as a new version
    prov4ml.log_system_metrics(prov4ml.Context.TRAINING, step=epoch)
    prov4ml.log_carbon_metrics(prov4ml.Context.TRAINING, step=epoch)
    prov4ml.log_current_execution_time("epoch_end", prov4ml.Context.TRAINING, step=epoch)
    prov4ml.save_model_version(model, f"tiny_mlp_version_{epoch}", prov4ml.Context.TRAINING, epoch)

model.eval()
with torch.no_grad():
    for i, (x, y) in enumerate(test_loader):
        prov4ml.log_metric("CE_test", F.cross_entropy(model(x), y), prov4ml.Context.EVALUATION, step=i)

# the final model (with its state dict as one more version)
prov4ml.log_model(model, "tiny_mlp_final")

# the run id names the graph's file: ask for it while the run is still open
run_id = prov4ml.get_run_id()
dot_path = f"prov/provgraph_{run_id}.dot"
prov4ml.end_run(create_graph=True)

if shutil.which("dot"):
    subprocess.run(["dot", "-Tsvg", "-O", dot_path], check=True)
