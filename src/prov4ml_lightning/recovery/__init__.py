"""Getting a run back (a plug-in over the core): after a crash or an outage, ``prov4ml recover``
and ``prov4ml sync``; its environment, ``prov4ml reproduce --venv``.

- :mod:`.recover`: the PROV files of a run that never reached ``end_run``, from journal and sidecar;
- :mod:`.sync`: MLflow brought up to date with the local files (offline runs, outages);
- :mod:`.venv`: a virtual environment rebuilt from a run's lock file.
"""
