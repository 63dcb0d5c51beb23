"""FLOPs of a model's forward pass, counted with ``torch.utils.flop_counter`` (no extra dependency).

The original prov4ml's ``log_flops_per_batch`` / ``log_flops_per_epoch`` logged a running total
per label; :class:`FlopsTotals` keeps those totals for one run. Counting runs one extra forward
pass, so it must not disturb the training it measures:

- no autograd graph (``torch.no_grad``), every module in eval mode for the pass and its own
  ``training`` flag restored after it (dropout would draw random numbers, batch norm would update
  its running statistics);
- the CPU and CUDA random generators saved and restored around the pass.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from prov4ml_lightning.errors import Prov4MLInputError

__all__ = ["FlopsTotals", "batch_inputs", "forward_flops"]


def batch_inputs(batch: Any) -> Any:
    """The model input of a batch: ``x`` of ``(x, y, ...)``, or the batch itself (a tensor or a dict)."""
    if isinstance(batch, (list, tuple)) and batch:
        return batch[0]
    return batch


def forward_flops(model: torch.nn.Module, inputs: Any, call: str = "forward_flops") -> int:
    """FLOPs of ``model(inputs)`` (``model(**inputs)`` for a dict), without changing the model or the RNGs."""
    if not isinstance(model, torch.nn.Module):
        raise Prov4MLInputError(f"{call}: model must be a torch.nn.Module, got {type(model).__name__}")
    modes = [(m, m.training) for m in model.modules()]
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.eval()
            if isinstance(inputs, Mapping):
                model(**inputs)
            else:
                model(inputs)
    except Prov4MLInputError:
        raise
    except Exception as err:
        raise Prov4MLInputError(f"{call}: the model's forward pass on the given input failed ({err!r})") from err
    finally:
        for module, training in modes:
            module.training = training
    return int(counter.get_total_flops())


def _one_item_batch(dataset: Any, call: str) -> Any:
    from torch.utils.data import default_collate

    try:
        item = dataset[0]
    except Exception as err:
        raise Prov4MLInputError(f"{call}: dataset[0] could not be read ({err!r}); expected a map-style dataset") \
            from err
    return batch_inputs(default_collate([item]))


class FlopsTotals:
    """Running FLOPs totals per label for one run (what the original prov4ml logged)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[tuple[str, str], int] = {}

    def add_batch(self, label: str, model: torch.nn.Module, batch: Any) -> int:
        """Count one batch's forward FLOPs into ``label``'s total; return the new total."""
        flops = forward_flops(model, batch_inputs(batch), f"log_flops_per_batch({label!r})")
        return self._add(("batch", label), flops)

    def add_epoch(self, label: str, model: torch.nn.Module, dataset: Any) -> int:
        """FLOPs of one forward pass over ``dataset`` (one item's FLOPs times its length) into ``label``'s total."""
        call = f"log_flops_per_epoch({label!r})"
        try:
            length = len(dataset)
        except TypeError as err:
            raise Prov4MLInputError(f"{call}: dataset must have a length (a map-style dataset)") from err
        flops = forward_flops(model, _one_item_batch(dataset, call), call) * length
        return self._add(("epoch", label), flops)

    def _add(self, key: tuple[str, str], flops: int) -> int:
        with self._lock:
            self._totals[key] = self._totals.get(key, 0) + flops
            return self._totals[key]
