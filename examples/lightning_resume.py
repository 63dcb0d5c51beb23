"""Resume an interrupted Lightning fit into the same MLflow run and the same PROV document.

Part 1 trains the CNN of ``lightning_mnist_like.py`` and is "preempted" in epoch 2 (a callback
raises, as a killed job would stop): the run ends ``FAILED`` and its PROV document is written.
Part 2 is what a restarted job does: a new Trainer and a new ``Prov4MLCallback`` call
``fit(ckpt_path="last")``. The run id travels inside the checkpoint (the callback's state), so
the same MLflow run continues with its metric steps going on, and the PROV document gains a
second Fit activity informed by the first, whose restored model is derived from the checkpoint.

Run: python examples/lightning_resume.py [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning_mnist_like import DigitsData, SmallCNN

import prov4ml_lightning as prov4ml


class Preempted(RuntimeError):
    """Stands for the job being stopped by its scheduler."""


class PreemptAt(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 5:
            raise Preempted(f"preempted in epoch {self.epoch}")


def make_trainer(out: Path, callback: prov4ml.Prov4MLCallback, max_epochs: int, *extra: Callback) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=8, default_root_dir=out,
        callbacks=[callback, ModelCheckpoint(dirpath=out / "checkpoints", save_last=True), *extra],
    )


def make_callback(out: Path) -> prov4ml.Prov4MLCallback:
    return prov4ml.Prov4MLCallback(
        prov_user_namespace="www.example.org", experiment_name="lightning_resume",
        provenance_save_dir=out / "prov", mlflow_save_dir=out / "mlflow", log_model=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="example_output/lightning_resume", help="output folder")
    args = parser.parse_args()
    out = Path(args.out)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*exists and is not empty.*")
    L.seed_everything(0, verbose=False)

    # Part 1: the job that gets preempted.
    first = make_callback(out)
    try:
        make_trainer(out, first, 4, PreemptAt(epoch=2)).fit(SmallCNN(), datamodule=DigitsData())
    except Preempted as err:
        print(f"part 1: {err}; run {first.run_id} ended FAILED, provenance in {first.outputs.prov_json}")

    # Part 2: the restarted job. Nothing but the checkpoint connects it to part 1.
    second = make_callback(out)
    make_trainer(out, second, 4).fit(SmallCNN(), datamodule=DigitsData(), ckpt_path="last")
    outputs = second.outputs
    print(f"part 2: resumed run {second.run_id} (same run: {second.run_id == first.run_id}), ended FINISHED")

    mlflow_dir = (out / "mlflow").resolve()
    print(f"MLflow store:    {outputs.tracking_uri}")
    print(f"PROV document:   {outputs.prov_json}")
    print(f"PROV graph:      {outputs.prov_svg or outputs.prov_dot}")
    print(f"Browse the run:  mlflow ui --backend-store-uri sqlite:///{mlflow_dir}/mlflow.db")


if __name__ == "__main__":
    main()
