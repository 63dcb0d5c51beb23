"""The default graph stays readable however long the run: sizes for 4, 100 and 1000 epochs.

Synthetic Lightning-like runs (tests/provenance/snapshots.py ``long_run``: an epoch, a validation
loop and a checkpoint per epoch) are drawn by the real Graphviz ``dot``; nodes, edges and canvas
are read from the SVG. The measured table lives in docs/show-and-share.md.
"""

from __future__ import annotations

import re
import time

import pytest

from prov4ml_lightning.provenance import build_document, to_graph
from prov4ml_lightning.provenance.graph import dot_available, svg_text, to_dot
from tests.provenance.snapshots import long_run

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not dot_available(), reason="Graphviz `dot` is not installed")]


def _measure(svg: str) -> tuple[int, int, float, float]:
    nodes = len(re.findall(r'<g id="node\d+" class="node">', svg))
    edges = len(re.findall(r'<g id="edge\d+" class="edge">', svg))
    width, height = re.search(r'<svg width="([\d.]+)pt" height="([\d.]+)pt"', svg).groups()
    return nodes, edges, float(width), float(height)


def _default_svg(epochs: int) -> str:
    return svg_text(to_dot(to_graph(build_document(long_run(epochs))), "exp / run"))


def test_1000_epochs_draw_about_as_many_nodes_as_100_and_in_seconds():
    small = _measure(_default_svg(100))
    start = time.perf_counter()
    svg = _default_svg(1000)
    elapsed = time.perf_counter() - start
    nodes, edges, width, height = _measure(svg)
    # 3000+ records collapse: first and last three epochs and checkpoints, one "... N more" node each
    assert nodes <= 40 and edges <= 45, (nodes, edges)
    assert (nodes, edges) == small[:2]
    # time runs down, so the picture grows down, not across: MLflow's preview pane (866 px at 1440 x 900)
    # scales it to >= 0.75, labels >= 11 px (tests/provenance/test_graph_in_mlflow.py); measured 826 x 1151 pt
    assert width <= 840 and height <= 1300, (width, height)
    labels = re.findall(r">(epoch \d+)<", svg)
    assert labels == ["epoch 0", "epoch 1", "epoch 2", "epoch 997", "epoch 998", "epoch 999"]
    assert "994 more epochs" in svg and "994 more checkpoints" in svg
    # generous: a CI machine shared with other jobs; measured 0.7 s on the 2-core dev machine
    assert elapsed < 30, elapsed


def test_4_epochs_draw_every_epoch_with_no_collapsed_node():
    svg = _default_svg(4)
    assert re.findall(r">(epoch \d+)<", svg) == [f"epoch {i}" for i in range(4)]
    assert re.search(r"… \d+ more", svg) is None


def _positions(epochs: int):
    """Each drawn node's (x, y) as Graphviz ``dot -Tjson`` places it, by PROV id, and the plan."""
    import json
    import subprocess

    from prov4ml_lightning.provenance.graph import dot_from_plan
    from prov4ml_lightning.provenance.layout import plan

    p = plan(to_graph(build_document(long_run(epochs))))
    out = subprocess.run(["dot", "-Tjson"], input=dot_from_plan(p, "exp / run"), capture_output=True, text=True,
                         check=True)
    names = {f"n{k}": ident for k, ident in enumerate(p.nodes)}
    pos = {names[o["name"]]: tuple(map(float, o["pos"].split(",")))
           for o in json.loads(out.stdout)["objects"] if o.get("name") in names and "pos" in o}
    return p, pos


@pytest.mark.parametrize("epochs", [4, 1000])
def test_epochs_run_down_in_order_with_used_records_left_and_products_right(epochs):
    p, pos = _positions(epochs)
    # y grows upwards in dot's coordinates: each activity below the one before it
    ys = [pos[i][1] for i in p.timeline]
    assert ys == sorted(ys, reverse=True) and len(set(ys)) == len(ys), ys
    epochs_drawn = [p.nodes[i].label for i in p.timeline if p.nodes[i].category == "TrainingEpoch"]
    assert epochs_drawn[:3] == ["epoch 0", "epoch 1", "epoch 2"] and epochs_drawn[-1] == f"epoch {epochs - 1}"
    xs = {role: [pos[i][0] for i, n in p.nodes.items() if n.role == role] for role in ("input", "activity", "output")}
    assert max(xs["input"]) < min(xs["activity"]) and max(xs["activity"]) < min(xs["output"]), xs
    # a checkpoint beside the epoch that wrote it
    for row in p.rows:
        if row.right and p.nodes[row.right].category == "Checkpoint" and row.middle:
            assert pos[row.right][1] == pos[row.middle][1]
