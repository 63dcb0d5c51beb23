"""Both front doors against a real shared tracking server (``mlflow server`` with a SQLite backend
and ``--serve-artifacts``, see tests/mlflow_server.py), read back through a separate MlflowClient:
params, metric history, PROV files (prov.read), the model (mlflow.pytorch.load_model) and
checkpoints all travel through the server; nothing lands in the local MLflow folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from mlflow.tracking import MlflowClient

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Context, Prov4MLCallback
from prov4ml_lightning.provenance.checks import check_file
from tests.helpers import attr, by_type, load_model, read_prov, server_run_args, user_params
from tests.lightning_models import TinyDataModule, TinyModel, fast_trainer

pytestmark = [
    pytest.mark.slow,  # a real `mlflow server` and Lightning fits
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
]


def _served_files(server, run_id: str) -> set[str]:
    """Names of the files the server stored for ``run_id`` in its own artifact root."""
    return {p.name for p in server.artifacts.rglob("*") if p.is_file() and run_id in p.as_posix()}


def test_functional_api_through_a_tracking_server(mlflow_server, tmp_path, capsys):
    from prov4ml_lightning.cli import main

    torch.manual_seed(0)
    notes = tmp_path / "notes.txt"
    notes.write_text("shared server")
    model = torch.nn.Linear(4, 2)
    run = prov4ml.start_run(**server_run_args(tmp_path, mlflow_server.uri, f"remote-{tmp_path.name}"))
    run_id = run.run_id
    prov4ml.log_params({"lr": 0.01, "optimizer": {"name": "adam"}})
    for step in range(20):
        prov4ml.log_metric("loss", 1 / (step + 1), step=step)
    prov4ml.log_metric("acc", 0.75, Context.VALIDATION, step=0)
    prov4ml.log_artifact(notes, artifact_path="notes")
    prov4ml.log_model(model, "linear")
    out = prov4ml.end_run()

    client = MlflowClient(mlflow_server.uri)  # another process would see the same
    remote = client.get_run(run_id)
    assert remote.info.status == "FINISHED"
    assert user_params(remote.data.params) == {"lr": "0.01", "optimizer/name": "adam"}
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(s, 1 / (s + 1)) for s in range(20)]
    assert [m.value for m in client.get_metric_history(run_id, "acc")] == [0.75]

    # the PROV document named by the run tag, downloaded through the server, is the one written locally
    tag = remote.data.tags["prov4ml.provenance_file"]
    assert tag == f"prov/provgraph_{run_id}.json"
    downloaded = Path(client.download_artifacts(run_id, tag, str(tmp_path / "down")))
    assert downloaded.read_bytes() == out.prov_json.read_bytes()
    doc = read_prov(downloaded)
    (loss,) = [s for s in by_type(doc, "MetricSeries") if attr(s, "name") == "loss"]
    assert attr(loss, "count") == 20
    assert check_file(downloaded) == []
    prov_files = {a.path.split("/", 1)[1] for a in client.list_artifacts(run_id, "prov")}
    assert {f"provgraph_{run_id}.json", f"provgraph_{run_id}.dot", f"metrics_{run_id}.csv",
            f"packages_{run_id}.txt"} <= prov_files
    # the server stored them in its artifact root; the local MLflow folder holds no artifact
    assert {f"provgraph_{run_id}.json", "notes.txt", f"packages_{run_id}.txt"} <= _served_files(mlflow_server, run_id)
    assert not (tmp_path / "mlflow" / "artifacts").exists()

    # the model comes back through the server and predicts like the original
    (entity,) = by_type(doc, "Model")
    x = torch.randn(3, 4)
    torch.testing.assert_close(load_model(mlflow_server.uri, attr(entity, "model_uri"))(x), model(x))

    # `prov4ml show <run id>` reads the run, its packages list included, from the server alone
    assert main(["show", run_id, "--tracking-uri", mlflow_server.uri]) == 0
    shown = capsys.readouterr().out
    assert f"({run_id})" in shown
    assert f"prov/packages_{run_id}.txt" in shown


def test_callback_through_a_tracking_server_uploads_checkpoints(mlflow_server, tmp_path):
    torch.manual_seed(0)
    callback = Prov4MLCallback(**server_run_args(tmp_path, mlflow_server.uri, f"remote-cb-{tmp_path.name}"),
                               upload_checkpoints=True)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=-1)
    model = TinyModel(lr=0.05)
    fast_trainer(tmp_path, [callback, checkpoints]).fit(model, datamodule=TinyDataModule(batch_size=8))
    run_id = callback.run_id

    client = MlflowClient(mlflow_server.uri)
    remote = client.get_run(run_id)
    assert remote.info.status == "FINISHED"
    assert remote.data.params["lr"] == "0.05"
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [7, 15]

    # every saved checkpoint was uploaded, and its bytes are those PROV hashed
    doc = read_prov(callback.outputs.prov_json)
    recorded = {Path(attr(c, "path")).name: attr(c, "sha256") for c in by_type(doc, "Checkpoint")}
    uploaded = {a.path.split("/", 1)[1] for a in client.list_artifacts(run_id, "checkpoints")}
    assert uploaded == set(recorded) == {p.name for p in (tmp_path / "ckpt").iterdir()}
    for name in uploaded:
        local = Path(client.download_artifacts(run_id, f"checkpoints/{name}", str(tmp_path / "down")))
        assert hashlib.sha256(local.read_bytes()).hexdigest() == recorded[name]
    assert uploaded <= _served_files(mlflow_server, run_id)
    assert not (tmp_path / "mlflow" / "artifacts").exists()

    (entity,) = by_type(doc, "Model")
    x = torch.randn(5, 4)
    torch.testing.assert_close(load_model(mlflow_server.uri, attr(entity, "model_uri"))(x), model(x))
