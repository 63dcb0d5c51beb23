"""The folder MLflow's pytorch flavour writes for a module saved in its pickle format, written without
MLflow (the direct store's ``log_model``: :mod:`.direct`). ``MlflowSink`` writes the same folder with
MLflow's own helpers (``sink._SavedPytorchModel``) where MLflow is imported anyway, its ``data/`` with
:func:`write_model_data`; tests/sinks/test_direct.py
compares the two file by file.

It imports nothing of the package but :mod:`.rules` (the service process loads both by path) and never MLflow.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shutil
from pathlib import Path
from typing import Any

from prov4ml_lightning.sinks.mlflow.rules import (  # loaded by path in the service process: see service_process.py
    PYTORCH_FLAVOR,
    PYTORCH_LOADER_MODULE,
    PYTORCH_MODEL_DATA,
    PYTORCH_MODEL_FILE,
    PYTORCH_PICKLE_MODULE,
    PYTORCH_PICKLE_MODULE_INFO,
)

__all__ = ["write_model_data", "write_model_folder"]


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def write_model_data(folder: Path, file: str) -> None:
    """The model folder's ``data/`` as ``mlflow.pytorch.save_model`` writes it for a pickled module: the
    pickle module's name and the module's file, hard-linked (copied across file systems or without hard links)."""
    data = folder / PYTORCH_MODEL_DATA
    data.mkdir(parents=True, exist_ok=True)
    (data / PYTORCH_PICKLE_MODULE_INFO).write_text(PYTORCH_PICKLE_MODULE)
    target = data / PYTORCH_MODEL_FILE
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    try:
        os.link(file, target)
    except OSError:
        shutil.copyfile(file, target)


def write_model_folder(folder: Path, file: str, model_id: str, run_id: str, location: str, pytorch_version: str,
                        requirements: list[str]) -> None:
    """The folder ``mlflow.pytorch.save_model`` writes for a pickled module (``MLmodel`` as ``Model.to_yaml``
    writes it, ``conda.yaml`` and ``python_env.yaml`` as MLflow's environment helpers do, ``requirements.txt``,
    ``data/``), the module's file hard-linked (copied across file systems)."""
    from importlib.metadata import PackageNotFoundError, version

    import yaml

    def installed(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    write_model_data(folder, file)
    python = platform.python_version()
    mlmodel: dict[str, Any] = {
        "artifact_path": location,
        "flavors": {
            "python_function": {"config": {"device": None}, "data": PYTORCH_MODEL_DATA,
                                "env": {"conda": "conda.yaml", "virtualenv": "python_env.yaml"},
                                "loader_module": PYTORCH_LOADER_MODULE, "pickle_module_name": PYTORCH_PICKLE_MODULE,
                                "python_version": python},
            PYTORCH_FLAVOR: {"code": None, "model_data": PYTORCH_MODEL_DATA, "pytorch_version": pytorch_version},
        },
        "mlflow_version": installed("mlflow"),
        "model_id": model_id,
        "model_uuid": model_id,
        "prompts": None,
        "run_id": run_id,
        "utc_time_created": str(datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)),
    }
    if size := _folder_size(folder):
        mlmodel["model_size_bytes"] = size
    with open(folder / "MLmodel", "w") as f:
        yaml.safe_dump(mlmodel, stream=f, default_flow_style=False)
    pip = installed("pip")
    conda = {"channels": ["conda-forge"], "dependencies": [f"python={python}", f"pip<={pip}" if pip else "pip",
                                                           {"pip": requirements}], "name": "mlflow-env"}
    with open(folder / "conda.yaml", "w") as f:
        yaml.safe_dump(conda, stream=f, default_flow_style=False)
    (folder / "requirements.txt").write_text("\n".join(requirements))
    build = [f"{d}=={v}" if (v := installed(d)) else d for d in ("pip", "setuptools", "wheel")]
    env = {"python": python, "build_dependencies": build, "dependencies": ["-r requirements.txt"]}
    with open(folder / "python_env.yaml", "w") as f:
        yaml.safe_dump(env, stream=f, default_flow_style=False, sort_keys=False)
