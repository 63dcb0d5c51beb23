"""An Optuna study of Lightning fits, recorded by prov4ml-lightning: one parent run (the study), a nested
run per trial, pruning, and the chosen trial's model with the reason it was chosen.

    pip install 'prov4ml-lightning[sweeps]'
    python examples/optuna_sweep.py --trials 8 --out runs/sweep
    prov4ml show <printed parent run id> --mlflow-save-dir runs/sweep/mlflow
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import lightning as L
import optuna
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prov4ml_lightning.lightning.optuna import Prov4MLSweep


class Regressor(L.LightningModule):
    def __init__(self, lr: float, hidden: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(512, 1, generator=g)
    return (DataLoader(TensorDataset(x[:384], y[:384]), batch_size=32, shuffle=True),
            DataLoader(TensorDataset(x[384:], y[384:]), batch_size=64))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default="runs/sweep")
    parser.add_argument("--tracking-uri", help="a tracking server (default: the embedded store in OUT/mlflow)")
    args = parser.parse_args()
    out = Path(args.out)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    train, val = loaders()

    study = optuna.create_study(study_name="regressor-sweep", direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=0),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    with Prov4MLSweep(study, prov_user_namespace="www.example.org", experiment_name="sweep",
                      provenance_save_dir=out / "prov", mlflow_save_dir=out / "mlflow",
                      tracking_uri=args.tracking_uri, objective_name="val_loss") as sweep:

        def objective(trial: optuna.Trial) -> float:
            model = Regressor(lr=trial.suggest_float("lr", 1e-4, 0.3, log=True),
                              hidden=trial.suggest_categorical("hidden", [8, 32, 64]))
            trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                                enable_model_summary=False, enable_checkpointing=False,
                                callbacks=sweep.callbacks(trial, monitor="val_loss"))
            trainer.fit(model, train, val)
            return trainer.callback_metrics["val_loss"].item()

        study.optimize(sweep.track(objective), n_trials=args.trials)

    states = [t.state.name for t in study.trials]
    print(f"study run {sweep.run_id}: {states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned")
    print(f"chosen: trial {sweep.best_trial} (val_loss {study.best_value:.4f}), run {sweep.best_run_id}")
    print(f"provenance of the study: {sweep.outputs.prov_json}")


if __name__ == "__main__":
    main()
