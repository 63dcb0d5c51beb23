"""Prov4MLCallback with a tiny real LightningModule and a real Trainer on CPU, read back with
MlflowClient and prov.read (and the PROV validity checks)."""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import mlflow.pytorch
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Prov4MLCallback, Prov4MLInputError
from prov4ml_lightning.provenance.checks import check_file
from tests.helpers import attr, by_type, read_prov, records_of
from tests.lightning_models import FailingModel, ManualOptModel, TinyDataModule, TinyModel, fast_trainer

pytestmark = pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")


def _callback(run_args: dict, **kwargs) -> Prov4MLCallback:
    return Prov4MLCallback(**run_args, **kwargs)


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _local(record) -> str:
    """The part of a PROV id after ``run_<id>.``."""
    return record.identifier.localpart.split(".", 1)[1] if "." in record.identifier.localpart else ""


def _relations(doc, kind: str) -> set[tuple[str, str]]:
    """(first, second) formal arguments of every relation of ``kind``, as local ids."""
    out = set()
    for rel in records_of(doc, kind):
        a, b = rel.formal_attributes[0][1], rel.formal_attributes[1][1]
        if a is not None and b is not None:
            out.add((a.localpart.split(".", 1)[-1], b.localpart.split(".", 1)[-1]))
    return out


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.slow
def test_fit_validate_test_recorded_in_mlflow_and_prov(run_args, client, tmp_path):
    torch.manual_seed(0)
    callback = _callback(run_args)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=-1)
    trainer = fast_trainer(tmp_path, [callback, checkpoints])
    model, data = TinyModel(lr=0.05, hidden=6), TinyDataModule(batch_size=8)
    trainer.fit(model, datamodule=data)  # 8 batches per epoch, 2 epochs
    run_id = callback.run_id
    assert prov4ml.active_run() is None  # the callback opened the run and ended it at fit end
    assert client.get_run(run_id).info.status == "FINISHED"

    # The model, logged through log_model, loads back and predicts like the trained module.
    (model_entity,) = by_type(read_prov(callback.outputs.prov_json), "Model")
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        loaded = mlflow.pytorch.load_model(attr(model_entity, "model_uri"))
    finally:
        mlflow.set_tracking_uri(None)
    x = torch.randn(5, 4)
    torch.testing.assert_close(loaded(x), model(x))

    # validate, test (of the best checkpoint) and predict after fit join the same run
    validated = trainer.validate(model, datamodule=data)
    tested = trainer.test(datamodule=data, ckpt_path="best")
    trainer.predict(model, datamodule=data)

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["lr"] == "0.05" and params["hidden"] == "6" and params["optimizer"] == "sgd"
    assert params["batch_size"] == "8"  # the datamodule's, where MLFlowLogger writes it
    assert params["trainer/max_epochs"] == "2" and params["trainer/accumulate_grad_batches"] == "1"
    assert params["optimizer/0/class"] == "SGD" and params["optimizer/0/momentum"] == "0.9"
    # Lightning's keys and steps (tests/lightning/test_parity.py compares every setup with a CSVLogger):
    # step values at log_every_n_steps=2, at the count of batches that stepped before this one.
    assert _steps(client, run_id, "train_loss_step") == list(range(1, 16, 2))
    # learning rates as LearningRateMonitor logs them: with the step values, and at each epoch's start
    # for an optimizer without a scheduler
    assert _steps(client, run_id, "lr-SGD") == sorted([0, 8, *range(1, 16, 2)])
    assert {v for _, v in _history(client, run_id, "lr-SGD")} == {0.05}
    assert _steps(client, run_id, "train_loss_epoch") == [7, 15]
    # two validation loops in fit, one from trainer.validate (at step 16); none from the sanity check
    assert _steps(client, run_id, "val_loss") == [7, 15, 16]
    assert _steps(client, run_id, "test_acc") == [16]
    assert not any(key.startswith(("training/", "validation/")) for key in run.data.metrics)
    assert run.data.tags["metric.context.val_loss"] == "VALIDATION"
    assert run.data.tags["metric.context.train_loss_step"] == "TRAINING"
    assert not [k for k in run.data.tags if k.startswith("prov4ml.context.")]  # one context tag per metric
    # Values are Lightning's reduced ones.
    assert _history(client, run_id, "val_loss")[-1][1] == pytest.approx(validated[0]["val_loss"])
    assert _history(client, run_id, "test_acc")[0][1] == pytest.approx(tested[0]["test_acc"])

    doc = read_prov(callback.outputs.prov_json)
    # PROV: one Fit, epochs, loops, each started by the run and informed by what ran them.
    assert check_file(callback.outputs.prov_json, round_trip=False) == []
    kinds = {}
    for act in records_of(doc, "activity"):
        for t in act.get_attribute("prov:type"):
            kinds.setdefault(t.localpart, set()).add(_local(act))
    assert kinds["Fit"] == {"fit_1"}
    assert kinds["TrainingEpoch"] == {"fit_1.epoch_0", "fit_1.epoch_1"}
    assert {"fit_1.epoch_0.validation_1", "fit_1.epoch_1.validation_1"} < kinds["ValidationLoop"]
    assert len(kinds["ValidationLoop"]) == 3 and len(kinds["TestLoop"]) == 1 and len(kinds["PredictLoop"]) == 1
    assert kinds["SanityCheck"] == {"fit_1.sanity_check"}
    (sanity,) = [a for a in records_of(doc, "activity") if _local(a) == "fit_1.sanity_check"]
    assert (attr(sanity, "batches"), attr(sanity, "dataloaders")) == (1, 1)  # num_sanity_val_steps=1; integers
    informed = _relations(doc, "wasInformedBy")
    # an epoch is informed by the epoch whose weights it trains on, part of (and started by) its fit
    assert ("fit_1.epoch_1", "fit_1.epoch_0") in informed and ("fit_1.epoch_1", "fit_1") not in informed
    # the first epoch trains from what its fit set up; the fit runs the session's code in its environment
    assert ("fit_1.epoch_0", "fit_1") in informed
    assert {("fit_1", "code"), ("fit_1", "environment")} <= _relations(doc, "used")
    assert ("fit_1.epoch_1.validation_1", "fit_1.epoch_1") in informed
    (test_loop,) = kinds["TestLoop"]
    assert (test_loop, "fit_1") in informed

    # Metric series per context, and per-activity segments generated by the epoch / loop.
    series = {(attr(s, "name"), attr(s, "context")) for s in by_type(doc, "MetricSeries")}
    assert {("train_loss_step", "training"), ("val_acc", "validation"), ("test_acc", "testing")} <= series
    generated = _relations(doc, "wasGeneratedBy")
    segments = {(attr(s, "name"), attr(s, "activity")): s for s in by_type(doc, "MetricSegment")}
    seg = segments[("train_loss_step", "fit_1.epoch_1")]
    assert (attr(seg, "first_step"), attr(seg, "last_step"), attr(seg, "count")) == (9, 15, 4)
    assert (_local(seg), "fit_1.epoch_1") in generated
    assert (_local(segments[("val_loss", "fit_1.epoch_0.validation_1")]), "fit_1.epoch_0.validation_1") in generated
    assert ("metric.training.train_loss_step", _local(seg)) in _relations(doc, "hadMember")
    # the epoch counter validation and test loops log is the fit's: training points of no loop's segment
    loops = set(kinds["ValidationLoop"]) | set(kinds["TestLoop"])
    assert not [s for s in by_type(doc, "MetricSegment") if attr(s, "activity") in loops
                and attr(s, "context") == "training"]
    assert attr(segments[("epoch", "fit_1.epoch_0")], "context") == "training"

    # Checkpoints: generated by their epoch, chained, hashed, scored, the best marked.
    ckpts = {attr(c, "epoch"): c for c in by_type(doc, "Checkpoint")}
    assert set(ckpts) == {0, 1}
    for epoch, ckpt in ckpts.items():
        assert attr(ckpt, "sha256") == _sha256(attr(ckpt, "path"))
        assert (_local(ckpt), f"fit_1.epoch_{epoch}") in generated
        assert attr(ckpt, "monitor") == "val_loss"
        assert not any(k.localpart == "artifact_uri" for k, _ in ckpt.attributes)  # not uploaded by default
        assert attr(ckpt, "score") == pytest.approx(float(checkpoints.best_k_models[attr(ckpt, "path")]))
        assert attr(ckpt, "best") == (attr(ckpt, "path") == str(Path(checkpoints.best_model_path).resolve()))
    assert (_local(ckpts[1]), _local(ckpts[0])) in _relations(doc, "wasDerivedFrom")
    (best,) = [c for c in ckpts.values() if attr(c, "best")]
    assert (test_loop, _local(best)) in _relations(doc, "used")  # the test evaluated the best checkpoint

    # Datasets: one entity per dataloader, used by the activities that read it.
    datasets = {attr(d, "role"): d for d in by_type(doc, "Dataset")}
    assert set(datasets) == {"train", "val", "test", "predict"}
    train = datasets["train"]
    assert attr(train, "length") == 64 and attr(train, "batch_size") == 8 and attr(train, "num_workers") == 0
    assert attr(train, "shuffle") is True and len(attr(train, "fingerprint")) == 64
    used = _relations(doc, "used")
    assert ("fit_1.epoch_0", _local(train)) in used and ("fit_1.epoch_1", _local(train)) in used
    assert ("fit_1.epoch_0.validation_1", _local(datasets["val"])) in used
    assert (test_loop, _local(datasets["test"])) in used


@pytest.mark.slow
def test_exception_in_training_step_ends_run_failed_with_provenance(run_args, client, tmp_path):
    callback = _callback(run_args, log_model=False)
    trainer = fast_trainer(tmp_path, [callback], log_every_n_steps=1, max_epochs=3)
    with pytest.raises(RuntimeError, match="boom at step 5"):
        trainer.fit(FailingModel(fail_at=5), datamodule=TinyDataModule())
    assert prov4ml.active_run() is None
    run = client.get_run(callback.run_id)
    assert run.info.status == "FAILED"
    # the five steps that ran are kept; nothing from the step that raised
    assert _steps(client, callback.run_id, "train_loss_step") == [0, 1, 2, 3, 4]
    doc = read_prov(callback.outputs.prov_json)
    (run_act,) = by_type(doc, "Run")
    assert attr(run_act, "status") == "FAILED"
    (fit,) = by_type(doc, "Fit")
    assert attr(fit, "status") == "FAILED" and "boom at step 5" in attr(fit, "error")
    (epoch,) = by_type(doc, "TrainingEpoch")
    assert attr(epoch, "status") == "FAILED"
    assert check_file(callback.outputs.prov_json, round_trip=False) == []


@pytest.mark.slow
def test_keyboard_interrupt_ends_run_killed(run_args, client, tmp_path):
    class Interrupt(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 2:
                raise KeyboardInterrupt

    callback = _callback(run_args, log_model=False)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into a graceful exit(1)
            fast_trainer(tmp_path, [callback, Interrupt()]).fit(TinyModel(), datamodule=TinyDataModule())
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after a KeyboardInterrupt
    assert client.get_run(callback.run_id).info.status == "KILLED"
    assert attr(by_type(read_prov(callback.outputs.prov_json), "Run")[0], "status") == "KILLED"


@pytest.mark.slow
def test_resume_from_checkpoint_continues_the_run(run_args, client, tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    first = _callback(run_args, log_model=False)
    fast_trainer(tmp_path, [first, ModelCheckpoint(dirpath=ckpt_dir, save_last=True)], max_epochs=1).fit(
        TinyModel(), datamodule=TinyDataModule())
    last = ckpt_dir / "last.ckpt"
    state = torch.load(last, weights_only=False)["callbacks"]
    assert [s["run_id"] for k, s in state.items() if k.startswith("Prov4MLCallback")] == [first.run_id]

    second = _callback(run_args, log_model=False)  # a new process would build a new callback
    checkpoints = ModelCheckpoint(dirpath=ckpt_dir, save_last=True)
    trainer = fast_trainer(tmp_path, [second, checkpoints], max_epochs=3)
    trainer.fit(TinyModel(), datamodule=TinyDataModule(), ckpt_path=str(last))
    assert second.run_id == first.run_id
    runs = client.search_runs([client.get_run(first.run_id).info.experiment_id])
    assert [r.info.run_id for r in runs] == [first.run_id]
    assert runs[0].info.status == "FINISHED"
    assert _steps(client, first.run_id, "train_loss_epoch") == [7, 15, 23]
    assert _steps(client, first.run_id, "val_loss") == [7, 15, 23]

    doc = read_prov(second.outputs.prov_json)
    assert check_file(second.outputs.prov_json, round_trip=False) == []
    assert {_local(f) for f in by_type(doc, "Fit")} == {"fit_1", "fit_2"}
    assert {_local(e) for e in by_type(doc, "TrainingEpoch")} == {"fit_1.epoch_0", "fit_2.epoch_1", "fit_2.epoch_2"}
    assert ("fit_2", "fit_1") in _relations(doc, "wasInformedBy")
    (fit2,) = [f for f in by_type(doc, "Fit") if _local(f) == "fit_2"]
    assert attr(fit2, "resumed_from") == str(last) and attr(fit2, "start_step") == 8
    # the restored model derives from the checkpoint the first session recorded, same bytes
    states = {_local(e): e for e in by_type(doc, "ModelState")}
    assert set(states) == {"model_state.fit_1.initial", "model_state.fit_2.initial"}
    state_entity = states["model_state.fit_2.initial"]  # restored; fit_1's are the weights the fresh fit began with
    assert len(attr(states["model_state.fit_1.initial"], "state_dict_sha256")) == 64
    assert ("fit_1", "model_state.fit_1.initial") in _relations(doc, "used")
    derived = _relations(doc, "wasDerivedFrom")
    assert any(b == "model_state.fit_1.initial" for _, b in derived)  # fit 1's first checkpoint derives from them
    (source,) = [b for a, b in derived if a == _local(state_entity)]
    (ckpt,) = [c for c in by_type(doc, "Checkpoint") if _local(c) == source]
    assert attr(ckpt, "global_step") == 8 and ("fit_1.epoch_0", source) in {
        (b, a) for a, b in _relations(doc, "wasGeneratedBy")}
    assert ("fit_2", _local(state_entity)) in _relations(doc, "used")
    # one best checkpoint over both sessions; the first session's, since removed, says so
    (best,) = [c for c in by_type(doc, "Checkpoint") if attr(c, "best")]
    assert attr(best, "path") == str(Path(checkpoints.best_model_path).resolve())
    (first_best,) = [c for c in by_type(doc, "Checkpoint") if attr(c, "path").endswith("epoch=0-step=8.ckpt")]
    assert attr(first_best, "best") is False and attr(first_best, "deleted") is True
    # series entities count the points of both sessions
    series = {(attr(s, "name"), attr(s, "context")): s for s in by_type(doc, "MetricSeries")}
    assert attr(series[("train_loss_epoch", "training")], "count") == 3
    # resumed in the same process: one session, whose code and environment it used once (a resume
    # in another process is session 2: tests/provenance/test_lineage_sparql.py)
    for kind, name in (("Environment", "environment"), ("Code", "code")):
        found = {_local(e): e for e in by_type(doc, kind)}
        assert set(found) == {name} and attr(found[name], "session") == 1
        assert {("session_1", name)} <= {(s.split(".", 1)[-1], o) for s, o in _relations(doc, "used")}
    (session,) = by_type(doc, "Session")
    assert attr(session, "status") == "FINISHED"


@pytest.mark.slow
def test_callback_joins_a_run_opened_with_the_functional_api(run_args, client, tmp_path):
    with prov4ml.start_run(**run_args) as run:
        prov4ml.log_param("note", "joined")
        callback = _callback(run_args, log_model=False)
        fast_trainer(tmp_path, [callback], max_epochs=1).fit(TinyModel(), datamodule=TinyDataModule())
        assert prov4ml.active_run() is run  # the callback leaves the user's run open
        assert callback.run_id == run.run_id
        prov4ml.log_metric("after_fit", 1.0, prov4ml.Context.TESTING, step=0)
    out = run.outputs
    mrun = client.get_run(run.run_id)
    assert mrun.info.status == "FINISHED"
    assert mrun.data.params["note"] == "joined" and mrun.data.params["lr"] == "0.1"
    assert {"train_loss_step", "val_loss"} <= set(mrun.data.metrics)
    assert any(key.endswith("after_fit") for key in mrun.data.metrics)  # the functional API's key rule
    doc = read_prov(out.prov_json)
    assert {_local(f) for f in by_type(doc, "Fit")} == {"fit_1"}
    assert check_file(out.prov_json, round_trip=False) == []


@pytest.mark.slow
def test_early_stopping_records_stop_epoch_and_reason(run_args, client, tmp_path):
    callback = _callback(run_args, log_model=False)
    stopper = EarlyStopping(monitor="val_loss", stopping_threshold=10.0)
    trainer = fast_trainer(tmp_path, [callback, stopper], max_epochs=10, enable_checkpointing=False)
    trainer.fit(TinyModel(), datamodule=TinyDataModule())
    assert trainer.current_epoch == 1 and stopper.stopped_epoch == 0
    doc = read_prov(callback.outputs.prov_json)
    (fit,) = by_type(doc, "Fit")
    assert attr(fit, "stop_reason") == "STOPPING_THRESHOLD"
    assert attr(fit, "stopped_epoch") == 0 and attr(fit, "early_stopping_monitor") == "val_loss"
    assert "Stopping threshold reached" in attr(fit, "stop_message")
    assert {_local(e) for e in by_type(doc, "TrainingEpoch")} == {"fit_1.epoch_0"}


@pytest.mark.slow
def test_fast_dev_run_records_nothing_like_lightnings_loggers(run_args, client, tmp_path):
    callback = _callback(run_args, log_model=False)
    trainer = fast_trainer(tmp_path, [callback], fast_dev_run=True)
    with pytest.warns(prov4ml.Prov4MLWarning, match="fast_dev_run is on; nothing is recorded"):
        trainer.fit(TinyModel(), datamodule=TinyDataModule())
        trainer.test(TinyModel(), datamodule=TinyDataModule())
    assert callback.run_id is None and callback.outputs is None
    assert client.get_experiment_by_name(run_args["experiment_name"]) is None
    assert not Path(run_args["provenance_save_dir"]).exists()


@pytest.mark.slow
def test_accumulation_limits_and_two_val_loaders(run_args, client, tmp_path):
    callback = _callback(run_args, log_model=False)
    trainer = fast_trainer(tmp_path, [callback], accumulate_grad_batches=2, limit_train_batches=6,
                           limit_val_batches=1, log_every_n_steps=1, max_epochs=1, enable_checkpointing=False)
    trainer.fit(TinyModel(), datamodule=TinyDataModule(val_loaders=2))
    run_id = callback.run_id
    # 6 batches, an optimizer step every 2: three points, at the count of batches that stepped before
    assert _steps(client, run_id, "train_loss_step") == [0, 1, 2]
    metrics = client.get_run(run_id).data.metrics
    assert {"val_loss/dataloader_idx_0", "val_loss/dataloader_idx_1"} <= set(metrics)
    doc = read_prov(callback.outputs.prov_json)
    val_sets = [d for d in by_type(doc, "Dataset") if attr(d, "role") == "val"]
    assert sorted(attr(d, "dataloader_index") for d in val_sets) == [0, 1]
    used = _relations(doc, "used")
    assert all(("fit_1.epoch_0.validation_1", _local(d)) in used for d in val_sets)


@pytest.mark.slow
def test_manual_optimization(run_args, client, tmp_path):
    callback = _callback(run_args, log_model=False)
    fast_trainer(tmp_path, [callback], log_every_n_steps=4, max_epochs=1, enable_checkpointing=False).fit(
        ManualOptModel(), datamodule=TinyDataModule())
    assert _steps(client, callback.run_id, "train_loss") == [3, 7]


def test_bad_options_fail_at_construction(run_args):
    with pytest.raises(Prov4MLInputError, match="Prov4MLCallback: experiment_name"):
        Prov4MLCallback(**{**run_args, "experiment_name": "a/b"})
    with pytest.raises(Prov4MLInputError, match="log_every_n_steps"):
        Prov4MLCallback(**run_args, log_every_n_steps=-1)
    with pytest.raises(Prov4MLInputError, match="prov_user_namespace"):
        Prov4MLCallback(**{**run_args, "prov_user_namespace": "not an iri"})


def test_metric_segment_summary_folds_tensors_in_batches(monkeypatch):
    from prov4ml_lightning.lightning import run_link as _lightning_run

    monkeypatch.setattr(_lightning_run, "_FOLD_EVERY", 3)
    segment = _lightning_run._Segment("loss", prov4ml.Context.TRAINING)
    values = [1.0, torch.tensor(5.0), torch.tensor(float("nan")), 2, torch.tensor(-1.0), 0.5, torch.tensor(3.0)]
    for step, value in enumerate(values, start=10):
        segment.add(step, value)
    assert len(segment.pending) == 1  # two folds of three points happened on the way
    attrs = segment.attributes()  # folds the rest
    assert not segment.pending
    assert (attrs["count"], attrs["first_step"], attrs["last_step"]) == (7, 10, 16)
    assert (attrs["min_value"], attrs["max_value"], attrs["last_value"], attrs["non_finite_count"]) == \
        (-1.0, 5.0, 3.0, 1)
