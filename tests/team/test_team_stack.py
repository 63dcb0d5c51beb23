"""Both front doors and a 2-process DDP fit against the team stack of docs/distributed-and-servers.md:
PostgreSQL as MLflow's backend store, an S3 API server as its artifact store, ``mlflow server
--serve-artifacts`` in front (tests/team_stack.py). Read back through the server (MlflowClient,
prov.read, mlflow.pytorch.load_model), and underneath it: the rows in PostgreSQL, the objects in S3.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Prov4MLCallback
from prov4ml_lightning.provenance.checks import check_file
from tests.helpers import attr, by_type, load_model, read_prov, server_run_args, user_params
from tests.lightning_models import TinyDataModule, TinyModel, fast_trainer

pytestmark = [
    pytest.mark.slow,  # a server stack, Lightning fits, a DDP job
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
]

REPO = Path(__file__).resolve().parents[2]


def _stored_underneath(team, run_id: str, model_uri: str) -> tuple[str, set[str]]:
    """The run's status in PostgreSQL's ``runs`` table and the names of its objects in the S3 bucket
    (MLflow 3 keeps a logged model apart from its run: ``<experiment>/models/<model id>/artifacts/``)."""
    conn = team.postgres.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,))
            (status,) = cur.fetchone()
    finally:
        conn.close()
    keys = team.s3.keys()
    model_id = model_uri.rstrip("/").rsplit("/", 1)[-1]
    names = {key.rsplit("/", 1)[-1] for key in keys if f"/{run_id}/" in key}
    names |= {"model:" + key.rsplit("/", 1)[-1] for key in keys if f"/{model_id}/" in key}
    return status, names


def _check_prov_through_server(client: MlflowClient, run_id: str, down: Path):
    tag = client.get_run(run_id).data.tags["prov4ml.provenance_file"]
    assert tag == f"prov/provgraph_{run_id}.json"
    downloaded = Path(client.download_artifacts(run_id, tag, str(down)))
    assert check_file(downloaded) == []
    return read_prov(downloaded), downloaded


def test_functional_api_on_the_team_stack(team, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    prov4ml.start_run(**server_run_args(tmp_path, team.uri, "team-api"))
    run_id = prov4ml.get_run_id()
    prov4ml.log_params({"lr": 0.01, "batch_size": 32})
    for step in range(200):
        prov4ml.log_metric("loss", 1 / (step + 1), step=step)
    prov4ml.log_model(model, "linear")
    out = prov4ml.end_run()

    client = MlflowClient(team.uri)
    remote = client.get_run(run_id)
    assert remote.info.status == "FINISHED"
    assert user_params(remote.data.params) == {"lr": "0.01", "batch_size": "32"}
    history = sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(s, 1 / (s + 1)) for s in range(200)]
    doc, downloaded = _check_prov_through_server(client, run_id, tmp_path / "down")
    (series,) = [s for s in by_type(doc, "MetricSeries") if attr(s, "name") == "loss"]
    assert attr(series, "count") == 200
    assert downloaded.read_bytes() == out.prov_json.read_bytes()
    (entity,) = by_type(doc, "Model")
    x = torch.randn(3, 4)
    torch.testing.assert_close(load_model(team.uri, attr(entity, "model_uri"))(x), model(x))

    status, objects = _stored_underneath(team, run_id, attr(entity, "model_uri"))
    assert status == "FINISHED"  # the row is in PostgreSQL
    assert {f"provgraph_{run_id}.json", f"metrics_{run_id}.csv", "model:MLmodel"} <= objects  # the files are in S3
    assert not (tmp_path / "mlflow").exists()  # nothing went to a local store


def test_callback_fit_on_the_team_stack(team, tmp_path):
    torch.manual_seed(0)
    callback = Prov4MLCallback(**server_run_args(tmp_path, team.uri, "team-callback"))
    model = TinyModel(lr=0.05)
    fast_trainer(tmp_path, [callback]).fit(model, datamodule=TinyDataModule(batch_size=8))
    run_id = callback.run_id

    client = MlflowClient(team.uri)
    remote = client.get_run(run_id)
    assert remote.info.status == "FINISHED"
    assert remote.data.params["lr"] == "0.05"
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [7, 15]
    local = read_prov(callback.outputs.prov_json)
    doc, _ = _check_prov_through_server(client, run_id, tmp_path / "down")
    assert len(doc.records) == len(local.records)
    (entity,) = by_type(doc, "Model")
    x = torch.randn(5, 4)
    torch.testing.assert_close(load_model(team.uri, attr(entity, "model_uri"))(x), model(x))
    status, objects = _stored_underneath(team, run_id, attr(entity, "model_uri"))
    assert status == "FINISHED" and {f"provgraph_{run_id}.json", "model:MLmodel"} <= objects


def test_ddp_fit_on_the_team_stack(team, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(REPO / "tests" / "distributed" / "ddp_train.py"), str(tmp_path),
                           "--tracking-uri", team.uri], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = {int(line.split()[1]): line.split()[3] for line in done.stdout.splitlines() if line.startswith("RANK ")}
    assert sorted(printed) == [0, 1] and printed[0] == printed[1]
    run_id = printed[0]

    client = MlflowClient(team.uri)
    remote = client.get_run(run_id)
    assert remote.info.status == "FINISHED"
    assert remote.data.tags["prov4ml.world_size"] == "2"
    assert client.get_metric_history(run_id, "rank1/cpu_usage")
    assert client.get_metric_history(run_id, "val_loss")
    doc, _ = _check_prov_through_server(client, run_id, tmp_path / "down")
    ranks = {attr(a, "global_rank"): a for a in by_type(doc, "Rank")}
    assert sorted(ranks) == [0, 1] and {attr(r, "status") for r in ranks.values()} == {"FINISHED"}
    (entity,) = by_type(doc, "Model")
    assert isinstance(load_model(team.uri, attr(entity, "model_uri")), torch.nn.Module)
    status, objects = _stored_underneath(team, run_id, attr(entity, "model_uri"))
    assert status == "FINISHED" and {f"provgraph_{run_id}.json", "model:MLmodel"} <= objects


def _host(folder: Path, *argv: str) -> dict[str, str]:
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "team" / "lineage_host.py"), *argv], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def test_two_hosts_produce_linked_runs_and_lineage_answers_through_the_server(team, tmp_path, capsys):
    import json

    from prov4ml_lightning.cli import main

    a = _host(tmp_path / "host1", "train", team.uri)
    b = _host(tmp_path / "host2", "finetune", team.uri, a["model_uri"])
    client = MlflowClient(team.uri)
    b_doc, _ = _check_prov_through_server(client, b["run_id"], tmp_path / "down")
    (earlier,) = [e for e in by_type(b_doc, "EarlierRunWeights") if attr(e, "kind") == "model"]
    assert attr(earlier, "run_id") == a["run_id"]
    assert str(earlier.identifier).endswith(f"run_{a['run_id']}.model.TinyModel.v1")
    a_doc, _ = _check_prov_through_server(client, a["run_id"], tmp_path / "down")
    (dataset,) = by_type(a_doc, "Dataset")

    capsys.readouterr()
    assert main(["lineage", "--tracking-uri", team.uri, "--downstream", attr(dataset, "fingerprint"), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert {r["run_id"] for r in answer["runs"]} >= {a["run_id"], b["run_id"]}
    assert {m["model_uri"] for m in answer["models"]} >= {a["model_uri"], b["model_uri"]}
    assert main(["lineage", "--tracking-uri", team.uri, "--upstream", b["model_uri"], "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert {r["run_id"] for r in answer["runs"]} == {a["run_id"], b["run_id"]}
    assert attr(dataset, "fingerprint") in {d["fingerprint"] for d in answer["datasets"]}
