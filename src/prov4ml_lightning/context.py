"""The phase of training a metric belongs to."""

from __future__ import annotations

from enum import Enum

__all__ = ["Context"]


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
