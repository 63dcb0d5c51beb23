"""Where a run's records go besides the PROV document: the tracking store (MLflow)."""
