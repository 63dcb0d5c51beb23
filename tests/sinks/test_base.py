"""Every sink the package builds has exactly the TrackingSink members, with the same parameters."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from prov4ml_lightning.sinks.base import NullSink, TrackingSink
from prov4ml_lightning.sinks.mlflow.guard import TrackingGuard
from prov4ml_lightning.sinks.mlflow.service import MlflowService, ServiceSink
from prov4ml_lightning.sinks.mlflow.sink import MlflowSink

#: what the recorder (`pending`, `incomplete`: the end_run warnings), the metric writer, rank parts, the callback,
#: `get_run_id` and `prov4ml sync` call on a sink, and the lookup of the run that produced a run's initial weights.
MEMBERS = {
    "tracking_uri", "public_uri", "mlflow_save_dir", "offline",
    "available", "go_offline", "recheck", "flush", "pending", "incomplete", "run_created",
    "experiment_id", "create_run", "reopen_run", "end_run",
    "log_metrics", "log_params", "set_tags", "log_dataset_inputs", "log_artifact", "log_model",
    "get_run", "get_metric_history", "search_runs", "list_artifacts", "find_weights",
}
METHODS = {name for name, value in vars(TrackingSink).items() if callable(value) and not name.startswith("_")}


def test_the_protocol_lists_exactly_the_members_the_package_calls() -> None:
    assert set(TrackingSink.__annotations__) | METHODS == MEMBERS


def _sinks(tmp_path: Path) -> list[object]:
    remote = MlflowSink("http://127.0.0.1:9", tmp_path)  # MlflowClient does not connect until called
    return [remote, TrackingGuard(remote), NullSink(),
            ServiceSink(MlflowService.__new__(MlflowService), "sqlite:///x.db", tmp_path, tmp_path)]


def test_mlflow_sink_guard_and_null_sink_conform(tmp_path: Path) -> None:
    for sink in _sinks(tmp_path):
        assert isinstance(sink, TrackingSink), type(sink).__name__
        assert all(hasattr(sink, name) for name in MEMBERS)


@pytest.mark.parametrize("cls", [MlflowSink, TrackingGuard, NullSink, ServiceSink])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_parameters_match_the_protocol(cls: type, method: str) -> None:
    def shape(fn: object) -> list[tuple[str, object, bool]]:
        params = list(inspect.signature(fn).parameters.values())[1:]  # without self
        return [(p.name, p.kind, p.default is inspect.Parameter.empty) for p in params]

    assert shape(getattr(cls, method)) == shape(getattr(TrackingSink, method))


def test_the_guard_has_no_catch_all_proxy() -> None:
    assert "__getattr__" not in vars(TrackingGuard)
    with pytest.raises(AttributeError):
        TrackingGuard(NullSink()).artifact_uri  # noqa: B018  (not a sink member: not forwarded)
