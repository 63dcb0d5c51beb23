"""Distributed runs: rank detection, the run-id exchange, rank parts merged by rank 0, and real
2-process jobs on CPU (gloo): Lightning DDP and DDP-spawn fits with the callback, a rank that
raises, and the functional API under ``torchrun``. Results are read back with MlflowClient and
prov.read.

The real jobs run as scripts in subprocesses (Lightning's launcher starts the second rank itself),
each bounded by a timeout so that a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Prov4MLError, Prov4MLInputError, RunConfig
from prov4ml_lightning.distributed import parts as _rank_parts
from prov4ml_lightning.distributed.parts import SilentRun, open_part, rank_recorder, shared_of
from prov4ml_lightning.distributed.ranks import RankInfo, rank_from_env, share_run
from prov4ml_lightning.provenance.checks import check_file
from prov4ml_lightning.records import RunInfo
from prov4ml_lightning.runs import open_run
from prov4ml_lightning.sinks.mlflow.fetch import fetch_provenance
from prov4ml_lightning.sinks.mlflow.sink import default_tracking_uri
from prov4ml_lightning.sinks.mlflow.store import open_client
from tests.helpers import attr, by_type, read_prov, records_of, user_params, wait_until

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent  # the job scripts live beside this module
JOB_TIMEOUT_S = 120


# -- rank detection and the run-id exchange (in-process) ---------------------------------------------
def test_rank_from_env_reads_torchrun_and_lightning_variables(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    alone = rank_from_env()
    assert (alone.global_rank, alone.world_size, alone.distributed) == (0, 1, False)

    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("GROUP_RANK", "2")  # torchrun's node
    monkeypatch.setenv("NODE_RANK", "7")  # Lightning's; torchrun's wins
    rank = rank_from_env()
    assert (rank.global_rank, rank.local_rank, rank.node_rank, rank.world_size) == (5, 1, 2, 8)
    assert rank.distributed and rank.pid == os.getpid() and rank.device == "cpu"
    assert rank.label == f"rank 5 (node 2, local rank 1) on {rank.host}, cpu"

    monkeypatch.delenv("GROUP_RANK")
    monkeypatch.setenv("LOCAL_RANK", "not-a-number")
    rank = rank_from_env()
    assert (rank.node_rank, rank.local_rank) == (7, 5)  # a bad LOCAL_RANK falls back to the global rank

    # a process Lightning's launcher started: LOCAL_RANK, NODE_RANK, WORLD_SIZE, no RANK
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("NODE_RANK", "0")
    assert rank_from_env().global_rank == 1
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert rank_from_env().global_rank != 0  # the first process of the second node does not write
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert rank_from_env().global_rank == 2


def test_share_run_broadcasts_rank_zeros_run_or_its_failure():
    sent: list = []

    def broadcast(obj):  # what a 2-rank broadcast does: rank 0's object everywhere
        sent.append(obj)
        return sent[0]

    zero, one = RankInfo(0, world_size=2), RankInfo(1, world_size=2)
    run, shared = share_run(zero, lambda: ("the run", {"run_id": "abc", "session": "session_1"}), broadcast, "t")
    assert (run, shared) == ("the run", {"run_id": "abc", "session": "session_1"})
    run, shared = share_run(one, lambda: pytest.fail("only rank 0 opens the run"), broadcast, "t")
    assert (run, shared["run_id"]) == (None, "abc")

    sent.clear()

    def broken():
        raise Prov4MLInputError("start_run: experiment_name must not contain '/'")

    with pytest.raises(Prov4MLInputError, match="experiment_name"):  # rank 0 raises its own error ...
        share_run(zero, broken, broadcast, "t")
    with pytest.raises(Prov4MLError, match=r"t on rank 1: global rank 0 could not open the run "
                                           r"\(Prov4MLInputError: start_run: experiment_name"):
        share_run(one, broken, broadcast, "t")  # ... after joining the broadcast, and so do the others
    assert len(sent) == 2  # both ranks joined the one broadcast; none was left waiting


def test_other_rank_records_nothing_without_collect_all_ranks(run_args, prov_dir, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run = prov4ml.start_run(**run_args)  # no communication at all: nothing to wait for
    assert isinstance(run, SilentRun) and prov4ml.active_run() is run
    prov4ml.log_metric("loss", 1.0)
    prov4ml.log_params({"lr": 0.1})
    assert prov4ml.get_run_id() is None
    with pytest.raises(prov4ml.RunAlreadyActiveError):  # as on rank 0
        prov4ml.start_run(**run_args)
    child = prov4ml.start_run(**run_args, nested=True)
    assert isinstance(child, SilentRun) and child.parent is run and prov4ml.active_run() is child
    assert prov4ml.end_run() is None
    assert prov4ml.active_run() is run
    assert prov4ml.end_run() is None
    assert prov4ml.active_run() is None
    assert not prov_dir.exists() or not any(prov_dir.iterdir())  # this rank wrote no file


def test_collect_all_ranks_needs_a_process_group(run_args, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(Prov4MLInputError, match=r"collect_all_ranks=True.*init_process_group"):
        prov4ml.start_run(**run_args, collect_all_ranks=True)
    assert prov4ml.active_run() is None


@pytest.mark.slow
def test_rank_zero_merges_parts_finished_unfinished_and_missing(run_args, client, monkeypatch):
    """Rank 0 of a 4-rank job: rank 1 ended its part, rank 2 is still running (killed, or stuck in a
    collective), rank 3 never wrote one (another node without a shared folder)."""
    monkeypatch.setattr(_rank_parts, "PART_WAIT_S", 0.5)
    run = open_run(RunConfig(**run_args, collect_all_ranks=True), rank=RankInfo(0, world_size=4))
    shared = shared_of(run)
    assert shared == {"run_id": run.run_id, "session": "session_1"}
    parts = []
    for k in (1, 2):
        # what open_part builds on rank k (made current there; here rank 0's run is current)
        folder = Path(run_args["provenance_save_dir"]).resolve() / f"ranks_{run.run_id}" / "session_1" / f"rank{k}"
        folder.mkdir(parents=True)
        info = RunInfo(run_id=run.run_id, experiment_name="x", experiment_id="", run_name=f"rank{k}",
                                  namespace=run.info.namespace, tracking_uri="", provenance_dir=str(folder),
                                  start_time=time.time(), user="")
        part = rank_recorder(info, RankInfo(k, local_rank=k, world_size=4, device=f"cuda:{k}"),
                             RunConfig(**run_args, flush_interval=0.1))
        part.log_params({"shard": k})
        for step in range(3):
            part.log_metric("loss", 10.0 * k + step, step=step)
        notes = folder / "notes.txt"
        notes.write_text(f"rank {k}")
        part.log_artifact(notes)
        parts.append(part)
    parts[0].end("FINISHED")
    parts[1].flush()  # rank 2 never ends: its points so far are on disk
    run.log_metric("loss", 0.5, step=0)
    t0 = time.monotonic()
    out = run.end()
    assert time.monotonic() - t0 < 10  # waited at most PART_WAIT_S for rank 2
    parts[1].end("FAILED")  # too late for the document; its own files only

    doc = read_prov(out.prov_json)
    ranks = {attr(a, "global_rank"): a for a in by_type(doc, "Rank")}
    assert sorted(ranks) == [0, 1, 2, 3]
    assert attr(ranks[0], "status") == "FINISHED" and attr(ranks[0], "writes_mlflow_run") is True
    assert (attr(ranks[1], "status"), attr(ranks[1], "device"), attr(ranks[1], "param.shard")) == \
        ("FINISHED", "cuda:1", 1)
    assert attr(ranks[2], "status") == "RUNNING" and "still running" in attr(ranks[2], "note")
    assert attr(ranks[3], "status") == "MISSING" and attr(ranks[3], "part").endswith("rank3")
    # each rank's points are its own series, generated by its own activity
    series = {attr(s, "name"): s for s in by_type(doc, "MetricSeries")}
    assert {k: attr(series[k], "count") for k in ("loss", "rank1/loss", "rank2/loss")} == \
        {"loss": 1, "rank1/loss": 3, "rank2/loss": 3}
    generated = {(g.formal_attributes[0][1].localpart, g.formal_attributes[1][1].localpart)
                 for g in records_of(doc, "wasGeneratedBy")}
    rid = f"run_{run.run_id}"
    assert (series["rank1/loss"].identifier.localpart, f"{rid}.rank_1") in generated
    # rank 0's own points: generated by the session of the run that logged them (part of the run)
    assert (series["loss"].identifier.localpart, f"{rid}.session_1") in generated
    artifacts = {a.identifier.localpart: a for a in by_type(doc, "Artifact")}
    assert {attr(a, "path").rsplit("/", 2)[-2] for a in artifacts.values()} == {"rank1", "rank2"}
    assert all(not attr(a, "artifact_uri") for a in artifacts.values())  # only rank 0 uploads
    assert check_file(out.prov_json) == []
    # MLflow: one run, the other ranks' points under rank<k>/
    assert [m.value for m in client.get_metric_history(run.run_id, "rank1/loss")] == [10.0, 11.0, 12.0]
    assert client.get_run(run.run_id).data.tags["prov4ml.world_size"] == "4"


def test_open_part_joins_a_run_the_user_opened_on_that_rank(run_args):
    silent = _rank_parts.open_silent(RankInfo(1, world_size=2), "abc")
    try:
        assert prov4ml.active_run() is silent and prov4ml.get_run_id() == "abc"
        assert open_part(RankInfo(1, world_size=2), {"run_id": "abc", "session": "session_1"}, RunConfig(**run_args),
                         join_current=True) is None
    finally:
        prov4ml.end_run()


# -- real 2-process jobs --------------------------------------------------------------------------------
def _job(args: list[str], cwd: Path, timeout: float = JOB_TIMEOUT_S) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    try:
        return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as err:  # the job hung: that is the failure
        pytest.fail(f"{args[0]} did not finish within {timeout} s: {str(err.stderr)[-3000:]}")


def _printed_runs(out: str) -> dict[int, str]:
    return {int(line.split()[1]): line.split()[3] for line in out.splitlines() if line.startswith("RANK ")}


def _ranks_of(prov_json: Path) -> dict[int, object]:
    return {attr(a, "global_rank"): a for a in by_type(read_prov(prov_json), "Rank")}


@pytest.mark.slow
def test_ddp_fit_through_a_tracking_server_is_one_run_with_every_rank(mlflow_server, tmp_path):
    done = _job([str(HERE / "ddp_train.py"), str(tmp_path), "--tracking-uri", mlflow_server.uri,
                 "--upload-checkpoints", "--test"], tmp_path)  # fit, then test the best checkpoint
    assert done.returncode == 0, done.stderr[-3000:]
    printed = _printed_runs(done.stdout)
    assert sorted(printed) == [0, 1] and printed[0] == printed[1]  # the run id reached both ranks
    run_id = printed[0]

    client = MlflowClient(mlflow_server.uri)  # a separate client, as a colleague would read it
    experiment = client.get_experiment_by_name("ddp")
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_id = '{run_id}'")
    assert run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.1" and run.data.tags["prov4ml.world_size"] == "2"
    # 64 samples shared by 2 ranks in batches of 8: 4 optimizer steps per epoch (rank 0's values, as reduced),
    # at Lightning's steps (the last batch of each epoch)
    assert [m.step for m in client.get_metric_history(run_id, "train_loss_epoch")] == [3, 7, 11]
    for k in (0, 1):  # each rank's own system metrics, named by rank
        assert client.get_metric_history(run_id, f"rank{k}/system/process_rss_mb")
    assert not any(key.startswith("system/") for key in run.data.metrics)

    assert client.get_metric_history(run_id, "test_acc")  # the test joined the same run

    # the PROV document, fetched through the server the way `prov4ml show <run id>` does
    prov_json = fetch_provenance(mlflow_server.uri, run_id, tmp_path / "fetched")
    sessions = {(attr(r, "session"), attr(r, "global_rank")): r for r in by_type(read_prov(prov_json), "Rank")}
    assert sorted(sessions) == [("session_1", 0), ("session_1", 1), ("session_2", 0), ("session_2", 1)]
    assert sessions[("session_2", 1)].identifier.localpart == f"run_{run_id}.rank_1.session_2"
    ranks = {k: sessions[("session_1", k)] for k in (0, 1)}  # the fit
    assert {attr(r, "status") for r in sessions.values()} == {"FINISHED"}
    assert {attr(r, "status") for r in ranks.values()} == {"FINISHED"}
    assert [attr(ranks[k], "local_rank") for k in (0, 1)] == [0, 1]
    assert {attr(r, "node_rank") for r in ranks.values()} == {0}
    assert {attr(r, "device") for r in ranks.values()} == {"cpu"} and all(attr(r, "host") for r in ranks.values())
    assert attr(ranks[0], "pid") != attr(ranks[1], "pid")
    assert check_file(prov_json) == []
    names = {attr(s, "name") for s in by_type(read_prov(prov_json), "MetricSeries")}
    assert {"train_loss_step", "rank0/cpu_usage", "rank1/cpu_usage"} <= names

    # files: rank 1 wrote only inside its own part folder; rank 0 wrote no part
    prov_dir = tmp_path / "prov"
    for session in ("session_1", "session_2"):
        assert sorted(p.name for p in (prov_dir / f"ranks_{run_id}" / session).iterdir()) == ["rank1"]
    assert sorted(p.name for p in prov_dir.iterdir() if p.name.startswith("journal_")) == [f"journal_{run_id}.jsonl"]
    # artifacts went through the server: checkpoints, PROV files, the model (loads back)
    artifacts = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert artifacts and all(p.endswith(".ckpt") for p in artifacts)
    assert {"prov/packages_" + run_id + ".txt", f"prov/provgraph_{run_id}.json"} <= \
        {a.path for a in client.list_artifacts(run_id, "prov")}
    assert not (tmp_path / "mlflow" / "artifacts").exists()
    (model,) = by_type(read_prov(prov_json), "Model")
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:
        loaded = mlflow.pytorch.load_model(attr(model, "model_uri"))
    finally:
        mlflow.set_tracking_uri(None)
    assert loaded(torch.zeros(2, 4)).shape == (2, 1)


@pytest.mark.parametrize("fail_rank", [1, 0])
@pytest.mark.slow
def test_ddp_rank_that_raises_ends_the_run_failed_without_a_hang(tmp_path, fail_rank):
    t0 = time.monotonic()
    done = _job([str(HERE / "ddp_train.py"), str(tmp_path), "--fail-rank", str(fail_rank)], tmp_path)
    elapsed = time.monotonic() - t0
    assert done.returncode != 0 and f"boom on rank {fail_rank}" in done.stderr
    assert elapsed < JOB_TIMEOUT_S
    # Lightning SIGKILLs rank 0 once rank 1 has died ("Forcefully terminating all other processes"), maybe while
    # its end_run waits for the MLflow service: the service, detached, finishes the run's end on its own (the
    # store lock: it may still be creating the store).
    client = open_client(default_tracking_uri(tmp_path / "mlflow"))

    def ended():
        experiment = client.get_experiment_by_name("ddp")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        return runs if runs and runs[0].info.status != "RUNNING" else None

    (run,) = wait_until(ended, timeout=120, interval=0.2)
    assert run.info.status == "FAILED"
    prov_json = tmp_path / "prov" / f"provgraph_{run.info.run_id}.json"
    ranks = _ranks_of(prov_json)
    assert sorted(ranks) == [0, 1] and attr(ranks[0], "status") == "FAILED"
    if fail_rank == 1:  # rank 1 ended its part before it exited, so rank 0 merged its error
        assert attr(ranks[1], "status") == "FAILED"
        assert attr(ranks[1], "error") == "RuntimeError: boom on rank 1 at step 3"
    else:  # rank 1 was still waiting in a collective for rank 0 when rank 0 ended the run
        assert attr(ranks[1], "status") == "RUNNING"
    (fit,) = by_type(read_prov(prov_json), "Fit")
    assert attr(fit, "status") == "FAILED"
    assert check_file(prov_json) == []


@pytest.mark.slow
def test_ddp_spawn_fit_is_one_run_with_every_rank(tmp_path):
    done = _job([str(HERE / "ddp_train.py"), str(tmp_path), "--strategy", "ddp_spawn"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(default_tracking_uri(tmp_path / "mlflow"))
    (run,) = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert run.info.status == "FINISHED"
    assert client.get_metric_history(run.info.run_id, "rank1/cpu_usage")
    ranks = _ranks_of(tmp_path / "prov" / f"provgraph_{run.info.run_id}.json")
    assert sorted(ranks) == [0, 1] and {attr(r, "status") for r in ranks.values()} == {"FINISHED"}
    # the launching process is none of the ranks, yet its callback knows the run and where it was written
    (line,) = [line.split() for line in done.stdout.splitlines() if line.startswith("RANK ")]
    assert line[3] == run.info.run_id
    assert Path(line[5]) == tmp_path / "prov" / f"provgraph_{run.info.run_id}.json"
    assert not list((tmp_path / "prov").glob(".prov4ml_handoff_*"))  # read once, then removed


@pytest.mark.slow
def test_functional_api_under_torchrun(tmp_path):
    done = _job(["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                 str(HERE / "torchrun_script.py"), str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = {}
    for line in done.stdout.splitlines():
        if line.startswith("RANK "):
            _, rank, _, collect, run_id = line.split()
            printed[(int(rank), collect == "True")] = run_id
    assert printed[(1, False)] == "None"  # rank-0-only: rank 1 records nothing and knows no run
    assert printed[(0, True)] == printed[(1, True)]  # all ranks: the id was broadcast
    client = MlflowClient(default_tracking_uri(tmp_path / "mlflow"))
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("torchrun").experiment_id])}
    assert sorted(runs) == ["collect-False", "collect-True"]  # one MLflow run per start_run, not per rank
    assert {r.info.status for r in runs.values()} == {"FINISHED"}

    only_zero, every = runs["collect-False"], runs["collect-True"]
    assert printed[(0, False)] == only_zero.info.run_id
    assert sorted(only_zero.data.metrics) == ["loss", "reduced"]
    assert sorted(every.data.metrics) == ["loss", "rank1/loss", "rank1/reduced",
                                          "reduced"]
    # rank 1 logged rank + step; all_reduce made "reduced" the same on both ranks
    assert [m.value for m in client.get_metric_history(every.info.run_id, "rank1/loss")] == [1, 2, 3, 4, 5]
    assert ([m.value for m in client.get_metric_history(every.info.run_id, "rank1/reduced")]
            == [m.value for m in client.get_metric_history(every.info.run_id, "reduced")]
            == [10.0, 12.0, 14.0, 16.0, 18.0])
    assert user_params(every.data.params) == {"rank_seed": "100"}  # rank 0's; rank 1's is an attribute of its activity

    doc_every = tmp_path / "prov" / f"provgraph_{every.info.run_id}.json"
    ranks = _ranks_of(doc_every)
    assert sorted(ranks) == [0, 1] and attr(ranks[1], "param.rank_seed") == 101
    assert sorted(attr(a, "path").rsplit("/", 1)[-1] for a in by_type(read_prov(doc_every), "Artifact")) == \
        ["notes_rank0.txt", "notes_rank1.txt"]
    assert sorted(_ranks_of(tmp_path / "prov" / f"provgraph_{only_zero.info.run_id}.json")) == [0]
    assert check_file(doc_every) == []
