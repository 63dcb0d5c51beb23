"""The responsible person and organisation (issue 13): the identity options of ``start_run`` and
their environment variables, recorded as ``prov:Person`` / ``prov:Organization`` and answered by
query (c) over the PROV-O export (rdflib)."""

from __future__ import annotations

import getpass

import pytest
import rdflib

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Prov4MLInputError
from prov4ml_lightning.provenance import load_document, local_id
from prov4ml_lightning.provenance.checks import check_file
from prov4ml_lightning.provenance.files import serialize_document
from prov4ml_lightning.provenance.queries import QUERIES
from prov4ml_lightning.tracking.identity import IDENTITY_ENV, check_orcid


@pytest.fixture(autouse=True)
def _no_identity_env(monkeypatch):
    for var in IDENTITY_ENV.values():
        monkeypatch.delenv(var, raising=False)


def _responsible(out) -> list[dict[str, str | None]]:
    assert check_file(out.prov_json) == []  # what `prov4ml validate` checks
    graph = rdflib.Graph().parse(data=serialize_document(load_document(out.prov_json), "ttl"), format="turtle")
    rows = graph.query(QUERIES["c_responsible"])
    return [{k: (str(row[k]) if row[k] is not None else None) for k in map(str, rows.vars)} for row in rows]


def test_person_and_organization_from_arguments(run_args):
    prov4ml.start_run(**run_args, person_name="Ada Lovelace", person_email="mailto:ada@example.org",
                      person_orcid="0000-0002-1825-0097", organization="Analytical Engines Ltd")
    out = prov4ml.end_run()
    (row,) = _responsible(out)
    assert row["person"] == "https://orcid.org/0000-0002-1825-0097"  # the ORCID IRI is the identifier
    assert row["name"] == "Ada Lovelace" and row["mbox"] == "mailto:ada@example.org"
    assert row["orcid"] == row["person"] and row["login"] == getpass.getuser()
    assert row["org_name"] == "Analytical Engines Ltd" and row["organization"].startswith("http://www.example.org/")


def test_identity_from_the_environment_and_arguments_win(run_args, monkeypatch):
    monkeypatch.setenv("PROV4ML_PERSON_NAME", "Env Name")
    monkeypatch.setenv("PROV4ML_PERSON_EMAIL", "env@example.org")
    monkeypatch.setenv("PROV4ML_ORGANIZATION", "Env Org")
    prov4ml.start_run(**run_args, person_name="Grace Hopper")
    out = prov4ml.end_run()
    (row,) = _responsible(out)
    assert (row["name"], row["mbox"], row["org_name"]) == ("Grace Hopper", "mailto:env@example.org", "Env Org")
    # no ORCID: the e-mail names the agent in the user's namespace
    assert row["orcid"] is None and row["person"] == "http://www.example.org/person." + local_id("env@example.org")


def test_without_identity_the_login_is_the_person(run_args):
    prov4ml.start_run(**run_args)
    out = prov4ml.end_run()
    (row,) = _responsible(out)
    assert row["name"] is None and row["organization"] is None and row["login"] is None
    assert row["person"].endswith(f"person.{getpass.getuser()}")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"person_orcid": "0000-0002-1825-0098"}, "start_run: person_orcid: '0000-0002-1825-0098' is not a valid ORCID"),
    ({"person_orcid": "orcid.org/1234"}, "start_run: person_orcid must be an ORCID iD"),
    ({"person_email": "ada at example.org"}, "start_run: person_email must be an e-mail address"),
    ({"person_email": "ada@localhost"}, "start_run: person_email must be an e-mail address"),
    ({"person_name": "  "}, "start_run: person_name must be a non-empty name"),
    ({"organization": 3}, "start_run: organization must be a string or None"),
])
def test_bad_identity_is_refused_naming_the_call(run_args, kwargs, message):
    with pytest.raises(Prov4MLInputError, match=message):
        prov4ml.start_run(**run_args, **kwargs)


def test_bad_environment_variable_is_named(run_args, monkeypatch):
    monkeypatch.setenv("PROV4ML_PERSON_ORCID", "not-an-orcid")
    with pytest.raises(Prov4MLInputError, match="start_run: the environment variable PROV4ML_PERSON_ORCID must be"):
        prov4ml.start_run(**run_args)
    from prov4ml_lightning.lightning.callback import Prov4MLCallback

    with pytest.raises(Prov4MLInputError, match="Prov4MLCallback: the environment variable PROV4ML_PERSON_ORCID"):
        Prov4MLCallback(**run_args)


@pytest.mark.parametrize("given", ["0000-0002-1694-233X", "https://orcid.org/0000-0002-1694-233x",
                                   "orcid:0000-0002-1694-233X", "http://orcid.org/0000-0002-1694-233X"])
def test_orcid_forms_normalise_to_the_iri(given):
    # 0000-0002-1694-233X: ORCID's documented example of an X check digit
    assert check_orcid(given, "t") == "https://orcid.org/0000-0002-1694-233X"
