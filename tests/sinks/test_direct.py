"""The embedded store written without MLflow (sinks/mlflow/direct.py) holds what MLflow itself writes.

One run is written twice, the same calls in the same order: through MLflow (``MlflowSink``) into one
store and through :class:`DirectSink` into another; every table of the two databases and every
artifact file are compared (ids, times and folders aside), and the direct store is read back with
``MlflowClient`` and its model loaded with ``mlflow.pytorch``.
"""

from __future__ import annotations

import math
import pickle
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from prov4ml_lightning.sinks.mlflow import direct
from prov4ml_lightning.sinks.mlflow.direct import DirectSink, NeedsMlflow, open_direct
from prov4ml_lightning.sinks.mlflow.sink import MlflowSink
from prov4ml_lightning.sinks.mlflow.store import cached_template

pytestmark = pytest.mark.slow  # MLflow, torch and two stores: ~10 s

RUN = "0123456789abcdef0123456789abcdef"
MODEL = "m-fedcba9876543210fedcba9876543210"
MODEL2 = "m-00000000000000000000000000000002"
#: columns whose values are times or fresh ids: compared by presence, not value
_VOLATILE = {"creation_time", "last_update_time", "last_updated_time", "creation_timestamp_ms",
             "last_updated_timestamp_ms", "dataset_uuid", "input_uuid", "source_id"}


def _model_file(folder: Path) -> str:
    import cloudpickle
    import torch

    path = folder / "model.pth"
    torch.save(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU()), path, pickle_module=cloudpickle)
    return str(torch.__version__)


def _write_run(sink: Any, folder: Path, pytorch_version: str) -> None:
    experiment = sink.experiment_id("direct-check")
    assert sink.experiment_id("direct-check") == experiment  # found again, not created twice
    run_id, name = sink.create_run_with_id(RUN, experiment, None, {"mlflow.user": "ada", "mlflow.runName": "first",
                                                                   "bad:key": "x", "huge": "h" * 9000},
                                           "a note", "p" * 32, 1_000)  # a long tag at creation: kept whole
    sink.set_tags(RUN, [("mlflow.source.name", "train.py"), ("mlflow.source.type", "LOCAL")])
    assert (run_id, name) == (RUN, "first")
    sink.log_params(RUN, [("lr", "0.1"), ("layers", "3"), ("long", "v" * 7000)])
    sink.log_params(RUN, [("lr", "0.1")])  # the same value again: allowed
    sink.set_tags(RUN, [("stage", "one"), ("big", "t" * 9000)])
    sink.set_tags(RUN, [("stage", "two"), ("mlflow.runName", "renamed")])
    points = [("loss", 1.0, 10, 0), ("loss", 0.5, 11, 1), ("loss", 0.5, 11, 1), ("loss", 0.75, 9, 1),
              ("acc", math.nan, 12, 0), ("acc", math.inf, 13, 2), ("low", -math.inf, 14, 0), ("loss", 2.0, 5, 0)]
    sink.log_metrics(RUN, points)
    sink.log_metrics(RUN, [("loss", 0.25, 20, 1)])  # the same step, later: the latest
    datasets = [{"name": "train0.abc", "role": "train", "fingerprint": "f" * 64, "length": 10,
                 "dataset_class": "torch.utils.data.TensorDataset"},
                {"name": "val0.def", "role": "val", "length": 4}]
    sink.log_dataset_inputs(RUN, datasets)
    sink.log_dataset_inputs(RUN, datasets[:1])  # again: no second input
    (folder / "one.txt").write_text("one")
    (folder / "tree" / "sub").mkdir(parents=True)
    (folder / "tree" / "sub" / "two.txt").write_text("two")
    sink.log_artifact(RUN, str(folder / "one.txt"))
    sink.log_artifact(RUN, str(folder / "one.txt"), "prov")
    sink.log_artifact(RUN, str(folder / "tree"), "trees")
    sink.log_model_file(RUN, str(folder / "model.pth"), "net", MODEL, pytorch_version=pytorch_version,
                        pip_requirements=None, params={"total_params": "8"}, registered_model_name="net")
    shutil.copyfile(folder / "model.pth", folder / "again.pth")
    sink.log_model_file(RUN, str(folder / "again.pth"), "net", MODEL2, pytorch_version=pytorch_version,
                        registered_model_name="net", await_registration_for=300)
    sink.end_run(RUN, "FINISHED", 2_000)


def _tables(db: Path, root: Path) -> dict[str, set[tuple[Any, ...]]]:
    out: dict[str, set[tuple[Any, ...]]] = {}
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            cur = conn.execute(f'SELECT * FROM "{table}"')
            names = [d[0] for d in cur.description]
            rows = set()
            for row in cur.fetchall():
                rows.add(tuple(
                    (n, "<set>" if n in _VOLATILE and v is not None else
                     v.replace(root.as_uri(), "<root>").replace(str(root), "<root>") if isinstance(v, str) else v)
                    for n, v in zip(names, row, strict=True)))
            out[table] = rows
    return out


def _files(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = str(path.relative_to(folder))
        if path.name == "MLmodel":
            data = yaml.safe_load(path.read_text())
            data.pop("utc_time_created")
            data["artifact_path"] = data["artifact_path"].replace(folder.parent.as_uri(), "<root>")
            out[rel] = data
        else:
            out[rel] = path.read_bytes()
    return out


@pytest.fixture
def both(tmp_path: Path) -> tuple[Path, Path]:
    stores = []
    version = _model_file(tmp_path)
    for kind in ("mlflow", "direct"):
        root = tmp_path / kind
        root.mkdir()
        shutil.copyfile(tmp_path / "model.pth", root / "model.pth")
        uri = f"sqlite:///{root / 'mlflow.db'}"
        if kind == "mlflow":
            sink: Any = MlflowSink(uri, root)  # builds the migrated empty store the direct one is copied from
        else:
            sink = open_direct(uri)
            assert isinstance(sink, DirectSink), "the installed MLflow's schema is not one direct.py writes"
        _write_run(sink, root, version)
        stores.append(root)
    return stores[0], stores[1]


def test_the_direct_store_holds_what_mlflow_writes(both: tuple[Path, Path]) -> None:
    by_mlflow, by_direct = both
    want, got = _tables(by_mlflow / "mlflow.db", by_mlflow), _tables(by_direct / "mlflow.db", by_direct)
    assert want.keys() == got.keys()
    for table in want:
        assert got[table] == want[table], table
    assert want["metrics"] and want["logged_model_metrics"] and want["inputs"]  # the comparison saw rows
    assert _files(by_direct / "artifacts") == _files(by_mlflow / "artifacts")


def test_mlflow_reads_the_direct_store_and_loads_its_model(both: tuple[Path, Path]) -> None:
    import mlflow
    import mlflow.pytorch
    import torch

    uri = f"sqlite:///{both[1] / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run = client.get_run(RUN)
    assert (run.info.status, run.info.run_name, run.info.end_time) == ("FINISHED", "renamed", 2_000)
    assert run.data.params["lr"] == "0.1" and len(run.data.tags["big"]) == 8000
    assert run.data.metrics["loss"] == 0.25 and math.isnan(run.data.metrics["acc"]) is False
    history = sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(RUN, "loss"))
    assert history == [(0, 5, 2.0), (0, 10, 1.0), (1, 9, 0.75), (1, 11, 0.5), (1, 20, 0.25)]
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"train0.abc", "val0.def"}
    assert sorted(o.model_id for o in run.outputs.model_outputs) == sorted([MODEL, MODEL2])
    model = client.get_logged_model(MODEL)
    assert model.status.to_int() == 2 and model.params["total_params"] == "8"
    assert model.params["lr"] == "0.1"  # the run's params and source tags, as MLflow's Model.log gives a model
    assert {k: v for k, v in model.tags.items() if k.startswith("mlflow.s") or k == "mlflow.user"} == {
        "mlflow.user": "ada", "mlflow.source.name": "train.py", "mlflow.source.type": "LOCAL"}
    assert {m.key for m in model.metrics} == {"loss", "acc", "low"}  # the run's points at the model's step (0)
    assert len(run.data.tags["huge"]) == 9000
    mlflow.set_tracking_uri(uri)
    try:
        loaded = mlflow.pytorch.load_model(f"models:/{MODEL}")
        registered = mlflow.pytorch.load_model("models:/net/2")
    finally:
        mlflow.set_tracking_uri(None)
    assert isinstance(loaded, torch.nn.Sequential) and isinstance(registered, torch.nn.Sequential)
    versions = {v.version: v for v in client.search_model_versions("name = 'net'")}
    assert sorted(versions) == ["1", "2"] or sorted(versions) == [1, 2]
    assert {str(v.version): v.source for v in versions.values()} == {"1": f"models:/{MODEL}", "2": f"models:/{MODEL2}"}
    assert client.get_logged_model(MODEL2).tags["mlflow.modelVersions"] == '[{"name": "net", "version": 2}]'
    assert {a.path for a in client.list_artifacts(RUN)} == {"one.txt", "prov", "trees"}


def test_the_installed_mlflow_schema_is_one_direct_writes(tmp_path: Path) -> None:
    MlflowSink(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)
    found = cached_template()
    assert found is not None
    assert found[1] in direct.SCHEMAS, (
        f"MLflow's schema head is now {found[1]}: check sinks/mlflow/direct.py against it (this file's tests) "
        "and add it to direct.SCHEMAS")


def test_what_direct_does_not_do_is_left_to_mlflow(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow_sink = MlflowSink(uri, tmp_path)
    sink = open_direct(uri)
    assert sink is not None
    experiment = sink.experiment_id("gone")
    mlflow_sink.client.delete_experiment(experiment)
    with pytest.raises(NeedsMlflow):
        sink.experiment_id("gone")  # a deleted experiment: MLflow's sink says what to do
    with pytest.raises(ValueError, match="'gone' was deleted in MLflow: restore it"):
        mlflow_sink.experiment_id("gone")  # never restored behind the user's back (as mlflow.set_experiment)
    mlflow_sink.client.restore_experiment(experiment)
    run_id, _ = sink.create_run_with_id(RUN, experiment, "r", {}, None, None, 1)
    before = _tables(tmp_path / "mlflow.db", tmp_path)
    with pytest.raises(NeedsMlflow):
        sink.log_model_file(run_id, str(tmp_path / "x.pth"), "m", MODEL, pytorch_version="2", signature=object())
    with pytest.raises(NeedsMlflow):
        sink.log_metrics(run_id, [("ok", 1.0, 1, 0), ("bad", "text", 1, 0)])  # type: ignore[list-item]
    assert _tables(tmp_path / "mlflow.db", tmp_path) == before  # nothing written by a refused call
    with pytest.raises(ValueError, match="Changing param values is not allowed"):
        sink.log_params(run_id, [("a", "1")]) or sink.log_params(run_id, [("a", "2")])
    with sqlite3.connect(tmp_path / "mlflow.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'older'")
    assert open_direct(uri) is None  # another schema revision: MLflow's opening says what to do
    assert open_direct("postgresql://u@localhost/db") is None


def test_the_service_serves_a_training_run_without_importing_mlflow(tmp_path: Path) -> None:
    MlflowSink(f"sqlite:///{tmp_path / 'first.db'}", tmp_path)  # the migrated empty store, as a first run leaves
    version = _model_file(tmp_path)
    store = (f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path))
    options = pickle.dumps({"pytorch_version": version, "pip_requirements": None, "params": {}})
    requests = [("start_run", store, RUN, "exp", None, {}, None, None, 1000),
                ("call", store, "log_metrics", (RUN, [("loss", 1.0, 1000, 0)]), {}),
                ("call", store, "find_weights", ("0" * 64,), {}),
                ("log_model_file", store, RUN, str(tmp_path / "model.pth"), "net", MODEL, options),
                ("call", store, "end_run", (RUN, "FINISHED", 2000), {}), None]
    service = Path(direct.__file__).with_name("service_process.py")
    done = subprocess.run([sys.executable, "-X", "importtime", str(service)],
                          input=b"".join(pickle.dumps(r) for r in requests), capture_output=True, timeout=120)
    import io

    answers = []
    stream = io.BytesIO(done.stdout)
    while stream.tell() < len(done.stdout):
        answers.append(pickle.load(stream))
    assert [a[0] for a in answers] == ["ok"] * 5, answers
    imported = {line.split("|")[-1].strip() for line in done.stderr.decode().splitlines() if "import time:" in line}
    assert "mlflow" not in imported and "sqlalchemy" not in imported and "torch" not in imported
    import mlflow

    run = mlflow.MlflowClient(store[0]).get_run(RUN)
    assert run.info.status == "FINISHED" and run.data.metrics == {"loss": 1.0}
