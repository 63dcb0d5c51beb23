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
