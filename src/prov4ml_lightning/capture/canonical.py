"""Canonical bytes of dataset content, for the fingerprints of :mod:`.fingerprint`.

Equal values give equal bytes whatever container or number type holds them:

- Integers (Python ``int``, NumPy and torch integer dtypes) are encoded by value: in the smallest
  little-endian integer type that holds the array's range (unsigned when nothing is negative),
  so ``[3, 1]``, ``np.array([3, 1], dtype=np.int64)`` and ``torch.tensor([3, 1], dtype=torch.uint8)``
  are the same bytes. The range costs one pass over the array (``min``/``max``); a uint8 image
  array stays uint8, int64 class labels shrink to one byte each.
- Floating-point and complex values are encoded by dtype (a float32 array and its float64 copy
  differ), little-endian; booleans as one byte each. Shapes are part of the encoding.
- Everything else an item may hold (strings, bytes, containers, dataclasses, PIL images, objects
  with ``__prov4ml_bytes__()``, ``os.PathLike`` paths by their file's content) is framed with its
  length, so ``["ab", "c"]`` and ``["a", "bc"]`` differ. An object of another type is *opaque*:
  its class name is collected and the caller gives up (a ``repr`` may hold memory addresses).

Nothing here reads a random generator. Large arrays are yielded in chunks of :data:`CHUNK_BYTES`
(views, not copies, where the bytes are already canonical), so ``hashlib`` hashes them with the GIL
released.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["CHUNK_BYTES", "array_chunks", "as_numeric", "item_chunks", "qualname"]

#: source bytes per chunk handed to the hash
CHUNK_BYTES = 1 << 24

_LITTLE = sys.byteorder == "little"
_INTS = [np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.uint64)]
_SINTS = [np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64)]
# torch dtypes NumPy has no type for: hashed through an integer view of the same width
_TORCH_ONLY = {torch.bfloat16: torch.int16}
for _name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"):
    if hasattr(torch, _name):
        _TORCH_ONLY[getattr(torch, _name)] = torch.uint8


def qualname(obj: Any) -> str:
    """``module.Class`` of ``obj``'s type."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _n(value: int) -> bytes:
    return struct.pack("<Q", value)


# (smallest, largest, little-endian dtype, header of a 0-d value) per candidate, smallest first
_UNSIGNED = [(0, (1 << (8 * dt.itemsize)) - 1, dt.newbyteorder("<"), f"A|int|{dt.name}|()|".encode()) for dt in _INTS]
_SIGNED = [(-(1 << (8 * dt.itemsize - 1)), (1 << (8 * dt.itemsize - 1)) - 1, dt.newbyteorder("<"),
            f"A|int|{dt.name}|()|".encode()) for dt in _SINTS]


def _int_type(lo: int, hi: int) -> tuple[int, int, np.dtype, bytes]:
    for row in (_UNSIGNED if lo >= 0 else _SIGNED):
        if row[0] <= lo and hi <= row[1]:
            return row
    return _SIGNED[-1] if lo < 0 else _UNSIGNED[-1]


def _int_dtype(lo: int, hi: int) -> np.dtype:
    """The smallest little-endian integer type holding ``[lo, hi]``."""
    return _int_type(lo, hi)[2]


def as_numeric(value: Any) -> np.ndarray | torch.Tensor | None:
    """``value`` as a numeric array (a tensor stays a tensor), or ``None`` when it is not one:
    tensors, NumPy arrays and scalars, Python numbers, lists/tuples of numbers, ``__array__`` objects."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return value if value.dtype.kind in "biufc" else None
    if isinstance(value, (str, bytes, bytearray, memoryview)) or value is None:
        return None
    if isinstance(value, (bool, int, float, complex, np.generic, list, tuple, range)) or hasattr(value, "__array__"):
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError, OverflowError):
            return None
        return arr if arr.dtype.kind in "biufc" else None
    return None


def _blocks(x: np.ndarray | torch.Tensor, itemsize: int) -> Iterator[np.ndarray]:
    """Flat C-ordered NumPy blocks of about :data:`CHUNK_BYTES` covering ``x`` (views where possible)."""
    if isinstance(x, torch.Tensor):
        if x.dim() == 0 or (x.is_contiguous() and x.device.type == "cpu"):
            flat = x.reshape(-1).numpy()
            step = max(1, CHUNK_BYTES // max(1, itemsize))
            for start in range(0, flat.shape[0], step):
                yield flat[start:start + step]
            return
        rows = max(1, CHUNK_BYTES // max(1, itemsize * (x[0].numel() if x.shape[0] else 1)))
        for start in range(0, x.shape[0], rows):
            yield x[start:start + rows].contiguous().cpu().reshape(-1).numpy()
        return
    if x.ndim == 0 or x.flags.c_contiguous:
        flat = x.reshape(-1)
        step = max(1, CHUNK_BYTES // max(1, itemsize))
        for start in range(0, flat.shape[0], step):
            yield flat[start:start + step]
        return
    rows = max(1, CHUNK_BYTES // max(1, itemsize * (x[0].size if x.shape[0] else 1)))
    for start in range(0, x.shape[0], rows):
        yield np.ascontiguousarray(x[start:start + rows]).reshape(-1)


def array_chunks(value: Any) -> Iterator[bytes | memoryview]:
    """The canonical bytes of a numeric array (see the module docstring): a header with kind, dtype
    and shape, then the values in chunks.

    Raises:
        TypeError: ``value`` is not numeric (:func:`as_numeric` gives ``None``).
    """
    x = as_numeric(value)
    if x is None:
        raise TypeError(f"not a numeric array: {qualname(value)}")
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.layout != torch.strided:  # sparse: its coalesced indices and values
            x = x.coalesce() if x.layout == torch.sparse_coo else x.to_sparse_coo().coalesce()
            yield f"S{tuple(x.shape)}|".encode()
            yield from array_chunks(x.indices())
            yield from array_chunks(x.values())
            return
        x = x.resolve_conj().resolve_neg()
        name = str(x.dtype).removeprefix("torch.")
        if x.dtype in _TORCH_ONLY:
            yield f"A|float|{name}|{tuple(x.shape)}|".encode()
            view = x.view(_TORCH_ONLY[x.dtype])
            for block in _blocks(view, view.element_size()):
                yield memoryview(_little(block)).cast("B")
            return
        if x.dtype == torch.bool:
            kind = "bool"
        elif x.is_floating_point():
            kind = "float"
        elif x.is_complex():
            kind = "complex"
        else:
            kind = "int"
        itemsize = x.element_size()
    else:
        kind = {"b": "bool", "i": "int", "u": "int", "f": "float", "c": "complex"}[x.dtype.kind]
        name = x.dtype.newbyteorder("=").name
        itemsize = x.dtype.itemsize
    shape = tuple(int(s) for s in x.shape)
    if kind == "int":
        target = _int_range(x)
        yield f"A|int|{target.name}|{shape}|".encode()
        for block in _blocks(x, itemsize):
            if block.dtype != target:
                block = block.astype(target)
            yield memoryview(block).cast("B")
        return
    yield f"A|{kind}|{'bool' if kind == 'bool' else name}|{shape}|".encode()
    for block in _blocks(x, itemsize):
        block = block.view(np.uint8) if kind == "bool" else _little(block)
        yield memoryview(block).cast("B")


def _int_range(x: np.ndarray | torch.Tensor) -> np.dtype:
    numel = x.numel() if isinstance(x, torch.Tensor) else x.size
    if not numel:
        return np.dtype("u1")
    if isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            return _int_dtype(int(x.min().item()), int(x.max().item()))
        x = x.numpy()  # NumPy's reductions run on this thread alone, not on torch's training threads
    return _int_dtype(int(x.min()), int(x.max()))


def _little(block: np.ndarray) -> np.ndarray:
    order = block.dtype.byteorder
    if order == ">" or (order == "=" and not _LITTLE):
        return block.astype(block.dtype.newbyteorder("<"))
    return block


def _scalar_chunks(item: Any) -> bytes | None:
    """Fast path for Python numbers; the same bytes :func:`array_chunks` gives their 0-d array."""
    if item is True or item is False:
        return b"A|bool|bool|()|" + (b"\x01" if item else b"\x00")
    if type(item) is int:
        if -(1 << 63) <= item < (1 << 64):
            _, _, dt, header = _int_type(item, item)
            return header + item.to_bytes(dt.itemsize, "little", signed=item < 0)
        return b"Z" + _n(len(str(item))) + str(item).encode()  # beyond 64 bits: by its digits
    if type(item) is float:
        return b"A|float|float64|()|" + struct.pack("<d", item)
    return None


def item_chunks(item: Any, opaque: set[str], file_digest: Callable[[str], bytes] | None = None,
                depth: int = 0) -> Iterator[bytes | memoryview]:
    """The canonical bytes of one dataset item of any common type; the class names of parts that
    cannot be hashed by content are added to ``opaque``. ``file_digest(path)`` hashes the file an
    ``os.PathLike`` item names (without it, such an item is opaque)."""
    if depth > 16:
        opaque.add("<nested deeper than 16 levels>")
        return
    fast = _scalar_chunks(item)
    if fast is not None:
        yield fast
    elif isinstance(item, (torch.Tensor, np.ndarray, np.generic, complex)) and as_numeric(item) is not None:
        yield from array_chunks(item)
    elif isinstance(item, str):
        data = item.encode("utf-8", "surrogatepass")
        yield b"s" + _n(len(data))
        yield data
    elif isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
        yield b"B" + _n(len(data))
        yield data
    elif item is None:
        yield b"N"
    elif callable(getattr(item, "__prov4ml_bytes__", None)):
        data = bytes(item.__prov4ml_bytes__())
        yield f"H{qualname(item)}|".encode() + _n(len(data))
        yield data
    elif isinstance(item, os.PathLike):
        if file_digest is None:
            opaque.add(qualname(item))
            return
        yield b"F" + file_digest(os.fspath(item))
    elif isinstance(item, np.ndarray):  # strings, objects: element by element
        if item.dtype.kind in "US":
            yield f"A|{item.dtype.str}|{item.shape}|".encode()
            yield np.ascontiguousarray(item).tobytes()
        else:
            yield f"O{item.shape}|".encode()
            for part in item.reshape(-1):
                yield from item_chunks(part, opaque, file_digest, depth + 1)
    elif isinstance(item, Mapping):
        yield b"M" + _n(len(item))
        for key in sorted(item, key=str):
            yield from item_chunks(key, opaque, file_digest, depth + 1)
            yield from item_chunks(item[key], opaque, file_digest, depth + 1)
    elif isinstance(item, (list, tuple)):
        yield b"L" + _n(len(item))
        for part in item:
            yield from item_chunks(part, opaque, file_digest, depth + 1)
    elif dataclasses.is_dataclass(item) and not isinstance(item, type):
        yield f"D{qualname(item)}|".encode()
        for f in dataclasses.fields(item):
            yield f"K{f.name}|".encode()
            yield from item_chunks(getattr(item, f.name), opaque, file_digest, depth + 1)
    elif hasattr(item, "tobytes") and hasattr(item, "mode") and hasattr(item, "size"):  # PIL image
        data = item.tobytes()
        yield f"I{item.mode}{tuple(item.size)}|".encode() + _n(len(data))
        yield data
    else:
        opaque.add(qualname(item))
