"""The MLflow side of a run: the only module that imports ``mlflow``.

Everything goes through ``MlflowClient(tracking_uri)`` with explicit run ids; mlflow's global
fluent state is touched only inside :meth:`MlflowSink.log_model`, where MLflow 3 offers no
client API, and restored straight after.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

__all__ = ["MlflowSink", "default_tracking_uri", "fetch_provenance"]

log = logging.getLogger(__name__)

_BATCH_METRICS = 1000  # mlflow.utils.validation.MAX_METRICS_PER_BATCH
_BATCH_PARAMS = 100  # mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH

MLFLOW_TAG_DESCRIPTION = "mlflow.note.content"
MLFLOW_TAG_PARENT = "mlflow.parentRunId"
MLFLOW_TAG_RUN_NAME = "mlflow.runName"
#: run tag naming the PROV JSON among the run's artifacts (set by the recorder at the end).
PROVENANCE_TAG = "prov4ml.provenance_file"


def default_tracking_uri(mlflow_save_dir: str | os.PathLike[str]) -> str:
    """The embedded store: SQLite in ``mlflow_save_dir``, artifacts beside it."""
    path = Path(mlflow_save_dir).resolve() / "mlflow.db"
    return f"sqlite:///{path}"


def _is_local_store(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri


class MlflowSink:
    """Writes one run's records to an MLflow tracking store.

    Args:
        tracking_uri: where the tracking store lives (``sqlite:///...``, ``http://host:port``).
        mlflow_save_dir: the folder of the embedded store; new experiments in a local store put
            their artifacts in ``<mlflow_save_dir>/artifacts``.
    """

    def __init__(self, tracking_uri: str, mlflow_save_dir: str | os.PathLike[str]) -> None:
        self.tracking_uri = tracking_uri
        self.mlflow_save_dir = Path(mlflow_save_dir).resolve()
        if _is_local_store(tracking_uri):
            self.mlflow_save_dir.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri)

    # -- run lifecycle -------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        location = None
        if _is_local_store(self.tracking_uri):
            location = (self.mlflow_save_dir / "artifacts").as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            # Another process created it between our lookup and create.
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def create_run(
        self,
        experiment_id: str,
        run_name: str | None,
        tags: dict[str, str],
        description: str | None,
        parent_run_id: str | None,
        start_time_ms: int,
    ) -> tuple[str, str]:
        """Create the run; return ``(run_id, run_name)``."""
        all_tags = dict(tags)
        if description:
            all_tags[MLFLOW_TAG_DESCRIPTION] = description
        if parent_run_id:
            all_tags[MLFLOW_TAG_PARENT] = parent_run_id
        run = self.client.create_run(
            experiment_id, start_time=start_time_ms, tags=all_tags, run_name=run_name
        )
        return run.info.run_id, run.info.run_name

    def reopen_run(self, run_id: str) -> dict[str, Any]:
        """Mark an existing run RUNNING again (resume); return its info as a dict."""
        run = self.client.get_run(run_id)
        self.client.update_run(run_id, status="RUNNING")
        return {
            "experiment_id": run.info.experiment_id,
            "run_name": run.info.run_name,
            "start_time_ms": run.info.start_time,
        }

    def end_run(self, run_id: str, status: str, end_time_ms: int) -> None:
        # MlflowClient.set_terminated prints "View run ... at: <tracking URI>" to stdout for HTTP
        # stores, credentials in the URI included; the store call it wraps does the same update.
        store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        if store is None:
            self.client.set_terminated(run_id, status=status, end_time=end_time_ms)
            return
        from mlflow.entities import RunStatus

        store.update_run_info(run_id, run_status=RunStatus.from_string(status), end_time=end_time_ms, run_name=None)

    # -- data ----------------------------------------------------------------------------
    def log_metrics(self, run_id: str, points: Sequence[tuple[str, float, int, int]]) -> None:
        """Log ``(key, value, timestamp_ms, step)`` points in batches of 1000."""
        for start in range(0, len(points), _BATCH_METRICS):
            chunk = points[start : start + _BATCH_METRICS]
            metrics = [Metric(k, v, ts, step) for k, v, ts, step in chunk]
            self.client.log_batch(run_id, metrics=metrics, synchronous=True)

    def log_params(self, run_id: str, params: Iterable[tuple[str, str]]) -> None:
        items = [Param(k, v) for k, v in params]
        for start in range(0, len(items), _BATCH_PARAMS):
            self.client.log_batch(run_id, params=items[start : start + _BATCH_PARAMS], synchronous=True)

    def set_tags(self, run_id: str, tags: Iterable[tuple[str, str]]) -> None:
        items = [RunTag(k, v) for k, v in tags]
        for start in range(0, len(items), _BATCH_PARAMS):
            self.client.log_batch(run_id, tags=items[start : start + _BATCH_PARAMS], synchronous=True)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        if Path(local_path).is_dir():
            self.client.log_artifacts(run_id, local_path, artifact_path)
        else:
            self.client.log_artifact(run_id, local_path, artifact_path)

    def artifact_uri(self, run_id: str, artifact_path: str | None = None) -> str:
        base = self.client.get_run(run_id).info.artifact_uri
        return f"{base}/{artifact_path}" if artifact_path else base

    def log_model(
        self,
        run_id: str,
        model: Any,
        name: str,
        *,
        pip_requirements: list[str] | None,
        params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> tuple[str, str | None]:
        """Log a ``torch.nn.Module`` with the MLflow pytorch flavour; return ``(model_uri, model_id)``.

        ``pip_requirements`` is passed so MLflow skips its slow requirement inference.
        """
        import mlflow.pytorch
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        # pt2 (torch.export, no pickled code) needs an input example to trace; without one
        # MLflow can only pickle the module.
        kwargs.setdefault("serialization_format", "pt2" if kwargs.get("input_example") is not None else "pickle")
        # Create the LoggedModel ourselves: left to MLflow it lands in the fluent default
        # experiment (and, with no tracking URI set, in ./mlruns), not in the run's experiment.
        experiment_id = self.client.get_run(run_id).info.experiment_id
        logged = self.client.create_logged_model(
            experiment_id, name=name, source_run_id=run_id,
            params={k: str(v) for k, v in (params or {}).items()} or None,
        )
        with _use_tracking_uri(self.tracking_uri):
            info = mlflow.pytorch.log_model(
                model,
                name=name,
                run_id=run_id,
                model_id=logged.model_id,
                pip_requirements=pip_requirements,
                **kwargs,
            )
        return info.model_uri, getattr(info, "model_id", None)

    # -- reading back (used by `prov4ml` tools) -------------------------------------------
    def download_artifacts(self, run_id: str, path: str, dst: str) -> str:
        return self.client.download_artifacts(run_id, path, dst)

    # -- reconciling a run with its local records (used by `prov4ml sync` / `recover`) ----------
    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """Status, params and tags of ``run_id``; ``None`` when the store has no such run."""
        try:
            run = self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return {"status": run.info.status, "experiment_id": run.info.experiment_id,
                "params": dict(run.data.params), "tags": dict(run.data.tags)}

    def get_metric_history(self, run_id: str, key: str) -> set[tuple[int, int]]:
        """The ``(step, timestamp_ms)`` of every point MLflow holds for ``key``."""
        return {(m.step, m.timestamp) for m in self.client.get_metric_history(run_id, key)}

    def search_runs(self, experiment_id: str, tag: str, value: str) -> list[str]:
        """Ids of the runs of ``experiment_id`` whose tag ``tag`` equals ``value``."""
        escaped = value.replace("'", "\\'")
        runs = self.client.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{escaped}'", max_results=10)
        return [r.info.run_id for r in runs]

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        return [a.path for a in self.client.list_artifacts(run_id, path)]


def fetch_provenance(tracking_uri: str, run_id: str, dst: str | os.PathLike[str]) -> Path:
    """Download the PROV files of ``run_id`` (artifact folder ``prov/``) into ``dst``.

    Returns:
        The local path of the run's PROV JSON (named by the run tag ``prov4ml.provenance_file``).

    Raises:
        Prov4MLInputError: the store, the run or its provenance does not exist.
    """
    from prov4ml_lightning.errors import Prov4MLInputError

    if tracking_uri.startswith("sqlite:///"):
        # MlflowClient would silently create an empty store at a mistyped path.
        db = Path(tracking_uri[len("sqlite:///"):])
        if not db.is_file():
            raise Prov4MLInputError(f"tracking store {tracking_uri}: no such SQLite file {db}")
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
    except mlflow.exceptions.MlflowException as err:
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
