"""The on-demand measurements of the original prov4ml API, one set per run.

``log_carbon_metrics``, ``log_flops_per_batch``/``log_flops_per_epoch`` and ``save_model_version``
keep state between calls (a CodeCarbon tracker, running FLOPs totals, the last saved version of
each model). :func:`measures_of` gives each run its own :class:`RunMeasures`, created at the first
call and closed (the tracker stopped) through the recorder's ``add_closer`` hook when the run ends;
the core knows nothing of it.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prov4ml_lightning.capture.energy import CarbonTracker
from prov4ml_lightning.capture.flops import FlopsTotals

if TYPE_CHECKING:
    from prov4ml_lightning.tracking.recorder import RunRecorder

__all__ = ["RunMeasures", "measures_of"]


@dataclass
class RunMeasures:
    """One run's measurement state.

    Attributes:
        carbon: CodeCarbon's offline tracker, started at the first ``log_carbon_metrics``.
        flops: the running FLOPs totals per label.
        versions: the PROV name and state-dict hash of the last version saved by ``save_model_version``, per model
            object (a new version of the same module is derived from it).
        initial: the model objects whose initial weights are recorded (``log_model_memory_footprint``).
    """

    carbon: CarbonTracker
    flops: FlopsTotals = field(default_factory=FlopsTotals)
    versions: weakref.WeakKeyDictionary[Any, tuple[str, str]] = field(default_factory=weakref.WeakKeyDictionary)
    initial: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)

    def close(self) -> None:
        self.carbon.stop()


_lock = threading.Lock()
_measures: weakref.WeakKeyDictionary[Any, RunMeasures] = weakref.WeakKeyDictionary()


def measures_of(run: RunRecorder) -> RunMeasures:
    """The measurement state of ``run`` (created on first use, closed when the run ends)."""
    with _lock:
        measures = _measures.get(run)
        if measures is None:
            measures = _measures[run] = RunMeasures(CarbonTracker(run.provenance_dir))
            run.add_closer(measures.close)
        return measures
