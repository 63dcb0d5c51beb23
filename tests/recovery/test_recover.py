"""Unit tests of recovery/recover.py: a journal and a sidecar written with the core's own writers (no
training process, no MLflow) folded back into PROV files."""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import pytest

from prov4ml_lightning.context import Context
from prov4ml_lightning.errors import Prov4MLInputError
from prov4ml_lightning.records import ActivityRecord, RunInfo
from prov4ml_lightning.recovery.recover import CRASHED, read_sidecar, recover, run_journals
from prov4ml_lightning.tracking.journal import Journal, journal_path, read_journal
from prov4ml_lightning.tracking.writer import MetricWriter
from tests.helpers import attr, by_type, read_prov

T0 = 1_700_000_000.0


def _dead_run(folder: Path, run_id: str = "r1", *, ended: bool = False) -> None:
    """What a run killed after two epochs leaves: a journal and a metric sidecar."""
    folder.mkdir(parents=True, exist_ok=True)
    info = RunInfo(run_id=run_id, experiment_name="exp", experiment_id="1", run_name="killed", namespace="http://x.org/",
                   tracking_uri="file:///m", provenance_dir=str(folder), start_time=T0, user="alice")
    journal = Journal(journal_path(folder, run_id))
    # this process's pid counts as dead: recover() leaves only *other* live processes alone
    journal.write("start", info=info, pid=os.getpid(), host=socket.gethostname(), software_version="1.2.3",
                  formats=["json"], offline=True, mlflow_save_dir="", metrics_file=f"metrics_{run_id}.csv")
    journal.write("params", params={"lr": 0.5}, mlflow=[["lr", "0.5"]])
    journal.write("activity_start", record=ActivityRecord("epoch_0", "TrainingEpoch", "epoch 0", T0 + 1))
    journal.write("activity_end", ident="epoch_0", end_time=T0 + 5, attributes={"epoch": 0})
    if ended:
        journal.write("end", status="FINISHED", end_time=T0 + 9)
    journal.close()
    points = [("loss", Context.TRAINING.value, "loss", s, 1 / (s + 1), int((T0 + 2 + s) * 1000))
              for s in range(4)]
    batches = [points]
    writer = MetricWriter(lambda: batches.pop() if batches else [], lambda _: None,
                          folder / f"metrics_{run_id}.csv", lambda _: None, folder / "unsent.csv")
    writer.close()


def test_a_killed_run_is_rebuilt_from_its_journal_and_sidecar(tmp_path: Path):
    prov_dir = tmp_path / "prov"
    _dead_run(prov_dir)
    assert len(read_sidecar(prov_dir / "metrics_r1.csv")) == 4
    (done,) = recover(prov_dir)
    assert (done.run_id, done.status, done.metric_points, done.skipped) == ("r1", CRASHED, 4, None)

    doc = read_prov(done.prov_json)
    (run,) = by_type(doc, "Run")
    assert attr(run, "status") == CRASHED and attr(run, "tag_prov4ml.crashed") == "true"
    (loss,) = by_type(doc, "MetricSeries")
    assert (attr(loss, "count"), attr(loss, "min_value"), attr(loss, "last_step")) == (4, 0.25, 3)
    (lr,) = by_type(doc, "Parameter")
    assert attr(lr, "value") == 0.5
    (epoch,) = by_type(doc, "TrainingEpoch")
    assert attr(epoch, "epoch") == 0
    assert read_journal(journal_path(prov_dir, "r1"))[-1]["event"] == "recovered"

    (again,) = recover(prov_dir)  # once is enough
    assert again.skipped == "already recovered" and again.prov_json is None


def test_a_run_that_ended_is_left_alone_unless_forced(tmp_path: Path):
    _dead_run(tmp_path, "fine", ended=True)
    (skipped,) = recover(tmp_path)
    assert (skipped.status, skipped.skipped) == ("FINISHED", "ended cleanly")
    (forced,) = recover(tmp_path, force=True)
    assert forced.status == "FINISHED" and forced.prov_json is not None
    assert attr(by_type(read_prov(forced.prov_json), "Run")[0], "status") == "FINISHED"


def test_read_sidecar_skips_rows_a_crash_cut_short(tmp_path: Path):
    sidecar = tmp_path / "metrics_r.csv"
    sidecar.write_text("key,context,mlflow_key,step,value,timestamp_ms\r\nloss,training,training/loss,0,0.5,1000\r\n"
                       "loss,training,training/loss,1,0.2\r\nloss,training,training/loss,x,0.1,3\r\n", encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_sidecar(sidecar) == [("loss", "training", "training/loss", 0, 0.5, 1000)]
    assert read_sidecar(tmp_path / "missing.csv") == []


def test_errors_are_input_errors(tmp_path: Path):
    with pytest.raises(Prov4MLInputError, match="no such provenance folder"):
        run_journals(tmp_path / "missing")
    _dead_run(tmp_path, "r1")
    with pytest.raises(Prov4MLInputError, match="no journal of run 'other'"):
        recover(tmp_path, run_id="other")
