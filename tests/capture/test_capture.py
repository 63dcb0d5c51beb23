"""Capture of code, environment and seed: unit checks against real git repositories, and a real
run read back with MlflowClient and prov."""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import torch

import prov4ml_lightning as prov4ml
from prov4ml_lightning.capture import capture_context, code, environment
from prov4ml_lightning.capture.seeds import detect_seed
from prov4ml_lightning.redact import is_secret_name, redact_argv, redact_env, redact_url
from tests.helpers import attr, by_type, read_prov, records_of

GIT = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.org", "-c", "init.defaultBranch=main"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with one committed script and a remote URL that carries a credential."""
    root = tmp_path / "project"
    root.mkdir()
    git(root, "init", "-q")
    (root / "train.py").write_text("print('train')\n")
    git(root, "add", "train.py")
    git(root, "commit", "-q", "-m", "first")
    git(root, "remote", "add", "origin", "https://alice:s3cr3t-t0ken@git.example.org/team/project.git")
    return root


@pytest.fixture
def no_seed(monkeypatch: pytest.MonkeyPatch):
    """No seed from an earlier test: PL_GLOBAL_SEED unset, torch's generator reseeded at random."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
    state = torch.get_rng_state()
    torch.seed()
    yield
    torch.set_rng_state(state)


# -- redaction -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "--api-key", "MLFLOW_TRACKING_PASSWORD",
                                  "db_password", "GITHUB_AUTH", "sig"])
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["CUDA_VISIBLE_DEVICES", "--lr", "PL_GLOBAL_SEED", "RANK", "epochs"])
def test_ordinary_names(name):
    assert not is_secret_name(name)


@pytest.mark.parametrize(("url", "expected"), [
    ("https://alice:pw@host.org:5000/x", "https://***@host.org:5000/x"),
    ("https://ghp_abcdef@github.com/a/b.git", "https://***@github.com/a/b.git"),
    ("ssh://git@github.com/a/b.git", "ssh://git@github.com/a/b.git"),
    ("git@github.com:a/b.git", "git@github.com:a/b.git"),
    ("https://acct.blob.core.windows.net/c?sv=2020&sig=abc123", "https://acct.blob.core.windows.net/c?sv=2020&sig=***"),
    ("http://localhost:5000", "http://localhost:5000"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
])
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_redact_argv_and_env():
    argv = ["train.py", "--token", "abc", "--api-key=xyz", "--lr", "0.1",
            "--uri", "https://u:pw@host/x", "PASSWORD=hunter2"]
    assert redact_argv(argv) == ["train.py", "--token", "***", "--api-key=***", "--lr", "0.1",
                                 "--uri", "https://***@host/x", "PASSWORD=***"]
    env = {"HF_TOKEN": "hf_x", "MLFLOW_TRACKING_URI": "https://u:pw@h", "OMP_NUM_THREADS": "4"}
    assert redact_env(env) == {"HF_TOKEN": "***", "MLFLOW_TRACKING_URI": "https://***@h", "OMP_NUM_THREADS": "4"}


# -- code ----------------------------------------------------------------------------------------------
def test_code_in_a_dirty_repository(repo: Path, tmp_path: Path):
    (repo / "train.py").write_text("print('train harder')\n")
    (repo / "notes.txt").write_text("untracked\n")
    out = tmp_path / "out"
    out.mkdir()
    attrs, diff_file = code.capture_code(out, "r1", script=repo / "train.py")

    assert attrs["script_path"] == str(repo / "train.py")
    assert attrs["script_sha256"] == hashlib.sha256(b"print('train harder')\n").hexdigest()
    assert attrs["git_root"] == str(repo)
    assert attrs["git_commit"] == git(repo, "rev-parse", "HEAD")
    assert attrs["git_branch"] == "main"
    assert attrs["git_remote"] == "https://***@git.example.org/team/project.git"
    assert attrs["git_dirty"] is True and attrs["git_untracked_count"] == 1
    expected = subprocess.run(["git", "diff", "HEAD", "--binary"], cwd=repo, capture_output=True, check=True).stdout
    assert diff_file == out / "code_diff_r1.patch"
    assert diff_file.read_bytes() == expected
    assert attrs["git_diff_sha256"] == hashlib.sha256(expected).hexdigest()
    assert attrs["git_diff_size_bytes"] == len(expected) and attrs["git_diff_truncated"] is False
    assert "s3cr3t" not in repr(attrs)


def test_code_diff_is_capped_but_hashed_whole(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(code, "MAX_DIFF_BYTES", 100)
    (repo / "train.py").write_text("x = 1\n" * 500)
    attrs, diff_file = code.capture_code(tmp_path, "r2", script=repo / "train.py")
    whole = subprocess.run(["git", "diff", "HEAD", "--binary"], cwd=repo, capture_output=True, check=True).stdout
    assert len(whole) > 100
    assert diff_file is not None and diff_file.read_bytes() == whole[:100]
    assert attrs["git_diff_truncated"] is True
    assert attrs["git_diff_sha256"] == hashlib.sha256(whole).hexdigest()


def test_code_in_a_clean_repository(repo: Path, tmp_path: Path):
    attrs, diff_file = code.capture_code(tmp_path, "r3", script=repo / "train.py")
    assert attrs["git_dirty"] is False and diff_file is None and "git_diff_sha256" not in attrs


def test_code_in_a_repository_without_commits(tmp_path: Path):
    root = tmp_path / "fresh"
    root.mkdir()
    git(root, "init", "-q")
    (root / "a.py").write_text("pass\n")
    git(root, "add", "a.py")
    attrs, diff_file = code.capture_code(tmp_path, "r4", script=root / "a.py")
    assert "git_commit" not in attrs and attrs["git_dirty"] is True
    assert diff_file is not None and b"a.py" in diff_file.read_bytes()  # the staged file is the diff


def test_code_outside_git_and_without_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    script = tmp_path / "plain" / "run.py"
    script.parent.mkdir()
    script.write_text("pass\n")
    monkeypatch.chdir(script.parent)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # do not find a repository above tmp
    attrs, diff_file = code.capture_code(tmp_path, "r5", script=script)
    assert attrs["script_sha256"] == hashlib.sha256(b"pass\n").hexdigest()
    assert not any(k.startswith("git_") for k in attrs) and diff_file is None
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # no git executable at all
    attrs, _ = code.capture_code(tmp_path, "r6", script=script)
    assert not any(k.startswith("git_") for k in attrs)


# -- environment ------------------------------------------------------------------------------------------
def test_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "argv", ["train.py", "--token", "abc123", "--lr", "0.1"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("UNRELATED_VARIABLE", "not recorded")
    attrs, packages = environment.capture_environment(tmp_path, "r7")

    assert attrs["python_version"] == platform.python_version()
    assert attrs["cpu_count"] >= 1 and attrs["ram_bytes"] > 0 and isinstance(attrs["gpu_count"], int)
    assert attrs["torch_version"] == metadata.version("torch")
    assert attrs["lightning_version"] == metadata.version("lightning")
    assert attrs["mlflow_version"] == metadata.version("mlflow")
    assert attrs["command_line"] == "train.py --token '***' --lr 0.1"
    assert attrs["env_MLFLOW_TRACKING_PASSWORD"] == "***" and attrs["env_CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "env_UNRELATED_VARIABLE" not in attrs
    assert "hunter2" not in repr(attrs) and "abc123" not in repr(attrs)

    lines = packages.read_text().splitlines()
    assert packages.name == "packages_r7.txt" and attrs["packages_count"] == len(lines)
    assert f"torch=={metadata.version('torch')}" in lines and f"prov=={metadata.version('prov')}" in lines
    # a pin, or (a distribution from a URL: PEP 610) the URL with what it does not say in a comment
    assert all(line.count("==") == 1 or (" @ " in line and "  # version " in line) for line in lines)
    assert attrs["packages_sha256"] == hashlib.sha256(packages.read_bytes()).hexdigest()


def test_gpu_attributes_from_nvml(monkeypatch: pytest.MonkeyPatch):
    """No GPU here: a stand-in for nvidia-ml-py's ``pynvml`` checks what is read and how it is named."""
    import types

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 2,
        nvmlSystemGetDriverVersion=lambda: b"550.54.15", nvmlSystemGetCudaDriverVersion_v2=lambda: 12040,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: f"NVIDIA H100 #{h}",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=80 * 2**30 + h),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert environment._gpus() == {
        "gpu_count": 2, "gpu_driver_version": "550.54.15", "gpu_cuda_driver_version": "12.4",
        "gpu_0_name": "NVIDIA H100 #0", "gpu_0_memory_bytes": 80 * 2**30,
        "gpu_1_name": "NVIDIA H100 #1", "gpu_1_memory_bytes": 80 * 2**30 + 1,
    }

    def no_driver():
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setattr(fake, "nvmlInit", no_driver)
    assert environment._gpus() == {"gpu_count": 0}


# -- seeds -------------------------------------------------------------------------------------------------
def test_seed_from_seed_everything(no_seed):
    from lightning.pytorch import seed_everything

    seed_everything(1234, verbose=False)  # sets PL_GLOBAL_SEED, which `no_seed` restores afterwards
    info = detect_seed()
    assert (info.seed, info.source, info.torch_initial_seed) == (1234, "lightning.seed_everything", 1234)


def test_seed_from_torch_manual_seed(no_seed):
    assert detect_seed().seed is None  # torch's own random 64-bit start-up seed is not a set seed
    torch.manual_seed(42)
    assert (detect_seed().seed, detect_seed().source) == (42, "torch.manual_seed")


# -- a real run ----------------------------------------------------------------------------------------------
def test_run_records_code_environment_host_and_seed(repo, run_args, client, no_seed, monkeypatch):
    monkeypatch.chdir(repo)  # pytest is the entry script: the working directory's repository counts
    (repo / "train.py").write_text("print('changed')\n")
    run = prov4ml.start_run(**run_args)
    assert run.context.seconds < 5  # the speed target (< 0.2 s) is measured in benchmarks/
    torch.manual_seed(7)  # seeded after start_run: still found when the run ends
    out = prov4ml.end_run()

    doc = read_prov(out.prov_json)
    (code_ent,) = by_type(doc, "Code")
    assert str(code_ent.identifier).endswith(f"run_{run.run_id}.code")
    assert attr(code_ent, "git_commit") == git(repo, "rev-parse", "HEAD")
    assert attr(code_ent, "git_dirty") is True
    assert attr(code_ent, "git_remote") == "https://***@git.example.org/team/project.git"
    (env_ent,) = by_type(doc, "Environment")
    assert attr(env_ent, "packages_file") == f"packages_{run.run_id}.txt"
    (run_act,) = by_type(doc, "Run")
    assert attr(run_act, "seed") == 7 and attr(run_act, "seed_source") == "torch.manual_seed"
    assert attr(run_act, "seed_detected_at") == "run end"

    plans = [a for a in records_of(doc, "wasAssociatedWith") if a.formal_attributes[2][1] is not None]
    assert [str(p.formal_attributes[2][1]) for p in plans] == [str(code_ent.identifier)]
    hosts = by_type(doc, "Host")
    assert len(hosts) == 1 and attr(hosts[0], "hostname") == attr(env_ent, "hostname")
    attributed = {(str(r.formal_attributes[0][1]), str(r.formal_attributes[1][1]))
                  for r in records_of(doc, "wasAttributedTo")}
    assert (str(env_ent.identifier), str(hosts[0].identifier)) in attributed

    # the diff and the package list are MLflow artifacts, byte for byte the hashed files
    dl = str(out.provenance_dir / "dl")
    diff_local = client.download_artifacts(run.run_id, f"code/code_diff_{run.run_id}.patch", dl)
    assert hashlib.sha256(Path(diff_local).read_bytes()).hexdigest() == attr(code_ent, "git_diff_sha256")
    pkg_local = client.download_artifacts(run.run_id, f"environment/packages_{run.run_id}.txt", dl)
    assert hashlib.sha256(Path(pkg_local).read_bytes()).hexdigest() == attr(env_ent, "packages_sha256")
    assert "s3cr3t" not in out.prov_json.read_text()


def test_a_failing_capture_warns_and_the_run_goes_on(run_args, monkeypatch):
    def broken(*_args):
        raise OSError("disk on fire")

    monkeypatch.setattr("prov4ml_lightning.capture.capture_environment", broken)
    with pytest.warns(prov4ml.Prov4MLWarning, match="could not capture the environment"):
        prov4ml.start_run(**run_args)
    prov4ml.log_metric("loss", 1.0)
    doc = read_prov(prov4ml.end_run().prov_json)
    assert by_type(doc, "Code") and not by_type(doc, "Environment")


def test_capture_context_files(tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(repo)
    (repo / "train.py").write_text("changed\n")
    ctx = capture_context(tmp_path, "r8")
    assert {(p.name, folder) for p, folder in ctx.files} == {("code_diff_r8.patch", "code"),
                                                             ("packages_r8.txt", "environment")}


def test_the_process_cpu_reading_measures_the_work_between_samples():
    """psutil's cpu_percent measures since the previous call on the same object: a new object per sample
    read 0.0 every time."""
    from prov4ml_lightning.capture.system_metrics import sample_system_metrics

    sample_system_metrics()  # primes the measurement
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # 0.3 s of this process's CPU
        sum(i * i for i in range(10_000))
    assert sample_system_metrics()["system/process_cpu_percent"] > 10
