"""The run options: one frozen :class:`RunConfig`, the single definition both front doors fill in.

``prov4ml.start_run`` and ``Prov4MLCallback`` keep explicit keyword parameters (for users and
IDEs) and build a :class:`RunConfig` from them; a test checks that their parameters and the
fields here agree in names and defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import InitVar, dataclass
from typing import Any

from prov4ml_lightning.errors import Prov4MLInputError
from prov4ml_lightning.tracking import validation as v
from prov4ml_lightning.tracking.identity import IDENTITY_ENV, resolve_identity

__all__ = ["MLFLOW_WAIT_S", "PROVENANCE_FORMATS", "WAIT_ENV", "WAIT_TIMEOUT_ENV", "RunConfig"]

#: PROV serialisations a run can write besides JSON (always written)
PROVENANCE_FORMATS = ("json", "provn", "ttl", "xml")
#: the environment variable that, set to ``0``/``false``/``no``/``off``, makes ``end_run`` return without
#: waiting for MLflow when ``wait_for_mlflow`` is None (a sweep's or a notebook's choice)
WAIT_ENV = "PROV4ML_WAIT_FOR_MLFLOW"
#: the environment variable with the seconds ``end_run`` waits for MLflow at most (default :data:`MLFLOW_WAIT_S`)
WAIT_TIMEOUT_ENV = "PROV4ML_WAIT_FOR_MLFLOW_TIMEOUT"
MLFLOW_WAIT_S = 300.0


@dataclass(frozen=True)
class RunConfig:
    """How to open a run. Checked when created; see ``prov4ml.start_run`` for each option.

    ``call`` (not a field) names the front door in error messages.

    Raises:
        Prov4MLInputError: a namespace, name or option is unusable.
    """

    prov_user_namespace: str
    experiment_name: str
    provenance_save_dir: str | os.PathLike[str]
    mlflow_save_dir: str | os.PathLike[str]
    nested: bool = False
    tags: Mapping[str, Any] | None = None
    description: str | None = None
    log_system_metrics: bool = False
    tracking_uri: str | None = None
    run_name: str | None = None
    system_metrics_interval: float = 10.0
    provenance_formats: tuple[str, ...] = ("json",)
    collect_all_ranks: bool = False
    flush_interval: float = 2.0
    #: whether ``end_run`` also waits until MLflow holds the whole run (``None``: the environment's
    #: ``PROV4ML_WAIT_FOR_MLFLOW`` is 1/true/yes; else ``False``, see ``prov4ml.end_run``)
    wait_for_mlflow: bool | None = None
    #: the responsible person and organisation (tracking/identity.py; ``None``: the environment's
    #: ``PROV4ML_PERSON_NAME`` / ``_EMAIL`` / ``_ORCID`` / ``PROV4ML_ORGANIZATION``, if set)
    person_name: str | None = None
    person_email: str | None = None
    person_orcid: str | None = None
    organization: str | None = None
    call: InitVar[str] = "start_run"

    def __post_init__(self, call: str) -> None:
        v.normalise_namespace(self.prov_user_namespace, call)
        v.check_name(self.experiment_name, call, "experiment_name")
        if self.run_name is not None:
            v.check_name(self.run_name, call, "run_name")
        if self.tags is not None and not isinstance(self.tags, Mapping):
            raise Prov4MLInputError(f"{call}: tags must be a dict, got {type(self.tags).__name__}")
        if self.description is not None and not isinstance(self.description, str):
            raise Prov4MLInputError(f"{call}: description must be a string, got {type(self.description).__name__}")
        for name in ("nested", "log_system_metrics", "collect_all_ranks"):
            if not isinstance(getattr(self, name), bool):
                raise Prov4MLInputError(f"{call}: {name} must be True or False, got {getattr(self, name)!r}")
        if self.wait_for_mlflow is not None and not isinstance(self.wait_for_mlflow, bool):
            raise Prov4MLInputError(f"{call}: wait_for_mlflow must be None, True or False, "
                                    f"got {self.wait_for_mlflow!r}")
        for name in ("system_metrics_interval", "flush_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise Prov4MLInputError(f"{call}: {name} must be a number of seconds > 0, got {value!r}")
        for name in ("provenance_save_dir", "mlflow_save_dir"):
            if not isinstance(getattr(self, name), (str, os.PathLike)):
                raise Prov4MLInputError(f"{call}: {name} must be a path (str or os.PathLike), "
                                        f"got {type(getattr(self, name)).__name__}")
        if self.tracking_uri is not None and not isinstance(self.tracking_uri, str):
            raise Prov4MLInputError(f"{call}: tracking_uri must be a string, got {type(self.tracking_uri).__name__}")
        if isinstance(self.provenance_formats, str) or not isinstance(self.provenance_formats, (tuple, list)):
            raise Prov4MLInputError(f"{call}: provenance_formats must be a tuple of format names such as "
                                    f"('json', 'ttl'), got {self.provenance_formats!r}")
        bad = [f for f in self.provenance_formats if f not in PROVENANCE_FORMATS]
        if bad:
            raise Prov4MLInputError(f"{call}: provenance_formats must be among json, provn, ttl, xml; got {bad}")
        # JSON always, first, and each format once
        object.__setattr__(self, "provenance_formats", tuple(dict.fromkeys(("json", *self.provenance_formats))))
        # the identity as recorded: arguments, else environment, normalised (an ORCID as its IRI)
        for name, value in resolve_identity({n: getattr(self, n) for n in IDENTITY_ENV}, call).items():
            object.__setattr__(self, name, value)

    @property
    def waits_for_mlflow(self) -> bool:
        """``wait_for_mlflow``; when it is ``None``, yes unless ``PROV4ML_WAIT_FOR_MLFLOW`` says no."""
        if self.wait_for_mlflow is not None:
            return self.wait_for_mlflow
        return os.environ.get(WAIT_ENV, "").strip().lower() not in ("0", "false", "no", "off")

    @staticmethod
    def mlflow_wait_s() -> float:
        """How long ``end_run`` waits for MLflow at most: ``PROV4ML_WAIT_FOR_MLFLOW_TIMEOUT`` seconds, else
        :data:`MLFLOW_WAIT_S` (an unreadable value: the default)."""
        try:
            return max(0.0, float(os.environ.get(WAIT_TIMEOUT_ENV, MLFLOW_WAIT_S)))
        except ValueError:
            return MLFLOW_WAIT_S

    @property
    def namespace(self) -> str:
        """``prov_user_namespace`` as the absolute IRI the PROV records use."""
        return v.normalise_namespace(self.prov_user_namespace)
