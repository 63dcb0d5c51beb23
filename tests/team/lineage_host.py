"""One "host" of the team lineage test: a process in a folder of its own, talking to the team
server only. ``train URI`` trains on dataset X and logs the model; ``finetune URI MODEL_URI``
loads that model through the server (mlflow.pytorch.load_model) and fine-tunes it on Y. Prints
``run_id=<id>`` and ``model_uri=<uri>``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import prov4ml_lightning as prov4ml
from tests.helpers import attr, by_type, load_model, read_prov, server_run_args
from tests.lightning_models import TinyModel, fast_trainer


def loader(seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 4, generator=g)
    return DataLoader(TensorDataset(x, (x.sum(dim=1, keepdim=True) > 0).float()), batch_size=8)


def main() -> None:
    role, uri = sys.argv[1], sys.argv[2]
    here = Path.cwd()
    torch.manual_seed(0)
    model = TinyModel() if role == "train" else load_model(uri, sys.argv[3])
    callback = prov4ml.Prov4MLCallback(**server_run_args(here, uri, f"team-lineage-{role}"))
    trainer = fast_trainer(here, [callback], max_epochs=1, limit_val_batches=0)
    trainer.fit(model, loader(1 if role == "train" else 2))
    (entity,) = by_type(read_prov(callback.outputs.prov_json), "Model")
    sys.stdout.write(f"run_id={callback.run_id}\n")
    sys.stdout.write(f"model_uri={attr(entity, 'model_uri')}\n")


if __name__ == "__main__":
    main()
