"""Run one of the original prov4ml examples as its user would (``python <example>``), offline.

Usage: ``python run_example.py <example.py>`` from the folder the example should write into.
Puts the torchvision stand-in first on ``sys.path``; where this machine has no MPS device, the
example's ``L.Trainer(accelerator="mps")`` gets ``accelerator="cpu"`` instead (the example file
itself is not changed).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import lightning
import torch

HERE = Path(__file__).resolve().parent
# This folder holds the example named prov4ml_lightning.py: off the path, or it hides the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
# After Lightning's import: torchmetrics probes for torchvision at import and would take the
# stand-in for the real one (and import its models).
sys.path.insert(0, str(HERE / "standin"))

if not torch.backends.mps.is_available():
    _init = lightning.Trainer.__init__

    def _cpu_for_mps(self, *args, **kwargs):
        if kwargs.get("accelerator") == "mps":
            kwargs["accelerator"] = "cpu"
        _init(self, *args, **kwargs)

    lightning.Trainer.__init__ = _cpu_for_mps

if __name__ == "__main__":
    example = sys.argv[1]
    sys.argv = [example]
    runpy.run_path(example, run_name="__main__")
