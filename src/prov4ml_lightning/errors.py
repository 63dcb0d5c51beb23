"""Exceptions and warnings raised by prov4ml-lightning.

Every error derives from :class:`Prov4MLError`; input errors are also ``ValueError`` and
state errors also ``RuntimeError`` so that generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "GraphvizError",
    "NoActiveRunError",
    "Prov4MLError",
    "Prov4MLInputError",
    "Prov4MLWarning",
    "RunAlreadyActiveError",
    "TrackingUnavailableError",
]


class Prov4MLError(Exception):
    """Root of every exception raised by prov4ml-lightning."""


class Prov4MLInputError(Prov4MLError, ValueError):
    """A call received a value it cannot record; the message names the call and what it expected."""


class NoActiveRunError(Prov4MLError, RuntimeError):
    """A ``log_*`` call was made while no run is open; nothing starts a run implicitly."""


class RunAlreadyActiveError(Prov4MLError, RuntimeError):
    """``start_run`` was called while a run is open and ``nested`` was not set."""


class TrackingUnavailableError(Prov4MLError, ConnectionError):
    """The MLflow tracking server cannot be reached (or the run is offline); the data is kept locally."""


class GraphvizError(Prov4MLError, RuntimeError):
    """Graphviz ``dot`` failed to draw a graph; the message is its first error line."""


class Prov4MLWarning(UserWarning):
    """Something was recorded in a transformed way, or a sink failed and the run goes on."""
