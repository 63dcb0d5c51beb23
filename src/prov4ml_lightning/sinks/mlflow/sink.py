"""The MLflow side of a run: the only module that imports ``mlflow``.

Everything goes through ``MlflowClient(tracking_uri)`` with explicit run ids; mlflow's global
fluent state is touched only inside :meth:`MlflowSink.log_model` and :meth:`MlflowSink.log_model_file`,
where MLflow 3 offers no client API, and restored straight after.

MLflow's own rules (store choice, key names, value limits, model defaults, run names) are in
:mod:`.rules`, which this module applies; opening a store (the lock around creating a new one,
the migrated empty store it is copied from, a half-created one replaced) is :mod:`.store`'s.

It imports nothing of the package at module level but those two, :mod:`.pickling`, :mod:`.model_folder`
(the model's ``data/``, written as the direct store writes it) and :mod:`prov4ml_lightning.files`: the
service process loads these files by path, with MLflow only.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prov4ml_lightning.sinks.mlflow.model_folder import write_model_data  # loaded by path, as rules.py
from prov4ml_lightning.sinks.mlflow.pickling import local_modules_by_value  # loaded by path, as rules.py
from prov4ml_lightning.sinks.mlflow.rules import (  # loaded by path in the service process: see service_process.py
    BATCH_METRICS,
    BATCH_PARAMS,
    DATASETS_PER_BATCH,
    MAX_KEY_LENGTH,
    MAX_PARAM_VALUE_LENGTH,
    MLFLOW_TAG_DATASET_CONTEXT,
    PROVENANCE_TAG,
    PYTORCH_FLAVOR,
    PYTORCH_LOADER_MODULE,
    PYTORCH_MODEL_DATA,
    PYTORCH_PICKLE_MODULE,
    WEIGHTS_TAG_PREFIX,
    dataset_input,
    default_pip_requirements,
    default_serialization_format,
    default_tracking_uri,
    generate_run_name,
    is_local_store,
    mlflow_safe_key,
    model_params_and_tags,
    resolve_tracking_uri,
    run_tags,
    source_tags,
    sqlite_file,
    truncate_param_value,
    weights_hit,
)
from prov4ml_lightning.sinks.mlflow.store import open_client  # loaded by path in the service process too

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_PARAM_VALUE_LENGTH",
    "MlflowSink",
    "default_pip_requirements",
    "default_serialization_format",
    "default_tracking_uri",
    "generate_run_name",
    "mlflow_internals_changed",
    "mlflow_safe_key",
    "resolve_tracking_uri",
    "source_tags",
    "truncate_param_value",
]

log = logging.getLogger(__name__)


def _mlflow_error() -> type[Exception]:
    from mlflow.exceptions import MlflowException

    return MlflowException


def mlflow_internals_changed() -> str:
    """What to say when MLflow's SQL store no longer draws its ids as :meth:`MlflowSink._chosen_id`
    expects (the one MLflow internal the service relies on; tests/sinks/test_mlflow_internals.py)."""
    from importlib.metadata import version

    return (f"MLflow {version('mlflow')}'s SqlAlchemyStore no longer draws run and model ids with its module's "
            "uuid.uuid4(), which prov4ml-lightning needs to create the run under the id it already recorded; "
            "install an MLflow release in the range prov4ml-lightning supports (pyproject.toml)")


class _PickleNoticeFilter(logging.Filter):
    """Drops MLflow's "Saving pytorch model by Pickle ..." notice, and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Saving pytorch model by Pickle")


#: ``log_model`` keywords a model file is logged with, without loading it (:meth:`MlflowSink.log_model_file`):
#: MLflow's ``Model.log`` applies the first ones itself, :class:`_SavedPytorchModel` the others.
_FILE_MODEL_KWARGS = frozenset({"registered_model_name", "await_registration_for", "metadata", "tags", "step",
                                "model_type", "signature", "conda_env", "extra_pip_requirements"})


#: what :class:`_SavedPytorchModel` uses of MLflow's helpers (private ones: tests/sinks/test_mlflow_internals.py
#: checks them on each MLflow release we claim), by module
_MODEL_FOLDER_HELPERS = {
    "mlflow.utils.environment": ("_CONDA_ENV_FILE_NAME", "_CONSTRAINTS_FILE_NAME", "_PYTHON_ENV_FILE_NAME",
                                 "_REQUIREMENTS_FILE_NAME", "_process_conda_env", "_process_pip_requirements",
                                 "_PythonEnv", "_validate_env_arguments"),
    "mlflow.utils.file_utils": ("get_total_file_size", "write_to"),
    "mlflow.utils.model_utils": ("_validate_and_prepare_target_save_path",),
}


class _SavedPytorchModel:
    """MLflow's pytorch flavour for a module already saved in its pickle format, as
    ``Model.log`` calls a flavour: ``save_model`` writes the model folder ``mlflow.pytorch.save_model``
    writes (``MLmodel``, ``data/``, the environment files), with MLflow's own helpers and the file
    hard-linked (copied across file systems) instead of saved again; torch is not imported."""

    __name__ = PYTORCH_LOADER_MODULE

    def __init__(self, file: str, pytorch_version: str) -> None:
        self.file = file
        self.pytorch_version = pytorch_version
        self.helpers()  # an MLflow without them raises ImportError here, before anything is logged

    @staticmethod
    def helpers() -> SimpleNamespace:
        """MLflow's functions and names :data:`_MODEL_FOLDER_HELPERS`; ImportError when one is missing."""
        import importlib

        found = {}
        for module_name, names in _MODEL_FOLDER_HELPERS.items():
            module = importlib.import_module(module_name)
            for attr in names:
                if not hasattr(module, attr):
                    raise ImportError(f"MLflow has no {module_name}.{attr}")
                found[attr] = getattr(module, attr)
        return SimpleNamespace(**found)

    def save_model(self, path: str, mlflow_model: Any, *, signature: Any = None, conda_env: Any = None,
                   pip_requirements: list[str] | None = None, extra_pip_requirements: list[str] | None = None
                   ) -> None:
        import yaml
        from mlflow import pyfunc
        from mlflow.models.model import MLMODEL_FILE_NAME

        h = self.helpers()
        h._validate_env_arguments(conda_env, pip_requirements, extra_pip_requirements)
        path = os.path.abspath(path)
        h._validate_and_prepare_target_save_path(path)
        if signature is not None and signature is not False:
            mlflow_model.signature = signature
        write_model_data(Path(path), self.file)
        mlflow_model.add_flavor(PYTORCH_FLAVOR, model_data=PYTORCH_MODEL_DATA, pytorch_version=self.pytorch_version,
                                code=None)
        pyfunc.add_to_model(mlflow_model, loader_module=PYTORCH_LOADER_MODULE, data=PYTORCH_MODEL_DATA,
                            pickle_module_name=PYTORCH_PICKLE_MODULE, code=None, conda_env=h._CONDA_ENV_FILE_NAME,
                            python_env=h._PYTHON_ENV_FILE_NAME, model_config={"device": None})
        if size := h.get_total_file_size(path):
            mlflow_model.model_size_bytes = size
        mlflow_model.save(os.path.join(path, MLMODEL_FILE_NAME))
        if conda_env is None:
            conda_env, requirements, constraints = h._process_pip_requirements(None, pip_requirements,
                                                                               extra_pip_requirements)
        else:
            conda_env, requirements, constraints = h._process_conda_env(conda_env)
        with open(os.path.join(path, h._CONDA_ENV_FILE_NAME), "w") as f:
            yaml.safe_dump(conda_env, stream=f, default_flow_style=False)
        if constraints:
            h.write_to(os.path.join(path, h._CONSTRAINTS_FILE_NAME), "\n".join(constraints))
        h.write_to(os.path.join(path, h._REQUIREMENTS_FILE_NAME), "\n".join(requirements))
        h._PythonEnv.current().to_yaml(os.path.join(path, h._PYTHON_ENV_FILE_NAME))


class MlflowSink:
    """Writes one run's records to an MLflow tracking store; conforms to
    :class:`~prov4ml_lightning.sinks.base.TrackingSink`.

    Tag and param keys are made MLflow-safe and param values cut to MLflow's limit here, so callers may pass
    any. The sink calls the store directly: deadlines, probes and going offline are
    :class:`~prov4ml_lightning.sinks.mlflow.guard.TrackingGuard`'s job (``available`` is always
    ``True`` and ``recheck`` does nothing here).

    Args:
        tracking_uri: where the tracking store lives (``sqlite:///...``, ``http://host:port``).
        mlflow_save_dir: the folder of the embedded store; new experiments in a local store put
            their artifacts in ``<mlflow_save_dir>/artifacts``.
    """

    def __init__(self, tracking_uri: str, mlflow_save_dir: str | os.PathLike[str]) -> None:
        self.tracking_uri = tracking_uri
        self.mlflow_save_dir = Path(mlflow_save_dir).resolve()
        self.offline = False
        if is_local_store(tracking_uri):
            self.mlflow_save_dir.mkdir(parents=True, exist_ok=True)
        self.client = open_client(tracking_uri)

    @property
    def public_uri(self) -> str:
        """The tracking URI without credentials, for messages and records."""
        # Imported here: the service process loads this file without the package.
        from prov4ml_lightning.redact import redact_url

        return redact_url(self.tracking_uri)

    # -- state ---------------------------------------------------------------------------
    def available(self) -> bool:
        return True

    def go_offline(self) -> None:
        """Mark the run as having no MLflow run; calls still go through."""
        self.offline = True

    def recheck(self) -> None:
        pass

    def flush(self, timeout: float | None = None) -> bool:
        return True  # every call has written before it returned

    def pending(self) -> str:
        return ""

    def incomplete(self) -> str:
        return ""  # every call has written (or raised) before it returned

    def run_created(self, timeout: float | None = None) -> bool:
        return not self.offline

    # -- run lifecycle -------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":  # as mlflow.set_experiment: never undone behind the user's back
                uri, eid = self.public_uri, experiment.experiment_id
                raise ValueError(
                    f"the experiment {name!r} was deleted in MLflow: restore it (`MLFLOW_TRACKING_URI={uri} mlflow "
                    f"experiments restore --experiment-id {eid}`, which restores its deleted runs too) or delete it "
                    f"for good (`MLFLOW_TRACKING_URI={uri} mlflow gc --backend-store-uri {uri} --experiment-ids "
                    f"{eid}`) to create a new one, or use another experiment name")
            return experiment.experiment_id
        # A new experiment's artifacts go beside its SQLite database (the embedded store's is in
        # mlflow_save_dir; another one, such as an MLFlowLogger's named by MLFLOW_TRACKING_URI, keeps its own).
        location = None
        db = sqlite_file(self.tracking_uri)
        if db is not None:
            location = (db.resolve().parent / "artifacts").as_uri()
        elif is_local_store(self.tracking_uri):
            location = (self.mlflow_save_dir / "artifacts").as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except _mlflow_error():
            # Another process created it between our lookup and create.
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def create_run(
        self,
        experiment_id: str,
        run_name: str | None,
        tags: Mapping[str, str],
        description: str | None,
        parent_run_id: str | None,
        start_time_ms: int,
    ) -> tuple[str, str]:
        """Create the run; return ``(run_id, run_name)``.

        Without ``run_name`` (or an ``mlflow.runName`` tag) the name comes from
        :func:`generate_run_name`, never from MLflow's generator, which draws from the global
        ``random`` and would change a seeded training.
        """
        return self.create_run_with_id(None, experiment_id, run_name, tags, description, parent_run_id,
                                       start_time_ms)

    def create_run_with_id(self, run_id: str | None, experiment_id: str, run_name: str | None,
                           tags: Mapping[str, str], description: str | None, parent_run_id: str | None,
                           start_time_ms: int) -> tuple[str, str]:
        """:meth:`create_run` under ``run_id`` (32 hex digits, drawn by the training process; a
        database store only: see :meth:`_chosen_id`), or under MLflow's id when it is ``None``."""
        all_tags, run_name = run_tags(tags, description, parent_run_id, run_name)
        with self._chosen_id(run_id, "create_run"):
            run = self.client.create_run(experiment_id, start_time=start_time_ms, tags=all_tags, run_name=run_name)
        if run_id is not None and run.info.run_id != run_id:
            raise RuntimeError(f"create_run(run_id={run_id!r}): MLflow gave the run id {run.info.run_id}: "
                               f"{mlflow_internals_changed()}")
        return run.info.run_id, run.info.run_name

    @contextlib.contextmanager
    def _chosen_id(self, hex_id: str | None, call: str) -> Iterator[None]:
        """Make the database store's next ``uuid.uuid4()`` return ``hex_id`` (``None``: leave it).

        The training process draws run and model ids itself (its files and PROV records are named
        before MLflow is even imported) and the service process creates them under those ids;
        ``SqlAlchemyStore.create_run`` and ``create_logged_model`` draw theirs with
        ``uuid.uuid4()`` and take no parameter for it, so in the service process (one thread
        does MLflow's work) the store module's ``uuid`` is swapped for the one call. The callers
        check that MLflow used the id.
        """
        if hex_id is None:
            yield
            return
        import uuid

        from mlflow.store.tracking import sqlalchemy_store

        store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        if not isinstance(store, sqlalchemy_store.SqlAlchemyStore):
            raise ValueError(f"{call}: a chosen id needs a database store, not {type(store).__name__}")
        real_uuid = getattr(sqlalchemy_store, "uuid", None)
        if real_uuid is not uuid:
            raise RuntimeError(f"{call}: {mlflow_internals_changed()}")
        chosen = uuid.UUID(hex=hex_id[-32:])

        class _Chosen:
            def __getattr__(self, name: str) -> Any:
                return getattr(real_uuid, name)

            @staticmethod
            def uuid4() -> uuid.UUID:
                return chosen

        sqlalchemy_store.uuid = _Chosen()  # type: ignore[assignment]
        try:
            yield
        finally:
            sqlalchemy_store.uuid = real_uuid

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
        """Log ``(key, value, timestamp_ms, step)`` points in batches of 1000.

        The keys are taken as they are: the recorder maps each metric to its MLflow key once
        (:func:`mlflow_safe_key`) and the metric sidecar records that key, which ``prov4ml sync``
        compares with what MLflow holds; a batch MLflow rejects raises.
        """
        from mlflow.entities import Metric

        for start in range(0, len(points), BATCH_METRICS):
            chunk = points[start : start + BATCH_METRICS]
            metrics = [Metric(k, v, ts, step) for k, v, ts, step in chunk]
            self.client.log_batch(run_id, metrics=metrics, synchronous=True)

    def log_params(self, run_id: str, params: Iterable[tuple[str, str]]) -> None:
        """Log ``(key, text)`` params; a text over 6000 characters is cut (:func:`truncate_param_value`)."""
        from mlflow.entities import Param

        items = [Param(mlflow_safe_key(k), truncate_param_value(v)) for k, v in params]
        for start in range(0, len(items), BATCH_PARAMS):
            self.client.log_batch(run_id, params=items[start : start + BATCH_PARAMS], synchronous=True)

    def set_tags(self, run_id: str, tags: Iterable[tuple[str, str]]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(mlflow_safe_key(k), v) for k, v in tags]
        for start in range(0, len(items), BATCH_PARAMS):
            self.client.log_batch(run_id, tags=items[start : start + BATCH_PARAMS], synchronous=True)

    def log_dataset_inputs(self, run_id: str, datasets: Sequence[Mapping[str, Any]]) -> None:
        """Record datasets as the run's MLflow dataset inputs (the run page's "Datasets", the runs
        table's "Dataset" column).

        Each mapping holds ``name`` (the PROV entity's name), ``role`` (``train``, ``val``,
        ``test``, ``predict``: the input's ``mlflow.data.context`` tag ``training``,
        ``validation``...) and the dataset entity's attributes: the MLflow digest is the
        ``fingerprint`` (its first 36 hex digits, MLflow's limit; the whole of it, its status and
        method are in the profile), the source the dataset's class. Without a fingerprint (not
        known when the run ended, or none possible) the digest is a hash of the name.
        """
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = []
        for ds in datasets:
            row = dataset_input(ds)
            inputs.append(DatasetInput(
                Dataset(name=row["name"], digest=row["digest"], source_type=row["source_type"], source=row["source"],
                        profile=row["profile"]),
                tags=[InputTag(MLFLOW_TAG_DATASET_CONTEXT, row["context"])],
            ))
        for start in range(0, len(inputs), DATASETS_PER_BATCH):
            self.client.log_inputs(run_id, datasets=inputs[start : start + DATASETS_PER_BATCH])

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        if Path(local_path).is_dir():
            self.client.log_artifacts(run_id, local_path, artifact_path)
        else:
            self.client.log_artifact(run_id, local_path, artifact_path)

    def log_model(
        self,
        run_id: str,
        model: Any,
        name: str,
        *,
        pip_requirements: list[str] | None = None,
        params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> tuple[str, str | None]:
        """Log a ``torch.nn.Module`` with the MLflow pytorch flavour; return ``(model_uri, model_id)``.

        ``pip_requirements`` defaults to :func:`default_pip_requirements`, so MLflow skips its slow
        requirement inference; ``serialization_format`` to :func:`default_serialization_format`.
        When the format is ours to choose, MLflow's notice that pickle runs code on loading is
        left out (the README says so, and how to get ``pt2``: pass ``input_example``); a caller
        who asks for a format gets MLflow's messages as they are.
        """
        return self._log_model(run_id, model, name, pip_requirements, params, None, kwargs)

    def _log_model(self, run_id: str, model: Any, name: str, pip_requirements: list[str] | None,
                   params: Mapping[str, Any] | None, model_id: str | None, kwargs: dict[str, Any]
                   ) -> tuple[str, str | None]:
        import mlflow.pytorch
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        chosen_by_us = "serialization_format" not in kwargs
        # MLflow releases without the parameter (3.9 and older) always save with pickle.
        if chosen_by_us and "serialization_format" in inspect.signature(mlflow.pytorch.log_model).parameters:
            kwargs["serialization_format"] = default_serialization_format(kwargs.get("input_example"))
        if pip_requirements is None:
            pip_requirements = default_pip_requirements()
        logged = self._create_logged_model(run_id, name, params, model_id)
        quiet = _PickleNoticeFilter() if chosen_by_us else None
        mlflow_log = logging.getLogger("mlflow.pytorch")
        if quiet is not None:
            mlflow_log.addFilter(quiet)
        try:
            with _use_tracking_uri(self.tracking_uri), local_modules_by_value():
                info = mlflow.pytorch.log_model(
                    model,
                    name=name,
                    run_id=run_id,
                    model_id=logged.model_id,
                    pip_requirements=pip_requirements,
                    **kwargs,
                )
        finally:
            if quiet is not None:
                mlflow_log.removeFilter(quiet)
        return info.model_uri, getattr(info, "model_id", None)

    def _create_logged_model(self, run_id: str, name: str, params: Mapping[str, Any] | None,
                             model_id: str | None) -> Any:
        """The run's LoggedModel, under ``model_id`` when given, with the params and tags ``Model.log`` gives a
        model it creates (:func:`model_params_and_tags`). Created here: left to MLflow it lands in the fluent
        default experiment (and, with no tracking URI set, in ./mlruns), not in the run's, and its run-context
        tags would be the service process's."""
        run = self.client.get_run(run_id)
        model_params, tags = model_params_and_tags(params, run.data.params, run.data.tags)
        with self._chosen_id(model_id, "log_model"):
            logged = self.client.create_logged_model(
                run.info.experiment_id, name=name, source_run_id=run_id, params=model_params or None,
                tags=tags or None,
            )
        if model_id is not None and logged.model_id != model_id:
            raise RuntimeError(f"log_model(model_id={model_id!r}): MLflow gave the model id {logged.model_id}: "
                               f"{mlflow_internals_changed()}")
        return logged

    def log_model_file(self, run_id: str, path: str, name: str, model_id: str, *,
                       pytorch_version: str | None = None, pip_requirements: list[str] | None = None,
                       params: Mapping[str, Any] | None = None, **kwargs: Any) -> tuple[str, str | None]:
        """:meth:`log_model` of the model the training process saved at ``path``
        (``service.save_model_file``), as MLflow model ``model_id`` (``m-`` and 32 hex digits,
        drawn by the training process; a database store only: see :meth:`_chosen_id`).

        With ``pytorch_version`` (the training process's ``torch.__version__``: the file is then the
        module as MLflow's pickle format holds it) and no keyword in ``kwargs`` that needs the module
        itself (an ``input_example`` to run, a format, code or files to add: see
        :data:`_FILE_MODEL_KWARGS`), the file becomes the model's ``data/model.pth`` as it is and
        MLflow's ``Model.log`` records the rest (:class:`_SavedPytorchModel`): torch is never
        imported here. Otherwise the module is loaded and logged by :meth:`log_model`.
        """
        flavor = None
        if pytorch_version is not None and kwargs.keys() <= _FILE_MODEL_KWARGS:
            try:
                flavor = _SavedPytorchModel(path, pytorch_version)
            except ImportError as err:  # an MLflow that moved its helpers: MLflow's own log_model
                log.info("prov4ml: logging model %s with torch in the MLflow service (%s)", model_id, err)
        if flavor is None:
            import torch

            model = torch.load(path, map_location="cpu", weights_only=False)
            return self._log_model(run_id, model, name, pip_requirements, params, model_id, kwargs)
        from mlflow.models import Model
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        logged = self._create_logged_model(run_id, name, params, model_id)
        if pip_requirements is None:
            pip_requirements = default_pip_requirements()
        with _use_tracking_uri(self.tracking_uri):
            info = Model.log(artifact_path=None, name=name, flavor=flavor,
                             run_id=run_id, model_id=logged.model_id, pip_requirements=pip_requirements, **kwargs)
        return info.model_uri, getattr(info, "model_id", None)

    # -- reconciling a run with its local records (used by `prov4ml sync` / `recover`) ----------
    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """Status, params and tags of ``run_id``; ``None`` when the store has no such run."""
        try:
            run = self.client.get_run(run_id)
        except _mlflow_error() as err:
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

    def find_weights(self, digest: str) -> list[dict[str, Any]]:
        """The runs of every experiment tagged ``prov4ml.weights.<digest>`` (see :data:`WEIGHTS_TAG_PREFIX`)."""
        from mlflow.entities import ViewType

        key = mlflow_safe_key(WEIGHTS_TAG_PREFIX + digest)
        experiments: list[str] = []
        token = None
        while True:
            page = self.client.search_experiments(view_type=ViewType.ALL, max_results=1000, page_token=token)
            experiments += [e.experiment_id for e in page]
            token = page.token
            if not token:
                break
        found = []
        for start in range(0, len(experiments), 100):
            token = None
            while True:
                runs = self.client.search_runs(experiments[start : start + 100], f"tags.`{key}` LIKE '%'",
                                               run_view_type=ViewType.ALL, max_results=1000, page_token=token)
                for run in runs:
                    hit = weights_hit(run.info.run_id, run.info.artifact_uri, run.data.tags.get(key, ""),
                                      run.data.tags.get(PROVENANCE_TAG))
                    if hit is not None:
                        found.append(hit)
                token = runs.token
                if not token:
                    break
        return found
