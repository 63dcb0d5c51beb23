"""MLflow's rules kept inside the sink: store choice, keys, value limits, model defaults, run names."""

from __future__ import annotations

import hashlib
import random
import re
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prov4ml_lightning.sinks.mlflow.sink import (
    MAX_KEY_LENGTH,
    MAX_PARAM_VALUE_LENGTH,
    MlflowSink,
    default_pip_requirements,
    default_serialization_format,
    default_tracking_uri,
    generate_run_name,
    mlflow_safe_key,
    resolve_tracking_uri,
    truncate_param_value,
)


def test_tracking_uri_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    embedded = f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert resolve_tracking_uri(None, tmp_path) == embedded == default_tracking_uri(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://env:5000"
    assert resolve_tracking_uri("http://explicit:5000", tmp_path) == "http://explicit:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    assert resolve_tracking_uri(None, tmp_path) == embedded


@pytest.mark.parametrize("key", ["loss", "train/loss", "lr-0.1", "a b", "x_1.y"])
def test_ordinary_keys_are_kept(key: str) -> None:
    assert mlflow_safe_key(key) == key


@pytest.mark.parametrize("key", ["a:b", "a//b", "../etc", "x" * 300, "", "ü?", "/"])
def test_unsafe_keys_are_mapped_apart(key: str) -> None:
    safe = mlflow_safe_key(key)
    assert safe != key and re.fullmatch(r"[/\w.\- ]+-[0-9a-f]{8}", safe) and len(safe) <= MAX_KEY_LENGTH


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=400))
def test_safe_keys_are_safe_and_stable(key: str) -> None:
    safe = mlflow_safe_key(key)
    assert len(safe) <= MAX_KEY_LENGTH and re.fullmatch(r"[/\w.\- ]+", safe)
    assert all(part not in ("", ".", "..") for part in safe.split("/"))
    assert mlflow_safe_key(safe) == safe  # the recorder's keys pass the sink unchanged


def test_long_param_values_are_cut_with_a_note() -> None:
    assert truncate_param_value("x" * MAX_PARAM_VALUE_LENGTH) == "x" * MAX_PARAM_VALUE_LENGTH
    cut = truncate_param_value("y" * 10_000)
    assert len(cut) == MAX_PARAM_VALUE_LENGTH and cut.endswith("params/long_params.json, 10000 chars]")
    assert truncate_param_value(cut) == cut


def test_model_defaults() -> None:
    assert default_serialization_format(None) == "pickle"
    assert default_serialization_format(torch.zeros(1)) == "pt2"
    reqs = default_pip_requirements()
    assert f"torch=={torch.__version__}" in reqs and any(r.startswith("mlflow==") for r in reqs)


def test_run_names_look_like_mlflow_s_and_leave_the_global_generator_alone() -> None:
    random.seed(7)
    state = random.getstate()
    names = {generate_run_name() for _ in range(50)}
    assert random.getstate() == state
    assert len(names) > 40 and all(re.fullmatch(r"[a-z]+-[a-z]+-\d{1,4}", n) and len(n) <= 20 for n in names)


@pytest.fixture
def sink_experiment(mlflow_dir: Path) -> tuple[MlflowSink, str]:
    sink = MlflowSink(default_tracking_uri(mlflow_dir), mlflow_dir)
    return sink, sink.experiment_id(f"sink-rules-{uuid.uuid4().hex[:8]}")


def test_create_run_consumes_no_global_random_state(sink_experiment, client) -> None:
    sink, experiment = sink_experiment
    random.seed(1234)
    np.random.seed(1234)
    torch.manual_seed(1234)
    before = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    runs = [sink.create_run(experiment, None, {}, None, None, int(time.time() * 1000)) for _ in range(2)]
    assert random.getstate() == before[0]
    assert (np.random.get_state()[1] == before[1]).all() and torch.equal(torch.get_rng_state(), before[2])
    (id1, name1), (_, name2) = runs
    assert name1 != name2 and client.get_run(id1).info.run_name == name1
    for run_id, _ in runs:
        sink.end_run(run_id, "FINISHED", int(time.time() * 1000))


def test_an_explicit_or_tagged_run_name_is_kept(sink_experiment, client) -> None:
    sink, experiment = sink_experiment
    run_id, name = sink.create_run(experiment, None, {"mlflow.runName": "from-tag"}, None, None, 0)
    assert name == "from-tag" == client.get_run(run_id).info.run_name
    sink.end_run(run_id, "FINISHED", 1)


def test_the_sink_accepts_any_tag_and_param_keys_and_long_values(sink_experiment, client) -> None:
    sink, experiment = sink_experiment
    run_id, _ = sink.create_run(experiment, "keys", {"team:name": "a", "ok": "b"}, "about", None, 0)
    sink.set_tags(run_id, [("data/../set", "c"), ("ok2", "d")])
    sink.log_params(run_id, [("opt:lr", "0.1"), ("long", "z" * 7000), (mlflow_safe_key("opt:lr2"), "0.2")])
    data = client.get_run(run_id).data
    assert data.tags[mlflow_safe_key("team:name")] == "a" and data.tags["ok"] == "b"
    assert data.tags[mlflow_safe_key("data/../set")] == "c" and data.tags["mlflow.note.content"] == "about"
    assert data.params[mlflow_safe_key("opt:lr")] == "0.1" and data.params[mlflow_safe_key("opt:lr2")] == "0.2"
    assert len(data.params["long"]) == MAX_PARAM_VALUE_LENGTH and "7000 chars" in data.params["long"]
    sink.end_run(run_id, "FINISHED", 1)


@pytest.mark.parametrize("key", ["loss", "train/loss", "a b-c.d_e", "épochs", "x" * 250])
def test_mlflow_safe_key_table_leaves_ordinary_keys_alone(key):
    assert mlflow_safe_key(key) == key


def _suffix(key: str) -> str:
    return "-" + hashlib.sha1(key.encode()).hexdigest()[:8]


@pytest.mark.parametrize(("key", "stem"), [
    ("loss:val", "loss_val"), ("a//b", "a/b"), ("../up", "up"), ("a/./b/", "a/b"), ("", "_"),
    ("what?", "what_"),
])
def test_mlflow_safe_key_replaces_bad_characters_and_segments_and_adds_a_hash(key, stem):
    assert mlflow_safe_key(key) == stem + _suffix(key)


def test_mlflow_safe_key_cuts_long_keys_to_the_limit_and_keeps_them_apart():
    long_a, long_b = "a" * 300, "a" * 299 + "b"
    safe_a, safe_b = mlflow_safe_key(long_a), mlflow_safe_key(long_b)
    assert len(safe_a) == MAX_KEY_LENGTH and safe_a == "a" * 241 + _suffix(long_a)
    assert safe_a != safe_b
    assert mlflow_safe_key("a:b") != mlflow_safe_key("a;b")  # both map to a_b; the hash keeps them apart


def test_a_relative_sqlite_uri_is_made_absolute_where_the_run_starts(tmp_path, monkeypatch):
    """The MLflow service process keeps the folder it was started in: a relative ``sqlite:///`` path must
    name the file beside the caller's current folder, not the service's."""
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///sub/mlflow.db", "unused") == f"sqlite:///{tmp_path.resolve()}/sub/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri(None, "unused") == f"sqlite:///{tmp_path.resolve()}/env.db"
    for uri in (f"sqlite:///{tmp_path}/abs.db", "http://127.0.0.1:5000", "postgresql://u@h/db"):
        assert resolve_tracking_uri(uri, "unused") == uri
