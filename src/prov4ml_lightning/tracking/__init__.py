"""The core: one process-wide current run and what it records.

- :mod:`.recorder`: :class:`RunRecorder`, the run both front doors call into;
- :mod:`.records`: the plain records handed to the sinks;
- :mod:`.writer`: the background thread that drains the metric buffer;
- :mod:`.journal`: the append-only journal of every non-metric event;
- :mod:`.validation`: input checks and the documented transformations.

The core knows the sinks (``sinks/``, ``provenance/``) and nothing above it: front doors,
``capture/``, ``distributed/`` and ``recovery/`` plug in from outside.
"""
