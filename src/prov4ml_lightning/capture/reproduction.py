"""The mark of a reproduction: ``prov4ml reproduce`` starts the recorded command with
:data:`REPRODUCES_ENV` (the original run's id) and :data:`REPRODUCES_DOCUMENT_ENV` (its PROV
document) set; a run started under them records that it reproduces that run (the
``reproduces`` attribute and a ``wasInformedBy`` relation to the original run activity in PROV,
the ``prov4ml.reproduces`` tag in MLflow).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

from prov4ml_lightning.files import sha256_path

__all__ = ["REPRODUCES_DOCUMENT_ENV", "REPRODUCES_ENV", "REPRODUCES_TAG", "reproduction_marker"]

#: The id of the run a process reproduces.
REPRODUCES_ENV = "PROV4ML_REPRODUCES"
#: The path of that run's PROV document.
REPRODUCES_DOCUMENT_ENV = "PROV4ML_REPRODUCES_DOCUMENT"
#: The MLflow tag naming the reproduced run.
REPRODUCES_TAG = "prov4ml.reproduces"
_RUN_ID = re.compile(r"^[0-9A-Za-z_.-]{1,64}$")


def reproduction_marker(env: Any = None) -> dict[str, Any]:
    """``{"run_id", "document", "document_sha256"}`` of the run this process reproduces, from the
    environment; empty when it reproduces none (or the id is not a run id)."""
    env = os.environ if env is None else env
    run_id = env.get(REPRODUCES_ENV, "").strip()
    if not run_id or not _RUN_ID.match(run_id):
        return {}
    out: dict[str, Any] = {"run_id": run_id}
    document = env.get(REPRODUCES_DOCUMENT_ENV)
    if document:
        path = Path(document)
        out["document"] = str(path.resolve())
        with contextlib.suppress(OSError):
            out["document_sha256"] = sha256_path(path)[0]
    return out
