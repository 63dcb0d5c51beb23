"""Defined behaviour at the edges of issue 16: several callbacks, one callback in two Trainers, odd
names from the user's module, ``save_last="link"``, a failing sanity check."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Prov4MLCallback, Prov4MLInputError
from prov4ml_lightning.provenance.checks import check_file
from tests.helpers import attr, by_type, read_prov
from tests.lightning.parity_models import ParityDataModule, ParityModel
from tests.lightning_models import TinyDataModule, TinyModel, fast_trainer

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")]


def _steps(client, run_id: str, key: str) -> list[int]:
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]


def test_two_callbacks_in_one_trainer_fail_before_training(run_args, client, tmp_path):
    # the same experiment: Lightning itself refuses two callbacks with one state key
    with pytest.raises(RuntimeError, match="more than one stateful callback of type `Prov4MLCallback`"):
        fast_trainer(tmp_path, [Prov4MLCallback(**run_args), Prov4MLCallback(**run_args)]).fit(
            TinyModel(), datamodule=TinyDataModule())
    first = Prov4MLCallback(**run_args)
    second = Prov4MLCallback(**{**run_args, "experiment_name": run_args["experiment_name"] + "-2"})
    model = TinyModel()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(Prov4MLInputError, match="has 2 Prov4MLCallbacks; use one per Trainer"):
        fast_trainer(tmp_path, [first, second]).fit(model, datamodule=TinyDataModule())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # not one step trained
    assert first.run_id is None and second.run_id is None
    assert client.get_experiment_by_name(run_args["experiment_name"]) is None
    assert client.get_experiment_by_name(run_args["experiment_name"] + "-2") is None
    assert prov4ml.active_run() is None


def test_one_callback_in_two_trainers_records_two_runs(run_args, client, tmp_path):
    callback = Prov4MLCallback(**run_args, log_model=False)
    fast_trainer(tmp_path, [callback], max_epochs=2).fit(TinyModel(lr=0.1), datamodule=TinyDataModule())
    first_run, first_out = callback.run_id, callback.outputs
    trainer = fast_trainer(tmp_path, [callback], max_epochs=2)
    trainer.fit(TinyModel(lr=0.01), datamodule=TinyDataModule())
    trainer.test(TinyModel(), datamodule=TinyDataModule())  # a stage of the same Trainer: the same run
    second_run = callback.run_id
    assert second_run != first_run
    for run_id, lr in ((first_run, "0.1"), (second_run, "0.01")):
        assert client.get_run(run_id).data.params["lr"] == lr
        assert _steps(client, run_id, "train_loss_step") == [1, 3, 5, 7, 9, 11, 13, 15]  # no step twice
        assert client.get_run(run_id).info.status == "FINISHED"
    assert "test_acc" in client.get_run(second_run).data.metrics
    for out in (first_out, callback.outputs):
        assert check_file(out.prov_json, round_trip=False) == []
        assert {attr(f, "status") for f in by_type(read_prov(out.prov_json), "Fit")} == {"FINISHED"}


def test_odd_hyperparameters_and_metric_names_are_recorded_with_one_warning_each(run_args, client, tmp_path):
    odd = {"": 5, "nested": {"": "x"}, "bad key!?": 1, "h" * 300: 2.5, "fn": print, "objs": [object()]}
    callback = Prov4MLCallback(**run_args, log_model=False)
    trainer = fast_trainer(tmp_path, [callback], max_epochs=1, log_every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(ParityModel(variant="odd_names", **odd), datamodule=ParityDataModule())
    ours = [str(w.message) for w in caught if issubclass(w.category, prov4ml.Prov4MLWarning)]
    renamed = [m for m in ours if "hyperparameter names no run accepts as they are were renamed" in m]
    assert len(renamed) == 1
    assert "'' -> '_empty'" in renamed[0] and "'nested/' -> 'nested/_empty'" in renamed[0]
    assert "'bad key!?' -> 'bad key__-" in renamed[0] and "'hhhh" in renamed[0]
    # one warning per metric name MLflow refuses, however many points it has
    assert len([m for m in ours if "'acc@1 (%)' is stored in MLflow as" in m]) == 1
    assert len([m for m in ours if f"{'n' * 260!r} is stored in MLflow as" in m]) == 1
    run = client.get_run(callback.run_id)
    params = run.data.params
    assert params["_empty"] == "5" and params["nested/_empty"] == "x" and params["variant"] == "odd_names"
    assert any(k.startswith("bad key__-") for k in params) and any(k.startswith("hhhh") for k in params)
    assert "built-in function print" in params["fn"]
    metrics = run.data.metrics
    assert any(k.startswith("acc_1 ___-") for k in metrics)
    assert any(k.startswith("nnnn") and len(k) <= 250 for k in metrics)
    assert check_file(callback.outputs.prov_json, round_trip=False) == []


def test_save_last_link_records_last_ckpt_and_its_target(run_args, tmp_path):
    callback = Prov4MLCallback(**run_args, log_model=False)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last="link", save_top_k=1, monitor="val_loss")
    fast_trainer(tmp_path, [callback, checkpoints], max_epochs=2).fit(TinyModel(), datamodule=TinyDataModule())
    last = tmp_path / "ckpt" / "last.ckpt"
    assert last.is_symlink()
    doc = read_prov(callback.outputs.prov_json)
    files = {Path(attr(c, "path")).name: c for c in by_type(doc, "Checkpoint")}
    assert "last.ckpt" in files
    link = files["last.ckpt"]
    assert attr(link, "link_to") == os.path.realpath(last)
    assert Path(attr(link, "link_to")).name in files  # the file it points to is recorded too
    assert check_file(callback.outputs.prov_json, round_trip=False) == []


class _BrokenValidation(TinyModel):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        raise ValueError("bad validation")


def test_a_failed_sanity_check_ends_with_a_status(run_args, client, tmp_path):
    callback = Prov4MLCallback(**run_args, log_model=False)
    with pytest.raises(ValueError, match="bad validation"):
        fast_trainer(tmp_path, [callback]).fit(_BrokenValidation(), datamodule=TinyDataModule())
    doc = read_prov(callback.outputs.prov_json)
    (sanity,) = by_type(doc, "SanityCheck")
    assert attr(sanity, "status") == "FAILED" and "bad validation" in attr(sanity, "error")
    for activity in doc.get_records():
        if activity.is_element() and by_type_has(activity, ("Fit", "SanityCheck", "TrainingEpoch")):
            assert attr(activity, "status") is not None
    assert client.get_run(callback.run_id).info.status == "FAILED"
    assert check_file(callback.outputs.prov_json, round_trip=False) == []


def by_type_has(record, kinds: tuple[str, ...]) -> bool:
    from prov.constants import PROV_TYPE

    return any(getattr(t, "localpart", str(t)) in kinds for t in record.get_attribute(PROV_TYPE))
