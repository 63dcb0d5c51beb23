"""Scripts written the way a user of the original prov4ml writes them (only the import changed)
record, read back with MlflowClient and from the PROV document, what the original would record.

Each script runs as its user would run it (``python <script>`` in a fresh folder, here the test's
``tmp_path``) and writes only there. Where this package knowingly records differently from the
original (the system metrics' names, ``Context.EVALUATION`` recorded as ``testing``) nothing is
asserted about the original's form; the system metrics are checked under this package's names.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from prov4ml_lightning.sinks.mlflow.sink import default_tracking_uri
from tests.helpers import attr, by_type, read_prov, records_of

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"

CARBON = ("energy_consumed", "emissions", "cpu_power")
SYSTEM = ("cpu_usage", "memory_usage", "disk_usage", "gpu_usage", "gpu_memory_usage")  # the original's names
EPOCH_STEPS = [0, 1]  # both scripts train two epochs and log once an epoch at step = epoch


def _run_script(name: str, cwd: Path, experiment: str) -> tuple[str, MlflowClient]:
    """Run ``name`` from ``cwd`` as ``python <name>``; the id of the one run it made, and a client of its store."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, str(HERE / name)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Prov4MLWarning" not in proc.stderr, proc.stderr[-3000:]
    client = MlflowClient(default_tracking_uri(cwd / "test_runs"))
    (exp,) = [e for e in client.search_experiments() if e.name == experiment]
    (run,) = client.search_runs([exp.experiment_id])
    return run.info.run_id, client


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _values(client: MlflowClient, run_id: str, key: str) -> list[float]:
    """The points of ``key`` in the order they were logged."""
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.value))]


def _check_common(run_id: str, client: MlflowClient, cwd: Path, versions: list[str]):
    """What both scripts record alike; returns the run and its PROV document."""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics

    # log_carbon_metrics and log_system_metrics, once an epoch (CodeCarbon is installed: really measured)
    for key in CARBON + SYSTEM:
        assert key in metrics, sorted(metrics)
        assert _steps(client, run_id, key) == EPOCH_STEPS, key
        assert run.data.tags[f"metric.context.{key}"] == "TRAINING"
    assert all(v >= 0 for key in CARBON for v in _values(client, run_id, key))

    # save_model_version (and log_model's own version): files in MLflow's model_versions/ ...
    listed = {a.path for a in client.list_artifacts(run_id, "model_versions")}
    assert {f"model_versions/{v}.pth" for v in versions} <= listed, sorted(listed)
    # ... and entities of the PROV document, each derived from the one saved before it when training changed the
    # weights in between, else (log_model's version of the last epoch's weights) an alternate of it
    doc = read_prov(cwd / "prov" / f"provgraph_{run_id}.json")
    entities = {attr(e, "label"): e for e in by_type(doc, "Model_version")}
    assert set(versions) <= set(entities), sorted(entities)
    derived = {(str(r.formal_attributes[0][1]), str(r.formal_attributes[1][1]))
               for r in records_of(doc, "wasDerivedFrom")}
    alternates = {frozenset(str(x[1]) for x in r.formal_attributes[:2]) for r in records_of(doc, "alternateOf")}
    for earlier, later in itertools.pairwise(versions):
        pair = (str(entities[later].identifier), str(entities[earlier].identifier))
        same = attr(entities[later], "state_dict_sha256") == attr(entities[earlier], "state_dict_sha256")
        assert (frozenset(pair) in alternates and pair not in derived) if same else pair in derived, (later, earlier)
    # the bytes MLflow holds are the bytes PROV names by their sha256
    downloaded = cwd / "downloaded"
    downloaded.mkdir()
    for v in versions:
        assert attr(entities[v], "artifact_uri") == f"model_versions/{v}.pth"
        local = client.download_artifacts(run_id, f"model_versions/{v}.pth", str(downloaded))
        assert hashlib.sha256(Path(local).read_bytes()).hexdigest() == attr(entities[v], "sha256")

    # log_model: an MLflow model of the run, and its entity in PROV
    final = versions[-1]
    experiment_id = run.info.experiment_id
    assert [m.name for m in client.search_logged_models([experiment_id]) if m.source_run_id == run_id] == [final]
    assert final in {attr(e, "name") for e in by_type(doc, "Model")}

    # end_run wrote the graph where get_run_id said; the script's own `dot -Tsvg -O` rendered it there
    dot = cwd / "prov" / f"provgraph_{run_id}.dot"
    assert dot.read_text().lstrip().startswith("digraph")
    if shutil.which("dot"):
        svg = cwd / "prov" / f"provgraph_{run_id}.dot.svg"
        assert "<svg" in svg.read_text()
    return run, doc


def _flops(*layers: tuple[int, int]) -> int:
    """Forward FLOPs of one item through Linear layers ``(in, out)``: a multiply and an add per weight."""
    return sum(2 * n_in * n_out for n_in, n_out in layers)


@pytest.mark.slow
def test_torch_loop_in_the_original_style(tmp_path):
    run_id, client = _run_script("torch_loop_example.py", tmp_path, "original_style_torch")
    versions = ["tiny_mlp_version_0", "tiny_mlp_version_1", "tiny_mlp_final"]
    run, doc = _check_common(run_id, client, tmp_path, versions)
    assert {p.name for p in tmp_path.iterdir()} == {"prov", "test_runs", "downloaded"}

    # log_param: an object is recorded as its text, in MLflow and in PROV
    params = run.data.params
    assert params["data transformation"] == "Chain(Jitter(sigma=0.1), Clamp(bound=6.0))"
    assert params["optimizer"] == "Adam" and params["batch_size"] == "32"
    prov_params = {attr(e, "name"): attr(e, "value") for e in by_type(doc, "Parameter")}
    assert prov_params["data transformation"] == params["data transformation"]

    # log_metric with the loss tensor: every batch (4 an epoch) at the epoch's step
    assert _steps(client, run_id, "CE_train") == [0] * 4 + [1] * 4
    assert run.data.tags["metric.context.CE_train"] == "TRAINING"
    # log_metrics with (value, context) pairs: one point an epoch each, each in its own context
    for key, context in (("CE_val", "VALIDATION"), ("acc_val", "VALIDATION"), ("lr", "TRAINING")):
        assert _steps(client, run_id, key) == EPOCH_STEPS, key
        assert run.data.tags[f"metric.context.{key}"] == context
    assert _values(client, run_id, "lr") == [0.01, 0.01]
    assert all(0.0 <= v <= 1.0 for v in _values(client, run_id, "acc_val"))
    # the test loop's metric: one point a test batch (its context is a known difference: not asserted)
    assert _steps(client, run_id, "CE_test") == [0, 1]

    # FLOPs, running totals: per batch of 32 items, and per pass over the 64 validation items
    per_item = _flops((16, 32), (32, 4))
    assert _values(client, run_id, "train_flops") == [32 * per_item * k for k in range(1, 9)]
    assert _values(client, run_id, "val_flops") == [64 * per_item, 2 * 64 * per_item]

    # log_current_execution_time: seconds since the run started, once an epoch
    assert _steps(client, run_id, "execution_time/epoch_end") == EPOCH_STEPS
    first, second = _values(client, run_id, "execution_time/epoch_end")
    assert 0 < first <= second


@pytest.mark.slow
def test_lightning_module_in_the_original_style(tmp_path):
    run_id, client = _run_script("lightning_module_example.py", tmp_path, "original_style_lightning")
    versions = ["classifier_version_0", "classifier_version_1", "classifier_final"]
    run, doc = _check_common(run_id, client, tmp_path, versions)
    # Lightning's checkpoints went under the ModelVersioningLogger's save_dir ".", i.e. the script's folder
    assert {p.name for p in tmp_path.iterdir()} == {"prov", "test_runs", "tiny_classifier", "downloaded"}

    params = run.data.params
    # log_optimizer in configure_optimizers
    assert params["optimizer_name"] == "SGD" and float(params["lr"]) == 0.05
    assert float(params["optimizer/momentum"]) == 0.9
    # save_hyperparameters, through the loggers; a dict given to log_param, one param a leaf
    assert params["hidden"] == "24" and float(params["learning_rate"]) == 0.05
    assert (params["dataset/train"], params["dataset/val"], params["dataset/test"]) == ("64", "32", "32")

    # self.log through both loggers of the Trainer: each point once, at Lightning's global step
    assert _steps(client, run_id, "CE_train") == list(range(8))
    assert len(client.get_metric_history(run_id, "val_loss")) == 2  # once a validation epoch
    assert len(client.get_metric_history(run_id, "test_loss")) == 1
    # prov4ml.log_metric beside it: every batch at the epoch's step
    assert _steps(client, run_id, "CE_train_direct") == [0] * 4 + [1] * 4
    assert sorted(_values(client, run_id, "CE_train_direct")) == sorted(_values(client, run_id, "CE_train"))
    assert run.data.tags["metric.context.CE_train_direct"] == "TRAINING"
    assert _steps(client, run_id, "CE_test") == [0, 1]  # one a test batch
    assert _values(client, run_id, "epoch") == [0.0, 1.0]

    # log_flops_per_batch in training_step: a running total over the 8 batches of 16 items
    flops = _values(client, run_id, "train_flops")
    assert flops == [16 * _flops((8, 24), (24, 3)) * k for k in range(1, 9)]
    assert flops[-1] == pytest.approx(8 * flops[0])

    # log_current_execution_time in on_train_epoch_end
    assert _steps(client, run_id, "execution_time/train_epoch_time") == EPOCH_STEPS

    # ModelVersioningLogger: each checkpoint Lightning saved is a model version, derived from the one before
    checkpoints = sorted(a.path for a in client.list_artifacts(run_id, "model_versions") if a.path.endswith(".ckpt"))
    assert checkpoints == ["model_versions/epoch=0-step=4.ckpt", "model_versions/epoch=1-step=8.ckpt"]
    by_uri = {attr(e, "artifact_uri"): e for e in by_type(doc, "Model_version")}
    first, second = (by_uri[c] for c in checkpoints)
    assert attr(first, "model_name") == attr(second, "model_name") == "tiny_classifier"
    derived = {(str(r.formal_attributes[0][1]), str(r.formal_attributes[1][1]))
               for r in records_of(doc, "wasDerivedFrom")}
    assert (str(second.identifier), str(first.identifier)) in derived
    assert list(tmp_path.rglob("*.ckpt"))  # Lightning's own files stayed in the script's folder
