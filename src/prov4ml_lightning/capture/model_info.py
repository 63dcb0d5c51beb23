"""Size statistics of a ``torch.nn.Module``: parameter counts and memory footprint by dtype, and
the sha256 of its weights (:func:`state_dict_sha256`), which ties a logged model to the
checkpoint holding the same weights."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["model_statistics", "state_dict_sha256"]


def state_dict_sha256(state_dict: Mapping[str, Any]) -> str:
    """sha256 over a state dict's entries in key order: each key, dtype, shape and raw bytes
    (tensors on any device, any dtype, 0-d included); non-tensor entries by their ``repr``.
    Equal weights give equal hashes whichever file or module holds them."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key]
        h.update(key.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"{str(t.dtype).removeprefix('torch.')}{tuple(value.shape)}".encode() + b"\0")
            if t.numel():
                h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool
                         else t.to(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(value).encode())
        h.update(b"\0")
    return h.hexdigest()


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
    stats["state_dict_sha256"] = state_dict_sha256(model.state_dict())
    stats.update({f"param_bytes_{k}": v for k, v in sorted(param_bytes.items())})
    stats.update({f"buffer_bytes_{k}": v for k, v in sorted(buffer_bytes.items())})
    return stats
