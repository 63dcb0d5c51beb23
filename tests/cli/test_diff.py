"""`prov4ml diff` on real runs: every input it compares, and "cannot tell" where a record cannot show
two inputs are the same.

Runs are recorded with the functional API plus the recorder calls the Lightning callback makes for
a fit, its initial weights and a dataloader's dataset (``tests/cli/test_cli.py`` does the same), so
each run differs from the base in exactly one input; command lines and environment variables
differ only between processes, so those runs are scripts run as subprocesses. A Lightning fit
checks the dataloader settings the callback records itself.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import textwrap
import uuid
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import prov4ml_lightning as prov4ml
from prov4ml_lightning.capture.model_info import state_dict_sha256
from prov4ml_lightning.cli import main
from prov4ml_lightning.cli.diff import fingerprint_kind
from tests.helpers import diff_rows

FULL = "sha256 of every tensor's bytes"
SAMPLED = "sha256 of 8 evenly spaced items (seed 0)"
_SCRIPT = textwrap.dedent('''\
    import hashlib, os, torch
    import prov4ml_lightning as prov4ml
    from prov4ml_lightning.capture.model_info import state_dict_sha256

    # Output in the working directory, the store named by a variable prov4ml does not record:
    # the command line holds only what the test adds.
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    run = prov4ml.start_run("www.example.org", "diff-processes", "prov", os.environ["DIFF_TEST_STORE"])
    prov4ml.log_params({"lr": 0.1})
    run.start_activity("fit_1", "Fit", "fit 1")
    run.add_entity("model_state", "ModelState", "fit_1.initial",
                   {"state_dict_sha256": state_dict_sha256(net.state_dict())}, relation="used", activity="fit_1")
    run.add_entity("dataset", "Dataset", "train0", {"role": "train", "dataloader_index": 0, "length": 32,
                   "fingerprint": hashlib.sha256(x.numpy().tobytes()).hexdigest(),
                   "fingerprint_status": "complete", "fingerprint_method": "sha256 of every tensor's bytes"},
                   relation="none")
    run.end_activity("fit_1")
    prov4ml.end_run()
''')


def _record(root: Path, mlflow_dir: Path, experiment: str, *, status: str = "complete", method: str = FULL,
            shuffle: bool = True, init_seed: int = 0) -> Path:
    """One real run (seed 0) of a linear model on 32 samples; returns its provenance folder."""
    torch.manual_seed(0)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    y = x.sum(dim=1, keepdim=True)
    net = nn.Linear(4, 1)
    with torch.no_grad():  # initial weights drawn apart from the global generator (so the seed stays)
        net.weight.copy_(torch.randn(1, 4, generator=torch.Generator().manual_seed(init_seed)))
    run = prov4ml.start_run("www.example.org", experiment, root / "prov", mlflow_dir)
    try:
        prov4ml.log_params({"lr": 0.1})
        run.start_activity("fit_1", "Fit", "fit 1")
        run.add_entity("model_state", "ModelState", "fit_1.initial",
                       {"state_dict_sha256": state_dict_sha256(net.state_dict())}, label="initial weights (fit_1)",
                       relation="used", activity="fit_1")
        data = x.numpy().tobytes() + y.numpy().tobytes()
        sample = b"".join(x[i].numpy().tobytes() for i in range(0, 32, 4))  # 8 evenly spaced items
        fingerprint = hashlib.sha256(data if status == "complete" and method == FULL else sample).hexdigest()
        run.add_entity("dataset", "Dataset", f"train0.{fingerprint[:16]}", {
            "role": "train", "dataloader_index": 0, "dataset_class": "torch.utils.data.TensorDataset",
            "length": 32, "batch_size": 8, "num_workers": 0, "drop_last": False, "shuffle": shuffle,
            "sampler": f"torch.utils.data.sampler.{'Random' if shuffle else 'Sequential'}Sampler",
            "fingerprint": fingerprint, "fingerprint_status": status, "fingerprint_method": method,
            **({"fingerprint_sample_size": 8} if status == "sample" else {})}, relation="none")
        run.start_activity("fit_1.epoch_0", "TrainingEpoch", "epoch 0", part_of="fit_1",
                           used=[("dataset", f"train0.{fingerprint[:16]}")])
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for i in range(0, 32, 8):
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(x[i:i + 8]), y[i:i + 8])
            loss.backward()
            opt.step()
            prov4ml.log_metric("loss", loss.detach(), prov4ml.Context.TRAINING)
        run.end_activity("fit_1.epoch_0")
        run.end_activity("fit_1")
    finally:
        prov4ml.end_run()
    return root / "prov"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, mlflow_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diff-runs")
    experiment = f"diff-{uuid.uuid4().hex[:8]}"
    settings = {"base": {}, "twin": {}, "shuffle": {"shuffle": False}, "weights": {"init_seed": 1},
                "sampled": {"status": "sample", "method": SAMPLED},
                "sampled_twin": {"status": "sample", "method": SAMPLED}}
    # Outside any git repository: the code a run records is then pytest's script, the same for all
    # (the checkout's uncommitted diff may change between two runs while others edit it).
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        return {name: _record(root / name, mlflow_dir, experiment, **kw) for name, kw in settings.items()}


def _diff(capsys: pytest.CaptureFixture[str], a: Path, b: Path) -> tuple[int, str]:
    code = main(["diff", str(a), str(b)])
    return code, capsys.readouterr().out


_rows = diff_rows


def _verdicts(out: str) -> dict[str, str]:
    """``{section: what its header line says}``, e.g. ``{"code": "same", "data": "1 cannot tell"}``."""
    return {m[1]: m[2] for m in re.finditer(r"^([a-z][a-z ]*): (.+)$", out, re.M)}


def _summary(out: str) -> str:
    return out.rstrip().splitlines()[-1]


def test_identical_runs_exit_0(runs, capsys):
    code, out = _diff(capsys, runs["base"], runs["twin"])
    assert code == 0, out
    verdicts = _verdicts(out)
    for section in ("code", "command line", "environment", "environment variables", "data", "hyperparameters",
                    "seed", "weights", "hardware"):
        assert verdicts[section] == "same", (section, out)
    assert _summary(out) == "no input differences"


def test_a_dataloader_without_shuffle_is_named(runs, capsys):
    code, out = _diff(capsys, runs["base"], runs["shuffle"])
    assert code == 1
    assert _rows(out, "data") == {
        "train[0] shuffle": ("True", "False"),
        "train[0] sampler": ("torch.utils.data.sampler.RandomSampler", "torch.utils.data.sampler.SequentialSampler"),
    }
    assert _summary(out) == "2 input differences (data 2)"


def test_other_initial_weights_are_named(runs, capsys):
    code, out = _diff(capsys, runs["base"], runs["weights"])
    assert code == 1
    ((key, (a, b)),) = _rows(out, "weights").items()
    assert key == "fit 1 initial state_dict_sha256" and a != b
    assert _verdicts(out)["data"] == "same" and _verdicts(out)["seed"] == "same"
    assert _summary(out) == "1 input difference (weights 1)"


def test_sampled_fingerprints_that_agree_cannot_tell(runs, capsys):
    code, out = _diff(capsys, runs["sampled"], runs["sampled_twin"])
    assert code == 1
    ((key, (a, b, why)),) = _rows(out, "data").items()
    assert key == "train[0] fingerprint" and a == b and why == "sampled: cannot tell"
    assert _verdicts(out)["data"] == "1 cannot tell"
    assert "no input differences" not in out
    assert _summary(out) == "no recorded input differs, but cannot tell: data (train[0] fingerprint: sampled)"


def test_a_sampled_and_a_full_fingerprint_are_not_compared(runs, capsys):
    code, out = _diff(capsys, runs["base"], runs["sampled"])
    assert code == 1
    assert _rows(out, "data")["train[0] fingerprint"][2] == "fingerprinted differently: cannot tell"


@pytest.mark.parametrize(("attrs", "kind"), [
    ({"fingerprint": "ab", "fingerprint_status": "complete", "fingerprint_method": FULL}, None),
    ({"fingerprint": "ab", "fingerprint_status": "hook", "fingerprint_method": "the dataset's prov4ml_fingerprint()"},
     None),
    # documents written before the sample status called the 8-item hash "complete"
    ({"fingerprint": "ab", "fingerprint_status": "complete", "fingerprint_method": SAMPLED}, "sampled"),
    ({"fingerprint": "ab", "fingerprint_status": "sample", "fingerprint_sample_size": 8}, "sampled"),
    ({"fingerprint": "ab", "fingerprint_status": "reference"}, "reference only"),
    ({"fingerprint_status": "unknown"}, "not fingerprinted"),
    ({"fingerprint_status": "pending"}, "not fingerprinted"),
    ({"fingerprint_status": "not_sampled"}, "not fingerprinted"),
    ({"fingerprint": "ab"}, "fingerprint of unknown kind"),
])
def test_fingerprint_kinds(attrs, kind):
    assert fingerprint_kind(attrs) == kind


# -- command line and environment variables: one process per run ---------------------------------
@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("diff-script") / "train.py"
    path.write_text(_SCRIPT)
    return path


def _process_run(script: Path, out: Path, store: Path, *extra: str, env: dict[str, str] | None = None) -> Path:
    out.mkdir(parents=True)
    environ = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    subprocess.run([sys.executable, str(script), *extra], check=True, cwd=out, capture_output=True, timeout=300,
                   env={**environ, "DIFF_TEST_STORE": str(store), **(env or {})})
    return out / "prov"


@pytest.mark.slow
def test_command_line_and_environment_variables_between_processes(script, tmp_path, capsys):
    store = tmp_path / "mlflow"
    base = _process_run(script, tmp_path / "base", store)
    twin = _process_run(script, tmp_path / "twin", store)
    args = _process_run(script, tmp_path / "args", store, "--lr-warmup", "5")
    env = _process_run(script, tmp_path / "env", store, env={"CUBLAS_WORKSPACE_CONFIG": ":4096:8"})

    code, out = _diff(capsys, base, twin)  # two processes, same script, same inputs
    assert code == 0 and _summary(out) == "no input differences", out

    code, out = _diff(capsys, base, args)
    assert code == 1
    ((key, (a, b)),) = _rows(out, "command line").items()
    # long lines are shown from a little before where they part
    assert key == "command_line" and a.startswith("\u2026") and a.endswith("train.py") and b.endswith("--lr-warmup 5")
    assert _verdicts(out)["environment variables"] == "same"
    assert _summary(out) == "1 input difference (command line 1)"

    code, out = _diff(capsys, base, env)
    assert code == 1
    assert _rows(out, "environment variables") == {"CUBLAS_WORKSPACE_CONFIG": ("-", ":4096:8")}
    assert _verdicts(out)["command line"] == "same"
    assert _summary(out) == "1 input difference (environment variables 1)"


# -- a Lightning fit: the dataloader settings the callback records ---------------------------------
@pytest.mark.slow
def test_lightning_fits_differing_in_shuffle(tmp_path, mlflow_dir, capsys, monkeypatch):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from tests.lightning_models import TinyDataModule, TinyModel, fast_trainer

    class InOrder(TinyDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=False)

    experiment = f"diff-shuffle-{uuid.uuid4().hex[:8]}"
    monkeypatch.chdir(tmp_path)  # outside the checkout, whose uncommitted diff may change between the fits
    folders = {}
    for name, datamodule in (("shuffled", TinyDataModule), ("in_order", InOrder)):
        torch.manual_seed(0)
        callback = prov4ml.Prov4MLCallback("www.example.org", experiment, tmp_path / name / "prov", mlflow_dir)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning's advice on num_workers
            fast_trainer(tmp_path / name, [callback, ModelCheckpoint(monitor="val_loss")]).fit(
                TinyModel(), datamodule())
        folders[name] = tmp_path / name / "prov"
    code, out = _diff(capsys, folders["shuffled"], folders["in_order"])
    assert code == 1
    data = _rows(out, "data")
    differences = {k: v for k, v in data.items() if len(v) == 2}
    assert differences == {"train[0] shuffle": ("True", "False"),
                           "train[0] sampler": ("torch.utils.data.sampler.RandomSampler",
                                                "torch.utils.data.sampler.SequentialSampler")}
    assert all(v[2].endswith(": cannot tell") for v in data.values() if len(v) == 3)
    assert _summary(out).startswith("2 input differences (data 2)")
    verdicts = _verdicts(out)
    for section in ("code", "command line", "environment variables", "hyperparameters", "seed", "weights"):
        assert verdicts[section] == "same", (section, out)
    assert "final weights" in out  # the callback logged each fit's model: an outcome, not counted
