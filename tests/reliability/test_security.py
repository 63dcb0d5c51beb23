"""Security: planted secrets never reach MLflow or any local file, no name escapes the configured
folders, hostile labels cannot add Graphviz edges, models load back without unpickling code."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Context
from tests.helpers import attr, by_type, read_prov, user_params

pytestmark = pytest.mark.timeout(180)

SECRETS = {
    "env MY_API_TOKEN": "PLANTED-S1-envtoken",
    "env AWS_SECRET_ACCESS_KEY": "PLANTED-S2-aws",
    "env MLFLOW_TRACKING_PASSWORD": "PLANTED-S3-mlflowpw",
    "password in the tracking URI": "PLANTED-S4-uripw",
    "argv --api-token VALUE": "PLANTED-S5-argv",
    "argv --password=VALUE": "PLANTED-S6-argv",
    "argv URL with credentials": "PLANTED-S7-argvurl",
    "git remote URL with a token": "PLANTED-S8-git",
    "env PL_API_TOKEN (a captured prefix)": "PLANTED-S9-pl",
    "argv URL with ?token=": "PLANTED-S10-query",
}

SCRIPT = """
import sys
import torch
import prov4ml_lightning as prov4ml

prov_dir, experiment = sys.argv[-2], sys.argv[-1]
with prov4ml.start_run("www.example.org", experiment, prov_dir, prov_dir + "/unused-mlflow") as run:
    prov4ml.log_params({"lr": 0.1})
    for step in range(20):
        prov4ml.log_metric("loss", 1 / (step + 1), step=step)
    prov4ml.log_model(torch.nn.Linear(2, 1), "m")
    print("run", run.run_id, flush=True)
"""


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo, check=True,
                   capture_output=True, timeout=30)


def _files_containing(root: Path, needles: dict[str, str]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{what} in {path}" for what, secret in needles.items() if secret.encode() in data]
    return hits


@pytest.mark.slow
def test_planted_secrets_appear_nowhere(mlflow_server, script, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "remote", "add", "origin", f"https://oauth2:{SECRETS['git remote URL with a token']}@github.com/x/y.git")
    uri = f"http://alice:{SECRETS['password in the tracking URI']}@127.0.0.1:{mlflow_server.port}"
    env = {
        "MY_API_TOKEN": SECRETS["env MY_API_TOKEN"],
        "AWS_SECRET_ACCESS_KEY": SECRETS["env AWS_SECRET_ACCESS_KEY"],
        "MLFLOW_TRACKING_USERNAME": "alice",
        "MLFLOW_TRACKING_PASSWORD": SECRETS["env MLFLOW_TRACKING_PASSWORD"],
        "MLFLOW_TRACKING_URI": uri,
        "PL_API_TOKEN": SECRETS["env PL_API_TOKEN (a captured prefix)"],
        "PL_PLANTED_VISIBLE": "visible-marker-123",  # captured and not secret: proves the capture ran
    }
    train = script(SCRIPT, cwd=repo, env=env)
    _git(repo, "add", "train.py")
    _git(repo, "commit", "-q", "-m", "train")
    prov_dir = tmp_path / "prov"
    argv = ["--api-token", SECRETS["argv --api-token VALUE"], f"--password={SECRETS['argv --password=VALUE']}",
            f"https://bob:{SECRETS['argv URL with credentials']}@data.example.org/set",
            f"--data-url=https://data.example.org/x?token={SECRETS['argv URL with ?token=']}",
            str(prov_dir), f"secrets-{tmp_path.name}"]
    proc = train.run(*argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = proc.stdout.split()[-1]

    # Positive controls: the environment, the command line and the git remote were captured.
    prov_text = (prov_dir / f"provgraph_{run_id}.json").read_text()
    assert "visible-marker-123" in prov_text and "--api-token" in prov_text and "github.com/x/y.git" in prov_text
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"

    hits = _files_containing(prov_dir, SECRETS)  # PROV JSON/DOT/SVG, sidecar, journal, package list, ...
    hits += [f"{what} in script output" for what, s in SECRETS.items() if s in proc.stdout + proc.stderr]
    mlflow_text = json.dumps({"params": run.data.params, "tags": run.data.tags, "name": run.info.run_name})
    hits += [f"{what} in MLflow params/tags" for what, s in SECRETS.items() if s in mlflow_text]
    downloaded = Path(client.download_artifacts(run_id, "", str(tmp_path / "artifacts")))
    assert (downloaded / "prov" / f"provgraph_{run_id}.json").exists()
    hits += _files_containing(downloaded, SECRETS)
    hits += _files_containing(mlflow_server.root, SECRETS)  # the server's database, artifacts and log
    assert not hits


# -- paths -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_hostile_names_write_nothing_outside_the_configured_folders(run_args, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    prov_dir = tmp_path / "prov"
    mlflow_dir = tmp_path / "mlflow"
    before = set(tmp_path.rglob("*"))
    evil = tmp_path / "..evil.txt"
    evil.write_text("x")
    with prov4ml.start_run(**{**run_args, "provenance_save_dir": str(prov_dir), "mlflow_save_dir": str(mlflow_dir)},
                           run_name='run "quoted" <x>') as run:
        prov4ml.log_metric("../../../escape", 1.0)
        prov4ml.log_metric("/etc/passwd", 1.0, Context.VALIDATION)
        prov4ml.log_params({"../../p": 1, "/abs/q": 2, "a\\..\\b": 3})
        prov4ml.log_artifact(evil)
        prov4ml.log_model(torch.nn.Linear(1, 1), "modèle")
        run.set_tags({"../t": "../v"})
    created = set(tmp_path.rglob("*")) - before - {evil}
    outside = [p for p in created if not (p.is_relative_to(prov_dir) or p.is_relative_to(mlflow_dir))]
    assert not outside
    assert not any(cwd.iterdir())  # no ./mlruns, ./mlartifacts, ./mlflow.db
    # Every name reached MLflow, transformed where MLflow would take it for a path.
    mrun = MlflowClient(f"sqlite:///{mlflow_dir / 'mlflow.db'}").get_run(run.run_id)
    assert len(user_params(mrun.data.params)) == 3
    assert all(".." not in k.split("/") and not k.startswith("/") for k in mrun.data.params)
    assert any(k.startswith("t-") and v == "../v" for k, v in mrun.data.tags.items())
    assert {attr(p, "name") for p in by_type(read_prov(run.outputs.prov_json), "Parameter")} == {
        "../../p", "/abs/q", "a\\..\\b"}


# -- DOT ----------------------------------------------------------------------------------------------
HOSTILE = ['a" -> b [label="x', 'x"]; evil -> pwned; //', "<b>html</b>", "} digraph g { y", "line\nbreak \\"]


def test_hostile_labels_cannot_add_graphviz_nodes_or_edges(run_args, tmp_path):
    with prov4ml.start_run(**run_args, run_name="r-quoted") as run:
        for i, name in enumerate(HOSTILE):
            prov4ml.log_metric(name, float(i))
            prov4ml.log_param(name, name)
    dot_file = run.outputs.prov_dot
    proc = subprocess.run(["dot", "-Tjson", str(dot_file)], capture_output=True, text=True, timeout=60, check=True)
    graph = json.loads(proc.stdout)
    names = {o["name"] for o in graph.get("objects", [])}
    ours = {n for n in names if n.startswith("n") and n[1:].isdigit()}
    clusters = {n for n in names if re.fullmatch(r"cluster_(inputs|outputs|used_then|timeline|legend|fit_\d+|"
                                                 r"session_\d+)", n)}
    # layout only: rows (anonymous rank=same subgraphs %<k>), a row's empty middle (s<k>), the column anchors
    layout = {n for n in names if re.fullmatch(r"%\d+|s\d+|anchor_[lmr]", n)}
    assert names - ours - clusters - layout <= {"legend_entity", "legend_activity", "legend_agent", "legend_notes",
                                                "legend_collapsed"}, names - ours
    assert not {"b", "evil", "pwned", "g", "y"} & names
    labels = " ".join(o.get("label", "") for o in graph["objects"])
    for name in ("<b>html</b>", "evil -> pwned"):
        assert name in labels  # shown as text, not interpreted
    doc = read_prov(run.outputs.prov_json)
    # kept as given, but a line break in a name is shown as backslash-n (control characters are escaped)
    assert {attr(s, "name") for s in by_type(doc, "MetricSeries")} == {h.replace("\n", "\\n") for h in HOSTILE}
    assert subprocess.run(["dot", "-Tsvg", str(dot_file), "-o", str(tmp_path / "g.svg")], timeout=60).returncode == 0


# -- models -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_models_default_to_pickle_and_pt2_with_an_input_example_loads_back(run_args, client):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    x = torch.randn(3, 4)
    with prov4ml.start_run(**run_args) as run:
        prov4ml.log_model(model, "exported", input_example=x.numpy())
        prov4ml.log_model(model, "pickled")
    exported, pickled = run.models
    formats = {attr(m, "name"): attr(m, "serialization_format") for m in by_type(read_prov(run.outputs.prov_json),
                                                                                   "Model")}
    assert formats == {"exported": "pt2", "pickled": "pickle"}
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        files = {m.name: sorted(os.listdir(Path(mlflow.artifacts.download_artifacts(m.model_uri)) / "data"))
                 for m in (exported, pickled)}
        assert files["exported"] == ["model.pt2"]  # torch.export: graph + weights, no pickled code
        assert "model.pth" in files["pickled"]
        loaded = mlflow.pytorch.load_model(exported.model_uri)
    finally:
        mlflow.set_tracking_uri(None)
    assert not isinstance(loaded, torch.nn.Sequential)  # a GraphModule rebuilt from the exported program
    torch.testing.assert_close(loaded(x), model(x))

