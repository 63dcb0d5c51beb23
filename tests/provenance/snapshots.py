"""A small, fully known RunSnapshot for the provenance unit tests."""

from __future__ import annotations

import math

from prov4ml_lightning.context import Context
from prov4ml_lightning.provenance import RunSnapshot
from prov4ml_lightning.records import ActivityRecord, ArtifactRecord, MetricSeries, ModelRecord, RunInfo

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20+00:00
NS = "http://www.example.org/"
RUN = "run_abc123"


def snapshot(epochs: int = 2) -> RunSnapshot:
    info = RunInfo(run_id="abc123", experiment_name="exp", experiment_id="1", run_name="my run", namespace=NS,
                   tracking_uri="file:///mlruns", provenance_dir="/tmp/prov", start_time=T0, user="alice",
                   end_time=T0 + 100, status="FINISHED", tags={"team": "vision"})
    loss = MetricSeries("loss", Context.TRAINING, "training/loss")
    for step, value in enumerate([0.5, math.nan, 0.25]):
        loss.add(step, value, int((T0 + 10 + step) * 1000))
    acc = MetricSeries("acc", Context.VALIDATION, "validation/acc", activity="epoch_0")
    acc.add(0, 0.75, int((T0 + 20) * 1000))
    activities = [ActivityRecord(f"epoch_{i}", "TrainingEpoch", f"epoch {i}", T0 + 1 + 40 * i, T0 + 40 * (i + 1),
                                 informed_by=f"epoch_{i - 1}" if i else None) for i in range(epochs)]
    artifact = ArtifactRecord("notes.txt", "/tmp/notes.txt", "file:///a/notes.txt", "ab" * 32, 5, False,
                              Context.TRAINING, T0 + 30)
    model = ModelRecord("net", 1, "models:/m-1", "m-1", T0 + 90, {"total_params": 10})
    return RunSnapshot(
        info=info, params={"lr": 0.01, "layers": 3, "flag": True, "shape": [1, 2], "opt": "adam", "none": None,
                           "odd key:1": "x"},
        series=[loss, acc], artifacts=[artifact], models=[model], activities=activities,
        software_version="1.2.3", metrics_file="metrics_abc123.csv",
    )


def long_run(epochs: int, steps_per_epoch: int = 10) -> RunSnapshot:
    """A synthetic Lightning-like run of ``epochs`` epochs: one fit, an epoch and a validation loop per
    epoch, a checkpoint per epoch plus ``last.ckpt`` overwritten each epoch, step and epoch metrics,
    a test loop and a model: what the callback records, at any length."""
    info = RunInfo(run_id="long1", experiment_name="exp", experiment_id="1", run_name=f"{epochs} epochs",
                   namespace=NS, tracking_uri="file:///mlruns", provenance_dir="/tmp/prov", start_time=T0,
                   user="alice", end_time=T0 + 10 * epochs + 20, status="FINISHED")
    fit = ActivityRecord("fit_1", "Fit", "fit 1", T0 + 1, T0 + 10 * epochs + 5)
    activities = [fit]
    loss = MetricSeries("train_loss", Context.TRAINING, "train_loss")
    val = MetricSeries("val_loss", Context.VALIDATION, "val_loss")
    artifacts = []
    for e in range(epochs):
        start = T0 + 2 + 10 * e
        ident = f"fit_1.epoch_{e}"
        activities.append(ActivityRecord(ident, "TrainingEpoch", f"epoch {e}", start, start + 9,
                                         informed_by=f"fit_1.epoch_{e - 1}" if e else None, part_of="fit_1",
                                         attributes={"epoch": e}))
        activities.append(ActivityRecord(f"{ident}.validation_1", "ValidationLoop", f"validation (epoch {e})",
                                         start + 8, start + 8.5, part_of=ident, attributes={"epoch": e}))
        for s in range(steps_per_epoch):
            step = e * steps_per_epoch + s
            loss.add(step, 1.0 / (step + 1), int((start + 0.5 * s) * 1000))
        val.add((e + 1) * steps_per_epoch - 1, 1.0 / (e + 2), int((start + 8.5) * 1000))
        ckpt = f"/tmp/ckpt/epoch={e}.ckpt"
        artifacts.append(ArtifactRecord(f"epoch={e}.ckpt", ckpt, f"file://{ckpt}", f"{e:064x}", 100, False,
                                        Context.TRAINING, start + 9, kind="checkpoint", activity=ident,
                                        attributes={"epoch": e, "best": e == epochs - 1}))
    activities.append(ActivityRecord("test_1", "TestLoop", "test", T0 + 10 * epochs + 6, T0 + 10 * epochs + 8,
                                     informed_by="fit_1"))
    model = ModelRecord("net", 1, "models:/m-1", "m-1", T0 + 10 * epochs + 10, {"total_params": 10})
    return RunSnapshot(info=info, params={"lr": 0.01, "epochs": epochs}, series=[loss, val], artifacts=artifacts,
                       models=[model], activities=activities, software_version="1.2.3",
                       metrics_file="metrics_long1.csv")
