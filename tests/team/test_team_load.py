"""Load on the team stack in CI: several training processes at once against PostgreSQL + S3 +
``mlflow server``, each a Lightning fit recorded by ``Prov4MLCallback``: every run FINISHED and
no metric point lost, read back through the server. The same children as
``benchmarks/team_load.py`` (which measures N=8 and compares with MLFlowLogger: docs/performance.md)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a server stack and several Lightning fits at once

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks" / "team_load.py"
PROCS = 4


def _bench():
    spec = importlib.util.spec_from_file_location("team_load", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_several_processes_at_once_lose_nothing(team, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([sys.executable, str(BENCH), "--epochs", "1", "--child", "prov4ml", team.uri, "ci-load",
                               str(tmp_path / str(i))], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(PROCS)]
    outs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
    counts = _bench().read_back(team.uri, "ci-load", 1)
    assert counts["runs"] == PROCS and counts["finished"] == PROCS
    assert counts["points_lost"] == 0 and counts["points_kept"] > 0
