"""One run's dataset entities and their fingerprints, from declaration to the run's end.

A dataset entity records the dataset's class and length, the dataloader's batch size, workers,
sampler, ``shuffle`` and ``drop_last``, and a content fingerprint (:mod:`.fingerprint`: the methods,
and where each runs). :class:`RunDatasets` keeps one run's entities:

- The entity is added when the dataset is declared (the callback at the start of each loop,
  ``log_dataset`` when called), before the first batch. A fingerprint known at once (a hook, a
  Hugging Face fingerprint, a stream's reference) is in it from the start; otherwise it has
  ``fingerprint_status`` ``"pending"`` and the planned ``fingerprint_method``, and the result is
  written into it with :meth:`~prov4ml_lightning.tracking.lineage.Lineage.update_entity` when it
  comes: journalled at once (``entity_update``, so ``prov4ml recover`` rebuilds it) and sent to
  MLflow as the run's dataset input with the fingerprint as digest.
- The callback names its entities by content, ``<role><index>.<first 16 hex digits>``, so the
  same data read by several loops (or sessions) is one entity. A fingerprint that comes later gives
  the entity that name through the update (``prov_name``: the PROV builder applies it to the entity
  and to the loops that used it); until then it is ``<role><index>.<class name>``.
- When the run ends, :meth:`RunDatasets.finish` (a ``before_end`` hook) runs the deferred ``items``
  fingerprints and waits for the background ones (one that gets no CPU at its idle priority, as on
  a machine other processes keep busy, is done again on the ending thread), at most
  ``PROV4ML_FINGERPRINT_WAIT`` seconds (default 60; 10 for a failed run, 2 for a killed one, which
  reads no items). What is still missing then stays ``pending`` in the document, with one warning.
- A dataset whose content cannot be hashed gets ``fingerprint_status`` ``"unknown"`` and one
  :class:`~prov4ml_lightning.errors.Prov4MLWarning` naming it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prov4ml_lightning.capture.canonical import qualname
from prov4ml_lightning.capture.fingerprint import Fingerprint, Plan, plan
from prov4ml_lightning.errors import Prov4MLInputError, Prov4MLWarning, warn

if TYPE_CHECKING:
    from prov4ml_lightning.tracking.recorder import RunRecorder

__all__ = ["WAIT_ENV", "RunDatasets"]

log = logging.getLogger(__name__)

#: seconds the end of a run waits for fingerprints still being computed
WAIT_ENV = "PROV4ML_FINGERPRINT_WAIT"
_DEFAULT_WAIT_S = 60.0
_FAILED_WAIT_S = 10.0
_KILLED_WAIT_S = 2.0  # Ctrl-C, SIGTERM: the background hash of a large array, no more; items are not read
_STALL_S = 0.5  # a background hash that gets through no chunk or file in this long is taken over at the end


@dataclass(eq=False)
class _Work:
    """One dataset object's fingerprint, shared by the entities that declare it."""

    plan: Plan
    dataset: Any
    result: Fingerprint | None = None
    thread: threading.Thread | None = None
    entities: list[_Entity] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)  # the run's end took the work over
    ticks: int = 0  # chunks and files the background thread got through: is it moving?


@dataclass(eq=False)
class _Entity:
    name: str  # the record's name (what activities reference)
    base: str  # ``<role><index>`` for a name by content; the name itself otherwise
    by_content: bool
    attributes: dict[str, Any]
    mlflow_context: str
    work: _Work
    final: str = ""  # the PROV name once the fingerprint is known
    applied: bool = False


class RunDatasets:
    """The dataset entities of one run and their fingerprints (see the module docstring).

    Args:
        run: the recorder; :func:`~prov4ml_lightning.capture.datasets.datasets_of` makes one per run
            and hooks :meth:`finish` into its end.
    """

    def __init__(self, run: RunRecorder) -> None:
        self.run = run
        self._lock = threading.Lock()
        self._works: dict[int, _Work] = {}  # id(dataset) -> work; the work holds the dataset, so ids stay unique
        self._entities: dict[str, _Entity] = {}
        self._sent: set[str] = set()  # names sent to MLflow as dataset inputs
        self._warnings: list[str] = []
        self._closed = False

    # -- declaring ------------------------------------------------------------------------------
    def declare(self, name: str, label: str, attributes: Mapping[str, Any], dataset: Any, *, mlflow_context: str,
                by_content: bool, relation: str) -> str:
        """Add the entity of ``dataset`` and start its fingerprint; returns the entity's name.

        ``by_content``: ``name`` is ``<role><index>``, completed by the fingerprint's first 16
        hex digits (an entity of the same name already declared is reused). ``relation`` is
        ``add_entity``'s: ``"none"`` (the loops that list it use it) or ``"used"`` (by the session).
        """
        self.run.require_open(f"dataset {name!r}")
        work = self._work(dataset)
        with self._lock:
            fp = work.result
            if fp is not None:
                final = self._content_name(name, fp, dataset) if by_content else name
                if final in self._entities:
                    return final
                entity = _Entity(final, name, by_content, dict(attributes), mlflow_context, work, final, applied=True)
                record = {**attributes, **fp.attributes()}
            else:
                internal = self._unique(f"{name}.{type(dataset).__name__}") if by_content else name
                entity = _Entity(internal, name, by_content, dict(attributes), mlflow_context, work)
                record = {**attributes, "fingerprint_status": "pending", "fingerprint_method": work.plan.method}
                work.entities.append(entity)
            self.run.add_entity("dataset", "Dataset", entity.name, record, label=label, relation=relation)
            self._entities[entity.name] = entity
            inputs = self._inputs([entity], fp) if fp is not None else []
        self._send(inputs)
        if fp is not None and fp.status == "unknown":
            warn(_unknown_message(entity, fp), Prov4MLWarning)
        return entity.name

    def logged(self, name: str, dataset: Any, call: str) -> bool:
        """Whether ``name`` was logged with ``dataset`` already (a repeated ``log_dataset``).

        Raises:
            Prov4MLInputError: another dataset holds the name.
        """
        with self._lock:
            entity = self._entities.get(name)
        if entity is None:
            return False
        if entity.work.dataset is dataset:
            return True
        raise Prov4MLInputError(f"{call}: another dataset was logged as {name!r} in this run; give each dataset "
                                "its own name")

    def _work(self, dataset: Any) -> _Work:
        with self._lock:
            work = self._works.get(id(dataset))
            if work is not None:
                return work
        work = _Work(plan(dataset), dataset)  # outside the lock: a dataset's hook may take a moment
        with self._lock:
            if id(dataset) in self._works:
                return self._works[id(dataset)]
            self._works[id(dataset)] = work
            if work.plan.where == "ready":
                work.result = work.plan.result
            elif work.plan.where == "background":
                work.thread = threading.Thread(target=self._background, args=(work,), daemon=True,
                                               name="prov4ml-fingerprint")
                work.thread.start()
        return work

    def _unique(self, name: str) -> str:
        out, n = name, 1
        while out in self._entities:
            n += 1
            out = f"{name}.{n}"
        return out

    @staticmethod
    def _content_name(base: str, fp: Fingerprint, dataset: Any) -> str:
        return f"{base}.{fp.digest[:16]}" if fp.digest else f"{base}.{type(dataset).__name__}"

    # -- results ------------------------------------------------------------------------------
    def _background(self, work: _Work) -> None:
        _lowest_priority()

        def stop() -> bool:
            work.ticks += 1
            return work.cancel.is_set()

        try:
            fp = work.plan.run(stop=stop)
            if not work.cancel.is_set():
                self._complete(work, fp)
        except Exception:  # never let a recording failure surface in a thread nobody joins
            log.exception("prov4ml: could not record the fingerprint of a %s", qualname(work.dataset))

    def _complete(self, work: _Work, fp: Fingerprint) -> None:
        """Write ``fp`` into the entities of ``work`` (journalled), then send them to MLflow."""
        with self._lock:
            work.result = fp
            if self._closed:
                return
            todo = [e for e in work.entities if not e.applied]
            for entity in todo:
                entity.applied = True
                entity.final = self._content_name(entity.base, fp, work.dataset) if entity.by_content and fp.digest \
                    else entity.name
                self.run.update_entity("dataset", entity.name, fp.attributes(),
                                       prov_name=entity.final if entity.final != entity.name else None)
                if fp.status == "unknown":
                    self._warnings.append(_unknown_message(entity, fp))
            inputs = self._inputs(todo, fp)
        self._send(inputs)

    def _inputs(self, entities: list[_Entity], fp: Fingerprint | None) -> list[dict[str, Any]]:
        out = []
        for entity in entities:
            name = entity.final or entity.name
            if name not in self._sent:
                self._sent.add(name)
                out.append({"name": name, **entity.attributes, **(fp.attributes() if fp is not None else {}),
                            "role": entity.mlflow_context})
        return out

    def _send(self, inputs: list[dict[str, Any]]) -> None:
        if inputs:  # once per dataset and run, like the entity: the run page's "Datasets"
            self.run.call_sink("log dataset inputs", self.run.sink.log_dataset_inputs, self.run.run_id, inputs)

    def _wait_or_take_over(self, work: _Work, deadline: float) -> None:
        """Wait for a background hash while it moves; one that stands still (its idle priority gets no
        CPU: other processes keep them busy) is done again here, at this thread's priority."""
        thread = work.thread
        assert thread is not None
        while thread.is_alive() and time.monotonic() < deadline:
            ticks = work.ticks
            thread.join(min(_STALL_S, max(0.0, deadline - time.monotonic())))
            if thread.is_alive() and work.ticks == ticks:
                break
        if work.result is None and time.monotonic() < deadline:
            work.cancel.set()
            self._complete(work, work.plan.run(deadline))

    def finish(self, run: RunRecorder, status: str) -> None:
        """The run ends: run the deferred fingerprints here, wait for the others (bounded), mark
        what is still missing ``pending`` (one warning) and stop taking results."""
        deadline = time.monotonic() + _wait_seconds(status)
        with self._lock:
            works = list(self._works.values())
        for work in works:
            if work.result is not None:
                continue
            if work.plan.where == "deferred":
                if status != "KILLED" and time.monotonic() < deadline:
                    self._complete(work, work.plan.run(deadline))
            elif work.thread is not None:
                self._wait_or_take_over(work, deadline)
        with self._lock:
            self._closed = True
            late = [e for w in works for e in w.entities if not e.applied]
            for entity in late:
                entity.applied = True
                note = f"not finished when the run ended {status} ({WAIT_ENV})"
                self.run.update_entity("dataset", entity.name, {"fingerprint_status": "pending",
                                                                "fingerprint_note": note})
            inputs = self._inputs(late, None)
            messages, self._warnings = self._warnings, []
            cut = [e.name for w in works if w.result is not None and w.result.status == "pending" for e in w.entities]
            for work in works:  # the run is over: let go of the datasets (a thread still hashing keeps its own)
                work.dataset = None
            self._works = {}
        self._send(inputs)
        if late or cut:
            names = ", ".join([*(e.name for e in late), *cut])
            messages.append(f"prov4ml: the fingerprint of {names} was not ready when the run ended; recorded with "
                            f"fingerprint_status 'pending' (set {WAIT_ENV} to wait longer)")
        for message in messages:
            warn(message, Prov4MLWarning)


def _unknown_message(entity: _Entity, fp: Fingerprint) -> str:
    what = entity.attributes.get("dataset_class", "dataset")
    why = (f"it holds objects of {', '.join(fp.unhashable)}, whose content cannot be hashed" if fp.unhashable
           else f"reading it raised {fp.error}" if fp.error else fp.note or "its content could not be read")
    return (f"dataset {entity.name} ({what}) has no content fingerprint: {why}; it is recorded with "
            "fingerprint_status 'unknown' (give the items a __prov4ml_bytes__() method, or the dataset a "
            "prov4ml_fingerprint() method)")


def _wait_seconds(status: str) -> float:
    try:
        wait = max(0.0, float(os.environ.get(WAIT_ENV, _DEFAULT_WAIT_S)))
    except ValueError:
        wait = _DEFAULT_WAIT_S
    return wait if status == "FINISHED" else min(wait, _FAILED_WAIT_S if status == "FAILED" else _KILLED_WAIT_S)


def _lowest_priority() -> None:
    """Let this thread run only on CPU time nothing else wants (Linux schedules each thread on its own:
    ``SCHED_IDLE``, else ``nice`` 19), so the training's threads win whenever they want a CPU; once
    training stops (the run's end waits for the hash) the CPUs are free and it runs at full speed."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, 19)
        except OSError as err:
            log.debug("prov4ml: could not lower the fingerprint thread's priority (%s)", err)
