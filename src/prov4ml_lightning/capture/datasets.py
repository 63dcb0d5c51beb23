"""The datasets a run reads: a trainer's dataloaders (:func:`declare_loader`, the callback) and
``prov4ml.log_dataset`` (:func:`log_dataset`), described (class, length, the dataloader's settings)
and handed to the run's :class:`~prov4ml_lightning.capture.dataset_records.RunDatasets`, which adds
the entity at once and its content fingerprint (:mod:`.fingerprint`) when that is known.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from prov4ml_lightning.capture.canonical import qualname
from prov4ml_lightning.capture.dataset_records import RunDatasets
from prov4ml_lightning.errors import Prov4MLInputError
from prov4ml_lightning.tracking import validation as v

if TYPE_CHECKING:
    from prov4ml_lightning.tracking.recorder import RunRecorder

__all__ = ["DatasetInfo", "datasets_of", "declare_loader", "describe_dataloader", "flatten_dataloaders",
           "loader_attributes", "log_dataset"]

_NAME_MAX = 250


@dataclass(frozen=True)
class DatasetInfo:
    """What is recorded about one dataloader's dataset, before its fingerprint."""

    label: str
    attributes: dict[str, Any]
    dataset: Any


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


def loader_attributes(loader: Any) -> dict[str, Any]:
    """A dataloader's settings: ``batch_size``, ``num_workers``, ``sampler``, ``shuffle``, ``drop_last``."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    sampler = getattr(loader, "sampler", None)
    batch_size = getattr(loader, "batch_size", None)
    if batch_size is None:
        batch_size = getattr(batch_sampler, "batch_size", None)
    return {
        "batch_size": batch_size,
        "num_workers": getattr(loader, "num_workers", None),
        "sampler": qualname(sampler) if sampler is not None else None,
        "shuffle": _is_shuffled(sampler),
        "drop_last": getattr(loader, "drop_last", getattr(batch_sampler, "drop_last", None)),
    }


def describe_dataloader(loader: Any, role: str, index: int) -> DatasetInfo:
    """The dataset entity of ``loader`` used in ``role`` (``train``, ``val``, ``test``, ``predict``)."""
    dataset = getattr(loader, "dataset", None)
    target = dataset if dataset is not None else loader
    length = _length(target)
    attributes = {"role": role, "dataloader_index": index, "dataset_class": qualname(target), "length": length,
                  **loader_attributes(loader)}
    label = f"{role} data {index}: {type(target).__name__}" + (f" ({length})" if length is not None else "")
    return DatasetInfo(label, _present(attributes), target)


def declare_loader(run: RunRecorder, loader: Any, role: str, index: int) -> str:
    """Declare the dataset of a trainer's dataloader in ``run`` (used by the loops that list it); the
    entity's name (by content: ``<role><index>.<fingerprint prefix>``)."""
    info = describe_dataloader(loader, role, index)
    return datasets_of(run).declare(f"{role}{index}", info.label, info.attributes, info.dataset,
                                    mlflow_context=role, by_content=True, relation="none")


_runs_lock = threading.Lock()
_runs: weakref.WeakKeyDictionary[Any, RunDatasets] = weakref.WeakKeyDictionary()


def datasets_of(run: RunRecorder) -> RunDatasets:
    """The dataset entities of ``run`` (created on first use; finished when the run ends)."""
    with _runs_lock:
        found = _runs.get(run)
        if found is None:
            found = _runs[run] = RunDatasets(run)
            run.before_end(found.finish)
        return found


def log_dataset(run: RunRecorder | None, name: Any, data: Any, context: Any, *, call: str = "log_dataset") -> None:
    """``prov4ml.log_dataset``: check the arguments, then (``run`` a recorder) record the dataset,
    used by the session, and its MLflow dataset input.

    Raises:
        Prov4MLInputError: a bad name, context or dataset.
    """
    call = f"{call}({name!r})"
    if not isinstance(name, str) or not name.strip():
        raise Prov4MLInputError(f"{call}: name must be a non-empty string, got {name!r}")
    if len(name) > _NAME_MAX:
        raise Prov4MLInputError(f"{call}: name must be at most {_NAME_MAX} characters")
    ctx = v.check_context(context, call)
    loader = data if isinstance(data, torch.utils.data.DataLoader) else None
    dataset = loader.dataset if loader is not None else data
    if (dataset is None or isinstance(dataset, (str, bytes, bytearray, Mapping, int, float, bool))
            or not (hasattr(dataset, "__getitem__") or hasattr(dataset, "__iter__"))):
        raise Prov4MLInputError(f"{call}: expected a dataset (a torch Dataset, a DataLoader, an array, a list of "
                                f"samples), got {type(dataset).__name__}")
    if run is None:
        return
    tracker = datasets_of(run)
    if tracker.logged(name, dataset, call):
        return
    length = _length(dataset)
    attributes = {"name": name, "context": ctx.value, "dataset_class": qualname(dataset), "length": length,
                  **(loader_attributes(loader) if loader is not None else {})}
    label = f"{name}: {type(dataset).__name__}" + (f" ({length})" if length is not None else "")
    tracker.declare(name, label, _present(attributes), dataset, mlflow_context=ctx.value, by_content=False,
                    relation="used")


def _present(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: val for k, val in attributes.items() if val is not None}


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except Exception:
        return None


def _is_shuffled(sampler: Any) -> bool | None:
    if sampler is None:
        return None
    if isinstance(sampler, torch.utils.data.RandomSampler):
        return True
    if isinstance(sampler, torch.utils.data.SequentialSampler):
        return False
    shuffle = getattr(sampler, "shuffle", None)  # DistributedSampler
    return shuffle if isinstance(shuffle, bool) else None
