"""Plain records the recorder hands to its sinks (MLflow writer, PROV builder, files).

They carry no behaviour beyond bookkeeping, so sinks can be tested and swapped on their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from prov4ml_lightning.context import Context

#: the statuses a run ends with (MLflow's terminal statuses)
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")

__all__ = [
    "RUN_STATUSES",
    "ActivityRecord",
    "ArtifactRecord",
    "MetricSeries",
    "ModelRecord",
    "RunInfo",
]


@dataclass
class RunInfo:
    """Identity and settings of one run."""

    run_id: str
    experiment_name: str
    experiment_id: str
    run_name: str
    namespace: str
    tracking_uri: str
    provenance_dir: str
    start_time: float
    user: str
    tags: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    parent_run_id: str | None = None
    end_time: float | None = None
    status: str = "RUNNING"
    #: the responsible person and organisation: ``person_name``, ``person_email``,
    #: ``person_orcid`` (an IRI), ``organization``; only those given
    responsible: dict[str, str] = field(default_factory=dict)


@dataclass
class MetricSeries:
    """Summary of every point of one metric in one context; the points live in MLflow and the sidecar."""

    name: str
    context: Context
    mlflow_key: str
    count: int = 0
    first_step: int | None = None
    last_step: int | None = None
    min_value: float = math.inf
    max_value: float = -math.inf
    last_value: float = math.nan
    first_time: float | None = None
    last_time: float | None = None
    non_finite: int = 0
    activity: str | None = None

    def add(self, step: int, value: float, timestamp_ms: int) -> None:
        if self.count == 0:
            self.first_step = step
            self.first_time = timestamp_ms / 1000
        self.count += 1
        self.last_step = step
        self.last_value = value
        self.last_time = timestamp_ms / 1000
        if value == value and abs(value) != math.inf:
            if value < self.min_value:
                self.min_value = value
            if value > self.max_value:
                self.max_value = value
        else:
            self.non_finite += 1


@dataclass
class ArtifactRecord:
    name: str
    local_path: str
    artifact_uri: str
    sha256: str
    size_bytes: int
    is_dir: bool
    context: Context | None
    created: float
    kind: str = "artifact"
    activity: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    derived_from: str | None = None
    #: kind of the entity ``derived_from`` names, when not this record's own kind (a checkpoint derived
    #: from the fit's initial weights, a ``model_state``)
    derived_from_kind: str | None = None
    #: the sub-activity during which the file was deleted or overwritten, and when (PROV invalidation)
    invalidated_by: str | None = None
    invalidated_at: float | None = None


@dataclass
class ModelRecord:
    name: str
    version: int
    model_uri: str
    model_id: str | None
    created: float
    info: dict[str, Any] = field(default_factory=dict)
    #: the sub-activity (a fit) that produced the weights; ``None``: the session that logged it
    activity: str | None = None
    #: ``(kind, name)`` of entities the model was made from (equal weights are linked apart, by hash)
    derived_from: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ActivityRecord:
    """A sub-activity of the run (an epoch, a validation loop, a test, ...)."""

    ident: str
    kind: str
    label: str
    start_time: float
    end_time: float | None = None
    informed_by: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    used: list[tuple[str, str]] = field(default_factory=list)  # (kind, name) of entities it used
    #: the activity it is a part of and was started by (a fit for an epoch); ``None``: the session
    part_of: str | None = None
