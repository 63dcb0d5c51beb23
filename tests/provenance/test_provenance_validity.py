"""The PROV documents the project writes are valid: PROV-JSON schema, round trips through PROV-N,
PROV-XML and PROV-O, referential integrity, event ordering, typed literals, stable identifiers.

Documents come from a real functional-API run (and, below, from the Lightning callback); the
checks of ``prov4ml_lightning.provenance.checks`` are themselves tested on broken documents, so a check that
cannot fail would show up here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import uuid
from pathlib import Path

import jsonschema
import prov
import pytest
import torch

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Context
from prov4ml_lightning import provenance as _prov
from prov4ml_lightning.provenance import read_document
from prov4ml_lightning.provenance.checks import check_document, check_file
from prov4ml_lightning.provenance.files import _record_keys
from prov4ml_lightning.provenance.vocab import MLS_NS, P4L_NS, PROVML_NS
from tests.helpers import attr, by_type, read_prov

SCHEMA = Path(prov.__file__).parent / "tests" / "schemas" / "prov-json.schema.json"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "provenance-model.md"
_XSD_TYPES = {"xsd:int", "xsd:long", "xsd:integer", "xsd:double", "xsd:dateTime", "xsd:QName", "xsd:boolean",
              "xsd:anyURI"}


def _run(args: dict, tmp: Path) -> tuple[prov4ml.RunOutputs, prov4ml.RunOutputs]:
    """A run using every record type the functional API writes, with a nested child run."""
    data = tmp / "data.csv"
    data.write_text("x,y\n1,2\n")
    prov4ml.start_run(**args, provenance_formats=("json", "provn", "ttl", "xml"), run_name="parent")
    prov4ml.log_params({"lr": 0.01, "epochs": 3, "nesterov": True, "optim": {"name": "sgd"}, "big": 2**40,
                        "layers": [64, 32], "betas": (0.9, 0.999), "names": ["a", "b"], "scheduler": None})
    for step in range(5):
        prov4ml.log_metric("loss", 1.0 / (step + 1), Context.TRAINING, step=step)
        prov4ml.log_metric("acc", torch.tensor(0.2 * step), Context.VALIDATION, step=step)
    prov4ml.log_metric("nan_metric", float("nan"), Context.TESTING)
    prov4ml.log_metric("old", 1.0, Context.TRAINING, timestamp=0)  # a user timestamp from 1970
    prov4ml.log_artifact(data, Context.TRAINING)
    prov4ml.log_model(torch.nn.Linear(3, 2), "net")
    prov4ml.log_model(torch.nn.Linear(3, 2), "net")  # a revision of the first
    child_args = {**args, "provenance_save_dir": str(tmp / "child")}
    prov4ml.start_run(**child_args, nested=True, run_name="child")
    prov4ml.log_metric("inner", 0.5)
    child = prov4ml.end_run()
    return prov4ml.end_run(), child


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, mlflow_dir) -> tuple[prov4ml.RunOutputs, prov4ml.RunOutputs]:
    tmp = tmp_path_factory.mktemp("validity")
    args = {"prov_user_namespace": "www.example.org", "experiment_name": f"validity-{uuid.uuid4().hex[:8]}",
            "provenance_save_dir": str(tmp / "prov"), "mlflow_save_dir": str(mlflow_dir)}
    with pytest.warns(prov4ml.Prov4MLWarning):  # the NaN metric warns
        return _run(args, tmp)


@pytest.fixture(scope="module")
def documents(outputs) -> list[Path]:
    return [out.prov_json for out in outputs]


# -- the checks of the project on its own documents --------------------------------------------
def test_documents_pass_every_check(documents):
    for path in documents:
        assert check_file(path) == [], path
        assert check_document(read_prov(path), round_trip=False) == []  # a ProvDocument works too


def test_documents_validate_against_the_verbatim_prov_json_schema(documents):
    """The schema file exactly as the prov wheel ships it (no wasEndedBy alias): the project
    writes no end relation, so it needs none."""
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    for path in documents:
        errors = list(validator.iter_errors(json.loads(path.read_text())))
        assert errors == [], [e.message for e in errors]


def test_the_schema_misspelling_is_handled_and_the_schema_still_bites():
    doc = {"prefix": {"ex": "http://example.org/"}, "activity": {"ex:a": {}},
           "wasEndedBy": {"_:e": {"prov:activity": "ex:a"}}}
    verbatim = json.loads(SCHEMA.read_text())
    assert not jsonschema.validators.validator_for(verbatim)(verbatim).is_valid(doc)  # the quirk itself
    assert check_document(doc, round_trip=False) == []
    broken = {**doc, "entity": {"ex:e": {"ex:v": {"type": "xsd:int"}}}}  # a typed literal without "$"
    assert [p.check for p in check_document(broken, round_trip=False)] == ["schema"]


@pytest.mark.parametrize("fmt", ["provn", "xml", "rdf"])
def test_round_trips(documents, fmt):
    for path in documents:
        assert _prov.round_trip(path.read_text(), fmt) == []


def test_end_run_wrote_every_format_and_each_reads_back_equal(outputs, client):
    out = outputs[0]
    original = _record_keys(read_prov(out.prov_json))
    readers = {"provn": {"format": "provn"}, "xml": {"format": "xml"},
               "ttl": {"format": "rdf", "rdf_format": "turtle"}}
    for fmt, kwargs in readers.items():
        path = out.extra[fmt]
        assert path.name == f"provgraph_{out.run_id}.{fmt}"
        # the Turtle adds PROV-O's unqualified shortcuts; read_document drops them before prov.read
        back = read_document(path, "ttl") if fmt == "ttl" else prov.read(str(path), **kwargs)
        assert _record_keys(back) == original, fmt
    uploaded = {a.path for a in client.list_artifacts(out.run_id, "prov")}
    assert {f"prov/provgraph_{out.run_id}.{f}" for f in ("json", "provn", "ttl", "xml")} <= uploaded


# -- typed literals, identifiers, namespaces ---------------------------------------------------------
def _values(data: dict):
    for section, records in data.items():
        if section in ("prefix", "bundle"):
            continue
        for ident, body in records.items():
            for one in body if isinstance(body, list) else [body]:
                for key, value in one.items():
                    for v in value if isinstance(value, list) else [value]:
                        yield ident, key, v


def _assert_typed_literals(paths: list[Path]) -> None:
    for path in paths:
        for ident, key, value in _values(json.loads(path.read_text())):
            if isinstance(value, dict):
                assert value.get("type") in _XSD_TYPES, (ident, key, value)
            else:
                assert isinstance(value, (str, bool, int, float)), (ident, key, value)
                text = str(value)
                assert not re.search(r" object at 0x|^<class |^tensor\(|^array\(|^\(.*\)$|^None$", text), (
                    ident, key, value)
                if text.startswith(("[", "{")):  # containers are JSON text, not a Python repr
                    json.loads(text)


def test_literals_are_typed_never_stringified_objects(documents):
    _assert_typed_literals(documents)
    doc = read_prov(documents[0])
    params = {attr(p, "name"): attr(p, "value") for p in by_type(doc, "Parameter")}
    assert params == {"lr": 0.01, "epochs": 3, "nesterov": True, "optim/name": "sgd", "big": 2**40,
                      "layers": "[64, 32]", "betas": "[0.9, 0.999]", "names": '["a", "b"]', "scheduler": None}
    assert type(params["big"]) is int and type(params["lr"]) is float
    series = {attr(s, "name"): s for s in by_type(doc, "MetricSeries")}
    assert math.isnan(attr(series["nan_metric"], "last_value"))
    assert attr(series["old"], "first_point_time").year == 1970  # the raw time is kept...
    (run,) = by_type(doc, "Run")
    gen = [g for g in doc.get_records() if g.get_type().localpart == "Generation"
           and str(g.formal_attributes[0][1]) == str(series["old"].identifier)]
    assert gen[0].formal_attributes[2][1] >= next(iter(run.get_attribute("prov:startTime")))  # ...the event is not


def test_identifiers_hold_the_run_id_and_are_unique_across_runs(outputs):
    parent, child = (json.loads(o.prov_json.read_text()) for o in outputs)
    for out, data in zip(outputs, (parent, child)):
        for section in ("entity", "activity"):
            for ident, body in data[section].items():
                types = json.dumps(body.get("prov:type"))
                if "p4l:ParentRun" in types or "p4l:ChildRun" in types:
                    continue  # the parent in the child's document, the child in the parent's: by their own ids
                assert f"run_{out.run_id}" in ident, ident
    assert not (set(parent["entity"]) & set(child["entity"]))
    assert f"user:run_{outputs[0].run_id}" in child["activity"]  # declared: no dangling reference
    assert f"user:run_{outputs[1].run_id}" in parent["activity"]  # the parent names its child


def test_namespaces_are_absolute_iris(documents):
    prefixes = json.loads(documents[0].read_text())["prefix"]
    # the folders that files are located in (prov:location: an IRI, PROV-O's range is a prov:Location)
    locations = {p: ns for p, ns in prefixes.items() if p.startswith("loc_")}
    assert {p: ns for p, ns in prefixes.items() if p not in locations} == {
        "user": "http://www.example.org/", "p4l": P4L_NS, "provml": PROVML_NS, "mls": MLS_NS}
    for ns in set(prefixes.values()) - set(locations.values()):
        assert re.match(r"^https?://[^/\s]+/(\S*[/#])?$", ns), ns
    assert "models:/" in locations.values() and any(ns.startswith("file:///") for ns in locations.values())
    for prefix, ns in locations.items():  # named after the folder: the same in every session and run
        assert re.match(r"^(file://|models:)/(\S*/)?$", ns), ns
        assert prefix == f"loc_{hashlib.sha1(ns.encode()).hexdigest()[:8]}"


@pytest.mark.parametrize(("given", "expected"), [
    ("www.example.org", "http://www.example.org/"),
    ("https://example.org/ns", "https://example.org/ns/"),
    ("https://example.org/ns#", "https://example.org/ns#"),
])
def test_seed_style_namespaces_are_normalised(run_args, given, expected):
    prov4ml.start_run(**{**run_args, "prov_user_namespace": given})
    data = json.loads(prov4ml.end_run().prov_json.read_text())
    assert data["prefix"]["user"] == expected


_FAMILIES = [(r"p4l:gpu_\d+_(.+)", r"p4l:gpu_<i>_\1"), (r"p4l:env_.+", "p4l:env_<NAME>"),
             (r"p4l:tag_.+", "p4l:tag_<name>"), (r"p4l:(param|buffer)_bytes_.+", r"p4l:\1_bytes_<dtype>")]


def _family(key: str) -> str:
    """An attribute name as the docs spell its family: ``env_CUDA_VISIBLE_DEVICES`` -> ``env_<NAME>``."""
    for pattern, form in _FAMILIES:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(form)
    return key


def test_every_term_is_documented(documents):
    _assert_terms_documented(documents)


def _assert_terms_documented(paths: list[Path]) -> None:
    """Each p4l/provml/mls type and p4l attribute used is named in docs/provenance-model.md; a
    Fit's own hyperparameters (named after the run's parameters) are one documented family."""
    text = DOCS.read_text()
    terms: set[str] = set()
    for path in paths:
        data = json.loads(path.read_text())
        params = {body.get("p4l:name") for body in data.get("entity", {}).values()
                  if "p4l:Parameter" in json.dumps(body.get("prov:type"))}
        fits = {ident for ident, body in data.get("activity", {}).items()
                if "p4l:Fit" in json.dumps(body.get("prov:type"))}
        for ident, key, value in _values(data):
            if key.startswith("p4l:") and not (ident in fits and key[4:].replace(".", "/") in params):
                terms.add(_family(key))
            if isinstance(value, dict) and value.get("type") == "xsd:QName":
                terms.add(value["$"])

    def documented(term: str) -> bool:
        return f"`{term.split(':', 1)[1]}`" in text or f"`{term}`" in text

    missing = sorted(t for t in terms if t.split(":", 1)[0] in ("p4l", "provml", "mls") and not documented(t))
    assert missing == []


# -- the checks find what they should ----------------------------------------------------------------
@pytest.fixture(scope="module")
def valid(documents) -> dict:
    return json.loads(documents[0].read_text())


def _problems(data: dict) -> set[tuple[str, str]]:
    return {(p.check, p.record_id) for p in check_document(data, round_trip=False)}


def _first(data: dict, section: str, where=lambda body: True) -> str:
    return next(k for k, v in data[section].items() if where(v))


def test_check_finds_an_activity_ending_before_it_starts(valid):
    data = copy.deepcopy(valid)
    run = _first(data, "activity", lambda b: "p4l:Run" in json.dumps(b.get("prov:type")))
    data["activity"][run]["prov:endTime"] = "2000-01-01T00:00:00+00:00"
    assert ("time", run) in _problems(data)


def test_check_finds_dangling_and_mistyped_references(valid):
    data = copy.deepcopy(valid)
    used = _first(data, "used")
    data["used"][used]["prov:entity"] = "user:nowhere"
    gen = _first(data, "wasGeneratedBy")
    data["wasGeneratedBy"][gen]["prov:activity"] = _first(data, "entity")  # an entity as activity
    problems = _problems(data)
    assert ("reference", used) in problems and ("reference", gen) in problems


def test_check_finds_use_before_generation(valid):
    data = copy.deepcopy(valid)
    gen_id = _first(data, "wasGeneratedBy")
    gen = data["wasGeneratedBy"][gen_id]
    run = _first(data, "activity", lambda b: "p4l:Run" in json.dumps(b.get("prov:type")))
    data["used"]["_:early"] = {"prov:activity": run, "prov:entity": gen["prov:entity"],
                               "prov:time": data["activity"][run]["prov:startTime"]}
    gen["prov:time"] = data["activity"][run]["prov:endTime"]
    assert ("time", "_:early") in _problems(data)


def test_check_finds_typing_clashes_and_bad_times(valid):
    data = copy.deepcopy(valid)
    ent = _first(data, "entity")
    data["activity"][ent] = {}
    gen = _first(data, "wasGeneratedBy")
    data["wasGeneratedBy"][gen]["prov:time"] = "yesterday"
    problems = _problems(data)
    assert ("typing", ent) in problems and ("time", gen) in problems and ("schema", gen) in problems


def test_check_file_reports_broken_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert [p.check for p in check_file(bad)] == ["json"]


# -- documents written by the Lightning callback -----------------------------------------------------
@pytest.fixture(scope="module")
def callback_documents(tmp_path_factory, mlflow_dir) -> list[Path]:
    """fit (checkpoints every epoch) + test of the best checkpoint in one run, then a second
    session resumed from the last checkpoint (the document merges both sessions)."""
    from lightning.pytorch import seed_everything
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.lightning_models import TinyDataModule, TinyModel, fast_trainer

    tmp = tmp_path_factory.mktemp("callback-validity")
    args = {"prov_user_namespace": "https://example.org/ns", "experiment_name": f"cb-{uuid.uuid4().hex[:8]}",
            "provenance_save_dir": str(tmp / "prov"), "mlflow_save_dir": str(mlflow_dir)}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("PL_GLOBAL_SEED", raising=False)
        mp.delenv("PL_SEED_WORKERS", raising=False)
        seed_everything(3, verbose=False)
        ckpt = tmp / "ckpt"
        first = prov4ml.Prov4MLCallback(**args)
        trainer = fast_trainer(tmp, [first, ModelCheckpoint(dirpath=ckpt, monitor="val_loss", save_last=True)],
                               max_epochs=2)
        model, data = TinyModel(), TinyDataModule()
        trainer.fit(model, datamodule=data)
        trainer.test(datamodule=data, ckpt_path="best")
        second = prov4ml.Prov4MLCallback(**args, log_model=False)
        fast_trainer(tmp, [second, ModelCheckpoint(dirpath=ckpt, save_last=True)], max_epochs=3).fit(
            TinyModel(), datamodule=TinyDataModule(), ckpt_path=str(ckpt / "last.ckpt"))
    assert second.run_id == first.run_id
    return [second.outputs.prov_json]


@pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")
@pytest.mark.slow
def test_callback_documents_pass_every_check(callback_documents):
    path = callback_documents[0]
    assert check_file(path) == []  # schema, references, time order, PROV-N/XML/Turtle round trips
    schema = json.loads(SCHEMA.read_text())
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(json.loads(path.read_text()))) == []
    doc = read_prov(path)
    assert {"Fit", "TrainingEpoch", "ValidationLoop", "TestLoop", "Checkpoint", "Code", "Environment"} <= {
        t.localpart for r in doc.get_records() if r.is_element() for t in r.get_attribute("prov:type")}
    (run,) = by_type(doc, "Run")
    assert attr(run, "seed") == 3 and attr(run, "seed_source") == "lightning.seed_everything"


@pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")
@pytest.mark.slow
def test_callback_documents_literals_identifiers_and_terms(callback_documents):
    _assert_typed_literals(callback_documents)
    data = json.loads(callback_documents[0].read_text())
    (run,) = by_type(read_prov(callback_documents[0]), "Run")
    for section in ("entity", "activity"):
        assert all(f"run_{attr(run, 'run_id')}" in ident for ident in data[section]), section
    _assert_terms_documented(callback_documents)
