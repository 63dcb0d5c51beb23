"""Unit tests of provenance/graph.py's ``to_dot``: the DOT text for a small run (no Graphviz binary)."""

from __future__ import annotations

import re

import pytest

from prov4ml_lightning.provenance import GraphSpec, build_document, to_graph
from prov4ml_lightning.provenance.graph import to_dot
from tests.provenance.snapshots import snapshot

_EDGE = re.compile(r"^\s*(n\d+) -> (n\d+) \[(?!style=invis)", re.MULTILINE)  # drawn edges, not layout-only
_NODE = re.compile(r"^\s*(n\d+) \[label=\"([^\"]*)\"", re.MULTILINE)


def _nodes(dot: str) -> dict[str, str]:
    return dict(_NODE.findall(dot))


def test_level_2_draws_every_record_with_its_detail_line():
    dot = to_dot(to_graph(build_document(snapshot())), "exp / my run", level=2)
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


def test_level_1_lists_parameters_and_metrics_in_one_node_each():
    dot = to_dot(to_graph(build_document(snapshot())))  # level 1 is the default
    labels = list(_nodes(dot).values())
    assert not any(label.startswith(("lr\\n", "loss (training)\\n")) for label in labels)
    params = next(label for label in labels if label.startswith("7 hyperparameters"))
    assert "lr = 0.01\\l" in params and "layers = 3\\l" in params
    series = next(label for label in labels if label.startswith("2 metric series"))
    assert "loss (training): last 0.25\\l" in series
    assert any(label.startswith("epoch 0") for label in labels)
    assert "used \u00d77" in dot  # one merged edge to the list node


def test_level_1_says_what_it_leaves_out():
    spec = to_graph(build_document(snapshot()))
    spec.nodes.append(("user:v", "activity", "validation", {}))
    spec.types["user:v"] = ["p4l:ValidationLoop"]
    assert "level 1 leaves out: 1 validation loop" in to_dot(spec)
    assert "leaves out" not in to_dot(spec, level=2)


def test_time_runs_top_to_bottom_with_epochs_in_order_inside_their_fit():
    spec = to_graph(build_document(snapshot(epochs=4)))
    spec.nodes.reverse()  # document order must not matter: start times do
    dot = to_dot(spec, legend=False)
    assert "rankdir=TB" in dot
    names = {label.split("\\n")[0]: name for name, label in _nodes(dot).items()}
    # the middle column's chain: activities, and invisible points (s<k>) in the rows of an activity's extra records
    chain = re.findall(r"^\s*(\w+) -> (\w+) \[style=invis weight=4\]", dot, re.MULTILINE)
    order = [names["my run"]]
    for _ in chain:
        order.append(next(b for a, b in chain if a == order[-1]))
    activities = [name for name in order if name.startswith("n")]
    assert activities == [names["my run"], names["session 1"], *(names[f"epoch {i}"] for i in range(4))]
    # inputs in the left cluster, outputs in the right one
    left = dot[dot.index("subgraph cluster_inputs"):dot.index("subgraph cluster_outputs")]
    right = dot[dot.index("subgraph cluster_outputs"):]
    assert "7 hyperparameters" in left and "net v1" in right and "2 metric series" in right


def test_large_groups_collapse_to_one_dashed_node():
    dot = to_dot(to_graph(build_document(snapshot(epochs=12))), legend=False, collapse=10, level=2)
    epochs = [label for label in _nodes(dot).values() if label.startswith("epoch ")]
    assert len(epochs) == 6  # three at each end
    assert "… 6 more epochs" in dot and "dashed" in dot
    collapsed = next(name for name, label in _nodes(dot).items() if label.startswith("… 6 more epochs"))
    edges = _EDGE.findall(dot)  # the chain runs through the dashed node: epoch 2 -> it -> epoch 9
    assert any(b == collapsed for _, b in edges) and any(a == collapsed for a, _ in edges)
    assert "legend" not in dot
    full = to_dot(to_graph(build_document(snapshot(epochs=12))), collapse=0)
    assert len([label for label in _nodes(full).values() if label.startswith("epoch ")]) == 12


def test_labels_cannot_add_nodes_or_edges():
    spec = GraphSpec(nodes=[("user:a", "entity", 'x" -> evil [label="pwned', {}),
                            ("user:b", "activity", "<b>html</b>", {})],
                     edges=[("user:a", "user:b", "wasGeneratedBy")], types={})
    dot = to_dot(spec, legend=False, level=2)
    assert len(_EDGE.findall(dot)) == 1
    assert "evil" not in _nodes(dot)
    assert 'x\\" -> evil [label=\\"pwned' in dot


def test_a_relation_to_an_undeclared_record_draws_a_dashed_placeholder():
    spec = GraphSpec(nodes=[("user:a", "entity", "a", {})], edges=[("user:a", "user:elsewhere", "wasDerivedFrom")])
    dot = to_dot(spec, legend=False, level=2)
    assert 'label="user:elsewhere"' in dot and "style=dashed" in dot
    assert len(_EDGE.findall(dot)) == 1


def test_a_bad_level_is_an_error():
    with pytest.raises(ValueError, match="level must be 1 or 2, got 3"):
        to_dot(GraphSpec(), level=3)
