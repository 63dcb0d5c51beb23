"""Describe the datasets behind a trainer's dataloaders, for PROV dataset entities.

A dataset entity records the dataset's class, length, the dataloader's batch size, number of
workers, sampler and ``drop_last``, and a cheap content fingerprint:

- The fingerprint is the SHA-256 of up to :data:`SAMPLE_SIZE` items taken at fixed, evenly
  spaced indices (``0, n/8, 2n/8, ...``), each item reduced to bytes: tensors and NumPy arrays
  by dtype, shape and raw bytes; numbers, strings and bytes by value; lists, tuples and dicts
  recursively; PIL images by mode, size and pixels; any other object by its class name only
  (its ``repr`` may hold memory addresses), which is then noted in ``fingerprint_note``.
- Items are read with the ``torch``, ``random`` and NumPy generators forked and seeded with 0,
  so random transforms give the same fingerprint every time and training randomness is untouched.
- It is cheap (eight ``__getitem__`` calls) but not a full content hash: two datasets that
  differ only outside the sampled indices share a fingerprint. The length and class are
  recorded beside it for that reason.
- Iterable-style datasets (no ``__getitem__``/``__len__``) cannot be sampled without being
  consumed; they get no fingerprint and ``fingerprint_note`` says so.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["SAMPLE_SIZE", "DatasetInfo", "describe_dataloader", "fingerprint", "flatten_dataloaders"]

#: Items hashed for the fingerprint.
SAMPLE_SIZE = 8


@dataclass(frozen=True)
class DatasetInfo:
    """What is recorded about one dataloader's dataset."""

    name: str  # stable PROV name: ``<role><index>.<fingerprint prefix>``
    label: str
    attributes: dict[str, Any]


def flatten_dataloaders(loaders: Any) -> list[Any]:
    """The dataloaders inside what ``trainer.*_dataloader(s)`` returns (one, a list, a dict, nested)."""
    if loaders is None:
        return []
    if isinstance(loaders, torch.utils.data.DataLoader):
        return [loaders]
    if isinstance(loaders, Mapping):
        return [dl for value in loaders.values() for dl in flatten_dataloaders(value)]
    if isinstance(loaders, (list, tuple)):
        return [dl for value in loaders for dl in flatten_dataloaders(value)]
    return [loaders] if hasattr(loaders, "__iter__") else []


def describe_dataloader(loader: Any, role: str, index: int) -> DatasetInfo:
    """The dataset entity of ``loader`` used in ``role`` (``train``, ``val``, ``test``, ``predict``)."""
    dataset = getattr(loader, "dataset", None)
    target = dataset if dataset is not None else loader
    length = _length(target)
    digest, note = fingerprint(target, length)
    batch_sampler = getattr(loader, "batch_sampler", None)
    sampler = getattr(loader, "sampler", None)
    batch_size = getattr(loader, "batch_size", None)
    if batch_size is None:
        batch_size = getattr(batch_sampler, "batch_size", None)
    attributes: dict[str, Any] = {
        "role": role,
        "dataloader_index": index,
        "dataset_class": _qualname(target),
        "length": length,
        "batch_size": batch_size,
        "num_workers": getattr(loader, "num_workers", None),
        "sampler": _qualname(sampler) if sampler is not None else None,
        "shuffle": _is_shuffled(sampler),
        "drop_last": getattr(loader, "drop_last", getattr(batch_sampler, "drop_last", None)),
        "fingerprint": digest,
        "fingerprint_method": f"sha256 of {SAMPLE_SIZE} evenly spaced items (seed 0)" if digest else None,
        "fingerprint_note": note,
    }
    suffix = digest[:16] if digest else _qualname(target).rsplit(".", 1)[-1]
    name = f"{role}{index}.{suffix}"
    label = f"{role} data {index}: {type(target).__name__}" + (f" ({length})" if length is not None else "")
    return DatasetInfo(name, label, {k: val for k, val in attributes.items() if val is not None})


def fingerprint(dataset: Any, length: int | None = None) -> tuple[str | None, str | None]:
    """``(sha256 hex, note)`` of a fixed sample of ``dataset``'s items; ``(None, reason)`` when impossible."""
    if length is None:
        length = _length(dataset)
    if length is None or not hasattr(dataset, "__getitem__"):
        return None, "iterable-style dataset: not sampled (items cannot be read without consuming it)"
    h = hashlib.sha256()
    h.update(f"len={length};".encode())
    opaque: set[str] = set()
    indices = sorted({i * length // SAMPLE_SIZE for i in range(SAMPLE_SIZE)}) if length else []
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            random.seed(0)
            np.random.seed(0)
            for i in indices:
                h.update(f"[{i}]".encode())
                for chunk in _item_bytes(dataset[i], opaque):
                    h.update(chunk)
    except Exception as err:  # a dataset that fails here fails in training too; do not fail first
        return None, f"items could not be read for a fingerprint ({type(err).__name__}: {err})"
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    note = f"objects of {', '.join(sorted(opaque))} hashed by class name only" if opaque else None
    return h.hexdigest(), note


def _item_bytes(item: Any, opaque: set[str], depth: int = 0) -> Iterator[bytes]:
    if depth > 8:
        yield b"<deep>"
        return
    if isinstance(item, torch.Tensor):
        t = item.detach().cpu().contiguous()
        yield f"T{t.dtype}{tuple(t.shape)}".encode()
        yield t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
    elif isinstance(item, np.ndarray):
        yield f"A{item.dtype}{item.shape}".encode()
        yield np.ascontiguousarray(item).tobytes()
    elif isinstance(item, (bool, int, float, complex, str, np.generic)) or item is None:
        yield f"{type(item).__name__}:{item!r}".encode()
    elif isinstance(item, bytes):
        yield b"B" + item
    elif isinstance(item, Mapping):
        for key in sorted(item, key=str):
            yield f"K{key!r}".encode()
            yield from _item_bytes(item[key], opaque, depth + 1)
    elif isinstance(item, (list, tuple)):
        yield f"L{len(item)}".encode()
        for part in item:
            yield from _item_bytes(part, opaque, depth + 1)
    elif hasattr(item, "tobytes") and hasattr(item, "mode") and hasattr(item, "size"):  # PIL image
        yield f"I{item.mode}{item.size}".encode()
        yield item.tobytes()
    else:
        opaque.add(type(item).__name__)
        yield f"O{_qualname(item)}".encode()


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except Exception:
        return None


def _qualname(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_shuffled(sampler: Any) -> bool | None:
    if sampler is None:
        return None
    if isinstance(sampler, torch.utils.data.RandomSampler):
        return True
    if isinstance(sampler, torch.utils.data.SequentialSampler):
        return False
    shuffle = getattr(sampler, "shuffle", None)  # DistributedSampler
    return shuffle if isinstance(shuffle, bool) else None
