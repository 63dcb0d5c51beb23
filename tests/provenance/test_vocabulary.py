"""The ``p4l:`` vocabulary shipped in the package (assets/vocabulary.ttl, read with rdflib): every term
a real document uses is defined there, each with a label, a comment and its PROV superclass, and
docs/vocabulary.md is its up-to-date rendering. (The Lightning runs' documents are checked in
test_lineage_sparql.py.)"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import rdflib
import tomllib
import torch

import prov4ml_lightning as prov4ml
from prov4ml_lightning.provenance import load_document
from prov4ml_lightning.provenance.files import serialize_document
from prov4ml_lightning.provenance.vocab import (
    P4L_NS,
    VOCABULARY_FILE,
    undefined_terms,
    vocabulary_graph,
    vocabulary_markdown,
)

ROOT = Path(__file__).resolve().parents[2]
RDFS = rdflib.RDFS
OWL = rdflib.OWL
PROV = rdflib.Namespace("http://www.w3.org/ns/prov#")
P4L = rdflib.Namespace(P4L_NS)


def test_docs_vocabulary_is_the_rendering_of_the_shipped_file():
    assert (ROOT / "docs" / "vocabulary.md").read_text(encoding="utf-8") == vocabulary_markdown(), \
        "regenerate: python -c 'from prov4ml_lightning.provenance.vocab import vocabulary_markdown as m; " \
        "open(\"docs/vocabulary.md\", \"w\").write(m())'"


def test_the_file_is_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["prov4ml_lightning"]
    relative = Path(str(VOCABULARY_FILE)).relative_to(ROOT / "src" / "prov4ml_lightning").as_posix()
    assert any(fnmatch.fnmatch(relative, p) for p in patterns)


def test_every_term_has_label_comment_and_a_prov_anchor():
    vocab = vocabulary_graph()
    terms = {s for s in vocab.subjects(RDFS.label, None) if str(s).startswith(P4L_NS)}
    assert len(terms) > 150
    classes = set(vocab.subjects(rdflib.RDF.type, OWL.Class)) & terms
    for term in terms:
        assert vocab.value(term, RDFS.comment), term
    prov_classes = {PROV.Activity, PROV.Entity, PROV.Agent, PROV.Plan, PROV.Collection}
    for cls in classes - {P4L.TermFamily}:
        assert set(vocab.objects(cls, RDFS.subClassOf)) & prov_classes, cls
    mls = rdflib.Namespace("http://www.w3.org/ns/mls#")
    assert (P4L.Parameter, RDFS.subClassOf, mls.HyperParameterSetting) in vocab
    assert (P4L.Model, RDFS.subClassOf, mls.Model) in vocab and (P4L.Dataset, RDFS.subClassOf, mls.Dataset) in vocab
    assert (P4L.Run, RDFS.subClassOf, mls.Run) in vocab
    assert (P4L.experimenter, rdflib.RDF.type, PROV.Role) in vocab


def test_every_p4l_term_of_a_functional_run_is_defined(run_args, tmp_path):
    artifact = tmp_path / "notes.txt"
    artifact.write_text("x")
    prov4ml.start_run(**run_args, tags={"team": "a"}, person_name="Ada", organization="Lab")
    prov4ml.log_param("lr", 0.1)
    prov4ml.log_metric("loss", 0.5, prov4ml.Context.TRAINING, step=0)
    prov4ml.log_artifact(str(artifact))
    prov4ml.log_model(torch.nn.Linear(2, 1), "net")
    out = prov4ml.end_run()
    graph = rdflib.Graph().parse(data=serialize_document(load_document(out.prov_json), "ttl"), format="turtle")
    used = {str(t) for triple in graph for t in triple if str(t).startswith(P4L_NS)}
    assert len(used) > 40 and str(P4L["tag_team"]) in used  # a family member
    assert undefined_terms(graph) == set()
    graph.add((P4L.made_up_term, P4L.another_one, rdflib.Literal(1)))
    assert undefined_terms(graph) == {"made_up_term", "another_one"}
