"""A run's PROV files are written all or none: a file that cannot be written (a full disk) takes the
ones written before it away and leaves the PROV-JSON there before (an earlier session's, or none), so
`prov4ml recover` never finds a new graph beside an old record."""

from __future__ import annotations

from pathlib import Path

import pytest
from prov.model import ProvDocument

from prov4ml_lightning.provenance.files import read_document, write_run_files


def _doc() -> ProvDocument:
    doc = ProvDocument()
    doc.add_namespace("ex", "http://www.example.org/")
    doc.activity("ex:run")
    doc.entity("ex:data")
    doc.used("ex:run", "ex:data")
    return doc


def test_the_files_are_written_all_or_none(tmp_path: Path) -> None:
    base = tmp_path / "provgraph_r1"
    base.with_suffix(".dot").mkdir()  # the graph's file cannot be written, after the PROV-N was
    with pytest.raises(OSError):
        write_run_files(_doc(), base, ("json", "provn"), "r1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["provgraph_r1.dot"]  # no PROV-JSON, no PROV-N left
    base.with_suffix(".json").write_text("an earlier session's document")
    with pytest.raises(OSError):
        write_run_files(_doc(), base, ("json", "provn"), "r1")
    assert base.with_suffix(".json").read_text() == "an earlier session's document"  # untouched
    base.with_suffix(".json").unlink()

    base.with_suffix(".dot").rmdir()
    paths = write_run_files(_doc(), base, ("json", "provn"), "r1")
    assert {"json", "provn", "dot"} <= paths.keys() and all(p.is_file() for p in paths.values())
    assert len(list(read_document(paths["json"]).get_records())) == 3
