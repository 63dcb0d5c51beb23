"""Convert a run's PROV-JSON document to another PROV serialisation: PROV-N (provn), Turtle
(ttl, PROV-O), PROV-XML (xml) or JSON-LD (jsonld, PROV-O). Written to --output, or to standard
output when it is left out. ``--format rocrate`` packs the run instead into an RO-Crate folder (or
.zip) at --output (provenance/rocrate.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prov4ml_lightning.cli._common import EXIT_OK, CliError, Scratch, add_run_argument, echo, resolve_prov_file

__all__ = ["FORMATS", "HELP", "NAME", "add_arguments", "run"]

NAME = "export"
HELP = "convert a PROV document to PROV-N, Turtle, PROV-XML or JSON-LD, or pack the run as an RO-Crate"
FORMATS = ("provn", "ttl", "xml", "jsonld", "rocrate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser, nargs="?")
    parser.add_argument("--all", action="store_true",
                        help="every run of the store (--tracking-uri) or of the folder RUN_OR_FILE (searched "
                             "recursively) in one document, with the links between runs")
    parser.add_argument("--format", choices=FORMATS, required=True, help="target serialisation")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="file to write (default: standard output); for rocrate a new folder or .zip file")
    crate = parser.add_argument_group("rocrate")
    crate.add_argument("--license", metavar="SPDX_ID", default=None,
                       help="license the crate is shared under (SPDX id such as CC-BY-4.0, or a URL)")
    crate.add_argument("--include-checkpoints", action="store_true",
                       help="copy the checkpoints whose bytes still match their recorded sha256 into the crate")


def run(args: argparse.Namespace, scratch: Scratch) -> int:
    import sys

    from prov4ml_lightning.errors import Prov4MLError
    from prov4ml_lightning.provenance import load_document, serialize_document, write_document

    if args.all:
        return _all(args, scratch)
    if args.run is None:
        raise CliError("name RUN_OR_FILE (or pass --all)")
    source = resolve_prov_file(args.run, args.tracking_uri, scratch)
    if args.format == "rocrate":
        return _rocrate(args, source)
    try:
        doc = load_document(source)
    except Prov4MLError as err:
        raise CliError(str(err)) from err
    if args.output:
        out = write_document(doc, Path(args.output), args.format)
        echo(str(out))
    else:
        text = serialize_document(doc, args.format)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK


def _rocrate(args: argparse.Namespace, source: Path) -> int:
    from prov4ml_lightning.errors import Prov4MLError
    from prov4ml_lightning.provenance.rocrate import write_rocrate

    if not args.output:
        raise CliError("`export --format rocrate` needs -o DIR (a new folder, or a .zip file)")
    try:
        out = write_rocrate(source, args.output, license=args.license, include_checkpoints=args.include_checkpoints)
    except ModuleNotFoundError as err:
        raise CliError(str(err)) from err
    except Prov4MLError as err:
        raise CliError(str(err)) from err
    echo(str(out))
    return EXIT_OK


def _all(args: argparse.Namespace, scratch: Scratch) -> int:
    """One document of every run: the runs' records side by side; a run's entity that another
    run derives from is one identifier in both, so the cross-run edges join them."""
    import sys

    from prov4ml_lightning.cli.lineage import document_paths
    from prov4ml_lightning.errors import Prov4MLError
    from prov4ml_lightning.provenance import serialize_document, write_document
    from prov4ml_lightning.provenance.runs_graph import combined_document

    if args.format == "rocrate":
        raise CliError("`export --all` writes a PROV document (provn, ttl, xml, jsonld), not an RO-Crate")
    paths = document_paths([args.run] if args.run else [], args.tracking_uri, scratch)
    try:
        combined = combined_document(paths)
    except Prov4MLError as err:
        raise CliError(str(err)) from err
    if args.output:
        echo(str(write_document(combined, Path(args.output), args.format)))
    else:
        text = serialize_document(combined, args.format)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK
