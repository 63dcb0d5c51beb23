"""The phase of training a metric belongs to."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

__all__ = ["CONTEXT_TAG", "ORIGINAL_CONTEXT_TAG", "Context", "context_tags"]


class Context(str, Enum):
    """Phase a metric, artifact or activity belongs to.

    ``EVALUATION`` is the original prov4ml name of the testing phase and is an alias of
    ``TESTING``: both record as ``"testing"``.
    """

    TRAINING = "training"
    VALIDATION = "validation"
    TESTING = "testing"
    EVALUATION = "testing"

    def __str__(self) -> str:
        return self.value


#: MLflow run tag ``prov4ml.context.<MLflow key>`` = the context value (``training``...) of the series
CONTEXT_TAG = "prov4ml.context."
#: the original prov4ml's tag, ``metric.context.<key>`` = the context's name (``TRAINING``...)
ORIGINAL_CONTEXT_TAG = "metric.context."


def context_tags(series: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The MLflow tags naming the context of each ``(MLflow key, context value)``: ours and the
    original prov4ml's (so its users' searches still find them)."""
    out = []
    for key, value in series:
        out.append((f"{CONTEXT_TAG}{key}", value))
        out.append((f"{ORIGINAL_CONTEXT_TAG}{key}", Context(value).name))
    return out
