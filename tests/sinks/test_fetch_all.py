"""Every run's PROV document of a store (``fetch_all_provenance``, what ``prov4ml lineage`` and
``export --all`` read): an embedded SQLite store is read with ``sqlite3`` alone, and must answer
exactly what MLflow's own ``search_runs`` path answers, deleted runs and experiments included,
runs without the tag or without the file left out; MLflow is not even imported for it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from prov4ml_lightning.sinks.mlflow.fetch import _fetch_all_with_mlflow, _sqlite_tagged_runs, fetch_all_provenance
from prov4ml_lightning.sinks.mlflow.rules import PROVENANCE_TAG

pytestmark = pytest.mark.slow  # a new MLflow store, and a new interpreter


def _tagged(client: MlflowClient, exp: str, *, tag: bool = True, write: bool = True) -> str:
    run = client.create_run(exp)
    run_id = run.info.run_id
    if tag:
        client.set_tag(run_id, PROVENANCE_TAG, f"prov/provgraph_{run_id}.json")
    if write:
        target = Path(run.info.artifact_uri.removeprefix("file://")) / "prov" / f"provgraph_{run_id}.json"
        target.parent.mkdir(parents=True)
        target.write_text("{}", encoding="utf-8")
    client.set_terminated(run_id)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("fetch-all")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    first = client.create_experiment("first", artifact_location=(root / "a1").as_uri())
    second = client.create_experiment("second", artifact_location=(root / "a2").as_uri())
    runs = {"plain": _tagged(client, first), "other_experiment": _tagged(client, second),
            "deleted": _tagged(client, first), "untagged": _tagged(client, first, tag=False),
            "no_file": _tagged(client, first, write=False)}
    client.delete_run(runs["deleted"])
    third = client.create_experiment("third", artifact_location=(root / "a3").as_uri())
    runs["deleted_experiment"] = _tagged(client, third)
    client.delete_experiment(third)
    return {"uri": uri, "root": root, "runs": runs}


def _run_ids(paths: list[Path]) -> set[str]:
    return {p.stem.removeprefix("provgraph_") for p in paths}


def test_sqlite_read_answers_what_mlflow_answers(store, tmp_path):
    runs = store["runs"]
    fast = fetch_all_provenance(store["uri"], tmp_path / "fast")
    slow = _fetch_all_with_mlflow(store["uri"], tmp_path / "slow", 8)
    assert sorted(fast) == sorted(slow)
    assert _run_ids(fast) == {runs[k] for k in ("plain", "other_experiment", "deleted", "deleted_experiment")}
    assert all(p.is_file() and p.is_relative_to(store["root"]) for p in fast)  # read in place


def test_mlflow_answers_where_the_sqlite_read_does_not_apply(store, tmp_path, monkeypatch):
    db = Path(store["uri"].removeprefix("sqlite:///"))
    assert len(_sqlite_tagged_runs(db)) == 5  # the tagged runs, the one without its file included
    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", "true")  # runs are scoped to a workspace: MLflow decides
    assert _sqlite_tagged_runs(db) is None
    monkeypatch.delenv("MLFLOW_ENABLE_WORKSPACES")
    other = tmp_path / "other.db"  # an SQLite file that is no MLflow store
    import sqlite3

    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    assert _sqlite_tagged_runs(other) is None


def test_the_embedded_store_is_read_without_importing_mlflow(store, tmp_path):
    code = ("import sys; from prov4ml_lightning.sinks.mlflow.fetch import fetch_all_provenance; "
            f"paths = fetch_all_provenance({store['uri']!r}, {str(tmp_path)!r}); "
            "print(len(paths), any(m == 'mlflow' or m.startswith('mlflow.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["4", "False"]
