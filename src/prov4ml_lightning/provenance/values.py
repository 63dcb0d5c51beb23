"""Plain values -> PROV values: local names (:func:`local_id`), attribute values (:func:`typed`) and
times (:func:`prov_time`), shared by the parts of the document builder."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from typing import Any

__all__ = ["local_id", "prov_time", "typed"]

_LOCAL_OK = re.compile(r"[^A-Za-z0-9_.\-]")


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
