"""Unit tests of tracking/writer.py: MetricWriter with an in-memory ``send`` instead of MLflow."""

from __future__ import annotations

import csv
import os
import threading
import warnings
from pathlib import Path

import pytest
import torch

from prov4ml_lightning.errors import Prov4MLWarning, TrackingUnavailableError
from prov4ml_lightning.tracking.writer import MetricWriter, Point
from tests.helpers import wait_until

HEADER = ["key", "context", "mlflow_key", "step", "value", "timestamp_ms"]


class Feed:
    """The recorder's side of a writer: a point buffer, a summary sink and an MLflow ``send``."""

    def __init__(self, fail: list[BaseException] | None = None) -> None:
        self.buffer: list[Point] = []
        self.lock = threading.Lock()
        self.summarised: list[Point] = []
        self.sent: list[tuple[str, float, int, int]] = []
        self.calls = 0
        self.fail = list(fail or [])  # errors the next sends raise, in order

    def take(self) -> list[Point]:
        with self.lock:
            out, self.buffer = self.buffer, []
        return out

    def summarise(self, points: list[Point]) -> None:
        self.summarised.extend(points)

    def send(self, batch: list[tuple[str, float, int, int]]) -> None:
        self.calls += 1
        if self.fail:
            raise self.fail.pop(0)
        self.sent.extend(batch)

    def log(self, key: str, step: int, value, ctx: str = "training") -> None:
        with self.lock:
            self.buffer.append((key, ctx, f"{ctx}/{key}", step, value, 1_000 + step))


def _writer(feed: Feed, tmp_path: Path, interval: float = 60.0) -> MetricWriter:
    return MetricWriter(feed.take, feed.summarise, tmp_path / "metrics_r.csv", feed.send,
                        tmp_path / "mlflow_unsent_r.csv", flush_interval=interval)


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_points_reach_the_sidecar_the_summary_and_send(tmp_path: Path):
    feed = Feed()
    writer = _writer(feed, tmp_path)
    feed.log("loss", 0, 0.5)
    feed.log("loss", 1, torch.tensor(0.25))  # converted on the writer, not the training thread
    feed.log("acc", 0, 1, "validation")
    writer.flush(final=False)

    assert _rows(writer.sidecar) == [HEADER, ["loss", "training", "training/loss", "0", "0.5", "1000"],
                                     ["loss", "training", "training/loss", "1", "0.25", "1001"],
                                     ["acc", "validation", "validation/acc", "0", "1", "1000"]]
    assert feed.sent == [("training/loss", 0.5, 1000, 0), ("training/loss", 0.25, 1001, 1),
                         ("validation/acc", 1, 1000, 0)]
    assert type(feed.sent[1][1]) is float
    assert [p[4] for p in feed.summarised] == [0.5, 0.25, 1]
    assert writer.points_written == writer.points_sent == 3
    writer.close()
    assert not (tmp_path / "mlflow_unsent_r.csv").exists()


def test_a_failing_send_warns_once_keeps_the_points_and_spills_them_at_the_final_flush(tmp_path: Path):
    feed = Feed(fail=[RuntimeError("store down")] * 3)
    writer = _writer(feed, tmp_path)
    feed.log("loss", 0, 0.5)
    rejected = r"MLflow rejected or could not take metrics \(RuntimeError\('store down'\)\)"
    with pytest.warns(Prov4MLWarning, match=rejected):
        writer.flush(final=False)
    feed.log("loss", 1, 0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        writer.flush(final=False)  # backing off: no retry before its time
        assert feed.calls == 1
        writer.flush(final=True)  # the final flush retries now, fails, and spills
    assert feed.calls == 2 and feed.sent == []
    assert _rows(tmp_path / "mlflow_unsent_r.csv") == [["mlflow_key", "value", "timestamp_ms", "step"],
                                                        ["training/loss", "0.5", "1000", "0"],
                                                        ["training/loss", "0.25", "1001", "1"]]
    assert len(_rows(writer.sidecar)) == 3  # the sidecar has every point all the same
    assert writer.points_written == 2 and writer.points_sent == 0
    writer.close()


def test_points_kept_after_a_failure_are_sent_when_the_store_comes_back(tmp_path: Path):
    feed = Feed(fail=[TrackingUnavailableError("offline")])
    writer = _writer(feed, tmp_path)
    feed.log("loss", 0, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the tracking guard already announced the outage
        writer.flush(final=False)
    feed.log("loss", 1, 0.25)
    writer.flush(final=True)
    assert feed.sent == [("training/loss", 0.5, 1000, 0), ("training/loss", 0.25, 1001, 1)]
    assert writer.points_sent == 2
    writer.close()
    assert not (tmp_path / "mlflow_unsent_r.csv").exists()


def test_a_spill_that_cannot_be_written_warns_and_names_the_sidecar(tmp_path: Path):
    feed = Feed(fail=[RuntimeError("down")] * 2)
    writer = MetricWriter(feed.take, feed.summarise, tmp_path / "metrics_r.csv", feed.send,
                          tmp_path / "missing" / "unsent.csv")
    feed.log("loss", 0, 0.5)
    with pytest.warns(Prov4MLWarning) as caught:
        writer.flush(final=True)
    assert any("could not save 1 metric points" in str(w.message) and "metrics_r.csv" in str(w.message)
               for w in caught)
    with pytest.warns(Prov4MLWarning, match="could not save 1 metric points"):
        writer.close()  # the points were kept, not dropped: close tries once more


def test_the_thread_drains_in_the_background_and_close_flushes_syncs_and_stops(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch):
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    feed = Feed()
    writer = _writer(feed, tmp_path, interval=0.05)
    writer.start()
    feed.log("loss", 0, 0.5)
    wait_until(lambda: len(feed.sent) == 1, timeout=10, what="the background drain")
    feed.log("loss", 1, 0.25)
    writer.close()  # the last points go out even if the thread never woke for them
    assert not writer.is_alive()
    assert [p[3] for p in feed.sent] == [0, 1]
    assert len(_rows(writer.sidecar)) == 3
    assert synced  # the sidecar is on disk when end_run returns


def test_wake_drains_before_the_interval(tmp_path: Path):
    feed = Feed()
    writer = _writer(feed, tmp_path, interval=60.0)
    writer.start()
    feed.log("loss", 0, 0.5)
    writer.wake()
    wait_until(lambda: feed.sent, timeout=10, what="a drain after wake()")
    writer.close()


def test_a_resumed_sidecar_gets_no_second_header_and_a_cut_row_ends_on_its_own_line(tmp_path: Path):
    sidecar = tmp_path / "metrics_r.csv"
    sidecar.write_text("key,context,mlflow_key,step,value,timestamp_ms\r\nloss,training,training/loss,0,0.5,1000\r\n"
                       "loss,training,training/lo", encoding="utf-8")
    feed = Feed()
    writer = _writer(feed, tmp_path)
    feed.log("loss", 2, 0.125)
    writer.close()
    assert _rows(sidecar) == [HEADER, ["loss", "training", "training/loss", "0", "0.5", "1000"],
                              ["loss", "training", "training/lo"],
                              ["loss", "training", "training/loss", "2", "0.125", "1002"]]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_for_the_sidecar_warns_once_and_points_still_go_to_mlflow(tmp_path: Path):
    feed = Feed()
    writer = MetricWriter(feed.take, feed.summarise, Path("/dev/full"), feed.send, tmp_path / "unsent.csv")
    feed.log("loss", 0, 0.5)
    with pytest.warns(Prov4MLWarning, match=r"could not append metric points to /dev/full"):
        writer.flush(final=False)
    feed.log("loss", 1, 0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        writer.flush(final=False)
    assert [p[3] for p in feed.sent] == [0, 1]
    assert [p[3] for p in feed.summarised] == [0, 1]
    writer.close()  # logs that it cannot sync, does not raise
