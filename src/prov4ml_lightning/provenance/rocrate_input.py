"""What an RO-Crate of a run is made from: the run's PROV-JSON document read as plain JSON (its
``p4l:Run`` activity, entities and agents, attribute values without their type wrappers, the local
files they locate).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from prov4ml_lightning.errors import Prov4MLInputError

__all__ = ["RunDocument", "attr_types", "attr_value", "location_path", "read_run"]

_CASTS = {"xsd:int": int, "xsd:long": int, "xsd:integer": int, "xsd:double": float, "xsd:float": float}


def attr_value(raw: Any) -> Any:
    """A PROV-JSON attribute value without its type wrapper (first of a list)."""
    if isinstance(raw, list):
        raw = raw[0] if raw else None
    if isinstance(raw, dict) and "$" in raw:
        cast = _CASTS.get(str(raw.get("type")))
        try:
            return cast(raw["$"]) if cast else raw["$"]
        except ValueError:
            return raw["$"]
    return raw


def attr_types(attrs: dict[str, Any]) -> set[str]:
    """The ``prov:type`` values of a record's attributes."""
    raw = attrs.get("prov:type")
    return {str(attr_value(t)) for t in (raw if isinstance(raw, list) else [raw]) if t is not None}


def location_path(location: str | None) -> Path | None:
    """The local path of a location IRI (:meth:`RunDocument.location`) when it is a ``file:`` one, else ``None``."""
    if not isinstance(location, str) or not location.startswith("file://"):
        return None
    return Path(unquote(urlsplit(location).path))


@dataclass
class RunDocument:
    """What the crate needs from the PROV-JSON document, read as plain JSON."""

    run_id: str
    attrs: dict[str, Any]
    entities: dict[str, dict[str, Any]] = field(default_factory=dict)
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the document's namespace prefixes (``prefix -> IRI``)
    prefixes: dict[str, str] = field(default_factory=dict)
    activities: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``used`` as ``(activity, entity)`` and ``wasGeneratedBy`` as ``(entity, activity)`` pairs
    used: list[tuple[str, str]] = field(default_factory=list)
    generated: list[tuple[str, str]] = field(default_factory=list)
    #: ``hadMember`` as ``(collection, member)`` pairs
    members: list[tuple[str, str]] = field(default_factory=list)

    def location(self, attrs: dict[str, Any]) -> str | None:
        """A record's ``prov:location`` as an IRI: a qualified name expanded with the document's
        prefixes (what the builder writes), or an ``xsd:anyURI`` literal (documents written before)."""
        raw = attrs.get("prov:location")
        text = attr_value(raw)
        if not isinstance(text, str):
            return None
        kind = (raw[0] if isinstance(raw, list) else raw).get("type") if isinstance(raw, (dict, list)) else None
        if kind in ("xsd:QName", "prov:QUALIFIED_NAME"):
            prefix, _, local = text.partition(":")
            if prefix in self.prefixes:
                return self.prefixes[prefix] + local
        return text

    def of_type(self, prov_type: str) -> list[tuple[str, dict[str, Any]]]:
        return [(key, attrs) for key, attrs in self.entities.items() if prov_type in attr_types(attrs)]


def read_run(prov_file: Path) -> RunDocument:
    """The run in a PROV-JSON file, read as plain JSON."""
    try:
        doc = json.loads(prov_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise Prov4MLInputError(f"`export --format rocrate {prov_file}`: not a readable PROV-JSON file "
                                f"({err})") from err
    runs = [attrs for attrs in (doc.get("activity") or {}).values() if "p4l:Run" in attr_types(attrs)]
    if len(runs) != 1:
        raise Prov4MLInputError(f"`export --format rocrate {prov_file}`: expected one p4l:Run activity, "
                                f"found {len(runs)} (is it a prov4ml-lightning document?)")
    run_id = str(attr_value(runs[0].get("p4l:run_id")))
    return RunDocument(run_id, runs[0], dict(doc.get("entity") or {}), dict(doc.get("agent") or {}),
                       dict(doc.get("prefix") or {}), dict(doc.get("activity") or {}),
                       _pairs(doc.get("used"), "prov:activity", "prov:entity"),
                       _pairs(doc.get("wasGeneratedBy"), "prov:entity", "prov:activity"),
                       _pairs(doc.get("hadMember"), "prov:collection", "prov:entity"))


def _pairs(section: Any, first: str, second: str) -> list[tuple[str, str]]:
    out = []
    for body in (section or {}).values():
        for one in body if isinstance(body, list) else [body]:
            if one.get(first) and one.get(second):
                out.append((str(one[first]), str(one[second])))
    return out
