"""Records -> :class:`prov.model.ProvDocument`: the PROV model of a run (docs/provenance-model.md),
and the merge of an earlier session's document into a reopened run's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prov.constants import (
    PROV_ATTR_TIME,
    PROV_GENERATION,
    PROV_LABEL,
    PROV_LOCATION,
    PROV_ROLE,
    PROV_TYPE,
    PROV_VALUE,
    XSD_ANYURI,
)
from prov.model import Literal, ProvDocument, ProvRecord

from prov4ml_lightning.provenance.vocab import FOAF_NS, MLS_NS, ORCID_NS, P4L_NS, PROVML_NS, USER_PREFIX
from prov4ml_lightning.records import ActivityRecord, ArtifactRecord, MetricSeries, ModelRecord, RunInfo

__all__ = ["RunSnapshot", "build_document", "local_id", "merge_previous", "typed"]

_LOCAL_OK = re.compile(r"[^A-Za-z0-9_.\-]")


def local_id(text: str) -> str:
    """A PROV-N-safe local name for ``text``; changed names get a hash suffix so they stay unique."""
    safe = _LOCAL_OK.sub("_", text)
    if safe != text or len(safe) > 120:
        safe = f"{safe[:100]}_{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return safe


def _time(seconds: float | None) -> dt.datetime | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)


def typed(value: Any) -> Any:
    """A PROV attribute value: ``prov`` types ints, floats (NaN/INF included), bools and datetimes
    as ``xsd:int``/``xsd:long``, ``xsd:double``, ``xsd:boolean`` and ``xsd:dateTime``; lists, tuples
    and dicts of such values are recorded as JSON text (never as a Python ``repr``); anything else
    as its string form."""
    if isinstance(value, (bool, int, float, str, dt.datetime)):
        return value
    if value is None:
        return "None"
    if isinstance(value, (list, tuple, dict)):
        try:
            return json.dumps(value)
        except (TypeError, ValueError):
            return str(value)
    return str(value)



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


class _Builder:
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
        self.extras = {(e["kind"], e.get("name", e["kind"])) for e in snap.extra_entities}

    def rid(self, *parts: str) -> Any:
        return self.user[".".join([self.run_local, *(local_id(p) for p in parts)])]

    def attrs(self, mapping: Mapping[str, Any]) -> list[tuple[Any, Any]]:
        return [(self.p4l[local_id(k)], typed(v)) for k, v in mapping.items() if v is not None]

    def build(self) -> ProvDocument:
        info = self.snap.info
        run_attrs: list[tuple[Any, Any]] = [
            (PROV_TYPE, self.provml["LearningStageExecution"]),
            (PROV_TYPE, self.p4l["Run"]),
            (PROV_LABEL, info.run_name),
            *self.attrs(
                {
                    "run_id": info.run_id,
                    "run_name": info.run_name,
                    "experiment_name": info.experiment_name,
                    "experiment_id": info.experiment_id,
                    "status": info.status,
                    "tracking_uri": info.tracking_uri,
                    "description": info.description,
                    "metrics_file": self.snap.metrics_file,
                }
            ),
            *[(self.p4l[f"tag_{local_id(k)}"], v) for k, v in info.tags.items()],
            *self.attrs((self.snap.context or {}).get("run", {})),
        ]
        run = self.doc.activity(self.user[self.run_local], _time(info.start_time), _time(info.end_time), run_attrs)
        session = self._session(run)

        person = self._person(run)
        software = self.doc.agent(
            self.p4l[f"prov4ml-lightning_{local_id(self.snap.software_version)}"],
            [
                (PROV_TYPE, self.doc.valid_qualified_name("prov:SoftwareAgent")),
                (PROV_LABEL, f"prov4ml-lightning {self.snap.software_version}"),
                (self.p4l["version"], self.snap.software_version),
            ],
        )
        code = self._context(session)
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
            self.doc.wasStartedBy(run, None, parent, _time(info.start_time))

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
                    (PROV_LABEL, key),
                    (self.p4l["name"], key),
                    # no value, not the text "None"
                    *([] if value is None else [(PROV_VALUE, typed(value)), (self.mls["hasValue"], typed(value))]),
                ],
            )
            if key not in listed:
                self.doc.used(session, ent, _time(self.session_span[0]))

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
                    *([(PROV_LOCATION, Literal(model.model_uri, XSD_ANYURI))] if model.model_uri else []),
                    (PROV_LABEL, f"{model.name} v{model.version}"),
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
        if self.previous is not None:
            merge_previous(self.doc, self.previous)
        return self.doc

    def _person(self, run: Any) -> Any:
        """The responsible person (``prov:Person``) and the organisation it acts for: named by the
        run's identity options (an ORCID iD is the person's identifier), else the OS login."""
        info, who = self.snap.info, self.snap.info.responsible or {}
        name, email, orcid = who.get("person_name"), who.get("person_email"), who.get("person_orcid")
        if orcid:
            ident = self.doc.add_namespace("orcid", ORCID_NS)[orcid.removeprefix(ORCID_NS)]
        elif email or name:
            ident = self.user[f"person.{local_id(email or name or '')}"]
        else:
            ident = self.user[f"person.{local_id(info.user)}"]
        foaf = self.doc.add_namespace("foaf", FOAF_NS) if (name or email or who.get("organization")) else None
        attrs: list[tuple[Any, Any]] = [(PROV_TYPE, self.doc.valid_qualified_name("prov:Person")),
                                        (PROV_LABEL, name or email or orcid or info.user)]
        if foaf is not None and name:
            attrs.append((foaf["name"], name))
        if foaf is not None and email:
            attrs.append((foaf["mbox"], Literal(f"mailto:{email}", XSD_ANYURI)))
        if orcid:
            attrs.append((self.p4l["orcid"], Literal(orcid, XSD_ANYURI)))
        if name or email or orcid:
            attrs.append((self.p4l["os_user"], info.user))  # the login that ran it, for the record
        person = self.doc.agent(ident, attrs)
        organization = who.get("organization")
        if organization and foaf is not None:
            org = self.doc.agent(self.user[f"organization.{local_id(organization)}"], [
                (PROV_TYPE, self.doc.valid_qualified_name("prov:Organization")), (PROV_LABEL, organization),
                (foaf["name"], organization)])
            self.doc.actedOnBehalfOf(person, org, run)
        return person

    def declared(self, kind: str, name: str) -> bool:
        """Whether entity ``(kind, name)`` is in this document (an artifact, parameter or extra
        entity) or the earlier one."""
        return ((kind, name) in self.extras or any(a.kind == kind and a.name == name for a in self.snap.artifacts)
                or (kind == "param" and name in self.snap.params) or self.rid(kind, name) in self.earlier)

    def _session(self, run: Any) -> Any:
        """This process's session of the run: an activity part of the run, with its own start, end
        and status, that uses its code and environment and starts its fits and stages."""
        info, context = self.snap.info, self.snap.context or {}
        self.session_no = int(context.get("session") or 1)
        start = (info.start_time if self.session_no == 1
                 else max(info.start_time, float(context.get("started_at") or info.start_time)))
        self.session_span = (start, info.end_time)
        self.session_id = self.rid(f"session_{self.session_no}")
        attrs = {"session": self.session_no, "status": info.status, **(context.get("process") or {})}
        node = self.doc.activity(self.session_id, _time(start), _time(info.end_time), [
            (PROV_TYPE, self.p4l["Session"]), (PROV_LABEL, f"session {self.session_no}"),
            (self.p4l["partOf"], self.user[self.run_local]), *self.attrs(attrs)])
        if self.snap.metrics_file:
            self._side_file(node, "metrics_file", self.snap.metrics_file, "MetricsFile",
                            self.snap.side_files.get("metrics"), info.end_time)
        return node

    def _side_file(self, session: Any, kind: str, name: str, type_: str, facts: Mapping[str, Any] | None,
                   when: float | None) -> Any:
        """A file beside the document (metric sidecar, package list, code diff) as an entity with
        its location and hash, generated by this session (a later session's copy is a revision)."""
        facts = facts or {}
        ident = self.rid(kind if self.session_no == 1 else f"{kind}.session_{self.session_no}")
        attrs = {"file_name": name, "sha256": facts.get("sha256"), "size_bytes": facts.get("size_bytes")}
        path = facts.get("path")
        ent = self.doc.entity(ident, [
            (PROV_TYPE, self.p4l[type_]), (PROV_LABEL, name),
            *([(PROV_LOCATION, Literal(Path(path).resolve().as_uri(), XSD_ANYURI))] if path else []),
            *self.attrs(attrs)])
        self.doc.wasGeneratedBy(ent, session, _time(when if when is not None else self.session_span[0]))
        if kind == "metrics_file" and self.session_no > 1:
            # the sidecar is appended to by every session: this copy revises the earlier one's
            earlier = self.rid(kind if self.session_no == 2 else f"{kind}.session_{self.session_no - 1}")
            if earlier in self.earlier:
                self.doc.wasRevisionOf(ent, earlier)
        return ent

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
        node = self.doc.activity(
            self.rid(act.ident), _time(act.start_time), _time(act.end_time),
            [*types, (PROV_LABEL, act.label), (self.p4l["partOf"], parent), *self.attrs(act.attributes)],
        )
        self.doc.wasStartedBy(node, None, parent, _time(act.start_time))
        if act.informed_by in self.spans or (act.informed_by and self.rid(act.informed_by) in self.earlier):
            self.doc.wasInformedBy(node, self.rid(act.informed_by))
        for kind, name in act.used:  # datasets, parameters, checkpoints it read when it started
            if self.declared(kind, name):
                self.doc.used(node, self.rid(kind, name), _time(act.start_time))
        return node

    def _series(self, session: Any, activities: Mapping[str, Any], s: MetricSeries) -> None:
        ent = self.doc.entity(
            self.rid("metric", s.context.value, s.name),
            [
                (PROV_TYPE, self.p4l["MetricSeries"]),
                (PROV_TYPE, self.doc.valid_qualified_name("prov:Collection")),
                (PROV_LABEL, f"{s.name} ({s.context.value})"),
                *([(self.p4l["pointsIn"], self.rid("metrics_file" if self.session_no == 1
                                                   else f"metrics_file.session_{self.session_no}"))]
                  if self.snap.metrics_file else []),
                *self.attrs(
                    {
                        "name": s.name,
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
                        "first_point_time": _time(s.first_time),
                        "last_point_time": _time(s.last_time),
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
                (PROV_LABEL, a.name),
                (PROV_LOCATION, Literal(Path(a.local_path).as_uri(), XSD_ANYURI)),
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
        if a.derived_from and self.declared(a.kind, a.derived_from):
            self.doc.wasDerivedFrom(ent, self.rid(a.kind, a.derived_from))
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
        if attributes.get("path") and extra["type"] in ("Checkpoint",):
            types.append((PROV_LOCATION, Literal(Path(attributes["path"]).as_uri(), XSD_ANYURI)))
        ent = self.doc.entity(
            self.rid(extra["kind"], extra.get("name", extra["kind"])),
            [*types, (PROV_LABEL, extra.get("label", extra["kind"])), *self.attrs(attributes)],
        )
        # ``activity``: the sub-activity (epoch, loop, fit) that used or generated it; default the session.
        activity = extra.get("activity") if extra.get("activity") in activities else None
        node = activities[activity] if activity else session
        relation = extra.get("relation", "used")
        if relation == "used":
            when = self.when(extra.get("time"), activity) if activity else _time(self.session_span[0])
            self.doc.used(node, ent, when)
        elif relation == "generated":
            self.doc.wasGeneratedBy(ent, node, self.when(extra.get("time"), activity))
        # relation None: declared only (a dataset, read by the loops that list it), or attributes
        # for an entity an earlier session defined (merged by id)
        for kind, name in extra.get("derived_from") or ():
            if self.declared(kind, name):
                self.doc.wasDerivedFrom(ent, self.rid(kind, name))
        member_of = extra.get("member_of")  # e.g. a metric segment is a member of its series
        if member_of and (self.rid(*member_of) in self.earlier or any(
                ("metric", s.context.value, s.name) == tuple(member_of) for s in self.snap.series)):
            self.doc.hadMember(self.rid(*member_of), ent)

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
        return _time(t)

    def _context(self, session: Any) -> Any:
        """The session's ``code`` (also a ``prov:Plan``) and ``environment`` entities, used when
        it started, the side files they describe, and the host agent."""
        context = self.snap.context or {}
        # A reopened run's later sessions (resume, possibly elsewhere) get their own code and
        # environment entities beside the first session's.
        n = self.session_no
        suffix, label_suffix = ("", "") if n == 1 else (f".session_{n}", f" (session {n})")
        start = _time(self.session_span[0])
        files = self.snap.side_files
        code = env = None
        if context.get("code"):
            attrs = context["code"]
            label = Path(attrs["script_path"]).name if attrs.get("script_path") else "code"
            code = self.doc.entity(self.rid(f"code{suffix}"), [
                (PROV_TYPE, self.p4l["Code"]), (PROV_TYPE, self.doc.valid_qualified_name("prov:Plan")),
                (PROV_LABEL, label + label_suffix), *self.attrs({**attrs, "session": n})])
            self.doc.used(session, code, start)
            if attrs.get("git_diff_file"):
                diff = self._side_file(session, "code_diff", attrs["git_diff_file"], "CodeDiff",
                                       files.get("diff"), self.session_span[0])
                code.add_attributes([(self.p4l["diffFile"], diff.identifier)])
        if context.get("environment"):
            attrs = context["environment"]
            env = self.doc.entity(self.rid(f"environment{suffix}"), [
                (PROV_TYPE, self.p4l["Environment"]),
                (PROV_LABEL, f"environment of {self.snap.info.run_name}{label_suffix}"),
                *self.attrs({**attrs, "session": n})])
            self.doc.used(session, env, start)
            if attrs.get("packages_file"):
                packages = self._side_file(session, "package_list", attrs["packages_file"], "PackageList",
                                           files.get("packages"), self.session_span[0])
                env.add_attributes([(self.p4l["packagesFile"], packages.identifier)])
            if attrs.get("hostname"):
                host_key = f"{attrs['hostname']}.{attrs['host_id']}" if attrs.get("host_id") else attrs["hostname"]
                host = self.doc.agent(self.user[f"host.{local_id(host_key)}"], [
                    (PROV_TYPE, self.p4l["Host"]), (PROV_LABEL, attrs["hostname"]),
                    *self.attrs({"hostname": attrs["hostname"], "host_id": attrs.get("host_id")})])
                self.doc.wasAssociatedWith(session, host, other_attributes=[(PROV_ROLE, self.p4l["executionHost"])])
                self.doc.wasAttributedTo(env, host)
        return code


_PROVML_ACTIVITY_TYPES = {
    "TrainingEpoch": "TrainingExecution",
    "ValidationLoop": "ValidationExecution",
    "TestLoop": "EvaluationExecution",
    "Fit": "TrainingExecution",
}


def build_document(snapshot: RunSnapshot) -> ProvDocument:
    """Build the PROV document of one run."""
    return _Builder(snapshot).build()


def _relation_key(record: ProvRecord) -> tuple[Any, ...]:
    # Time is left out: the same usage recorded by two sessions of a run is one usage.
    return (record.get_type(), *((k, v) for k, v in record.formal_attributes if k != PROV_ATTR_TIME))


def merge_previous(doc: ProvDocument, previous: ProvDocument) -> None:
    """Carry the records an earlier session of the same run wrote into ``doc`` (a reopened run).

    An element both documents define keeps ``doc``'s values and gains the attributes only the
    earlier one had (types are united); a relation ``doc`` already states (same kind and
    arguments, any time) is not repeated, and an entity ``doc`` generates keeps that one
    generation. Everything else of the earlier document (its epochs, checkpoints, ...) is copied.
    """
    elements = {r.identifier: r for r in doc.get_records() if r.is_element()}
    relations = {_relation_key(r) for r in doc.get_records() if r.is_relation()}
    generated = {r.formal_attributes[0][1] for r in doc.get_records() if r.get_type() == PROV_GENERATION}
    for record in previous.get_records():
        if record.is_element():
            mine = elements.get(record.identifier)
            if mine is None:
                doc.add_record(record)
            else:
                have = {k for k, _ in mine.attributes}
                mine.add_attributes([(k, v) for k, v in record.attributes if k not in have or k == PROV_TYPE])
            continue
        key = _relation_key(record)
        if key in relations:
            continue
        if record.get_type() == PROV_GENERATION and record.formal_attributes[0][1] in generated:
            continue
        relations.add(key)
        doc.add_record(record)
