"""Fetch a run's PROV files from its MLflow store (``prov4ml`` commands given a run id and a tracking URI)."""

from __future__ import annotations

import os
from pathlib import Path

from prov4ml_lightning.sinks.mlflow.rules import PROVENANCE_TAG, sqlite_file

__all__ = ["fetch_all_provenance", "fetch_provenance"]


def fetch_provenance(tracking_uri: str, run_id: str, dst: str | os.PathLike[str]) -> Path:
    """Download the PROV files of ``run_id`` (artifact folder ``prov/``) into ``dst``.

    Returns:
        The local path of the run's PROV JSON (named by the run tag ``prov4ml.provenance_file``).

    Raises:
        Prov4MLInputError: the store, the run or its provenance does not exist.
    """
    from prov4ml_lightning.errors import Prov4MLInputError

    db = sqlite_file(tracking_uri)
    if db is not None and not db.is_file():  # MlflowClient would silently create an empty store there
        raise Prov4MLInputError(f"tracking store {tracking_uri}: no such SQLite file {db}")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    # The command line prints its own summary; MLflow's download progress bar is noise there.
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        artifact = client.get_run(run_id).data.tags.get(PROVENANCE_TAG)
        if not artifact:
            raise Prov4MLInputError(
                f"MLflow run {run_id} in {tracking_uri} has no provenance (tag {PROVENANCE_TAG} is missing; "
                "was it recorded with prov4ml-lightning and ended?)"
            )
        # The whole folder: the metrics CSV and packages list live next to the PROV JSON.
        folder = artifact.rsplit("/", 1)[0] if "/" in artifact else artifact
        local = Path(client.download_artifacts(run_id, folder, str(dst)))
    except MlflowException as err:
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise Prov4MLInputError(f"MLflow run {run_id} in {tracking_uri}: {first}") from err
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous
    path = local / artifact.rsplit("/", 1)[-1] if local.is_dir() else local
    if not path.is_file():
        raise Prov4MLInputError(f"MLflow run {run_id} in {tracking_uri}: artifact {artifact} could not be downloaded")
    return path


def _local_path(root: str, artifact: str) -> Path | None:
    """Where the artifact ``artifact`` of a run whose artifact root is ``root`` lies when that root
    is a local folder; ``None`` for a remote root (``s3://``, ``mlflow-artifacts:``, ...)."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(root)
    return Path(unquote(parts.path)) / artifact if parts.scheme in ("", "file") else None


def _local_file(root: str, artifact: str) -> Path | None:
    """:func:`_local_path` when that file exists."""
    path = _local_path(root, artifact)
    return path if path is not None and path.is_file() else None


def _sqlite_tagged_runs(db: Path) -> list[tuple[str, str, str]] | None:
    """``(run id, artifact root, PROV file)`` of every run of the SQLite store ``db`` tagged
    ``prov4ml.provenance_file``, read with Python's ``sqlite3``, read-only, without MLflow: the
    same runs as MLflow's ``search_runs`` over every experiment (``ViewType.ALL``), without the
    seconds MLflow's import and store opening take. ``None`` where MLflow must answer: its
    workspaces are on (runs are then scoped to the active one), or the file is not a store of
    the shape read here (MLflow's ``runs`` and ``tags`` tables)."""
    import sqlite3
    from urllib.parse import quote

    if os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").strip().lower() in ("true", "1"):
        return None
    try:
        # mode=ro: a read never creates, migrates or locks the store for writing
        conn = sqlite3.connect(f"file:{quote(str(db.resolve()))}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return None
    try:
        rows = conn.execute(
            "SELECT runs.run_uuid, runs.artifact_uri, tags.value FROM tags JOIN runs ON runs.run_uuid = tags.run_uuid "
            "WHERE tags.key = ? AND tags.value IS NOT NULL AND tags.value != '' ORDER BY runs.start_time DESC",
            (PROVENANCE_TAG,)).fetchall()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return [(str(run_id), str(root or ""), str(value)) for run_id, root, value in rows]


def fetch_all_provenance(tracking_uri: str, dst: str | os.PathLike[str], *, workers: int = 8) -> list[Path]:
    """The PROV JSON of every run of every experiment in the store that has one (tag
    ``prov4ml.provenance_file``): read in place when the artifacts are local files, else
    downloaded into ``dst`` (``workers`` at a time).

    An embedded (``sqlite:///``) store whose documents are all local files is read without
    MLflow (:func:`_sqlite_tagged_runs`): 1,000 runs in well under a second instead of the
    seconds importing MLflow and opening its store take; any other store, and any run whose
    artifacts are remote, goes through ``MlflowClient``.

    Raises:
        Prov4MLInputError: the store cannot be read.
    """
    from prov4ml_lightning.errors import Prov4MLInputError

    db = sqlite_file(tracking_uri)
    if db is not None:
        db = Path(str(db).split("?", 1)[0])
        if not db.is_file():
            raise Prov4MLInputError(f"tracking store {tracking_uri}: no such SQLite file {db}")
        tagged = _sqlite_tagged_runs(db)
        places = [_local_path(root, artifact) for _run_id, root, artifact in (tagged or ())]
        if tagged is not None and all(path is not None for path in places):
            # a missing file is left out, as a failed download is below
            return [path for path in places if path is not None and path.is_file()]
    return _fetch_all_with_mlflow(tracking_uri, dst, workers)


def _fetch_all_with_mlflow(tracking_uri: str, dst: str | os.PathLike[str], workers: int) -> list[Path]:
    from concurrent.futures import ThreadPoolExecutor

    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from prov4ml_lightning.errors import Prov4MLInputError

    client = MlflowClient(tracking_uri)
    wanted: list[tuple[str, str, str]] = []  # (run id, artifact root, PROV file's artifact path)
    try:
        experiments, token = [], None
        while True:
            page = client.search_experiments(view_type=ViewType.ALL, max_results=1000, page_token=token)
            experiments += [e.experiment_id for e in page]
            token = page.token
            if not token:
                break
        for start in range(0, len(experiments), 100):
            token = None
            while True:
                runs = client.search_runs(experiments[start : start + 100], f"tags.`{PROVENANCE_TAG}` LIKE '%'",
                                          run_view_type=ViewType.ALL, max_results=1000, page_token=token)
                wanted += [(r.info.run_id, r.info.artifact_uri, r.data.tags[PROVENANCE_TAG]) for r in runs]
                token = runs.token
                if not token:
                    break
    except MlflowException as err:
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise Prov4MLInputError(f"tracking store {tracking_uri}: {first}") from err

    def download(item: tuple[str, str, str]) -> Path | None:
        run_id, root, artifact = item
        path = _local_file(root, artifact)
        if path is not None:
            return path
        folder = Path(dst) / run_id
        folder.mkdir(parents=True, exist_ok=True)
        try:
            got = Path(client.download_artifacts(run_id, artifact, str(folder)))
        except MlflowException:
            return None
        return got if got.is_file() else None

    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return [p for p in pool.map(download, wanted) if p is not None]
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous
