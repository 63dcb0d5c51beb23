"""The functional API against a real SQLite MLflow store, read back with MlflowClient and prov."""

from __future__ import annotations

import math
import re
import subprocess
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import mlflow.pytorch
import numpy as np
import pytest
import torch

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Context, Prov4MLWarning
from tests.helpers import attr, by_type, read_prov, records_of, user_params, wait_until


def test_full_run_is_recorded_in_mlflow_and_prov(run_args, client):
    run = prov4ml.start_run(**run_args, tags={"team": "vision"}, description="a test run", run_name="r1")
    assert prov4ml.active_run() is run
    run_id = prov4ml.get_run_id()
    prov4ml.log_params({"lr": 0.01, "optim": {"name": "adam", "betas": "0.9,0.99"}})
    prov4ml.log_param("epochs", 3)
    for step in range(250):
        prov4ml.log_metric("loss", 1.0 / (step + 1), Context.TRAINING, step=step)
    for step in range(5):
        prov4ml.log_metrics({"loss": np.float32(0.5), "acc": torch.tensor(0.25 * step)}, Context.VALIDATION, step=step)
    out = prov4ml.end_run()
    assert prov4ml.active_run() is None

    mrun = client.get_run(run_id)
    assert mrun.info.status == "FINISHED"
    assert mrun.info.run_name == "r1"
    assert user_params(mrun.data.params) == {"lr": "0.01", "optim/name": "adam", "optim/betas": "0.9,0.99",
                                             "epochs": "3"}
    assert mrun.data.tags["team"] == "vision"
    assert mrun.data.tags["mlflow.note.content"] == "a test run"
    history = client.get_metric_history(run_id, "loss")
    assert len(history) == 250
    assert sorted(m.step for m in history) == list(range(250))
    assert {m.step: m.value for m in client.get_metric_history(run_id, "acc")} == {
        s: 0.25 * s for s in range(5)
    }
    artifacts = {a.path for a in client.list_artifacts(run_id, "prov")}
    assert f"prov/provgraph_{run_id}.json" in artifacts
    assert f"prov/provgraph_{run_id}.dot" in artifacts

    assert out.prov_json.name == f"provgraph_{run_id}.json"
    doc = read_prov(out.prov_json)
    (run_act,) = by_type(doc, "Run")
    assert attr(run_act, "status") == "FINISHED"
    assert attr(run_act, "description") == "a test run"
    assert attr(run_act, "tag_team") == "vision"
    params = {attr(p, "name"): attr(p, "value") for p in by_type(doc, "Parameter")}
    assert params["lr"] == 0.01 and params["optim/name"] == "adam" and params["epochs"] == 3
    series = {(attr(s, "name"), attr(s, "context")): s for s in by_type(doc, "MetricSeries")}
    loss = series[("loss", "training")]
    assert attr(loss, "count") == 250 and attr(loss, "last_step") == 249
    assert attr(loss, "min_value") == pytest.approx(1 / 250) and attr(loss, "max_value") == 1.0
    assert attr(series[("acc", "validation")], "count") == 5
    used = {str(u.formal_attributes[1][1]) for u in records_of(doc, "used")}
    assert all(str(p.identifier) in used for p in by_type(doc, "Parameter"))
    generated = {str(g.formal_attributes[0][1]) for g in records_of(doc, "wasGeneratedBy")}
    assert str(loss.identifier) in generated
    agents = {attr(a, "type").localpart if attr(a, "type") else None for a in records_of(doc, "agent")}
    assert {"Person", "SoftwareAgent"} <= agents

    # the sidecar has every point
    lines = out.metrics_file.read_text().splitlines()
    assert len(lines) == 1 + 250 + 10


@pytest.mark.slow
def test_graph_renders_with_dot(run_args, tmp_path):
    prov4ml.start_run(**run_args)
    prov4ml.log_metric('a" -> b [label="x', 1.0)
    out = prov4ml.end_run()
    svg = tmp_path / "g.svg"
    subprocess.run(["dot", "-Tsvg", str(out.prov_dot), "-o", str(svg)], check=True)
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    # the hostile metric name is a label, not an edge: every node and edge Graphviz drew is one the
    # generator named (n<k>, legend_*), none the label's `a" -> b` would have added
    ns = "{http://www.w3.org/2000/svg}"
    drawn = [(g.get("class"), g.find(ns + "title").text)
             for g in root.iter(ns + "g") if g.get("class") in ("node", "edge")]
    assert any(kind == "edge" for kind, _ in drawn)
    named = re.compile(r"n\d+|legend_\w+|n\d+->n\d+")
    assert all(named.fullmatch(title) for _, title in drawn), drawn
    assert read_prov(out.prov_json) is not None
    assert out.prov_svg is not None and ET.parse(out.prov_svg).getroot().tag.endswith("svg")


def test_log_model_loads_back_with_same_outputs(run_args, client):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)).eval()
    with prov4ml.start_run(**run_args) as run:
        prov4ml.log_model(model, "mlp")
        prov4ml.log_model(model, "mlp")  # a second version
    record = run.models[0]
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        loaded = mlflow.pytorch.load_model(record.model_uri)
    finally:
        mlflow.set_tracking_uri(None)
    x = torch.randn(3, 4)
    torch.testing.assert_close(loaded(x), model(x))
    assert record.info["total_params"] == sum(p.numel() for p in model.parameters())
    assert record.info["param_bytes_float32"] == 4 * record.info["total_params"]
    assert record.info["buffer_bytes"] > 0
    doc = read_prov(run.outputs.prov_json)
    models = sorted(by_type(doc, "Model"), key=lambda m: attr(m, "version"))
    assert [attr(m, "version") for m in models] == [1, 2]
    assert attr(models[0], "total_params") == record.info["total_params"]
    assert attr(models[1], "model_uri") == run.models[1].model_uri
    assert records_of(doc, "wasDerivedFrom")  # v2 is a revision of v1


def test_log_artifact_file_and_folder(run_args, client, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "a.yaml").write_text("a: 1")
    with prov4ml.start_run(**run_args) as run:
        prov4ml.log_artifact(f)
        prov4ml.log_artifact(folder, Context.TRAINING, artifact_path="configs")
    paths = {a.path for a in client.list_artifacts(run.run_id)}
    assert "notes.txt" in paths and "configs" in paths
    doc = read_prov(run.outputs.prov_json)
    arts = {attr(a, "path").split("/")[-1]: a for a in by_type(doc, "Artifact")}
    import hashlib

    assert attr(arts["notes.txt"], "sha256") == hashlib.sha256(b"hello").hexdigest()
    assert attr(arts["cfg"], "is_directory") is True


def test_execution_time_and_system_metrics(run_args, client):
    with prov4ml.start_run(**run_args) as run:
        prov4ml.log_current_execution_time("train_loop", Context.TRAINING, step=0)
        prov4ml.log_system_metrics(Context.TRAINING, step=0)
    mrun = client.get_run(run.run_id)
    metrics = mrun.data.metrics
    assert 0 <= metrics["execution_time/train_loop"] < 60
    assert metrics["system/process_rss_mb"] > 0
    # the original prov4ml's names, each with its context tag, so its dashboards and filters still work
    for key in ("cpu_usage", "memory_usage", "disk_usage", "gpu_usage", "gpu_memory_usage"):
        assert 0 <= metrics[key] <= 100 and mrun.data.tags[f"metric.context.{key}"] == "TRAINING", key
    assert client.search_runs([mrun.info.experiment_id], "metrics.memory_usage > 0")


def test_background_system_metrics(run_args, client):
    def sampled_twice() -> bool:
        run.flush()  # the sampler's points, through the writer, into MLflow
        return len(client.get_metric_history(run.run_id, "cpu_usage")) >= 2

    with prov4ml.start_run(**run_args, log_system_metrics=True, system_metrics_interval=0.1) as run:
        wait_until(sampled_twice, timeout=30, what="two background samples of cpu_usage")
    history = client.get_metric_history(run.run_id, "cpu_usage")
    assert len(history) >= 2


def test_nested_run(run_args, client):
    parent = prov4ml.start_run(**run_args)
    child = prov4ml.start_run(**run_args, nested=True)
    assert prov4ml.active_run() is child
    prov4ml.log_metric("x", 1.0)
    prov4ml.end_run()
    assert prov4ml.active_run() is parent
    prov4ml.end_run()
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id
    doc = read_prov(child.outputs.prov_json)
    informed = [r for r in records_of(doc, "wasInformedBy") if str(r.formal_attributes[1][1]).endswith(parent.run_id)]
    assert informed
    assert records_of(doc, "wasStartedBy")


def test_context_manager_failure_ends_failed_and_reraises(run_args, client):
    with pytest.raises(ZeroDivisionError), prov4ml.start_run(**run_args) as run:
        prov4ml.log_metric("loss", 0.5, step=0)
        1 / 0  # noqa: B018
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert len(client.get_metric_history(run.run_id, "loss")) == 1
    assert attr(by_type(read_prov(run.outputs.prov_json), "Run")[0], "status") == "FAILED"


def test_end_run_twice_is_safe(run_args):
    prov4ml.start_run(**run_args)
    first = prov4ml.end_run()
    assert first is not None
    assert prov4ml.end_run() is None


def test_metric_from_another_thread_lands_in_same_run(run_args, client):
    with prov4ml.start_run(**run_args) as run:
        threads = [threading.Thread(target=lambda i=i: [prov4ml.log_metric(f"t{i}", float(s), step=s)
                                                        for s in range(100)]) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i in range(4):
        assert len(client.get_metric_history(run.run_id, f"t{i}")) == 100


def test_tensors_of_mixed_dtypes_keep_exact_values(run_args, client):
    # Tensors are converted in one stack per device and dtype: an int64 above 2**24 stacked with
    # float32 values would come back rounded to float32.
    big = 2**25 + 1
    with prov4ml.start_run(**run_args) as run:
        prov4ml.log_metric("big", torch.tensor(big), step=0)
        prov4ml.log_metric("small", torch.tensor(0.5), step=0)
        prov4ml.log_metric("half", torch.tensor(1.5, dtype=torch.bfloat16), step=0)
    assert [m.value for m in client.get_metric_history(run.run_id, "big")] == [float(big)]
    assert [m.value for m in client.get_metric_history(run.run_id, "half")] == [1.5]
    series = {attr(s, "name"): s for s in by_type(read_prov(run.outputs.prov_json), "MetricSeries")}
    assert attr(series["big"], "max_value") == big and attr(series["small"], "max_value") == 0.5


@pytest.mark.slow
def test_tracking_uri_from_environment(run_args, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/other.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with prov4ml.start_run(**run_args) as run:
        prov4ml.log_metric("x", 1.0)
    assert MlflowClient(uri).get_run(run.run_id).info.status == "FINISHED"


def test_nan_and_inf_are_recorded_with_a_warning(run_args, client):
    with prov4ml.start_run(**run_args) as run, pytest.warns(prov4ml.Prov4MLWarning, match="nan"):
        prov4ml.log_metric("loss", 1.0, step=0)
        prov4ml.log_metric("loss", float("nan"), step=1)
        prov4ml.log_metric("loss", float("inf"), step=2)
        run.flush()
    values = [m.value for m in sorted(client.get_metric_history(run.run_id, "loss"), key=lambda m: m.step)]
    # MLflow's SQL store clamps +inf to the largest double; the sidecar keeps it exact
    assert values[0] == 1.0 and math.isnan(values[1]) and values[2] >= 1.7976931348623157e308
    assert run.outputs.metrics_file.read_text().splitlines()[3].split(",")[4] == "inf"
    (series,) = by_type(read_prov(run.outputs.prov_json), "MetricSeries")
    assert attr(series, "non_finite_count") == 2 and attr(series, "count") == 3


@pytest.mark.slow
def test_atexit_ends_a_forgotten_run(run_args, client, tmp_path):
    script = tmp_path / "forgot.py"
    script.write_text(
        "import prov4ml_lightning as prov4ml, sys\n"
        f"r = prov4ml.start_run(**{run_args!r})\n"
        "prov4ml.log_metric('loss', 1.0)\n"
        "print(r.run_id)\n"
        "if sys.argv[1] == 'crash': raise SystemError('boom')\n"
    )
    for mode, status in (("ok", "FINISHED"), ("crash", "FAILED")):
        proc = subprocess.run(["python", str(script), mode], capture_output=True, text=True, timeout=120)
        run_id = proc.stdout.strip().splitlines()[-1]
        assert client.get_run(run_id).info.status == status, proc.stderr
        assert (tmp_path / "prov" / f"provgraph_{run_id}.json").exists()


def test_warnings_point_at_the_users_line_not_into_the_library(run_args):
    """However deep in the package a warning is raised, it is attributed to the caller's own line."""
    import inspect

    with prov4ml.start_run_ctx(**run_args), pytest.warns(Prov4MLWarning) as said:
        line = inspect.currentframe().f_lineno + 1
        prov4ml.log_metric("bad key!?", 1.0)  # MLflow's name rules rename it: one warning
        prov4ml.log_params({"p": "x" * 7000})  # MLflow keeps a truncated copy: one warning
    assert [(Path(w.filename).resolve(), w.lineno) for w in said] == [(Path(__file__).resolve(), line),
                                                                       (Path(__file__).resolve(), line + 1)]


def test_values_and_steps_mlflow_cannot_store_are_refused_at_the_call_and_poison_nothing(run_args, client):
    """A step outside 64 bits or an int too large for a float used to be accepted and then wipe out
    the whole batch MLflow was sent; now the call says so and every other point arrives."""
    with prov4ml.start_run_ctx(**run_args) as run:
        for step in range(5):
            prov4ml.log_metric("loss", 1.0 / (step + 1), step=step)
        for bad_step in (2**63, -(2**63) - 1, 2**70):
            with pytest.raises(prov4ml.Prov4MLInputError, match=r"step .* outside the 64-bit range"):
                prov4ml.log_metric("loss", 0.5, step=bad_step)
        with pytest.raises(prov4ml.Prov4MLInputError, match=r"log_metric\('big', 1000.*too large for a 64-bit float"):
            prov4ml.log_metric("big", 10**400, step=0)
        prov4ml.log_metric("edge", 1.0, step=2**63 - 1)  # the largest step MLflow stores
        for step in range(5, 10):
            prov4ml.log_metric("loss", 1.0 / (step + 1), step=step)
    assert sorted(m.step for m in client.get_metric_history(run.run_id, "loss")) == list(range(10))
    assert [m.step for m in client.get_metric_history(run.run_id, "edge")] == [2**63 - 1]
