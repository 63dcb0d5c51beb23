"""The interactive HTML view (provenance/html.py): escaping, self-containment, and the page in Chromium."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from prov4ml_lightning.provenance import build_document, to_graph
from prov4ml_lightning.provenance.html import script_json, to_html
from tests.chromium import Chromium, requires_chromium
from tests.provenance.snapshots import snapshot

HOSTILE = '<img src=x onerror="window.__pwned=1">'
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")


def _hostile_spec():
    snap = snapshot(epochs=3)
    snap.info.run_name = HOSTILE
    snap.params[HOSTILE] = "</script><script>window.__pwned=2</script>"
    snap.params["path"] = "/data/<svg onload=window.__pwned=3>/x"
    return to_graph(build_document(snap))


def test_script_json_cannot_close_the_script_element():
    text = script_json({"a": "</script><!-- <b>&amp;", "b": "\u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!-- <b>&amp;", "b": "\u2028"}


@needs_dot
def test_page_is_self_contained_and_escapes_every_run_string():
    page = to_html(_hostile_spec(), f"exp / {HOSTILE}")
    # no network: no URL the browser would fetch, and a policy that forbids any
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "default-src 'none'" in page
    # the hostile strings never appear as markup, anywhere in the page
    assert "<img" not in page and "<svg onload" not in page
    assert page.count("<script") == 2  # the data element and the page's own script, nothing injected
    data = page[page.index('id="prov-data">') + 15:page.index("</script>")]
    assert "<" not in data
    decoded = json.loads(data)
    labels = [n["label"] for lvl in decoded["levels"].values() for n in lvl["nodes"].values()]
    assert HOSTILE in labels  # kept whole as data, shown as text by the script
    assert decoded["title"] == f"exp / {HOSTILE}"


@needs_dot
def test_page_holds_both_levels_and_every_record_of_level_2():
    spec = to_graph(build_document(snapshot(epochs=3)))
    data = json.loads(re.search(r'id="prov-data">(.*?)</script>', to_html(spec)).group(1))
    level2 = {n["id"] for n in data["levels"]["2"]["nodes"].values()}
    assert {ident for ident, *_ in spec.nodes} <= level2
    level1 = data["levels"]["1"]["nodes"].values()
    params = next(n for n in level1 if n["label"] == "7 hyperparameters")
    assert {m["label"] for m in params["members"]} >= {"lr", "layers"}  # all attributes of each member
    assert next(m for m in params["members"] if m["label"] == "lr")["attrs"]["prov:value"] == "0.01"


# -- in a real browser -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    chrome = Chromium()
    yield chrome
    chrome.close()


@pytest.mark.slow
@needs_dot
@requires_chromium
def test_chromium_runs_the_view_and_no_hostile_value(browser, tmp_path):
    page = tmp_path / "view.html"
    page.write_text(to_html(_hostile_spec(), f"exp / {HOSTILE}"), encoding="utf-8")
    browser.open(page.as_uri(), "window.provView !== undefined")
    assert browser.evaluate("window.__pwned === undefined")
    assert browser.evaluate("document.querySelectorAll('img').length") == 0
    assert browser.evaluate("document.querySelector('h1').textContent") == f"exp / {HOSTILE}"
    visible = "document.querySelectorAll('.pane:not([hidden]) g.node')"
    level1 = browser.evaluate(f"{visible}.length")
    # click the run node (a real click event on the drawn node): the panel lists its attributes as text
    browser.evaluate("""(() => {
        const nodes = provView.data.levels['1'].nodes;
        const name = Object.keys(nodes).find(k => nodes[k].type === 'Run');
        document.getElementById(name).querySelector('text').dispatchEvent(new MouseEvent('click', {bubbles: true}));
    })()""")
    assert browser.evaluate("document.querySelector('#details h2').textContent") == HOSTILE
    cells = browser.evaluate("Array.from(document.querySelectorAll('#details td')).map(td => td.textContent)")
    assert "FINISHED" in cells
    assert browser.evaluate("document.querySelectorAll('#details img, #details script').length") == 0
    # search by name
    assert browser.evaluate("provView.find('epoch').length") == 3
    assert browser.evaluate("document.querySelectorAll('.pane:not([hidden]) g.node.hit').length") == 3
    # lineage: upstream of epoch 2 reaches its session, the epochs before it and their inputs, not the model
    lit = browser.evaluate("""(() => {
        const nodes = provView.data.levels['1'].nodes;
        provView.lineage(Object.keys(nodes).find(k => nodes[k].label === 'epoch 2'), true);
        return Array.from(document.querySelectorAll('.pane:not([hidden]) g.node.lit'))
            .map(g => provView.data.levels['1'].nodes[g.id].label);
    })()""")
    assert "epoch 2" in lit and "epoch 1" in lit and "session 1" in lit and "net v1" not in lit
    down = browser.evaluate("""(() => {
        const nodes = provView.data.levels['1'].nodes;
        provView.lineage(Object.keys(nodes).find(k => nodes[k].label === 'epoch 0'), false);
        return Array.from(document.querySelectorAll('.pane:not([hidden]) g.node.lit'))
            .map(g => provView.data.levels['1'].nodes[g.id].label);
    })()""")
    assert "epoch 1" in down and "epoch 2" in down and "7 hyperparameters" not in down
    # switch level: every record
    browser.evaluate("document.querySelector('button[data-level=\"2\"]').click()")
    assert browser.evaluate(f"{visible}.length") > level1
    # zoom with the wheel changes the viewBox
    before = browser.evaluate("document.querySelector('.pane:not([hidden]) svg').getAttribute('viewBox')")
    browser.evaluate("""document.querySelector('.pane:not([hidden]) svg').dispatchEvent(
        new WheelEvent('wheel', {deltaY: -100, clientX: 300, clientY: 300, bubbles: true, cancelable: true}))""")
    after = browser.evaluate("document.querySelector('.pane:not([hidden]) svg').getAttribute('viewBox')")
    assert float(after.split()[2]) < float(before.split()[2])
    assert browser.evaluate("window.__pwned === undefined")



@pytest.mark.slow
@needs_dot
@requires_chromium
def test_the_view_works_inside_the_mlflow_ui_artifact_viewer(browser, mlflow_server, tmp_path):
    import prov4ml_lightning as prov4ml
    from prov4ml_lightning.context import Context

    prov4ml.start_run(prov_user_namespace="www.example.org", experiment_name=f"html-{tmp_path.name}",
                      provenance_save_dir=str(tmp_path / "prov"), mlflow_save_dir=str(tmp_path / "mlflow"),
                      tracking_uri=mlflow_server.uri, run_name="ui-check")
    prov4ml.log_param("label", HOSTILE)
    for step in range(3):
        prov4ml.log_metric("loss", 1.0 / (step + 1), Context.TRAINING, step=step)
    outputs = prov4ml.end_run()
    assert outputs.extra["html"].is_file()
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(outputs.run_id)
    uploaded = [f.path for f in client.list_artifacts(outputs.run_id, "prov")]
    name = f"prov/{outputs.extra['html'].name}"
    assert name in uploaded and f"prov/{outputs.prov_svg.name}" in uploaded  # beside the SVG
    url = (f"{mlflow_server.uri}/#/experiments/{run.info.experiment_id}/runs/{outputs.run_id}"
           f"/artifacts/{name}")
    browser.open(url, "document.querySelector('iframe.mlflow-html-iframe') !== null", timeout=90)
    frame = browser.frame_context("blob:", timeout=60)  # MLflow shows HTML in a sandboxed blob: iframe
    browser.wait("window.provView !== undefined", timeout=30, context=frame)
    assert browser.evaluate("document.querySelectorAll('.pane:not([hidden]) g.node').length", frame) > 3
    assert browser.evaluate("provView.find('loss').length", frame) >= 1
    assert browser.evaluate("window.__pwned === undefined && document.querySelectorAll('img').length === 0", frame)
    label = browser.evaluate("""(() => {
        const nodes = provView.data.levels['2'].nodes;
        provView.setLevel('2');
        const name = Object.keys(nodes).find(k => nodes[k].label === 'label');
        provView.select(name);
        return Array.from(document.querySelectorAll('#details td')).map(td => td.textContent);
    })()""", frame)
    assert HOSTILE in label  # shown as text inside the MLflow UI
