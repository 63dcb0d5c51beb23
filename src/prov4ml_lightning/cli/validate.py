"""Check PROV documents: JSON, the PROV-JSON schema, references between records, record
kinds, the time order of events, and round trips through PROV-N, PROV-XML and PROV-O
(see :mod:`prov4ml_lightning.provenance.checks`).

A folder holding several runs is checked run by run. Each problem is printed as one line
``FILE: [check] RECORD_ID: message``. Exit status 1 when any document has a problem (a file
that is not JSON counts as one), 2 when a file is missing.
"""

from __future__ import annotations

import argparse

from prov4ml_lightning.cli._common import (
    EXIT_DIFFERENT,
    EXIT_OK,
    Scratch,
    add_run_argument,
    echo,
    resolve_prov_files,
)

__all__ = ["HELP", "NAME", "add_arguments", "run"]

NAME = "validate"
HELP = "check PROV documents (schema, references, time order, round trips); exit 1 on any problem"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser, "files", nargs="+")
    parser.add_argument("--quick", action="store_true",
                        help="skip the PROV-N/XML/Turtle round trips (the slow checks)")


def run(args: argparse.Namespace, scratch: Scratch) -> int:
    from prov4ml_lightning.provenance.checks import Problem, check_file

    # Resolve every argument first: a typo in the third name should not wait for two checks.
    # a folder holding several runs: every run in it
    paths = [p for target in args.files for p in resolve_prov_files(target, args.tracking_uri, scratch)]
    failed = 0
    for path in paths:
        try:
            problems = check_file(path, round_trip=not args.quick)
        except UnicodeDecodeError as err:  # not text at all: as much a failed JSON check as bad syntax
            problems = [Problem("", "json", f"not JSON: not UTF-8 text ({err.reason} at byte {err.start})")]
        if problems:
            failed += 1
            for problem in problems:
                echo(f"{path}: {problem}")
        else:
            echo(f"{path}: OK")
    if len(paths) > 1:
        echo(f"{len(paths) - failed} of {len(paths)} documents valid")
    return EXIT_DIFFERENT if failed else EXIT_OK
