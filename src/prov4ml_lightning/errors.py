"""Exceptions and warnings raised by prov4ml-lightning.

Every error derives from :class:`Prov4MLError`; input errors are also ``ValueError`` and
state errors also ``RuntimeError`` so that generic handlers keep working.
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = [
    "GraphvizError",
    "NoActiveRunError",
    "Prov4MLError",
    "Prov4MLInputError",
    "Prov4MLWarning",
    "RunAlreadyActiveError",
    "TrackingUnavailableError",
    "warn",
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


# Frames in these folders are not where a warning is attributed: this package, and Lightning, which calls
# the callback's hooks (a callback's warning points at the user's ``trainer.fit(...)`` line).
_OWN = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _library_prefixes() -> tuple[str, ...]:
    lightning = getattr(sys.modules.get("lightning"), "__file__", None)
    return (_OWN, os.path.dirname(os.path.abspath(lightning)) + os.sep) if lightning else (_OWN,)


def warn(message: str, category: type[Warning] = Prov4MLWarning, stacklevel: int | None = None) -> None:
    """``warnings.warn`` attributed to the first frame outside this package (and outside Lightning,
    whose trainer calls the callback): the user's line, whichever of our functions warned.

    ``stacklevel`` is accepted for ``warnings.warn``'s signature and ignored; with no frame outside
    (a background thread of ours), the warning points at the function that called this one.
    """
    prefixes = _library_prefixes()
    frame = sys._getframe(1)
    level = 2  # warnings.warn's stacklevel of our caller
    while frame is not None and frame.f_code.co_filename.startswith(prefixes):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level if frame is not None else 2)
