"""One redactor: the URI a run stores, the one the sink shows and the one `prov4ml sync` matches agree."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from prov4ml_lightning import redact
from prov4ml_lightning.recovery.sync import sync_run
from prov4ml_lightning.sinks.mlflow.guard import TrackingGuard
from prov4ml_lightning.sinks.mlflow.sink import MlflowSink

SECRET_URI = "http://alice:hunter2@127.0.0.1:{port}/mlflow?token=s3cr3t&workspace=ml"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_capture_uses_the_one_redactor() -> None:
    from prov4ml_lightning.capture import code, environment

    assert code.redact_url is redact.redact_url and environment.redact_env is redact.redact_env


def test_the_sink_shows_what_the_run_stores(tmp_path: Path) -> None:
    uri = SECRET_URI.format(port=5000)
    stored = redact.redact_url(uri)
    assert stored == "http://***@127.0.0.1:5000/mlflow?token=***&workspace=ml"
    sink = MlflowSink(uri, tmp_path)
    assert sink.public_uri == stored == TrackingGuard(sink).public_uri


def _journaled_run(tmp_path: Path, stored_uri: str) -> SimpleNamespace:
    """The fields of a journaled run that `sync_run` reads before it reaches the store."""
    info = SimpleNamespace(tracking_uri=stored_uri)
    return SimpleNamespace(run_id="r1", final_status="FINISHED", info=info, start={}, directory=tmp_path)


def test_sync_matches_the_stored_uri_of_a_server_with_credentials_and_a_secret_query(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = SECRET_URI.format(port=_closed_port())
    run = _journaled_run(tmp_path, redact.redact_url(uri))

    report = sync_run(run)  # type: ignore[arg-type]
    assert "credentials are not stored" in report.skipped  # nothing to take them from

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.replace("127.0.0.1", "127.0.0.2"))  # another server
    assert "credentials are not stored" in sync_run(run).skipped  # type: ignore[arg-type]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the run's server: taken, then probed (it is down)
    report = sync_run(run)  # type: ignore[arg-type]
    assert report.skipped == f"tracking server {run.info.tracking_uri} is unreachable"
    assert "hunter2" not in report.skipped and "s3cr3t" not in report.skipped
