"""Rebuild the provenance of runs that died without ``end_run`` (``SIGKILL``, OOM killer, power cut).

Reads each run's journal (``journal_<run_id>.jsonl``) and metric sidecar in DIR, writes its PROV
files with status ``CRASHED``, then (unless ``--local``) brings MLflow up to date like
``prov4ml sync``: the run ends ``FAILED`` with the tag ``prov4ml.crashed=true``, and the metric
points and PROV files MLflow lacks are sent. Runs that ended cleanly, and runs whose process is
still alive on this host, are left alone (``--force`` rebuilds them anyway).

Exit status 0 when every run that needed it was recovered, 1 when one could not be synced.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prov4ml_lightning.cli._common import EXIT_DIFFERENT, EXIT_OK, Scratch, echo

__all__ = ["HELP", "NAME", "add_arguments", "run"]

NAME = "recover"
HELP = "rebuild the PROV document of a killed run from its journal and sidecar, and end it in MLflow"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", type=Path, help="the run's provenance folder")
    parser.add_argument("--run-id", help="only this run")
    parser.add_argument("--force", action="store_true", help="also rebuild runs that look alive or already ended")
    parser.add_argument("--local", action="store_true", help="write the PROV files only; leave MLflow alone")
    parser.add_argument("--tracking-uri", help="the MLflow store to update (default: the one the run used)")


def run(args: argparse.Namespace, scratch: Scratch) -> int:
    from prov4ml_lightning.recovery.recover import recover
    from prov4ml_lightning.recovery.sync import sync

    failed = 0
    for rec in recover(args.directory, run_id=args.run_id, force=args.force):
        if rec.skipped:
            echo(f"{rec.run_id}: skipped ({rec.skipped})")
            continue
        echo(f"{rec.run_id}: recovered as {rec.status}, {rec.metric_points} metric points -> {rec.prov_json}")
        if args.local:
            continue
        (report,) = sync(args.directory, tracking_uri=args.tracking_uri, run_id=rec.run_id)
        for note in report.notes:
            echo(f"{rec.run_id}: {note}")
        if report.skipped or report.problems:
            failed += 1
            echo(f"{rec.run_id}: MLflow not updated: {report.skipped or '; '.join(report.problems)}")
        else:
            echo(f"{rec.run_id}: MLflow run {report.mlflow_run_id} ended {report.status}, "
                 f"{report.metric_points} metric points sent")
    return EXIT_DIFFERENT if failed else EXIT_OK
