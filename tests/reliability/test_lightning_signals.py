"""SIGTERM to a Lightning training process with Prov4MLCallback (Lightning's own signal connector
alone, and with prov4ml's handler installed before ``fit``, which Lightning chains), and SIGKILL
mid-fit followed by ``recover`` + ``sync``."""

from __future__ import annotations

import csv
import json
import signal
from collections import Counter

import pytest
from mlflow.tracking import MlflowClient

from prov4ml_lightning.recovery.recover import run_journals
from tests.helpers import attr, by_type, read_prov

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]  # Lightning fits in killed subprocesses

FIT = """
import json, sys, time
import lightning.pytorch as pl
from prov4ml_lightning import Prov4MLCallback
from tests.lightning_models import TinyDataModule, TinyModel, fast_trainer

cfg = json.loads(sys.argv[1])
if cfg["handlers"]:
    from prov4ml_lightning.signals import install_signal_handlers
    install_signal_handlers()


class Slow(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(0.01)
        if trainer.global_step == 20:
            print("ready", flush=True)
            if cfg["stall"]:
                import prov4ml_lightning
                prov4ml_lightning.active_run().flush()
                print("flushed", flush=True)
                time.sleep(600)


cb = Prov4MLCallback("www.example.org", cfg["experiment"], cfg["prov"], cfg["mlflow"], log_every_n_steps=1)
trainer = fast_trainer(cfg["root"], [cb, Slow()], max_epochs=1000, limit_val_batches=2, enable_checkpointing=False)
trainer.fit(TinyModel(), datamodule=TinyDataModule())
"""


def test_sigterm_or_sigkill_during_fit_keeps_the_provenance(script, tmp_path, mlflow_dir, client):
    # Both variants run at once: importing Lightning costs most of each process's time.
    procs = {}
    for handlers in (False, True, "kill"):
        cfg = {"experiment": f"pl-sigterm-{handlers}", "prov": str(tmp_path / f"prov-{handlers}"),
               "mlflow": str(mlflow_dir), "root": str(tmp_path / f"root-{handlers}"),
               "handlers": handlers is True, "stall": handlers == "kill"}
        procs[handlers] = script(FIT, name=f"fit_{handlers}.py").start(json.dumps(cfg))
    killed = procs.pop("kill")
    for proc in procs.values():
        proc.wait_for("ready")
        proc.signal(signal.SIGTERM)
    killed.wait_for("flushed")
    killed.signal(signal.SIGKILL)
    assert killed.finish()[0] == -signal.SIGKILL
    _check_recovered(tmp_path / "prov-kill", client)
    for handlers, proc in procs.items():
        code, _, err = proc.finish()
        # Lightning's SIGTERMException is a bare SystemExit (status 0); ours exits 128 + 15.
        assert code == (143 if handlers else 0), err[-3000:]
        _check_run(tmp_path / f"prov-{handlers}", client)


def _check_recovered(prov_dir, client) -> None:
    """SIGKILL mid-fit: ``recover`` rebuilds a document that passes every PROV check."""
    from prov4ml_lightning.provenance.checks import check_file
    from prov4ml_lightning.recovery.recover import recover
    from prov4ml_lightning.recovery.sync import sync

    (rec,) = recover(prov_dir)
    assert rec.status == "CRASHED" and rec.metric_points > 0
    assert check_file(rec.prov_json, round_trip=False) == []
    doc = read_prov(rec.prov_json)
    assert by_type(doc, "Fit") and by_type(doc, "TrainingEpoch") and by_type(doc, "Dataset")
    (report,) = sync(prov_dir)
    assert not report.problems and report.status == "FAILED"
    assert client.get_run(rec.run_id).data.tags["prov4ml.crashed"] == "true"
    series = {attr(s, "mlflow_key"): attr(s, "count") for s in by_type(doc, "MetricSeries")}
    for key, count in series.items():
        assert len(client.get_metric_history(rec.run_id, key)) == count, key


def _check_run(prov_dir, client) -> None:
    (journal,) = run_journals(prov_dir)
    run_id = journal.name[len("journal_"):-len(".jsonl")]
    mrun = client.get_run(run_id)
    assert mrun.info.status == "KILLED"  # stopped from outside, not broken
    doc = read_prov(prov_dir / f"provgraph_{run_id}.json")
    (run,) = by_type(doc, "Run")
    assert attr(run, "status") == mrun.info.status
    # Every point logged before the signal is in MLflow, in the PROV summary and in the sidecar.
    with open(prov_dir / f"metrics_{run_id}.csv", newline="") as fh:
        sidecar = Counter(row[2] for row in list(csv.reader(fh))[1:])
    series = {attr(s, "mlflow_key"): attr(s, "count") for s in by_type(doc, "MetricSeries")}
    assert series == dict(sidecar)
    # "ready" is printed in on_train_batch_end of the 20th step, before Lightning logs that step's values:
    # steps 1, 3, ..., 17 (every 2nd, the trainer's log_every_n_steps) were logged before the signal, step 19
    # only if the signal came late enough
    assert series["train_loss_step"] >= 9
    mlflow = MlflowClient(client.tracking_uri)
    for key, count in series.items():
        assert len(mlflow.get_metric_history(run_id, key)) == count, key
