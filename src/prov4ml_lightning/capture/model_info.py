"""Size statistics of a ``torch.nn.Module``: parameter counts and memory footprint by dtype, and
the sha256 of its weights (:func:`state_dict_sha256`, :func:`file_state_dict_sha256` for a saved file),
which ties every entity holding the same weights (logged model, model version, checkpoint) together,
and the groups of their tensors by content (:func:`tensor_groups`), which tie a partial load (a
backbone into a new head) to the weights it came from."""

from __future__ import annotations

import hashlib
import os
import pickle
import threading
import zipfile
from collections import OrderedDict, defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from prov4ml_lightning.errors import Prov4MLInputError

__all__ = ["GROUP_DEPTH", "MAX_GROUPS", "file_state_dict_sha256", "memory_footprint", "model_statistics",
           "state_dict_sha256", "tensor_groups", "weight_groups"]


#: module depth (dotted name parts) of the tensor groups indexed for partial loads, and how many per state dict
GROUP_DEPTH = 3
MAX_GROUPS = 24
_RECENT_MAX = 32  # state dicts whose tensor hashes are kept for :func:`weight_groups`

_recent: OrderedDict[str, dict[str, tuple[str, bool]]] = OrderedDict()  # whole hash -> {key: (hash, trivial)}
_recent_lock = threading.Lock()


def _tensor_sha256(value: torch.Tensor) -> tuple[str, bool]:
    """sha256 of one tensor's dtype, shape and raw bytes (not its name), and whether it is trivial:
    at most one element, or every element the same bytes (a fresh bias, a LayerNorm's ones, a
    counter). The bytes are hashed in place (no copy of a CPU tensor); the trivial check samples
    three elements first, so a trained or random tensor costs no second pass."""
    t = value.detach().cpu().contiguous().reshape(-1)
    h = hashlib.sha256(f"{str(t.dtype).removeprefix('torch.')}{tuple(value.shape)}".encode() + b"\0")
    n = t.numel()
    if not n:
        return h.hexdigest(), True
    data = (t.to(torch.uint8) if t.dtype == torch.bool else t).view(torch.uint8).numpy()
    h.update(data)
    size = data.size // n
    first = data[:size]
    trivial = n == 1 or (all(np.array_equal(data[i * size:(i + 1) * size], first) for i in (n - 1, n // 2, n // 3))
                         and np.array_equal(data[size:], data[:-size]))
    return h.hexdigest(), bool(trivial)


def state_dict_sha256(state_dict: Mapping[str, Any]) -> str:
    """sha256 over a state dict's entries in key order: each key and the sha256 of its tensor's
    dtype, shape and raw bytes (tensors on any device, any dtype, 0-d included); non-tensor entries
    by their ``repr``. Equal weights give equal hashes whichever file or module holds them.

    The tensors' own hashes are kept for the last few state dicts hashed (by their hash), for
    :func:`weight_groups`: a partial load is found by them, at no second pass over the bytes."""
    h = hashlib.sha256(b"prov4ml:state_dict|")
    tensors: dict[str, tuple[str, bool]] = {}
    for key in sorted(state_dict):
        value = state_dict[key]
        h.update(str(key).encode() + b"\0")
        if isinstance(value, torch.Tensor):
            tensors[str(key)] = _tensor_sha256(value)
            h.update(tensors[str(key)][0].encode())
        else:
            h.update(b"repr:" + repr(value).encode())
        h.update(b"\0")
    digest = h.hexdigest()
    with _recent_lock:
        _recent[digest] = tensors
        _recent.move_to_end(digest)
        while len(_recent) > _RECENT_MAX:
            _recent.popitem(last=False)
    return digest


def tensor_groups(tensors: Mapping[str, tuple[str, bool]]) -> dict[str, tuple[str, int]]:
    """``{module prefix: (group hash, tensors)}`` of a state dict's tensors (``{key: (sha256,
    trivial)}``): the whole (prefix ``""``) and every module down to :data:`GROUP_DEPTH` dotted
    parts (``backbone``, ``model.backbone``, ``model.backbone.0``). A group's hash is over the
    sorted hashes of its tensors' contents, not their names, so a backbone saved as
    ``model.backbone.*`` and loaded as ``backbone.*`` has one hash. Groups of trivial tensors only
    (zeros, ones: equal in any fresh model) are left out, and so is a group holding the same
    tensors as a shallower one; at most :data:`MAX_GROUPS`, the shallowest and largest first."""
    members: dict[str, list[str]] = {}
    evidence: set[str] = set()
    for key, (digest, trivial) in tensors.items():
        parts = key.split(".")[:-1]
        for depth in range(min(len(parts), GROUP_DEPTH) + 1):
            prefix = ".".join(parts[:depth])
            members.setdefault(prefix, []).append(digest)
            if not trivial:
                evidence.add(prefix)
    order = sorted(evidence, key=lambda p: (p.count(".") + (p != ""), -len(members[p]), p))
    groups: dict[str, tuple[str, int]] = {}
    seen: set[str] = set()
    for prefix in order:
        digest = hashlib.sha256(("prov4ml:tensors|" + "".join(sorted(members[prefix]))).encode()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            groups[prefix] = (digest, len(members[prefix]))
        if len(groups) == MAX_GROUPS:
            break
    return groups


def weight_groups(digest: str) -> tuple[dict[str, tuple[str, int]], int] | None:
    """:func:`tensor_groups` of the state dict of hash ``digest`` and its number of tensors, when
    this process hashed it lately (:func:`state_dict_sha256`); ``None`` otherwise."""
    with _recent_lock:
        tensors = _recent.get(digest)
    if tensors is None:
        return None
    return tensor_groups(tensors), len(tensors)


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
