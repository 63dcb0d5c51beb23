"""Shared fixtures: one embedded MLflow store per test session and a guard against leaked runs."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import prov4ml_lightning as prov4ml
from prov4ml_lightning.files import CACHE_ENV
from prov4ml_lightning.tracking import registry
from prov4ml_lightning.tracking.config import WAIT_ENV
from tests.mlflow_server import mlflow_server, mlflow_server_session  # noqa: F401  (a real `mlflow server`)

# The tests read MLflow right after end_run, as users do: end_run waits for the MLflow service by default.
# A variable left from the caller's shell must not change that; the opt-out (PROV4ML_WAIT_FOR_MLFLOW=0) has
# its own tests (tests/sinks/test_service.py), which set it.
os.environ.pop(WAIT_ENV, None)


def _tree_status() -> str | None:
    """``git status --porcelain`` of the checkout the tests run in (``None`` outside a git work tree)."""
    root = Path(__file__).resolve().parents[1]
    try:
        proc = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=all"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


@pytest.fixture(scope="session", autouse=True)
def tree_stays_clean():
    """Fail the session when a test, an example or a server it started wrote into the repository:
    everything a test makes belongs under its temporary folder."""
    before = _tree_status()
    yield
    after = _tree_status()
    if before is not None and after is not None and after != before:
        new = sorted(set(after.splitlines()) - set(before.splitlines()))
        pytest.fail("the test session changed the repository's working tree (git status --porcelain): "
                    + "; ".join(new or after.splitlines()))


@pytest.fixture(scope="session", autouse=True)
def cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """prov4ml's cache folder (file hashes, the migrated empty MLflow store new stores are copied
    from) in the session's temporary folder, for this process and the subprocesses it starts."""
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("prov4ml-cache"))
    yield
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before


@pytest.fixture(scope="session")
def mlflow_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite store for the session: creating one costs seconds of schema migrations."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def prov_dir(tmp_path: Path) -> Path:
    return tmp_path / "prov"


@pytest.fixture
def run_args(prov_dir: Path, mlflow_dir: Path) -> dict:
    """Arguments for ``start_run`` with an experiment of the test's own."""
    return {
        "prov_user_namespace": "www.example.org",
        "experiment_name": f"test-{uuid.uuid4().hex[:8]}",
        "provenance_save_dir": str(prov_dir),
        "mlflow_save_dir": str(mlflow_dir),
    }


@pytest.fixture
def client(mlflow_dir: Path):
    from mlflow.tracking import MlflowClient

    from prov4ml_lightning.sinks.mlflow.sink import default_tracking_uri

    return MlflowClient(default_tracking_uri(mlflow_dir))


@pytest.fixture(autouse=True)
def no_leaked_runs(monkeypatch: pytest.MonkeyPatch):
    """Fail a test that leaves a run open (and close it so the next test starts clean).

    Also keep MLFLOW_TRACKING_URI out of the next test: Lightning's MLFlowLogger (mlflow.set_tracking_uri)
    sets it in os.environ, and a store a later test (or its subprocess) inherited would take its runs."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    leaked = registry.current_run()
    if leaked is not None:
        while registry.current_run() is not None:
            prov4ml.end_run("KILLED")
        pytest.fail(f"test leaked open run {leaked.run_id}")


# Fixtures that start a server, a script in a subprocess or Lightning fits: a test using one must be
# marked ``slow`` so that ``pytest -m "not slow"`` stays fast (checked at collection, not by the clock).
_SLOW_FIXTURES = frozenset({"mlflow_server", "mlflow_server_session", "mlflow_server_factory", "script",
                            "lightning_runs", "callback_documents"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [item.nodeid for item in items
                if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("mark these tests @pytest.mark.slow (they use a server, a subprocess or a "
                                "Lightning fit): " + ", ".join(unmarked))
