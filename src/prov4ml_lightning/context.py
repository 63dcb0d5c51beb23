"""The phase of training a metric belongs to."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

__all__ = ["CONTEXT_TAG", "Context", "context_tags"]


class Context(str, Enum):
    """Phase a metric, artifact or activity belongs to.

    ``EVALUATION`` is the original prov4ml's phase for what a script evaluates itself; it is kept as
    itself (``"evaluation"``), apart from ``TESTING``, the phase of Lightning's test loop.
    """

    TRAINING = "training"
    VALIDATION = "validation"
    TESTING = "testing"
    EVALUATION = "evaluation"

    def __str__(self) -> str:
        return self.value


#: MLflow run tag ``metric.context.<MLflow key>`` = the context's name (``TRAINING``...) of the series: the
#: original prov4ml's tag, one per metric (the context itself lives in PROV)
CONTEXT_TAG = "metric.context."


def context_tags(series: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The MLflow tag naming the context of each ``(MLflow key, context value)``, as the original
    prov4ml wrote it (so its users' searches and dashboards find it)."""
    return [(f"{CONTEXT_TAG}{key}", Context(value).name) for key, value in series]
