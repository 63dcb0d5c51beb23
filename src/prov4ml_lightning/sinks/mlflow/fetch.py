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


def fetch_all_provenance(tracking_uri: str, dst: str | os.PathLike[str], *, workers: int = 8) -> list[Path]:
    """The PROV JSON of every run of every experiment in the store that has one (tag
    ``prov4ml.provenance_file``): read in place when the artifacts are local files, else
    downloaded into ``dst`` (``workers`` at a time).

    Raises:
        Prov4MLInputError: the store cannot be read.
    """
    from concurrent.futures import ThreadPoolExecutor
    from urllib.parse import unquote, urlsplit

    from prov4ml_lightning.errors import Prov4MLInputError

    db = sqlite_file(tracking_uri)
    if db is not None and not db.is_file():
        raise Prov4MLInputError(f"tracking store {tracking_uri}: no such SQLite file {db}")
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

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

    def local(root: str, artifact: str) -> Path | None:
        parts = urlsplit(root)
        if parts.scheme in ("", "file"):
            path = Path(unquote(parts.path)) / artifact
            return path if path.is_file() else None
        return None

    def download(item: tuple[str, str, str]) -> Path | None:
        run_id, root, artifact = item
        path = local(root, artifact)
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
