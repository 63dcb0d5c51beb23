"""Bring MLflow up to date with runs recorded locally while the tracking server was away.

For every run journal in DIR: create the MLflow run of a run started offline (tagged
``prov4ml.local_run_id``), log the params it lacks, send every metric point of the sidecar
MLflow does not have (spilled ``mlflow_unsent_<run_id>.csv`` points included; running it twice
sends nothing twice), upload failed artifacts and the PROV files, and end the run with the
recorded status. Runs still running, and killed runs not yet recovered (``prov4ml recover``),
are skipped.

Exit status 0 when every run is in sync, 1 when one could not be synced (server unreachable,
run missing, artifact changed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prov4ml_lightning.cli._common import EXIT_DIFFERENT, EXIT_OK, Scratch, echo

__all__ = ["HELP", "NAME", "add_arguments", "run"]

NAME = "sync"
HELP = "send spilled metrics and offline runs to MLflow once the tracking server is back"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", type=Path, help="a provenance folder (provenance_save_dir)")
    parser.add_argument("--run-id", help="only this run (its local id)")
    parser.add_argument("--tracking-uri", help="the MLflow store to write to (default: the one each run used)")


def run(args: argparse.Namespace, scratch: Scratch) -> int:
    from prov4ml_lightning.recovery.sync import sync

    failed = 0
    for report in sync(args.directory, tracking_uri=args.tracking_uri, run_id=args.run_id):
        for note in report.notes:
            echo(f"{report.run_id}: {note}")
        if report.skipped:
            # A run still running is not a failure; anything else that kept a run out of MLflow is.
            failed += report.skipped != "still running"
            echo(f"{report.run_id}: skipped ({report.skipped})")
            continue
        action = "created" if report.created else "updated"
        echo(f"{report.run_id}: MLflow run {report.mlflow_run_id} {action}: {report.metric_points} metric points, "
             f"{report.params} params, {report.artifacts} artifacts sent; status {report.status}")
        for problem in report.problems:
            failed += 1
            echo(f"{report.run_id}: {problem}")
    return EXIT_DIFFERENT if failed else EXIT_OK
