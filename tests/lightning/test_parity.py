"""The callback's MLflow series equal what Lightning hands its loggers, point for point.

Each setup of issue 16 runs once with a ``CSVLogger`` (and ``LearningRateMonitor``) in the same
Trainer as the callback; every series of the CSV file is compared with
``MlflowClient.get_metric_history`` of the callback's run: the same keys (after MLflow's name rules,
:func:`mlflow_safe_key`), the same steps, the same values (exactly: both are the float of the same
tensor).
"""

from __future__ import annotations

import csv
import signal
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from prov4ml_lightning import Prov4MLCallback
from prov4ml_lightning.provenance.checks import check_file
from prov4ml_lightning.sinks.mlflow.sink import mlflow_safe_key
from tests.lightning.parity_models import ParityDataModule, ParityModel, TwoOptimizers

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
              pytest.mark.filterwarnings("ignore::prov4ml_lightning.Prov4MLWarning")]


class _Interrupt(Callback):
    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.current_epoch == 1 and trainer.global_step == 6:
            raise KeyboardInterrupt


ODD = {"": 5, "bad key!?": [1, object()], "h" * 300: 1.5, "fn": print, "nested": {"": "x", "ok": None}}

#: setup -> (model kwargs, datamodule kwargs, trainer kwargs, stages, extra callbacks, model class)
SETUPS: dict[str, tuple[dict, dict, dict, list[str], list, type]] = {
    "plain": ({}, {}, {}, ["fit"], [], ParityModel),
    "log_dict": ({"variant": "log_dict"}, {}, {}, ["fit"], [], ParityModel),
    "accumulation": ({}, {}, {"accumulate_grad_batches": 3}, ["fit"], [], ParityModel),
    "val_check_interval": ({}, {}, {"val_check_interval": 0.5}, ["fit"], [], ParityModel),
    "several_dataloaders": ({}, {"loaders": 2}, {}, ["fit", "validate", "test", "test"], [], ParityModel),
    "stages_around_fit": ({}, {}, {}, ["validate", "fit", "validate", "test", "predict", "test"], [],
                          ParityModel),
    "max_steps_and_limits": ({}, {"loaders": 2}, {"max_steps": 5, "limit_train_batches": 3,
                                                   "limit_val_batches": 1, "limit_test_batches": 1},
                             ["fit", "test"], [], ParityModel),
    "manual_two_optimizers": ({}, {}, {}, ["fit"], [], TwoOptimizers),
    "bf16": ({}, {}, {"precision": "bf16-mixed"}, ["fit", "test"], [], ParityModel),
    "odd_names_and_hparams": ({"variant": "odd_names", **ODD}, {}, {}, ["fit"], [], ParityModel),
    "user_step": ({"variant": "user_step"}, {}, {}, ["fit"], [], ParityModel),
    "iterable_dataset": ({}, {"iterable": True}, {}, ["fit"], [], ParityModel),
    "interrupt": ({}, {}, {"max_epochs": 3}, ["fit"], [_Interrupt], ParityModel),
    "frequent_checkpoints": ({}, {}, {"log_every_n_steps": 1}, ["fit"],
                             [lambda: ModelCheckpoint(every_n_train_steps=1, save_top_k=-1, save_last=True)],
                             ParityModel),
}


def _csv_series(path: Path) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            step = int(row.pop("step"))
            for key, value in row.items():
                if value != "":
                    series[key].append((step, float(value)))
    return {key: sorted(points) for key, points in series.items()}


def _mlflow_series(client: Any, run_id: str) -> dict[str, list[tuple[int, float]]]:
    keys = client.get_run(run_id).data.metrics
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in keys}


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_callback_series_equal_lightning_loggers(setup, run_args, client, tmp_path):
    model_kwargs, dm_kwargs, trainer_kwargs, stages, extra, model_cls = SETUPS[setup]
    pl.seed_everything(7, verbose=False)
    callback = Prov4MLCallback(**run_args, log_model=False)
    csv_logger = CSVLogger(tmp_path / "csv", name="ref")
    settings: dict[str, Any] = dict(default_root_dir=str(tmp_path), accelerator="cpu", devices=1, max_epochs=2,
                                    logger=csv_logger, enable_progress_bar=False, enable_model_summary=False,
                                    log_every_n_steps=2, num_sanity_val_steps=1)
    settings.update(trainer_kwargs)
    trainer = pl.Trainer(callbacks=[callback, LearningRateMonitor(), *(make() for make in extra)], **settings)
    model, dm = model_cls(**model_kwargs), ParityDataModule(**dm_kwargs)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for stage in stages:
                if stage == "fit" and setup == "interrupt":
                    with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into a graceful exit(1)
                        trainer.fit(model, datamodule=dm)
                else:
                    getattr(trainer, stage)(model, datamodule=dm)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after a KeyboardInterrupt
    csv_logger.save()

    expected = _csv_series(Path(csv_logger.log_dir) / "metrics.csv")
    got = _mlflow_series(client, callback.run_id)
    expected_keys = {mlflow_safe_key(key): key for key in expected}
    assert set(got) == set(expected_keys), setup
    for mkey, key in expected_keys.items():
        assert got[mkey] == expected[key], f"{setup}: {key}"
    # each key's context is a tag of the run
    tags = client.get_run(callback.run_id).data.tags
    assert {k for k in tags if k.startswith("metric.context.")} >= {
        mlflow_safe_key(f"metric.context.{k}") for k in got}
    assert check_file(callback.outputs.prov_json, round_trip=False) == []


def test_every_param_mlflowlogger_writes_is_a_param_of_the_callbacks_run(run_args, tmp_path):
    """Module and datamodule ``save_hyperparameters()`` under MLFlowLogger in the same Trainer: each param name
    it writes is in the callback's run, with the same value (``params.<name>`` filters work for both)."""
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    pl.seed_everything(7, verbose=False)
    callback = Prov4MLCallback(**run_args, log_model=False)
    reference = MLFlowLogger(experiment_name="reference", tracking_uri=f"sqlite:///{tmp_path}/ref.db")
    trainer = pl.Trainer(default_root_dir=str(tmp_path), accelerator="cpu", devices=1, max_epochs=1,
                         logger=reference, callbacks=[callback], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(ParityModel(lr=0.02, hidden={"width": 4}), datamodule=ParityDataModule(loaders=1, noisy=True))
    # MLFlowLogger sets MLFLOW_TRACKING_URI, which the callback follows (with a warning): one store for both
    store = MlflowClient(f"sqlite:///{tmp_path}/ref.db")
    theirs = store.get_run(reference.run_id).data.params
    ours = store.get_run(callback.run_id).data.params
    assert {"lr", "variant", "hidden/width", "loaders", "iterable", "noisy"} <= set(theirs)
    assert {k: ours.get(k) for k in theirs} == theirs
