"""Read what a LightningModule logged with ``self.log``, the way Lightning's own loggers receive it.

Lightning reduces (and, with ``sync_dist``, syncs across ranks) the values in its result
collection; its logger connector hands the reduced step values to loggers after
``on_train_batch_end`` and the epoch values at the end of each loop. A callback sees two views:

- Step values: ``trainer._logger_connector.metrics["log"]`` during a batch hook holds exactly the
  step-level dict the connector is about to log (keys forked as ``loss_step`` when a metric is
  logged both per step and per epoch). In a batch hook that is the running loop's result
  collection's ``metrics(on_step=True)["log"]``; the trackers take the collection
  (``trainer._results``) once when their loop starts and read it directly each batch, which
  skips Lightning's property chain to the active loop (about half the cost of a read). This is
  Lightning's private API (stable from 2.0 to 2.6); :func:`loop_results` and
  :func:`step_metrics` are the one place that touches it and fall back to nothing, with one
  warning, if it disappears.
- Epoch values: the public ``trainer.logged_metrics`` accumulates every value logged so far;
  Lightning stores a new tensor object each time it updates a key, so the values of one loop
  are the keys whose object changed between a snapshot taken when the loop started and its end
  (:class:`EpochDiff`). Values left from earlier loops keep their object and are not repeated.

Every function here is called on every rank: reading epoch values may run the cross-rank
reduction of ``sync_dist`` metrics, which all ranks must join in the same order.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from prov4ml_lightning.errors import Prov4MLWarning

__all__ = ["EpochDiff", "loop_results", "should_log_step", "step_metrics"]

log = logging.getLogger(__name__)

_warned = False


def loop_results(trainer: Any) -> Any:
    """The result collection of the loop running now, or ``None`` (then :func:`step_metrics` asks
    the logger connector); constant for the loop's lifetime."""
    try:
        return trainer._results
    except Exception:
        return None


def step_metrics(trainer: Any, results: Any = None) -> dict[str, Any]:
    """The values Lightning logs now (reduced, not yet floats): a batch hook's step values, or at
    a loop's end its epoch values (the connector knows which). ``results``: the running loop's
    collection (:func:`loop_results`), only from a batch hook, where the values are step values."""
    global _warned
    try:
        if results is not None:
            return results.metrics(True)["log"]
        return dict(trainer._logger_connector.metrics["log"])
    except AssertionError:  # no result collection yet (Lightning asserts it)
        return {}
    except Exception as err:  # a Lightning version whose connector changed: epoch values still work
        if not _warned:
            _warned = True
            warnings.warn(f"Prov4MLCallback: cannot read Lightning's step metrics ({err!r}); only epoch-level "
                          "values are recorded", Prov4MLWarning, stacklevel=2)
        return {}


def should_log_step(trainer: Any, every_n: int) -> bool:
    """Whether the batch that just ran is one Lightning logs at (``log_every_n_steps`` rule):
    the count of batches that stepped an optimizer, this one included, is a multiple of ``every_n``,
    or the trainer is about to stop, or ``fast_dev_run`` is on."""
    if every_n <= 0:
        return False
    if getattr(trainer, "fast_dev_run", False) or trainer.should_stop:
        return True
    epoch_loop = trainer.fit_loop.epoch_loop
    try:
        stepped = epoch_loop._batches_that_stepped + 1
    except AttributeError:  # private counter gone: optimizer steps are the closest public count
        stepped = trainer.global_step
    return stepped % every_n == 0


class EpochDiff:
    """The values logged between :meth:`start` and :meth:`collect`, by object identity."""

    def __init__(self) -> None:
        # References, not ids: a freed tensor's id can be reused by the next one.
        self._seen: dict[str, Any] = {}

    def start(self, trainer: Any) -> None:
        self._seen = dict(trainer.logged_metrics)

    def collect(self, trainer: Any, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """Keys updated since :meth:`start` (minus ``exclude``); the snapshot moves forward."""
        current = dict(trainer.logged_metrics)
        fresh = {k: v for k, v in current.items() if self._seen.get(k) is not v and k not in exclude}
        self._seen = current
        return fresh
