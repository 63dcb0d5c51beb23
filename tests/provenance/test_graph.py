"""Unit tests of provenance/graph.py's ``to_dot``: the DOT text for a small run (no Graphviz binary)."""

from __future__ import annotations

import re

import pytest

from prov4ml_lightning.provenance import GraphSpec, build_document, to_graph
from prov4ml_lightning.provenance.graph import to_dot
from tests.provenance.snapshots import snapshot

_EDGE = re.compile(r"^\s*(n\d+) -> (n\d+)", re.MULTILINE)
_NODE = re.compile(r"^\s*(n\d+) \[label=\"([^\"]*)\"", re.MULTILINE)


def _nodes(dot: str) -> dict[str, str]:
    return dict(_NODE.findall(dot))


def test_level_2_draws_every_record_with_its_detail_line():
    dot = to_dot(to_graph(build_document(snapshot())), "exp / my run")
    assert dot.startswith("digraph prov {")
    assert 'label="exp / my run  (level 2)"' in dot
    labels = list(_nodes(dot).values())
    assert "my run\\nFINISHED" in labels
    assert "lr\\n= 0.01" in labels and "layers\\n= 3" in labels
    assert "loss (training)\\nlast 0.25 · 3 points" in labels
    assert "net v1\\n10 params" in labels
    assert any(label.startswith("notes.txt\\nsha256 abababababab") for label in labels)
    assert len(_EDGE.findall(dot)) > 10
    assert "legend_notes" in dot


def test_level_1_leaves_parameters_and_metrics_out_and_says_so():
    dot = to_dot(to_graph(build_document(snapshot())), level=1)
    labels = list(_nodes(dot).values())
    assert not any(label.startswith(("lr\\n", "loss (training)")) for label in labels)
    assert any(label.startswith("epoch 0") for label in labels)
    assert "1 artifact, 2 metric series" in dot and "7 hyperparameters" in dot and "level 1 leaves out" in dot


def test_large_groups_collapse_to_one_dashed_node():
    dot = to_dot(to_graph(build_document(snapshot(epochs=12))), legend=False, collapse=10)
    epochs = [label for label in _nodes(dot).values() if label.startswith("epoch ")]
    assert len(epochs) == 6  # three at each end
    assert "… 6 more epochs" in dot and "dashed" in dot
    assert "wasStartedBy \u00d7" in dot  # the hidden members' edges are merged
    assert "legend" not in dot
    full = to_dot(to_graph(build_document(snapshot(epochs=12))), collapse=0)
    assert len([label for label in _nodes(full).values() if label.startswith("epoch ")]) == 12


def test_labels_cannot_add_nodes_or_edges():
    spec = GraphSpec(nodes=[("user:a", "entity", 'x" -> evil [label="pwned', {}),
                            ("user:b", "activity", "<b>html</b>", {})],
                     edges=[("user:a", "user:b", "wasGeneratedBy")], types={})
    dot = to_dot(spec, legend=False)
    assert len(_EDGE.findall(dot)) == 1
    assert "evil" not in _nodes(dot)
    assert 'x\\" -> evil [label=\\"pwned' in dot


def test_a_relation_to_an_undeclared_record_draws_a_dashed_placeholder():
    spec = GraphSpec(nodes=[("user:a", "entity", "a", {})], edges=[("user:a", "user:elsewhere", "wasDerivedFrom")])
    dot = to_dot(spec, legend=False)
    assert 'label="user:elsewhere" style=dashed' in dot
    assert len(_EDGE.findall(dot)) == 1


def test_a_bad_level_is_an_error():
    with pytest.raises(ValueError, match="level must be 1 or 2, got 3"):
        to_dot(GraphSpec(), level=3)
