"""Unit tests of provenance/checks.py on a document built from a small RunSnapshot."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from prov4ml_lightning.provenance import build_document, to_json_text, write_document
from prov4ml_lightning.provenance.checks import Problem, check_document, check_file
from tests.provenance.snapshots import RUN, snapshot


@pytest.fixture
def good() -> dict:
    return json.loads(to_json_text(build_document(snapshot())))


def test_a_built_document_passes_every_check_in_every_form(good, tmp_path: Path):
    doc = build_document(snapshot())
    assert check_document(doc) == []  # a ProvDocument, with the PROV-N, XML and Turtle round trips
    assert check_document(good) == []  # parsed PROV-JSON
    assert check_file(write_document(doc, tmp_path / "p.json")) == []


def test_a_dangling_reference_is_found_with_the_relation_id(good):
    broken = copy.deepcopy(good)
    del broken["entity"][f"user:{RUN}.param.lr"]
    problems = check_document(broken, round_trip=False)
    refs = [p for p in problems if p.check == "reference"]
    assert len(refs) == 1 and refs[0].record_id.startswith("_:id")
    assert f"used prov:entity points at user:{RUN}.param.lr, which is not declared" in refs[0].message
    assert str(refs[0]).startswith(f"[reference] {refs[0].record_id}: ")


def test_an_activity_ending_before_it_starts_is_a_time_problem(good):
    broken = copy.deepcopy(good)
    epoch = broken["activity"][f"user:{RUN}.epoch_0"]
    epoch["prov:endTime"] = "2000-01-01T00:00:00+00:00"
    problems = check_document(broken, round_trip=False)
    assert Problem(f"user:{RUN}.epoch_0", "time",
                   "activity ends (2000-01-01T00:00:00+00:00) before it starts (2023-11-14T22:13:21+00:00)") in problems


def test_an_identifier_that_is_entity_and_activity_is_a_typing_problem(good):
    broken = copy.deepcopy(good)
    broken["entity"][f"user:{RUN}"] = {}
    assert [p.check for p in check_document(broken, round_trip=False)] == ["typing"]


def test_a_schema_violation_is_found(good):
    broken = copy.deepcopy(good)
    broken["entity"][f"user:{RUN}.param.lr"]["prov:value"] = {"no": "dollar"}
    assert any(p.check == "schema" for p in check_document(broken, round_trip=False))


@pytest.mark.parametrize(("document", "message"), [("{not json", "not JSON: "), ("[1, 2]", "got list")])
def test_text_that_is_no_prov_json_is_one_json_problem(document, message):
    (problem,) = check_document(document)
    assert problem.check == "json" and message in problem.message


def test_check_file_of_a_missing_file_raises(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        check_file(tmp_path / "missing.json")


def test_one_id_recorded_with_two_sha256_is_an_identity_problem(good):
    ident, body = next((i, b) for i, b in good["entity"].items()
                       if isinstance(b, dict) and any(str(k).endswith(":sha256") for k in b))
    assert not [p for p in check_document(good, round_trip=False) if p.check == "identity"]
    key = next(k for k in body if str(k).endswith(":sha256"))
    other = {**body, key: "0" * 64}
    broken = copy.deepcopy(good)
    broken["entity"][ident] = [body, other]  # PROV-JSON's form of two records under one id
    (problem,) = [p for p in check_document(broken, round_trip=False) if p.check == "identity"]
    assert problem.record_id == ident and "2 different sha256" in problem.message
