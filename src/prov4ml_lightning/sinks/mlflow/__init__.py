"""The MLflow sink: the only package that imports ``mlflow``.

- :mod:`.rules`: MLflow's rules (store choice, key names, limits, run names, the store lock);
- :mod:`.sink`: :class:`MlflowSink` (``MlflowClient`` with explicit run ids, no fluent state);
- :mod:`.fetch`: a run's PROV files from its store, for the command line;
- :mod:`.guard`: :class:`TrackingGuard`, health probe, deadlines and circuit breaker for HTTP stores;
- :mod:`.service`, :mod:`.service_process`: the MLflow service process (a database store's
  MLflow work, off the training process).

The modules are imported by name (``sinks.mlflow.sink``), not from here: the service process loads
``sink.py`` by path so that it imports MLflow only, not this package.
"""
