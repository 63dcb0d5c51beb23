"""TrackingGuard's policy for remote stores: probe, deadline, circuit breaker, one warning, no credentials shown."""

from __future__ import annotations

import threading
import time
import types
import warnings

import pytest

from prov4ml_lightning.errors import Prov4MLWarning, TrackingUnavailableError
from prov4ml_lightning.sinks.mlflow import guard as guard_module
from prov4ml_lightning.sinks.mlflow.guard import TrackingGuard
from tests.sinks.fakes import REMOTE_URI, FakeSink, Probe


@pytest.fixture
def caught():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield seen


def _prov_warnings(seen: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in seen if issubclass(w.category, Prov4MLWarning)]


def test_local_store_is_called_directly_without_probing() -> None:
    inner, probe = FakeSink("sqlite:////tmp/x/mlflow.db"), Probe(up=False)
    guard = TrackingGuard(inner, health_check=probe)
    assert not guard.remote and guard.available()
    guard.log_params("r", [("a", "1")])
    assert inner.calls == ["log_params"] and probe.asked == 0
    inner.fail = ValueError("bad value")
    with pytest.raises(ValueError, match="bad value"):  # the store's own error, not an outage
        guard.log_params("r", [])


def test_attributes_come_from_the_inner_sink_without_credentials() -> None:
    guard = TrackingGuard(FakeSink(), health_check=Probe())
    assert guard.tracking_uri == REMOTE_URI and guard.mlflow_save_dir == "/nowhere"
    assert guard.public_uri == "http://***@127.0.0.1:9/?token=***"
    assert guard.remote and not guard.offline


def test_unreachable_at_start_goes_offline_and_fails_fast_without_a_second_warning(caught) -> None:
    inner, probe = FakeSink(), Probe(up=False)
    guard = TrackingGuard(inner, health_check=probe)
    assert not guard.available()
    guard.go_offline()  # what start_run does, after its own warning
    assert guard.offline and inner.offline  # the uploader reads it from either
    for call in (lambda: guard.log_params("r", []), lambda: guard.get_run("r"),
                 lambda: guard.log_artifact("r", "/tmp/f")):
        with pytest.raises(TrackingUnavailableError, match="offline"):
            call()
    assert inner.calls == [] and probe.asked == 1 and _prov_warnings(caught) == []


def test_a_call_past_its_deadline_is_given_up(caught) -> None:
    inner, probe = FakeSink(), Probe(up=True)
    inner.hang = threading.Event()
    guard = TrackingGuard(inner, deadline=0.2, health_check=probe)
    t0 = time.monotonic()
    try:
        with pytest.raises(TrackingUnavailableError, match=r"did not answer \(gave up after"):
            guard.log_params("r", [])
    finally:
        inner.hang.set()
    assert time.monotonic() - t0 < 1.0
    assert len(_prov_warnings(caught)) == 1


def test_a_hanging_call_is_given_up_as_soon_as_the_server_stops_answering(monkeypatch, caught) -> None:
    monkeypatch.setattr(guard_module, "_SLICE_S", 0.05)
    inner, probe = FakeSink(), Probe(up=False)
    inner.hang = threading.Event()
    guard = TrackingGuard(inner, deadline=30.0, health_check=probe)
    t0 = time.monotonic()
    try:
        with pytest.raises(TrackingUnavailableError, match="did not answer"):
            guard.get_run("r")
    finally:
        inner.hang.set()
    assert time.monotonic() - t0 < 1.0 and probe.asked >= 1


def test_circuit_breaker_backs_off_doubles_and_reopens(monkeypatch, caught) -> None:
    now = [1000.0]
    monkeypatch.setattr(guard_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    inner, probe = FakeSink(), Probe(up=False)
    guard = TrackingGuard(inner, health_check=probe)
    inner.fail = ConnectionError("Connection refused")
    with pytest.raises(TrackingUnavailableError, match="unreachable"):
        guard.log_artifact("r", "/tmp/f")  # probed upload: the probe fails, the store is not called
    assert inner.calls == [] and probe.asked == 1

    now[0] += 0.9  # within the first backoff (1 s): no probe, no call
    with pytest.raises(TrackingUnavailableError, match="backing off"):
        guard.log_params("r", [])
    assert inner.calls == [] and probe.asked == 1

    now[0] += 0.2  # backoff over: one probe, still down, the backoff doubles to 2 s
    with pytest.raises(TrackingUnavailableError, match="still unreachable"):
        guard.log_params("r", [])
    assert probe.asked == 2
    now[0] += 1.9
    with pytest.raises(TrackingUnavailableError, match="backing off"):
        guard.log_params("r", [])
    assert probe.asked == 2

    probe.up, inner.fail = True, None  # the server is back
    guard.recheck()  # end_run does not wait out the backoff
    guard.log_params("r", [])
    assert inner.calls == ["log_params"]
    guard.log_params("r", [])  # closed again: no probe before a call
    assert inner.calls == ["log_params"] * 2 and probe.asked == 3
    assert len(_prov_warnings(caught)) == 1


def test_a_run_warns_once_however_many_failures_and_outages(caught) -> None:
    inner, probe = FakeSink(), Probe(up=False)
    inner.fail = ConnectionError("Connection refused")
    guard = TrackingGuard(inner, health_check=probe)
    for _ in range(3):
        guard.recheck()
        with pytest.raises(TrackingUnavailableError):
            guard.log_params("r", [])
    probe.up, inner.fail = True, None
    guard.recheck()
    guard.get_run("r")  # a reachable server in between: a new outage later
    probe.up, inner.fail = False, ConnectionError("reset")
    with pytest.raises(TrackingUnavailableError):
        guard.get_run("r")
    messages = _prov_warnings(caught)
    assert len(messages) == 1 and "unreachable" in messages[0] and "hunter2" not in messages[0]


def test_a_store_error_from_a_reachable_server_is_raised_as_is(caught) -> None:
    inner, probe = FakeSink(), Probe(up=True)
    inner.fail = KeyError("INVALID_PARAMETER_VALUE")
    guard = TrackingGuard(inner, health_check=probe)
    with pytest.raises(KeyError):
        guard.log_params("r", [])
    inner.fail = None
    guard.log_params("r", [])  # no backoff was started
    assert inner.calls == ["log_params"] * 2 and _prov_warnings(caught) == []


def test_outage_messages_never_show_credentials(caught) -> None:
    inner, probe = FakeSink(), Probe(up=True)
    guard = TrackingGuard(inner, health_check=probe)
    inner.fail = TrackingUnavailableError(f"cannot reach {REMOTE_URI}/api/2.0/mlflow/runs/get")
    with pytest.raises(TrackingUnavailableError) as err:
        guard.get_run("r")
    text = str(err.value) + " ".join(_prov_warnings(caught))
    assert "hunter2" not in text and "s3cr3t" not in text and "http://***@127.0.0.1:9" in text


def test_log_model_keywords_reach_the_inner_sink() -> None:
    inner = FakeSink()
    guard = TrackingGuard(inner, health_check=Probe(up=True))
    uri, extra = guard.log_model("r", object(), "net", pip_requirements=["torch"], input_example=1)
    assert uri == "models:/net" and extra == "['input_example']"
