"""What can honestly be said about the random seed of a run.

- ``lightning.seed_everything(s)`` (also ``Trainer``-side ``seed_everything``) stores ``s`` in the
  ``PL_GLOBAL_SEED`` environment variable: a sure sign, recorded with source
  ``lightning.seed_everything``.
- ``torch.manual_seed(s)`` leaves no trace but ``torch.initial_seed()``, which is *always* set:
  without a manual seed, torch draws a random 64-bit value at start-up. A value below ``2**32``
  is taken as set by hand (source ``torch.manual_seed``): torch's own draw lands there with
  probability 2**-32. A hand-set seed of ``2**32`` or more is not recognised as one (it is still
  recorded as ``torch_initial_seed``). Seeds of ``random``, NumPy or CUDA generators set
  separately cannot be detected at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["SeedInfo", "detect_seed"]

_HAND_SET_LIMIT = 2**32


@dataclass(frozen=True)
class SeedInfo:
    """The detected seed (``None`` when none was detected), where it came from, and torch's seed."""

    seed: int | None
    source: str | None
    torch_initial_seed: int | None

    def attributes(self) -> dict[str, int | str]:
        """The ``p4l:`` attributes of the run activity (absent values left out)."""
        out: dict[str, int | str] = {}
        if self.seed is not None:
            out["seed"] = self.seed
            out["seed_source"] = self.source or "unknown"
        if self.torch_initial_seed is not None:
            out["torch_initial_seed"] = self.torch_initial_seed
        return out


def detect_seed() -> SeedInfo:
    """The seed in effect now (see the module docstring for what can be detected)."""
    try:
        import torch

        initial: int | None = int(torch.initial_seed())
    except Exception:  # torch missing or broken: nothing to say about its generator
        initial = None
    pl_seed = os.environ.get("PL_GLOBAL_SEED")
    if pl_seed is not None:
        try:
            return SeedInfo(int(pl_seed), "lightning.seed_everything", initial)
        except ValueError:
            pass
    if initial is not None and initial < _HAND_SET_LIMIT:
        return SeedInfo(initial, "torch.manual_seed", initial)
    return SeedInfo(None, None, initial)
