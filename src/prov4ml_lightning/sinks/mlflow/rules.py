"""MLflow's rules, applied by the sink (and by the core, which names a series' MLflow key once):
which store a run goes to (:func:`resolve_tracking_uri`), which keys MLflow accepts
(:func:`mlflow_safe_key`), how long a param value may be, the model's requirements and
serialisation, MLflow's own tags for who ran what (:func:`source_tags`), a run name drawn without
touching the global ``random`` (:func:`generate_run_name`). Opening a store (one process at a
time, a new one created whole) is :mod:`.store`'s.

It imports nothing of the package and MLflow only inside functions: the upload child loads it by
path, and the training process uses the rules without importing MLflow.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "BATCH_METRICS",
    "BATCH_PARAMS",
    "DATASETS_PER_BATCH",
    "DATASET_CONTEXTS",
    "DATASET_DIGEST_MAX",
    "DATASET_NAME_MAX",
    "MAX_KEY_LENGTH",
    "MAX_PARAM_VALUE_LENGTH",
    "MLFLOW_TAG_DATASET_CONTEXT",
    "MLFLOW_TAG_DESCRIPTION",
    "MLFLOW_TAG_GIT_BRANCH",
    "MLFLOW_TAG_GIT_COMMIT",
    "MLFLOW_TAG_GIT_REPO_URL",
    "MLFLOW_TAG_PARENT",
    "MLFLOW_TAG_RUN_NAME",
    "MLFLOW_TAG_SOURCE_NAME",
    "MLFLOW_TAG_SOURCE_TYPE",
    "MLFLOW_TAG_USER",
    "PROVENANCE_TAG",
    "PYTORCH_FLAVOR",
    "PYTORCH_LOADER_MODULE",
    "PYTORCH_MODEL_DATA",
    "PYTORCH_MODEL_FILE",
    "PYTORCH_PICKLE_MODULE",
    "PYTORCH_PICKLE_MODULE_INFO",
    "WEIGHTS_TAG_PREFIX",
    "default_pip_requirements",
    "default_serialization_format",
    "default_tracking_uri",
    "generate_run_name",
    "is_local_store",
    "mlflow_safe_key",
    "resolve_tracking_uri",
    "source_tags",
    "sqlite_file",
    "truncate_param_value",
]

log = logging.getLogger(__name__)

BATCH_METRICS = 1000  # mlflow.utils.validation.MAX_METRICS_PER_BATCH

BATCH_PARAMS = 100  # mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH

MAX_KEY_LENGTH = 250  # mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH

MAX_PARAM_VALUE_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH

_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]")  # MLflow's set, minus ':' which Windows stores reject

_RUN_NAME_MAX = 20  # mlflow.utils.name_utils._generate_random_name(max_length=20)

#: the packages a logged model is pinned to, so MLflow skips its slow requirement inference.
_MODEL_REQUIREMENTS = ("torch", "mlflow", "lightning", "numpy")

# MLflow's pytorch flavour as ``mlflow.pytorch.save_model`` writes a module saved with pickle:
# ``MLmodel``'s flavour names, the ``data`` folder, the module file and the file naming the pickle
# module. ``mlflow.pytorch`` imports torch and Lightning when imported, so the service, which
# writes such a model without torch (``MlflowSink.log_model_file``), cannot read them there;
# tests/sinks/test_mlflow_internals.py compares them with ``mlflow.pytorch``'s.
PYTORCH_FLAVOR = "pytorch"  # mlflow.pytorch.FLAVOR_NAME
PYTORCH_LOADER_MODULE = "mlflow.pytorch"  # pyfunc's loader_module
PYTORCH_MODEL_DATA = "data"  # mlflow.pytorch._MODEL_DATA_SUBPATH
PYTORCH_MODEL_FILE = "model.pth"  # mlflow.pytorch._SERIALIZED_TORCH_MODEL_FILE_NAME
PYTORCH_PICKLE_MODULE = "mlflow.pytorch.pickle_module"  # the default pickle module's __name__ (cloudpickle)
PYTORCH_PICKLE_MODULE_INFO = "pickle_module_info.txt"  # mlflow.pytorch._PICKLE_MODULE_INFO_FILE_NAME

MLFLOW_TAG_DESCRIPTION = "mlflow.note.content"

MLFLOW_TAG_PARENT = "mlflow.parentRunId"

MLFLOW_TAG_RUN_NAME = "mlflow.runName"

# MLflow's own run tags (mlflow.utils.mlflow_tags), which its UI reads: "Created by", "Source", git.
MLFLOW_TAG_USER = "mlflow.user"

MLFLOW_TAG_SOURCE_NAME = "mlflow.source.name"

MLFLOW_TAG_SOURCE_TYPE = "mlflow.source.type"

MLFLOW_TAG_GIT_COMMIT = "mlflow.source.git.commit"

MLFLOW_TAG_GIT_BRANCH = "mlflow.source.git.branch"

MLFLOW_TAG_GIT_REPO_URL = "mlflow.source.git.repoURL"

MLFLOW_TAG_DATASET_CONTEXT = "mlflow.data.context"

#: MLflow's dataset limits (mlflow.utils.validation.MAX_DATASET_*)
DATASET_DIGEST_MAX = 36

DATASET_NAME_MAX = 500

DATASETS_PER_BATCH = 1000

#: dataloader role -> the context MLflow shows next to a dataset input
DATASET_CONTEXTS = {"train": "training", "val": "validation", "test": "testing", "predict": "prediction"}

#: run tag naming the PROV JSON among the run's artifacts (set by the recorder at the end).
PROVENANCE_TAG = "prov4ml.provenance_file"

#: run tag ``prov4ml.weights.<state_dict_sha256>``: the run produced weights of that hash (a logged
#: model, a checkpoint, a saved version); its value is JSON ``{"ns": PROV namespace, "run": PROV run
#: id, "ids": [[kind, name parts...], ...]}`` naming the entities that hold them. The same prefix with
#: the hash of a group of tensors (``capture/model_info.tensor_groups``) has ``"parts": [[prefix,
#: tensors, of, kind, name parts...], ...]`` instead of ``ids``: the entities holding that group
#: (partial loads). One tag per hash, so
#: ``search_runs(filter_string="tags.`prov4ml.weights.<hash>` LIKE '%'")`` finds the producer
#: through the tags table's (key, run) index, on any store (docs/lineage.md).
WEIGHTS_TAG_PREFIX = "prov4ml.weights."

# The operating system's generator: no state shared with the user's seeded `random`, and none a
# forked process inherits (two forked workers must not draw the same run name).
_NAME_RNG = random.SystemRandom()
_SQLITE = "sqlite:///"

def default_tracking_uri(mlflow_save_dir: str | os.PathLike[str]) -> str:
    """The embedded store: SQLite in ``mlflow_save_dir``, artifacts beside it."""
    path = Path(mlflow_save_dir).resolve() / "mlflow.db"
    return f"{_SQLITE}{path}"


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (relative to the current folder unless
    the path after ``sqlite:///`` is absolute); ``None`` for any other store."""
    return Path(tracking_uri[len(_SQLITE):]) if tracking_uri.startswith(_SQLITE) else None

def resolve_tracking_uri(tracking_uri: str | None, mlflow_save_dir: str | os.PathLike[str]) -> str:
    """The store a run writes to: ``tracking_uri`` when given, else ``MLFLOW_TRACKING_URI``, else
    the embedded SQLite store in ``mlflow_save_dir`` (:func:`default_tracking_uri`).

    A relative ``sqlite:///`` path is made absolute against the current folder now: the MLflow
    service process has the folder it was started in, which need not be the caller's.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return default_tracking_uri(mlflow_save_dir)
    db = sqlite_file(uri)
    if db is None or db.is_absolute():
        return uri
    query = uri[uri.index("?"):] if "?" in uri else ""
    return f"{_SQLITE}{Path(str(db).split('?', 1)[0]).resolve()}{query}"

def mlflow_safe_key(key: str) -> str:
    """Map ``key`` to a name MLflow accepts; identity for ordinary keys and for its own output.

    Characters outside letters, digits, ``_ - . / space`` become ``_``, empty, ``.`` and ``..``
    path segments are dropped, the result is cut to fit 250 characters, and any changed key is
    suffixed with ``-`` and 8 hex digits of the original's SHA-1 so two keys never collide.
    The original key is kept in PROV.
    """
    safe = _BAD_KEY_CHARS.sub("_", key)
    safe = "/".join(s for s in safe.split("/") if s not in ("", ".", "..")) or "_"
    if safe != key or len(safe) > MAX_KEY_LENGTH:
        digest = hashlib.sha1(key.encode()).hexdigest()[:8]
        safe = f"{safe[: MAX_KEY_LENGTH - 9]}-{digest}"
    return safe

def truncate_param_value(text: str) -> str:
    """``text`` cut to MLflow's 6000-character limit, with a note saying where the whole value is
    (the recorder keeps it in ``long_params_<run id>.json``, uploaded as ``params/``)."""
    if len(text) <= MAX_PARAM_VALUE_LENGTH:
        return text
    note = f"...[truncated; full value in artifact params/long_params.json, {len(text)} chars]"
    return text[: MAX_PARAM_VALUE_LENGTH - len(note)] + note

def default_pip_requirements() -> list[str]:
    """``name==version`` of the installed packages in :data:`_MODEL_REQUIREMENTS`."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in _MODEL_REQUIREMENTS:
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    return reqs

def default_serialization_format(input_example: Any = None) -> str:
    """How MLflow stores a model when the caller does not say: ``pt2`` (``torch.export``: a graph
    and weights, no pickled code) needs an input example to trace; without one only ``pickle`` works."""
    return "pt2" if input_example is not None else "pickle"

def generate_run_name() -> str:
    """A run name in MLflow's style (``adjective-noun-number``, at most 20 characters).

    MLflow's generator draws from the global ``random``, so a run created without a name would
    shift a seeded training; this one draws from the operating system.
    """
    adjectives, nouns = _name_words()
    name = ""
    for _ in range(10):
        name = f"{_NAME_RNG.choice(adjectives).lower()}-{_NAME_RNG.choice(nouns).lower()}-{_NAME_RNG.randint(0, 1000)}"
        if len(name) <= _RUN_NAME_MAX:
            return name
    return name[:_RUN_NAME_MAX]


@functools.cache
def _name_words() -> tuple[list[str], list[str]]:
    """MLflow's word lists, read from ``mlflow/utils/name_utils.py`` (which imports only
    ``random`` and ``uuid``) without importing the ``mlflow`` package: its import costs the
    training process seconds (see ``service.py``)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("mlflow")  # finds the package without running it
        folders = list(spec.submodule_search_locations or ()) if spec is not None else []
        if folders:
            words = importlib.util.spec_from_file_location("_prov4ml_mlflow_names",
                                                           Path(folders[0]) / "utils" / "name_utils.py")
            assert words is not None and words.loader is not None
            module = importlib.util.module_from_spec(words)
            words.loader.exec_module(module)
            return list(module._GENERATOR_PREDICATES), list(module._GENERATOR_NOUNS)
    except Exception as err:  # an MLflow without its word lists: the same style, fewer words
        log.debug("prov4ml: MLflow's run-name words unavailable (%r)", err)
    return ["bold", "calm", "keen", "wise"], ["owl", "fox", "elk", "ant"]


def is_database_uri(uri: str) -> bool:
    """Whether ``uri`` is a database store MLflow opens in the calling process (``sqlite:``,
    ``postgresql:``, ``mysql:``, ``mssql:``, with or without a ``+driver``)."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    return scheme in ("sqlite", "postgresql", "mysql", "mssql")


def source_tags(user: str | None, code: Mapping[str, Any]) -> dict[str, str]:
    """MLflow's own run tags for who ran what, from the captured ``code`` attributes
    (``capture.code.capture_code``): ``mlflow.user``, ``mlflow.source.name`` and ``.type``, and
    ``mlflow.source.git.commit`` / ``branch`` / ``repoURL`` where the script is in a git checkout.

    The same tags MLflow's run-context providers (``mlflow.tracking.context``) set for a fluent
    run, taken from what the run already captured instead of asking git a second time; the remote
    URL is the captured one, with credentials already redacted.
    """
    tags: dict[str, str] = {}
    if user:
        tags[MLFLOW_TAG_USER] = user
    script = code.get("script_path")
    tags[MLFLOW_TAG_SOURCE_NAME] = str(script) if script else "<interactive>"
    tags[MLFLOW_TAG_SOURCE_TYPE] = "LOCAL"  # mlflow.entities.SourceType.LOCAL: a script run on this machine
    for tag, attr in ((MLFLOW_TAG_GIT_COMMIT, "git_commit"), (MLFLOW_TAG_GIT_BRANCH, "git_branch"),
                      (MLFLOW_TAG_GIT_REPO_URL, "git_remote")):
        if code.get(attr):
            tags[tag] = str(code[attr])
    return tags


def is_local_store(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri


#: the run's tags that MLflow's ``Model.log`` also sets on a model it logs (its run-context tags: who, from what)
MODEL_SOURCE_TAGS = (MLFLOW_TAG_USER, MLFLOW_TAG_SOURCE_NAME, MLFLOW_TAG_SOURCE_TYPE, MLFLOW_TAG_GIT_COMMIT,
                     MLFLOW_TAG_GIT_BRANCH, MLFLOW_TAG_GIT_REPO_URL)


def model_params_and_tags(params: Mapping[str, Any] | None, run_params: Mapping[str, str],
                          run_tags: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The params and tags of a model logged from a run, as MLflow's ``Model.log`` gives a model it creates:
    ``params`` with the run's params over them, and the run's :data:`MODEL_SOURCE_TAGS`."""
    merged = {str(k): str(v) for k, v in (params or {}).items()}
    merged.update(run_params)
    return merged, {k: run_tags[k] for k in MODEL_SOURCE_TAGS if k in run_tags}


def run_tags(tags: Mapping[str, str], description: str | None, parent_run_id: str | None,
             run_name: str | None) -> tuple[dict[str, str], str]:
    """A new run's tags (keys made MLflow-safe, the description and parent as MLflow's own tags)
    and its name: ``run_name``, else an ``mlflow.runName`` tag, else :func:`generate_run_name`."""
    all_tags = {mlflow_safe_key(k): v for k, v in tags.items()}
    if description:
        all_tags[MLFLOW_TAG_DESCRIPTION] = description
    if parent_run_id:
        all_tags[MLFLOW_TAG_PARENT] = parent_run_id
    return all_tags, run_name or all_tags.get(MLFLOW_TAG_RUN_NAME) or generate_run_name()


def dataset_input(ds: Mapping[str, Any]) -> dict[str, str]:
    """The MLflow dataset input of one recorded dataset (see ``MlflowSink.log_dataset_inputs``):
    ``name``, ``digest``, ``source_type``, ``source``, ``profile`` and ``context``."""
    import json

    fingerprint = ds.get("fingerprint")
    digest = str(fingerprint) if fingerprint else hashlib.sha256(str(ds["name"]).encode()).hexdigest()
    profile = {k: ds[k] for k in ("length", "fingerprint", "fingerprint_status", "fingerprint_method",
                                  "fingerprint_sample_size", "batch_size") if ds.get(k) is not None}
    role = str(ds.get("role") or "")
    return {"name": str(ds["name"])[:DATASET_NAME_MAX], "digest": digest[:DATASET_DIGEST_MAX], "source_type": "code",
            "source": json.dumps({"dataset_class": ds.get("dataset_class"), "prov_entity": ds["name"]}),
            "profile": json.dumps(profile), "context": DATASET_CONTEXTS.get(role, role or "other")}


def weights_hit(run_id: str, artifact_uri: str, tag_value: str, provenance_file: str | None) -> dict[str, Any] | None:
    """One run found by a ``prov4ml.weights.<digest>`` tag (:data:`WEIGHTS_TAG_PREFIX`): the run's id in PROV
    (the tag says it: a run recorded offline and synced later has another id in MLflow), its namespace, the
    entities and parts that hold the weights, and its PROV file's artifact URI; ``None`` for a value not ours."""
    import json

    try:
        value = json.loads(tag_value)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    return {"run_id": value.get("run") or run_id, "namespace": value.get("ns", ""),
            "ids": [list(i) for i in value.get("ids", [])], "parts": [list(p) for p in value.get("parts", [])],
            "provenance_file": f"{artifact_uri.rstrip('/')}/{provenance_file}" if provenance_file else ""}

