"""Attach files to a run that has ended (``prov4ml reproduce``'s report, logged to the new run)."""

from __future__ import annotations

import os
from collections.abc import Iterable

from prov4ml_lightning.sinks.mlflow.rules import sqlite_file

__all__ = ["attach_artifacts"]


def attach_artifacts(tracking_uri: str, run_id: str, paths: Iterable[str | os.PathLike[str]], folder: str) -> None:
    """Log each of ``paths`` as an artifact of run ``run_id`` (under ``folder``) in ``tracking_uri``.

    Raises:
        Prov4MLInputError: the SQLite store does not exist (never created here).
        mlflow.exceptions.MlflowException: the store refused (no such run, unreachable server).
    """
    from prov4ml_lightning.errors import Prov4MLInputError

    db = sqlite_file(tracking_uri)
    if db is not None and not db.is_file():
        raise Prov4MLInputError(f"tracking store {tracking_uri}: no such SQLite file {db}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    for path in paths:
        client.log_artifact(run_id, str(path), folder)
