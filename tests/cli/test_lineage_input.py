"""``prov4ml lineage`` refuses what it cannot read, in one line and exit status 2, fast: a plain
folder or ``file:`` URI as --tracking-uri (MLflow's file store), an unreachable server; a folder
holding ``mlflow.db`` is read as that SQLite store, and says so."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from prov4ml_lightning.cli import main
from prov4ml_lightning.cli.lineage import store_uri
from tests.mlflow_server import free_port


def _lineage(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["lineage", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("form", ["path", "file"])
def test_a_plain_folder_is_refused_in_one_line(tmp_path, capsys, form):
    uri = str(tmp_path) if form == "path" else tmp_path.as_uri()
    code, out, err = _lineage(capsys, "--tracking-uri", uri, "--downstream", "abcdef12")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "sqlite:///" in err and "Traceback" not in err, err


def test_a_folder_holding_mlflow_db_is_read_as_that_store(tmp_path, capsys):
    sqlite3.connect(tmp_path / "mlflow.db").close()
    assert store_uri(str(tmp_path)) == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert "reading sqlite:///" in capsys.readouterr().err


def test_an_unreachable_server_fails_in_seconds(capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    begin = time.monotonic()
    code, out, err = _lineage(capsys, "--tracking-uri", uri, "--downstream", "abcdef12")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "no tracking server" in err, err
    assert time.monotonic() - begin < 10
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # set for the call only


@pytest.fixture
def two_runs(tmp_path):
    """Run A's document (its fit used dataset X, fingerprint abab...) and run B's, whose initial
    weights derive from A's model; written as the files ``lineage`` reads from a folder."""
    import json

    from tests.provenance.test_runs_graph_drawing import A, B, _doc, _q

    a = _doc(A, "2026-01-01T10:00:00+00:00",
             {f"user:run_{A}.dataset.x": {"prov:type": _q("p4l:Dataset"), "p4l:fingerprint": "ab" * 32}},
             {"used": {"_:u": {"prov:activity": f"user:run_{A}.fit_1.epoch_0",
                               "prov:entity": f"user:run_{A}.dataset.x"}}})
    initial = f"user:run_{B}.model_state.initial"
    b = _doc(B, "2026-01-01T11:00:00+00:00",
             {initial: {"prov:type": _q("p4l:ModelState")},
              f"user:run_{A}.model": {"prov:type": _q("p4l:EarlierRunWeights"), "p4l:run_id": A}},
             {"used": {"_:u": {"prov:activity": f"user:run_{B}.fit_1.epoch_0", "prov:entity": initial}},
              "wasDerivedFrom": {"_:d": {"prov:generatedEntity": initial, "prov:usedEntity": f"user:run_{A}.model"}}})
    for run, doc in ((A, a), (B, b)):
        (tmp_path / f"provgraph_{run}.json").write_text(json.dumps(doc))
    return tmp_path


def test_upstream_of_a_dataset_is_refused(two_runs, capsys):
    code, out, err = _lineage(capsys, str(two_runs), "--upstream", "abab" * 4)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--upstream takes a model, run or checkpoint" in err and "--downstream" in err, err
    code, out, _err = _lineage(capsys, str(two_runs), "--downstream", "abab" * 4)
    assert code == 0 and "runs (2)" in out  # the same fingerprint, downstream: A and B


def test_a_too_short_prefix_says_so(two_runs, capsys):
    code, out, err = _lineage(capsys, str(two_runs), "--downstream", "abab")
    assert code == 2 and out == "" and "prefix too short (6 hex digits minimum)" in err, err
