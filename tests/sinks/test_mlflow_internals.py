"""The one MLflow internal the service process relies on, checked on every MLflow release we claim (tox.ini).

The training process draws the run and model ids itself (its files and PROV records are named before
MLflow is imported) and the service creates the run and the logged model under them:
``SqlAlchemyStore.create_run`` and ``create_logged_model`` take no id, they call their module's
``uuid.uuid4()``, which ``MlflowSink`` swaps for that one call. A release that draws ids otherwise
must fail here with a message that says so, and a user's run must still record, offline, with a warning.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from prov4ml_lightning.files import CACHE_ENV
from prov4ml_lightning.sinks.mlflow.service import save_model_file
from prov4ml_lightning.sinks.mlflow.sink import (
    MlflowSink,
    _SavedPytorchModel,
    default_tracking_uri,
    mlflow_internals_changed,
)
from tests.helpers import read_prov

REPO = Path(__file__).resolve().parents[2]


def test_the_sql_store_draws_its_ids_with_its_module_uuid():
    from mlflow.store.tracking import sqlalchemy_store

    assert getattr(sqlalchemy_store, "uuid", None) is uuid, mlflow_internals_changed()
    for method in ("create_run", "create_logged_model"):
        source = inspect.getsource(getattr(sqlalchemy_store.SqlAlchemyStore, method))
        assert "uuid.uuid4()" in source, f"SqlAlchemyStore.{method}: {mlflow_internals_changed()}"


def test_a_run_is_created_under_the_id_the_training_process_drew(mlflow_dir):
    sink = MlflowSink(default_tracking_uri(mlflow_dir), mlflow_dir)
    run_id = uuid.uuid4().hex
    experiment_id = sink.experiment_id(f"internals-{run_id[:8]}")
    got, name = sink.create_run_with_id(run_id, experiment_id, "chosen", {"k": "v"}, None, None,
                                        int(time.time() * 1000))
    assert got == run_id and name == "chosen"
    run = sink.client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags["k"] == "v"
    # the swap is for that one call: MLflow's next run gets an id of its own
    other, _ = sink.create_run(experiment_id, None, {}, None, None, int(time.time() * 1000))
    assert other != run_id
    for rid in (run_id, other):
        sink.end_run(rid, "FINISHED", int(time.time() * 1000))


@pytest.mark.slow
def test_a_model_is_logged_under_the_id_the_training_process_drew(mlflow_dir, tmp_path):
    import torch

    sink = MlflowSink(default_tracking_uri(mlflow_dir), mlflow_dir)
    experiment_id = sink.experiment_id(f"internals-{uuid.uuid4().hex[:8]}")
    run_id, _ = sink.create_run(experiment_id, None, {}, None, None, int(time.time() * 1000))
    path = tmp_path / "model.pt"
    save_model_file(torch.nn.Linear(2, 1), path)
    model_id = f"m-{uuid.uuid4().hex}"
    _uri, got = sink.log_model_file(run_id, str(path), "model", model_id)
    assert got == model_id
    assert sink.client.get_logged_model(model_id).source_run_id == run_id
    sink.end_run(run_id, "FINISHED", int(time.time() * 1000))


# Loaded at start-up of every Python process whose path starts with this folder (the training script and
# the MLflow service it starts): stands for an MLflow release whose SQL store no longer has the module
# name `uuid` the swap replaces.
_CHANGED_MLFLOW = """
import mlflow.store.tracking.sqlalchemy_store as store
store._ids = store.uuid
del store.uuid
"""

_TRAINING = """
import torch
import prov4ml_lightning as prov4ml

prov4ml.start_run(prov_user_namespace="www.example.org", experiment_name="changed",
                  provenance_save_dir="prov", mlflow_save_dir="mlflow")
prov4ml.log_param("lr", 0.1)
for step in range(20):
    prov4ml.log_metric("loss", 1.0 / (step + 1), prov4ml.Context.TRAINING, step=step)
print("RUN", prov4ml.get_run_id(), flush=True)
prov4ml.end_run()
print("TRAINED", flush=True)
"""


@pytest.mark.slow
def test_an_mlflow_that_draws_ids_otherwise_leaves_the_run_offline_with_one_warning(tmp_path):
    hook = tmp_path / "changed_mlflow"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_CHANGED_MLFLOW)
    (tmp_path / "train.py").write_text(textwrap.dedent(_TRAINING))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(hook), str(REPO), env.get("PYTHONPATH", "")])
    # no migrated empty store cached: the store is MLflow's to open (the direct store, sinks/mlflow/direct.py,
    # never asks MLflow for ids)
    env[CACHE_ENV] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TRAINED" in proc.stdout  # the user's training went on to its end
    (run_id,) = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("RUN ")]
    said = [line for line in proc.stderr.splitlines() if "no longer draws run and model ids" in line]
    assert len(said) == 1, proc.stderr[-3000:]
    assert "the run goes on offline" in said[0] and "MLflow " in said[0]
    # every point is in the PROV document, and MLflow holds no run under that id
    doc = read_prov(tmp_path / "prov" / f"provgraph_{run_id}.json")
    assert "loss" in doc.serialize(format="json")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(default_tracking_uri(tmp_path / "mlflow"))
    assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
                if r.info.run_id == run_id]


def test_the_store_opener_finds_mlflow_s_schema_functions():
    """``sinks/mlflow/store.py`` creates a new store from a migrated template and checks stores with
    MLflow's own functions (``mlflow.store.db.utils``: ``_initialize_tables``, ``_all_tables_exist``,
    ``_get_schema_version``, ``_get_latest_schema_revision``). A release without them still works
    (MLflow creates stores in place, as before), but the template and the check are gone: say so here."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    from prov4ml_lightning.sinks.mlflow.store import template_path

    path = template_path()
    assert path is not None, "this MLflow lacks the schema functions sinks/mlflow/store.py uses"
    assert _get_latest_schema_revision() in path.name


def test_the_model_written_without_torch_uses_mlflow_pytorch_s_names_and_helpers():
    """The service writes a logged model's folder from the file the training process saved
    (``MlflowSink.log_model_file``), as ``mlflow.pytorch.save_model`` writes it: with the names of
    ``mlflow.pytorch`` (which it cannot import without torch, rules.py) and MLflow's own helpers,
    called by ``Model.log``. A release that renames any of them must fail here."""
    import mlflow.pytorch
    from mlflow.models import Model

    from prov4ml_lightning.sinks.mlflow import rules

    assert rules.PYTORCH_FLAVOR == mlflow.pytorch.FLAVOR_NAME
    assert mlflow.pytorch.__name__ == rules.PYTORCH_LOADER_MODULE
    assert rules.PYTORCH_MODEL_DATA == mlflow.pytorch._MODEL_DATA_SUBPATH
    assert rules.PYTORCH_MODEL_FILE == mlflow.pytorch._SERIALIZED_TORCH_MODEL_FILE_NAME
    assert mlflow.pytorch.pickle_module.__name__ == rules.PYTORCH_PICKLE_MODULE
    assert rules.PYTORCH_PICKLE_MODULE_INFO == mlflow.pytorch._PICKLE_MODULE_INFO_FILE_NAME
    assert {"flavor", "run_id", "model_id", "name"} <= set(inspect.signature(Model.log).parameters)
    _SavedPytorchModel.helpers()  # MLflow's helpers it writes the folder with: an ImportError names the missing one
