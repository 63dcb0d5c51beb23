"""The merge of an earlier session's PROV document into a reopened run's (resumed training, or
validate/test after fit): :func:`merge_previous`."""

from __future__ import annotations

from typing import Any

from prov.constants import PROV_ATTR_TIME, PROV_GENERATION, PROV_TYPE
from prov.model import ProvDocument, ProvRecord

__all__ = ["merge_previous"]


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
