"""The ``prov4ml`` command line: render, show, validate, compare and export runs' provenance.

Each subcommand is one module of this package that defines::

    NAME = "render"                      # the subcommand
    HELP = "one line for prov4ml --help"
    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace, scratch: Scratch) -> int: ...   # exit status

and is registered by adding its module name to :data:`COMMANDS`, nothing else. Modules keep
their heavy imports (prov, mlflow, graphviz) inside ``run`` so ``--help`` stays fast.

Exit status: 0 success; 1 a check failed (validate), inputs differ or cannot be told apart (diff)
or the requested picture could not be drawn (render without Graphviz); 2 usage error or an input
that cannot be read (missing file, malformed JSON, unknown run). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from prov4ml_lightning.cli._common import EXIT_USAGE, CliError, Scratch, plain_text, warn
from prov4ml_lightning.errors import Prov4MLError

__all__ = ["COMMANDS", "build_parser", "main"]

#: Subcommand modules of this package, in the order ``prov4ml --help`` lists them.
COMMANDS: tuple[str, ...] = (
    "render",
    "show",
    "validate",
    "diff",
    "export",
    "recover",
    "sync",
    "reproduce",
    "card",
    "lineage",
)

_EPILOG = """\
RUN_OR_FILE is a PROV-JSON file (provgraph_<run_id>.json), a run's provenance folder, or an
MLflow run id together with --tracking-uri (or $MLFLOW_TRACKING_URI).
Exit status: 0 ok, 1 check failed / inputs differ or cannot be told apart, 2 usage or input error."""


def build_parser() -> argparse.ArgumentParser:
    """The ``prov4ml`` parser with one subparser per module in :data:`COMMANDS`."""
    from prov4ml_lightning import __version__

    parser = argparse.ArgumentParser(
        prog="prov4ml", description="Work with the provenance prov4ml-lightning recorded for training runs.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"prov4ml-lightning {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        command = sub.add_parser(module.NAME, help=plain_text(module.HELP),
                                 description=plain_text(module.__doc__ or ""),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``prov4ml`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse exits; we return
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    # MLflow announces schema migrations at INFO on stderr; a reader does not need them.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    scratch = Scratch()
    try:
        code = int(args.handler(args, scratch))
        sys.stdout.flush()  # inside the try: a closed pipe is reported here, not at exit
        return code
    except CliError as err:
        warn(f"prov4ml {args.command}: {err}")
        return err.code
    except Prov4MLError as err:
        warn(f"prov4ml {args.command}: {err}")
        return EXIT_USAGE
    except BrokenPipeError:  # `prov4ml show run | head`: the reader has all it wanted
        _silence_stdout()
        return 0
    except OSError as err:  # unreadable/unwritable paths: the OS says which and why
        where = f"{err.filename}: " if err.filename else ""
        warn(f"prov4ml {args.command}: {where}{err.strerror or err}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    finally:
        scratch.close()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (captured output)
        pass
