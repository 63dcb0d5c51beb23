"""What the rest of the package may call on a tracking sink: :class:`TrackingSink`.

The recorder, the metric writer, rank parts and ``prov4ml sync`` talk to MLflow
through these members only. :class:`~prov4ml_lightning.sinks.mlflow.sink.MlflowSink` implements
them against a store, :class:`~prov4ml_lightning.sinks.mlflow.guard.TrackingGuard` wraps one with
deadlines and a circuit breaker, and :class:`NullSink` writes nothing (a rank other than zero).

Tag and param keys and values may be passed as the user gave them: a sink makes them acceptable
to its store itself. Metric keys arrive already mapped (the recorder does it once per metric and
the metric sidecar records the result). A sink that cannot reach its store raises
:class:`~prov4ml_lightning.errors.TrackingUnavailableError`; callers keep the data and go on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from prov4ml_lightning.errors import TrackingUnavailableError

__all__ = ["NullSink", "TrackingSink"]


@runtime_checkable
class TrackingSink(Protocol):
    """A run's tracking store, addressed by explicit run ids.

    Attributes:
        tracking_uri: the store's URI, credentials included (never shown).
        public_uri: the same without credentials, for messages and records.
        mlflow_save_dir: the folder of an embedded store (``""`` when there is none).
        offline: the run has no run in the store (it was unreachable at ``start_run``).
    """

    tracking_uri: str
    public_uri: str
    mlflow_save_dir: str | os.PathLike[str]
    offline: bool

    # -- state ---------------------------------------------------------------------------
    def available(self) -> bool:
        """Whether the store answers now."""

    def go_offline(self) -> None:
        """The run has no run in the store: calls from now on may fail at once."""

    def recheck(self) -> None:
        """Forget a backoff after an outage: the next call tries the store again."""

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the store holds every write handed to the sink so far; whether it does within
        ``timeout`` seconds (at once for a sink that writes before returning)."""

    def pending(self) -> str:
        """What was handed over and is not in the store yet, for a person (``""``: nothing)."""

    def incomplete(self) -> str:
        """Why the store's copy of the run is known to stay incomplete (work handed over that will
        never arrive: the MLflow service died), for a person; ``""`` when it is not."""

    def run_created(self, timeout: float | None = None) -> bool:
        """Wait until the run exists in the store; whether it does (a sink that creates the run
        before ``start_run`` returns answers at once)."""

    # -- run lifecycle ---------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created (or restored) when needed."""

    def create_run(self, experiment_id: str, run_name: str | None, tags: Mapping[str, str],
                   description: str | None, parent_run_id: str | None, start_time_ms: int) -> tuple[str, str]:
        """Create a run; return ``(run_id, run_name)``."""

    def reopen_run(self, run_id: str) -> dict[str, Any]:
        """Mark ``run_id`` running again; return its ``experiment_id``, ``run_name``, ``start_time_ms``."""

    def end_run(self, run_id: str, status: str, end_time_ms: int) -> None:
        """Set the run's final status and end time."""

    # -- data --------------------------------------------------------------------------------
    def log_metrics(self, run_id: str, points: Sequence[tuple[str, float, int, int]]) -> None:
        """Log ``(key, value, timestamp_ms, step)`` points; ``key`` is already the store's key."""

    def log_params(self, run_id: str, params: Iterable[tuple[str, str]]) -> None:
        """Log ``(key, text)`` params."""

    def set_tags(self, run_id: str, tags: Iterable[tuple[str, str]]) -> None:
        """Set ``(key, text)`` tags."""

    def log_dataset_inputs(self, run_id: str, datasets: Sequence[Mapping[str, Any]]) -> None:
        """Record datasets (``name``, ``role`` and the dataset entity's attributes) as the run's inputs."""

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        """Upload a file or folder under ``artifact_path``."""

    def log_model(self, run_id: str, model: Any, name: str, *, pip_requirements: list[str] | None = None,
                  params: Mapping[str, Any] | None = None, **kwargs: Any) -> tuple[str, str | None]:
        """Store a model; return ``(model_uri, model_id)``."""

    # -- reading back (``prov4ml sync``) -------------------------------------------------------
    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """``status``, ``experiment_id``, ``params`` and ``tags`` of a run; ``None`` when it does not exist."""

    def get_metric_history(self, run_id: str, key: str) -> set[tuple[int, int]]:
        """The ``(step, timestamp_ms)`` of every point stored for ``key``."""

    def search_runs(self, experiment_id: str, tag: str, value: str) -> list[str]:
        """Ids of the runs of ``experiment_id`` whose tag ``tag`` equals ``value``."""

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        """Paths of the artifacts directly under ``path``."""

    def find_weights(self, digest: str) -> list[dict[str, Any]]:
        """The runs (any experiment) that produced weights of ``state_dict_sha256`` ``digest`` (or
        a tensor group of hash ``digest``, ``capture/model_info.tensor_groups``): ``run_id`` (as its
        PROV document names the run), ``namespace``, ``ids`` (``[kind, name parts...]`` of the
        entities holding them), ``parts`` (``[prefix, tensors, of, kind, name parts...]`` of the
        entities holding them as a group of their tensors) and ``provenance_file`` (the URI of the
        run's PROV JSON, ``""`` before it ended)."""


class NullSink:
    """A sink without a store, for a rank other than zero: only global rank zero writes to MLflow.

    Metrics, params, tags and run ends are dropped quietly; an artifact upload raises
    :class:`TrackingUnavailableError` (quietly handled: the record keeps no MLflow URI) and a model
    gets no URI. Creating or reopening a run raises: there is nowhere to create it.
    """

    tracking_uri = ""
    public_uri = "(no tracking store)"
    mlflow_save_dir = ""
    offline = True

    def available(self) -> bool:
        return False

    def go_offline(self) -> None:
        pass

    def recheck(self) -> None:
        pass

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def pending(self) -> str:
        return ""

    def incomplete(self) -> str:
        return ""

    def run_created(self, timeout: float | None = None) -> bool:
        return False

    def experiment_id(self, name: str) -> str:
        raise TrackingUnavailableError(f"experiment_id({name!r}): this sink has no tracking store")

    def create_run(self, experiment_id: str, run_name: str | None, tags: Mapping[str, str],
                   description: str | None, parent_run_id: str | None, start_time_ms: int) -> tuple[str, str]:
        raise TrackingUnavailableError("create_run: this sink has no tracking store")

    def reopen_run(self, run_id: str) -> dict[str, Any]:
        raise TrackingUnavailableError(f"reopen_run({run_id!r}): this sink has no tracking store")

    def end_run(self, run_id: str, status: str, end_time_ms: int) -> None:
        pass

    def log_metrics(self, run_id: str, points: Sequence[tuple[str, float, int, int]]) -> None:
        pass

    def log_params(self, run_id: str, params: Iterable[tuple[str, str]]) -> None:
        pass

    def set_tags(self, run_id: str, tags: Iterable[tuple[str, str]]) -> None:
        pass

    def log_dataset_inputs(self, run_id: str, datasets: Sequence[Mapping[str, Any]]) -> None:
        pass

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        raise TrackingUnavailableError("only global rank 0 uploads artifacts")

    def log_model(self, run_id: str, model: Any, name: str, *, pip_requirements: list[str] | None = None,
                  params: Mapping[str, Any] | None = None, **kwargs: Any) -> tuple[str, str | None]:
        return "", None

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        return None

    def get_metric_history(self, run_id: str, key: str) -> set[tuple[int, int]]:
        return set()

    def search_runs(self, experiment_id: str, tag: str, value: str) -> list[str]:
        return []

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        return []

    def find_weights(self, digest: str) -> list[dict[str, Any]]:
        return []
