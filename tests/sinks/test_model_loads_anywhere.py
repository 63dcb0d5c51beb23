"""A logged model loads in a fresh interpreter started in another folder, where the user's own
modules (the class, its base class, a helper function, each in its own file) cannot be imported:
``mlflow.pytorch.load_model`` gives the same predictions the training process saw. Both front
doors: ``prov4ml.log_model`` in a plain loop and the callback's model at the end of a fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_BASE = """\
import torch


class Base(torch.nn.Module):
    def scale(self, x):
        return 2.0 * x
"""

_HELPERS = """\
import torch


def squash(x):
    return torch.tanh(x)
"""

_CLF = """\
import torch
from base import Base
from helpers import squash


class Clf(Base):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x):
        return squash(self.scale(self.lin(x)))
"""

_PLAIN = """\
import json, sys, torch
import prov4ml_lightning as prov4ml
from clf import Clf

torch.manual_seed(0)
model = Clf()
prov4ml.start_run("www.example.org", "anywhere", "prov", mlflow_save_dir="store")
prov4ml.log_model(model, "clf")
run_id = prov4ml.get_run_id()
prov4ml.end_run()
print(json.dumps({"run_id": run_id, "expected": model(torch.ones(2, 4)).tolist()}))
"""

_LIGHTNING = """\
import json, torch
import lightning.pytorch as pl
import prov4ml_lightning as prov4ml
from litmodel import LitClf

pl.seed_everything(0)
model = LitClf()
callback = prov4ml.Prov4MLCallback("www.example.org", "anywhere", "prov", mlflow_save_dir="store")
data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randint(0, 3, (16,))),
                                   batch_size=8)
pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
           enable_model_summary=False, callbacks=[callback]).fit(model, data)
print(json.dumps({"run_id": callback.run_id, "expected": model(torch.ones(2, 4)).tolist()}))
"""

_LITMODEL = """\
import lightning.pytorch as pl
import torch
from clf import Clf


class LitClf(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = Clf()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
"""

_LOAD = """\
import json, sys
import mlflow, mlflow.pytorch, torch
from mlflow.tracking import MlflowClient

uri, run_id = sys.argv[1], sys.argv[2]
client = MlflowClient(uri)
mlflow.set_tracking_uri(uri)
models = mlflow.search_logged_models(experiment_ids=[client.get_run(run_id).info.experiment_id],
                                     output_format="list")
model = mlflow.pytorch.load_model(f"models:/{models[0].model_id}")
print(json.dumps({"class": type(model).__module__ + "." + type(model).__qualname__,
                  "got": model(torch.ones(2, 4)).tolist()}))
"""


def _project(tmp_path: Path, script: str) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    for name, text in {"base.py": _BASE, "helpers.py": _HELPERS, "clf.py": _CLF, "litmodel.py": _LITMODEL,
                       "train.py": script}.items():
        (project / name).write_text(textwrap.dedent(text))
    return project


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    env.update(extra)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("script", [_PLAIN, _LIGHTNING], ids=["log_model", "callback"])
def test_logged_model_loads_in_a_fresh_interpreter_elsewhere(tmp_path: Path, script: str) -> None:
    project = _project(tmp_path, script)
    trained = subprocess.run([sys.executable, "train.py"], cwd=project, capture_output=True, text=True,
                             timeout=300, env=_env(PYTHONPATH=str(ROOT / "src")))
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = json.loads(trained.stdout.strip().splitlines()[-1])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "load.py").write_text(_LOAD)
    uri = f"sqlite:///{project / 'store' / 'mlflow.db'}"
    probe = subprocess.run([sys.executable, "-c", "import clf"], cwd=elsewhere, capture_output=True, text=True,
                           env=_env())
    assert "No module named 'clf'" in probe.stderr  # the user's modules are not importable there
    loaded = subprocess.run([sys.executable, "load.py", uri, result["run_id"]], cwd=elsewhere,
                            capture_output=True, text=True, timeout=300, env=_env())
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    got = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert got["class"] in ("clf.Clf", "litmodel.LitClf")
    assert got["got"] == result["expected"]


def test_only_the_users_own_modules_are_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prov4ml_lightning.sinks.mlflow.pickling import local_modules, local_modules_by_value

    (tmp_path / "mine_for_pickling.py").write_text("class Mine:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import cloudpickle
    import mine_for_pickling  # noqa: F401

    names = {module.__name__ for module in local_modules()}
    assert "mine_for_pickling" in names
    assert not names & {"torch", "mlflow", "lightning", "json", "prov4ml_lightning", "__main__"}
    with local_modules_by_value() as registered:
        assert "mine_for_pickling" in registered
        assert "mine_for_pickling" in cloudpickle.list_registry_pickle_by_value()
    assert "mine_for_pickling" not in cloudpickle.list_registry_pickle_by_value()  # undone after the block
    monkeypatch.delitem(sys.modules, "mine_for_pickling")
