"""Describe the datasets behind a trainer's dataloaders, for PROV dataset entities.

A dataset entity records the dataset's class, length, the dataloader's batch size, number of
workers, sampler and ``drop_last``, and a cheap content fingerprint:

- The fingerprint is the SHA-256 of up to :data:`SAMPLE_SIZE` items taken at fixed, evenly
  spaced indices (``0, n/8, 2n/8, ...``), each item reduced to bytes: tensors of any dtype and
  rank (0-d included, sparse ones densified) and NumPy arrays by dtype, shape and raw bytes;
  Python and NumPy numbers, strings and bytes by value; lists, tuples, dicts and dataclasses
  recursively; PIL images by mode, size and pixels.
- Hooks for other types: an item object with a ``__prov4ml_bytes__()`` method returning
  ``bytes`` is hashed by those bytes; a dataset with a ``prov4ml_fingerprint()`` method returning
  a string gets that string as its fingerprint (``fingerprint_method`` says so) and is not sampled.
- Any other object cannot be hashed by content (its ``repr`` may hold memory addresses): the
  dataset then gets no fingerprint, ``fingerprint_status`` ``"unknown"`` with the unhashable
  class names in ``fingerprint_unhashable``, and one :class:`~prov4ml_lightning.errors.Prov4MLWarning`
  naming the dataset. The same happens when reading an item raises (``fingerprint_error`` holds
  the exception's class name, never its message).
- Items are read with the ``torch`` CPU, ``random`` and NumPy generators saved, seeded with 0 and
  restored, so random transforms give the same fingerprint every time and the training's random
  streams are untouched (CUDA generators are not touched at all).
- It is cheap (eight ``__getitem__`` calls) but not a full content hash: two datasets that
  differ only outside the sampled indices share a fingerprint. The length and class are
  recorded beside it for that reason.
- Iterable-style datasets (no ``__getitem__``/``__len__``) cannot be sampled without being
  consumed; they get ``fingerprint_status`` ``"not_sampled"``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from prov4ml_lightning.errors import Prov4MLWarning

__all__ = ["SAMPLE_SIZE", "DatasetInfo", "Fingerprint", "describe_dataloader", "fingerprint", "flatten_dataloaders"]

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
    fp = fingerprint(target, length)
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
        **fp.attributes(),
    }
    suffix = fp.digest[:16] if fp.digest else _qualname(target).rsplit(".", 1)[-1]
    name = f"{role}{index}.{suffix}"
    label = f"{role} data {index}: {type(target).__name__}" + (f" ({length})" if length is not None else "")
    if fp.status == "unknown":
        why = (f"it holds objects of {', '.join(fp.unhashable)}, whose content cannot be hashed" if fp.unhashable
               else f"reading its items raised {fp.error}" if fp.error else "its prov4ml_fingerprint() returned None")
        warnings.warn(f"{role} dataset {index} ({_qualname(target)}) has no content fingerprint: {why}; it is recorded "
                      "with fingerprint_status 'unknown' (give the items a __prov4ml_bytes__() method, or the dataset "
                      "a prov4ml_fingerprint() method)", Prov4MLWarning, stacklevel=3)
    return DatasetInfo(name, label, {k: val for k, val in attributes.items() if val is not None})


@dataclass(frozen=True)
class Fingerprint:
    """The outcome of :func:`fingerprint`: a digest, or why there is none."""

    digest: str | None
    #: ``"complete"``, ``"hook"`` (the dataset's own ``prov4ml_fingerprint()``), ``"unknown"`` or ``"not_sampled"``
    status: str
    unhashable: tuple[str, ...] = ()
    error: str | None = None

    def attributes(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fingerprint": self.digest, "fingerprint_status": self.status}
        if self.status == "complete":
            out["fingerprint_method"] = f"sha256 of {SAMPLE_SIZE} evenly spaced items (seed 0)"
        elif self.status == "hook":
            out["fingerprint_method"] = "the dataset's prov4ml_fingerprint()"
        if self.unhashable:
            out["fingerprint_unhashable"] = ", ".join(self.unhashable)
        if self.error:
            out["fingerprint_error"] = self.error
        return {k: val for k, val in out.items() if val is not None}


class _Unhashable(Exception):
    """An item holds an object whose content cannot be hashed."""


def fingerprint(dataset: Any, length: int | None = None) -> Fingerprint:
    """A content fingerprint of a fixed sample of ``dataset``'s items (see the module docstring)."""
    hook = getattr(dataset, "prov4ml_fingerprint", None)
    if callable(hook):
        try:
            value = hook()
        except Exception as err:
            return Fingerprint(None, "unknown", error=type(err).__name__)
        return Fingerprint(str(value), "hook") if value is not None else Fingerprint(None, "unknown")
    if length is None:
        length = _length(dataset)
    if length is None or not hasattr(dataset, "__getitem__"):
        return Fingerprint(None, "not_sampled")
    h = hashlib.sha256()
    h.update(f"len={length};".encode())
    opaque: set[str] = set()
    indices = sorted({i * length // SAMPLE_SIZE for i in range(SAMPLE_SIZE)}) if length else []
    py_state, np_state = random.getstate(), np.random.get_state()
    torch_state = torch.random.get_rng_state()
    own = _own_generators(dataset)  # a dataset's private generators must not advance either
    try:
        # Only the CPU generator: torch.manual_seed would reseed every CUDA device as well.
        torch.random.default_generator.manual_seed(0)
        random.seed(0)
        np.random.seed(0)
        for i in indices:
            h.update(f"[{i}]".encode())
            for chunk in _item_bytes(dataset[i], opaque):
                h.update(chunk)
    except Exception as err:  # a dataset that fails here fails in training too; do not fail first
        return Fingerprint(None, "unknown", error=type(err).__name__)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
        for restore in own:
            restore()
    if opaque:
        return Fingerprint(None, "unknown", unhashable=tuple(sorted(opaque)))
    return Fingerprint(h.hexdigest(), "complete")


def _own_generators(obj: Any, depth: int = 0, seen: set[int] | None = None) -> list[Any]:
    """Restore callbacks for the random generators a dataset holds in its attributes (and in the
    datasets it wraps: ``Subset.dataset``, ``ConcatDataset.datasets``, ...), so sampling it for a
    fingerprint leaves them where the training will find them."""
    seen = set() if seen is None else seen
    if depth > 3 or id(obj) in seen:
        return []
    seen.add(id(obj))
    found: list[Any] = []
    if isinstance(obj, torch.Generator):
        state = obj.get_state()
        return [lambda g=obj, s=state: g.set_state(s)]
    if isinstance(obj, np.random.Generator):
        state = obj.bit_generator.state
        return [lambda g=obj, s=state: setattr(g.bit_generator, "state", s)]
    if isinstance(obj, np.random.RandomState):
        state = obj.get_state()
        return [lambda g=obj, s=state: g.set_state(s)]
    if isinstance(obj, random.Random):
        state = obj.getstate()
        return [lambda g=obj, s=state: g.setstate(s)]
    if isinstance(obj, (list, tuple)):
        for part in obj[:64]:
            found.extend(_own_generators(part, depth + 1, seen))
        return found
    attrs = getattr(obj, "__dict__", None)
    if isinstance(attrs, dict) and not isinstance(obj, (torch.Tensor, np.ndarray, type)):
        for value in list(attrs.values())[:256]:
            if isinstance(value, (torch.Generator, np.random.Generator, np.random.RandomState, random.Random,
                                  list, tuple)) or (hasattr(value, "__getitem__") and hasattr(value, "__dict__")):
                found.extend(_own_generators(value, depth + 1, seen))
    return found


def _item_bytes(item: Any, opaque: set[str], depth: int = 0) -> Iterator[bytes]:
    if depth > 8:
        yield b"<deep>"
        return
    if isinstance(item, torch.Tensor):
        t = item.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        t = t.cpu().contiguous().reshape(-1)  # 1-d: view(uint8) refuses 0-d tensors of wider dtypes
        yield f"T{item.dtype}{tuple(item.shape)}".encode()
        yield t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
    elif isinstance(item, np.ndarray):
        if item.dtype == object:
            yield f"A{item.shape}".encode()
            for part in item.reshape(-1):
                yield from _item_bytes(part, opaque, depth + 1)
        else:
            yield f"A{item.dtype}{item.shape}".encode()
            yield np.ascontiguousarray(item).tobytes()
    elif isinstance(item, (bool, int, float, complex, str, np.generic)) or item is None:
        yield f"{type(item).__name__}:{item!r}".encode()
    elif isinstance(item, (bytes, bytearray, memoryview)):
        yield b"B" + bytes(item)
    elif callable(getattr(item, "__prov4ml_bytes__", None)):
        data = item.__prov4ml_bytes__()
        yield f"H{_qualname(item)}".encode()
        yield bytes(data)
    elif isinstance(item, Mapping):
        for key in sorted(item, key=str):
            yield f"K{key!r}".encode()
            yield from _item_bytes(item[key], opaque, depth + 1)
    elif isinstance(item, (list, tuple)):
        yield f"L{len(item)}".encode()
        for part in item:
            yield from _item_bytes(part, opaque, depth + 1)
    elif dataclasses.is_dataclass(item) and not isinstance(item, type):
        yield f"D{_qualname(item)}".encode()
        for f in dataclasses.fields(item):
            yield f"K{f.name}".encode()
            yield from _item_bytes(getattr(item, f.name), opaque, depth + 1)
    elif hasattr(item, "tobytes") and hasattr(item, "mode") and hasattr(item, "size"):  # PIL image
        yield f"I{item.mode}{item.size}".encode()
        yield item.tobytes()
    else:
        opaque.add(_qualname(item))
        yield b"?"


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
