"""The metric upload process: real child, real SQLite store, read back with MlflowClient."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

import prov4ml_lightning as prov4ml
from prov4ml_lightning.errors import Prov4MLError
from prov4ml_lightning.sinks.mlflow.sink import MlflowSink, default_tracking_uri
from prov4ml_lightning.sinks.mlflow.uploader import MetricUploader


@pytest.fixture
def sink_run(mlflow_dir: Path) -> tuple[MlflowSink, str]:
    sink = MlflowSink(default_tracking_uri(mlflow_dir), mlflow_dir)
    experiment = sink.experiment_id(f"upload-{uuid.uuid4().hex[:8]}")
    run_id, _ = sink.create_run(experiment, None, {}, None, None, int(time.time() * 1000))
    return sink, run_id


def _points(key: str, n: int, offset: int = 0) -> list[tuple[str, float, int, int]]:
    return [(key, i / 7, 1_700_000_000_000 + offset + i, offset + i) for i in range(n)]


class _CountingSink:
    def __init__(self, uri: str = "http://tracking.invalid:5000") -> None:
        self.tracking_uri = uri
        self.mlflow_save_dir = "."
        self.calls: list[int] = []

    def log_metrics(self, run_id: str, points: list) -> None:
        self.calls.append(len(points))


@pytest.mark.slow
def test_child_uploads_every_point_reports_errors_and_falls_back_when_it_dies(sink_run, client) -> None:
    sink, run_id = sink_run
    up = MetricUploader(sink, run_id)
    assert up.eligible
    up.start()
    assert up._ready.wait(60), "the upload process did not start"
    up(_points("training/a", 2500))
    with pytest.raises(Prov4MLError, match=r"upload process.*Invalid value"):
        up([("bad key!!", 1.0, 1, 1)])
    up(_points("training/a", 10, offset=2500))  # still usable after a rejected batch
    assert up.points_via_child == 2510
    up._proc.kill()
    up._proc.wait()
    with pytest.raises(Prov4MLError, match="upload process stopped"):
        up(_points("training/b", 5))
    up(_points("training/b", 5))  # in-process now; the writer would have retried the failed batch
    up.close()
    up.close()
    assert up.child_pid is None and up.points_via_child == 2510
    assert sorted(m.step for m in client.get_metric_history(run_id, "training/a")) == list(range(2510))
    assert len(client.get_metric_history(run_id, "training/b")) == 5


def test_cheap_or_remote_sends_never_start_a_child() -> None:
    remote = MetricUploader(_CountingSink(), "r")
    assert not remote.eligible
    local = MetricUploader(_CountingSink("sqlite:////tmp/x.db"), "r")
    assert local.eligible
    local._t0 -= 10  # ten seconds into the run, 3 fast sends cost far below 2% of it
    for _ in range(3):
        local([("k", 1.0, 1, 1)])
    assert local.child_pid is None and local._sink.calls == [1, 1, 1]
    never = MetricUploader(_CountingSink("sqlite:////tmp/x.db"), "r", budget=None)
    assert not never.eligible


@pytest.mark.slow
def test_busy_run_moves_uploads_to_the_child_and_keeps_every_point(run_args, client) -> None:
    run = prov4ml.start_run(**run_args)
    run.uploader.budget = 0.0  # any in-process send counts as too costly
    run.uploader._t0 -= 5
    for i in range(300):
        prov4ml.log_metric("loss", 1 / (i + 1), step=i)
    run.flush()  # in-process, and starts the child
    assert run.uploader.child_pid is not None
    assert run.uploader._ready.wait(60)
    for i in range(300, 600):
        prov4ml.log_metric("loss", 1 / (i + 1), step=i)
    run.flush()
    prov4ml.end_run()
    assert run.uploader.points_via_child == 300
    assert run.writer.points_sent == 600
    assert sorted(m.step for m in client.get_metric_history(run.run_id, "loss")) == list(range(600))
