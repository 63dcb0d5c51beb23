"""Bad input gets a clear error naming the call, or a documented transformation; nothing is lost."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Context, NoActiveRunError, Prov4MLInputError, RunAlreadyActiveError
from tests.helpers import attr, by_type, read_prov


@pytest.mark.parametrize(
    "call",
    [
        lambda: prov4ml.log_metric("x", 1.0),
        lambda: prov4ml.log_metrics({"x": 1.0}),
        lambda: prov4ml.log_param("x", 1),
        lambda: prov4ml.log_params({"x": 1}),
        lambda: prov4ml.log_artifact("x"),
        lambda: prov4ml.log_model(torch.nn.Linear(1, 1), "m"),
        lambda: prov4ml.log_current_execution_time("x", Context.TRAINING),
        lambda: prov4ml.log_system_metrics(Context.TRAINING),
        lambda: prov4ml.get_run_id(),
    ],
)
def test_logging_without_a_run_raises(call):
    with pytest.raises(NoActiveRunError, match="start_run"):
        call()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "value must be a real number"),
        (None, "value must be a real number"),
        (torch.ones(3), r"scalar, got a tensor of shape \(3,\)"),
        (True, "value must be a real number"),
        ([1.0], "value must be a real number"),
    ],
)
def test_bad_metric_values(run_args, value, message):
    with prov4ml.start_run(**run_args) as run:
        prov4ml.log_metric("ok", 1.0)
        with pytest.raises(Prov4MLInputError, match=r"log_metric\('x'.*" + message):
            prov4ml.log_metric("x", value)
    (series,) = by_type(read_prov(run.outputs.prov_json), "MetricSeries")
    assert attr(series, "name") == "ok"  # what was recorded before survives


def test_numpy_and_tensor_values_accepted(run_args, client):
    with prov4ml.start_run(**run_args) as run:
        prov4ml.log_metric("a", np.int64(3))
        prov4ml.log_metric("b", np.array(2.5))
        prov4ml.log_metric("c", torch.tensor([[7.0]], requires_grad=True) * 1)
    m = client.get_run(run.run_id).data.metrics
    assert (m["a"], m["b"], m["c"]) == (3, 2.5, 7.0)


def test_keys_mlflow_rejects_are_transformed_and_kept_in_prov(run_args, client):
    weird = "acc:top-1 (%)"
    long_key = "k" * 300
    with pytest.warns(prov4ml.Prov4MLWarning, match="stored in MLflow as"), prov4ml.start_run(**run_args) as run:
        prov4ml.log_metric(weird, 1.0)
        prov4ml.log_metric(long_key, 2.0)
    keys = set(client.get_run(run.run_id).data.metrics)
    assert len(keys) == 2 and all(len(k) <= 250 for k in keys)
    names = {attr(s, "name"): attr(s, "mlflow_key") for s in by_type(read_prov(run.outputs.prov_json), "MetricSeries")}
    assert set(names) == {weird, long_key}
    assert set(names.values()) == keys


def test_long_param_value_kept_whole(run_args, client):
    value = "x" * 7000
    with pytest.warns(prov4ml.Prov4MLWarning, match="7000 characters"), prov4ml.start_run(**run_args) as run:
        prov4ml.log_param("big", value)
    stored = client.get_run(run.run_id).data.params["big"]
    assert len(stored) <= 6000 and "truncated" in stored
    (param,) = by_type(read_prov(run.outputs.prov_json), "Parameter")
    assert attr(param, "value") == value
    assert "params/long_params_" in " ".join(a.path for a in client.list_artifacts(run.run_id, "params"))


def test_param_conflict_is_an_error(run_args, client):
    with prov4ml.start_run(**run_args) as run:
        prov4ml.log_param("lr", 0.1)
        prov4ml.log_param("lr", 0.1)  # same value: fine
        with pytest.raises(Prov4MLInputError, match=r"log_param: param 'lr' was already logged"):
            prov4ml.log_param("lr", 0.2)
    assert client.get_run(run.run_id).data.params["lr"] == "0.1"


@pytest.mark.parametrize("name", ["a/b", "../up", "..", "", "a\\b"])
def test_bad_experiment_names(run_args, name):
    with pytest.raises(Prov4MLInputError, match="start_run: experiment_name"):
        prov4ml.start_run(**{**run_args, "experiment_name": name})


@pytest.mark.parametrize("name", ["../m", "a/b", ""])
def test_bad_model_names(run_args, name):
    with prov4ml.start_run(**run_args), pytest.raises(Prov4MLInputError, match="model_name"):
        prov4ml.log_model(torch.nn.Linear(1, 1), name)


def test_model_must_be_a_module(run_args):
    with prov4ml.start_run(**run_args), pytest.raises(Prov4MLInputError, match=r"torch\.nn\.Module"):
        prov4ml.log_model({"w": 1}, "m")


@pytest.mark.parametrize("ns", ["not an iri", "http://", "", 5])
def test_bad_namespace(run_args, ns):
    with pytest.raises(Prov4MLInputError, match="prov_user_namespace"):
        prov4ml.start_run(**{**run_args, "prov_user_namespace": ns})


def test_namespace_is_normalised(run_args):
    with prov4ml.start_run(**run_args) as run:
        pass
    doc = read_prov(run.outputs.prov_json)
    assert {ns.uri for ns in doc.namespaces} >= {"http://www.example.org/"}


def test_start_run_while_open(run_args):
    with prov4ml.start_run(**run_args) as run:
        with pytest.raises(RunAlreadyActiveError, match="nested=True"):
            prov4ml.start_run(**run_args)
        assert prov4ml.active_run() is run


def test_bad_context_and_status(run_args):
    with prov4ml.start_run(**run_args):
        with pytest.raises(Prov4MLInputError, match="context must be a Context"):
            prov4ml.log_metric("x", 1.0, context="train")
        with pytest.raises(Prov4MLInputError, match="status must be one of"):
            prov4ml.end_run("DONE")
    assert Context.EVALUATION is not Context.TESTING and Context("evaluation") is Context.EVALUATION


def test_artifact_path_escape_and_missing_file(run_args, tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    with prov4ml.start_run(**run_args):
        with pytest.raises(Prov4MLInputError, match="no such file"):
            prov4ml.log_artifact(tmp_path / "missing")
        with pytest.raises(Prov4MLInputError, match="relative path"):
            prov4ml.log_artifact(f, artifact_path="../outside")


@pytest.mark.parametrize("timestamp", ["now", 1.5, True, -5, None.__class__])
def test_bad_timestamps_are_refused_at_the_call_and_lose_nothing(run_args, client, timestamp):
    prov4ml.start_run(**run_args)
    prov4ml.log_metric("loss", 1.0, step=0)
    with pytest.raises(Prov4MLInputError, match=r"^log_metric\('loss'\): timestamp must be"):
        prov4ml.log_metric("loss", 2.0, step=1, timestamp=timestamp)
    with pytest.raises(Prov4MLInputError, match=r"^log_metrics: timestamp must be"):
        prov4ml.active_run().log_metrics({"loss": 2.0}, step=1, timestamp=timestamp)
    prov4ml.log_metric("loss", 3.0, step=2, timestamp=np.int64(1_700_000_000_000))
    outputs = prov4ml.end_run()
    (series,) = [s for s in by_type(read_prov(outputs.prov_json), "MetricSeries")]
    assert attr(series, "count") == 2
    history = client.get_metric_history(outputs.run_id, client.get_run(outputs.run_id).data.metrics.popitem()[0])
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (2, 3.0)]


@pytest.mark.parametrize(("option", "value", "message"), [
    ("nested", "yes", "nested must be True or False, got 'yes'"),
    ("log_system_metrics", 1, "log_system_metrics must be True or False"),
    ("system_metrics_interval", "5", "system_metrics_interval must be a number of seconds > 0, got '5'"),
    ("flush_interval", 0, "flush_interval must be a number of seconds > 0"),
    ("provenance_formats", "ttl", r"provenance_formats must be a tuple of format names"),
    ("provenance_formats", ("json", "rdf"), r"provenance_formats must be among json, provn, ttl, xml; got \['rdf'\]"),
    ("tracking_uri", 5, "tracking_uri must be a string, got int"),
])
def test_bad_run_options_name_the_call_and_what_is_expected(run_args, option, value, message):
    with pytest.raises(Prov4MLInputError, match=rf"^start_run: {message}"):
        prov4ml.start_run(**{**run_args, option: value})
    assert prov4ml.active_run() is None
