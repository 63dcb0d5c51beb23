"""Opening an MLflow database store: one process at a time, a new SQLite store created whole,
from a migrated empty store kept per MLflow version, and a half-created one replaced.

- :func:`open_client` opens ``MlflowClient(tracking_uri)`` under a file lock (two processes
  migrating one new store at once race: SQLite ``duplicate column name``) and retries a failed
  opening (a migration another program ran at the same time, a busy database).
- A new embedded (``sqlite:///``) store is never built in place: :func:`prepare_sqlite_store`
  copies a migrated empty database to a temporary name beside the target and links it into
  place, so a process killed meanwhile leaves no database at all, never a half-migrated one. The
  migrated empty database is built once per MLflow version and schema head (and SQLAlchemy and
  alembic version) in prov4ml's cache folder (:func:`prov4ml_lightning.files.cache_dir`,
  ``mlflow-stores/``): MLflow's migrations (``alembic``, about 0.8 s of CPU) run once, not for
  every new store. A copy is checked with MLflow's own schema check (every table of its ORM
  present, the schema revision its migrations' head) and SQLite's ``quick_check`` before it is
  used; a stale or damaged template is rebuilt.
- An existing SQLite database that fails MLflow's check and holds nothing a new store does not
  (no run, experiment, model, trace...: one a killed process left half-created, or a leftover of
  an earlier prov4ml that migrated in place) is moved aside, to ``mlflow.db.broken-<time>``, and a
  new store takes its place, with a warning that says where the old one went. One that holds
  records, or a file SQLite cannot read, is never touched: opening it fails
  (:class:`BrokenStoreError`) with a message that names it and what to do (MLflow's ``mlflow db
  upgrade`` for a store of an older MLflow).

It imports nothing of the package but :mod:`prov4ml_lightning.files` and :mod:`.rules` (the
service process loads all three by path, without the package) and MLflow only inside functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prov4ml_lightning.files import cache_dir  # loaded by path in the service process: see service_process.py
from prov4ml_lightning.sinks.mlflow.rules import is_database_uri, sqlite_file

__all__ = [
    "TEMPLATES", "BrokenStoreError", "cached_template", "database_file", "forget_engine", "link_new_store",
    "no_store_yet", "open_client", "prepare_sqlite_store", "store_lock", "template_path",
]

log = logging.getLogger(__name__)

#: the folder, in prov4ml's cache folder, of the migrated empty stores
TEMPLATES = "mlflow-stores"
_NEW = ".prov4ml-new-"  # a store being created: <db>.prov4ml-new-<pid>-<hex>, linked into place when whole
_BROKEN = ".broken-"  # a half-created store moved aside: <db>.broken-<YYYYmmdd-HHMMSS>
_SIDE_FILES = ("-journal", "-wal", "-shm")  # SQLite's files beside a database
_STORE_ATTEMPTS = 6
_STORE_LOCK_TIMEOUT_S = 600.0
#: the rows a new store has (a migration adds the default workspace, MLflow's opening experiment 0)
_NEW_STORE_ROWS = {"experiments": "WHERE experiment_id != 0", "workspaces": "WHERE name != 'default'"}


class BrokenStoreError(RuntimeError):
    """An MLflow store that MLflow cannot open as it is and that holds records (left untouched)."""


def _store_lock_path(tracking_uri: str) -> Path:
    """The lock file that serialises creating and migrating the store at ``tracking_uri``.

    Beside the SQLite file for an embedded store (every process sharing the folder sees it); in
    the temporary folder, named by a hash of the URI, for a database server.
    """
    db = database_file(tracking_uri)
    if db is not None:
        return db.with_name(db.name + ".prov4ml-lock")
    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"prov4ml-store-{digest}.lock"


def store_lock(tracking_uri: str) -> Any:
    """The file lock (``filelock.FileLock``) of the store at ``tracking_uri``: see :func:`_store_lock_path`."""
    from filelock import FileLock

    return FileLock(str(_store_lock_path(tracking_uri)), timeout=_STORE_LOCK_TIMEOUT_S)


def database_file(tracking_uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store (its query string left out); ``None`` for any other
    store and for an in-memory database."""
    db = sqlite_file(tracking_uri)
    if db is None:
        return None
    path = str(db).split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def open_client(tracking_uri: str) -> Any:
    """``MlflowClient(tracking_uri)``, safe when many processes open a new store at once, and
    when a store was left half-created (see the module docstring).

    Raises:
        BrokenStoreError: the store fails MLflow's schema check and holds records.
    """
    from mlflow.tracking import MlflowClient

    if not is_database_uri(tracking_uri):
        return MlflowClient(tracking_uri)
    scheme = tracking_uri.split(":", 1)[0]
    db = database_file(tracking_uri)
    lock = store_lock(tracking_uri)
    for attempt in range(_STORE_ATTEMPTS):
        try:
            with lock:
                if db is not None:
                    replaced = prepare_sqlite_store(db, locked=True)
                    if replaced:
                        log.warning("prov4ml: %s", replaced)
                        forget_engine(tracking_uri)
                client = MlflowClient(tracking_uri)
                client.search_experiments(max_results=1)  # the store is created and migrated here
                return client
        except BrokenStoreError:
            raise
        except Exception as err:  # a migration another program ran at the same time, a busy database
            if attempt == _STORE_ATTEMPTS - 1:
                raise
            log.info("prov4ml: opening the MLflow store %s failed (%r); retrying", scheme, err)
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def forget_engine(tracking_uri: str) -> None:
    """Drop the database engine MLflow keeps for ``tracking_uri`` in this process (its pooled
    connections hold the file they opened: a store replaced since would not be seen)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError:
        return
    engines = getattr(SqlAlchemyStore, "_engine_map", None)
    engine = engines.pop(tracking_uri, None) if isinstance(engines, dict) else None
    if engine is not None:
        engine.dispose()


# -- MLflow's own schema functions -------------------------------------------------------------------
def _schema() -> Any:
    """MLflow's functions that create and check a store's schema (``mlflow.store.db.utils``), or
    ``None`` when this MLflow has other ones (then stores are created and opened by MLflow alone)."""
    try:
        from mlflow.store.db import utils
    except ImportError:
        return None
    needed = ("create_sqlalchemy_engine", "_initialize_tables", "_all_tables_exist", "_get_schema_version",
              "_get_latest_schema_revision")
    return utils if all(hasattr(utils, name) for name in needed) else None


def template_path(schema: Any = None) -> Path | None:
    """The migrated empty store of this MLflow (version and schema head), SQLAlchemy and alembic, in
    prov4ml's cache folder; ``None`` when MLflow's schema functions are not the ones known here."""
    schema = schema or _schema()
    if schema is None:
        return None
    return cache_dir() / TEMPLATES / _template_name(schema._get_latest_schema_revision())


def _template_name(head: str) -> str:
    """The name of the migrated empty store of schema revision ``head`` for the installed MLflow, SQLAlchemy
    and alembic (raises ``PackageNotFoundError`` for one not installed)."""
    from importlib.metadata import version

    return f"empty-mlflow-{version('mlflow')}-{head}-sqlalchemy-{version('sqlalchemy')}-alembic-{version('alembic')}.db"


def cached_template() -> tuple[Path, str] | None:
    """The migrated empty store :func:`template_path` names for the installed MLflow, SQLAlchemy and
    alembic, and its schema revision (read from its name), found without importing MLflow; ``None``
    while none was built (a first store opened with MLflow builds it)."""
    from importlib.metadata import PackageNotFoundError

    try:
        prefix, suffix = _template_name("*").split("*")
    except PackageNotFoundError:
        return None
    for path in (cache_dir() / TEMPLATES).glob(f"{prefix}*{suffix}"):
        head = path.name[len(prefix) : -len(suffix)]
        if head.isalnum():
            return path, head
    return None


def _check(schema: Any, db: Path, *, whole: bool = False) -> str | None:
    """Why MLflow would not open ``db`` as it is (MLflow's own check: every table of its ORM, the
    schema revision its migrations' head; ``whole``: SQLite's ``quick_check`` too); ``None`` when it would."""
    engine = schema.create_sqlalchemy_engine(f"sqlite:///{db}")
    try:
        if whole:
            with engine.connect() as conn:
                verdict = conn.exec_driver_sql("PRAGMA quick_check").scalar()
            if verdict != "ok":
                return f"SQLite finds it damaged ({str(verdict)[:200]})"
        if not schema._all_tables_exist(engine):
            return "some of MLflow's tables are missing"
        found, head = schema._get_schema_version(engine), schema._get_latest_schema_revision()
        if found != head:
            return f"its schema is at revision {found}, MLflow expects {head}"
        return None
    except Exception as err:  # not a database, unreadable
        text = str(err).splitlines()[0][:300] if str(err) else ""
        if "database is locked" in text or "database is busy" in text:
            raise  # another program holds it: busy, not broken (open_client tries again, then says so)
        return f"it cannot be read ({type(err).__name__}: {text})"
    finally:
        engine.dispose()


def _records(db: Path) -> int:
    """How many rows ``db`` holds beyond those of a new store (its schema version, MLflow's default
    experiment and workspace): runs, experiments, models, traces, anything; raises
    ``sqlite3.DatabaseError`` for a file SQLite cannot read."""
    total = 0
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            if table in ("alembic_version", "sqlite_sequence"):
                continue
            where = _NEW_STORE_ROWS.get(table, "")
            total += conn.execute(f'SELECT count(*) FROM "{table}" {where}').fetchone()[0]
    return total


# -- creating a store ----------------------------------------------------------------------------------
def prepare_sqlite_store(db: str | os.PathLike[str], *, locked: bool = False) -> str | None:
    """Make sure the SQLite store ``db`` is one MLflow opens: create it whole when it is missing,
    replace it when it was left half-created (see the module docstring). Returns what was done to
    an existing store, for a person (``None``: nothing, or only a new store created).

    ``locked``: the caller holds the store's lock (:func:`open_client` does); else it is taken here.

    Raises:
        BrokenStoreError: the store fails MLflow's schema check and holds records.
    """
    db = Path(db).resolve()
    if not locked:
        from filelock import FileLock

        with FileLock(str(db.with_name(db.name + ".prov4ml-lock")), timeout=_STORE_LOCK_TIMEOUT_S):
            return prepare_sqlite_store(db, locked=True)
    schema = _schema()
    if schema is None:
        return None
    for stale in db.parent.glob(f"{db.name}{_NEW}*"):  # under the lock: a killed creator's
        with contextlib.suppress(OSError):
            stale.unlink()
    if no_store_yet(db):
        _create(schema, db, replace=db.exists())
        return None
    why = _check(schema, db)
    if why is None:
        return None
    try:
        records = _records(db)
    except sqlite3.DatabaseError as err:  # not SQLite's at all (a user's file, a damaged header): never ours to move
        raise BrokenStoreError(
            f"the MLflow store {db} cannot be opened by MLflow ({why}) and SQLite cannot read it ({err}), so "
            "prov4ml leaves it alone: restore it from a backup, or move it away to start a new store") from None
    if records:
        raise BrokenStoreError(
            f"the MLflow store {db} cannot be opened by MLflow as it is ({why}) and it holds {records} "
            "records (runs, experiments, models...), so prov4ml leaves it alone: back it up, then run "
            f"`mlflow db upgrade sqlite:///{db}` (a store of an older MLflow), or move it away to start a new one")
    aside = _move_aside(db)
    _create(schema, db)
    return (f"the MLflow store {db} was left half-created ({why}; a process stopped while creating or "
            f"migrating it) and held no records: it was moved aside to {aside} and a new, empty store "
            "was created in its place")


def no_store_yet(db: Path) -> bool:
    """Whether ``db`` holds no store yet: missing, or an empty file (``sqlite3.connect`` without a write)
    with none of SQLite's files beside it (a write in progress has one)."""
    if not db.exists():
        return True
    return db.stat().st_size == 0 and not any(Path(f"{db}{s}").exists() for s in _SIDE_FILES)


def _move_aside(db: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = db.with_name(f"{db.name}{_BROKEN}{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = db.with_name(f"{db.name}{_BROKEN}{stamp}-{n}")
    os.rename(db, aside)
    for suffix in _SIDE_FILES:
        side = Path(f"{db}{suffix}")
        if side.exists():
            os.rename(side, Path(f"{aside}{suffix}"))
    return aside


def _create(schema: Any, db: Path, *, replace: bool = False) -> None:
    """Create the store ``db`` whole: a copy of the template (built first when missing or not
    usable), under a temporary name beside ``db``, then linked into place."""

    def fill(tmp: Path) -> None:
        template = template_path(schema)
        if not (template is not None and _copy_template(schema, template, tmp)):
            _migrate(schema, tmp)
            if template is not None:
                _save_template(tmp, template)

    link_new_store(db, fill, replace=replace)


def link_new_store(db: Path, fill: Callable[[Path], None], *, replace: bool = False) -> None:
    """Create the store ``db`` whole: ``fill`` writes it under a temporary name beside ``db``, which is then
    linked into place (``replace``: over the file there; else never over a store another program created
    meanwhile). The caller holds the store's lock."""
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_name(f"{db.name}{_NEW}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        fill(tmp)
        _fsync(tmp)
        if replace:
            os.replace(tmp, db)
        else:
            try:
                os.link(tmp, db)  # never over a store another program created meanwhile
            except FileExistsError:
                log.info("prov4ml: the MLflow store %s appeared while prov4ml created it; it is kept", db)
            except OSError:  # a file system without hard links
                if not db.exists():
                    os.replace(tmp, db)
        _fsync(db.parent)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _migrate(schema: Any, path: Path) -> None:
    """Run MLflow's creation of a new store (its tables, then every migration) on the file ``path``."""
    engine = schema.create_sqlalchemy_engine(f"sqlite:///{path}")
    try:
        schema._initialize_tables(engine)
    finally:
        engine.dispose()


def _copy_template(schema: Any, template: Path, tmp: Path) -> bool:
    """Copy the template to ``tmp``; whether the copy passed the checks (a stale or damaged template is removed)."""
    try:
        shutil.copyfile(template, tmp)
    except FileNotFoundError:
        return False
    except OSError as err:
        log.info("prov4ml: the empty MLflow store %s could not be copied (%s); migrating a new one", template, err)
        return False
    why = _check(schema, tmp, whole=True)
    if why is None:
        try:
            why = f"it holds {n} records" if (n := _records(tmp)) else None
        except sqlite3.DatabaseError as err:
            why = f"it cannot be read ({err})"
    if why is None:
        return True
    log.warning("prov4ml: the cached empty MLflow store %s is not usable (%s); it is rebuilt", template, why)
    with contextlib.suppress(OSError):
        template.unlink()
    tmp.unlink()
    return False


def _save_template(store: Path, template: Path) -> None:
    """Keep a copy of the freshly migrated ``store`` as the template (a cache that cannot be written is skipped)."""
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{template.name}.", dir=template.parent)
        os.close(fd)
        try:
            shutil.copyfile(store, tmp)
            _fsync(Path(tmp))
            os.replace(tmp, template)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    except OSError as err:
        log.info("prov4ml: the empty MLflow store could not be kept in %s (%s); each new store is migrated",
                 template.parent, err)


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk; where the system cannot, go on."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
