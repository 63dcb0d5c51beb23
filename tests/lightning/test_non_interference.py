"""Observing a training does not change it: the same seeded fit (a dataset drawing from Python's
``random``, a shuffling sampler, dropout drawing from torch) with and without the callback, and a
plain loop with and without the functional API, ends with bit-identical weights and leaves every
global generator (Python ``random``, NumPy, torch CPU) in the same state."""

from __future__ import annotations

import random

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Prov4MLCallback
from tests.lightning.parity_models import NoisyDataset, ParityDataModule, ParityModel

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")]


def _rng_states() -> tuple:
    return (random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state().tolist(),
            torch.initial_seed())


def _fit(tmp_path, callbacks: list) -> tuple[dict, tuple]:
    pl.seed_everything(123, verbose=False)
    model = ParityModel()
    trainer = pl.Trainer(default_root_dir=str(tmp_path), accelerator="cpu", devices=1, max_epochs=2, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                         callbacks=callbacks)
    trainer.fit(model, datamodule=ParityDataModule(noisy=True))
    trainer.test(model, datamodule=ParityDataModule(noisy=True))
    return {k: v.clone() for k, v in model.state_dict().items()}, _rng_states()


def test_the_callback_does_not_change_a_seeded_fit(run_args, tmp_path):
    plain_weights, plain_rngs = _fit(tmp_path / "plain", [])
    callback = Prov4MLCallback(**run_args, log_system_metrics=True, system_metrics_interval=0.05)
    observed_weights, observed_rngs = _fit(tmp_path / "observed", [callback])
    assert callback.outputs is not None  # it did record the fit (and its datasets, model, system metrics)
    assert plain_weights.keys() == observed_weights.keys()
    for key in plain_weights:
        assert torch.equal(plain_weights[key], observed_weights[key]), key
    assert plain_rngs == observed_rngs


def _loop(track: bool, run_args: dict) -> tuple[dict, tuple]:
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(NoisyDataset(), batch_size=4, shuffle=True)
    if track:
        prov4ml.start_run(**run_args, log_system_metrics=True)
        prov4ml.log_param("lr", 0.1)
    for epoch in range(2):
        for step, (x, y) in enumerate(loader):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if track:
                prov4ml.log_metric("loss", loss, prov4ml.Context.TRAINING, step=epoch * 4 + step)
    if track:
        prov4ml.log_model(model, "net")
        prov4ml.end_run()
    return {k: v.clone() for k, v in model.state_dict().items()}, _rng_states()


def test_the_functional_api_does_not_change_a_seeded_loop(run_args):
    plain_weights, plain_rngs = _loop(False, run_args)
    tracked_weights, tracked_rngs = _loop(True, run_args)
    for key in plain_weights:
        assert torch.equal(plain_weights[key], tracked_weights[key]), key
    assert plain_rngs == tracked_rngs
