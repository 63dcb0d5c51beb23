"""A plain PyTorch training loop recorded with the functional API only (synthetic data, no downloads).

Run: python examples/plain_torch.py [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prov4ml_lightning as prov4ml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="example_output/plain_torch", help="output folder")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    out = Path(args.out)

    torch.manual_seed(0)
    x = torch.randn(512, 10)
    y = (x[:, :3].sum(dim=1, keepdim=True) > 0).float()
    train = DataLoader(TensorDataset(x[:448], y[:448]), batch_size=32, shuffle=True)
    val = TensorDataset(x[448:], y[448:])
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.BCEWithLogitsLoss()

    prov4ml.start_run(
        prov_user_namespace="www.example.org",
        experiment_name="plain_torch_example",
        provenance_save_dir=out / "prov",
        mlflow_save_dir=out / "mlflow",
        description="A small MLP on synthetic data, recorded with the functional API",
    )
    prov4ml.log_params({"lr": 0.1, "epochs": args.epochs, "model": {"hidden": 32, "layers": 2}})
    # the data behind the model: class, size, loader settings and a content fingerprint (hashed in the background)
    prov4ml.log_dataset("train", train, prov4ml.Context.TRAINING)
    prov4ml.log_dataset("val", val, prov4ml.Context.VALIDATION)
    step = 0
    for epoch in range(args.epochs):
        for xb, yb in train:
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            prov4ml.log_metric("loss", loss.detach(), prov4ml.Context.TRAINING, step=step)
            step += 1
        with torch.no_grad():
            xv, yv = val.tensors
            acc = ((model(xv) > 0).float() == yv).float().mean()
        prov4ml.log_metric("accuracy", acc, prov4ml.Context.VALIDATION, step=epoch)
        prov4ml.log_current_execution_time("epoch_end", prov4ml.Context.TRAINING, step=epoch)
    prov4ml.log_model(model, "mlp")
    outputs = prov4ml.end_run()

    mlflow_dir = (out / "mlflow").resolve()
    print(f"MLflow store:    {outputs.tracking_uri}")
    print(f"MLflow run id:   {outputs.run_id}")
    print(f"PROV document:   {outputs.prov_json}")
    print(f"PROV graph:      {outputs.prov_svg or outputs.prov_dot}")
    print(f"Metric points:   {outputs.metrics_file}")
    print(f"Browse the run:  mlflow ui --backend-store-uri sqlite:///{mlflow_dir}/mlflow.db")


if __name__ == "__main__":
    main()
