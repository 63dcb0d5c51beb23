"""What a run used and generated, recorded for PROV (and MLflow): artifacts, models, sub-activities
and extra entities. A part of :class:`~prov4ml_lightning.tracking.recorder.RunRecorder`, which
provides the state it fills in (``artifacts``, ``models``, ``activities``, ``extra_entities``,
``journal``, ``sink``) and :meth:`require_open`/:meth:`call_sink`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from prov4ml_lightning.errors import Prov4MLInputError, Prov4MLWarning, warn
from prov4ml_lightning.files import folder_files, listing_sha256, sha256_path
from prov4ml_lightning.records import ActivityRecord, ArtifactRecord, ModelRecord, RunInfo
from prov4ml_lightning.sinks.mlflow.rules import WEIGHTS_TAG_PREFIX
from prov4ml_lightning.tracking import validation as v
from prov4ml_lightning.tracking.journal import Journal

__all__ = ["LOOKUP_WAIT_S", "Lineage"]

log = logging.getLogger(__name__)

#: entities named per weights tag (a frozen backbone is held by every checkpoint): the first and last kept
HELD_MAX = 16

#: seconds the end of a run waits for the store's answer to where its initial weights came from
LOOKUP_WAIT_S = 30.0


class Lineage:
    """Artifacts, models, activities and entities of a run (mixed into ``RunRecorder``)."""

    run_id: str
    sink: Any
    journal: Journal
    provenance_dir: Path
    artifacts: list[ArtifactRecord]
    models: list[ModelRecord]
    earlier_models: Counter[str]
    earlier_artifacts: dict[tuple[str, str], tuple[str, str]]
    describe_model: Callable[[Any], Mapping[str, Any]]
    activities: dict[str, ActivityRecord]
    extra_entities: list[dict[str, Any]]
    invalidations: list[dict[str, Any]]
    info: RunInfo
    weights_held: dict[str, dict[str, list[list[Any]]]]
    weights_started: set[str]
    weight_groups: Callable[[str], Any]
    lookups: list[threading.Thread]
    flush: Callable[..., None]

    def require_open(self, call: str) -> None:
        raise NotImplementedError

    def call_sink(self, what: str, fn: Any, *args: Any) -> bool:
        raise NotImplementedError

    def before_end(self, fn: Callable[[Any, str], None]) -> None:
        raise NotImplementedError

    @property
    def ended(self) -> bool:
        raise NotImplementedError

    # -- artifacts and models -----------------------------------------------------------------
    def log_artifact(self, path: str | os.PathLike[str], context: Any = None, *,
                     artifact_path: str | None = None, kind: str = "artifact",
                     activity: str | None = None, attributes: Mapping[str, Any] | None = None,
                     derived_from: str | None = None, derived_from_kind: str | None = None, upload: bool = True,
                     call: str = "log_artifact", name: str | None = None) -> ArtifactRecord:
        self.require_open(call)
        ctx = None if context is None else v.check_context(context, call)
        p = Path(path)
        if not p.exists():
            raise Prov4MLInputError(f"{call}({str(path)!r}): no such file or folder")
        if artifact_path is not None:
            v.check_artifact_path(artifact_path, call)
        # a folder: its files listed once (links followed, loops and the provenance folder refused,
        # bounded) before anything is hashed, staged or uploaded
        try:
            digest, size = (listing_sha256(folder_files(p, call=f"{call}({str(path)!r})", refuse=self.provenance_dir))
                            if p.is_dir() else sha256_path(p))
        except OSError as err:
            raise Prov4MLInputError(f"{call}({str(path)!r}): cannot read it ({err.strerror or err})") from None
        base = name or p.name  # the PROV name; the file keeps its own name in MLflow
        # A local path as the record keeps it (a symbolic link, save_last="link", keeps its own path).
        local = os.path.abspath(p) if p.is_symlink() else str(p.resolve())
        name = self.fresh_name(kind, base, local, digest)
        uri = ""
        if upload and self.call_sink(f"upload artifact {p}", self.sink.log_artifact, self.run_id, str(p),
                                     artifact_path):
            uri = f"{artifact_path + '/' if artifact_path else ''}{p.name}"
        record = ArtifactRecord(
            name=name, local_path=local, artifact_uri=uri, sha256=digest, size_bytes=size,
            is_dir=p.is_dir(), context=ctx, created=time.time(), kind=kind, activity=activity,
            attributes=dict(attributes or {}), derived_from=derived_from, derived_from_kind=derived_from_kind,
        )
        record = self.add_artifact(record, artifact_path=artifact_path, upload=upload)
        self.index_weights(record.attributes.get("state_dict_sha256"), kind, record.name)
        return record

    def fresh_name(self, kind: str, base: str, local_path: str | None = None, sha256: str | None = None) -> str:
        """The PROV name for a new ``kind`` record of a file: ``base``, or ``base.2``, ``base.3``... when
        an artifact of this session, or of an earlier session of the run (a resume, or a fit that joined
        the run from its checkpoint), already has it: each file and each version of a file's content is
        an entity of its own, and no record replaces an earlier one. An earlier session's record of the
        same path and content keeps its name (the same entity)."""
        taken = {a.name for a in self.artifacts if a.kind == kind}
        earlier = {n: held for (k, n), held in self.earlier_artifacts.items() if k == kind}
        name, n = base, 1
        while name in taken or (name in earlier and earlier[name] != (str(local_path), str(sha256))):
            n += 1
            name = f"{base}.{n}"
        return name

    def add_artifact(self, record: ArtifactRecord, *, artifact_path: str | None = None,
                     upload: bool = False) -> ArtifactRecord:
        """Record an artifact already described (a merged rank's); nothing is uploaded."""
        self.artifacts.append(record)
        self.journal.write("artifact", record=record, artifact_path=artifact_path, upload=upload)
        return record

    def log_model(self, model: Any, model_name: str, log_model_info: bool = True, *, activity: str | None = None,
                  derived_from: Sequence[tuple[str, str]] = (), **mlflow_kwargs: Any) -> ModelRecord:
        """Log ``model``; its version counts the models of that name in every session of the run.

        ``activity`` names the sub-activity (a fit) that produced its weights; ``derived_from``
        lists ``(kind, name)`` of entities it was made from (entities holding the same weights
        are linked by the PROV builder, through ``state_dict_sha256``).
        """
        call = f"log_model(model, {model_name!r})"
        self.require_open(call)
        if not isinstance(model, torch.nn.Module):
            raise Prov4MLInputError(f"{call}: model must be a torch.nn.Module, got {type(model).__name__}")
        v.check_name(model_name, call, "model_name")
        version = 1 + self.earlier_models[model_name] + sum(1 for m in self.models if m.name == model_name)
        described = self.describe_model(model)
        # The weights' hash is the model's identity (it ties it to files holding the same weights):
        # recorded even without the size statistics.
        info = dict(described) if log_model_info else {k: described[k] for k in ("state_dict_sha256",)
                                                         if k in described}
        from prov4ml_lightning.sinks.mlflow.rules import default_serialization_format

        info["serialization_format"] = (mlflow_kwargs.get("serialization_format")
                                        or default_serialization_format(mlflow_kwargs.get("input_example")))
        created = time.time()
        uri, model_id = "", None
        # the points logged so far go to MLflow before the model: MLflow links the run's points at the model's
        # step to it when it logs it (otherwise the writer's next flush decides, by timing)
        self.flush(wait_for_mlflow=False)
        try:
            uri, model_id = self.sink.log_model(
                self.run_id, model, model_name,
                params={k: str(val) for k, val in info.items()} or None, **mlflow_kwargs,
            )
        except Exception as err:
            warn(f"{call}: MLflow could not store the model ({err!r}); PROV records it without a URI",
                 Prov4MLWarning)
        record = self.add_model(ModelRecord(model_name, version, uri, model_id, created, info, activity=activity,
                                            derived_from=[tuple(d) for d in derived_from]))
        self.index_weights(info.get("state_dict_sha256"), "model", model_name, f"v{version}")
        return record

    # -- weights across runs ---------------------------------------------------------------------
    def index_weights(self, digest: Any, kind: str, *name: str) -> None:
        """Make this run findable in its store by weights it produced: run tag
        ``prov4ml.weights.<digest>`` naming the entities that hold them (``kind`` and the parts of
        the entity's name: ``("model", "net", "v1")``), and one tag per group of their tensors
        (``model_info.tensor_groups``: a module's tensors, by content) naming the entities that hold
        that group, its prefix and size, so a run that loads only a part (a backbone) finds them
        (only by a run that recorded the weights it started from, ``weights_started``: the parts it
        left as they were are not its product; without that record only the whole weights are indexed);
        see ``sinks/mlflow/rules.WEIGHTS_TAG_PREFIX``. The tags are journalled too: ``prov4ml
        sync`` sets them on a run that was recorded offline."""
        if not isinstance(digest, str) or not digest:
            return
        ident: list[Any] = [kind, *name]
        changed = []
        held = self.weights_held.setdefault(digest, {"ids": [], "parts": []})
        if digest in self.weights_started:
            pass  # the weights it started from, unchanged: not its product (see below for the parts)
        elif ident not in held["ids"]:
            _append_bounded(held["ids"], ident)
            changed.append(digest)
        # The parts only of a run that recorded the weights it started from: without that record, a
        # part it left untouched (a frozen backbone of a seeded model) cannot be told from one it
        # produced, and offering it would link a later run of the same seed that loads nothing.
        grouped = self.weight_groups(digest) if self.weights_started else None
        if grouped is not None:
            groups, total = grouped
            for prefix, (group, n) in groups.items():
                if group in self.weights_started:
                    # a part this run started from and left as it was (a frozen backbone, a fresh
                    # part of a seeded model): not produced here, so not offered as this run's
                    continue
                entry = [prefix, n, total, *ident]
                held = self.weights_held.setdefault(group, {"ids": [], "parts": []})
                if entry not in held["parts"]:
                    _append_bounded(held["parts"], entry)
                    changed.append(group)
        if not changed:
            return
        tags = [(WEIGHTS_TAG_PREFIX + d, self._weights_tag(d)) for d in dict.fromkeys(changed)]
        self.journal.write("weights", tags=dict(tags))
        self.call_sink("tag the run with its weights' hashes", self.sink.set_tags, self.run_id, tags)

    def _weights_tag(self, digest: str) -> str:
        held = self.weights_held[digest]
        value = {"ns": self.info.namespace, "run": self.run_id,
                 **{k: held[k] for k in ("ids", "parts") if held[k]}}
        return json.dumps(value, separators=(",", ":"))

    def trace_weights(self, kind: str, name: str, digest: Any) -> None:
        """Ask the store (off this thread) which earlier runs produced weights of hash ``digest``,
        and record entity ``(kind, name)`` (initial weights, a loaded checkpoint) as derived from
        their entities holding them: an edge only where the hashes match. When no run holds them
        whole, the groups of their tensors are looked up (:meth:`_partial_sources`): an entity
        holding some of them (a backbone loaded into a new head) is a partial source. The run's
        end waits for the answer at most :data:`LOOKUP_WAIT_S` seconds."""
        if not isinstance(digest, str) or not digest:
            return
        grouped = self.weight_groups(digest)  # now: the tensors' hashes are kept for a few state dicts only
        self.weights_started.add(digest)
        if grouped is not None:
            self.weights_started.update(group for group, _n in grouped[0].values())
        if getattr(self.sink, "offline", False):
            return

        def look() -> None:
            try:
                found = self.sink.find_weights(digest)
                if any(f.get("run_id") == self.run_id for f in found):
                    # this run produced these weights itself (a resume from its own checkpoint): they came
                    # from here, whatever other run holds equal ones (same seed, same data): no such claim
                    return
                sources = [dict(f) for f in found if f.get("namespace") and f.get("ids")]
                if not sources and grouped is not None:
                    sources = self._partial_sources(*grouped)
            except Exception as err:  # the run goes on; the link is what is missing
                log.info("prov4ml: could not look up the runs that produced weights %s (%r)", digest[:12], err)
                return
            if sources and not self.ended:
                try:
                    self.update_entity(kind, name, {}, upstream=sources)
                except Exception as err:  # the run ended meanwhile
                    log.info("prov4ml: the origin of weights %s came too late (%r)", digest[:12], err)

        thread = threading.Thread(target=look, name="prov4ml-weights-lookup", daemon=True)
        thread.start()
        if not self.lookups:
            # only a run that ends well waits for the link: a failing one must reach its end at once
            # (in DDP, Lightning kills the other ranks moments after one raised)
            self.before_end(lambda run, status: self._wait_lookups() if status == "FINISHED" else None)
        self.lookups.append(thread)

    def _partial_sources(self, groups: Mapping[str, tuple[str, int]], total: int) -> list[dict[str, Any]]:
        """The entities of other runs holding some of these weights' tensor groups (``{prefix:
        (group hash, tensors)}``, shallowest first; a group found is not looked up again below), one
        source per entity with what matched: ``partial`` holds the prefixes on both sides, the
        tensors matched and the tensors each side has."""
        matched: list[str] = []
        out: dict[tuple[Any, ...], dict[str, Any]] = {}
        for prefix, (group, n) in groups.items():
            if any(m == "" or prefix == m or prefix.startswith(m + ".") for m in matched):
                continue
            hits = [f for f in self.sink.find_weights(group)
                    if f.get("namespace") and f.get("parts") and f.get("run_id") != self.run_id]
            if not hits:
                continue
            matched.append(prefix)
            for f in hits:
                for src_prefix, _src_n, of, *ident in f["parts"]:
                    key = (f["run_id"], f["namespace"], *ident)
                    source = out.setdefault(key, {
                        "run_id": f["run_id"], "namespace": f["namespace"], "ids": [list(ident)],
                        "provenance_file": f.get("provenance_file", ""),
                        "partial": {"tensors": 0, "source_tensors": of, "target_tensors": total,
                                    "source_prefixes": [], "target_prefixes": []}})
                    part = source["partial"]
                    if prefix not in part["target_prefixes"]:
                        part["tensors"] += n
                        part["target_prefixes"].append(prefix)
                    if src_prefix not in part["source_prefixes"]:
                        part["source_prefixes"].append(src_prefix)
        for source in out.values():
            part = source["partial"]
            part["partial"] = part["tensors"] < part["source_tensors"] or part["tensors"] < part["target_tensors"]
        return list(out.values())

    def _wait_lookups(self) -> None:
        deadline = time.monotonic() + LOOKUP_WAIT_S
        for thread in self.lookups:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                warn(f"prov4ml: the tracking store did not say within {LOOKUP_WAIT_S:g} s which run produced "
                     "this run's initial weights; they are recorded without that link", Prov4MLWarning)
                return

    def add_model(self, record: ModelRecord) -> ModelRecord:
        """Record a model already described (a merged rank's)."""
        self.models.append(record)
        self.journal.write("model", record=record)
        return record

    # -- activities and entities (used by the callback and the rank merge) ----------------------
    def start_activity(self, ident: str, kind: str, label: str, *, informed_by: str | None = None,
                       attributes: Mapping[str, Any] | None = None,
                       used: Sequence[tuple[str, str]] = (), part_of: str | None = None) -> ActivityRecord:
        """Start sub-activity ``ident``; ``used`` lists ``(kind, name)`` of entities it used;
        ``part_of`` the activity it is a part of and started by (default: this session).
        ``informed_by`` must name a true dependency: an activity that generated something this
        one uses (the previous epoch's weights), never a mere parent."""
        self.require_open(f"start_activity({ident!r})")
        record = ActivityRecord(ident, kind, label, time.time(), informed_by=informed_by,
                                attributes=dict(attributes or {}), used=list(used), part_of=part_of)
        self.activities[ident] = record
        self.journal.write("activity_start", record=record)
        return record

    def start_child(self, child: Any) -> None:
        """A run nested in this one opened (``nested=True``, however it was started): a ``ChildRun``
        activity of this run, named by the child's own run id (the id its own document gives it),
        with its MLflow run id and PROV file; part of ``children_part_of`` when set (a sweep's
        trial), else of this session."""
        info = child.info
        self.start_activity(
            f"child_{info.run_id}", "ChildRun", f"run {info.run_name}", part_of=getattr(self, "children_part_of", None),
            attributes={"run_id": info.run_id, "run_name": info.run_name, "experiment_name": info.experiment_name,
                        "prov_file": str(Path(info.provenance_dir) / f"provgraph_{info.run_id}.json")})

    def end_child(self, child: Any, status: str) -> None:
        """The nested run ``child`` ended with ``status``."""
        self.end_activity(f"child_{child.info.run_id}", {"status": status})

    def end_activity(self, ident: str, attributes: Mapping[str, Any] | None = None) -> None:
        record = self.activities.get(ident)
        if record is None or record.end_time is not None:
            return
        record.end_time = time.time()
        record.attributes.update(attributes or {})
        self.journal.write("activity_end", ident=ident, end_time=record.end_time, attributes=dict(attributes or {}),
                           used=list(record.used))

    def add_entity(self, kind: str, type_: str, name: str, attributes: Mapping[str, Any], *,
                   label: str | None = None, relation: str = "used", activity: str | None = None,
                   derived_from: Sequence[tuple[str, str]] = (), member_of: tuple[str, ...] | None = None,
                   members: Sequence[tuple[str, str]] = (), specializes: tuple[str, str] | None = None,
                   ends: str | None = None) -> None:
        """Record an extra entity (environment, code, dataset, ...) the run used or generated.

        ``activity`` names the sub-activity that used or generated it instead of the run;
        ``derived_from`` lists ``(kind, name)`` of entities it was derived from; ``member_of``
        is the id parts of a collection it belongs to (``("metric", context, key)``); ``members``
        the ``(kind, name)`` of the entities it holds (a collection); ``specializes`` the entity
        it is a more specific aspect of (PROV ``specializationOf``: a checkpoint as the chosen best);
        ``ends`` the activity whose end it triggered (PROV ``wasEndedBy``, with ``activity`` the ender).
        """
        self.require_open(f"add_entity({kind!r}, {name!r})")
        self.extra_entities.append({"kind": kind, "type": type_, "name": name, "label": label or name,
                                    "attributes": dict(attributes), "relation": relation,
                                    "time": time.time(), "activity": activity,
                                    "derived_from": [list(d) for d in derived_from],
                                    "member_of": list(member_of) if member_of else None,
                                    **({"members": [list(m) for m in members]} if members else {}),
                                    **({"specializes": list(specializes)} if specializes else {}),
                                    **({"ends": ends} if ends else {})})
        self.journal.write("entity", entity=self.extra_entities[-1])

    def invalidate_artifact(self, record: ArtifactRecord, activity: str | None, when: float | None = None) -> None:
        """``record``'s file was deleted or overwritten during ``activity`` (PROV ``wasInvalidatedBy``);
        journalled, so ``prov4ml recover`` has it too."""
        if record.invalidated_at is None:
            record.invalidated_by, record.invalidated_at = activity, when if when is not None else time.time()
            self.journal.write("invalidated", kind=record.kind, name=record.name, activity=activity,
                               at=record.invalidated_at)

    def invalidate_entity(self, kind: str, name: str, activity: str | None, when: float | None = None) -> None:
        """Entity ``(kind, name)`` that this session did not record as an artifact (a checkpoint an
        earlier session of the run saved, or one this session loaded) ceased to exist during
        ``activity``: its file was deleted or overwritten (PROV ``wasInvalidatedBy``). Once per
        entity; journalled."""
        if any(i["kind"] == kind and i["name"] == name for i in self.invalidations):
            return
        entry = {"kind": kind, "name": name, "activity": activity, "at": when if when is not None else time.time()}
        self.invalidations.append(entry)
        self.journal.write("invalidated", **entry)

    def use(self, ident: str, used: Sequence[tuple[str, str]]) -> None:
        """Running activity ``ident`` also used the entities ``used`` (``(kind, name)``), known only once
        it ran (the data a sanity check read); journalled with its end."""
        record = self.activities.get(ident)
        if record is not None and record.end_time is None:
            record.used.extend(u for u in used if u not in record.used)

    def update_entity(self, kind: str, name: str, attributes: Mapping[str, Any], *,
                      prov_name: str | None = None, upstream: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Restate attributes of the latest entity ``(kind, name)`` this session added (the best
        checkpoint is known only at the end, a dataset's fingerprint when its background hash
        ends); journalled, so ``prov4ml recover`` has them too. ``prov_name`` gives the entity
        another PROV name (a dataset named by its fingerprint): the builder applies it to the
        entity and to every reference to ``(kind, name)``. ``upstream`` lists entities of earlier
        runs it derives from (:meth:`trace_weights`). Safe from another thread."""
        for entity in reversed(self.extra_entities):
            if entity["kind"] == kind and entity["name"] == name:
                # a new dict, not an update in place: a reader iterating the old one is not disturbed
                entity["attributes"] = {**entity["attributes"], **attributes}
                if prov_name is not None:
                    entity["prov_name"] = prov_name
                extra: dict[str, Any] = {"prov_name": prov_name} if prov_name is not None else {}
                if upstream is not None:
                    entity["upstream"] = extra["upstream"] = [dict(u) for u in upstream]
                self.journal.write("entity_update", kind=kind, name=name, attributes=dict(attributes), **extra)
                return


def _append_bounded(held: list[list[Any]], entry: list[Any]) -> None:
    """Append ``entry``; past :data:`HELD_MAX` entries drop the middle one (the first and the latest
    holders stay named: a tag value has a size limit)."""
    held.append(entry)
    if len(held) > HELD_MAX:
        del held[HELD_MAX // 2]
