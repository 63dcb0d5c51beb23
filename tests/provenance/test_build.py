"""Unit tests of provenance/build.py and views.py on a small RunSnapshot, read back with ``prov.read``."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from pathlib import Path

import pytest

from prov4ml_lightning.provenance import build_document, flatten, local_id, to_graph, typed, write_document
from tests.helpers import attr, by_type, read_prov, records_of
from tests.provenance.snapshots import NS, RUN, T0, snapshot


@pytest.fixture
def doc(tmp_path: Path):
    """The snapshot's document, written to disk and read back with the real reader."""
    return read_prov(write_document(build_document(snapshot()), tmp_path / "provgraph_abc123.json"))


def test_local_id_keeps_safe_names_and_hashes_changed_ones():
    assert local_id("train_loss-1.v2") == "train_loss-1.v2"
    assert local_id("a b/c") == "a_b_c_" + hashlib.sha1(b"a b/c").hexdigest()[:8]
    assert local_id("a b") != local_id("a_b")
    long = "x" * 130
    assert local_id(long) == "x" * 100 + "_" + hashlib.sha1(long.encode()).hexdigest()[:8]


@pytest.mark.parametrize(("value", "expected"), [
    (3, 3), (0.5, 0.5), (True, True), ("s", "s"), (None, "None"), ([1, 2], "[1, 2]"), ((1, "a"), '[1, "a"]'),
    ({"a": 1}, '{"a": 1}'), ({"a": object()}, None), (Path("/p"), "/p"),
])
def test_typed(value, expected):
    out = typed(value)
    if expected is None:  # not JSON-serialisable: its string form, never a crash
        assert out.startswith("{'a': <object object")
    else:
        assert out == expected and type(out) is type(expected)


def test_the_run_activity_its_agents_and_ids(doc):
    (run,) = by_type(doc, "Run")
    assert str(run.identifier) == f"user:{RUN}" and run.identifier.namespace.uri == NS
    assert attr(run, "status") == "FINISHED" and attr(run, "experiment_name") == "exp"
    assert attr(run, "tag_team") == "vision" and attr(run, "metrics_file") == "metrics_abc123.csv"
    assert attr(run, "description") is None  # absent values are left out, not written as "None"
    assert attr(run, "startTime") == dt.datetime.fromtimestamp(T0, dt.timezone.utc)
    assert {str(t) for t in run.get_asserted_types()} >= {"provml:LearningStageExecution", "p4l:Run"}
    agents = {str(a.identifier) for a in records_of(doc, "agent")}
    assert agents == {"user:person.alice", "p4l:prov4ml-lightning_1.2.3"}
    # the run with its experimenter; the session with the experimenter (plan: code) and the recorder
    associations = {(str(r.formal_attributes[0][1]), str(r.formal_attributes[1][1]))
                    for r in records_of(doc, "wasAssociatedWith")}
    assert associations == {(f"user:{RUN}", "user:person.alice"), (f"user:{RUN}.session_1", "user:person.alice"),
                            (f"user:{RUN}.session_1", "p4l:prov4ml-lightning_1.2.3")}
    assert len(records_of(doc, "actedOnBehalfOf")) == 1
    (session,) = by_type(doc, "Session")
    assert attr(session, "partOf") == doc.valid_qualified_name(f"user:{RUN}") and attr(session, "session") == 1


def test_params_are_typed_literals_used_by_the_session(doc):
    params = {attr(p, "name"): p for p in by_type(doc, "Parameter")}
    assert {k: attr(p, "value") for k, p in params.items()} == {
        "lr": 0.01, "layers": 3, "flag": True, "shape": "[1, 2]", "opt": "adam", "none": None, "odd key:1": "x"}
    assert type(attr(params["layers"], "value")) is int and type(attr(params["flag"], "value")) is bool
    assert str(params["lr"].identifier) == f"user:{RUN}.param.lr"
    assert str(params["odd key:1"].identifier) == f"user:{RUN}.param.{local_id('odd key:1')}"
    used = {str(r.formal_attributes[1][1]) for r in records_of(doc, "used")
            if str(r.formal_attributes[0][1]) == f"user:{RUN}.session_1"}
    # no fit lists them (functional API): the session that logged them used them
    assert {str(p.identifier) for p in params.values()} <= used


def test_metric_series_summaries_and_their_generation(doc):
    series = {attr(s, "name"): s for s in by_type(doc, "MetricSeries")}
    loss, acc = series["loss"], series["acc"]
    assert str(loss.identifier) == f"user:{RUN}.metric.training.loss"
    assert (attr(loss, "count"), attr(loss, "non_finite_count")) == (3, 1)
    assert (attr(loss, "min_value"), attr(loss, "max_value"), attr(loss, "last_value")) == (0.25, 0.5, 0.25)
    assert attr(loss, "first_point_time") == dt.datetime.fromtimestamp(T0 + 10, dt.timezone.utc)
    generated = {str(r.formal_attributes[0][1]): str(r.formal_attributes[1][1])
                 for r in records_of(doc, "wasGeneratedBy")}
    assert generated[str(loss.identifier)] == f"user:{RUN}.session_1"
    assert "prov:Collection" in {str(t) for t in loss.get_asserted_types()}
    assert generated[str(acc.identifier)] == f"user:{RUN}.epoch_0"  # the epoch that logged it


def test_a_series_of_only_nan_has_no_min_or_max(tmp_path):
    snap = snapshot()
    nan_only = next(iter(snap.series))
    nan_only.min_value, nan_only.max_value, nan_only.non_finite = math.inf, -math.inf, nan_only.count
    doc = read_prov(write_document(build_document(snap), tmp_path / "p.json"))
    loss = next(s for s in by_type(doc, "MetricSeries") if attr(s, "name") == "loss")
    assert attr(loss, "min_value") is None and attr(loss, "max_value") is None


def test_epochs_artifacts_and_models(doc):
    epochs = {str(e.identifier): e for e in by_type(doc, "TrainingEpoch")}
    assert set(epochs) == {f"user:{RUN}.epoch_0", f"user:{RUN}.epoch_1"}
    informed = {(str(r.formal_attributes[0][1]), str(r.formal_attributes[1][1]))
                for r in records_of(doc, "wasInformedBy")}
    assert (f"user:{RUN}.epoch_1", f"user:{RUN}.epoch_0") in informed
    (notes,) = by_type(doc, "Artifact")
    assert attr(notes, "sha256") == "ab" * 32 and attr(notes, "size_bytes") == 5
    assert attr(notes, "is_directory") is False
    # located by an IRI (a qualified name in its folder's namespace), read back as written
    (where,) = notes.get_attribute("prov:location")
    assert where.uri == "file:///tmp/notes.txt" and where.namespace.prefix.startswith("loc_")
    (model,) = by_type(doc, "Model")
    assert str(model.identifier) == f"user:{RUN}.model.net.v1" and attr(model, "total_params") == 10
    assert next(iter(model.get_attribute("prov:location"))).uri == "models:/m-1"


def test_the_json_text_names_the_datatypes(tmp_path):
    path = write_document(build_document(snapshot()), tmp_path / "p.json")
    entities = json.loads(path.read_text())["entity"]
    value = {k.rsplit(".", 1)[-1]: v.get("prov:value") for k, v in entities.items() if ".param." in k}
    assert value["lr"] == {"$": "0.01", "type": "xsd:double"}
    assert value["layers"] == {"$": "3", "type": "xsd:int"}
    assert value["flag"] is True  # a JSON boolean
    assert value["shape"] == "[1, 2]" and value["none"] is None


def test_to_graph_flattens_nodes_edges_and_types():
    spec = to_graph(build_document(snapshot()))
    nodes = {ident: (kind, label) for ident, kind, label, _ in spec.nodes}
    assert nodes[f"user:{RUN}"] == ("activity", "my run")
    assert nodes["user:person.alice"] == ("agent", "alice")
    assert nodes[f"user:{RUN}.param.lr"] == ("entity", "lr")
    assert "p4l:Run" in spec.types[f"user:{RUN}"]
    assert (f"user:{RUN}.param.lr", f"user:{RUN}", "used") not in spec.edges  # edges read subject -> object
    assert (f"user:{RUN}.session_1", f"user:{RUN}.param.lr", "used") in spec.edges
    assert (f"user:{RUN}.metric.training.loss", f"user:{RUN}.session_1", "wasGeneratedBy") in spec.edges
    # no trigger: drawn to the starter
    assert (f"user:{RUN}.epoch_0", f"user:{RUN}.session_1", "wasStartedBy") in spec.edges
    attrs = {i: a for i, _, _, a in spec.nodes}[f"user:{RUN}.param.layers"]
    assert attrs["prov:value"] == "3"


def test_flatten_gives_plain_elements_and_relations():
    elements, relations = flatten(build_document(snapshot()))
    by_id = {e.ident: e for e in elements}
    run = by_id[f"user:{RUN}"]
    assert run.kind == "activity" and run.has_type("Run") and not run.has_type("Model")
    assert run.start == dt.datetime.fromtimestamp(T0, dt.timezone.utc)
    assert run.attrs["status"] == "FINISHED"
    assert by_id[f"user:{RUN}.param.layers"].attrs["prov:value"] == 3
    assert by_id[f"user:{RUN}.artifact.notes.txt"].attrs["prov:location"] == "file:///tmp/notes.txt"  # the IRI
    assert any(r.name == "used" and r.subject == f"user:{RUN}.session_1" and r.obj == f"user:{RUN}.param.lr"
               for r in relations)
