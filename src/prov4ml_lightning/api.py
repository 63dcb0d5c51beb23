"""The functional API, with the names and parameters of the original prov4ml.

Each function looks the current run up at call time (so tests and the callback can swap it)
and is a one- or two-line call into :class:`~prov4ml_lightning.tracking.recorder.RunRecorder`.

Example::

    import prov4ml_lightning as prov4ml

    prov4ml.start_run(prov_user_namespace="www.example.org", experiment_name="demo",
                      provenance_save_dir="prov", mlflow_save_dir="mlflow")
    prov4ml.log_param("lr", 1e-3)
    for step in range(100):
        prov4ml.log_metric("loss", 1 / (step + 1), prov4ml.Context.TRAINING, step=step)
    prov4ml.log_model(model, "mlp")
    prov4ml.end_run()
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from prov4ml_lightning.capture.datasets import log_dataset as log_dataset_into
from prov4ml_lightning.capture.model_info import memory_footprint
from prov4ml_lightning.context import Context
from prov4ml_lightning.distributed.parts import start_on_ranks
from prov4ml_lightning.errors import Prov4MLWarning, warn
from prov4ml_lightning.runs import open_run
from prov4ml_lightning.tracking.config import RunConfig
from prov4ml_lightning.tracking.recorder import RunOutputs, RunRecorder
from prov4ml_lightning.tracking.registry import current_run, require_run

_RUN_CREATED_WAIT_S = 600.0

__all__ = [
    "active_run",
    "end_run",
    "get_run_id",
    "log_artifact",
    "log_dataset",
    "log_metric",
    "log_metrics",
    "log_model",
    "log_param",
    "log_params",
    "save_model_version",
    "start_run",
    "start_run_ctx",
    "wait_for_mlflow",
]


def start_run(
    prov_user_namespace: str,
    experiment_name: str,
    provenance_save_dir: str | os.PathLike[str],
    mlflow_save_dir: str | os.PathLike[str],
    nested: bool = False,
    tags: Mapping[str, Any] | None = None,
    description: str | None = None,
    log_system_metrics: bool = False,
    *,
    tracking_uri: str | None = None,
    run_name: str | None = None,
    system_metrics_interval: float = 10.0,
    provenance_formats: tuple[str, ...] = ("json",),
    collect_all_ranks: bool = False,
    flush_interval: float = 2.0,
    wait_for_mlflow: bool | None = None,
    person_name: str | None = None,
    person_email: str | None = None,
    person_orcid: str | None = None,
    organization: str | None = None,
) -> RunRecorder:
    """Open a run; usable as a context manager (an exception inside ends it FAILED and re-raises).

    Args:
        prov_user_namespace: namespace of the PROV records, e.g. ``"www.example.org"``
            (normalised to the absolute IRI ``http://www.example.org/``).
        experiment_name: MLflow experiment (created when missing); no path separators.
        provenance_save_dir: folder for the PROV document, its graph and the metric sidecar.
        mlflow_save_dir: folder of the embedded MLflow store (``sqlite:///<dir>/mlflow.db``,
            artifacts in ``<dir>/artifacts``) used unless ``tracking_uri`` or
            ``MLFLOW_TRACKING_URI`` names another store.
        nested: start a child of the run already open instead of failing.
        tags: MLflow run tags, also PROV attributes of the run.
        description: MLflow run description, also a PROV attribute.
        log_system_metrics: sample CPU/memory/disk/GPU on a background thread every
            ``system_metrics_interval`` seconds.
        tracking_uri: an MLflow tracking URI (``http://host:port``, ``sqlite:///...``).
        run_name: MLflow run name (MLflow picks one when omitted).
        system_metrics_interval: seconds between background system-metric samples.
        provenance_formats: PROV serialisations written by ``end_run`` among
            ``json`` (always), ``provn``, ``ttl`` and ``xml``.
        collect_all_ranks: in a distributed job (``torchrun``: rank and world size from
            ``torch.distributed`` or ``RANK``/``WORLD_SIZE``), whether ranks other than zero
            record too. Either way global rank zero alone writes the MLflow run and the PROV
            document. ``False``: the other ranks get a run that records nothing (no rank
            communicates). ``True``: every rank must call ``start_run`` after
            ``torch.distributed.init_process_group`` (the run id is broadcast); each records
            into its part folder, which rank zero merges at ``end_run`` (metrics as
            ``rank<k>/<key>``). See docs/distributed-and-servers.md.
        flush_interval: seconds between the background writer's drains of the metric buffer
            into the sidecar file and MLflow (a process killed hard loses at most this much).
        wait_for_mlflow: whether :func:`end_run` waits until MLflow holds the whole run (see
            there); ``None`` (default): yes, unless the environment variable
            ``PROV4ML_WAIT_FOR_MLFLOW`` is ``0``/``false``/``no``/``off``. ``False`` returns once
            the local files are written; :func:`wait_for_mlflow` waits at any time.
        person_name, person_email, person_orcid: the person responsible for the run, recorded as
            a ``prov:Person`` (``foaf:name``, ``foaf:mbox``; the ORCID iD, given as
            ``0000-0002-1825-0097`` or its ``https://orcid.org/`` IRI, is the agent's identifier).
            Each ``None`` is taken from ``PROV4ML_PERSON_NAME`` / ``PROV4ML_PERSON_EMAIL`` /
            ``PROV4ML_PERSON_ORCID`` when set; with none of them, the OS login names the person.
        organization: the organisation the person acts for (``prov:Organization``,
            ``prov:actedOnBehalfOf``); ``None``: ``PROV4ML_ORGANIZATION`` when set.

    Raises:
        RunAlreadyActiveError: a run is open and ``nested`` is false.
        Prov4MLInputError: a name, namespace or folder is unusable.
    """
    config = RunConfig(
        prov_user_namespace=prov_user_namespace, experiment_name=experiment_name,
        provenance_save_dir=provenance_save_dir, mlflow_save_dir=mlflow_save_dir, nested=nested, tags=tags,
        description=description, log_system_metrics=log_system_metrics, tracking_uri=tracking_uri,
        run_name=run_name, system_metrics_interval=system_metrics_interval, provenance_formats=provenance_formats,
        collect_all_ranks=collect_all_ranks, flush_interval=flush_interval, wait_for_mlflow=wait_for_mlflow,
        person_name=person_name,
        person_email=person_email, person_orcid=person_orcid, organization=organization,
    )
    return start_on_ranks(lambda rank: open_run(config, rank=rank), config)


@contextmanager
def start_run_ctx(
    prov_user_namespace: str,
    experiment_name: str,
    provenance_save_dir: str | os.PathLike[str],
    mlflow_save_dir: str | os.PathLike[str],
    nested: bool = False,
    tags: Mapping[str, Any] | None = None,
    description: str | None = None,
    log_system_metrics: bool = False,
    create_graph: bool = True,
    create_svg: bool = True,
    **options: Any,
) -> Iterator[RunRecorder]:
    """``start_run(...)`` as a context manager (the original prov4ml's ``start_run_ctx``).

    The run ends when the block ends: ``FINISHED``, or ``FAILED`` (``KILLED`` for Ctrl-C) when
    the block raises, and the exception goes on. ``create_graph`` and ``create_svg`` are passed to
    :func:`end_run`; ``options`` are :func:`start_run`'s keyword-only options (``tracking_uri``,
    ``run_name``, ...).

    Example::

        with prov4ml.start_run_ctx("www.example.org", "demo", "prov", "mlflow") as run:
            prov4ml.log_metric("loss", 0.5, prov4ml.Context.TRAINING)
    """
    run = start_run(prov_user_namespace, experiment_name, provenance_save_dir, mlflow_save_dir, nested, tags,
                    description, log_system_metrics, **options)
    try:
        yield run
    except BaseException as exc:
        run.__exit__(type(exc), exc, exc.__traceback__)
        raise
    end_run(create_graph=create_graph, create_svg=create_svg)


def end_run(create_graph: bool | str = True, create_svg: bool | str = True,
            status: str = "FINISHED") -> RunOutputs | None:
    """End the current run: flush, write the PROV files, end the MLflow run and return the paths.

    It returns with the run ended in its store, as ``mlflow.end_run`` does: every point in the
    metric sidecar (``metrics_<run_id>.csv``), the journal's end event and the PROV files and graph
    written (atomically) to ``provenance_save_dir``, and MLflow holding the finished run (status,
    every point, params, tags, artifacts, the model). The MLflow service process (a database store)
    does MLflow's work during training, so what is left at the end is small. The wait is bounded
    (``PROV4ML_WAIT_FOR_MLFLOW_TIMEOUT`` seconds, default 300): past it one warning names what is
    pending and ``prov4ml sync``, which completes MLflow from the local files; no exception. A run
    started with ``wait_for_mlflow=False`` (or ``PROV4ML_WAIT_FOR_MLFLOW=0``: a sweep's or a
    notebook's choice) returns once the local files are written, and MLflow catches up in the
    background (:func:`wait_for_mlflow` waits for it; the interpreter's exit too, bounded). With a
    tracking server (``http://...``) the MLflow calls are made here, as before.

    The files are ``provgraph_<run_id>.json`` and its graph ``provgraph_<run_id>.dot`` (and
    ``.svg`` with Graphviz) in ``provenance_save_dir``, as the original prov4ml named them.
    ``create_graph`` and ``create_svg`` are accepted for the original prov4ml's signature: the
    graph is always written (it costs milliseconds and ``prov4ml render`` reads it), and its SVG
    wherever Graphviz is installed. ``status`` is ``FINISHED``, ``FAILED`` or ``KILLED``;
    ``end_run("FAILED")`` (a status in the first place) works too.

    Safe to call twice: with no run open it warns that there is none and returns ``None``.
    """
    for given in (create_graph, create_svg):
        if isinstance(given, str):  # end_run("KILLED"), end_run(True, "KILLED"): the status passed earlier
            status = given
    run = current_run()
    if run is None:
        warn("end_run: no run is open (it was ended already, or never started); nothing to end",
             Prov4MLWarning)
        return None
    return run.end(status)


def log_metric(key: str, value: Any, context: Context = Context.TRAINING, step: int | None = None,
               synchronous: bool = True, timestamp: int | None = None) -> None:
    """Log one point of metric ``key`` in ``context``.

    ``value`` may be a Python or NumPy number or a one-element tensor (converted off the
    training thread). MLflow stores it under ``key`` as given; the context is kept in PROV and in
    the run tag ``metric.context.<key>`` (see README, "Metric keys"). ``step`` defaults to one
    past the series' last step; ``timestamp`` is in milliseconds since the epoch (default: now).
    ``synchronous`` is accepted for the original prov4ml's signature: points are always written
    by the background writer within ``flush_interval`` seconds (``active_run().flush()`` forces it).
    """
    require_run("log_metric").log_metric(key, value, context, step, timestamp)


def log_metrics(metrics: Mapping[str, Any], context: Context = Context.TRAINING,
                step: int | None = None, synchronous: bool = True) -> None:
    """Log several metrics at the same step and time.

    Two forms: ``{"loss": 0.3, "acc": 0.9}`` with one ``context`` for all, or the original
    prov4ml's ``{"loss": (0.3, Context.TRAINING), "val_loss": (0.4, Context.VALIDATION)}``, each
    value paired with its own context. ``synchronous``: see :func:`log_metric`.
    """
    run = require_run("log_metrics")
    if isinstance(metrics, Mapping) and any(_is_paired(val) for val in metrics.values()):
        ts = int(time.time() * 1000)
        for key, val in metrics.items():
            value, ctx = val if _is_paired(val) else (val, context)
            run.log_metric(key, value, ctx, step, ts, call="log_metrics")
        return
    run.log_metrics(metrics, context, step)


def _is_paired(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], (Context, str))


def log_param(key: str, value: Any) -> None:
    """Log one hyperparameter; a dict value is flattened to ``key/sub`` params, any other object
    (a torchvision transform, ...) is stored as its text."""
    require_run("log_param").log_params({key: value}, call="log_param")


def log_params(params: Mapping[str, Any]) -> None:
    """Log hyperparameters; nested dicts are flattened with ``/``."""
    require_run("log_params").log_params(params)


def log_artifact(path: str | os.PathLike[str], context: Context | None = None, *,
                 artifact_path: str | None = None) -> None:
    """Copy a file or folder into the run's artifacts and record it (with its sha256) in PROV."""
    require_run("log_artifact").log_artifact(path, context, artifact_path=artifact_path)


def log_dataset(name: str, dataset: Any, context: Context = Context.TRAINING) -> None:
    """Record a dataset the run reads: a PROV ``Dataset`` entity named ``name``, used by the run's
    session, and an MLflow dataset input of the run (context tag ``training``/``validation``/``testing``).

    ``dataset`` is a torch ``Dataset`` (map-style or iterable), a ``DataLoader`` (its dataset, and
    its ``batch_size``, ``shuffle``, ``sampler``, ``drop_last``, ``num_workers``), an array or
    tensor, a list of samples, or a Hugging Face dataset. It is recorded with its class, length
    and content fingerprint, the same the Lightning callback records (``fingerprint``,
    ``fingerprint_status``, ``fingerprint_method``; README, "Data"): computed in a background
    thread or when the run ends, never delaying the training; ``end_run`` waits for it (at most
    ``PROV4ML_FINGERPRINT_WAIT`` seconds, default 60). Logging the same dataset under the same name
    again does nothing; another dataset under a name already used raises ``Prov4MLInputError``.
    """
    run = require_run("log_dataset")
    log_dataset_into(run if isinstance(run, RunRecorder) else None, name, dataset, context)  # None: a silent rank


def log_model(model: torch.nn.Module, model_name: str = "default", log_model_info: bool = True,
              log_as_artifact: bool = True, *, register: bool = True, **mlflow_kwargs: Any) -> None:
    """Log ``model`` with MLflow's pytorch flavour and record it in PROV as generated by the run.

    As the original prov4ml's, the model is registered in MLflow's model registry under
    ``model_name`` (a new version each call; ``register=False`` leaves the registry alone, and an
    explicit ``registered_model_name=`` wins), and ``log_model_info`` logs the run params
    ``model_name``, ``total_params``, ``memory_of_model`` and ``total_memory_load_of_model``
    (megabytes; a second model's under ``<model_name>/<param>``). These are MLflow params only:
    PROV records the counts and footprint by dtype on the model entity, which the run generated,
    not as inputs it used; the MLflow model carries them as its params too. With ``log_as_artifact`` its state dict is
    saved too (:func:`save_model_version`, with no context). Both entities carry the weights'
    ``state_dict_sha256`` and are linked as alternates of the same weights. Calling it again
    with the same name records a new version. Extra keyword arguments (``input_example``,
    ``signature``, ``serialization_format``, ...) go to ``mlflow.pytorch.log_model``.
    """
    run = require_run("log_model")
    if log_as_artifact and isinstance(model, torch.nn.Module):
        save_model_version(model, model_name, context=None)
    if register:
        mlflow_kwargs.setdefault("registered_model_name", model_name)
    run.log_model(model, model_name, log_model_info, **mlflow_kwargs)
    if log_model_info:
        values = memory_footprint(model, model_name, "log_model")
        taken = run.log_mlflow_params(values, call="log_model")
        if taken:
            run.log_mlflow_params({f"{model_name}/{k}": val for k, val in taken.items()}, call="log_model")


def save_model_version(model: torch.nn.Module, model_name: str, context: Context | None = None,
                       step: int | None = None) -> None:
    """Save ``model``'s state dict as a new version: a file ``<model_name>.pth`` (``.v2.pth``,
    ... for later versions of the same name) in ``<provenance_save_dir>/model_versions_<run id>``,
    uploaded to the MLflow artifacts ``model_versions/``, and a PROV entity with the file's sha256
    and the weights' ``state_dict_sha256``, derived from the version saved before it from the same
    module object (if any). ``context`` is recorded only when given."""
    from prov4ml_lightning.capture.versions import save_version

    save_version(require_run("save_model_version"), model, model_name, context, step)


def get_run_id() -> str:
    """The MLflow run id of the current run (``None`` on a rank other than zero that records
    nothing: ``start_run(collect_all_ranks=False)`` in a distributed job).

    ``start_run`` draws the id itself and MLflow's service process creates the run under it in
    the background; this call waits until it has (or has failed to, which was warned), so the
    id can be looked up in MLflow at once. Nothing else waits for that."""
    run = require_run("get_run_id")
    sink = getattr(run, "sink", None)  # a silent rank has none
    if sink is not None:
        sink.run_created(_RUN_CREATED_WAIT_S)
    return run.run_id


def wait_for_mlflow(timeout: float | None = None) -> bool:
    """Wait until MLflow holds everything the runs of this process handed to it so far (metrics,
    params, tags, files, models, the ends of ended runs); whether it does within ``timeout``
    seconds (``None``: no limit).

    For a script that reads MLflow right after ``end_run`` (or use ``start_run(...,
    wait_for_mlflow=True)``). Failures were warned when they happened; the local files keep
    everything for ``prov4ml sync``.
    """
    from prov4ml_lightning.sinks.mlflow.service import wait_for_mlflow as wait

    return wait(timeout)


def active_run() -> RunRecorder | None:
    """The current run, or ``None``."""
    return current_run()
