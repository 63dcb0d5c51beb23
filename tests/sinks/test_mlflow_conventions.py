"""MLflow's own conventions, read back with MlflowClient: the run tags its UI shows as "Created by",
"Source" and the git commit; datasets as MLflow dataset inputs; run names of seeded scripts; and
which store a run goes to (tracking_uri, MLFLOW_TRACKING_URI, mlflow_save_dir)."""

from __future__ import annotations

import getpass
import json
import logging
import random
import subprocess
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from mlflow.tracking import MlflowClient

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Prov4MLCallback, Prov4MLWarning
from prov4ml_lightning.sinks.mlflow.sink import default_tracking_uri, source_tags
from prov4ml_lightning.tracking import start
from tests.lightning_models import TinyDataModule, TinyModel, fast_trainer

pytestmark = pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git checkout with one commit and a remote whose URL holds a password; the working directory."""
    root = tmp_path / "project"
    root.mkdir()
    _git(root, "init", "-q", "-b", "feature/x")
    _git(root, "config", "user.email", "a@example.org")
    _git(root, "config", "user.name", "A")
    (root / "train.py").write_text("print('hi')\n")
    _git(root, "add", "train.py")
    _git(root, "commit", "-q", "-m", "first")
    _git(root, "remote", "add", "origin", "https://alice:s3cret-token@git.example.org/team/project.git")
    monkeypatch.chdir(root)
    return root


def test_source_tags_from_captured_code() -> None:
    code = {"script_path": "/w/train.py", "git_commit": "abc", "git_branch": "main",
            "git_remote": "https://***@h/r.git"}
    assert source_tags("bob", code) == {
        "mlflow.user": "bob", "mlflow.source.name": "/w/train.py", "mlflow.source.type": "LOCAL",
        "mlflow.source.git.commit": "abc", "mlflow.source.git.branch": "main",
        "mlflow.source.git.repoURL": "https://***@h/r.git",
    }
    assert source_tags(None, {}) == {"mlflow.source.name": "<interactive>", "mlflow.source.type": "LOCAL"}


def test_run_carries_mlflows_user_source_and_git_tags(run_args, client, repo) -> None:
    with prov4ml.start_run_ctx(**run_args) as run:
        run_id = run.run_id
    tags = client.get_run(run_id).data.tags
    assert tags["mlflow.user"] == getpass.getuser()
    assert tags["mlflow.source.type"] == "LOCAL"
    assert Path(tags["mlflow.source.name"]).name  # the entry script (pytest's, here)
    assert tags["mlflow.source.git.commit"] == _git(repo, "rev-parse", "HEAD")
    assert tags["mlflow.source.git.branch"] == "feature/x"
    assert tags["mlflow.source.git.repoURL"] == "https://***@git.example.org/team/project.git"
    assert not any("s3cret" in value for value in tags.values())


def test_environment_store_over_mlflow_save_dir_is_announced_once(run_args, tmp_path, monkeypatch) -> None:
    other = tmp_path / "other"
    other.mkdir()
    env_uri = default_tracking_uri(other)
    monkeypatch.setattr(start, "_ANNOUNCED", set())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env_uri)
    with pytest.warns(Prov4MLWarning) as caught, prov4ml.start_run_ctx(**run_args) as run:
        first = run.run_id
    (warning,) = [w for w in caught if "MLFLOW_TRACKING_URI" in str(w.message)]
    assert env_uri in str(warning.message) and str(Path(run_args["mlflow_save_dir"]).resolve()) in str(warning.message)
    assert MlflowClient(env_uri).get_run(first).info.status == "FINISHED"  # the environment's store has it
    with warnings.catch_warnings():
        warnings.simplefilter("error", Prov4MLWarning)  # the second run of the process: no second warning
        with prov4ml.start_run_ctx(**run_args):
            pass
        # an explicit tracking_uri beats the environment, silently: the caller chose
        with prov4ml.start_run_ctx(**run_args, tracking_uri=default_tracking_uri(run_args["mlflow_save_dir"])) as run:
            explicit = run.run_id
    assert MlflowClient(default_tracking_uri(run_args["mlflow_save_dir"])).get_run(explicit)


def test_a_relative_environment_store_is_announced_too(run_args, tmp_path, monkeypatch) -> None:
    """``MLFLOW_TRACKING_URI=sqlite:///rel/mlflow.db`` (relative to the current folder, as MLFlowLogger's
    ``tracking_uri`` is often written) sends the run elsewhere as much as an absolute one does."""
    monkeypatch.setattr(start, "_ANNOUNCED", set())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///rel/mlflow.db")
    with pytest.warns(Prov4MLWarning, match="MLFLOW_TRACKING_URI=sqlite:///rel/mlflow.db is set"), \
            prov4ml.start_run_ctx(**run_args) as run:
        run_id = run.run_id
    assert MlflowClient(default_tracking_uri(tmp_path / "rel")).get_run(run_id).info.status == "FINISHED"


def test_an_environment_store_that_is_the_embedded_one_is_not_announced(run_args, monkeypatch) -> None:
    """An MLFlowLogger pointed at ``<mlflow_save_dir>/mlflow.db`` sets MLFLOW_TRACKING_URI to the very store
    the callback would use: nothing to say."""
    monkeypatch.setattr(start, "_ANNOUNCED", set())
    store = Path(run_args["mlflow_save_dir"]).resolve()
    monkeypatch.chdir(store.parent)
    # absolute, and relative to the current folder (sqlite:///<relative path>): the same file
    for uri in (default_tracking_uri(store), f"sqlite:///{store.name}/mlflow.db"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Prov4MLWarning)
            with prov4ml.start_run_ctx(**run_args):
                pass


def test_without_the_environment_the_run_goes_to_mlflow_save_dir(run_args, client) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Prov4MLWarning)
        with prov4ml.start_run_ctx(**run_args) as run:
            run_id = run.run_id
    assert client.get_run(run_id).info.run_id == run_id


@pytest.mark.slow
def test_datasets_are_mlflow_dataset_inputs_and_seeded_runs_get_distinct_names(run_args, client, tmp_path) -> None:
    names, states = [], []
    for i in range(2):
        pl.seed_everything(7)
        callback = Prov4MLCallback(**run_args)
        fast_trainer(tmp_path / str(i), [callback], max_epochs=1).fit(TinyModel(), TinyDataModule())
        names.append(client.get_run(callback.run_id).info.run_name)
        states.append(random.random())  # the training's draws from the seeded global generator
    assert names[0] != names[1]
    assert states[0] == states[1]  # naming the run drew nothing from the user's generator
    run = client.get_run(callback.run_id)
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    contexts = {d.dataset.name: {t.key: t.value for t in d.tags}["mlflow.data.context"] for d in inputs.values()}
    assert sorted(contexts.values()) == ["training", "validation"]
    doc = json.loads(callback.outputs.prov_json.read_text())
    entities = {k.split(".dataset.", 1)[1]: v for k, v in doc["entity"].items() if ".dataset." in k}
    assert set(entities) == set(inputs)  # one input per PROV dataset entity, same name
    for name, d in inputs.items():
        fingerprint = next(v for k, v in entities[name].items() if k.endswith(":fingerprint"))
        assert isinstance(fingerprint, str) and len(fingerprint) == 64
        assert d.dataset.digest == fingerprint[:36]
        assert json.loads(d.dataset.profile)["fingerprint"] == fingerprint
        assert json.loads(d.dataset.source)["prov_entity"] == name
    # the README's search examples find the run
    experiment = [run.info.experiment_id]
    val_loss = run.data.metrics["val_loss"]
    digest = next(d.dataset.digest for d in inputs.values() if contexts[d.dataset.name] == "training")
    for query in (f"metrics.val_loss < {val_loss + 1}", f"dataset.digest = '{digest}'",
                  "dataset.context = 'validation'", "attributes.status = 'FINISHED'"):
        assert callback.run_id in {r.info.run_id for r in client.search_runs(experiment, query)}, query
    assert not client.search_runs(experiment, f"metrics.val_loss < {val_loss - 1}")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.slow
def test_log_model_leaves_out_mlflows_pickle_notice_only_when_the_format_is_ours(run_args, client) -> None:
    records = _Records()
    logger = logging.getLogger("mlflow.pytorch")
    logger.addHandler(records)
    try:
        with prov4ml.start_run_ctx(**run_args) as run:
            prov4ml.log_model(torch.nn.Linear(2, 1), "default")
            assert not [m for m in records.messages if "Pickle" in m]
            prov4ml.log_model(torch.nn.Linear(2, 1), "asked", serialization_format="pickle")
    finally:
        logger.removeHandler(records)
    assert [m for m in records.messages if m.startswith("Saving pytorch model by Pickle")]  # the caller's choice
    assert {m.name for m in client.search_logged_models([client.get_run(run.run_id).info.experiment_id])} >= {
        "default", "asked"}


@pytest.mark.slow
def test_an_mlflowlogger_in_the_same_trainer_is_announced_not_silent(run_args, tmp_path, monkeypatch) -> None:
    """What README "An MLFlowLogger in the same Trainer" describes: Lightning's logger sets
    MLFLOW_TRACKING_URI when it starts, the callback's run follows it there and says so, and the
    fit leaves two runs (the logger's and the callback's, each with every point once)."""
    import mlflow.tracking._tracking_service.utils as mlflow_uri
    from lightning.pytorch.loggers import MLFlowLogger

    monkeypatch.setattr(mlflow_uri, "_tracking_uri", mlflow_uri._tracking_uri)  # restored after the test
    monkeypatch.setattr(start, "_ANNOUNCED", set())
    (tmp_path / "logger").mkdir()
    logger_uri = default_tracking_uri(tmp_path / "logger")
    logger = MLFlowLogger(experiment_name="lightning", tracking_uri=logger_uri)
    callback = Prov4MLCallback(**run_args)
    with pytest.warns(Prov4MLWarning, match="MLFLOW_TRACKING_URI") as caught:
        fast_trainer(tmp_path, [callback], logger=logger, max_epochs=1).fit(TinyModel(), TinyDataModule())
    message = str(next(w.message for w in caught if "MLFLOW_TRACKING_URI" in str(w.message)))
    assert logger_uri in message and str(Path(run_args["mlflow_save_dir"]).resolve()) in message
    store = MlflowClient(logger_uri)
    assert logger.run_id != callback.run_id
    for run_id in (logger.run_id, callback.run_id):
        assert [m.step for m in store.get_metric_history(run_id, "val_loss")] == [7]


def test_a_new_experiment_keeps_its_artifacts_beside_its_sqlite_database(run_args, tmp_path) -> None:
    """A SQLite store other than the embedded one (an MLFlowLogger's, named by MLFLOW_TRACKING_URI or given
    as tracking_uri) keeps the run's artifacts beside its own database, not in mlflow_save_dir."""
    other = tmp_path / "logger_store"
    other.mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_text("kept beside the database")
    uri = f"sqlite:///{other}/logger.db"
    with prov4ml.start_run_ctx(**run_args, tracking_uri=uri) as run:
        prov4ml.log_artifact(notes)
    client = MlflowClient(uri)
    location = client.get_experiment(client.get_run(run.run_id).info.experiment_id).artifact_location
    assert location == (other / "artifacts").resolve().as_uri()
    assert [p.name for p in (other / "artifacts").rglob("notes.txt")] == ["notes.txt"]
    assert not (Path(run_args["mlflow_save_dir"]) / "artifacts").exists() or not list(
        (Path(run_args["mlflow_save_dir"]) / "artifacts").rglob(f"*{run.run_id}*"))
