"""Size statistics of a ``torch.nn.Module``: parameter counts and memory footprint by dtype."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

__all__ = ["model_statistics"]


def model_statistics(model: torch.nn.Module) -> dict[str, Any]:
    """Counts of parameters (total, trainable) and bytes of parameters and buffers per dtype."""
    total = trainable = 0
    param_bytes: dict[str, int] = defaultdict(int)
    buffer_bytes: dict[str, int] = defaultdict(int)
    for p in model.parameters():
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
        param_bytes[str(p.dtype).removeprefix("torch.")] += n * p.element_size()
    for b in model.buffers():
        buffer_bytes[str(b.dtype).removeprefix("torch.")] += b.numel() * b.element_size()
    stats: dict[str, Any] = {
        "total_params": total,
        "trainable_params": trainable,
        "param_bytes": sum(param_bytes.values()),
        "buffer_bytes": sum(buffer_bytes.values()),
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
    }
    stats["memory_bytes"] = stats["param_bytes"] + stats["buffer_bytes"]
    stats.update({f"param_bytes_{k}": v for k, v in sorted(param_bytes.items())})
    stats.update({f"buffer_bytes_{k}": v for k, v in sorted(buffer_bytes.items())})
    return stats
