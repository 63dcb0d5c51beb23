"""The default SVG inside the MLflow UI's artifact preview: drawn at (nearly) its natural size, labels readable.

MLflow shows an SVG artifact as an ``<img>`` scaled to the preview pane's width; a real ``mlflow server``
and headless Chromium at 1440 x 900 (a laptop screen) show the 1000-epoch default graph (the widest
default drawing of tests/provenance/test_graph_size.py) and the test reads the image's natural and
rendered widths from the DOM. ``PROV4ML_SCREENSHOT=path.png`` keeps the page's screenshot.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from prov4ml_lightning.provenance import build_document, to_graph
from prov4ml_lightning.provenance.graph import dot_available, svg_text, to_dot
from tests.chromium import Chromium, requires_chromium
from tests.provenance.snapshots import long_run

#: Node labels are 11 pt, 14.7 px at 100 %.
_LABEL_PX = 11 * 4 / 3


@pytest.mark.slow
@pytest.mark.skipif(not dot_available(), reason="Graphviz `dot` is not installed")
@requires_chromium
def test_default_svg_is_readable_in_the_mlflow_artifact_preview(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    svg = tmp_path / "provgraph_long.svg"
    svg.write_text(svg_text(to_dot(to_graph(build_document(long_run(1000))), "exp / run")), encoding="utf-8")
    client = MlflowClient(mlflow_server.uri)
    experiment = client.create_experiment(f"svg-{tmp_path.name}")
    run = client.create_run(experiment)
    client.log_artifact(run.info.run_id, str(svg), "prov")
    client.set_terminated(run.info.run_id)

    browser = Chromium(1440, 900)
    try:
        url = f"{mlflow_server.uri}/#/experiments/{experiment}/runs/{run.info.run_id}/artifacts/prov/{svg.name}"
        # MLflow loads the artifact and shows it from a blob: URL; the graph is the one large image
        graph = "Array.from(document.images).find(i => i.naturalWidth > 400)"
        browser.open(url, f"{graph} !== undefined", timeout=90)
        browser.wait(f"{graph}.complete", timeout=30)
        # MLflow 3.x opens its assistant panel on the right; a user closes it (its close button: the rightmost
        # button labelled close) and the preview pane takes the width
        browser.evaluate("""(() => {
            const close = Array.from(document.querySelectorAll('button'))
                .filter(b => /close/i.test(b.getAttribute('aria-label') || ''))
                .sort((a, b) => b.getBoundingClientRect().x - a.getBoundingClientRect().x)[0];
            if (close && close.getBoundingClientRect().x > 1000) close.click();
        })()""")
        time.sleep(1)
        natural, shown = browser.evaluate(f"[{graph}.naturalWidth, {graph}.getBoundingClientRect().width]")
        if os.environ.get("PROV4ML_SCREENSHOT"):
            shutil.copy(browser.screenshot(tmp_path / "preview.png"), os.environ["PROV4ML_SCREENSHOT"])
    finally:
        browser.close()
    scale = shown / natural
    # measured 0.79 (1101 px natural in the 866 px pane): labels 11.5 px on screen; the left-to-right
    # layout was drawn at 0.40 (6 px labels). The 0.9 aimed for (a graph under ~900 px) is not reached yet.
    assert _LABEL_PX * scale >= 11, (natural, shown)
    assert scale >= 0.75, (natural, shown)
