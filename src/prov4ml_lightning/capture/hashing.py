"""The hashing behind :mod:`.fingerprint`'s methods: in-memory arrays and files (:func:`hash_content`,
no random generator, safe in a background thread) and items (:func:`hash_items`, with the global and
the dataset's own random generators seeded and restored: only where no training runs).

Every worker takes ``stop``, asked between chunks, files and items; when it answers true the work
gives up (:class:`Stopped`, or a ``pending`` result for items), so the end of a run bounds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from prov4ml_lightning.capture.canonical import array_chunks, as_numeric, item_chunks
from prov4ml_lightning.capture.file_hashes import FileHashes

__all__ = ["SAMPLE_SIZE", "Fingerprint", "Part", "Stop", "Stopped", "hash_content", "hash_items", "hash_sequence"]


@dataclass(frozen=True)
class Fingerprint:
    """A dataset's fingerprint, or why there is none."""

    digest: str | None
    #: ``complete``, ``sample``, ``reference``, ``hook``, ``unknown`` or ``pending``
    status: str
    method: str
    sample_size: int | None = None
    unhashable: tuple[str, ...] = ()
    error: str | None = None
    seconds: float | None = None
    #: files hashed (``files``), and how many of them were read rather than found in the cache
    files: int | None = None
    files_read: int | None = None
    #: why there is no fingerprint, when no exception says it
    note: str | None = None

    def attributes(self) -> dict[str, Any]:
        """The ``fingerprint*`` attributes of the dataset entity."""
        out: dict[str, Any] = {
            "fingerprint": self.digest, "fingerprint_status": self.status, "fingerprint_method": self.method,
            "fingerprint_sample_size": self.sample_size, "fingerprint_files": self.files,
            "fingerprint_unhashable": ", ".join(self.unhashable) or None, "fingerprint_error": self.error,
            "fingerprint_note": self.note,
            "fingerprint_seconds": round(self.seconds, 3) if self.seconds is not None else None,
        }
        return {k: val for k, val in out.items() if val is not None}


Stop = Callable[[], bool]  # asked between chunks, files and sampled items: give up now?


class Stopped(Exception):
    """The work was told to stop (the run's end came, or another thread took it over)."""


#: items hashed when not every item fits the budget
SAMPLE_SIZE = 256
Part = tuple[str, str, Any]  # (kind: array | files | tree, label, value)


# -- in-memory arrays and files (background) -----------------------------------------------------
def hash_content(parts: list[Part], method: str, cache: FileHashes | None, stop: Stop = lambda: False) -> Fingerprint:
    """SHA-256 over ``parts`` in order: arrays by their canonical bytes, file listings by each file's
    relative name, content hash and target, a folder by every file under it."""
    h = hashlib.sha256(f"prov4ml:{method}|{len(parts)}|".encode())
    files = FileHashes() if cache is None else cache
    try:
        for kind, label, value in parts:
            h.update(f"{kind}:{label}|".encode())
            if kind == "array":
                for chunk in array_chunks(value):
                    if stop():
                        raise Stopped
                    h.update(chunk)
            elif kind == "files":
                listing, root = value
                _hash_files(h, listing, root, files, stop)
            else:
                _hash_files(h, _walk(value), value, files, stop)
    finally:
        if cache is None:
            files.close()
    if method == "files":
        return Fingerprint(h.hexdigest(), "complete", method, files=files.read + files.cached, files_read=files.read)
    return Fingerprint(h.hexdigest(), "complete", method)


def hash_sequence(seq: Sequence[Any], cache: FileHashes | None, stop: Stop = lambda: False) -> Fingerprint:
    """A list of numbers as one array (so it equals the NumPy array of the same values), any other
    list item by item."""
    if as_numeric(seq) is not None:
        return hash_content([("array", "array", seq)], "buffers", cache, stop)
    return hash_items(seq, len(seq), budget=float("inf"), seeded=False, cache=cache, stop=stop)


def _walk(root: str) -> list[str]:
    out = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        out += [os.path.join(folder, name) for name in sorted(names)]
    return out


def _hash_files(h: Any, listing: Sequence[Any], root: Any, files: FileHashes, stop: Stop) -> None:
    """Each entry's name relative to the listing's folder, content hash and target (when the
    entry is ``(path, target, ...)``): where the folder lives does not matter, what is in it does."""
    paths = [os.path.abspath(os.fspath(e if isinstance(e, (str, os.PathLike)) else e[0])) for e in listing]
    base = os.path.abspath(os.fspath(root)) if isinstance(root, (str, os.PathLike)) else None
    if base is None or not all(p.startswith(base + os.sep) for p in paths):
        base = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""
    h.update(f"{len(paths)}|".encode())
    files.prefetch(paths)
    opaque: set[str] = set()
    cut = len(base.rstrip(os.sep)) + 1
    for entry, path in zip(listing, paths):
        if stop():
            raise Stopped
        rel = path[cut:].replace(os.sep, "/").encode("utf-8", "surrogateescape")
        h.update(len(rel).to_bytes(8, "little") + rel + files.digest(path))
        rest = () if isinstance(entry, (str, os.PathLike)) else tuple(entry[1:])
        for chunk in item_chunks(rest, opaque):
            h.update(chunk)
    if opaque:
        raise TypeError(f"file listing targets of types {sorted(opaque)}")


# -- items (on the thread that ends the run) -----------------------------------------------------
def hash_items(dataset: Any, length: int, *, budget: float, stop: Stop = lambda: False, seeded: bool = True,
               cache: FileHashes | None = None) -> Fingerprint:
    """Every item in order while that takes under ``budget`` seconds, else :data:`SAMPLE_SIZE`
    evenly spaced ones (status ``sample``); ``pending`` when ``stop()`` says so before the sample
    is read (the pass over all items is bounded by the budget alone)."""
    files = FileHashes() if cache is None else cache
    try:
        opaque: set[str] = set()
        t0 = time.monotonic()
        with _seeded(dataset) if seeded else contextlib.nullcontext():
            h = hashlib.sha256(f"prov4ml:items|{length}|".encode())
            for i in range(length):
                if stop():
                    return Fingerprint(None, "pending", "items", note="not finished when the run's wait for it ended")
                _hash_item(h, i, dataset[i], opaque, files)
                if opaque:
                    return _opaque(opaque, "items")
                if time.monotonic() - t0 > budget and i + 1 < length:
                    break
            else:
                return Fingerprint(h.hexdigest(), "complete", "items")
        indices = sorted({i * length // SAMPLE_SIZE for i in range(SAMPLE_SIZE)})
        with _seeded(dataset) if seeded else contextlib.nullcontext():
            h = hashlib.sha256(f"prov4ml:items-sample|{length}|{len(indices)}|".encode())
            for i in indices:
                if stop():
                    return Fingerprint(None, "pending", "items-sample", sample_size=len(indices),
                                       note="the sample was not read before the end of the run's wait")
                _hash_item(h, i, dataset[i], opaque, files)
                if opaque:
                    return _opaque(opaque, "items-sample")
        return Fingerprint(h.hexdigest(), "sample", "items-sample", sample_size=len(indices))
    finally:
        if cache is None:
            files.close()


def _hash_item(h: Any, index: int, item: Any, opaque: set[str], files: FileHashes) -> None:
    h.update(f"[{index}]".encode())
    for chunk in item_chunks(item, opaque, files.digest):
        h.update(chunk)


def _opaque(opaque: set[str], method: str) -> Fingerprint:
    return Fingerprint(None, "unknown", method, unhashable=tuple(sorted(opaque)))


@contextlib.contextmanager
def _seeded(dataset: Any) -> Iterator[None]:
    """The global ``torch`` CPU, ``random`` and NumPy generators, and the generators the dataset
    holds, seeded with 0 for the block and restored after it (so random transforms give the same
    fingerprint every time and the training's random streams go on untouched)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    torch_state = torch.random.get_rng_state()
    own = _own_generators(dataset)
    try:
        # Only the CPU generator: torch.manual_seed would reseed every CUDA device as well.
        torch.random.default_generator.manual_seed(0)
        random.seed(0)
        np.random.seed(0)
        for _restore, reseed in own:
            reseed()
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
        for restore, _reseed in own:
            restore()


def _own_generators(obj: Any, depth: int = 0, seen: set[int] | None = None) -> list[tuple[Callable[[], None],
                                                                                            Callable[[], None]]]:
    """``(restore, reseed)`` for each random generator ``obj`` holds in its attributes (and in the
    datasets it wraps: ``Subset.dataset``, ``ConcatDataset.datasets``, ...)."""
    seen = set() if seen is None else seen
    if depth > 3 or id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Generator):
        state = obj.get_state()
        return [(lambda g=obj, s=state: g.set_state(s), lambda g=obj: g.manual_seed(0))]
    if isinstance(obj, np.random.Generator):
        state = obj.bit_generator.state
        return [(lambda g=obj, s=state: setattr(g.bit_generator, "state", s),
                 lambda g=obj: setattr(g.bit_generator, "state", type(g.bit_generator)(0).state))]
    if isinstance(obj, np.random.RandomState):
        state = obj.get_state()
        return [(lambda g=obj, s=state: g.set_state(s), lambda g=obj: g.seed(0))]
    if isinstance(obj, random.Random):
        state = obj.getstate()
        return [(lambda g=obj, s=state: g.setstate(s), lambda g=obj: g.seed(0))]
    found = []
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
