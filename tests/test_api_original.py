"""The original prov4ml's functions (its names, parameters and metric keys), read back with
MlflowClient and prov."""

from __future__ import annotations

import hashlib
import warnings

import pytest
import torch

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Context, Prov4MLInputError, Prov4MLWarning
from tests.helpers import attr, by_type, read_prov, records_of


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.5), torch.nn.Linear(3, 2))


def test_metric_keys_are_the_keys_given_and_the_context_is_a_tag(run_args, client):
    prov4ml.start_run(**run_args)
    run_id = prov4ml.get_run_id()
    prov4ml.log_metric("loss", 0.5, Context.TRAINING, step=0, synchronous=False)
    prov4ml.log_metrics({"acc": (0.9, Context.VALIDATION), "f1": (0.8, Context.EVALUATION)}, step=1)
    prov4ml.log_metrics({"lr": 0.1}, Context.TRAINING, step=1, synchronous=True)
    with pytest.warns(Prov4MLWarning, match=r"'loss' was already logged in context training.*'validation/loss'"):
        prov4ml.log_metric("loss", 0.7, Context.VALIDATION, step=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rule warns once per key and context, not per point
        prov4ml.log_metric("loss", 0.6, Context.VALIDATION, step=1)
    out = prov4ml.end_run()

    run = client.get_run(run_id)
    assert set(run.data.metrics) == {"loss", "acc", "f1", "lr", "validation/loss"}
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [0.5]  # training only
    assert sorted(m.value for m in client.get_metric_history(run_id, "validation/loss")) == [0.6, 0.7]
    tags = run.data.tags
    assert tags["metric.context.acc"] == "VALIDATION"
    assert tags["metric.context.f1"] == "EVALUATION" and tags["metric.context.loss"] == "TRAINING"
    assert tags["metric.context.validation/loss"] == "VALIDATION"
    # one tag per metric: the context itself lives in PROV
    assert sorted(k for k in tags if "context" in k) == [f"metric.context.{k}" for k in sorted(run.data.metrics)]
    found = client.search_runs([run.info.experiment_id], filter_string="metrics.acc > 0.5")
    assert [r.info.run_id for r in found] == [run_id]
    series = {(attr(s, "name"), attr(s, "context")): attr(s, "mlflow_key")
              for s in by_type(read_prov(out.prov_json), "MetricSeries")}
    assert series[("loss", "training")] == "loss" and series[("loss", "validation")] == "validation/loss"


def test_footprint_optimizer_and_execution_times_are_params(run_args, client):
    net = _net()
    with prov4ml.start_run_ctx(**run_args) as run:
        prov4ml.log_execution_start_time()
        prov4ml.log_model_memory_footprint(net, "mlp")
        prov4ml.log_model_memory_footprint(torch.nn.Linear(2, 2), "head")  # a second model: its own keys
        prov4ml.log_optimizer(torch.optim.Adam(net.parameters(), lr=0.002, betas=(0.8, 0.9)))
        prov4ml.log_execution_end_time()
    assert prov4ml.active_run() is None
    params = client.get_run(run.run_id).data.params
    n = sum(p.numel() for p in net.parameters())
    assert params["model_name"] == "mlp" and params["total_params"] == str(n)
    assert float(params["memory_of_model"]) == pytest.approx(n * 4 / 1e6)
    assert float(params["total_memory_load_of_model"]) == pytest.approx(n * 12 / 1e6)
    assert params["head/model_name"] == "head" and params["head/total_params"] == "6"
    assert params["optimizer_name"] == "Adam" and float(params["lr"]) == 0.002
    assert params["optimizer/betas"] == "[0.8, 0.9]"
    # start_run and end_run log them (as the original's did); the explicit calls come after: /2
    start, end = float(params["execution_start_time"]), float(params["execution_end_time"])
    assert start <= float(params["execution_start_time/2"]) <= end <= float(params["execution_end_time/2"])
    # MLflow params only: PROV has the run's start and end, and the run used no such input
    names = {attr(p, "name") for p in by_type(read_prov(run.outputs.prov_json), "Parameter")}
    assert names and not {n for n in names if str(n).startswith("execution_")}


def test_start_run_ctx_ends_failed_and_reraises(run_args, client):
    with pytest.raises(ZeroDivisionError), prov4ml.start_run_ctx(**run_args) as run:
        1 / 0  # noqa: B018
    assert client.get_run(run.run_id).info.status == "FAILED"


def test_model_versions_are_files_with_hashes_derived_from_each_other_when_trained_between(run_args, client, tmp_path):
    net = _net()
    prov4ml.start_run(**run_args)
    run_id = prov4ml.get_run_id()
    for epoch in range(3):
        with torch.no_grad():
            net[0].weight.add_(1.0)
        prov4ml.save_model_version(net, f"net_{epoch}", Context.TRAINING, step=epoch)
    prov4ml.save_model_version(net, "net_0")  # same name again: a new file, not an overwrite
    prov4ml.save_model_version(torch.nn.Linear(1, 1), "other")  # another module: derived from nothing
    out = prov4ml.end_run()

    listed = {a.path for a in client.list_artifacts(run_id, "model_versions")}
    assert listed == {f"model_versions/{n}" for n in ("net_0.pth", "net_1.pth", "net_2.pth", "net_0.v2.pth",
                                                       "other.pth")}
    folder = out.provenance_dir / f"model_versions_{run_id}"
    state = torch.load(folder / "net_1.pth")
    assert torch.allclose(state["0.weight"] + 1, torch.load(folder / "net_2.pth")["0.weight"])
    doc = read_prov(out.prov_json)
    versions = {attr(e, "label"): e for e in by_type(doc, "Model_version")}
    assert set(versions) == {"net_0", "net_1", "net_2", "net_0.v2", "other"}
    for name, entity in versions.items():
        path = folder / (name + ".pth")
        assert attr(entity, "sha256") == hashlib.sha256(path.read_bytes()).hexdigest()
    assert attr(versions["net_2"], "step") == 2 and attr(versions["net_0.v2"], "version") == 2
    derived = {(str(r.formal_attributes[0][1]).rsplit(".", 1)[-1], str(r.formal_attributes[1][1]).rsplit(".", 1)[-1])
               for r in records_of(doc, "wasDerivedFrom")}
    ids = {name: str(e.identifier).rsplit(".", 1)[-1] for name, e in versions.items()}
    chain = {(ids["net_1"], ids["net_0"]), (ids["net_2"], ids["net_1"])}
    assert chain <= derived
    # net_0.v2 holds net_2's weights (no training between): the same state, not derived from it
    assert (ids["net_0.v2"], ids["net_2"]) not in derived
    alternates = {frozenset(str(x[1]).rsplit(".", 1)[-1] for x in r.formal_attributes[:2])
                  for r in records_of(doc, "alternateOf")}
    assert frozenset((ids["net_0.v2"], ids["net_2"])) in alternates
    assert not any(a == ids["other"] for a, _ in derived)


def test_flops_are_running_totals_and_leave_the_model_and_rngs_alone(run_args, client):
    net = _net().train()
    batch = (torch.ones(5, 4), torch.zeros(5))
    prov4ml.start_run(**run_args)
    run_id = prov4ml.get_run_id()
    torch.manual_seed(0)
    expected_draw = torch.rand(1)
    torch.manual_seed(0)
    first = prov4ml.log_flops_per_batch("flops", net, batch, Context.TRAINING, step=0)
    second = prov4ml.log_flops_per_batch("flops", net, batch, Context.TRAINING, step=1)
    data = torch.utils.data.TensorDataset(torch.ones(10, 4), torch.zeros(10))
    epoch = prov4ml.log_flops_per_epoch("epoch_flops", net, data, Context.TRAINING, step=0)
    assert torch.equal(torch.rand(1), expected_draw)  # the dropout of the counting pass drew nothing
    assert net.training and net[1].training
    with pytest.raises(Prov4MLInputError, match="log_flops_per_batch"):
        prov4ml.log_flops_per_batch("flops", "not a model", batch, Context.TRAINING)
    prov4ml.end_run()
    per_item = 2 * (4 * 3 + 3 * 2)  # two linear layers: 2 * in * out per item
    assert first == 5 * per_item and second == 2 * first and epoch == 10 * per_item
    history = {m.step: m.value for m in client.get_metric_history(run_id, "flops")}
    assert history == {0: first, 1: second}


def test_carbon_metrics_without_codecarbon_warn_once(run_args, monkeypatch):
    import builtins

    from prov4ml_lightning.capture import energy

    real_import = builtins.__import__

    def no_codecarbon(name, *args, **kwargs):
        if name.startswith("codecarbon"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_codecarbon)
    monkeypatch.setattr(energy, "_missing_warned", False)
    prov4ml.start_run(**run_args)
    with pytest.warns(Prov4MLWarning, match="CodeCarbon is not installed"):
        assert prov4ml.log_carbon_metrics(Context.TRAINING, step=0) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert prov4ml.log_carbon_metrics(Context.TRAINING, step=1) == {}
    run = prov4ml.active_run()
    prov4ml.end_run()
    assert not run.series


@pytest.mark.slow
def test_carbon_metrics_from_codecarbon_offline(run_args, client):
    prov4ml.start_run(**run_args)
    run_id = prov4ml.get_run_id()
    first = prov4ml.log_carbon_metrics(Context.TRAINING, step=0)
    sum(i * i for i in range(2_000_000))  # some CPU work between the readings
    second = prov4ml.log_carbon_metrics(Context.TRAINING, step=1)
    prov4ml.end_run()
    assert set(first) == set(second) == set(prov4ml_lightning_fields())
    assert second["energy_consumed"] >= first["energy_consumed"] >= 0
    assert second["energy_consumed"] > 0 and second["cpu_power"] > 0
    metrics = client.get_run(run_id).data.metrics
    assert metrics["energy_consumed"] == pytest.approx(second["energy_consumed"])


def prov4ml_lightning_fields() -> tuple[str, ...]:
    from prov4ml_lightning.capture.energy import CARBON_FIELDS

    return CARBON_FIELDS


def test_end_run_takes_the_original_create_graph_and_a_status_first(run_args):
    prov4ml.start_run(**run_args)
    out = prov4ml.end_run(create_graph=False)
    assert out.prov_json.name == f"provgraph_{out.run_id}.json" and out.prov_dot.exists()
    prov4ml.start_run(**run_args)
    run = prov4ml.active_run()
    prov4ml.end_run("KILLED")
    assert run.info.status == "KILLED"


def test_end_run_takes_the_original_create_svg_and_ends_the_run(run_args, client):
    """Later prov4ml versions and their ProvMLLogger call ``end_run(create_graph=True, create_svg=True)``."""
    import shutil

    prov4ml.start_run(**run_args)
    run_id = prov4ml.get_run_id()
    out = prov4ml.end_run(create_graph=True, create_svg=True)
    assert prov4ml.active_run() is None and client.get_run(run_id).info.status == "FINISHED"
    assert out.prov_dot.exists()
    if shutil.which("dot"):
        assert out.prov_svg is not None and out.prov_svg.read_text().lstrip().startswith("<?xml")
    prov4ml.start_run(**run_args)
    run = prov4ml.active_run()
    prov4ml.end_run(True, "FAILED")  # the older positional form (create_graph, status)
    assert run.info.status == "FAILED"
    with prov4ml.start_run_ctx(**run_args, create_graph=True, create_svg=True):
        run_id = prov4ml.get_run_id()
    assert client.get_run(run_id).info.status == "FINISHED"


def test_end_run_with_no_run_open_says_so(run_args):
    with pytest.warns(Prov4MLWarning, match=r"end_run: no run is open"):
        assert prov4ml.end_run() is None
    prov4ml.start_run(**run_args)
    prov4ml.end_run()
    with pytest.warns(Prov4MLWarning, match=r"end_run: no run is open"):
        assert prov4ml.end_run() is None  # a second call is safe: a warning, no error


@pytest.mark.slow
def test_log_model_registers_the_model_and_logs_the_original_footprint_params(run_args, client):
    import uuid

    name = f"clf-{uuid.uuid4().hex[:8]}"
    net = _net()
    prov4ml.start_run(**run_args)
    run_id = prov4ml.get_run_id()
    prov4ml.log_model(net, name)
    prov4ml.log_model(torch.nn.Linear(2, 2), f"{name}-head", register=False)
    out = prov4ml.end_run()
    (version,) = client.search_model_versions(f"name='{name}'")
    assert version.run_id == run_id and str(version.version) == "1"
    assert not client.search_registered_models(f"name='{name}-head'")  # the opt-out
    params = client.get_run(run_id).data.params
    n = sum(p.numel() for p in net.parameters())
    assert params["model_name"] == name and params["total_params"] == str(n)
    assert float(params["memory_of_model"]) == pytest.approx(n * 4 / 1e6)
    assert float(params["total_memory_load_of_model"]) == pytest.approx(n * 12 / 1e6)
    assert params[f"{name}-head/total_params"] == "6"  # a second model: its own keys
    # MLflow params only: in PROV the footprint is the model entity's, not an input the run used
    doc = read_prov(out.prov_json)
    assert not [p for p in by_type(doc, "Parameter") if attr(p, "name") in ("total_params", "model_name")]
    assert sorted(int(attr(m, "total_params")) for m in by_type(doc, "Model")) == [6, n]
