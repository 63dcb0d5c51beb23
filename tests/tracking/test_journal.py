"""Unit tests of tracking/journal.py: events written and read back, lines cut short, fsync on close."""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch

from prov4ml_lightning.context import Context
from prov4ml_lightning.errors import Prov4MLWarning
from prov4ml_lightning.records import ArtifactRecord
from prov4ml_lightning.tracking.journal import Journal, ends_without_newline, journal_path, read_journal


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The file descriptors ``os.fsync`` was called with (the real call still happens)."""
    calls: list[int] = []
    real = os.fsync

    def spy(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return calls


def test_journal_path_names_the_run(tmp_path: Path):
    assert journal_path(tmp_path, "abc") == tmp_path / "journal_abc.jsonl"


def test_events_read_back_in_order_with_their_data(tmp_path: Path):
    path = journal_path(tmp_path, "r1")
    journal = Journal(path)
    record = ArtifactRecord("notes.txt", "/x/notes.txt", "", "00ff", 5, False, Context.TRAINING, 1.5)
    journal.write("start", info={"run_id": "r1"}, pid=42)
    journal.write("params", params={"lr": 0.1, "layers": [1, 2], "tags": {"a"}}, mlflow=[["lr", "0.1"]])
    journal.write("artifact", record=record, loss=torch.tensor(0.5), nan=math.nan, path=Path("/p"))
    journal.close()

    events = read_journal(path)
    assert [e["event"] for e in events] == ["start", "params", "artifact"]
    assert all(isinstance(e["time"], float) for e in events)
    assert events[0]["info"] == {"run_id": "r1"} and events[0]["pid"] == 42
    assert events[1]["params"] == {"lr": 0.1, "layers": [1, 2], "tags": ["a"]}
    artifact = events[2]
    assert artifact["record"]["name"] == "notes.txt" and artifact["record"]["sha256"] == "00ff"
    assert artifact["loss"] == 0.5 and math.isnan(artifact["nan"]) and artifact["path"] == "/p"
    # one JSON object per line, nothing else
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and all(json.loads(line, parse_constant=float)["event"] for line in lines)


def test_each_line_reaches_the_file_at_once_and_fsync_waits_for_close(tmp_path: Path, fsyncs: list[int]):
    path = tmp_path / "journal_r.jsonl"
    journal = Journal(path)
    journal.write("start", n=1)
    assert [e["n"] for e in read_journal(path)] == [1]  # flushed: another reader sees it now
    assert fsyncs == []  # not synced per line: events are cheap
    journal.close()
    assert len(fsyncs) == 1
    journal.close()  # idempotent
    assert len(fsyncs) == 1
    journal.write("late", n=2)  # after close: dropped, no error
    assert [e["event"] for e in read_journal(path)] == ["start"]


def test_a_partial_last_line_is_skipped_without_a_warning(tmp_path: Path):
    path = tmp_path / "journal_r.jsonl"
    path.write_text('{"event": "start", "time": 1}\n{"event": "params", "par', encoding="utf-8")
    assert ends_without_newline(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        events = read_journal(path)
    assert [e["event"] for e in events] == ["start"]


def test_a_bad_line_in_the_middle_is_skipped_with_a_warning_naming_it(tmp_path: Path):
    path = tmp_path / "journal_r.jsonl"
    path.write_text('{"event": "start", "time": 1}\nnot json\n["no event"]\n{"event": "end", "time": 2}\n',
                    encoding="utf-8")
    with pytest.warns(Prov4MLWarning, match=r"journal_r\.jsonl:2 is cut short or not JSON"):
        events = read_journal(path)
    assert [e["event"] for e in events] == ["start", "end"]


def test_reopening_a_journal_cut_short_starts_a_new_line(tmp_path: Path):
    path = tmp_path / "journal_r.jsonl"
    path.write_text('{"event": "start", "time": 1}\n{"event": "par', encoding="utf-8")
    journal = Journal(path)  # a resumed run appends to the journal its killed session left
    journal.write("start", session=2)
    journal.close()
    assert not ends_without_newline(path)
    with pytest.warns(Prov4MLWarning, match=r":2 is cut short"):
        events = read_journal(path)
    assert [(e["event"], e.get("session")) for e in events] == [("start", None), ("start", 2)]


def test_ends_without_newline(tmp_path: Path):
    assert not ends_without_newline(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert not ends_without_newline(empty)
    empty.write_bytes(b"a\n")
    assert not ends_without_newline(empty)
    empty.write_bytes(b"a\nb")
    assert ends_without_newline(empty)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_warns_once_and_the_run_goes_on():
    journal = Journal(Path("/dev/full"))  # every write fails with ENOSPC
    with pytest.warns(Prov4MLWarning, match=r"could not append to the run journal /dev/full") as caught:
        journal.write("params", params={"a": 1})
        journal.write("params", params={"b": 2})
    assert len([w for w in caught if issubclass(w.category, Prov4MLWarning)]) == 1
    with contextlib.suppress(OSError):  # see the next test
        journal.close()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_closing_a_journal_on_a_full_disk_logs_instead_of_raising(caplog: pytest.LogCaptureFixture):
    journal = Journal(Path("/dev/full"))
    with pytest.warns(Prov4MLWarning):
        journal.write("params", params={"a": 1})
    journal.close()  # end_run must not fail because the journal's disk is full
    assert "could not sync the run journal /dev/full" in caplog.text
