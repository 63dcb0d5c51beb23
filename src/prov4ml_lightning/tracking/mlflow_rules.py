"""MLFLOW RULES STILL IN THE CORE: what MLflow wants, applied by the recorder on the sink's behalf.

Every MLflow-specific rule the recorder still applies is here and nowhere else in ``tracking/``,
so that moving them into the sink (``sinks/mlflow/``) deletes this module and its call sites
(each marked ``# mlflow rule``): the ``MLFLOW_TRACKING_URI`` lookup, tag and param key
sanitising, param value truncation, the pip requirements and ``serialization_format`` of a
logged model, and the redacted tracking URI that PROV records.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prov4ml_lightning.errors import Prov4MLWarning
from prov4ml_lightning.tracking import validation as v

__all__ = ["mlflow_param", "mlflow_tags", "model_kwargs", "pip_requirements", "public_uri", "tracking_uri"]


def tracking_uri(explicit: str | None, mlflow_save_dir: str | os.PathLike[str],
                 default: Callable[[str | os.PathLike[str]], str]) -> str:
    """``explicit``, else ``MLFLOW_TRACKING_URI``, else ``default(mlflow_save_dir)``."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or default(mlflow_save_dir)


def public_uri(uri: str) -> str:
    """The tracking URI as PROV records it: credentials redacted."""
    from prov4ml_lightning.capture.redact import redact_url  # the one redaction module

    return redact_url(uri)


def mlflow_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """Tag keys MLflow accepts (``mlflow_safe_key``: no ``..``, ``:``, ...); PROV keeps the originals."""
    return {v.mlflow_safe_key(k): val for k, val in tags.items()}


def mlflow_param(key: str, text: str, call: str) -> tuple[str, str, bool]:
    """``(MLflow key, MLflow value, truncated)`` of a param; a value over MLflow's limit is cut
    (PROV and ``params/long_params.json`` keep it whole)."""
    if len(text) <= v.MAX_PARAM_VALUE_LENGTH:
        return v.mlflow_safe_key(key), text, False
    note = f"...[truncated; full value in artifact params/long_params.json, {len(text)} chars]"
    warnings.warn(f"{call}: param {key!r} is {len(text)} characters; MLflow keeps "
                  "a truncated copy, PROV and params/long_params.json keep it whole",
                  Prov4MLWarning, stacklevel=4)
    return v.mlflow_safe_key(key), text[: v.MAX_PARAM_VALUE_LENGTH - len(note)] + note, True


def model_kwargs(mlflow_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Set ``serialization_format`` in ``mlflow_kwargs``; return it as the model info PROV records.

    pt2 (torch.export: a graph and weights, no pickled code) needs an input example to trace;
    without one MLflow can only pickle the module. PROV says which one was used.
    """
    mlflow_kwargs.setdefault("serialization_format",
                             "pt2" if mlflow_kwargs.get("input_example") is not None else "pickle")
    return {"serialization_format": mlflow_kwargs["serialization_format"]}


def pip_requirements() -> list[str]:
    """The pinned requirements a logged model is stored with."""
    reqs = []
    for dist in ("torch", "mlflow", "lightning", "numpy"):
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    return reqs
