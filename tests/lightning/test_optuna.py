"""Optuna sweeps (lightning/optuna.py): a study of Lightning fits with pruning is one parent run with a
nested run per trial; the parent's PROV document holds the trials and the choice. Read back with
MlflowClient, prov.read and mlflow.pytorch.load_model."""

from __future__ import annotations

import mlflow.pytorch
import optuna  # the sweeps extra: in the test extra, so never skipped
import pytest
import torch

from prov4ml_lightning import Prov4MLInputError
from prov4ml_lightning.lightning.optuna import Prov4MLSweep
from prov4ml_lightning.provenance.checks import check_file
from tests.helpers import attr, by_type, read_prov, records_of
from tests.lightning_models import TinyDataModule, TinyModel, fast_trainer

pytestmark = pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")


def _sweep(study, run_args, **kwargs) -> Prov4MLSweep:
    return Prov4MLSweep(study, **{k: run_args[k] for k in ("prov_user_namespace", "experiment_name",
                                                          "provenance_save_dir", "mlflow_save_dir")}, **kwargs)


def test_sweep_rejects_a_multi_objective_study(run_args):
    study = optuna.create_study(directions=["minimize", "maximize"])
    with pytest.raises(Prov4MLInputError, match="single-objective"):
        _sweep(study, run_args)


@pytest.mark.slow
def test_study_with_pruning_is_a_parent_run_with_nested_trials_and_the_choice(run_args, client, tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="tiny", direction="minimize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    for lr in (0.5, 0.2, 1e-6):  # two good trials, then one so bad that the median pruner stops it
        study.enqueue_trial({"lr": lr})
    with _sweep(study, run_args, objective_name="val_loss") as sweep:
        def objective(trial):
            torch.manual_seed(0)
            model = TinyModel(lr=trial.suggest_float("lr", 1e-6, 1.0, log=True))
            trainer = fast_trainer(tmp_path / f"t{trial.number}", sweep.callbacks(trial, monitor="val_loss"),
                                   max_epochs=4)
            trainer.fit(model, datamodule=TinyDataModule(batch_size=8))
            return trainer.callback_metrics["val_loss"].item()

        study.optimize(sweep.track(objective), n_trials=3)

    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert sweep.best_trial == study.best_trial.number

    parent = client.get_run(sweep.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["direction"] == "minimize" and parent.data.params["pruner"] == "MedianPruner"
    history = {m.step: m.value for m in client.get_metric_history(sweep.run_id, "val_loss")}
    assert history == {t.number: pytest.approx(t.value) for t in study.trials if t.state.name == "COMPLETE"}
    assert parent.data.tags["prov4ml.best_run_id"] == sweep.best_run_id

    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{sweep.run_id}'")
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    by_trial = {int(c.data.tags["prov4ml.trial"]): c for c in children}
    pruned_steps = len(client.get_metric_history(by_trial[2].info.run_id, "val_loss"))
    assert pruned_steps < len(client.get_metric_history(by_trial[0].info.run_id, "val_loss")) == 4

    # the study's document: trials started by the study (the parent run), their models, the choice and why
    assert check_file(sweep.outputs.prov_json) == []
    doc = read_prov(sweep.outputs.prov_json)
    run_node = f"run_{sweep.run_id}"
    trials = {attr(a, "number"): a for a in by_type(doc, "Trial")}
    assert sorted(trials) == [0, 1, 2]
    assert [attr(trials[n], "state") for n in range(3)] == states
    assert attr(trials[2], "pruned_at_epoch") is not None and attr(trials[2], "value") is None
    for n, t in trials.items():
        assert attr(t, "run_id") == by_trial[n].info.run_id
    started = {(r.formal_attributes[0][1].localpart, r.formal_attributes[2][1].localpart)
               for r in records_of(doc, "wasStartedBy") if r.formal_attributes[2][1] is not None}
    # started by the study: its run, or the session of it that ran the trials (a session is part of its run)
    study_acts = {run_node} | {s for _, s in started if s.startswith(f"{run_node}.session_")}
    assert all(any((t.identifier.localpart, s) in started for s in study_acts) for t in trials.values())
    # each trial's own run is named in the study's document (ChildRun), started by its trial
    child_runs = {attr(a, "run_id"): a for a in by_type(doc, "ChildRun")}
    assert sorted(child_runs) == sorted(c.info.run_id for c in children)
    assert all((f"run_{attr(t, 'run_id')}", t.identifier.localpart) in started for t in trials.values())
    (choice,) = by_type(doc, "ModelSelection")
    assert attr(choice, "trial") == study.best_trial.number
    assert attr(choice, "value") == pytest.approx(study.best_value)
    assert "lowest val_loss" in attr(choice, "reason") and "1 pruned" in attr(choice, "reason")
    derived = {(r.formal_attributes[0][1].localpart, r.formal_attributes[1][1].localpart)
               for r in records_of(doc, "wasDerivedFrom")}
    (source,) = [m for c, m in derived if c == choice.identifier.localpart]
    assert source.endswith(f"trial_{study.best_trial.number}")
    (model,) = [e for e in by_type(doc, "TrialModel") if e.identifier.localpart == source]
    assert attr(model, "model_uri") == attr(choice, "model_uri")

    # the chosen model comes back and is the best trial's run's model
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        loaded = mlflow.pytorch.load_model(attr(choice, "model_uri"))
    finally:
        mlflow.set_tracking_uri(None)
    assert isinstance(loaded, TinyModel)

    # a trial's own document: its run was started by the study's run
    best_doc = read_prov(sweep.outputs.provenance_dir / f"provgraph_{sweep.best_run_id}.json")
    started = {(r.formal_attributes[0][1].localpart, r.formal_attributes[2][1].localpart)
               for r in records_of(best_doc, "wasStartedBy") if r.formal_attributes[2][1] is not None}
    assert (f"run_{sweep.best_run_id}", run_node) in started
