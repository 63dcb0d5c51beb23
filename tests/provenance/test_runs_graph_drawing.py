"""What ``prov4ml lineage --format svg|html`` draws of many runs (``RunsGraph.spec`` and the layout's
clusters per run), on two small PROV-JSON documents written here: run A trains on X (an epoch of
its fit used X) and logs a model; run B, which started later, fits from weights derived from A's
model. Drawing them with ``dot`` and in a browser is tested on real runs in tests/cli/test_lineage.py.
"""

from __future__ import annotations

from prov4ml_lightning.provenance.graph import to_dot
from prov4ml_lightning.provenance.layout import plan
from prov4ml_lightning.provenance.runs_graph import RunsGraph

NS = "http://www.example.org/"
A, B = "f" * 32, "0" * 32  # B sorts first by id, but started later


def _q(value: str) -> dict[str, str]:
    return {"$": value, "type": "xsd:QName"}


def _doc(run: str, start: str, extra_entities: dict, extra_relations: dict) -> dict:
    r = f"user:run_{run}"
    return {
        "prefix": {"user": NS, "p4l": "https://w3id.org/prov4ml-lightning/ns#"},
        "activity": {
            r: {"prov:type": _q("p4l:Run"), "prov:startTime": start, "p4l:run_name": f"run-{run[:2]}",
                "p4l:experiment_name": "exp"},
            f"{r}.fit_1": {"prov:type": _q("p4l:Fit"), "prov:label": "fit 1", "prov:startTime": start,
                           "p4l:partOf": _q(r)},
            f"{r}.fit_1.epoch_0": {"prov:type": _q("p4l:TrainingEpoch"), "prov:startTime": start,
                                   "p4l:partOf": _q(f"{r}.fit_1")},
        },
        "entity": {
            f"{r}.model": {"prov:type": _q("p4l:Model"), "prov:label": f"model of {run[:2]}"},
            f"{r}.metric.loss": {"prov:type": _q("p4l:MetricSeries")},
            **extra_entities,
        },
        "wasGeneratedBy": {f"_:g{run}": {"prov:entity": f"{r}.model", "prov:activity": f"{r}.fit_1.epoch_0"},
                           f"_:m{run}": {"prov:entity": f"{r}.metric.loss", "prov:activity": f"{r}.fit_1.epoch_0"}},
        **extra_relations,
    }


def _graph() -> RunsGraph:
    graph = RunsGraph()
    graph.add_document(_doc(A, "2026-01-01T10:00:00+00:00",
                            {f"user:run_{A}.dataset.x": {"prov:type": _q("p4l:Dataset"), "p4l:fingerprint": "ab" * 32}},
                            {"used": {"_:u": {"prov:activity": f"user:run_{A}.fit_1.epoch_0",
                                              "prov:entity": f"user:run_{A}.dataset.x"}}}))
    initial = f"user:run_{B}.model_state.initial"
    graph.add_document(_doc(B, "2026-01-01T11:00:00",  # no offset: read as UTC
                            {initial: {"prov:type": _q("p4l:ModelState")},
                             f"user:run_{A}.model": {"prov:type": _q("p4l:EarlierRunWeights"), "p4l:run_id": A}},
                            {"used": {"_:u": {"prov:activity": f"user:run_{B}.fit_1.epoch_0", "prov:entity": initial}},
                             "wasDerivedFrom": {"_:d": {"prov:generatedEntity": initial,
                                                        "prov:usedEntity": f"user:run_{A}.model"}}}))
    return graph


def test_spec_holds_the_runs_fits_data_and_weights_with_the_relations_lifted_to_the_fit():
    graph = _graph()
    (x,) = graph.find("abab" * 4)
    spec = graph.spec(graph.downstream([x.ident]))
    drawn = {ident: kind for ident, kind, _label, _attrs in spec.nodes}
    a, b = NS + f"run_{A}", NS + f"run_{B}"
    assert set(drawn) == {a, a + ".fit_1", x.ident, a + ".model", b, b + ".fit_1", b + ".model_state.initial",
                          b + ".model"}  # no epoch, no metric series
    assert spec.types[a + ".model"][0] == "p4l:Model"  # A's own type first, B's mention of it after
    assert {spec.runs[i] for i in drawn} == {A, B}
    edges = set(spec.edges)
    assert (a + ".fit_1", x.ident, "used") in edges  # the epoch's use, drawn from its fit
    assert (a + ".model", a + ".fit_1", "wasGeneratedBy") in edges
    assert (b + ".model_state.initial", a + ".model", "wasDerivedFrom") in edges
    assert all(src in drawn and dst in drawn and src != dst for src, dst, _ in edges)
    assert len(edges) == len(spec.edges)  # each relation once


def test_one_cluster_per_run_in_start_order():
    graph = _graph()
    (x,) = graph.find("abab" * 4)
    p = plan(graph.spec(graph.downstream([x.ident])), level=2)
    assert p.runs == 2
    labels = {c.ident: c.label for c in p.clusters.values()}
    assert sorted(labels.values()) == [f"run run-00 ({B[:8]}) \u00b7 exp", f"run run-ff ({A[:8]}) \u00b7 exp"]
    cluster_of = {p.nodes[i].run: p.nodes[i].cluster for i in p.timeline}
    assert cluster_of[A] != cluster_of[B] and all(p.nodes[i].cluster == cluster_of[p.nodes[i].run] for i in p.timeline)
    assert [p.nodes[i].run for i in p.timeline] == [A, A, B, B]  # A started first, though B's id sorts first
    assert [p.nodes[i].category for i in p.timeline] == ["Run", "Fit", "Run", "Fit"]
    source = to_dot(graph.spec(graph.downstream([x.ident])), "downstream of x", level=2)
    assert "(2 runs)" in source and source.count("subgraph cluster_run_") == 2


def test_a_single_run_drawing_is_unchanged_by_the_run_clusters():
    from prov4ml_lightning.provenance import build_document, to_graph
    from tests.provenance.snapshots import snapshot

    spec = to_graph(build_document(snapshot(epochs=3)))
    p = plan(spec)
    assert p.runs == 1 and not any(c.startswith("cluster_run_") for c in p.clusters)
    assert "(level 1, overview)" in to_dot(spec, "t")


def test_a_partial_load_is_labelled_on_its_derivation_edge():
    """B's initial weights loaded A's backbone (4 of A's 6 tensors, ``model.backbone`` -> ``backbone``):
    the drawn derivation says it is partial and what matched; a whole load stays plain."""
    graph = RunsGraph()
    graph.add_document(_doc(A, "2026-01-01T10:00:00+00:00", {}, {}))
    initial = f"user:run_{B}.model_state.initial"
    graph.add_document(_doc(B, "2026-01-01T11:00:00+00:00",
                            {initial: {"prov:type": _q("p4l:ModelState")},
                             f"user:run_{A}.model": {"prov:type": _q("p4l:EarlierRunWeights"), "p4l:run_id": A}},
                            {"used": {"_:u": {"prov:activity": f"user:run_{B}.fit_1.epoch_0", "prov:entity": initial}},
                             "wasDerivedFrom": {"_:d": {"prov:generatedEntity": initial,
                                                        "prov:usedEntity": f"user:run_{A}.model",
                                                        "p4l:partial": True, "p4l:tensors_matched": 4,
                                                        "p4l:source_tensors": 6, "p4l:target_tensors": 6,
                                                        "p4l:source_prefixes": "model.backbone",
                                                        "p4l:target_prefixes": "backbone"}}}))
    a_model = NS + f"run_{A}.model"
    spec = graph.spec(graph.downstream([a_model]))
    (label,) = [r for s, d, r in spec.edges if s == NS + f"run_{B}.model_state.initial" and d == a_model]
    assert label.startswith("wasDerivedFrom (partial: 4 of 6 tensors") and "model.backbone" in label, label
    source = to_dot(spec, "downstream of A's model", level=2)
    assert "partial: 4 of 6 tensors" in source
    assert all(r == "wasGeneratedBy" for s, _d, r in spec.edges if s == a_model)
