"""Bad input, table-driven: each row is a clear error naming the call, or a documented
transformation checked in MLflow and PROV. Every run still ends cleanly, and what was logged
before the bad call survives. (tests/tracking/test_bad_input.py has the API-level basics; these extend it.)
"""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Context, NoActiveRunError, Prov4MLInputError, RunAlreadyActiveError
from prov4ml_lightning.tracking.journal import read_journal
from tests.helpers import attr, by_type, read_prov, user_params

pytestmark = pytest.mark.timeout(120)


def _finishes_cleanly(run: Any, client: Any) -> Any:
    """The run ended FINISHED in MLflow and PROV, and the point logged first is there."""
    assert client.get_run(run.run_id).info.status == "FINISHED"
    doc = read_prov(run.outputs.prov_json)
    assert attr(by_type(doc, "Run")[0], "status") == "FINISHED"
    assert "before" in {attr(s, "name") for s in by_type(doc, "MetricSeries")}
    return doc


# -- errors ---------------------------------------------------------------------------------------
ERRORS = [
    ("metric None", lambda t: prov4ml.log_metric("x", None), r"log_metric\('x', None\): value must be a real number"),
    ("metric string", lambda t: prov4ml.log_metric("x", "abc"), r"log_metric\('x', 'abc'\): value must be a real"),
    ("metric numeric string", lambda t: prov4ml.log_metric("x", "1.5"), "got str"),
    ("metric complex", lambda t: prov4ml.log_metric("x", 1 + 2j), "got complex"),
    ("metric Decimal", lambda t: prov4ml.log_metric("x", Decimal("1.5")), "got Decimal"),
    ("metric bool", lambda t: prov4ml.log_metric("x", True), "got bool"),
    ("metric tensor of 3", lambda t: prov4ml.log_metric("x", torch.ones(3)), r"scalar, got a tensor of shape \(3,\)"),
    ("metric tensor 2x2", lambda t: prov4ml.log_metric("x", torch.ones(2, 2)), r"shape \(2, 2\)"),
    ("metric bool tensor", lambda t: prov4ml.log_metric("x", torch.tensor(True)), "got a torch.bool tensor"),
    ("metric array of 2", lambda t: prov4ml.log_metric("x", np.ones(2)), "got ndarray"),
    ("empty key", lambda t: prov4ml.log_metric("", 1.0), "key must be a non-empty string"),
    ("blank key", lambda t: prov4ml.log_metric("   ", 1.0), "key must be a non-empty string"),
    ("int key", lambda t: prov4ml.log_metric(5, 1.0), "key must be a non-empty string, got 5"),
    ("float step", lambda t: prov4ml.log_metric("x", 1.0, step=1.5), r"log_metric\('x'\): step must be an int"),
    ("bool step", lambda t: prov4ml.log_metric("x", 1.0, step=True), "step must be an int, got bool"),
    ("context string", lambda t: prov4ml.log_metric("x", 1.0, context="train"), "context must be a Context"),
    ("log_metrics of a list", lambda t: prov4ml.log_metrics([1.0]), "log_metrics: metrics must be a dict"),
    ("log_params of a list", lambda t: prov4ml.log_params([("a", 1)]), "log_params: params must be a mapping"),
    ("param key empty", lambda t: prov4ml.log_params({"": 1}), "key must be a non-empty string"),
    ("artifact missing", lambda t: prov4ml.log_artifact(t / "nope.txt"), "no such file or folder"),
    ("artifact_path ..", lambda t: prov4ml.log_artifact(_file(t), artifact_path="../up"), "relative path without"),
    ("artifact_path absolute", lambda t: prov4ml.log_artifact(_file(t), artifact_path="/etc"), "relative path"),
    ("artifact_path a/../b", lambda t: prov4ml.log_artifact(_file(t), artifact_path="a/../b"), "relative path"),
    ("artifact_path drive", lambda t: prov4ml.log_artifact(_file(t), artifact_path="C:\\x"), "relative path"),
    ("model name ..", lambda t: prov4ml.log_model(torch.nn.Linear(1, 1), "../m"), "model_name '../m' must not"),
    ("model name absolute", lambda t: prov4ml.log_model(torch.nn.Linear(1, 1), "/tmp/m"), "path separators"),
    ("model name a..b", lambda t: prov4ml.log_model(torch.nn.Linear(1, 1), "a..b"), "'..'"),
    ("model not a module", lambda t: prov4ml.log_model({"w": 1}, "m"), r"torch\.nn\.Module"),
    ("end_run bad status", lambda t: prov4ml.end_run("DONE"), "status must be one of FINISHED, FAILED, KILLED"),
]


def _file(tmp_path: Path) -> Path:
    f = tmp_path / "f.txt"
    f.write_text("x")
    return f


@pytest.mark.parametrize(("action", "message"), [r[1:] for r in ERRORS], ids=[r[0] for r in ERRORS])
def test_bad_call_is_a_clear_error_and_the_run_goes_on(run_args, client, tmp_path, action, message):
    with prov4ml.start_run(**run_args) as run:
        prov4ml.log_metric("before", 1.0)
        with pytest.raises(Prov4MLInputError, match=message):
            action(tmp_path)
        prov4ml.log_metric("after", 2.0)
    doc = _finishes_cleanly(run, client)
    assert {attr(s, "name") for s in by_type(doc, "MetricSeries")} == {"before", "after"}
    assert set(client.get_run(run.run_id).data.metrics) == {"before", "after"}


START_ERRORS = [
    ("experiment ..", {"experiment_name": "../x"}, "experiment_name '../x' must not contain"),
    ("experiment absolute", {"experiment_name": "/abs/x"}, "experiment_name '/abs/x' must not contain"),
    ("experiment with slash", {"experiment_name": "a/b"}, "path separators"),
    ("experiment NUL", {"experiment_name": "a\x00b"}, "NUL"),
    ("run_name ..", {"run_name": ".."}, "run_name '..' must not"),
    ("namespace with space", {"prov_user_namespace": "not an iri"}, "not a usable IRI"),
    ("namespace mailto", {"prov_user_namespace": "mailto:a@b"}, r"scheme 'mailto' names no namespace"),
    ("namespace javascript", {"prov_user_namespace": "javascript:alert(1)"}, "scheme 'javascript'"),
    ("namespace with password", {"prov_user_namespace": "http://u:pw@example.org/"}, "no user name or password"),
    ("namespace bad port", {"prov_user_namespace": "http://example.org:99999/"}, "bad port"),
    ("namespace scheme only", {"prov_user_namespace": "http://"}, "not a usable IRI"),
    ("namespace not a string", {"prov_user_namespace": 5}, "must be a non-empty string"),
    ("tags not a dict", {"tags": ["a"]}, "tags must be a dict"),
    ("bad provenance format", {"provenance_formats": ("json", "pdf")}, "provenance_formats must be among"),
]


@pytest.mark.parametrize(("kwargs", "message"), [r[1:] for r in START_ERRORS], ids=[r[0] for r in START_ERRORS])
def test_bad_start_run_is_a_clear_error_and_starts_nothing(run_args, client, kwargs, message):
    with pytest.raises(Prov4MLInputError, match=r"start_run: .*" + message):
        prov4ml.start_run(**{**run_args, **kwargs})
    assert prov4ml.active_run() is None
    assert client.get_experiment_by_name(run_args["experiment_name"]) is None


# -- documented transformations --------------------------------------------------------------------
def _series(doc: Any) -> dict[str, Any]:
    return {attr(s, "name"): s for s in by_type(doc, "MetricSeries")}


def _params(doc: Any) -> dict[str, Any]:
    return {attr(p, "name"): attr(p, "value") for p in by_type(doc, "Parameter")}


def _nan(run, client, doc):
    m = client.get_metric_history(run.run_id, "x")
    assert len(m) == 1 and math.isnan(m[0].value)
    assert attr(_series(doc)["x"], "non_finite_count") == 1


def _inf(sign: float):
    def check(run, client, doc):
        (m,) = client.get_metric_history(run.run_id, "x")
        assert m.value == sign * 1.7976931348623157e308  # MLflow's SQL store clamps; the sidecar keeps inf
        assert run.outputs.metrics_file.read_text().splitlines()[-1].split(",")[4] == ("inf" if sign > 0 else "-inf")
        assert attr(_series(doc)["x"], "non_finite_count") == 1
    return check


def _metric_key(key: str, mlflow_key: str | None):
    def check(run, client, doc):
        metrics = client.get_run(run.run_id).data.metrics
        (stored,) = set(metrics) - {"before"}
        if mlflow_key is not None:
            assert stored == mlflow_key
        assert len(stored) <= 250 and ":" not in stored and "/../" not in stored
        assert attr(_series(doc)[key], "mlflow_key") == stored  # PROV keeps the original name and the link
    return check


def _param(key: str, mlflow_value: str | None, prov_value: Any):
    def check(run, client, doc):
        params = user_params(client.get_run(run.run_id).data.params)
        (stored,) = params
        assert len(stored) <= 250
        if mlflow_value is not None:
            assert params[stored] == mlflow_value
        assert _params(doc)[key] == prov_value
    return check


def _long_param(run, client, doc):
    (value,) = user_params(client.get_run(run.run_id).data.params).values()
    assert len(value) <= 6000 and "truncated" in value
    assert _params(doc)["big"] == "v" * 7000
    assert any(a.path.startswith("params/long_params_") for a in client.list_artifacts(run.run_id, "params"))
    (event,) = [e for e in read_journal(run.provenance_dir / f"journal_{run.run_id}.jsonl")
                if e["event"] == "params" and e["params"]]  # (the execution times are MLflow-only)
    assert event["params"]["big"] == "v" * 7000  # the journal keeps it whole too, for a recovery


def _nested(run, client, doc):
    params = user_params(client.get_run(run.run_id).data.params)
    assert params == {"opt/name": "adam", "opt/betas/b1": "0.9", "empty": "{}"}
    assert _params(doc) == {"opt/name": "adam", "opt/betas/b1": 0.9, "empty": "{}"}


def _artifact_dotted(run, client, doc):
    assert "..weird.txt" in {a.path for a in client.list_artifacts(run.run_id)}
    assert [attr(a, "path").rsplit("/", 1)[-1] for a in by_type(doc, "Artifact")] == ["..weird.txt"]


def _tensor11(run, client, doc):
    assert client.get_run(run.run_id).data.metrics["x"] == 7.0


def _unicode_model(run, client, doc):
    assert [attr(m, "name") for m in by_type(doc, "Model")] == ["modèle-ü"]


TRANSFORMS = [
    ("NaN", lambda t: prov4ml.log_metric("x", float("nan")), True, _nan),
    ("NumPy NaN", lambda t: prov4ml.log_metric("x", np.float32("nan")), True, _nan),
    ("+inf", lambda t: prov4ml.log_metric("x", float("inf")), True, _inf(1)),
    ("-inf", lambda t: prov4ml.log_metric("x", float("-inf")), True, _inf(-1)),
    ("tensor of shape (1, 1)", lambda t: prov4ml.log_metric("x", torch.full((1, 1), 7.0)), False, _tensor11),
    ("key with spaces", lambda t: prov4ml.log_metric("my loss", 1.0), False,
     _metric_key("my loss", "my loss")),
    ("key with slashes", lambda t: prov4ml.log_metric("layer/1/grad", 1.0), False,
     _metric_key("layer/1/grad", "layer/1/grad")),
    ("unicode key", lambda t: prov4ml.log_metric("损失 é", 1.0), False,
     _metric_key("损失 é", "损失 é")),
    ("key with colon", lambda t: prov4ml.log_metric("acc:top1", 1.0), True, _metric_key("acc:top1", None)),
    ("key with ..", lambda t: prov4ml.log_metric("a//b/../c", 1.0), True, _metric_key("a//b/../c", None)),
    ("key of 300 chars", lambda t: prov4ml.log_metric("k" * 300, 1.0), True, _metric_key("k" * 300, None)),
    ("param of 7000 chars", lambda t: prov4ml.log_param("big", "v" * 7000), True, _long_param),
    ("nested dict params", lambda t: prov4ml.log_params({"opt": {"name": "adam", "betas": {"b1": 0.9}}, "empty": {}}),
     False, _nested),
    ("param key with colon", lambda t: prov4ml.log_param("a:b", 1), False, _param("a:b", "1", 1)),
    ("param key of 300 chars", lambda t: prov4ml.log_param("p" * 300, 1), False, _param("p" * 300, "1", 1)),
    ("param key ../etc", lambda t: prov4ml.log_param("../etc", 1), False, _param("../etc", "1", 1)),
    ("unicode param", lambda t: prov4ml.log_param("学习率", "ü"), False, _param("学习率", "ü", "ü")),
    ("param list", lambda t: prov4ml.log_param("sizes", [1, 2]), False, _param("sizes", "[1, 2]", "[1, 2]")),
    ("artifact named ..weird.txt", lambda t: prov4ml.log_artifact(_dotted(t)), False, _artifact_dotted),
    ("unicode model name", lambda t: prov4ml.log_model(torch.nn.Linear(1, 1), "modèle-ü"), False, _unicode_model),
]


def _dotted(tmp_path: Path) -> Path:
    f = tmp_path / "..weird.txt"
    f.write_text("x")
    return f


@pytest.mark.parametrize(("action", "warns", "check"), [r[1:] for r in TRANSFORMS], ids=[r[0] for r in TRANSFORMS])
def test_documented_transformation(run_args, client, tmp_path, action, warns, check):
    with prov4ml.start_run(**run_args) as run:
        prov4ml.log_metric("before", 1.0)
        if warns:
            with pytest.warns(prov4ml.Prov4MLWarning):
                action(tmp_path)
                run.flush()  # NaN/inf are noticed (and warned about) by the writer
        else:
            action(tmp_path)
    check(run, client, _finishes_cleanly(run, client))


@pytest.mark.parametrize(("namespace", "iri"), [
    ("www.example.org", "http://www.example.org/"),
    ("https://example.org/ns", "https://example.org/ns/"),
    ("https://example.org/ns#", "https://example.org/ns#"),
    ("localhost:8080/ns", "http://localhost:8080/ns/"),
    ("urn:example:ns:", "urn:example:ns:/"),
])
def test_namespace_normalisation(run_args, client, namespace, iri):
    with prov4ml.start_run(**{**run_args, "prov_user_namespace": namespace}) as run:
        prov4ml.log_metric("before", 1.0)
    doc = _finishes_cleanly(run, client)
    assert iri in {ns.uri for ns in doc.namespaces}


# -- calls out of order ---------------------------------------------------------------------------------
def test_calls_out_of_order(run_args, client, tmp_path):
    with pytest.raises(NoActiveRunError, match=r"log_metric: no run is open; call prov4ml.start_run"):
        prov4ml.log_metric("x", 1.0)
    assert prov4ml.end_run() is None  # nothing open: a no-op
    run = prov4ml.start_run(**run_args)
    prov4ml.log_metric("before", 1.0)
    with pytest.raises(RunAlreadyActiveError, match="call end_run"):
        prov4ml.start_run(**run_args)
    out = prov4ml.end_run()
    assert prov4ml.end_run() is None and run.end() is out  # twice is harmless
    # Holding on to the ended run object: every late record is refused, none is half-kept.
    late = [
        (lambda: run.log_metric("before", 2.0), r"log_metric\('before'\): run .* has ended"),
        (lambda: run.log_metric("new", 2.0), "has ended"),
        (lambda: run.log_params({"late": 1}), "log_params: run .* has ended"),
        (lambda: run.set_tags({"late": "1"}), "set_tags: run .* has ended"),
        (lambda: run.log_artifact(_file(tmp_path)), "log_artifact: run .* has ended"),
        (lambda: run.log_model(torch.nn.Linear(1, 1), "m"), "has ended"),
        (lambda: run.start_activity("e", "TrainingEpoch", "epoch"), "has ended"),
    ]
    for call, message in late:
        with pytest.raises(NoActiveRunError, match=message):
            call()
    _finishes_cleanly(run, client)
    mrun = client.get_run(run.run_id)
    assert user_params(mrun.data.params) == {} and "late" not in mrun.data.tags
    assert len(client.get_metric_history(run.run_id, "before")) == 1
    assert [e["event"] for e in read_journal(out.provenance_dir / f"journal_{run.run_id}.jsonl")][-1] == "end"
    assert Context.EVALUATION is not Context.TESTING and Context("evaluation") is Context.EVALUATION
