"""Where a run's records go besides the PROV document: the tracking store (MLflow).

- :mod:`.base`: :class:`TrackingSink`, the members the package calls on a sink, and
  :class:`NullSink`, a sink that writes nothing;
- :mod:`.mlflow`: the MLflow sink, its guard for remote servers and the MLflow service process.
"""

from prov4ml_lightning.sinks.base import NullSink, TrackingSink

__all__ = ["NullSink", "TrackingSink"]
