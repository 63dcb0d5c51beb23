"""An embedded SQLite store written without importing MLflow (issue 27).

Importing MLflow's package costs ~1.6 s of CPU (it imports pandas, FastAPI, its GenAI modules
whatever submodule is asked for) and its SQL store ~0.8 s more: on the peer benchmark more than the
whole budget of a run. A training run writes only a few kinds of rows (an experiment, a run, its
params, tags, metric points, dataset inputs, a logged model) and copies files into a local artifact
folder; this module does exactly that with :mod:`sqlite3`, in MLflow's schema, as MLflow's
``SqlAlchemyStore`` does (the same rows, values, defaults and checks; ``tests/sinks/test_direct.py``
writes one run both ways and compares every table, read back with ``MlflowClient``).

It is used only where that comparison holds: a ``sqlite:///`` store whose schema revision is the
head of the installed MLflow (read from the migrated empty store :mod:`.store` keeps per MLflow
version) and one of :data:`SCHEMAS`, the revisions this module was checked against. Anything else
(another revision, a deleted experiment, an artifact location that is not a local folder, a
``log_model`` option that needs MLflow's flavour code, any reading call) raises
:class:`NeedsMlflow` before writing anything, and the service does that call with MLflow
(:class:`.sink.MlflowSink`), on the same database.

It imports nothing of the package but :mod:`.rules`, :mod:`.store`, :mod:`.model_folder` and
:mod:`prov4ml_lightning.files` (the service process loads them by path) and never MLflow.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from prov4ml_lightning.sinks.mlflow.model_folder import write_model_folder
from prov4ml_lightning.sinks.mlflow.rules import (  # loaded by path in the service process: see service_process.py
    MLFLOW_TAG_RUN_NAME,
    MLFLOW_TAG_USER,
    PROVENANCE_TAG,
    WEIGHTS_TAG_PREFIX,
    dataset_input,
    default_pip_requirements,
    mlflow_safe_key,
    model_params_and_tags,
    run_tags,
    truncate_param_value,
    weights_hit,
)
from prov4ml_lightning.sinks.mlflow.store import (
    cached_template,
    database_file,
    link_new_store,
    no_store_yet,
    store_lock,
)

__all__ = ["SCHEMAS", "DirectSink", "NeedsMlflow", "open_direct"]

log = logging.getLogger(__name__)

#: MLflow's schema revisions (alembic heads) this module writes; each one checked by tests/sinks/test_direct.py
#: against the MLflow release whose head it is (3.17: dc11669786a5)
SCHEMAS = frozenset({"dc11669786a5"})

_MAX_TAG_VALUE = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH (longer run tag values are cut)
_MAX_EXPERIMENT_NAME = 500  # mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH
_MAX_FLOAT = 1.7976931348623157e308  # +/-inf are stored as the largest float (SqlAlchemyStore.sanitize_metric_value)
_READY, _PENDING = 2, 1  # mlflow.entities.LoggedModelStatus
_DEFAULT_EXPERIMENT = "Default"


class NeedsMlflow(Exception):
    """This call needs MLflow itself; nothing was written."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _local_folder(uri: str) -> Path:
    """The folder of a local artifact location (``file:///...`` or a plain absolute path)."""
    parts = urlsplit(uri)
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        return Path(unquote(parts.path))
    if not parts.scheme and os.path.isabs(uri):
        return Path(uri)
    raise NeedsMlflow(f"artifact location {uri!r} is not a local folder")


def _append(uri: str, *parts: str) -> str:
    """``mlflow.utils.uri.append_to_uri_path`` for the local locations this module writes."""
    return "/".join([uri.rstrip("/"), *parts])


def open_direct(tracking_uri: str) -> DirectSink | None:
    """A :class:`DirectSink` on the SQLite store ``tracking_uri`` (created from the migrated empty store when
    missing), or ``None`` where MLflow must open it (see the module docstring)."""
    db = database_file(tracking_uri)
    if db is None or "?" in tracking_uri:
        return None
    template = cached_template()
    if template is None or template[1] not in SCHEMAS:
        return None
    path, head = template
    db = db.resolve()
    with store_lock(tracking_uri):
        if no_store_yet(db):
            try:
                link_new_store(db, lambda tmp: _copy_checked(path, head, tmp), replace=db.exists())
            except (OSError, sqlite3.Error, NeedsMlflow):
                return None
        if _revision(db) != head:
            return None  # another revision, half-created, not SQLite's: MLflow's opening says what to do
    return DirectSink(db)


def _revision(db: Path) -> str | None:
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def _copy_checked(template: Path, head: str, tmp: Path) -> None:
    """Copy the migrated empty store to ``tmp`` and check it (SQLite's quick check, its revision, no rows)."""
    shutil.copyfile(template, tmp)
    with contextlib.closing(sqlite3.connect(tmp)) as conn:
        if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok" or _revision(tmp) != head:
            raise NeedsMlflow(f"the empty MLflow store {template} is damaged")
        if conn.execute("SELECT count(*) FROM runs").fetchone()[0]:
            raise NeedsMlflow(f"the empty MLflow store {template} holds runs")


class DirectSink:
    """The calls of :class:`~prov4ml_lightning.sinks.mlflow.sink.MlflowSink` a training run makes, on a
    SQLite store, without MLflow (see the module docstring). Each call is one transaction."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self._conn = sqlite3.connect(db, timeout=30, isolation_level=None, check_same_thread=False)
        self._ensure_default_experiment()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _ensure_default_experiment(self) -> None:
        """MLflow's experiment 0, which its store creates when it opens a store without one
        (``SqlAlchemyStore._create_default_experiment``; its artifacts in ``./mlruns/0``)."""
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM experiments WHERE experiment_id = 0").fetchone() is None:
                now = _now_ms()
                conn.execute("INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage, "
                             "creation_time, last_update_time, workspace) VALUES (0, ?, ?, 'active', ?, ?, 'default')",
                             (_DEFAULT_EXPERIMENT, os.path.join(os.path.abspath("mlruns"), "0"), now, now))

    # -- run lifecycle -------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        if not isinstance(name, str) or not name or len(name) > _MAX_EXPERIMENT_NAME:
            raise NeedsMlflow("an experiment name MLflow may refuse")  # MLflow's own message then
        location = (self.db.parent / "artifacts").as_uri()
        with self._write() as conn:
            row = conn.execute("SELECT experiment_id, lifecycle_stage FROM experiments WHERE workspace = 'default' "
                               "AND name = ?", (name,)).fetchone()
            if row is not None:
                if row[1] != "active":
                    raise NeedsMlflow("a deleted experiment: MLflow's sink says what to do")
                return str(row[0])
            now = _now_ms()
            cur = conn.execute("INSERT INTO experiments (name, artifact_location, lifecycle_stage, creation_time, "
                               "last_update_time, workspace) VALUES (?, ?, 'active', ?, ?, 'default')",
                               (name, location, now, now))
            return str(cur.lastrowid)

    def create_run(self, experiment_id: str, run_name: str | None, tags: Mapping[str, str], description: str | None,
                   parent_run_id: str | None, start_time_ms: int) -> tuple[str, str]:
        return self.create_run_with_id(None, experiment_id, run_name, tags, description, parent_run_id,
                                       start_time_ms)

    def create_run_with_id(self, run_id: str | None, experiment_id: str, run_name: str | None,
                           tags: Mapping[str, str], description: str | None, parent_run_id: str | None,
                           start_time_ms: int) -> tuple[str, str]:
        all_tags, run_name = run_tags(tags, description, parent_run_id, run_name)
        if all_tags.get(MLFLOW_TAG_RUN_NAME, run_name) != run_name:
            raise NeedsMlflow("a run name and an mlflow.runName tag that differ")  # MLflow's error then
        run_id = run_id or uuid.uuid4().hex
        all_tags.setdefault(MLFLOW_TAG_RUN_NAME, run_name)
        rows = self._tag_rows(all_tags.items(), cut=False)
        with self._write() as conn:
            location = self._experiment_location(conn, experiment_id)
            conn.execute("INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, "
                         "status, start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id, "
                         "deleted_time) VALUES (?, ?, 'UNKNOWN', '', '', ?, 'RUNNING', ?, NULL, '', 'active', ?, ?, "
                         "NULL)", (run_id, run_name, all_tags.get(MLFLOW_TAG_USER, "unknown"), start_time_ms,
                                   _append(location, run_id, "artifacts"), int(experiment_id)))
            conn.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
                             [(k, v, run_id) for k, v in rows.items()])
        return run_id, run_name

    def _experiment_location(self, conn: sqlite3.Connection, experiment_id: str) -> str:
        row = conn.execute("SELECT artifact_location, lifecycle_stage FROM experiments WHERE experiment_id = ?",
                           (int(experiment_id),)).fetchone()
        if row is None or row[1] != "active":
            raise NeedsMlflow(f"experiment {experiment_id} is missing or deleted")  # MLflow's error then
        _local_folder(row[0])
        return str(row[0])

    def _run(self, conn: sqlite3.Connection, run_id: str) -> tuple[int, str, str, int]:
        """(experiment id, artifact URI, name, start time) of an active run; NeedsMlflow for another."""
        row = conn.execute("SELECT experiment_id, artifact_uri, lifecycle_stage, name, start_time FROM runs "
                           "WHERE run_uuid = ?", (run_id,)).fetchone()
        if row is None or row[2] != "active":
            raise NeedsMlflow(f"run {run_id} is missing or deleted")  # MLflow's error then
        return int(row[0]), str(row[1]), str(row[3]), int(row[4] or 0)

    def reopen_run(self, run_id: str) -> dict[str, Any]:
        with self._write() as conn:
            experiment_id, _, name, start = self._run(conn, run_id)
            conn.execute("UPDATE runs SET status = 'RUNNING' WHERE run_uuid = ?", (run_id,))
        return {"experiment_id": str(experiment_id), "run_name": name, "start_time_ms": start}

    def end_run(self, run_id: str, status: str, end_time_ms: int) -> None:
        if status not in ("FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED"):
            raise NeedsMlflow(f"run status {status!r}")  # MLflow's error then
        with self._write() as conn:
            self._run(conn, run_id)
            conn.execute("UPDATE runs SET status = ?, end_time = ? WHERE run_uuid = ?", (status, end_time_ms, run_id))

    # -- data ----------------------------------------------------------------------------
    def log_metrics(self, run_id: str, points: Sequence[tuple[str, float, int, int]]) -> None:
        """``SqlAlchemyStore._log_metrics``: every new point, and each key's latest point (by step, then
        time, then value) kept in ``latest_metrics``."""
        rows = []
        for key, value, ts, step in points:
            if (not isinstance(value, numbers.Number) or isinstance(value, bool) or not isinstance(ts, int)
                    or not isinstance(step, int) or mlflow_safe_key(key) != key):
                raise NeedsMlflow("a metric point MLflow refuses")  # MLflow's error then
            value = float(value)  # type: ignore[arg-type]
            is_nan = math.isnan(value)
            stored = 0.0 if is_nan else (math.copysign(_MAX_FLOAT, value) if math.isinf(value) else value)
            rows.append((key, stored, ts, run_id, step, int(is_nan)))
        if not rows:
            return
        with self._write() as conn:
            self._run(conn, run_id)
            conn.executemany("INSERT OR IGNORE INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                             "VALUES (?, ?, ?, ?, ?, ?)", rows)
            latest: dict[str, tuple[Any, ...]] = {}
            for row in rows:
                best = latest.get(row[0])
                if best is None or (row[4], row[2], row[1]) > (best[4], best[2], best[1]):
                    latest[row[0]] = row
            for key, row in latest.items():
                old = conn.execute("SELECT step, timestamp, value FROM latest_metrics WHERE run_uuid = ? AND key = ?",
                                   (run_id, key)).fetchone()
                if old is None or (row[4], row[2], row[1]) > tuple(old):
                    conn.execute("INSERT OR REPLACE INTO latest_metrics (key, value, timestamp, step, is_nan, "
                                 "run_uuid) VALUES (?, ?, ?, ?, ?, ?)", (key, row[1], row[2], row[4], row[5], run_id))

    def log_params(self, run_id: str, params: Iterable[tuple[str, str]]) -> None:
        """``SqlAlchemyStore._log_params``: a param logged again with another value is refused."""
        items = {}
        for k, v in params:
            items.setdefault(mlflow_safe_key(k), truncate_param_value(str(v)))
        if not items:
            return
        with self._write() as conn:
            self._run(conn, run_id)
            existing = dict(conn.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)).fetchall())
            changed = [{"key": k, "old_value": existing[k], "new_value": v} for k, v in items.items()
                       if k in existing and existing[k] != v]
            if changed:
                raise ValueError(f"Changing param values is not allowed. Params were already logged='{changed}' "
                                 f"for run ID='{run_id}'.")
            conn.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)",
                             [(k, v, run_id) for k, v in items.items() if k not in existing])

    @staticmethod
    def _tag_rows(tags: Iterable[tuple[str, str]], *, cut: bool = True) -> dict[str, str]:
        """Tags as MLflow stores them: keys made safe and, with ``cut`` (``set_tags``; MLflow's ``create_run``
        keeps any length), values over 8000 characters cut with MLflow's warning, or refused where
        ``MLFLOW_TRUNCATE_LONG_VALUES`` says so (MLflow's error then)."""
        out = {}
        for k, v in tags:
            value = str(v)
            if cut and len(value) > _MAX_TAG_VALUE:
                if os.environ.get("MLFLOW_TRUNCATE_LONG_VALUES", "true").strip().lower() in ("false", "0"):
                    raise NeedsMlflow("a tag value over MLflow's limit, not to be cut")
                log.warning("tag %s's value '%s...' (%d characters) is truncated to %d characters to meet MLflow's "
                            "length limit", k, value[:100], len(value), _MAX_TAG_VALUE)
                value = value[:_MAX_TAG_VALUE]
            out[mlflow_safe_key(k)] = value
        return out

    def set_tags(self, run_id: str, tags: Iterable[tuple[str, str]]) -> None:
        """``SqlAlchemyStore._set_tags``: set or replaced; ``mlflow.runName`` renames the run too."""
        rows = self._tag_rows(tags)
        if not rows:
            return
        with self._write() as conn:
            self._run(conn, run_id)
            conn.executemany("INSERT OR REPLACE INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
                             [(k, v, run_id) for k, v in rows.items()])
            if MLFLOW_TAG_RUN_NAME in rows:
                conn.execute("UPDATE runs SET name = ? WHERE run_uuid = ?", (rows[MLFLOW_TAG_RUN_NAME], run_id))

    def log_dataset_inputs(self, run_id: str, datasets: Sequence[Mapping[str, Any]]) -> None:
        """``SqlAlchemyStore._log_inputs_impl``: a dataset is the experiment's (one row per name and digest),
        an input links it to the run once, with its context tag."""
        found: dict[tuple[str, str], dict[str, str]] = {}
        for ds in datasets:
            row = dataset_input(ds)
            found.setdefault((row["name"], row["digest"]), row)
        if not found:
            return
        with self._write() as conn:
            experiment_id = self._run(conn, run_id)[0]
            for (name, digest), row in found.items():
                hit = conn.execute("SELECT dataset_uuid FROM datasets WHERE experiment_id = ? AND name = ? AND "
                                   "digest = ?", (experiment_id, name, digest)).fetchone()
                if hit is None:
                    dataset_uuid = uuid.uuid4().hex
                    conn.execute("INSERT INTO datasets (dataset_uuid, experiment_id, name, digest, "
                                 "dataset_source_type, dataset_source, dataset_schema, dataset_profile) "
                                 "VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                                 (dataset_uuid, experiment_id, name, digest, row["source_type"], row["source"],
                                  row["profile"]))
                else:
                    dataset_uuid = hit[0]
                if conn.execute("SELECT 1 FROM inputs WHERE source_type = 'DATASET' AND source_id = ? AND "
                                "destination_type = 'RUN' AND destination_id = ?",
                                (dataset_uuid, run_id)).fetchone() is None:
                    input_uuid = uuid.uuid4().hex
                    conn.execute("INSERT INTO inputs (input_uuid, source_type, source_id, destination_type, "
                                 "destination_id, step) VALUES (?, 'DATASET', ?, 'RUN', ?, 0)",
                                 (input_uuid, dataset_uuid, run_id))
                    conn.execute("INSERT INTO input_tags (input_uuid, name, value) "
                                 "VALUES (?, 'mlflow.data.context', ?)",
                                 (input_uuid, row["context"]))

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        """``LocalArtifactRepository.log_artifact`` / ``log_artifacts``: a copy into the run's artifact folder."""
        with self._write() as conn:
            folder = _local_folder(self._run(conn, run_id)[1])
        _copy_into(Path(local_path), folder / artifact_path if artifact_path else folder)

    def log_model_file(self, run_id: str, path: str, name: str, model_id: str, *,
                       pytorch_version: str | None = None, pip_requirements: list[str] | None = None,
                       params: Mapping[str, Any] | None = None, step: int = 0, registered_model_name: str | None = None,
                       await_registration_for: Any = None, **kwargs: Any) -> tuple[str, str]:
        """``Model.log`` of the pytorch flavour for a module the training process saved at ``path``
        (``MlflowSink.log_model_file``): the logged model (PENDING), the run's output link, the run's
        metrics at ``step`` copied to the model, the model folder ``mlflow.pytorch.save_model`` writes
        (``MLmodel``, the environment files, ``data/``), then READY; with ``registered_model_name``, its
        registration (:meth:`_register`). Any option beyond those is MLflow's."""
        if pytorch_version is None or kwargs or not isinstance(step, int):
            raise NeedsMlflow("a model logged with options MLflow's flavour applies")
        if registered_model_name is not None and (not isinstance(registered_model_name, str)
                                                  or not registered_model_name.strip() or "/" in registered_model_name
                                                  or ":" in registered_model_name or len(registered_model_name) > 256):
            raise NeedsMlflow("a registered model name MLflow may refuse")
        if not name or not isinstance(name, str):
            raise NeedsMlflow("a model name MLflow may refuse")
        requirements = list(pip_requirements) if pip_requirements is not None else default_pip_requirements()
        now = _now_ms()
        with self._write() as conn:
            experiment_id, _, _, _ = self._run(conn, run_id)
            location = _append(self._experiment_location(conn, str(experiment_id)), "models", model_id, "artifacts")
            conn.execute("INSERT INTO logged_models (model_id, experiment_id, name, artifact_location, "
                         "creation_timestamp_ms, last_updated_timestamp_ms, status, lifecycle_stage, model_type, "
                         "source_run_id, status_message) VALUES (?, ?, ?, ?, ?, ?, ?, 'active', NULL, ?, NULL)",
                         (model_id, experiment_id, name, location, now, now, _PENDING, run_id))
            model_params, tags = model_params_and_tags(
                params, dict(conn.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)).fetchall()),
                dict(conn.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)).fetchall()))
            conn.executemany("INSERT INTO logged_model_params (model_id, experiment_id, param_key, param_value) "
                             "VALUES (?, ?, ?, ?)", [(model_id, experiment_id, k, v) for k, v in model_params.items()])
            conn.executemany("INSERT INTO logged_model_tags (model_id, experiment_id, tag_key, tag_value) "
                             "VALUES (?, ?, ?, ?)", [(model_id, experiment_id, k, v) for k, v in tags.items()])
            conn.execute("INSERT INTO inputs (input_uuid, source_type, source_id, destination_type, destination_id, "
                         "step) VALUES (?, 'RUN_OUTPUT', ?, 'MODEL_OUTPUT', ?, ?)",
                         (uuid.uuid4().hex, run_id, model_id, step))
            conn.execute("INSERT OR IGNORE INTO logged_model_metrics (model_id, metric_name, metric_timestamp_ms, "
                         "metric_step, metric_value, experiment_id, run_id, dataset_uuid, dataset_name, "
                         "dataset_digest) "
                         "SELECT ?, key, timestamp, step, value, ?, run_uuid, NULL, NULL, NULL FROM metrics "
                         "WHERE run_uuid = ? AND step = ? ORDER BY key, timestamp",
                         (model_id, experiment_id, run_id, step))
        try:
            write_model_folder(_local_folder(location), path, model_id, run_id, location, pytorch_version,
                                requirements)
        except BaseException:
            with self._write() as conn:
                conn.execute("UPDATE logged_models SET status = 3, last_updated_timestamp_ms = ? WHERE model_id = ?",
                             (_now_ms(), model_id))  # FAILED, as Model.log leaves a model it could not write
            raise
        with self._write() as conn:
            conn.execute("UPDATE logged_models SET status = ?, last_updated_timestamp_ms = ? WHERE model_id = ?",
                         (_READY, _now_ms(), model_id))
        if registered_model_name is not None:
            self._register(registered_model_name, model_id)
        return f"models:/{model_id}", model_id

    def _register(self, name: str, model_id: str) -> None:
        """MLflow's ``_register_model(f"models:/{model_id}", name)`` on a SQL registry: the registered model
        (created when new), its next version (source ``models:/<model_id>``, the logged model's run and
        artifact location, READY at once), and the version named in the logged model's
        ``mlflow.modelVersions`` tag. MLflow's notes on stderr ("Successfully registered model ...") are left out."""
        import json

        with self._write() as conn:
            if conn.execute("SELECT 1 FROM registered_model_tags WHERE workspace = 'default' AND name = ? AND "
                            "key = 'mlflow.prompt.is_prompt'", (name,)).fetchone():
                raise NeedsMlflow("a prompt's name")  # MLflow refuses it, saying why
            location, run_id, experiment_id = conn.execute(
                "SELECT artifact_location, source_run_id, experiment_id FROM logged_models WHERE model_id = ?",
                (model_id,)).fetchone()
            now = _now_ms()
            conn.execute("INSERT OR IGNORE INTO registered_models (name, creation_time, last_updated_time, "
                         "description, workspace) VALUES (?, ?, ?, NULL, 'default')", (name, now, now))
            conn.execute("UPDATE registered_models SET last_updated_time = ? WHERE workspace = 'default' AND name = ?",
                         (now, name))
            version = 1 + (conn.execute("SELECT max(version) FROM model_versions WHERE workspace = 'default' AND "
                                        "name = ?", (name,)).fetchone()[0] or 0)
            conn.execute("INSERT INTO model_versions (name, version, creation_time, last_updated_time, description, "
                         "user_id, current_stage, source, run_id, status, status_message, run_link, storage_location, "
                         "workspace) VALUES (?, ?, ?, ?, NULL, NULL, 'None', ?, ?, 'READY', NULL, NULL, ?, 'default')",
                         (name, version, now, now, f"models:/{model_id}", run_id, location))
            row = conn.execute("SELECT tag_value FROM logged_model_tags WHERE model_id = ? AND "
                               "tag_key = 'mlflow.modelVersions'", (model_id,)).fetchone()
            versions = (json.loads(row[0]) if row else []) + [{"name": name, "version": version}]
            conn.execute("INSERT OR REPLACE INTO logged_model_tags (model_id, experiment_id, tag_key, tag_value) "
                         "VALUES (?, ?, 'mlflow.modelVersions', ?)", (model_id, experiment_id, json.dumps(versions)))

    # -- reading --------------------------------------------------------------------------
    def find_weights(self, digest: str) -> list[dict[str, Any]]:
        """``MlflowSink.find_weights``: the runs, of every experiment, deleted ones too, tagged
        ``prov4ml.weights.<digest>``, newest first (``search_runs``' order)."""
        key = mlflow_safe_key(WEIGHTS_TAG_PREFIX + digest)
        rows = self._conn.execute(
            "SELECT r.run_uuid, r.artifact_uri, t.value, p.value FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid "
            "LEFT JOIN tags p ON p.run_uuid = t.run_uuid AND p.key = ? WHERE t.key = ? "
            "ORDER BY r.start_time DESC, r.run_uuid", (PROVENANCE_TAG, key)).fetchall()
        found = []
        for run_id, artifact_uri, text, prov_file in rows:
            if (hit := weights_hit(run_id, str(artifact_uri), text, prov_file)) is not None:
                found.append(hit)
        return found


def _copy_into(source: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, folder, dirs_exist_ok=True)
    else:
        shutil.copy2(source, folder / source.name)
