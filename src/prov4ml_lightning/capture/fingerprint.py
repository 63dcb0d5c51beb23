"""Dataset identity by content: a SHA-256 over all of a dataset's data, by the fastest means its kind allows.

:func:`plan` looks at a dataset on the calling thread (attribute checks only: nothing is read,
no generator is touched) and picks the method; the method's name is recorded as
``fingerprint_method`` beside ``fingerprint_status``:

================  =========================================================  ==========  ============
method            what is hashed                                             status      runs
================  =========================================================  ==========  ============
``hook``          the dataset's own ``prov4ml_fingerprint()`` string          hook        calling thread
``huggingface``   a Hugging Face ``datasets`` object's own ``_fingerprint``   complete    calling thread
``reference``     an iterable (streaming) dataset's source listing: its       reference   calling thread
                  ``files``/``shards``/``urls``/``data_files``, or the repr
                  of its ``source`` (no memory address in it); not its
                  content (that would consume the stream)
``buffers``       every in-memory array whole: ``TensorDataset`` tensors,     complete    background
                  ``.data`` and ``.targets``/``.labels`` (and other array
                  attributes) of torchvision-style datasets, NumPy arrays,
                  lists of numbers, ``Subset`` (with its indices) and
                  ``ConcatDataset`` of those (:mod:`.canonical` encoding)
``files``         the content, relative name and target of every file of a    complete    background
                  ``.samples``/``.imgs``/``.files`` listing, else of every
                  file under a ``root`` folder (:mod:`.file_hashes` cache)
``items``         every item, read in order with the random generators        complete    run's end
                  seeded, when that fits the time budget
``items-sample``  else :data:`SAMPLE_SIZE` evenly spaced items                sample      run's end
================  =========================================================  ==========  ============

``unknown`` (no fingerprint, one warning) is left for items holding objects that cannot be hashed
by content (``fingerprint_unhashable``), a failing read (``fingerprint_error``: the exception's
class, never its message), and a stream with no source listing.

Where each runs, and why (docs/performance.md, "Dataset fingerprints"):

- ``buffers`` and ``files`` read memory and files only: no random generator, no user code. They
  run in a daemon thread that gets only CPU time nothing else wants (Linux ``SCHED_IDLE`` for that
  thread), so the first batch never waits for them and a training that keeps the CPUs busy keeps
  them; ``hashlib`` and NumPy release the GIL on large buffers, so the thread seldom holds it.
- ``items`` calls the dataset's ``__getitem__``, which may draw from the global ``torch``,
  ``random`` and NumPy generators (random transforms) or use a file handle the training shares.
  Seeding those generators in a thread while the training draws from them would change the
  training's random stream, so the items are read where no training runs: when the run ends
  (``end_run``, the callback's end of fit), on the ending thread, with the global generators and the
  dataset's own ones seeded with 0 and restored afterwards (CUDA generators are not touched). The
  budget (``PROV4ML_FINGERPRINT_BUDGET``, default 2 s) bounds the pass over all items; past it a
  fixed sample is read instead. A plain list of samples (not numbers) is hashed there too, item by
  item but without seeding anything: that is Python work holding the GIL the training needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from prov4ml_lightning.capture.canonical import qualname
from prov4ml_lightning.capture.file_hashes import FileHashes
from prov4ml_lightning.capture.hashing import (
    SAMPLE_SIZE,
    Fingerprint,
    Part,
    Stop,
    Stopped,
    hash_content,
    hash_items,
    hash_sequence,
)

__all__ = ["BUDGET_ENV", "DEFAULT_BUDGET_S", "SAMPLE_SIZE", "Fingerprint", "Plan", "budget_seconds", "fingerprint",
           "plan"]

#: seconds the ``items`` method may spend on all items before it samples
DEFAULT_BUDGET_S = 2.0
BUDGET_ENV = "PROV4ML_FINGERPRINT_BUDGET"

_ARRAY_ATTRS = ("targets", "labels")
_STREAM_ATTRS = ("files", "shards", "urls", "data_files", "source", "sources")


@dataclass
class Plan:
    """How a dataset is fingerprinted: a result known now (``where="ready"``), or work to run in a
    background thread (``"background"``: no random generator, no ``__getitem__``) or where no
    training runs (``"deferred"``: the ``items`` method)."""

    method: str
    where: str
    result: Fingerprint | None = None
    work: Callable[[Stop], Fingerprint] | None = field(default=None, repr=False)

    def run(self, deadline: float | None = None, stop: Stop | None = None) -> Fingerprint:
        """The fingerprint (the work done on this thread). Past ``deadline`` (``time.monotonic()``),
        or once ``stop()`` is true, the work gives up: status ``pending``."""
        if self.result is not None:
            return self.result
        assert self.work is not None
        t0 = time.monotonic()

        def stopped() -> bool:
            return (deadline is not None and time.monotonic() > deadline) or (stop is not None and stop())

        try:
            fp = self.work(stopped)
        except Stopped:
            fp = Fingerprint(None, "pending", self.method, note="not finished when the run's wait for it ended")
        except Exception as err:  # a dataset that fails here fails in training too; do not fail first
            fp = Fingerprint(None, "unknown", self.method, error=type(err).__name__)
        if fp.seconds is None:
            fp = dataclasses.replace(fp, seconds=time.monotonic() - t0)
        return fp


def budget_seconds() -> float:
    """The ``items`` budget: ``$PROV4ML_FINGERPRINT_BUDGET`` seconds, default :data:`DEFAULT_BUDGET_S`."""
    try:
        return max(0.0, float(os.environ.get(BUDGET_ENV, DEFAULT_BUDGET_S)))
    except ValueError:
        return DEFAULT_BUDGET_S


def fingerprint(dataset: Any, *, budget: float | None = None, cache: FileHashes | None = None) -> Fingerprint:
    """The fingerprint of ``dataset``, computed on this thread (see the module docstring)."""
    return plan(dataset, budget=budget, cache=cache).run()


def plan(dataset: Any, *, budget: float | None = None, cache: FileHashes | None = None) -> Plan:
    """Choose how ``dataset`` is fingerprinted; cheap (attribute checks, a hook call)."""
    hook = getattr(dataset, "prov4ml_fingerprint", None)
    if callable(hook):
        try:
            value = hook()
        except Exception as err:
            return Plan("hook", "ready", Fingerprint(None, "unknown", "hook", error=type(err).__name__))
        return Plan("hook", "ready", Fingerprint(str(value), "hook", "hook") if value is not None
                    else Fingerprint(None, "unknown", "hook", note="its prov4ml_fingerprint() returned None"))
    hf = getattr(dataset, "_fingerprint", None)
    if isinstance(hf, str) and hf and hasattr(dataset, "__getitem__"):
        return Plan("huggingface", "ready", Fingerprint(hf, "complete", "huggingface"))
    length = _length(dataset)
    if isinstance(dataset, torch.utils.data.IterableDataset) or length is None or not hasattr(dataset, "__getitem__"):
        return Plan("reference", "ready", _reference(dataset))
    parts = _content(dataset)
    if parts is not None:
        method = "files" if any(kind in ("files", "tree") for kind, _, _ in parts) else "buffers"
        return Plan(method, "background", work=lambda stop: hash_content(parts, method, cache, stop))
    if isinstance(dataset, (list, tuple)):
        # numbers: one array, off the training thread; other items are hashed one by one in Python, which
        # holds the GIL the training needs, so at the run's end (no generator is seeded: a list runs no code)
        return Plan("buffers" if _numbers(dataset) else "items", "background" if _numbers(dataset) else "deferred",
                    work=lambda stop: hash_sequence(dataset, cache, stop))
    limit = budget_seconds() if budget is None else budget
    return Plan("items", "deferred",
                work=lambda stop: hash_items(dataset, length, budget=limit, stop=stop, cache=cache))


# -- in-memory arrays and files (background) -----------------------------------------------------
def _content(ds: Any, depth: int = 0) -> list[Part] | None:
    """What ``ds``'s content is made of, when it is arrays or files; ``None`` otherwise."""
    if depth > 4:
        return None
    if isinstance(ds, (torch.Tensor, np.ndarray)):
        return [("array", "array", ds)] if _array_like(ds) else None
    if isinstance(ds, torch.utils.data.TensorDataset):
        return [("array", f"tensors[{i}]", t) for i, t in enumerate(ds.tensors)]
    if isinstance(ds, torch.utils.data.Subset):
        base = _content(ds.dataset, depth + 1)
        return None if base is None else [*base, ("array", "indices", ds.indices)]
    if isinstance(ds, torch.utils.data.ConcatDataset):
        out: list[Part] = []
        for i, part in enumerate(ds.datasets):
            inner = _content(part, depth + 1)
            if inner is None:
                return None
            out += [(kind, f"datasets[{i}].{label}", value) for kind, label, value in inner]
        return out
    attrs = getattr(ds, "__dict__", None)
    if not isinstance(attrs, dict):
        return None
    data = attrs.get("data")
    labels = next((name for name in _ARRAY_ATTRS if name in attrs), None)
    if data is not None and labels is not None and _array_like(data) and (
            attrs[labels] is None or _array_like(attrs[labels])):
        parts: list[Part] = [("array", "data", data)]
        if attrs[labels] is not None:
            parts.append(("array", labels, attrs[labels]))
        parts += [("array", name, value) for name, value in sorted(attrs.items())
                  if name not in ("data", labels) and not name.startswith("_")
                  and isinstance(value, (torch.Tensor, np.ndarray)) and _array_like(value)]
        return parts
    for name in ("samples", "imgs", "files"):
        listing = attrs.get(name)
        if isinstance(listing, (list, tuple)) and listing and _is_entry(listing[0]):
            return [("files", name, (listing, attrs.get("root")))]
    root = attrs.get("root")
    if isinstance(root, (str, os.PathLike)) and os.path.isdir(root):
        return [("tree", "root", os.fspath(root))]
    return None


def _array_like(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, np.ndarray) or (hasattr(value, "__array__") and hasattr(value, "dtype")):
        kind = getattr(value.dtype, "kind", None)  # a pandas Series, an xarray DataArray, ...
        return isinstance(kind, str) and len(kind) == 1 and kind in "biufc"
    return isinstance(value, (list, tuple, range)) and _numbers(value)


def _numbers(seq: Sequence[Any]) -> bool:
    """Whether a list looks like numbers (its first element is checked; the hash checks them all)."""
    if isinstance(seq, range):
        return True
    if not seq:
        return False
    first = seq[0]
    while isinstance(first, (list, tuple)) and first:
        first = first[0]
    return isinstance(first, (int, float, np.number, np.bool_))


def _is_entry(entry: Any) -> bool:
    if isinstance(entry, (str, os.PathLike)):
        return True
    return isinstance(entry, (list, tuple)) and bool(entry) and isinstance(entry[0], (str, os.PathLike))


def _reference(ds: Any) -> Fingerprint:
    """An iterable dataset by what it reads from, not by its content."""
    source: dict[str, Any] = {}
    for name in _STREAM_ATTRS:
        value = getattr(ds, name, None)
        if isinstance(value, (str, os.PathLike)) or (isinstance(value, (list, tuple, dict)) and value):
            source[name] = value
        elif name in ("source", "sources") and value is not None and " at 0x" not in repr(value):
            source[name] = repr(value)  # an object naming where the stream reads (its repr, no memory address)
    kwargs = getattr(getattr(ds, "_ex_iterable", None), "kwargs", None)  # Hugging Face IterableDataset
    if not source and isinstance(kwargs, dict):
        source.update({k: val for k, val in kwargs.items() if isinstance(val, (str, list, tuple, dict))})
    if not source:  # the dataset's own repr would not do: two streams of one class may print alike
        return Fingerprint(None, "unknown", "reference",
                           note="an iterable dataset with no files, shards, urls or repr naming its source")
    text = json.dumps({"class": qualname(ds), **source}, sort_keys=True, default=_text)
    return Fingerprint(hashlib.sha256(text.encode()).hexdigest(), "reference", "reference")


def _text(value: Any) -> str:
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except Exception:
        return None
