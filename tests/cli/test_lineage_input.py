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
