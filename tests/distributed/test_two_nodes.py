"""A 2-node job on one machine: two ``torchrun`` launchers (``--nnodes=2 --node_rank=0/1``, rendezvous on
127.0.0.1, gloo), one rank each. One run with both ranks and their node ranks; a node killed mid-fit
ends the run FAILED on the surviving node within a bounded time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from prov4ml_lightning.sinks.mlflow.sink import default_tracking_uri
from tests.helpers import attr, by_type, read_prov
from tests.mlflow_server import free_port

pytestmark = pytest.mark.slow  # two launchers, two Lightning processes

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "two_node_train.py"
BOUND_S = 150  # the whole job, a dead node included: no hang


def _launch(tmp_path: Path, port: int, *extra: str) -> list[subprocess.Popen]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    nodes = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
               str(SCRIPT), str(tmp_path), *extra]
        nodes.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True))  # a node = its own process group
    return nodes


def _finish(nodes: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    deadline = time.monotonic() + BOUND_S
    out = []
    for proc in nodes:
        try:
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in nodes:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            pytest.fail(f"the 2-node job did not end within {BOUND_S} s (a hang)")
        out.append((proc.returncode, stdout, stderr))
    return out


def _run(tmp_path: Path):
    client = MlflowClient(default_tracking_uri(tmp_path / "mlflow"))
    (run,) = client.search_runs([client.get_experiment_by_name("two-nodes").experiment_id])
    ranks = {attr(a, "global_rank"): a for a in by_type(read_prov(tmp_path / "prov" /
                                                                   f"provgraph_{run.info.run_id}.json"), "Rank")}
    return run, ranks


def test_two_node_job_is_one_run_with_every_rank_and_its_node(tmp_path):
    (rc0, out0, err0), (rc1, out1, err1) = _finish(_launch(tmp_path, free_port()))
    assert rc0 == 0 and rc1 == 0, (err0[-2000:], err1[-2000:])
    printed = {line.split()[1]: line.split()[3] for line in (out0 + out1).splitlines() if line.startswith("RANK ")}
    assert sorted(printed) == ["0", "1"] and printed["0"] == printed["1"]
    run, ranks = _run(tmp_path)
    assert run.info.run_id == printed["0"] and run.info.status == "FINISHED"
    assert run.data.tags["prov4ml.world_size"] == "2"
    assert sorted(ranks) == [0, 1]
    assert {r: (attr(a, "node_rank"), attr(a, "local_rank"), attr(a, "status")) for r, a in ranks.items()} == {
        0: (0, 0, "FINISHED"), 1: (1, 0, "FINISHED")}


def test_a_node_killed_mid_fit_ends_the_run_failed_without_hanging(tmp_path):
    start = time.monotonic()
    (rc0, _, err0), (rc1, _, _) = _finish(_launch(tmp_path, free_port(), "--die-at", "3"))
    elapsed = time.monotonic() - start
    assert rc1 == -signal.SIGKILL  # node 1 died
    assert rc0 != 0  # node 0 saw it and failed
    run, ranks = _run(tmp_path)
    assert run.info.status == "FAILED", err0[-2000:]
    assert attr(ranks[0], "status") == "FAILED" and attr(ranks[0], "node_rank") == 0
    assert attr(ranks[1], "node_rank") == 1 and attr(ranks[1], "status") == "RUNNING"  # never ended its part
    assert elapsed < BOUND_S
