"""The PROV side of a run: the only package that imports ``prov``.

- :mod:`.build`: the recorder's plain records -> a :class:`prov.model.ProvDocument`, with
  :mod:`.sessions` (the session, its agents, code, environment and side files), :mod:`.merge` (an
  earlier session's document carried into a reopened run's) and :mod:`.values` (PROV values);
- :mod:`.files`: writing documents (and every PROV file of a run) atomically, reading them back,
  serialising, validity helpers;
- :mod:`.views`: a document flattened into plain nodes and edges for drawing and the CLI.
"""

from prov4ml_lightning.provenance.build import RunSnapshot, build_document, local_id, merge_previous, typed
from prov4ml_lightning.provenance.files import (
    load_document,
    prov_json_schema_path,
    read_document,
    round_trip,
    serialize_document,
    to_json_text,
    write_document,
    write_run_files,
)
from prov4ml_lightning.provenance.views import Element, GraphSpec, Relation, flatten, to_graph

__all__ = [
    "Element",
    "GraphSpec",
    "Relation",
    "RunSnapshot",
    "build_document",
    "flatten",
    "load_document",
    "local_id",
    "merge_previous",
    "prov_json_schema_path",
    "read_document",
    "round_trip",
    "serialize_document",
    "to_graph",
    "to_json_text",
    "typed",
    "write_document",
    "write_run_files",
]
