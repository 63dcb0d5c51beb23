"""After a crash or an outage (a plug-in over the core): ``prov4ml recover`` and ``prov4ml sync``.

- :mod:`.recover`: the PROV files of a run that never reached ``end_run``, from journal and sidecar;
- :mod:`.sync`: MLflow brought up to date with the local files (offline runs, outages).
"""
