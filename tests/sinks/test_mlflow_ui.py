"""The MLflow UI's run page, in headless Chromium against a real ``mlflow server``, shows what
prov4ml-lightning fills in: who ran it, the source script, the git commit and the datasets.

``PROV4ML_SCREENSHOT=path.png`` also keeps the page's screenshot there (how
docs/images/mlflow-run-page.png was made)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.chromium import Chromium, requires_chromium

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = """\
import lightning.pytorch as pl
import prov4ml_lightning as prov4ml
from tests.lightning_models import TinyDataModule, TinyModel

pl.seed_everything(0)
callback = prov4ml.Prov4MLCallback("www.example.org", "mnist-like", "prov", "unused", tracking_uri={uri!r},
                                   log_model=False)
trainer = pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                     callbacks=[callback], log_every_n_steps=2)
trainer.fit(TinyModel(), TinyDataModule())
print(callback.run_id)
"""


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.slow
@requires_chromium
def test_run_page_shows_user_source_commit_and_datasets(mlflow_server, tmp_path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(_SCRIPT.format(uri=mlflow_server.uri))
    _git(project, "init", "-q", "-b", "main")
    _git(project, "-c", "user.email=a@example.org", "-c", "user.name=A", "add", "train.py")
    _git(project, "-c", "user.email=a@example.org", "-c", "user.name=A", "commit", "-q", "-m", "train")
    _git(project, "remote", "add", "origin", "https://alice:s3cret@git.example.org/team/project.git")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    done = subprocess.run([sys.executable, "train.py"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    run_id = done.stdout.split()[-1]
    run = MlflowClient(mlflow_server.uri).get_run(run_id)
    commit = _git(project, "rev-parse", "HEAD")
    assert run.data.tags["mlflow.source.git.commit"] == commit
    datasets = {d.dataset.name: {t.key: t.value for t in d.tags}["mlflow.data.context"]
                for d in run.inputs.dataset_inputs}
    assert sorted(name.split(".")[0] for name in datasets) == ["train0", "val0"], datasets  # before the page loads

    browser = Chromium(width=1500, height=1000)
    try:
        browser.open(f"{mlflow_server.uri}/#/experiments/{run.info.experiment_id}/runs/{run_id}")
        try:
            # the run page shows one dataset (whichever the store lists first: they are sent as their
            # fingerprints finish) and "+1" for the other
            shown = " || ".join(f"document.body.innerText.includes({name!r})" for name in datasets)
            text = browser.wait(f"({shown}) && document.body.innerText", timeout=90)
        except TimeoutError as error:  # say what the page showed instead
            raise AssertionError(f"{error}; the page shows: {browser.evaluate('document.body.innerText')!r}") from None
        if os.environ.get("PROV4ML_SCREENSHOT"):
            shutil.copy(browser.screenshot(tmp_path / "run.png"), os.environ["PROV4ML_SCREENSHOT"])
    finally:
        browser.close()
    assert run.data.tags["mlflow.user"] in text  # "Created by"
    assert "train.py" in text  # "Source"
    assert commit[:7] in text  # the git commit, as the run page abbreviates it
    first = next(name for name in datasets if name in text)
    assert datasets[first].capitalize() in text and "+1" in text, text  # the datasets (the first, its context, "+1")
    assert "s3cret" not in text
