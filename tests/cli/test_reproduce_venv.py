"""``prov4ml reproduce --venv DIR`` on a real seeded CPU Lightning fit: the run is recorded in a
virtual environment A (this interpreter's packages, plus a copy of this package's sources and a
package written here, both installed editable), then reproduced in a virtual environment B built from A's lock
alone. B must hold exactly the lock (the comparison before the run lists no mismatch), the
packages must come from their recorded folders, and the report must say inputs and final weights
identical.

Building B installs the whole torch/Lightning/MLflow stack (about 210 distributions, 2.2 GB):
about two minutes here, from pip's configured indexes (this machine's local index and wheel folder
hold some, PyPI the rest), so this one test runs only when asked (``PROV4ML_TEST_FULL_VENV=1``:
it needs the network and 2.2 GB of disk); tests/recovery/test_venv.py checks the builder offline on
a small lock, and the dry run and refusals here run with the slow set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prov4ml_lightning.cli import main
from prov4ml_lightning.cli._view import RunView
from prov4ml_lightning.recovery.venv import MARKER

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

TRAIN = '''"""A seeded CPU Lightning fit whose width comes from a package installed beside it."""
import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prov4ml_lightning as prov4ml
import tinypkg


class Net(L.LightningModule):
    def __init__(self, hidden: int = 4 * tinypkg.SCALE):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def training_step(self, batch, i):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, (x.sum(1) > 0).long())


if __name__ == "__main__":
    L.seed_everything(3, verbose=False)
    callback = prov4ml.Prov4MLCallback(prov_user_namespace="www.example.org", experiment_name="venv",
                                       provenance_save_dir="out/prov", mlflow_save_dir="out/mlflow")
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, deterministic=True, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        log_every_n_steps=1, default_root_dir="out", callbacks=[callback])
    trainer.fit(Net(), DataLoader(data(64, 0), batch_size=16, shuffle=True))
'''


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run recorded in venv A, with A's lock beside its PROV document."""
    base = tmp_path_factory.mktemp("venv-repro")
    package = base / "tinypkg"
    (package / "tinypkg").mkdir(parents=True)
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "tinypkg"\nversion = "0.3"\n', encoding="utf-8")
    (package / "tinypkg" / "__init__.py").write_text("SCALE = 3\n", encoding="utf-8")
    # this package's sources, copied: an editable install writes its egg-info into the folder
    project = base / "project"
    shutil.copytree(ROOT / "src" / "prov4ml_lightning", project / "src" / "prov4ml_lightning",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, project / name)
    a = base / "A"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(a)], check=True)
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(a / "bin" / "python"), "install", "-q",
                           "--no-deps", "-e", str(project), "-e", str(package)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    repo = base / "repo"
    repo.mkdir()
    (repo / "train.py").write_text(TRAIN, encoding="utf-8")
    (repo / ".gitignore").write_text("out/\n", encoding="utf-8")
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.email=t@example.org", "-c", "user.name=t", "add", ".")
    _git(repo, "-c", "user.email=t@example.org", "-c", "user.name=t", "commit", "-qm", "init")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    done = subprocess.run([str(a / "bin" / "python"), "train.py"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    prov = next((repo / "out" / "prov").glob("provgraph_*.json"))
    return {"base": base, "package": package, "project": project, "prov": prov, "env": env}


def test_dry_run_prints_the_pip_commands_and_makes_nothing(recorded, tmp_path, capsys):
    venv = tmp_path / "B"
    assert main(["reproduce", str(recorded["prov"]), "--venv", str(venv), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"-m venv --without-pip {venv}" in out
    assert f"-m pip --python {venv / 'bin' / 'python'} install --no-deps" in out
    assert f"-r {venv / 'prov4ml-index-requirements.txt'}" in out
    # the editable installs come from their recorded folders
    assert f"install --no-deps --no-input --disable-pip-version-check -q -e {recorded['project']}\n" in out
    assert f"-e {recorded['package']}\n" in out
    (command,) = [line for line in out.splitlines() if line.startswith("  command:")]
    assert command.split()[1] == str(venv / "bin" / "python") and command.endswith(" train.py")
    assert "compared with the virtual environment once it is built" in out
    assert not venv.exists()


def test_refusals(recorded, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x\n", encoding="utf-8")
    assert main(["reproduce", str(recorded["prov"]), "--venv", str(busy), "--dry-run"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["reproduce", str(recorded["prov"]), "--python", sys.executable, "--dry-run"]) == 2
    assert "--venv" in capsys.readouterr().err
    # a record made by another Python: refused, pointing at --python
    copy = tmp_path / "prov"
    shutil.copytree(recorded["prov"].parent, copy)
    prov = copy / recorded["prov"].name
    version = RunView.load(prov).environment["python_version"]
    prov.write_text(prov.read_text(encoding="utf-8").replace(f'"{version}"', '"3.1.4"'), encoding="utf-8")
    assert RunView.load(prov).environment["python_version"] == "3.1.4"
    assert main(["reproduce", str(prov), "--venv", str(tmp_path / "B"), "--dry-run"]) == 7
    assert "--python PATH" in capsys.readouterr().err
    assert not (tmp_path / "B").exists()


@pytest.mark.timeout(1200)
@pytest.mark.skipif(os.environ.get("PROV4ML_TEST_FULL_VENV") != "1",
                    reason="installs the whole lock (~210 distributions, 2.2 GB, partly from PyPI): "
                           "run with PROV4ML_TEST_FULL_VENV=1; tests/recovery/test_venv.py builds a small lock offline")
def test_reproduce_in_a_venv_built_from_the_lock(recorded, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the venv's own editable install serves the package
    venv, workdir = tmp_path / "B", tmp_path / "w"
    try:
        code = main(["reproduce", str(recorded["prov"]), "--venv", str(venv), "--workdir", str(workdir)])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "environment mismatches: none" in out and "verdict: REPRODUCED" in out
        new_prov = next((workdir / "out" / "prov").glob("provgraph_*.json"))
        report = json.loads(next(new_prov.parent.glob("reproduction_*.json")).read_text(encoding="utf-8"))
        assert report["inputs_identical"] is True and report["final_weights_identical"] is True, report
        assert report["reproduction"]["venv"] == str(venv)
        new = RunView.load(new_prov)
        assert new.environment["python_executable"] == str(venv / "bin" / "python")
        assert new.params["hidden"] == 12
        # the packages came from their recorded folders
        python = str(venv / "bin" / "python")
        where = subprocess.run([python, "-c", "import json, importlib.metadata as m; print(json.dumps("
                                "[json.loads(m.distribution(n).read_text('direct_url.json'))['url'] "
                                "for n in ('tinypkg', 'prov4ml-lightning')]))"],
                               capture_output=True, text=True, check=True)
        assert json.loads(where.stdout) == [recorded["package"].as_uri(), recorded["project"].as_uri()]
        assert json.loads((venv / MARKER).read_text(encoding="utf-8"))["complete"] is True
        # the same --venv again: reused, nothing installed
        capsys.readouterr()
        assert main(["reproduce", str(recorded["prov"]), "--venv", str(venv), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "reused as it is" in out and "    $ " not in out and "environment mismatches: none" in out
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # 2 GB
