"""An unwritable or full disk, and many threads logging into one run at once."""

from __future__ import annotations

import csv
import errno
import json
import os
import threading
from collections import Counter

import pytest
from prov.model import ProvDocument

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Prov4MLError, Prov4MLInputError, Prov4MLWarning
from prov4ml_lightning.recovery.recover import recover
from tests.helpers import attr, by_type, read_prov, user_params

pytestmark = pytest.mark.timeout(120)


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _counts(prov_json) -> dict[str, int]:
    return {attr(s, "name"): attr(s, "count") for s in by_type(read_prov(prov_json), "MetricSeries")}


# -- start_run: say so at once ---------------------------------------------------------------
def test_provenance_dir_that_cannot_be_created(run_args, tmp_path, client):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(Prov4MLInputError, match=r"start_run: provenance_save_dir .*a-file/prov.* cannot be created"):
        prov4ml.start_run(**{**run_args, "provenance_save_dir": str(blocker / "prov")})
    assert client.get_experiment_by_name(run_args["experiment_name"]) is None  # nothing half-started in MLflow


def test_full_disk_at_start_run(run_args, monkeypatch, client):
    from prov4ml_lightning.tracking import start as recorder

    monkeypatch.setattr(recorder.tempfile, "TemporaryFile", _enospc)
    with pytest.raises(Prov4MLInputError, match=r"start_run: provenance_save_dir .* is not writable .*No space left"):
        prov4ml.start_run(**run_args)
    assert client.get_experiment_by_name(run_args["experiment_name"]) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_read_only_provenance_dir(run_args, prov_dir):
    prov_dir.mkdir()
    prov_dir.chmod(0o500)
    try:
        with pytest.raises(Prov4MLInputError, match="is not writable"):
            prov4ml.start_run(**run_args)
    finally:
        prov_dir.chmod(0o700)


# -- end_run: atomic, then a clear error and a way back ------------------------------------------
def test_disk_full_while_writing_prov_leaves_no_half_written_json(run_args, prov_dir, client, monkeypatch):
    run = prov4ml.start_run(**run_args)
    prov4ml.log_metric("loss", 1.0, step=0)
    run.flush()
    good = run.write_provenance()["json"]  # a complete document of the run so far
    before = good.read_bytes()
    prov4ml.log_metric("loss", 0.5, step=1)
    real = ProvDocument.serialize

    def half_then_full(self, destination=None, format="json", **kwargs):
        if destination is None or isinstance(destination, str):
            return real(self, destination, format, **kwargs)
        text = real(self, None, format, **kwargs)
        destination.write(text[: len(text) // 2])  # the disk fills up half-way through the document
        destination.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ProvDocument, "serialize", half_then_full)
    with pytest.raises(Prov4MLError, match=r"end_run: could not write the PROV files .*No space left.*prov4ml recover"):
        prov4ml.end_run()
    assert good.read_bytes() == before  # the earlier complete document, untouched
    assert _counts(good) == {"loss": 1}
    assert not [p.name for p in prov_dir.iterdir() if p.name.startswith(".")]  # no temp file left behind
    assert client.get_run(run.run_id).info.status == "FINISHED"  # MLflow was still told
    assert len(client.get_metric_history(run.run_id, "loss")) == 2

    monkeypatch.undo()  # space freed: the journal and the sidecar rebuild the whole run
    (rec,) = recover(prov_dir)
    assert rec.status == "FINISHED" and rec.metric_points == 2
    assert _counts(rec.prov_json) == {"loss": 2}


def test_disk_full_for_the_sidecar_and_journal_loses_nothing_else(run_args, client):
    from prov4ml_lightning.files import RecordFile

    run = prov4ml.start_run(**run_args)
    for step in range(10):
        prov4ml.log_metric("loss", float(step), step=step)
    run.flush()
    sidecar, journal = run.writer._file, run.journal._file
    # the kernel's full device: every write fails with ENOSPC
    run.writer._file = RecordFile("/dev/full")
    run.journal._file = RecordFile("/dev/full")
    with pytest.warns(Prov4MLWarning) as caught:
        for step in range(10, 20):
            prov4ml.log_metric("loss", float(step), step=step)
        prov4ml.log_param("after", 1)
        run.flush()
        assert len(run.writer.unwritten) == 10  # kept for when the disk takes them
        out = prov4ml.end_run()
    sidecar.close()
    journal.close()
    messages = [str(w.message) for w in caught]
    assert sum("could not append metric points" in m for m in messages) == 1
    assert sum("could not append to the run journal" in m for m in messages) == 1
    (lost,) = [m for m in messages if "never reached the metric sidecar" in m]
    assert "10 metric points" in lost and "loss (training) steps 10-19" in lost
    assert len(client.get_metric_history(run.run_id, "loss")) == 20
    assert user_params(client.get_run(run.run_id).data.params) == {"after": "1"}
    assert _counts(out.prov_json) == {"loss": 20}
    assert len(out.metrics_file.read_text().splitlines()) == 1 + 10  # what reached the disk before it filled


# -- threads ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_many_threads_lose_and_duplicate_no_point(run_args, client):
    threads_n, points_n = 8, 1000
    barrier = threading.Barrier(threads_n + 1)

    def worker(i: int) -> None:
        barrier.wait()
        for s in range(points_n):
            prov4ml.log_metric("shared", float(i), step=i * points_n + s)  # one series, disjoint steps
            prov4ml.log_metric("auto", float(i))  # one series, steps assigned under the lock
            prov4ml.log_metric(f"own{i}", float(s))

    with prov4ml.start_run(**run_args) as run:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
        for t in threads:
            t.start()
        barrier.wait()
        while any(t.is_alive() for t in threads):
            run.flush()  # drains race with the writers on purpose
        for t in threads:
            t.join(timeout=60)
    total = threads_n * points_n
    for key in ("shared", "auto"):
        steps = [m.step for m in client.get_metric_history(run.run_id, f"{key}")]
        assert sorted(steps) == list(range(total)), key
    for i in range(threads_n):
        own = client.get_metric_history(run.run_id, f"own{i}")
        assert sorted(m.step for m in own) == list(range(points_n))
    with open(run.outputs.metrics_file, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    per_point = Counter((r[0], int(r[3])) for r in rows)
    assert len(rows) == 3 * total and max(per_point.values()) == 1
    counts = _counts(run.outputs.prov_json)
    assert counts["shared"] == counts["auto"] == total
    assert all(counts[f"own{i}"] == points_n for i in range(threads_n))


def test_recover_writes_the_long_params_file_a_full_disk_kept_from_end_run(run_args, prov_dir):
    with pytest.warns(Prov4MLWarning, match="MLflow keeps a truncated copy"):
        run = prov4ml.start_run(**run_args)
        prov4ml.log_param("notes", "y" * 7000)
    prov4ml.end_run()
    long_file = prov_dir / f"long_params_{run.run_id}.json"
    long_file.unlink()  # as if the disk had refused it (end_run writes it atomically: never an empty file)
    recover(prov_dir, force=True)
    assert json.loads(long_file.read_text()) == {"notes": "y" * 7000}
