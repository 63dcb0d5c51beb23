"""Lineage across runs, judged on real runs in a real store, read back with MlflowClient, prov and
the ``prov4ml lineage`` command:

- A trains on dataset X and logs its model; B fine-tunes A's logged model (``mlflow.pytorch.load_model``)
  on Y; C trains on Y from scratch; D, in another experiment, starts from one of A's checkpoint files
  (``fit(ckpt_path=...)``) on Y; E starts from ``load_from_checkpoint`` of A's checkpoint; F is a
  plain loop whose module got A's weights through ``torch.load`` + ``load_state_dict``.
- Each of B, D, E, F records its initial weights as derived from A's entities holding them (in A's
  namespace, with A's run id and PROV file), and C records no such link;
- ``lineage --downstream <X's fingerprint>`` lists A, B, D, E, F with their models, not C;
  ``--upstream`` B's model lists X, Y and A;
- ``--format svg`` draws that graph with Graphviz (read back from ``dot``'s SVG: one cluster per
  run, the dataset, the used and derived-from edges across runs) and ``--format html`` is a page
  headless Chromium runs, showing both runs of an upstream.
"""

from __future__ import annotations

import json
import shutil
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prov4ml_lightning as prov4ml
from prov4ml_lightning.cli import main
from tests.chromium import Chromium, requires_chromium
from tests.helpers import attr, by_type, load_model, read_prov, records_of
from tests.lightning_models import TinyModel, fast_trainer

pytestmark = pytest.mark.slow  # Lightning fits and MLflow models


def _loader(seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 4, generator=g)
    return DataLoader(TensorDataset(x, (x.sum(dim=1, keepdim=True) > 0).float()), batch_size=8)


def _fit(root: Path, args: dict, model: TinyModel, data: int, **kwargs) -> str:
    callback = prov4ml.Prov4MLCallback(**args)
    fit_args = {"ckpt_path": kwargs.pop("ckpt_path")} if "ckpt_path" in kwargs else {}
    trainer = fast_trainer(root, [callback], limit_val_batches=0, **{"max_epochs": 1, **kwargs})
    trainer.fit(model, _loader(data), **fit_args)
    return callback.run_id


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lineage")
    store = tmp / "mlflow"
    args = {"prov_user_namespace": "www.example.org", "experiment_name": f"lineage-{uuid.uuid4().hex[:6]}",
            "provenance_save_dir": str(tmp / "prov"), "mlflow_save_dir": str(store)}
    uri = f"sqlite:///{store}/mlflow.db"
    X, Y = 1, 2
    torch.manual_seed(0)
    ids = {"A": _fit(tmp / "a", args, TinyModel(), X)}
    prov4ml.wait_for_mlflow()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    a_run = client.get_run(ids["A"])
    (a_model,) = client.search_logged_models(experiment_ids=[a_run.info.experiment_id],
                                             filter_string=f"source_run_id = '{ids['A']}'")
    (a_ckpt,) = sorted((tmp / "a" / "checkpoints").glob("*.ckpt"))
    ids["B"] = _fit(tmp / "b", args, load_model(uri, f"models:/{a_model.model_id}"), Y)
    torch.manual_seed(0)  # C: the same architecture and seed as A, from scratch: equal initial weights, no link
    ids["C"] = _fit(tmp / "c", args, TinyModel(), Y)
    # D in an experiment of its own: a callback of A's experiment would adopt A's run from the checkpoint (a resume)
    ids["D"] = _fit(tmp / "d", {**args, "experiment_name": args["experiment_name"] + "-d"}, TinyModel(), Y,
                    ckpt_path=str(a_ckpt), max_epochs=2)
    ids["E"] = _fit(tmp / "e", args, TinyModel.load_from_checkpoint(a_ckpt), Y)
    net = TinyModel()  # F: a plain loop
    net.load_state_dict(torch.load(a_ckpt, weights_only=True)["state_dict"])
    prov4ml.start_run(**args)
    ids["F"] = prov4ml.get_run_id()
    prov4ml.log_model_memory_footprint(net, "net")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for x, y in _loader(Y):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    prov4ml.log_model(net, "net", register=False)
    prov4ml.end_run()
    prov4ml.wait_for_mlflow()
    docs = {k: Path(client.download_artifacts(v, f"prov/provgraph_{v}.json", str(tmp / "dl" / k)))
            for k, v in ids.items()}
    return {"ids": ids, "uri": uri, "docs": docs, "client": client, "a_model": a_model.model_id, "tmp": tmp}


def _earlier(doc_path: Path) -> dict[str, set[str]]:
    """{entity of this run: identifiers of the other runs' entities it derives from}"""
    doc = read_prov(doc_path)
    earlier = {str(e.identifier) for e in by_type(doc, "EarlierRunWeights")}
    out: dict[str, set[str]] = {}
    for rel in records_of(doc, "wasDerivedFrom"):
        gen, used = (str(v) for _, v in rel.formal_attributes[:2])
        if used in earlier:
            out.setdefault(gen, set()).add(used)
    return out


def test_the_store_finds_the_run_that_produced_weights(runs):
    client, a = runs["client"], runs["ids"]["A"]
    doc = read_prov(runs["docs"]["A"])
    (model,) = by_type(doc, "Model")
    digest = attr(model, "state_dict_sha256")
    exps = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(exps, f"tags.`prov4ml.weights.{digest}` LIKE '%'")
    assert [r.info.run_id for r in found] == [a]
    held = json.loads(found[0].data.tags[f"prov4ml.weights.{digest}"])
    assert held["ns"] == "http://www.example.org/" and ["model", "TinyModel", "v1"] in held["ids"]


@pytest.mark.parametrize("run", ["B", "D", "E", "F"])
def test_initial_weights_derive_from_the_earlier_runs_entities(runs, run):
    a = runs["ids"]["A"]
    links = _earlier(runs["docs"][run])
    assert len(links) == 1, links  # one entity of this run: its initial (or restored) weights
    (initial, sources), = links.items()
    assert ".initial" in initial
    a_doc = read_prov(runs["docs"]["A"])
    a_ids = {str(r.identifier) for r in a_doc.get_records() if r.is_element()}
    assert sources and sources <= a_ids  # named as A's own document names them
    doc = read_prov(runs["docs"][run])
    weights = {str(e.identifier): attr(e, "state_dict_sha256") for e in by_type(doc, "ModelState")}
    a_weights = {str(e.identifier): attr(e, "state_dict_sha256") for e in a_doc.get_records()
                 if e.is_element() and attr(e, "state_dict_sha256")}
    assert {a_weights[s] for s in sources} == {weights[initial]}  # an edge only where the hashes match
    for e in by_type(doc, "EarlierRunWeights"):
        assert attr(e, "run_id") == a and attr(e, "provenance_file").endswith(f"prov/provgraph_{a}.json")


def test_a_run_from_scratch_links_to_nothing(runs):
    doc = read_prov(runs["docs"]["C"])
    assert _earlier(runs["docs"]["C"]) == {} and by_type(doc, "EarlierRunWeights") == []
    # each fit has its initial and its final weights (the final ones generated by its last epoch)
    (initial,) = [e for e in by_type(doc, "ModelState") if str(e.identifier).endswith(".initial")]
    a_initial = next(e for e in by_type(read_prov(runs["docs"]["A"]), "ModelState")
                     if str(e.identifier).endswith(".initial"))
    # the same seed gave equal initial weights; only produced weights are looked up
    assert attr(initial, "state_dict_sha256") == attr(a_initial, "state_dict_sha256")


def _lineage(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main(["lineage", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _fingerprint(doc_path: Path) -> str:
    (dataset,) = by_type(read_prov(doc_path), "Dataset")
    return attr(dataset, "fingerprint")


@pytest.mark.parametrize("where", ["store", "folder"])
def test_downstream_of_a_dataset_lists_every_run_and_model_it_touched(runs, capsys, where):
    ids = runs["ids"]
    source = ["--tracking-uri", runs["uri"]] if where == "store" else [str(runs["tmp"] / "dl")]
    answer = _lineage(capsys, *source, "--downstream", _fingerprint(runs["docs"]["A"]))
    assert {r["run_id"] for r in answer["runs"]} == {ids[k] for k in "ABDEF"}  # not C
    model_runs = {m["run_id"] for m in answer["models"]}
    assert {ids[k] for k in "ABEF"} <= model_runs and ids["C"] not in model_runs
    assert ids["C"] not in {c["run_id"] for c in answer["checkpoints"]}
    assert {c["run_id"] for c in answer["checkpoints"]} >= {ids["A"], ids["B"], ids["D"], ids["E"]}


def test_upstream_of_a_fine_tuned_model_lists_both_datasets_and_the_earlier_run(runs, capsys):
    ids = runs["ids"]
    b_doc = read_prov(runs["docs"]["B"])
    (b_model,) = by_type(b_doc, "Model")
    answer = _lineage(capsys, "--tracking-uri", runs["uri"], "--upstream", attr(b_model, "model_uri"))
    assert {r["run_id"] for r in answer["runs"]} == {ids["A"], ids["B"]}
    fingerprints = {d["fingerprint"] for d in answer["datasets"]}
    assert fingerprints == {_fingerprint(runs["docs"]["A"]), _fingerprint(runs["docs"]["C"])}  # X and Y
    assert {c["run_id"] for c in answer["code"]} == {ids["A"], ids["B"]}
    assert any(m["run_id"] == ids["A"] for m in answer["models"])


def test_text_answer_and_errors(runs, capsys):
    ids = runs["ids"]
    capsys.readouterr()
    assert main(["lineage", "--tracking-uri", runs["uri"], "--downstream", ids["C"]]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"downstream of {ids['C']}") and ids["C"] in out and ids["A"] not in out
    assert main(["lineage", "--tracking-uri", runs["uri"], "--downstream", "no-such-thing"]) == 2
    assert "names nothing" in capsys.readouterr().err
    assert main(["lineage", "--tracking-uri", runs["uri"], "--downstream", ids["C"], "--json", "--format", "svg"]) == 2
    assert "use one of them" in capsys.readouterr().err
    assert main(["lineage", "--tracking-uri", runs["uri"], "--downstream", ids["C"], "-o", "x.png", "--format",
                 "svg"]) == 2
    assert "suffix .png" in capsys.readouterr().err


needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")
_SVG = "{http://www.w3.org/2000/svg}"
_XLINK = "{http://www.w3.org/1999/xlink}"


def _drawing(svg: Path) -> tuple[dict[str, str], dict[str, str], set[tuple[str, str]]]:
    """What ``dot`` drew: {node name: its PROV identifier (its tooltip's first line)}, {cluster name:
    its label}, and the edges between node names (drawn cause -> effect: PROV's object first)."""
    root = ET.parse(svg).getroot()
    nodes, clusters, edges = {}, {}, set()
    for g in root.iter(f"{_SVG}g"):
        title = g.findtext(f"{_SVG}title")
        if g.get("class") == "node":
            link = next(g.iter(f"{_SVG}a"), None)
            if link is not None:
                nodes[title] = link.get(f"{_XLINK}title").split("\n", 1)[0]
        elif g.get("class") == "cluster":
            clusters[title] = "".join(t.text or "" for t in g.iter(f"{_SVG}text"))
        elif g.get("class") == "edge":
            a, b = title.split("->")
            edges.add((a, b))
    return nodes, clusters, edges


@needs_dot
def test_downstream_drawn_as_svg_one_cluster_per_run_and_the_links_between_runs(runs, tmp_path, capsys):
    ids, docs = runs["ids"], runs["docs"]
    out = tmp_path / "down.svg"
    capsys.readouterr()
    assert main(["lineage", "--tracking-uri", runs["uri"], "--downstream", _fingerprint(docs["A"]),
                 "--format", "svg", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.with_suffix(".dot").is_file()
    nodes, clusters, edges = _drawing(out)
    runs_drawn = [label for name, label in clusters.items() if name.startswith("cluster_run_")]
    for k in "ABDEF":  # one cluster per run, named by its run id
        assert sum(ids[k][:8] in label for label in runs_drawn) == 1, (k, runs_drawn)
    assert len(runs_drawn) == 5 and not any(ids["C"] in ident for ident in nodes.values())  # not C
    by_ident = {ident: name for name, ident in nodes.items()}
    (dataset,) = by_type(read_prov(docs["A"]), "Dataset")
    x = by_ident[dataset.identifier.uri]
    in_run = {k: {name for name, ident in nodes.items() if f"run_{ids[k]}" in ident} for k in ids}
    assert any(a == x and b in in_run["A"] for a, b in edges)  # A used X
    for k in "BDEF":  # the weights each started from derive from A's entities: an edge from A's run to k's
        doc = read_prov(docs[k])
        earlier = {e.identifier.uri for e in by_type(doc, "EarlierRunWeights")}
        links = {(used.uri, gen.uri) for rel in records_of(doc, "wasDerivedFrom")
                 for (_, gen), (_, used) in [rel.formal_attributes[:2]] if used.uri in earlier}
        assert links and all(f"run_{ids['A']}" in a and f"run_{ids[k]}" in b for a, b in links)
        assert {(by_ident[a], by_ident[b]) for a, b in links} <= edges
    # the runs one under the other in start order (time runs down): A's cluster above B's
    root = ET.parse(out).getroot()
    tops = {}
    for g in root.iter(f"{_SVG}g"):
        if g.get("class") == "cluster" and g.findtext(f"{_SVG}title", "").startswith("cluster_run_"):
            label = "".join(t.text or "" for t in g.iter(f"{_SVG}text"))
            tops[next(k for k in "ABDEF" if ids[k][:8] in label)] = float(next(g.iter(f"{_SVG}text")).get("y"))
    assert tops["A"] < tops["B"] < tops["F"]


@pytest.fixture(scope="module")
def browser():
    chrome = Chromium()
    yield chrome
    chrome.close()


@needs_dot
@requires_chromium
def test_upstream_drawn_as_a_page_chromium_shows_both_runs(runs, tmp_path, capsys, browser):
    ids = runs["ids"]
    (b_model,) = by_type(read_prov(runs["docs"]["B"]), "Model")
    page = tmp_path / "up.html"
    assert main(["lineage", "--tracking-uri", runs["uri"], "--upstream", attr(b_model, "model_uri"),
                 "-o", str(page)]) == 0  # the format from the suffix
    browser.open(page.as_uri(), "window.provView !== undefined")
    assert browser.evaluate("document.querySelector('h1').textContent").startswith("upstream of ")
    clusters = browser.evaluate("Array.from(document.querySelectorAll('.pane:not([hidden]) g.cluster'))"
                                ".filter(g => g.querySelector('title').textContent.startsWith('cluster_run_'))"
                                ".map(g => g.textContent)")
    assert len(clusters) == 2 and any(ids["A"][:8] in c for c in clusters) and any(ids["B"][:8] in c for c in clusters)
    drawn = browser.evaluate("Object.values(provView.data.levels['2'].nodes).map(n => [n.type, n.id])")
    fingerprints = {attr(d, "fingerprint") for k in "AB" for d in by_type(read_prov(runs["docs"][k]), "Dataset")}
    datasets = [i for t, i in drawn if t == "Dataset"]
    assert len(datasets) == 2 and {t for t, _ in drawn} >= {"Run", "Fit", "Dataset", "Model", "ModelState"}
    # the page's lineage walk, from B's model, lights both runs' datasets (X through A's model)
    lit = browser.evaluate("(() => { const b = " + json.dumps(b_model.identifier.uri) + """;
        const nodes = provView.data.levels['2'].nodes;
        provView.lineage(Object.keys(nodes).find(k => nodes[k].id === b), true);
        return Array.from(document.querySelectorAll('.pane:not([hidden]) g.node.lit'))
            .map(g => nodes[g.id].attrs['p4l:fingerprint']).filter(f => f);
    })()""")
    assert set(lit) == fingerprints
    assert browser.evaluate("document.querySelectorAll('button[data-level]').length") == 0  # one level only


#: docs/lineage.md's query: the models downstream of a dataset, in the one document of every run
DOWNSTREAM_OF_A_DATASET = """
PREFIX prov: <http://www.w3.org/ns/prov#>
PREFIX p4l: <https://w3id.org/prov4ml-lightning/ns#>
SELECT DISTINCT ?model ?run WHERE {
  ?dataset a p4l:Dataset ; p4l:fingerprint ?fingerprint .
  FILTER(STRSTARTS(STR(?fingerprint), "%s"))
  ?model a p4l:Model ;
         (prov:wasGeneratedBy/(^p4l:partOf)*/prov:used|prov:wasDerivedFrom)+ ?dataset ;
         prov:wasGeneratedBy/p4l:partOf*/p4l:run_id ?run .
}"""


@pytest.mark.parametrize("where", ["store", "folder"])
def test_export_all_is_one_graph_a_sparql_query_follows_across_runs(runs, tmp_path, where):
    import rdflib

    ids = runs["ids"]
    source = ["--tracking-uri", runs["uri"]] if where == "store" else [str(runs["tmp"] / "dl")]
    out = tmp_path / "all.ttl"
    assert main(["export", "--all", *source, "--format", "ttl", "-o", str(out)]) == 0
    graph = rdflib.Graph().parse(out)
    rows = graph.query(DOWNSTREAM_OF_A_DATASET % _fingerprint(runs["docs"]["A"])[:16])
    assert {str(run) for _, run in rows} == {ids[k] for k in "ABDEF"}  # not C
    docs_text = (Path(__file__).resolve().parents[2] / "docs" / "lineage.md").read_text(encoding="utf-8")
    assert DOWNSTREAM_OF_A_DATASET.strip().replace('"%s"', '"069a96b0"') in docs_text
