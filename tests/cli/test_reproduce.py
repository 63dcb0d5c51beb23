"""``prov4ml reproduce`` and ``prov4ml card`` on a real seeded CPU Lightning fit in a git repository.

The fit runs once as a real process (``python train.py``) in a repository made here, with an
uncommitted change (recorded as the diff) and an untracked helper module it imports (recorded as
a snapshot). After it, the working tree changes again; the reproduction must use the recorded
code, not the working tree. Results are read back with ``prov.read``, ``MlflowClient`` and
``yaml.safe_load``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from prov4ml_lightning.cli import main
from prov4ml_lightning.cli._view import RunView, datasets_by_name
from tests.helpers import attr, by_type, read_prov

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[2] / "src"

TRAIN = '''"""A seeded CPU Lightning fit."""
import argparse

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

import prov4ml_lightning as prov4ml
from helper import make_data

HIDDEN = 8


class Net(L.LightningModule):
    def __init__(self, hidden: int = HIDDEN, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, i):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, i):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def test_step(self, batch, i):
        x, y = batch
        logits = self(x)
        self.log("test_loss", nn.functional.cross_entropy(logits, y))
        self.log("test_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="out")
    args = parser.parse_args()
    L.seed_everything(7, verbose=False)
    train, val, test = make_data(96, 0), make_data(32, 1), make_data(32, 2)
    callback = prov4ml.Prov4MLCallback(
        prov_user_namespace="www.example.org", experiment_name="repro", provenance_save_dir=f"{args.out}/prov",
        mlflow_save_dir=f"{args.out}/mlflow", model_card=True, model_card_license="mit")
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, deterministic=True, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                        default_root_dir=args.out,
                        callbacks=[callback,
                                   ModelCheckpoint(dirpath=f"{args.out}/ckpt", monitor="val_loss", save_top_k=2),
                                   EarlyStopping(monitor="val_loss", patience=3, min_delta=0.001)])
    trainer.fit(Net(), DataLoader(train, batch_size=16, shuffle=True), DataLoader(val, batch_size=16))
    trainer.test(ckpt_path="best", dataloaders=DataLoader(test, batch_size=16))


if __name__ == "__main__":
    main()
'''

HELPER = '''import torch
from torch.utils.data import TensorDataset


def make_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, (x.sum(1) > 0).long())
'''


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The repository, the PROV file of its one run, and that run's MLflow store."""
    repo = tmp_path_factory.mktemp("repro") / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "test@example.org")
    _git(repo, "config", "user.name", "test")
    (repo / "train.py").write_text(TRAIN, encoding="utf-8")
    (repo / ".gitignore").write_text("out/\n", encoding="utf-8")
    _git(repo, "add", "train.py", ".gitignore")
    _git(repo, "commit", "-qm", "init")
    # the run's own uncommitted change (recorded as the diff) and untracked helper (snapshotted)
    (repo / "train.py").write_text(TRAIN.replace("HIDDEN = 8", "HIDDEN = 16"), encoding="utf-8")
    (repo / "helper.py").write_text(HELPER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "train.py"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    prov_file = next((repo / "out" / "prov").glob("provgraph_*.json"))
    # after the run, the working tree changes once more and is not committed
    (repo / "train.py").write_text(TRAIN.replace("HIDDEN = 8", "HIDDEN = 32"), encoding="utf-8")
    return {"repo": repo, "prov": prov_file, "uri": f"sqlite:///{repo / 'out' / 'mlflow' / 'mlflow.db'}", "env": env}


def test_the_record_holds_what_reproduction_needs(recorded):
    view = RunView.load(recorded["prov"])
    params = view.params
    assert params["trainer/deterministic"] is True and params["trainer/benchmark"] is False
    assert params["trainer/max_steps"] == -1
    assert params["checkpoint/save_top_k"] == 2 and params["checkpoint/mode"] == "min"
    assert params["checkpoint/monitor"] == "val_loss" and params["checkpoint/every_n_epochs"] == 1
    assert params["early_stopping/patience"] == 3 and params["early_stopping/min_delta"] == 0.001
    env = view.environment
    assert env["torch_deterministic_algorithms"] is True and env["torch_cudnn_benchmark"] is False
    assert env["python_executable"] == sys.executable
    assert str(SRC) in json.loads(env["python_path_added"])
    code = view.code
    entries = json.loads(code["untracked_files"])
    assert [e["path"] for e in entries] == ["helper.py"] and code["untracked_imported_count"] == 1
    helper = (recorded["repo"] / "helper.py").read_bytes()
    import hashlib

    assert entries[0]["sha256"] == hashlib.sha256(helper).hexdigest()
    with zipfile.ZipFile(view.sibling(code["untracked_file"])) as zf:
        assert zf.read("helper.py") == helper
    # the snapshot is a PROV entity with its hash
    doc = read_prov(recorded["prov"])
    (snapshot,) = by_type(doc, "SourceSnapshot")
    assert attr(snapshot, "sha256") == hashlib.sha256(view.sibling(code["untracked_file"]).read_bytes()).hexdigest()


def test_reproduce_reruns_the_recorded_code_and_says_it_came_back(recorded, tmp_path, capsys, monkeypatch):
    workdir = tmp_path / "w"
    # the PROV file named relative to where the command runs, as a user types it (the diff beside it
    # must still be found from inside the new worktree)
    monkeypatch.chdir(recorded["prov"].parent.parent)
    relative = recorded["prov"].relative_to(recorded["prov"].parent.parent)
    code = main(["reproduce", str(relative), "--workdir", str(workdir)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "verdict: REPRODUCED" in out
    # the recorded code ran: the diff applied on the commit, not the working tree's later change
    assert "HIDDEN = 16" in (workdir / "train.py").read_text(encoding="utf-8")
    assert "HIDDEN = 32" in (recorded["repo"] / "train.py").read_text(encoding="utf-8")
    assert (workdir / "helper.py").read_text(encoding="utf-8") == HELPER
    old = RunView.load(recorded["prov"])
    new_prov = next((workdir / "out" / "prov").glob("provgraph_*.json"))
    new = RunView.load(new_prov)
    report = json.loads(next(new_prov.parent.glob("reproduction_*.json")).read_text(encoding="utf-8"))
    assert report["inputs_identical"] is True and report["final_weights_identical"] is True, report
    assert report["reproduction"]["run_id"] == new.run_attr("run_id") != old.run_attr("run_id")
    assert report["metrics"]["testing/test_loss"]["max_abs_diff"] == 0.0
    assert new.params["hidden"] == 16
    # the new run's PROV links to the old one
    doc = read_prov(new_prov)
    old_id = old.run_attr("run_id")
    runs = {str(r.identifier): r for r in by_type(doc, "Run")}
    (new_run,) = runs.values()
    assert attr(new_run, "reproduces") == old_id
    informed = [(str(r.formal_attributes[0][1]), str(r.formal_attributes[1][1]))
                for r in doc.get_records() if r.get_type().localpart == "Communication"]
    assert (str(new_run.identifier), f"user:run_{old_id}") in informed
    (record,) = by_type(doc, "ProvenanceRecord")
    import hashlib

    assert attr(record, "sha256") == hashlib.sha256(recorded["prov"].read_bytes()).hexdigest()
    # ... and MLflow says so, with the report as an artifact of the new run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'out' / 'mlflow' / 'mlflow.db'}")
    mlflow_run = client.get_run(new.run_attr("run_id"))
    assert mlflow_run.data.tags["prov4ml.reproduces"] == old_id
    names = {Path(a.path).name for a in client.list_artifacts(mlflow_run.info.run_id, "reproduction")}
    assert {f"reproduction_{mlflow_run.info.run_id}.json", f"reproduction_{mlflow_run.info.run_id}.md"} <= names


def test_dry_run_plans_and_runs_nothing(recorded, tmp_path, capsys):
    workdir = tmp_path / "w"
    assert main(["reproduce", str(recorded["prov"]), "--workdir", str(workdir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "environment mismatches" in out and "train.py" in out and "PL_GLOBAL_SEED=7" in out
    assert not workdir.exists()


def _copy_record(recorded: dict, tmp_path: Path) -> Path:
    folder = tmp_path / "prov"
    shutil.copytree(recorded["prov"].parent, folder)
    return folder / recorded["prov"].name


def test_refusals(recorded, tmp_path, capsys):
    view = RunView.load(recorded["prov"])
    commit = view.code["git_commit"]
    # a commit the repository does not hold
    prov = _copy_record(recorded, tmp_path / "a")
    prov.write_text(prov.read_text(encoding="utf-8").replace(commit, "0" * 40), encoding="utf-8")
    assert main(["reproduce", str(prov), "--repo", str(recorded["repo"]), "--dry-run"]) == 4
    assert "not in the repository" in capsys.readouterr().err
    # a diff changed after the run
    prov = _copy_record(recorded, tmp_path / "b")
    diff = prov.parent / view.code["git_diff_file"]
    diff.write_bytes(diff.read_bytes() + b"\n")
    assert main(["reproduce", str(prov), "--dry-run"]) == 5
    assert "sha256" in capsys.readouterr().err
    # a diff that does not apply to the commit (its recorded hash made to match)
    import hashlib

    prov = _copy_record(recorded, tmp_path / "c")
    diff = prov.parent / view.code["git_diff_file"]
    bad = diff.read_bytes().replace(b"-HIDDEN = 8", b"-HIDDEN = 9")
    diff.write_bytes(bad)
    prov.write_text(prov.read_text(encoding="utf-8").replace(view.code["git_diff_sha256"],
                                                              hashlib.sha256(bad).hexdigest()), encoding="utf-8")
    assert main(["reproduce", str(prov), "--dry-run"]) == 5
    assert "does not apply" in capsys.readouterr().err
    # a package lock edited after the run: checked as the diff is, with and without --venv
    prov = _copy_record(recorded, tmp_path / "e")
    lock = prov.parent / view.environment["packages_file"]
    lock.write_text(lock.read_text(encoding="utf-8") + "added-after-the-run==1.0\n", encoding="utf-8")
    assert main(["reproduce", str(prov), "--dry-run"]) == 5
    assert "package lock was changed after the run" in capsys.readouterr().err
    assert main(["reproduce", str(prov), "--dry-run", "--venv", str(tmp_path / "venv")]) == 5
    assert "packages_" in capsys.readouterr().err
    # a record without the command line
    prov = _copy_record(recorded, tmp_path / "d")
    prov.write_text(prov.read_text(encoding="utf-8").replace('"p4l:command_line"', '"p4l:command_typed"'),
                    encoding="utf-8")
    assert main(["reproduce", str(prov), "--dry-run"]) == 3
    assert "no command line" in capsys.readouterr().err


def test_card_header_parses_and_matches_mlflow(recorded, tmp_path, capsys):
    out = tmp_path / "card.md"
    assert main(["card", str(recorded["prov"]), "--license", "apache-2.0", "--output", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["license"] == "apache-2.0" and header["library_name"] == "pytorch"
    view = RunView.load(recorded["prov"])
    from mlflow.tracking import MlflowClient

    run = MlflowClient(recorded["uri"]).get_run(view.run_attr("run_id"))
    (model,) = header["model-index"]
    assert model["name"] == "Net"
    (result,) = model["results"]
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert set(values) == {"test_loss", "test_acc"}
    for key, value in values.items():
        assert value == pytest.approx(run.data.metrics[key], rel=1e-12)
    fingerprints = {d["fingerprint"] for d in datasets_by_name(view).values()}
    assert result["dataset"]["fingerprint"] in fingerprints
    assert {d["fingerprint"] for d in header["prov4ml"]["datasets"]} == fingerprints
    for section in ("## Intended use", "## Training data", "## Training procedure", "## Evaluation",
                    "## Environment", "## How to load", "## Lineage"):
        assert section in text
    model_uri = next(m.attrs["model_uri"] for m in view.typed("Model"))
    assert model_uri.startswith("models:/") and model_uri in text
    assert "checkpoint chosen" in text and "val_loss" in text
    # float trainer limits stay floats (to Lightning 1 is one batch, 1.0 all of them), as PROV and MLflow hold them
    for key in ("trainer/limit_train_batches", "trainer/limit_val_batches", "trainer/val_check_interval"):
        assert isinstance(view.params[key], float) and run.data.params[key] == repr(view.params[key])
        assert f"- `{key}`: {view.params[key]!r}\n" in text
    # the header's datasets and the "Training data" table hold the training data only
    by_role = {e.attrs["role"]: e.label for e in view.typed("Dataset")}
    assert set(by_role) == {"train", "val", "test"}
    assert header["datasets"] == [by_role["train"]]
    training = text.split("## Training data")[1].split("### Validation data")[0]
    validation = text.split("### Validation data")[1].split("## Training procedure")[0]
    evaluation = text.split("## Evaluation")[1].split("## Environment")[0]
    for section, role in ((training, "train"), (validation, "val"), (evaluation, "test")):
        assert {r for r, label in by_role.items() if label in section} == {role}
    # the callback's card (model_card=True) was logged as an artifact of the run, with the test metrics
    client = MlflowClient(recorded["uri"])
    (artifact,) = client.list_artifacts(run.info.run_id, "model_card")
    local = client.download_artifacts(run.info.run_id, artifact.path, str(tmp_path))
    logged = yaml.safe_load(Path(local).read_text(encoding="utf-8").split("---\n")[1])
    assert logged["license"] == "mit"
    assert {m["type"] for m in logged["model-index"][0]["results"][0]["metrics"]} == {"test_loss", "test_acc"}
