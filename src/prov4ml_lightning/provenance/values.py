"""Plain values -> PROV values: local names (:func:`local_id`), attribute values (:func:`typed`) and
times (:func:`prov_time`), shared by the parts of the document builder."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from typing import Any

__all__ = ["LOCATION_PREFIX", "local_id", "location", "prov_time", "typed", "visible"]

_LOCAL_OK = re.compile(r"[^A-Za-z0-9_.\-]")
#: prefix of the namespaces that locations are written in (``loc_<hash of the folder IRI>``)
LOCATION_PREFIX = "loc_"
# what an IRI may hold as is (RFC 3987's reserved and unreserved ASCII characters, and escapes)
_IRI_SAFE = ":/?#[]@!$&'()*+,;=%~"
# control characters (C0, DEL, C1): no XML document may hold them, Graphviz and terminals misread them;
# text keeps its line breaks and tabs, names (keys, labels) show them escaped too
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_CONTROL_IN_NAME = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def visible(text: str, *, name: bool = False) -> str:
    """``text`` with its control characters written as Python escapes (``\\x00``, ``\\x1b``; in a
    ``name`` also ``\\n``, ``\\t``): what every output format (PROV-JSON, PROV-XML, Turtle, DOT,
    SVG, HTML) can hold and show. Text without them is returned as is."""
    pattern = _CONTROL_IN_NAME if name else _CONTROL_IN_TEXT
    if pattern.search(text) is None:
        return text
    return pattern.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def local_id(text: str) -> str:
    """A PROV-N-safe local name for ``text``; changed names get a hash suffix so they stay unique."""
    safe = _LOCAL_OK.sub("_", text)
    if safe != text or len(safe) > 120:
        safe = f"{safe[:100]}_{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return safe


def prov_time(seconds: float | None) -> dt.datetime | None:
    """A UNIX time in seconds as an aware UTC datetime (``None`` stays ``None``)."""
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)


def typed(value: Any) -> Any:
    """A PROV attribute value: ``prov`` types ints, floats (NaN/INF included), bools and datetimes
    as ``xsd:int``/``xsd:long``, ``xsd:double``, ``xsd:boolean`` and ``xsd:dateTime``; lists, tuples
    and dicts of such values are recorded as JSON text (never as a Python ``repr``); anything else
    as its string form; control characters in text are escaped (:func:`visible`)."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, (bool, int, float, dt.datetime)):
        return value
    if value is None:
        return "None"
    if isinstance(value, (list, tuple, dict)):
        try:
            return json.dumps(value)  # escapes control characters itself
        except (TypeError, ValueError, RecursionError):
            return visible(str(value))
    return visible(str(value))


def location(doc: Any, uri: str) -> Any:
    """``uri`` (a file's ``file:`` IRI, an MLflow ``models:/`` URI) as the value of a record's
    ``prov:location``: a qualified name in a namespace named after its folder, so that PROV-O gets
    an IRI (``prov:atLocation``'s range is ``prov:Location``, a resource, not a literal) and every
    PROV serialisation reads it back unchanged.

    The namespace is ``loc_<8 hex digits of the folder IRI's sha1>``: the same in every session of a
    run and in every run. The local name is the last path segment, percent-encoded where PROV-N or
    Turtle would not take it as is (a leading ``.`` or ``-``, a trailing ``.``)."""
    from urllib.parse import quote

    iri = quote(uri, safe=_IRI_SAFE)
    base, _, local = iri.rstrip("/").rpartition("/")
    if not base:  # no path: the whole IRI after its scheme
        base, _, local = iri.partition(":")
        base += ":"
    else:
        base += "/"
    if local[:1] in (".", "-"):
        local = f"%{ord(local[0]):02X}{local[1:]}"
    if local.endswith("."):
        local = local[:-1] + "%2E"
    local = quote(local, safe="%~")  # PROV-N local names: letters, digits, _ . - ~ and escapes
    prefix = LOCATION_PREFIX + hashlib.sha1(base.encode()).hexdigest()[:8]
    return doc.add_namespace(prefix, base)[local]
