"""Size statistics of a ``torch.nn.Module``: parameter counts and memory footprint by dtype, and
the sha256 of its weights (:func:`state_dict_sha256`, :func:`file_state_dict_sha256` for a saved file),
which ties every entity holding the same weights (logged model, model version, checkpoint) together."""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch

from prov4ml_lightning.errors import Prov4MLInputError

__all__ = ["file_state_dict_sha256", "memory_footprint", "model_statistics", "state_dict_sha256"]


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


def file_state_dict_sha256(path: str | os.PathLike[str]) -> str | None:
    """:func:`state_dict_sha256` of the weights a saved file holds: a state dict
    (``torch.save(model.state_dict())``) or a Lightning checkpoint's ``"state_dict"``. ``None`` when
    the file holds neither, or holds objects that loading without running pickled code refuses."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError):
        return None
    state = saved.get("state_dict", saved) if isinstance(saved, Mapping) else None
    if not isinstance(state, Mapping) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    return state_dict_sha256(state)


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


def _trainer_precision_bits(model: torch.nn.Module) -> int | None:
    """Bits per parameter value under the attached Lightning trainer's precision (``"16-mixed"``,
    ``"bf16-mixed"``, ``"32-true"``, ``"64"``...), or ``None`` without a trainer."""
    try:
        precision = str(model.trainer.precision)  # a LightningModule without a trainer raises
    except (AttributeError, RuntimeError):
        return None
    for prefix, bits in (("bf16", 16), ("16", 16), ("32", 32), ("64", 64), ("transformer-engine", 8)):
        if precision.startswith(prefix):
            return bits
    return None


def memory_footprint(model: torch.nn.Module, model_name: str = "default",
                     call: str = "log_model_memory_footprint") -> dict[str, Any]:
    """The original prov4ml's footprint params of ``model``, in megabytes (10^6 bytes).

    ``memory_of_model``: the parameters at the attached trainer's precision, else at their own
    dtype; ``total_memory_load_of_model``: that plus one fp32 gradient and one fp32 optimizer
    value per parameter (the original's estimate).
    """
    if not isinstance(model, torch.nn.Module):
        raise Prov4MLInputError(f"{call}: model must be a torch.nn.Module, got {type(model).__name__}")
    total = sum(p.numel() for p in model.parameters())
    bits = _trainer_precision_bits(model)
    model_bytes = (total * bits // 8 if bits is not None
                   else sum(p.numel() * p.element_size() for p in model.parameters()))
    return {
        "model_name": model_name,
        "total_params": total,
        "memory_of_model": model_bytes / 1e6,
        "total_memory_load_of_model": (model_bytes + 2 * 4 * total) / 1e6,
    }
