"""Nested runs in the parent's document: a plain Optuna loop (no Prov4MLSweep) whose trials are
``Prov4MLCallback(nested=True)`` fits under a run opened with ``prov4ml.start_run``, and child runs
opened with ``start_run(nested=True)``. Read back with MlflowClient and prov.read."""

from __future__ import annotations

import itertools
from pathlib import Path

import optuna
import pytest
import torch

import prov4ml_lightning as prov4ml
from prov4ml_lightning.provenance.checks import check_file
from tests.helpers import attr, by_type, read_prov, records_of
from tests.lightning_models import TinyDataModule, TinyModel, fast_trainer

pytestmark = pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")


def _children(doc) -> dict[str, object]:
    """run id -> the ChildRun activity of the parent's document."""
    return {attr(a, "run_id"): a for a in by_type(doc, "ChildRun")}


@pytest.mark.slow
def test_a_plain_optuna_loop_of_nested_callbacks_is_named_in_the_parents_document(run_args, client, tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    callbacks: list[prov4ml.Prov4MLCallback] = []

    def objective(trial: optuna.Trial) -> float:
        torch.manual_seed(0)
        callback = prov4ml.Prov4MLCallback(**run_args, nested=True, log_checkpoints=False)
        callbacks.append(callback)
        trainer = fast_trainer(tmp_path / f"t{trial.number}", [callback], max_epochs=1, enable_checkpointing=False)
        trainer.fit(TinyModel(lr=trial.suggest_float("lr", 1e-3, 0.5, log=True)), datamodule=TinyDataModule())
        return trainer.callback_metrics["val_loss"].item()

    parent = prov4ml.start_run(**run_args)
    optuna.create_study().optimize(objective, n_trials=4)
    outputs = prov4ml.end_run()

    child_ids = [c.run_id for c in callbacks]
    assert len(set(child_ids)) == 4 and parent.run_id not in child_ids
    mlflow_children = client.search_runs([client.get_run(parent.run_id).info.experiment_id],
                                         filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'")
    assert sorted(r.info.run_id for r in mlflow_children) == sorted(child_ids)

    assert check_file(outputs.prov_json) == []
    doc = read_prov(outputs.prov_json)
    children = _children(doc)
    assert sorted(children) == sorted(child_ids)  # the parent's document names all four trials' runs
    session = f"run_{parent.run_id}.session_1"
    started = {(r.formal_attributes[0][1].localpart, r.formal_attributes[2][1].localpart)
               for r in records_of(doc, "wasStartedBy") if r.formal_attributes[2][1] is not None}
    for run_id, activity in children.items():
        # the id the child's own document gives its run, so the two documents meet
        assert activity.identifier.localpart == f"run_{run_id}"
        assert (f"run_{run_id}", session) in started  # started by the parent's session
        assert attr(activity, "status") == "FINISHED"
        prov_file = Path(attr(activity, "prov_file"))
        assert prov_file.exists() and check_file(prov_file) == []
        child_doc = read_prov(prov_file)
        (child_run,) = by_type(child_doc, "Run")
        assert child_run.identifier == activity.identifier and attr(child_run, "run_id") == run_id
    # each child ran within the parent, one after the other
    spans = sorted((a.get_startTime(), a.get_endTime()) for a in children.values())
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))


@pytest.mark.slow
def test_children_opened_with_start_run_nested_are_named_with_their_status(run_args, tmp_path):
    parent = prov4ml.start_run(**run_args)
    with prov4ml.start_run(**run_args, nested=True) as first:
        prov4ml.log_metric("loss", 1.0)
    second = prov4ml.start_run(**run_args, nested=True)
    second.end("FAILED")
    outputs = prov4ml.end_run()

    children = _children(read_prov(outputs.prov_json))
    assert {k: attr(a, "status") for k, a in children.items()} == {first.run_id: "FINISHED", second.run_id: "FAILED"}
    assert attr(children[first.run_id], "prov_file") == str(first.outputs.prov_json)
    assert parent.run_id not in children
