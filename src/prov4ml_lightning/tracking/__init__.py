"""The core: one process-wide current run and what it records.

- :mod:`.registry`: the current run (an ``RLock``), make-current/release, the ``atexit`` hook;
- :mod:`.config`: :class:`RunConfig`, the one definition of the run options;
- :mod:`.start`: opening, offline fallback, reopening and resuming a run;
- :mod:`.recorder`: :class:`RunRecorder`, the run both front doors call into (hot path, params,
  tags, plug-in hooks, end); :mod:`.lineage`: its artifacts, models, activities and entities;
- :mod:`.finish`: the end of a run: PROV files written, MLflow run ended (:class:`RunOutputs`);
- :mod:`.writer`: the background thread that drains the metric buffer, and the sidecar reader;
- :mod:`.journal`: the append-only journal of every non-metric event;
- :mod:`.validation`: input checks and the documented transformations.

The core knows the sinks (``sinks/``, ``provenance/``) and nothing above it: front doors,
``capture/``, ``distributed/`` and ``recovery/`` plug in from outside (``runs.open_run``).
"""
