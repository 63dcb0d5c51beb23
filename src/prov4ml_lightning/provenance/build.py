"""Records -> :class:`prov.model.ProvDocument`: the PROV model of a run (docs/provenance-model.md).

The builder's core lives here (the run, its activities, parameters, metric series, artifacts, models
and extra entities); :mod:`.sessions` adds the session and who and what it ran with, :mod:`.merge`
carries an earlier session's records over, :mod:`.values` turns plain values into PROV ones.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prov.constants import PROV_INVALIDATION, PROV_LABEL, PROV_LOCATION, PROV_ROLE, PROV_TYPE, PROV_VALUE
from prov.model import ProvDocument

from prov4ml_lightning.provenance.merge import merge_previous
from prov4ml_lightning.provenance.sessions import SessionRecords
from prov4ml_lightning.provenance.values import local_id, location, prov_time, typed, visible
from prov4ml_lightning.provenance.vocab import MLS_NS, P4L_NS, PROVML_NS, USER_PREFIX
from prov4ml_lightning.records import ActivityRecord, ArtifactRecord, MetricSeries, ModelRecord, RunInfo

__all__ = ["RunSnapshot", "build_document", "local_id", "merge_previous", "typed"]


@dataclass
class RunSnapshot:
    """Everything the recorder knows about a run at one moment."""

    info: RunInfo
    params: Mapping[str, Any]
    series: Iterable[MetricSeries]
    artifacts: Iterable[ArtifactRecord]
    models: Iterable[ModelRecord]
    activities: Iterable[ActivityRecord]
    software_version: str
    metrics_file: str | None = None
    extra_entities: list[dict[str, Any]] = field(default_factory=list)
    #: from ``capture.RunContext.for_prov()``: ``code`` and ``environment`` attributes, ``run``
    #: attributes (the seed) of the run activity.
    context: Mapping[str, Any] | None = None
    #: PROV-JSON text of the run's document as an earlier session wrote it (a reopened run:
    #: resumed training, or validate/test after fit); its records are carried over.
    previous_document: str | None = None
    #: ``{"metrics" | "diff" | "packages": {"path", "sha256", "size_bytes"}}`` of the side files
    side_files: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: ``{"kind", "name", "activity", "at"}``: entities this session did not record as artifacts (an
    #: earlier session's checkpoint, one it loaded) whose file was deleted or overwritten during ``activity``
    invalidations: list[dict[str, Any]] = field(default_factory=list)


class _Builder(SessionRecords):
    def __init__(self, snap: RunSnapshot) -> None:
        self.snap = snap
        self.doc = ProvDocument()
        self.user = self.doc.add_namespace(USER_PREFIX, snap.info.namespace)
        self.p4l = self.doc.add_namespace("p4l", P4L_NS)
        self.provml = self.doc.add_namespace("provml", PROVML_NS)
        self.mls = self.doc.add_namespace("mls", MLS_NS)
        self.run_local = f"run_{snap.info.run_id}"
        self.spans = {act.ident: (act.start_time, act.end_time) for act in snap.activities}
        self.previous = (ProvDocument.deserialize(content=snap.previous_document, format="json")
                         if snap.previous_document else None)
        # Identifiers a relation may point at besides this session's records: the earlier session's.
        self.earlier = {r.identifier for r in self.previous.get_records() if r.is_element()} if self.previous else set()
        # An extra entity may have been renamed after it was recorded (a dataset named by a fingerprint that
        # came later: ``update_entity(prov_name=...)``); references to the old name follow it.
        self.renamed = {(e["kind"], e["name"]): e["prov_name"] for e in snap.extra_entities if e.get("prov_name")}
        self.extras = {(e["kind"], self.ref(e["kind"], e.get("name", e["kind"]))) for e in snap.extra_entities}
        self.renamed_ids = {self.rid(kind, name) for (kind, _), name in self.renamed.items()}
        self.built_extras: set[Any] = set()
        self.artifact_ids = {self.rid(a.kind, a.name) for a in snap.artifacts}

    def ref(self, kind: str, name: str) -> str:
        """The PROV name of the entity recorded as ``(kind, name)``."""
        return self.renamed.get((kind, name), name)

    def rid(self, *parts: str) -> Any:
        return self.user[".".join([self.run_local, *(local_id(p) for p in parts)])]

    def attrs(self, mapping: Mapping[str, Any]) -> list[tuple[Any, Any]]:
        return [(self.p4l[local_id(k)], typed(v)) for k, v in mapping.items() if v is not None]

    def build(self) -> ProvDocument:
        info = self.snap.info
        run_attrs: list[tuple[Any, Any]] = [
            (PROV_TYPE, self.provml["LearningStageExecution"]),
            (PROV_TYPE, self.p4l["Run"]),
            (PROV_LABEL, typed(info.run_name)),
            *self.attrs(
                {
                    "run_id": info.run_id,
                    "run_name": info.run_name,
                    "experiment_name": info.experiment_name,
                    "experiment_id": info.experiment_id or None,  # unknown: offline, or MLflow not done yet
                    "status": info.status,
                    "tracking_uri": info.tracking_uri,
                    "description": info.description,
                    "metrics_file": self.snap.metrics_file,
                }
            ),
            *[(self.p4l[f"tag_{local_id(k)}"], typed(v)) for k, v in info.tags.items()],
            *self.attrs((self.snap.context or {}).get("run", {})),
        ]
        run = self.doc.activity(self.user[self.run_local], prov_time(info.start_time), prov_time(info.end_time),
                                run_attrs)
        session = self.add_session(run)

        person = self.add_person(run)
        software = self.doc.agent(
            self.p4l[f"prov4ml-lightning_{local_id(self.snap.software_version)}"],
            [
                (PROV_TYPE, self.doc.valid_qualified_name("prov:SoftwareAgent")),
                (PROV_LABEL, f"prov4ml-lightning {self.snap.software_version}"),
                (self.p4l["version"], self.snap.software_version),
            ],
        )
        code = self.add_context(session)
        # Every association carries a role: besides naming what each agent did, it keeps all of
        # them qualified, since prov 3.2.3's PROV-O reader pairs a plan with the wrong agent when
        # qualified and unqualified associations of one activity are mixed.
        self.doc.wasAssociatedWith(run, person, other_attributes=[(PROV_ROLE, self.p4l["experimenter"])])
        self.doc.wasAssociatedWith(session, person, code, other_attributes=[(PROV_ROLE, self.p4l["experimenter"])])
        self.doc.wasAssociatedWith(session, software, other_attributes=[(PROV_ROLE, self.p4l["provenanceRecorder"])])
        self.doc.actedOnBehalfOf(software, person, session)

        if info.parent_run_id:
            # declared here (no times: they belong to the parent's own document) so that every
            # relation of this document points at a declared record
            parent = self.doc.activity(self.user[f"run_{info.parent_run_id}"], None, None, [
                (PROV_TYPE, self.p4l["ParentRun"]), (self.p4l["run_id"], info.parent_run_id)])
            self.doc.wasInformedBy(run, parent)
            self.doc.wasStartedBy(run, None, parent, prov_time(info.start_time))

        # the first epoch of each fit trains from what the fit set up (weights, optimizer, code)
        firsts: dict[str, ActivityRecord] = {}
        for act in self.snap.activities:
            if act.kind == "TrainingEpoch" and act.part_of and (
                    act.part_of not in firsts or act.start_time < firsts[act.part_of].start_time):
                firsts[act.part_of] = act
        self.first_epochs = {act.ident for act in firsts.values()}
        activities = {}
        for act in self.snap.activities:
            activities[act.ident] = self._activity(session, act)

        # A parameter is used by the activities that list it (a Lightning fit); one nothing lists
        # (the functional API's log_param) by the session that logged it, at its start.
        listed = {name for act in self.snap.activities for kind, name in act.used if kind == "param"}
        for key, value in self.snap.params.items():
            ent = self.doc.entity(
                self.rid("param", key),
                [
                    (PROV_TYPE, self.p4l["Parameter"]),
                    (PROV_TYPE, self.mls["HyperParameterSetting"]),
                    (PROV_LABEL, visible(key, name=True)),
                    (self.p4l["name"], visible(key, name=True)),
                    # no value, not the text "None"
                    *([] if value is None else [(PROV_VALUE, typed(value)), (self.mls["hasValue"], typed(value))]),
                ],
            )
            if key not in listed:
                self.doc.used(session, ent, prov_time(self.session_span[0]))

        for series in self.snap.series:
            self._series(session, activities, series)
        for art in self.snap.artifacts:
            self._artifact(session, activities, art)
        previous: dict[str, Any] = {}
        for model in self.snap.models:
            ent = self.doc.entity(
                self.rid("model", model.name, f"v{model.version}"),
                [
                    (PROV_TYPE, self.p4l["Model"]),
                    (PROV_TYPE, self.mls["Model"]),
                    *([(PROV_LOCATION, location(self.doc, model.model_uri))] if model.model_uri else []),
                    (PROV_LABEL, typed(f"{model.name} v{model.version}")),
                    *self.attrs(
                        {"name": model.name, "version": model.version, "model_uri": model.model_uri,
                         "model_id": model.model_id, **model.info}
                    ),
                ],
            )
            # generated by the fit that produced its weights (the session for the functional API)
            in_activity = model.activity if model.activity in activities else None
            self.doc.wasGeneratedBy(ent, activities[in_activity] if in_activity else session,
                                    self.when(model.created, in_activity))
            for kind, name in model.derived_from:
                if self.declared(kind, name):
                    self.doc.wasDerivedFrom(ent, self.rid(kind, name))
            if model.name in previous:
                self.doc.wasRevisionOf(ent, previous[model.name])
            previous[model.name] = ent
        for extra in self.snap.extra_entities:
            self._extra(session, activities, extra)
        self._invalidations(session, activities)
        self._same_weights()
        if self.previous is not None:
            merge_previous(self.doc, self.previous)
        return self.doc


    def declared(self, kind: str, name: str) -> bool:
        """Whether entity ``(kind, name)`` is in this document (an artifact, parameter or extra
        entity) or the earlier one."""
        return ((kind, name) in self.extras or any(a.kind == kind and a.name == name for a in self.snap.artifacts)
                or (kind == "param" and name in self.snap.params) or self.rid(kind, name) in self.earlier)



    def _invalidations(self, session: Any, activities: Mapping[str, Any]) -> None:
        """``wasInvalidatedBy`` of entities recorded elsewhere (an earlier session's checkpoint, a
        loaded one) whose file this session deleted or overwrote; at most one per entity, counting
        the earlier session's."""
        done = {r.formal_attributes[0][1] for doc in (self.doc, self.previous) if doc is not None
                for r in doc.get_records() if r.get_type() == PROV_INVALIDATION}
        for entry in self.snap.invalidations:
            name = self.ref(entry["kind"], entry["name"])
            ident = self.rid(entry["kind"], name)
            if ident in done or not self.declared(entry["kind"], name):
                continue
            done.add(ident)
            by = entry.get("activity") if entry.get("activity") in activities else None
            self.doc.wasInvalidatedBy(ident, activities[by] if by else session, self.when(entry.get("at"), by))

    def _same_weights(self) -> None:
        """``alternateOf`` between entities holding the same weights (equal ``state_dict_sha256``:
        a logged model, its saved version, a checkpoint, a fit's initial weights): two aspects of
        one thing, not one made from the other. Each holder points at the group's first (an earlier
        session's first); PROV's alternateOf is symmetric and transitive, so that links them all.
        Pairs the earlier document already holds are left to it."""
        key = self.p4l["state_dict_sha256"]
        earlier = [r for r in self.previous.get_records() if r.is_element()] if self.previous else []
        digests: dict[Any, str] = {}  # identifier -> hash; earlier sessions' holders first
        for record in [*earlier, *(r for r in self.doc.get_records() if r.is_element())]:
            value = next(iter(record.get_attribute(key)), None)
            if value is not None:
                digests.setdefault(record.identifier, str(value))
        groups: dict[str, list[Any]] = {}
        for ident, digest in digests.items():
            groups.setdefault(digest, []).append(ident)
        for first, *others in groups.values():
            for other in others:
                if not (first in self.earlier and other in self.earlier):
                    self.doc.alternateOf(other, first)

    def _activity(self, session: Any, act: ActivityRecord) -> Any:
        types = [(PROV_TYPE, self.p4l[act.kind])]
        provml_type = _PROVML_ACTIVITY_TYPES.get(act.kind)
        if provml_type:
            types.append((PROV_TYPE, self.provml[provml_type]))
        # Part-of is structure, not dependency: an attribute, and the start trigger (the parent
        # loop, or the session, did start it). wasInformedBy only where data flowed.
        parent = (self.rid(act.part_of) if act.part_of and (act.part_of in self.spans
                                                            or self.rid(act.part_of) in self.earlier)
                  else self.session_id)
        # a nested run keeps the id its own document gives it (run_<id>), so the two documents meet
        ident = (self.user[f"run_{act.attributes['run_id']}"] if act.kind == "ChildRun" and act.attributes.get("run_id")
                 else self.rid(act.ident))
        node = self.doc.activity(
            ident, prov_time(act.start_time), prov_time(act.end_time),
            [*types, (PROV_LABEL, typed(act.label)), (self.p4l["partOf"], parent), *self.attrs(act.attributes)],
        )
        self.doc.wasStartedBy(node, None, parent, prov_time(act.start_time))
        if parent == self.session_id:  # a fit or stand-alone stage runs the session's code, in its environment
            for ent in self.session_inputs:
                self.doc.used(node, ent, prov_time(act.start_time))
        elif act.ident in self.first_epochs:
            self.doc.wasInformedBy(node, parent)
        if act.informed_by in self.spans or (act.informed_by and self.rid(act.informed_by) in self.earlier):
            self.doc.wasInformedBy(node, self.rid(act.informed_by))
        # datasets, parameters, checkpoints it read when it started (once each: two records may name one entity)
        for kind, name in dict.fromkeys((kind, self.ref(kind, name)) for kind, name in act.used):
            if self.declared(kind, name):
                self.doc.used(node, self.rid(kind, name), prov_time(act.start_time))
        return node

    def _series(self, session: Any, activities: Mapping[str, Any], s: MetricSeries) -> None:
        ent = self.doc.entity(
            self.rid("metric", s.context.value, s.name),
            [
                (PROV_TYPE, self.p4l["MetricSeries"]),
                (PROV_TYPE, self.doc.valid_qualified_name("prov:Collection")),
                (PROV_LABEL, f"{visible(s.name, name=True)} ({s.context.value})"),
                *([(self.p4l["pointsIn"], self.rid("metrics_file" if self.session_no == 1
                                                   else f"metrics_file.session_{self.session_no}"))]
                  if self.snap.metrics_file else []),
                *self.attrs(
                    {
                        "name": visible(s.name, name=True),
                        "context": s.context.value,
                        "mlflow_key": s.mlflow_key,
                        "count": s.count,
                        "first_step": s.first_step,
                        "last_step": s.last_step,
                        "min_value": s.min_value if s.count > s.non_finite else None,
                        "max_value": s.max_value if s.count > s.non_finite else None,
                        "last_value": s.last_value,
                        "non_finite_count": s.non_finite,
                        "series_file": self.snap.metrics_file,
                        "first_point_time": prov_time(s.first_time),
                        "last_point_time": prov_time(s.last_time),
                    }
                ),
            ],
        )
        generator = activities.get(s.activity or "", session)
        self.doc.wasGeneratedBy(ent, generator,
                                self.when(s.last_time, s.activity if generator is not session else None))

    def _artifact(self, session: Any, activities: Mapping[str, Any], a: ArtifactRecord) -> None:
        ent = self.doc.entity(
            self.rid(a.kind, a.name),
            [
                (PROV_TYPE, self.p4l[a.kind.capitalize()]),
                (PROV_LABEL, typed(a.name)),
                (PROV_LOCATION, location(self.doc, Path(a.local_path).as_uri())),
                *self.attrs(
                    {
                        "path": a.local_path,
                        "artifact_uri": a.artifact_uri or None,  # omitted when not uploaded
                        "sha256": a.sha256,
                        "size_bytes": a.size_bytes,
                        "is_directory": a.is_dir,
                        "context": a.context.value if a.context else None,
                        **a.attributes,
                    }
                ),
            ],
        )
        in_activity = a.activity if a.activity in activities else None
        self.doc.wasGeneratedBy(ent, activities.get(a.activity or "", session), self.when(a.created, in_activity))
        source_kind = a.derived_from_kind or a.kind
        if a.derived_from and self.declared(source_kind, a.derived_from):
            self.doc.wasDerivedFrom(ent, self.rid(source_kind, a.derived_from))
        if a.invalidated_at is not None:
            by = a.invalidated_by if a.invalidated_by in activities else None
            self.doc.wasInvalidatedBy(ent, activities[by] if by else session, self.when(a.invalidated_at, by))

    def _extra(self, session: Any, activities: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
        attributes = dict(extra.get("attributes", {}))
        types = [(PROV_TYPE, self.p4l[extra["type"]])]
        if extra["type"] == "Parameter":  # a fit's own value of a hyperparameter (see RunLink.fit_params)
            value = attributes.pop("value", None)
            types += [(PROV_TYPE, self.mls["HyperParameterSetting"])]
            if value is not None:
                types += [(PROV_VALUE, typed(value)), (self.mls["hasValue"], typed(value))]
        elif extra["type"] == "Dataset":
            types.append((PROV_TYPE, self.mls["Dataset"]))
        if extra.get("members"):
            types.append((PROV_TYPE, self.doc.valid_qualified_name("prov:Collection")))
        if attributes.get("path") and extra["type"] in ("Checkpoint",):
            types.append((PROV_LOCATION, location(self.doc, Path(attributes["path"]).as_uri())))
        ident = self.rid(extra["kind"], self.ref(extra["kind"], extra.get("name", extra["kind"])))
        if ident in self.built_extras and ident in self.renamed_ids:
            return  # the same data declared twice (two dataloaders over one dataset): one entity
        self.built_extras.add(ident)
        if ident in self.artifact_ids:
            # a file this document holds as an artifact, recorded again as read (a checkpoint the resume
            # loaded, when recover rebuilds every session from the journal): one entity, the artifact's
            ent = ident
        else:
            label = typed(extra.get("label", extra["kind"]))
            ent = self.doc.entity(ident, [*types, (PROV_LABEL, label), *self.attrs(attributes)])
        # ``activity``: the sub-activity (epoch, loop, fit) that used or generated it; default the session.
        activity = extra.get("activity") if extra.get("activity") in activities else None
        node = activities[activity] if activity else session
        relation = extra.get("relation", "used")
        if relation == "used":
            when = self.when(extra.get("time"), activity) if activity else prov_time(self.session_span[0])
            self.doc.used(node, ent, when)
        elif relation == "generated":
            self.doc.wasGeneratedBy(ent, node, self.when(extra.get("time"), activity))
        # relation None: declared only (a dataset, read by the loops that list it), or attributes
        # for an entity an earlier session defined (merged by id)
        for kind, name in extra.get("derived_from") or ():
            if self.declared(kind, name):
                self.doc.wasDerivedFrom(ent, self.rid(kind, name))
        for kind, name in extra.get("members") or ():  # a collection (the checkpoints a top-k kept)
            if self.declared(kind, self.ref(kind, name)):
                self.doc.hadMember(ent, self.rid(kind, self.ref(kind, name)))
        if extra.get("specializes") and self.declared(*extra["specializes"]):  # a checkpoint as the chosen best
            self.doc.specializationOf(ent, self.rid(*extra["specializes"]))
        ends = extra.get("ends")  # the decision that ended an activity (EarlyStopping's: the fit)
        if ends in activities and relation == "generated":
            self.doc.wasEndedBy(activities[ends], ent, node, prov_time(self.spans.get(ends, (None, None))[1]))
        for source in extra.get("upstream") or ():  # entities of earlier runs holding the same weights
            part = source.get("partial")  # or some of their tensors: a qualified derivation saying which
            attributes = None if not isinstance(part, Mapping) else self.attrs({
                "partial": bool(part.get("partial", True)), "tensors_matched": part.get("tensors"),
                "source_tensors": part.get("source_tensors"), "target_tensors": part.get("target_tensors"),
                "source_prefixes": ", ".join(p or "(all)" for p in part.get("source_prefixes") or ()),
                "target_prefixes": ", ".join(p or "(all)" for p in part.get("target_prefixes") or ())})
            for held in source.get("ids") or ():
                self.doc.wasDerivedFrom(ent, self._earlier_run_entity(source, held), other_attributes=attributes)
        member_of = extra.get("member_of")  # e.g. a metric segment is a member of its series
        if member_of and (self.rid(*member_of) in self.earlier or any(
                ("metric", s.context.value, s.name) == tuple(member_of) for s in self.snap.series)):
            self.doc.hadMember(self.rid(*member_of), ent)

    def _earlier_run_entity(self, source: Mapping[str, Any], held: Sequence[str]) -> Any:
        """Declare (once) the entity of another run holding the weights an entity of this run
        started from (``tracking/lineage.trace_weights``): its id in that run's namespace, as that
        run's own document names it, with the run id and PROV file as attributes."""
        uri = str(source["namespace"])
        ns = self.user if uri == self.user.uri else next(
            (n for n in self.doc.get_registered_namespaces() if n.uri == uri), None)
        if ns is None:
            ns = self.doc.add_namespace(f"run{len(self.doc.get_registered_namespaces())}", uri)
        ident = ns[".".join([f"run_{source['run_id']}", *(local_id(str(p)) for p in held)])]
        if ident not in self.built_extras:
            self.built_extras.add(ident)
            kind = str(held[0])
            self.doc.entity(ident, [
                (PROV_TYPE, self.p4l["EarlierRunWeights"]),
                (PROV_LABEL, f"{kind} {'/'.join(map(str, held[1:]))} of run {source['run_id']}"),
                *self.attrs({"run_id": source["run_id"], "kind": kind,
                             "provenance_file": source.get("provenance_file") or None}),
            ])
        return ident

    def when(self, t: float | None, activity: str | None) -> dt.datetime | None:
        """A generation time moved into the generating activity's interval (the session's when
        ``activity`` is None): metric timestamps have millisecond resolution and may be given
        by the user, and PROV requires generation within the activity. Raw times are kept as
        attributes where they matter (a metric series' ``first_point_time``/``last_point_time``)."""
        if t is None:
            return None
        start, end = self.spans.get(activity, (None, None)) if activity else self.session_span
        if start is not None and t < start:
            t = start
        if end is not None and t > end:
            t = end
        return prov_time(t)


_PROVML_ACTIVITY_TYPES = {
    "TrainingEpoch": "TrainingExecution",
    "ValidationLoop": "ValidationExecution",
    "TestLoop": "EvaluationExecution",
    "Fit": "TrainingExecution",
}


def build_document(snapshot: RunSnapshot) -> ProvDocument:
    """Build the PROV document of one run."""
    return _Builder(snapshot).build()


