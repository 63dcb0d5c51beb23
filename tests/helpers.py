"""Reading a run back with the real tools."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import prov
from prov.model import ProvDocument


def read_prov(path: Path) -> ProvDocument:
    return prov.read(str(path), format="json")


def records_of(doc: ProvDocument, kind: str) -> list:
    """Records of one PROV type name (``entity``, ``activity``, ``agent``, ``wasGeneratedBy``...)."""
    from prov.constants import PROV_N_MAP

    return [r for r in doc.get_records() if PROV_N_MAP[r.get_type()] == kind]


def attr(record, name: str):
    """The single value of a ``p4l:`` (or ``prov:``) attribute of a record, or None."""
    for key, value in record.attributes:
        if key.localpart == name:
            return value
    return None


def by_type(doc: ProvDocument, type_local: str) -> list:
    """Elements whose prov:type includes a term with local part ``type_local``."""
    from prov.constants import PROV_TYPE

    out = []
    for r in doc.get_records():
        if r.is_element() and any(getattr(t, "localpart", str(t)) == type_local for t in r.get_attribute(PROV_TYPE)):
            out.append(r)
    return out


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
               what: str = "the condition") -> object:
    """Poll ``predicate`` until it returns something truthy and return that; fail after ``timeout`` s.

    A condition wait instead of ``time.sleep(n); assert ...``: as fast as the machine allows, and
    not flaky on a loaded one.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout} s for {what}; it never held")
        time.sleep(interval)


def server_run_args(tmp_path: Path, uri: str, experiment: str) -> dict:
    """start_run / Prov4MLCallback arguments for a run sent to the tracking server at ``uri``."""
    return {"prov_user_namespace": "www.example.org", "experiment_name": experiment,
            "provenance_save_dir": str(tmp_path / "prov"), "mlflow_save_dir": str(tmp_path / "mlflow"),
            "tracking_uri": uri}


def load_model(uri: str, model_uri: str):
    """The model at ``model_uri`` loaded back through the store at ``uri`` (mlflow.pytorch)."""
    import mlflow.pytorch

    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.pytorch.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(None)


#: params the library logs itself, as the original prov4ml did: execution times (every run) and log_model's footprint
_AUTOMATIC = ("execution_start_time", "execution_end_time", "model_name", "total_params", "memory_of_model",
              "total_memory_load_of_model")


def user_params(params: dict) -> dict:
    """An MLflow run's params without those the library logs itself (:data:`_AUTOMATIC`, also as ``<model>/<name>``
    for a second model and ``<name>/<n>`` for a reopened run)."""
    return {k: v for k, v in params.items()
            if not any(part in _AUTOMATIC for part in k.split("/"))}


def diff_rows(out: str, section: str) -> dict[str, tuple[str, ...]]:
    """``{key: (A, B[, why])}`` of one section of ``prov4ml diff`` output (columns are 2+ spaces apart)."""
    import re

    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"{section}: "))
    rows = {}
    for ln in lines[start + 2:]:
        if not ln.startswith("  "):
            break
        key, *values = re.split(r"\s{2,}", ln.strip())
        rows[key] = tuple(values)
    return rows


def half_migrated_store(db: Path, *, experiments: int = 0) -> str:
    """Make ``db`` the MLflow store a process killed between two of MLflow's migrations leaves:
    MLflow's initial tables, then its migrations (alembic) up to the middle of the chain only.
    ``experiments`` rows are added (a store holding records). Returns the revision it stopped at."""
    import sqlite3

    from alembic import command
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config, create_sqlalchemy_engine
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    db.parent.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{db}"
    config = _get_alembic_config(url)
    revisions = [r.revision for r in ScriptDirectory.from_config(config).walk_revisions()]  # head first
    middle = revisions[len(revisions) // 2]
    engine = create_sqlalchemy_engine(url)
    try:
        InitialBase.metadata.create_all(engine)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, middle)
    finally:
        engine.dispose()
    with sqlite3.connect(db) as conn:
        for i in range(1, experiments + 1):
            conn.execute("INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage) "
                         "VALUES (?, ?, ?, 'active')", (i, f"kept-{i}", str(db.parent / str(i))))
    return middle
