"""The run id and outputs handed back to the process that launched the ranks (``ddp_spawn``, ``ddp_fork``).

With ``strategy="ddp_spawn"`` the process that calls ``trainer.fit`` is none of the ranks: Lightning
pickles the trainer, callbacks included, into each rank and, after the fit, sends back only the
checkpoint path, the weights and ``callback_metrics``. No callback hook runs in the launching process
after the fit. So rank zero, when it ends the run in a process other than the one that built the
callback, writes a small hand-off file into ``provenance_save_dir`` (the folder the ranks share
anyway), named by a token the callback drew when it was built; the launching process's callback
reads it, once, the first time it is asked for ``run_id`` or ``outputs``.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from prov4ml_lightning.files import atomic_write_text
from prov4ml_lightning.tracking.recorder import RunOutputs

__all__ = ["handoff_path", "read_handoff", "write_handoff"]


def handoff_path(provenance_save_dir: str | os.PathLike[str], token: str) -> Path:
    return Path(provenance_save_dir) / f".prov4ml_handoff_{token}.json"


def write_handoff(path: Path, run_id: str | None, outputs: RunOutputs | None) -> None:
    """Write ``run_id`` and a ``RunOutputs`` (or None) for the launching process."""
    fields = None
    if outputs is not None:
        fields = {name: (str(value) if isinstance(value, Path) else value)
                  for name, value in vars(outputs).items() if name != "extra"}
        fields["extra"] = {key: str(value) for key, value in outputs.extra.items()}
    atomic_write_text(path, json.dumps({"run_id": run_id, "outputs": fields}))


def read_handoff(path: Path) -> tuple[str | None, RunOutputs | None] | None:
    """The run id and ``RunOutputs`` rank zero handed off, and the file removed; None when there is none."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    with contextlib.suppress(OSError):
        path.unlink()
    fields = data.get("outputs")
    outputs = None
    if fields is not None:
        as_path = {"provenance_dir", "prov_json", "prov_dot", "prov_svg", "metrics_file"}
        outputs = RunOutputs(**{key: (Path(value) if key in as_path and value is not None else value)
                                for key, value in fields.items() if key != "extra"},
                             extra={key: Path(value) for key, value in fields.get("extra", {}).items()})
    return data.get("run_id"), outputs
