"""A PROV document flattened into plain data: :class:`GraphSpec` for drawing (``graph.py``, ``html.py``) and
:class:`Element`/:class:`Relation` lists for the command line's views.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from prov.constants import PROV_ATTR_STARTTIME, PROV_ATTR_TIME, PROV_LABEL, PROV_LOCATION, PROV_TYPE
from prov.identifier import QualifiedName
from prov.model import ProvDocument, ProvRecord

__all__ = ["Element", "GraphSpec", "Relation", "flatten", "to_graph"]


@dataclass
class GraphSpec:
    """A PROV document flattened for drawing: nodes ``(id, kind, label, attrs)`` and edges."""

    nodes: list[tuple[str, str, str, dict[str, str]]] = field(default_factory=list)
    edges: list[tuple[str, str, str]] = field(default_factory=list)
    #: every ``prov:type`` of a node (``"p4l:Run"``, ...): ``attrs`` keeps only one per key.
    types: dict[str, list[str]] = field(default_factory=dict)
    #: an activity's ``prov:startTime`` (the drawing puts activities in time order).
    starts: dict[str, dt.datetime] = field(default_factory=dict)
    #: the time of a relation that has one, by ``(src, dst, relation)`` (when a session used its code).
    edge_times: dict[tuple[str, str, str], dt.datetime] = field(default_factory=dict)
    #: the run id of each record, where the spec holds several runs (``prov4ml lineage``): the
    #: drawing puts each run's activities in a cluster of their own, the runs in start order.
    runs: dict[str, str] = field(default_factory=dict)


_RELATION_NAMES = {
    "Generation": "wasGeneratedBy", "Usage": "used", "Communication": "wasInformedBy",
    "Start": "wasStartedBy", "End": "wasEndedBy", "Invalidation": "wasInvalidatedBy",
    "Derivation": "wasDerivedFrom", "Attribution": "wasAttributedTo", "Association": "wasAssociatedWith",
    "Delegation": "actedOnBehalfOf", "Influence": "wasInfluencedBy", "Specialization": "specializationOf",
    "Alternate": "alternateOf", "Membership": "hadMember",
}


def to_graph(doc: ProvDocument) -> GraphSpec:
    """Flatten ``doc`` (including bundles) into a :class:`GraphSpec`."""
    spec = GraphSpec()
    records: list[ProvRecord] = list(doc.get_records())
    for bundle in doc.bundles:
        records.extend(bundle.get_records())
    for rec in records:
        if rec.is_element():
            kind = rec.get_type().localpart.lower()  # entity / activity / agent
            labels = rec.get_attribute(PROV_LABEL)
            label = str(next(iter(labels))) if labels else rec.identifier.localpart
            attrs = {
                str(k): _shown(k, v) for k, v in rec.attributes if k not in (PROV_LABEL,)
            }
            spec.nodes.append((str(rec.identifier), kind, label, attrs))
            spec.types[str(rec.identifier)] = [str(t) for t in rec.get_attribute(PROV_TYPE)]
            start = next(iter(rec.get_attribute(PROV_ATTR_STARTTIME)), None)
            if isinstance(start, dt.datetime):
                spec.starts[str(rec.identifier)] = start
        elif rec.is_relation():
            formal = [value for _, value in rec.formal_attributes]
            src = formal[0] if formal else None
            dst = formal[1] if len(formal) > 1 else None
            if dst is None and rec.get_type().localpart in ("Start", "End") and len(formal) > 2:
                dst = formal[2]  # wasStartedBy/wasEndedBy without a trigger: draw the starter
            if src is not None and dst is not None:
                relation = _RELATION_NAMES.get(rec.get_type().localpart, rec.get_type().localpart)
                spec.edges.append((str(src), str(dst), relation))
                time = next(iter(rec.get_attribute(PROV_ATTR_TIME)), None)
                if isinstance(time, dt.datetime):
                    spec.edge_times[(str(src), str(dst), relation)] = time
    return spec



@dataclass
class Element:
    """An entity, activity or agent as plain Python: ``attrs`` maps local names to values
    (``prov:`` attributes keep their prefix: ``prov:value``), ``types`` holds every
    ``prov:type`` as ``prefix:name``."""

    ident: str
    kind: str
    label: str
    types: list[str]
    attrs: dict[str, Any]
    start: dt.datetime | None = None
    end: dt.datetime | None = None

    def has_type(self, local: str) -> bool:
        return any(t.rsplit(":", 1)[-1] == local for t in self.types)


@dataclass
class Relation:
    """A PROV relation between two identifiers (``subject`` -> ``obj``), e.g. ``wasGeneratedBy``."""

    name: str
    subject: str
    obj: str
    time: dt.datetime | None = None


def _plain(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str, dt.datetime)):
        return value
    return str(value)


def _shown(key: Any, value: Any) -> str:
    """An attribute as text; a location as its IRI (``file:///...``), not as its qualified name."""
    if key == PROV_LOCATION and isinstance(value, QualifiedName):
        return value.uri
    return str(value)


def flatten(doc: ProvDocument) -> tuple[list[Element], list[Relation]]:
    """Every element and relation of ``doc`` and its bundles as :class:`Element`/:class:`Relation`."""
    from prov.constants import PROV_ATTR_ENDTIME

    records: list[ProvRecord] = list(doc.get_records())
    for bundle in doc.bundles:
        records.extend(bundle.get_records())
    elements: list[Element] = []
    relations: list[Relation] = []
    for rec in records:
        if rec.is_element():
            attrs: dict[str, Any] = {}
            for key, value in rec.attributes:
                if key in (PROV_TYPE, PROV_LABEL, PROV_ATTR_STARTTIME, PROV_ATTR_ENDTIME):
                    continue
                name = str(key) if key.namespace.prefix == "prov" else key.localpart
                attrs.setdefault(name, _shown(key, value) if key == PROV_LOCATION else _plain(value))
            labels = rec.get_attribute(PROV_LABEL)
            starts = rec.get_attribute(PROV_ATTR_STARTTIME)
            ends = rec.get_attribute(PROV_ATTR_ENDTIME)
            elements.append(Element(
                ident=str(rec.identifier), kind=rec.get_type().localpart.lower(),
                label=str(next(iter(labels))) if labels else rec.identifier.localpart,
                types=[str(t) for t in rec.get_attribute(PROV_TYPE)], attrs=attrs,
                start=next(iter(starts), None), end=next(iter(ends), None),
            ))
        elif rec.is_relation():
            formal = [value for _, value in rec.formal_attributes]
            src = formal[0] if formal else None
            dst = formal[1] if len(formal) > 1 else None
            if dst is None and rec.get_type().localpart in ("Start", "End") and len(formal) > 2:
                dst = formal[2]
            if src is None or dst is None:
                continue
            times = rec.get_attribute(PROV_ATTR_TIME)
            relation = rec.get_type().localpart
            relations.append(Relation(_RELATION_NAMES.get(relation, relation), str(src), str(dst),
                                      next(iter(times), None)))
    return elements, relations

