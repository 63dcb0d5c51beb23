"""Faults in the training process: exception, Ctrl+C, SIGTERM, SIGKILL. What survives each.

Every test reads the run back with the real tools: ``MlflowClient`` for the MLflow run,
``prov.read`` for the PROV document, ``csv`` for the metric sidecar.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import signal
import time
from pathlib import Path

import pytest

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Context
from prov4ml_lightning.provenance.checks import check_file
from prov4ml_lightning.tracking.journal import read_journal
from tests.helpers import attr, by_type, read_prov

pytestmark = pytest.mark.timeout(180)


def sidecar_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))[1:]


def series_counts(prov_json: Path) -> dict[tuple[str, str], int]:
    doc = read_prov(prov_json)
    return {(attr(s, "name"), attr(s, "context")): attr(s, "count") for s in by_type(doc, "MetricSeries")}


def run_status(prov_json: Path) -> str:
    (run,) = by_type(read_prov(prov_json), "Run")
    return attr(run, "status")


def test_exception_mid_epoch_ends_failed_and_keeps_every_point(run_args, client):
    logged = 0
    with pytest.raises(RuntimeError, match="boom"), prov4ml.start_run(**run_args) as run:
        prov4ml.log_params({"lr": 0.1, "optimizer": {"name": "sgd"}})
        for epoch in range(5):
            run.start_activity(f"epoch{epoch}", "TrainingEpoch", f"epoch {epoch}")
            for step in range(10):
                prov4ml.log_metric("loss", 1.0 / (1 + logged), Context.TRAINING, step=logged)
                logged += 1
                if epoch == 2 and step == 5:
                    raise RuntimeError("boom mid-epoch")
            run.end_activity(f"epoch{epoch}")
    assert logged == 26
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert sorted(m.step for m in client.get_metric_history(run.run_id, "loss")) == list(range(26))
    out = run.outputs
    assert run_status(out.prov_json) == "FAILED"
    assert series_counts(out.prov_json)[("loss", "training")] == 26
    assert len(by_type(read_prov(out.prov_json), "TrainingEpoch")) == 3  # the interrupted epoch is closed too
    assert len(sidecar_rows(out.metrics_file)) == 26
    events = read_journal(out.provenance_dir / f"journal_{run.run_id}.jsonl")
    assert events[-1]["event"] == "end" and events[-1]["status"] == "FAILED"


def test_real_sigint_ends_killed(run_args, client):
    logged = 0
    with pytest.raises(KeyboardInterrupt), prov4ml.start_run(**run_args) as run:
        for step in range(1000):
            prov4ml.log_metric("loss", float(step), step=step)
            logged += 1
            if step == 40:
                os.kill(os.getpid(), signal.SIGINT)  # Python's default handler raises KeyboardInterrupt here
                time.sleep(5)
    assert logged == 41
    assert client.get_run(run.run_id).info.status == "KILLED"
    assert len(client.get_metric_history(run.run_id, "loss")) == 41
    assert run_status(run.outputs.prov_json) == "KILLED"
    assert series_counts(run.outputs.prov_json)[("loss", "training")] == 41


TRAIN = """
import json, sys, time
import prov4ml_lightning as prov4ml
from prov4ml_lightning import Context
from prov4ml_lightning.provenance.checks import check_file

cfg = json.loads(sys.argv[1])
if cfg.get("handlers"):
    from prov4ml_lightning.signals import install_signal_handlers
    install_signal_handlers()
logged = val = 0

def train(run):
    global logged, val
    prov4ml.log_params({"lr": 0.1, "optimizer": {"name": "sgd"}})
    art = cfg["prov"] + "/../notes.txt"
    open(art, "w").write("notes")
    prov4ml.log_artifact(art)
    for epoch in range(10_000):
        run.start_activity(f"epoch{epoch}", "TrainingEpoch", f"epoch {epoch}")
        for step in range(10):
            prov4ml.log_metric("loss", 1.0 / (1 + logged), step=logged)
            logged += 1
        prov4ml.log_metric("acc", epoch / 100, Context.VALIDATION, step=epoch)
        val += 1
        if epoch == 3:
            run.flush()
            print("ready", run.run_id, logged, val, flush=True)
            if cfg["mode"] == "stall":
                time.sleep(600)
        if epoch == 5:
            print("past", logged, flush=True)  # the loop runs on past "ready": a signal now lands mid-epoch
        if epoch >= 3:
            time.sleep(0.01)

try:
    if cfg["with"]:
        with prov4ml.start_run("www.example.org", cfg["experiment"], cfg["prov"], cfg["mlflow"]) as run:
            train(run)
    else:
        train(prov4ml.start_run("www.example.org", cfg["experiment"], cfg["prov"], cfg["mlflow"]))
finally:
    print("logged", logged, val, flush=True)
"""


def _cfg(tmp_path: Path, mlflow_dir: Path, **kw) -> str:
    return json.dumps({"experiment": f"crash-{tmp_path.name}", "prov": str(tmp_path / "prov"),
                       "mlflow": str(mlflow_dir), "handlers": False, "with": True, "mode": "loop", **kw})


@pytest.mark.parametrize("with_block", [True, False], ids=["with-start_run", "no-with"])
@pytest.mark.slow
def test_sigterm_with_prov4ml_handler_ends_killed(script, tmp_path, mlflow_dir, client, with_block):
    proc = script(TRAIN).start(_cfg(tmp_path, mlflow_dir, handlers=True, **{"with": with_block}))
    run_id = proc.wait_for("ready").split()[1]
    proc.wait_for("past")
    proc.signal(signal.SIGTERM)
    code, _out, err = proc.finish()
    assert code == 128 + signal.SIGTERM, err  # exits like a process killed by SIGTERM, without a traceback
    assert "Traceback" not in err
    logged, val = map(int, next(ln for ln in proc.lines if ln.startswith("logged")).split()[1:])
    assert logged > 40
    assert client.get_run(run_id).info.status == "KILLED"
    assert len(client.get_metric_history(run_id, "loss")) == logged
    assert len(client.get_metric_history(run_id, "acc")) == val
    prov_json = tmp_path / "prov" / f"provgraph_{run_id}.json"
    assert run_status(prov_json) == "KILLED"
    assert series_counts(prov_json) == {("loss", "training"): logged, ("acc", "validation"): val}
    assert len(sidecar_rows(tmp_path / "prov" / f"metrics_{run_id}.csv")) == logged + val


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM-no-handler"])
@pytest.mark.slow
def test_killed_process_is_recovered_from_journal_and_sidecar(script, tmp_path, mlflow_dir, client, sig, capsys):
    from prov4ml_lightning.cli import main

    proc = script(TRAIN).start(_cfg(tmp_path, mlflow_dir, mode="stall"))
    _, run_id, logged, val = proc.wait_for("ready").split()
    killed_at = datetime.datetime.now(datetime.timezone.utc)
    proc.signal(sig)  # no handler installed: Python's default action for SIGTERM is to die at once, too
    code, _, _ = proc.finish()
    assert code == -sig
    prov_dir = tmp_path / "prov"
    assert not (prov_dir / f"provgraph_{run_id}.json").exists()  # nothing ran at exit
    assert client.get_run(run_id).info.status == "RUNNING"
    # A process killed in the middle of a write leaves cut-short last lines: recovery skips them.
    with open(prov_dir / f"journal_{run_id}.jsonl", "a") as fh:
        fh.write('{"event": "params", "time": 1, "par')
    with open(prov_dir / f"metrics_{run_id}.csv", "a") as fh:
        fh.write("loss,training,training/lo")

    with pytest.warns(prov4ml.Prov4MLWarning, match="cut short"):
        assert main(["recover", str(prov_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{run_id}: recovered as CRASHED, {int(logged) + int(val)} metric points" in out
    prov_json = prov_dir / f"provgraph_{run_id}.json"
    assert check_file(prov_json, round_trip=False) == []  # schema, references, time order
    doc = read_prov(prov_json)
    (run,) = by_type(doc, "Run")
    assert attr(run, "status") == "CRASHED"
    # the end time is the last thing the run recorded, not the time of the recovery
    assert run.get_startTime() <= run.get_endTime() <= killed_at
    assert series_counts(prov_json) == {("loss", "training"): int(logged), ("acc", "validation"): int(val)}
    params = {attr(p, "name"): attr(p, "value") for p in by_type(doc, "Parameter")}
    assert params == {"lr": 0.1, "optimizer/name": "sgd"}
    assert [attr(a, "path").rsplit("/", 1)[-1] for a in by_type(doc, "Artifact")] == ["notes.txt"]
    assert len(by_type(doc, "TrainingEpoch")) == 4
    assert by_type(doc, "Environment") and by_type(doc, "Code")  # the captured context came back too
    assert (prov_dir / f"provgraph_{run_id}.dot").exists()
    # MLflow: ended FAILED, marked crashed, every point the sidecar has
    mrun = client.get_run(run_id)
    assert mrun.info.status == "FAILED" and mrun.data.tags["prov4ml.crashed"] == "true"
    assert len(client.get_metric_history(run_id, "loss")) == int(logged)
    assert f"prov/provgraph_{run_id}.json" in {a.path for a in client.list_artifacts(run_id, "prov")}
    # Twice is harmless.
    with pytest.warns(prov4ml.Prov4MLWarning, match="cut short"):
        assert main(["recover", str(prov_dir)]) == 0
    assert "skipped (already recovered)" in capsys.readouterr().out


@pytest.mark.slow
def test_recover_leaves_a_live_run_alone(script, tmp_path, mlflow_dir):
    from prov4ml_lightning.recovery.recover import recover

    proc = script(TRAIN).start(_cfg(tmp_path, mlflow_dir, mode="stall"))
    run_id = proc.wait_for("ready").split()[1]
    (rec,) = recover(tmp_path / "prov")
    assert rec.run_id == run_id and rec.skipped and "still running" in rec.skipped
    assert not (tmp_path / "prov" / f"provgraph_{run_id}.json").exists()
    proc.kill()


def test_files_cut_short_by_a_kill_take_new_lines_cleanly(tmp_path):
    """A resumed run appends to the journal and sidecar a killed run left with half a last line."""
    from prov4ml_lightning.recovery.recover import read_sidecar
    from prov4ml_lightning.tracking.journal import Journal
    from prov4ml_lightning.tracking.writer import MetricWriter

    journal_file = tmp_path / "journal_r.jsonl"
    journal_file.write_text('{"event": "start", "time": 1}\n{"event": "par')
    journal = Journal(journal_file)
    journal.write("params", params={"lr": 0.1})
    journal.close()
    with pytest.warns(prov4ml.Prov4MLWarning, match="cut short"):
        events = read_journal(journal_file)
    assert [e["event"] for e in events] == ["start", "params"] and events[1]["params"] == {"lr": 0.1}

    sidecar = tmp_path / "metrics_r.csv"
    sidecar.write_text("key,context,mlflow_key,step,value,timestamp_ms\r\nloss,training,training/loss,0,1.0,5\r\nlo")
    points = [("loss", "training", "loss", 1, 0.5, 6)]
    writer = MetricWriter(take=lambda: [points.pop()] if points else [],
                          summarise=lambda pts: None, sidecar=sidecar, send=lambda pts: None,
                          spill=tmp_path / "spill.csv", flush_interval=60)
    writer.flush(final=True)
    writer._file.close()
    assert [(p[0], p[3], p[4]) for p in read_sidecar(sidecar)] == [("loss", 0, 1.0), ("loss", 1, 0.5)]
