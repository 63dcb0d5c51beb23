"""Validity checks for PROV documents (what ``prov4ml validate`` runs).

Four families of checks, each reported as :class:`Problem` records rather than raised, so a
caller sees every problem of a document at once:

- ``json``: the file is JSON at all.
- ``schema``: PROV-JSON validates against the official PROV-JSON JSON Schema shipped inside
  the ``prov`` wheel (``prov/tests/schemas/prov-json.schema.json``). That schema misspells
  ``wasEndedBy`` as ``wasEndedby`` and forbids unknown top-level keys, so a correct document
  with an end relation would fail; the schema is used with ``wasEndedBy`` added as an alias of
  the misspelled key (in memory; the file is not changed). Everything else is used verbatim.
- ``reference``, ``typing``: every relation points at a declared record of the right kind, and
  no identifier is both an entity and an activity.
- ``time``: a subset of W3C PROV-CONSTRAINTS event ordering (no package implements it):
  start precedes end, usage and generation lie within their activity, generation precedes
  usage, start events match the activity's start time, an informant starts before the informed
  activity ends, a derived entity is not generated before its source, one generating activity
  per entity.
- ``roundtrip-provn``, ``roundtrip-xml``, ``roundtrip-rdf``: the document read with
  ``prov.read`` survives PROV-N, PROV-XML and PROV-O (Turtle) and reads back equal
  (NaN counts as equal to NaN).

Example::

    from prov4ml_lightning.provenance.checks import check_file

    for problem in check_file("prov/provgraph_<run_id>.json"):
        print(problem)
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["ROUND_TRIP_FORMATS", "Problem", "check_document", "check_file"]

#: Formats :func:`check_document` round-trips through (``prov`` can read all three back).
ROUND_TRIP_FORMATS = ("provn", "xml", "rdf")

_ELEMENTS = ("entity", "activity", "agent")

# PROV-JSON relation key -> {formal attribute: kind it must point at}. "relation" marks
# attributes that name another relation (a derivation's generation/usage ids).
_RELATIONS: dict[str, dict[str, str]] = {
    "wasGeneratedBy": {"prov:entity": "entity", "prov:activity": "activity"},
    "used": {"prov:activity": "activity", "prov:entity": "entity"},
    "wasInformedBy": {"prov:informed": "activity", "prov:informant": "activity"},
    "wasStartedBy": {"prov:activity": "activity", "prov:trigger": "entity", "prov:starter": "activity"},
    "wasEndedBy": {"prov:activity": "activity", "prov:trigger": "entity", "prov:ender": "activity"},
    "wasInvalidatedBy": {"prov:entity": "entity", "prov:activity": "activity"},
    "wasDerivedFrom": {"prov:generatedEntity": "entity", "prov:usedEntity": "entity",
                       "prov:activity": "activity", "prov:generation": "relation", "prov:usage": "relation"},
    "wasAttributedTo": {"prov:entity": "entity", "prov:agent": "agent"},
    "wasAssociatedWith": {"prov:activity": "activity", "prov:agent": "agent", "prov:plan": "entity"},
    "actedOnBehalfOf": {"prov:delegate": "agent", "prov:responsible": "agent", "prov:activity": "activity"},
    "wasInfluencedBy": {"prov:influencee": "any", "prov:influencer": "any"},
    "specializationOf": {"prov:specificEntity": "entity", "prov:generalEntity": "entity"},
    "alternateOf": {"prov:alternate1": "entity", "prov:alternate2": "entity"},
    "hadMember": {"prov:collection": "entity", "prov:entity": "entity"},
}
_REQUIRED = {
    "wasGeneratedBy": ("prov:entity",), "used": ("prov:activity",),
    "wasInformedBy": ("prov:informed", "prov:informant"), "wasStartedBy": ("prov:activity",),
    "wasEndedBy": ("prov:activity",), "wasInvalidatedBy": ("prov:entity",),
    "wasDerivedFrom": ("prov:generatedEntity", "prov:usedEntity"),
    "wasAttributedTo": ("prov:entity", "prov:agent"), "wasAssociatedWith": ("prov:activity",),
    "actedOnBehalfOf": ("prov:delegate", "prov:responsible"),
    "wasInfluencedBy": ("prov:influencee", "prov:influencer"),
    "specializationOf": ("prov:specificEntity", "prov:generalEntity"),
    "alternateOf": ("prov:alternate1", "prov:alternate2"), "hadMember": ("prov:collection", "prov:entity"),
}


@dataclass(frozen=True)
class Problem:
    """One failed check.

    Attributes:
        record_id: identifier of the offending record (a relation's id, often ``_:idN``);
            empty for a problem of the whole document.
        check: the check that failed (``json``, ``schema``, ``reference``, ``typing``, ``time``,
            ``identity``, ``roundtrip-provn``, ``roundtrip-xml``, ``roundtrip-rdf``).
        message: what is wrong, in words.
    """

    record_id: str
    check: str
    message: str

    def __str__(self) -> str:
        where = f" {self.record_id}" if self.record_id else ""
        return f"[{self.check}]{where}: {self.message}"


def check_file(path: str | os.PathLike[str], *, round_trip: bool = True) -> list[Problem]:
    """Check a PROV-JSON file; an empty list means every check passed.

    Args:
        path: a PROV-JSON file (``provgraph_<run_id>.json``).
        round_trip: also round-trip through PROV-N, PROV-XML and PROV-O (the slow part).

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    text = Path(path).read_text(encoding="utf-8")
    return check_document(text, round_trip=round_trip)


def check_document(document: str | Mapping[str, Any] | Any, *, round_trip: bool = True) -> list[Problem]:
    """Check a PROV document given as PROV-JSON text, parsed PROV-JSON or a ``ProvDocument``.

    Args:
        document: the document.
        round_trip: also round-trip through PROV-N, PROV-XML and PROV-O.
    """
    from prov4ml_lightning import provenance as _prov

    if isinstance(document, str):
        text = document
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            return [Problem("", "json", f"not JSON: {err}")]
    elif isinstance(document, Mapping):
        data = document
        text = json.dumps(document)
    else:
        text = _prov.to_json_text(document)
        data = json.loads(text)
    if not isinstance(data, Mapping):
        return [Problem("", "json", f"a PROV-JSON document is a JSON object, got {type(data).__name__}")]
    problems = [*schema_problems(data), *reference_problems(data), *identity_problems(data),
                *time_problems(data)]
    if round_trip:
        try:
            for fmt in ROUND_TRIP_FORMATS:
                problems.extend(Problem(rid, f"roundtrip-{fmt}", msg) for rid, msg in _prov.round_trip(text, fmt))
        except Exception as err:  # prov cannot even read it: one problem, not a crash
            problems.append(Problem("", "roundtrip-json", f"prov.read cannot read the document: {err!r}"))
    return problems


# -- schema --------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _validator() -> Any:
    try:
        import jsonschema
    except ModuleNotFoundError as err:  # pragma: no cover - a core dependency
        raise ModuleNotFoundError("checking PROV-JSON needs jsonschema: pip install jsonschema") from err
    from prov4ml_lightning.provenance import prov_json_schema_path

    schema = json.loads(prov_json_schema_path().read_text(encoding="utf-8"))
    schema = _with_ended_by_alias(schema)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _with_ended_by_alias(schema: dict[str, Any]) -> dict[str, Any]:
    """Accept the correct ``wasEndedBy`` wherever the schema spells it ``wasEndedby``."""
    schema = copy.deepcopy(schema)
    for props in (schema.get("properties", {}), schema.get("definitions", {}).get("bundle", {}).get("properties", {})):
        if "wasEndedby" in props and "wasEndedBy" not in props:
            props["wasEndedBy"] = props["wasEndedby"]
    return schema


def schema_problems(data: Mapping[str, Any]) -> list[Problem]:
    """Problems found by the PROV-JSON JSON Schema (``wasEndedBy`` accepted, see the module doc)."""
    try:
        validator = _validator()
    except FileNotFoundError as err:
        return [Problem("", "schema", f"the PROV-JSON schema is not in the installed prov package ({err})")]
    out = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
        path = list(error.absolute_path)
        record = str(path[1]) if len(path) > 1 else ""
        where = "/".join(str(p) for p in path)
        out.append(Problem(record, "schema", f"{where or '(document)'}: {error.message}"))
    return out


# -- references and typing -------------------------------------------------------------------------
def _relations(data: Mapping[str, Any]) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """(relation kind, relation id, attributes) of every relation, bundles included."""
    scopes = [data, *(b for b in (data.get("bundle") or {}).values() if isinstance(b, Mapping))]
    for scope in scopes:
        for kind in _RELATIONS:
            for rid, body in (scope.get(kind) or {}).items():
                for one in body if isinstance(body, list) else [body]:
                    if isinstance(one, Mapping):
                        yield kind, rid, one


def _declared(data: Mapping[str, Any]) -> dict[str, set[str]]:
    kinds: dict[str, set[str]] = defaultdict(set)
    scopes = [data, *(b for b in (data.get("bundle") or {}).values() if isinstance(b, Mapping))]
    for scope in scopes:
        for kind in _ELEMENTS:
            for ident in scope.get(kind) or {}:
                kinds[ident].add(kind)
    return kinds


def reference_problems(data: Mapping[str, Any]) -> list[Problem]:
    """Relations pointing at undeclared records or records of the wrong kind; entity/activity clashes."""
    kinds = _declared(data)
    relation_ids = {rid for _, rid, _ in _relations(data)}
    out = [
        Problem(ident, "typing", "declared both as an entity and as an activity (PROV keeps them disjoint)")
        for ident, ks in kinds.items() if {"entity", "activity"} <= ks
    ]
    for kind, rid, body in _relations(data):
        for attr in _REQUIRED[kind]:
            if attr not in body:
                out.append(Problem(rid, "reference", f"{kind} lacks its {attr}"))
        for attr, expected in _RELATIONS[kind].items():
            target = body.get(attr)
            if target is None:
                continue
            if not isinstance(target, str):
                out.append(Problem(rid, "reference", f"{kind} {attr} must be an identifier, got {target!r}"))
            elif expected == "relation":
                if target not in relation_ids:
                    out.append(Problem(rid, "reference", f"{kind} {attr} {target} is not a relation of the document"))
            elif target not in kinds:
                out.append(Problem(rid, "reference", f"{kind} {attr} points at {target}, which is not declared"))
            elif expected != "any" and expected not in kinds[target] and not (
                expected == "entity" and "agent" in kinds[target]  # an agent may also be a thing used
            ):
                out.append(Problem(rid, "reference", f"{kind} {attr} {target} must be an {expected}, "
                                                     f"but is declared as {'/'.join(sorted(kinds[target]))}"))
    return out


def identity_problems(data: Mapping[str, Any]) -> list[Problem]:
    """Entities recorded twice under one identifier with different ``sha256`` (two files, or two
    contents of one file, given one id: one record hides the other)."""
    out = []
    scopes = [data, *(b for b in (data.get("bundle") or {}).values() if isinstance(b, Mapping))]
    for scope in scopes:
        for ident, body in (scope.get("entity") or {}).items():
            digests: set[str] = set()
            for one in body if isinstance(body, list) else [body]:
                if not isinstance(one, Mapping):
                    continue
                for key, value in one.items():
                    if key == "sha256" or str(key).endswith(":sha256"):
                        for d in value if isinstance(value, list) else [value]:
                            digests.add(str(d.get("$") if isinstance(d, Mapping) else d))
            if len(digests) > 1:
                out.append(Problem(ident, "identity", f"one id, {len(digests)} different sha256 "
                                                      f"({', '.join(sorted(x[:12] for x in digests))}): "
                                                      "two files or contents recorded as one entity"))
    return out


# -- time ordering (a subset of PROV-CONSTRAINTS section 5.2) -------------------------------------
def _parse_time(value: Any) -> dt.datetime | None:
    if isinstance(value, Mapping):
        value = value.get("$")
    if not isinstance(value, str):
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)  # PROV leaves zone-less times open


def _iso(t: dt.datetime | None) -> str:
    return t.isoformat() if t else "?"


def time_problems(data: Mapping[str, Any]) -> list[Problem]:
    """Event-ordering violations: see the module docstring for the list of constraints checked."""
    out: list[Problem] = []
    span: dict[str, tuple[dt.datetime | None, dt.datetime | None]] = {}
    for ident, body in (data.get("activity") or {}).items():
        for key in ("prov:startTime", "prov:endTime"):
            if body.get(key) is not None and _parse_time(body.get(key)) is None:
                out.append(Problem(ident, "time", f"{key} {body.get(key)!r} is not an xsd:dateTime"))
        start, end = _parse_time(body.get("prov:startTime")), _parse_time(body.get("prov:endTime"))
        if start and end and end < start:
            out.append(Problem(ident, "time", f"activity ends ({_iso(end)}) before it starts ({_iso(start)})"))
        span[ident] = (start, end)
    generated: dict[str, list[tuple[str | None, dt.datetime | None]]] = defaultdict(list)
    for kind, rid, body in _relations(data):
        if body.get("prov:time") is not None and _parse_time(body.get("prov:time")) is None:
            out.append(Problem(rid, "time", f"prov:time {body.get('prov:time')!r} is not an xsd:dateTime"))
        if kind == "wasGeneratedBy":
            when = _parse_time(body.get("prov:time"))
            generated[body.get("prov:entity", "")].append((body.get("prov:activity"), when))
        out.extend(_event_problems(kind, rid, body, span))
    first_generation: dict[str, dt.datetime] = {}
    for entity, gens in generated.items():
        activities = sorted({a for a, _ in gens if a is not None})
        if len(activities) > 1:
            out.append(Problem(entity, "time", f"generated by {len(activities)} activities ({', '.join(activities)}); "
                                               "an entity has one generation"))
        times = [t for _, t in gens if t is not None]
        if times:
            first_generation[entity] = min(times)
    for kind, rid, body in _relations(data):
        out.extend(_generation_order_problems(kind, rid, body, first_generation))
    return out


def _event_problems(kind: str, rid: str, body: Mapping[str, Any],
                    span: Mapping[str, tuple[dt.datetime | None, dt.datetime | None]]) -> list[Problem]:
    """Constraints between one event and the activity it belongs to."""
    out = []
    t = _parse_time(body.get("prov:time"))
    act = body.get("prov:activity")
    start, end = span.get(act, (None, None)) if isinstance(act, str) else (None, None)
    if kind in ("wasGeneratedBy", "used", "wasInvalidatedBy") and t is not None:
        verb = {"wasGeneratedBy": "generated", "used": "used", "wasInvalidatedBy": "invalidated"}[kind]
        if start and t < start:
            out.append(Problem(rid, "time", f"{verb} at {_iso(t)}, before {act} starts ({_iso(start)})"))
        if end and t > end:
            out.append(Problem(rid, "time", f"{verb} at {_iso(t)}, after {act} ends ({_iso(end)})"))
    elif kind == "wasStartedBy" and t is not None and start is not None and t != start:
        out.append(Problem(rid, "time", f"start event at {_iso(t)} differs from {act}'s startTime {_iso(start)}"))
    elif kind == "wasEndedBy" and t is not None and end is not None and t != end:
        out.append(Problem(rid, "time", f"end event at {_iso(t)} differs from {act}'s endTime {_iso(end)}"))
    elif kind == "wasInformedBy":
        informant_start = span.get(body.get("prov:informant", ""), (None, None))[0]
        informed_end = span.get(body.get("prov:informed", ""), (None, None))[1]
        if informant_start and informed_end and informed_end < informant_start:
            out.append(Problem(rid, "time", f"{body['prov:informed']} ends before its informant "
                                            f"{body['prov:informant']} starts"))
    return out


def _generation_order_problems(kind: str, rid: str, body: Mapping[str, Any],
                               first_generation: Mapping[str, dt.datetime]) -> list[Problem]:
    """Generation precedes usage; a derived entity is not generated before its source."""
    if kind == "used":
        entity, t = body.get("prov:entity", ""), _parse_time(body.get("prov:time"))
        gen = first_generation.get(entity)
        if gen is not None and t is not None and t < gen:
            return [Problem(rid, "time", f"{body.get('prov:activity')} used {entity} at {_iso(t)}, "
                                         f"before it was generated ({_iso(gen)})")]
    elif kind == "wasDerivedFrom":
        new = first_generation.get(body.get("prov:generatedEntity", ""))
        old = first_generation.get(body.get("prov:usedEntity", ""))
        if new is not None and old is not None and new < old:
            return [Problem(rid, "time", f"{body['prov:generatedEntity']} was generated ({_iso(new)}) before "
                                         f"{body['prov:usedEntity']} ({_iso(old)}), which it derives from")]
    return []
