"""The original prov4ml's two examples, run with only their import changed, record what they log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from prov4ml_lightning.sinks.mlflow.sink import default_tracking_uri
from tests.helpers import attr, by_type, read_prov, records_of

HERE = Path(__file__).resolve().parent
MIRROR = Path("/work/.mirror/matbun+ProvML/repo")


@pytest.mark.parametrize("name", ["prov4ml_torch", "prov4ml_lightning"])
def test_only_the_import_line_differs_from_the_original(name):
    if not MIRROR.exists():
        pytest.skip("the original repository is not mirrored here")
    original = subprocess.run(["git", "-C", str(MIRROR), "show", f"93ff17e:examples/{name}.py"],
                              capture_output=True, text=True, check=True).stdout.splitlines()
    ours = (HERE / f"{name}.py").read_text().splitlines()
    changed = [(a, b) for a, b in zip(original, ours, strict=True) if a != b]
    assert changed == [("import prov4ml", "import prov4ml_lightning as prov4ml")]


def _run(name: str, cwd: Path) -> tuple[str, MlflowClient]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, str(HERE / "run_example.py"), str(HERE / f"{name}.py")], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(default_tracking_uri(cwd / "test_runs"))
    (experiment,) = [e for e in client.search_experiments() if e.name == "experiment_name"]
    (run,) = client.search_runs([experiment.experiment_id])
    return run.info.run_id, client


def _check_common(run_id: str, client: MlflowClient, cwd: Path, versions: list[str]) -> dict:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    for key in ("energy_consumed", "emissions", "cpu_power", "system/cpu_percent"):  # carbon and system
        assert key in metrics, sorted(metrics)
    assert [m.step for m in client.get_metric_history(run_id, "energy_consumed")] == [0, 1]
    assert run.data.tags["prov4ml.context.MSE_test"] == "testing"
    assert "RandomRotation" in run.data.params["dataset transformation"]
    listed = {a.path for a in client.list_artifacts(run_id, "model_versions")}
    assert {f"model_versions/{v}.pth" for v in versions} <= listed
    # the example's own `dot -Tsvg -O prov/provgraph_<run id>.dot` found the graph where it looked
    assert (cwd / "prov" / f"provgraph_{run_id}.dot.svg").stat().st_size > 0
    doc = read_prov(cwd / "prov" / f"provgraph_{run_id}.json")
    names = {attr(e, "label"): e for e in by_type(doc, "Model_version")}
    assert set(versions) <= set(names)
    derived = {(str(r.formal_attributes[0][1]), str(r.formal_attributes[1][1]))
               for r in records_of(doc, "wasDerivedFrom")}
    assert (str(names[versions[1]].identifier), str(names[versions[0]].identifier)) in derived
    return metrics


@pytest.mark.slow
def test_original_torch_example(tmp_path):
    run_id, client = _run("prov4ml_torch", tmp_path)
    metrics = _check_common(run_id, client, tmp_path, ["mnist_model_version_0", "mnist_model_version_1"])
    assert len(client.get_metric_history(run_id, "MSE_train")) == 2 * 4  # 4 batches a epoch, 2 epochs
    assert len(client.get_metric_history(run_id, "MSE_test")) == 2
    assert "MSE_train" in metrics and client.get_run(run_id).data.params["optimizer"] == "Adam"


@pytest.mark.slow
def test_original_lightning_example(tmp_path):
    run_id, client = _run("prov4ml_lightning", tmp_path)
    _check_common(run_id, client, tmp_path, ["model_version_0", "model_version_1"])
    # self.log through both loggers in the Trainer: each point once, at Lightning's step
    assert sorted(m.step for m in client.get_metric_history(run_id, "MSE_train")) == list(range(8))
    assert len(client.get_metric_history(run_id, "MSE_train_2")) == 8
    flops = [m.value for m in sorted(client.get_metric_history(run_id, "train_flops"), key=lambda m: m.timestamp)]
    assert len(flops) == 8 and flops[0] > 0 and flops[-1] == pytest.approx(8 * flops[0])  # a running total
    params = client.get_run(run_id).data.params
    assert params["optimizer_name"] == "Adam" and float(params["lr"]) == 0.0002
    assert len(client.get_metric_history(run_id, "execution_time/train_epoch_time")) == 2
