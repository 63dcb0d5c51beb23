"""Opening an MLflow store (sinks/mlflow/store.py): a new SQLite store copied from the migrated empty
store cached per MLflow version, checked by MLflow's own schema check, and a half-created store
replaced while one that holds records, or is no SQLite file, is left alone.

Every store is opened again with a plain ``MlflowClient`` (MLflow's own checks run on open), and
whether MLflow migrated a store is read from its own log line ("Creating initial MLflow database
tables...", logged by ``mlflow.store.db.utils`` each time it creates and migrates one).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from prov4ml_lightning.files import CACHE_ENV
from prov4ml_lightning.sinks.mlflow.rules import default_tracking_uri
from prov4ml_lightning.sinks.mlflow.store import TEMPLATES, BrokenStoreError, open_client, template_path
from tests.helpers import half_migrated_store

pytestmark = pytest.mark.slow  # each test migrates at least one store (about a second of alembic)


class _MigrationLog(logging.Handler):
    """MLflow's "Creating initial MLflow database tables..." lines: one per store it migrates."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "Creating initial MLflow database tables" in record.getMessage()


@pytest.fixture
def migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An empty cache of this test's own, and the count of the stores MLflow migrates."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    handler = _MigrationLog()
    logger = logging.getLogger("mlflow.store.db.utils")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def _schema(db: Path) -> dict[str, list[str]]:
    """Each table's and index's SQL, its lines sorted (MLflow's migrations order a table's
    constraints differently from one run to the next)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()
    return {name: sorted(line.strip().rstrip(",").strip() for line in sql.splitlines()) for name, sql in rows}


def _revision(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute("SELECT version_num FROM alembic_version").fetchone()[0])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _works(uri: str) -> None:
    """MLflow opens the store (its own schema check) and keeps a run's point in it."""
    client = MlflowClient(uri)
    assert [e.name for e in client.search_experiments()] == ["Default"]
    run = client.create_run(client.create_experiment(f"e-{time.time_ns()}"))
    client.log_metric(run.info.run_id, "loss", 0.5, step=3)
    client.set_terminated(run.info.run_id)
    again = MlflowClient(uri)
    assert [(m.step, m.value) for m in again.get_metric_history(run.info.run_id, "loss")] == [(3, 0.5)]
    assert again.get_run(run.info.run_id).info.status == "FINISHED"


def test_a_second_new_store_is_copied_from_the_cached_one_without_migrations(tmp_path: Path, migrations) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    open_client(default_tracking_uri(first))
    assert migrations.count == 1  # the first store of this MLflow is migrated, once
    template = template_path()
    assert template is not None and template.parent == tmp_path / "cache" / TEMPLATES and template.is_file()

    open_client(default_tracking_uri(second))
    assert migrations.count == 1  # the second is a copy: no migration ran
    assert _schema(second / "mlflow.db") == _schema(first / "mlflow.db")
    assert not list(second.glob("mlflow.db.prov4ml-new-*"))  # created under a temporary name, renamed into place
    _works(default_tracking_uri(second))
    _works(default_tracking_uri(first))


@pytest.mark.parametrize("damage", ["stale", "truncated", "holds a run"])
def test_a_stale_or_damaged_template_is_rebuilt(tmp_path: Path, migrations, caplog, damage: str) -> None:
    open_client(default_tracking_uri(tmp_path / "a"))
    template = template_path()
    assert template is not None
    head = _revision(template)
    if damage == "stale":  # a template left at another revision under this name
        with sqlite3.connect(template) as conn:
            conn.execute("UPDATE alembic_version SET version_num = '0a8213491aaa'")
    elif damage == "truncated":
        template.write_bytes(template.read_bytes()[:8192])
    else:
        with sqlite3.connect(template) as conn:
            conn.execute("INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage, "
                         "creation_time, last_update_time) VALUES (7, 'x', '/x', 'active', 0, 0)")
            conn.execute("INSERT INTO runs (run_uuid, experiment_id, status, lifecycle_stage, start_time) "
                         "VALUES ('r1', 7, 'RUNNING', 'active', 0)")
    with caplog.at_level(logging.WARNING, logger="prov4ml_lightning"):
        open_client(default_tracking_uri(tmp_path / "b"))
    assert migrations.count == 2  # the damaged copy was not used: this store was migrated
    assert any("is not usable" in r.getMessage() and "rebuilt" in r.getMessage() for r in caplog.records)
    assert _revision(template) == head and _schema(template) == _schema(tmp_path / "a" / "mlflow.db")
    _works(default_tracking_uri(tmp_path / "b"))
    open_client(default_tracking_uri(tmp_path / "c"))
    assert migrations.count == 2  # the rebuilt template serves the next store


def test_a_half_migrated_store_without_records_is_moved_aside_and_replaced(tmp_path: Path, migrations,
                                                                          caplog) -> None:
    db = tmp_path / "mlflow" / "mlflow.db"
    stopped_at = half_migrated_store(db)
    with caplog.at_level(logging.WARNING, logger="prov4ml_lightning"):
        open_client(default_tracking_uri(db.parent))
    (aside,) = db.parent.glob("mlflow.db.broken-*")
    said = [r.getMessage() for r in caplog.records if "half-created" in r.getMessage()]
    assert len(said) == 1 and str(aside) in said[0] and str(db) in said[0], said
    assert _revision(aside) == stopped_at  # kept as it was, beside the new one
    _works(default_tracking_uri(db.parent))


@pytest.mark.parametrize("kind", ["holds an experiment", "not SQLite"])
def test_a_store_mlflow_cannot_open_is_left_alone_when_it_may_hold_records(tmp_path: Path, migrations,
                                                                          kind: str) -> None:
    db = tmp_path / "mlflow" / "mlflow.db"
    if kind == "not SQLite":
        db.parent.mkdir()
        db.write_bytes(b"a user's file, not a database " * 500)
    else:
        half_migrated_store(db, experiments=1)
    before = _sha(db)
    with pytest.raises(BrokenStoreError) as err:
        open_client(default_tracking_uri(db.parent))
    text = str(err.value)
    assert str(db) in text and "leaves it alone" in text
    assert ("mlflow db upgrade" in text) if kind == "holds an experiment" else ("SQLite cannot read it" in text)
    assert _sha(db) == before and not list(db.parent.glob("mlflow.db.broken-*"))


@pytest.mark.slow  # waits out SQLite's busy timeouts: ~15 s
def test_a_store_another_program_locks_is_busy_not_broken(tmp_path: Path) -> None:
    """A store whose write lock another program holds while it is opened: the opening is retried and
    then fails saying the database is locked, never that it is broken (whose advice is to move it away)."""
    from prov4ml_lightning.sinks.mlflow.store import prepare_sqlite_store

    uri = default_tracking_uri(tmp_path)
    client = open_client(uri)
    client.create_experiment("kept")
    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(Exception, match="database is locked") as caught:
            prepare_sqlite_store(tmp_path / "mlflow.db")
        assert not isinstance(caught.value, BrokenStoreError)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert open_client(uri).get_experiment_by_name("kept") is not None  # the store is left as it was
    assert not list(tmp_path.glob("mlflow.db.broken-*"))
