"""What every subcommand shares: the RUN_OR_FILE argument, loading, errors and output."""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

from prov4ml_lightning.errors import Prov4MLError

__all__ = [
    "EXIT_DIFFERENT",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "Scratch",
    "add_run_argument",
    "echo",
    "plain_text",
    "resolve_prov_file",
    "resolve_prov_files",
    "warn",
]

EXIT_OK = 0
#: A check failed, or inputs differ or cannot be told apart (``diff``).
EXIT_DIFFERENT = 1
#: Usage error, or an input that cannot be read (missing, malformed).
EXIT_USAGE = 2

_RUN_ID = re.compile(r"^[0-9a-fA-F]{32}$")
_PROV_GLOB = "provgraph_*.json"


class CliError(Prov4MLError):
    """An error the command line reports as one line and exit status ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


_REST_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_REST_LITERAL = re.compile(r"``([^`]+)``")


def plain_text(text: str) -> str:
    """A docstring as ``--help`` shows it: reST's inline literals and roles (:mod:`x`, :func:`~a.b`)
    become the plain names."""
    text = _REST_ROLE.sub(lambda m: m.group(1), text)
    return _REST_LITERAL.sub(lambda m: m.group(1), text)


def echo(text: str = "") -> None:
    """Write one line to standard output."""
    sys.stdout.write(text + "\n")


def warn(text: str) -> None:
    """Write to standard error (messages, never data)."""
    sys.stderr.write(text.rstrip("\n") + "\n")


class Scratch:
    """A temporary folder for downloaded MLflow artifacts, made on first use, removed at exit."""

    def __init__(self) -> None:
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def path(self) -> Path:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="prov4ml-cli-")
        return Path(self._dir.name)

    def close(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def add_run_argument(parser: argparse.ArgumentParser, *names: str, nargs: str | None = None) -> None:
    """Add the positional RUN_OR_FILE argument(s) and ``--tracking-uri``."""
    for name in names or ("run",):
        parser.add_argument(
            name, metavar=name.upper() if name != "run" else "RUN_OR_FILE", nargs=nargs,
            help="a PROV-JSON file (provgraph_<run_id>.json), a folder holding one, or an MLflow run id "
                 "(with --tracking-uri)",
        )
    parser.add_argument(
        "--tracking-uri", metavar="URI", default=None,
        help="MLflow tracking store to fetch a run id's provenance from (sqlite:///path/mlflow.db, "
             "http://host:5000); default: $MLFLOW_TRACKING_URI",
    )


def _documents_in(folder: Path, target: str) -> list[Path]:
    """The PROV documents in ``folder`` (or its ``prov/``), newest first (by modification time).

    Raises:
        CliError: there is none.
    """
    found = list(folder.glob(_PROV_GLOB)) or list(folder.glob(f"prov/{_PROV_GLOB}"))
    if not found:
        raise CliError(f"{target}: folder holds no {_PROV_GLOB} (nor prov/{_PROV_GLOB})")
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def resolve_prov_files(target: str, tracking_uri: str | None, scratch: Scratch) -> list[Path]:
    """Every PROV-JSON file ``target`` names: all the runs of a folder (newest first), else the one
    file :func:`resolve_prov_file` finds."""
    path = Path(target)
    if path.is_dir():
        return _documents_in(path, target)
    return [resolve_prov_file(target, tracking_uri, scratch)]


def resolve_prov_file(target: str, tracking_uri: str | None, scratch: Scratch) -> Path:
    """The local PROV-JSON file that ``target`` names: a file, a run's folder or an MLflow run id.

    A folder holding several runs' documents gives the newest (by modification time), with a
    note on standard error naming it and how to pick another.

    Raises:
        CliError: nothing usable is found; the message says what was tried.
    """
    path = Path(target)
    if path.is_dir():
        found = _documents_in(path, target)
        if len(found) > 1:
            others = ", ".join(p.name for p in found[1:4]) + (", ..." if len(found) > 4 else "")
            warn(f"note: {target} holds {len(found)} runs' PROV documents; using the newest, {found[0].name} "
                 f"(older: {others}); name a file to choose another")
        return found[0]
    if path.exists():
        return path
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    looks_like_run = _RUN_ID.match(target) is not None
    if uri and (looks_like_run or tracking_uri):
        from prov4ml_lightning.sinks.mlflow.fetch import fetch_provenance

        dst = scratch.path() / target
        dst.mkdir(parents=True, exist_ok=True)
        try:
            return fetch_provenance(uri, target, dst)
        except Prov4MLError as err:
            raise CliError(str(err)) from err
    if looks_like_run:
        raise CliError(f"{target}: no such file or folder; to read MLflow run {target} pass "
                       "--tracking-uri URI (or set MLFLOW_TRACKING_URI)")
    raise CliError(f"{target}: no such file or folder")
