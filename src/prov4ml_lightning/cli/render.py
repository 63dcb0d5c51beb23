"""Draw a run's provenance graph with Graphviz (SVG, PNG or PDF), and always its DOT source.

PROV's shapes and colours: entities are yellow ellipses, activities blue boxes, agents orange
houses; a legend explains them. Labels are shortened to 48 characters; hovering a node in the
SVG shows its identifier and every attribute.

Time runs top to bottom: the run, then its activities in start order down the middle column,
clustered by fit (and by session for a reopened run); what the run used (data, code, environment,
hyperparameters, agents) on the left, what it produced (checkpoints, model, metric series, files)
on the right.

  --level 1   overview (default): the run, its fits, epochs and tests, data, code, environment,
              model, checkpoints and agents, one list node for the hyperparameters and one for
              the metric series; the legend counts what was left out
  --level 2   every record

Large runs stay legible: a group of more than --collapse N records of one type (epochs,
validation loops, checkpoints, parameters, ...) shows its first and last 3 members and one
dashed "... K more" node in between, the best checkpoint is always shown, and the relations of
the hidden records are merged onto the dashed node with their count ("wasInformedBy x294").
--collapse 0 draws every record.

--format html writes one self-contained page (no network needed to view it, also inside the
MLflow UI's artifact viewer) holding both levels: pan and zoom, click a node for all its
attributes, search by name, switch level, highlight a node's lineage upstream or downstream.
--level picks the level it opens at.

Without Graphviz's `dot` program the .dot file is still written, the command prints how to
install Graphviz, and exits with status 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from prov4ml_lightning.cli._common import (
    EXIT_DIFFERENT,
    EXIT_OK,
    CliError,
    Scratch,
    add_run_argument,
    echo,
    resolve_prov_file,
    warn,
)
from prov4ml_lightning.files import atomic_write_text

if TYPE_CHECKING:
    from prov4ml_lightning.provenance import GraphSpec

__all__ = ["FORMATS", "HELP", "NAME", "add_arguments", "draw", "run"]

NAME = "render"
HELP = "draw the provenance graph (SVG/PNG/PDF via Graphviz, plus the .dot source)"
FORMATS = ("svg", "png", "pdf", "dot", "html")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="picture to write (default: <document name>.<format> in the current folder); "
                             "the DOT source goes next to it with the suffix .dot")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="picture format (default: OUT's suffix, else svg); dot writes only the DOT source; "
                             "html the interactive page")
    parser.add_argument("--level", type=int, choices=(1, 2), default=1,
                        help="1: overview (default: run, epochs, data, model, checkpoints, code, environment, "
                             "hyperparameters and metric series as lists); 2: every record")
    parser.add_argument("--collapse", type=int, default=10, metavar="N",
                        help="collapse groups of more than N records of one type (default 10; 0: never)")
    parser.add_argument("--no-legend", action="store_true", help="leave the legend out")


def _format(args: argparse.Namespace) -> str:
    suffix = Path(args.output).suffix.lower().lstrip(".") if args.output else ""
    if args.format and suffix and suffix != args.format:
        raise CliError(f"--output {args.output} has suffix .{suffix} but --format is {args.format}")
    if args.format:
        return args.format
    if suffix and suffix not in FORMATS:
        raise CliError(f"--output {args.output}: cannot draw .{suffix}; use one of {', '.join(FORMATS)}")
    return suffix or "svg"


def run(args: argparse.Namespace, scratch: Scratch) -> int:
    from prov4ml_lightning.errors import Prov4MLError
    from prov4ml_lightning.provenance import load_document, to_graph

    if args.collapse < 0:
        raise CliError(f"--collapse must be 0 (never) or a positive number, got {args.collapse}")
    fmt = _format(args)
    source = resolve_prov_file(args.run, args.tracking_uri, scratch)
    try:
        spec = to_graph(load_document(source))
    except Prov4MLError as err:
        raise CliError(str(err)) from err
    out = Path(args.output) if args.output else Path.cwd() / f"{source.stem}.{fmt}"
    return draw(spec, _title(spec), out, fmt, level=args.level, collapse=args.collapse, legend=not args.no_legend)


def draw(spec: GraphSpec, title: str, out: Path, fmt: str, *, level: int = 1, collapse: int = 10,
         legend: bool = True, levels: tuple[int, ...] = (1, 2), command: str = NAME) -> int:
    """Write the drawing of ``spec`` to ``out`` (``fmt``: one of :data:`FORMATS`; the DOT source
    beside it) and print its path: ``prov4ml render``'s, and ``prov4ml lineage``'s of a cross-run
    graph. ``levels``: those the HTML page holds (``level`` the one it opens at)."""
    from prov4ml_lightning.provenance import graph as _graph

    if fmt == "html":
        return _html(spec, title, out, level=level, collapse=collapse, levels=levels, command=command)
    dot_path = out.with_suffix(".dot")
    atomic_write_text(dot_path, _graph.to_dot(spec, title, level=level, collapse=collapse, legend=legend))
    if fmt == "dot":
        echo(str(dot_path))
        return EXIT_OK
    if not _graph.dot_available():
        warn(f"prov4ml {command}: Graphviz's `dot` program is not installed, so {out} was not drawn; "
             f"the graph is in {dot_path}.")
        warn(_graph.INSTALL_GRAPHVIZ)
        warn(f"Then draw it with:  dot -T{fmt} {dot_path} -o {out}   (or run this command again)")
        return EXIT_DIFFERENT
    try:
        _graph.render_file(dot_path, out, fmt)
    except RuntimeError as err:
        raise CliError(str(err), code=EXIT_DIFFERENT) from err
    echo(str(out))
    return EXIT_OK


def _html(spec: GraphSpec, title: str, out: Path, *, level: int, collapse: int, levels: tuple[int, ...],
          command: str) -> int:
    from prov4ml_lightning.provenance import graph as _graph
    from prov4ml_lightning.provenance.html import to_html

    if not _graph.dot_available():
        warn(f"prov4ml {command}: Graphviz's `dot` program lays the page's graphs out; it is not installed, so {out} "
             "was not written.")
        warn(_graph.INSTALL_GRAPHVIZ)
        return EXIT_DIFFERENT
    try:
        text = to_html(spec, title, collapse=collapse, level=level, levels=levels)
    except RuntimeError as err:
        raise CliError(str(err), code=EXIT_DIFFERENT) from err
    atomic_write_text(out, text)
    echo(str(out))
    return EXIT_OK


def _title(spec: GraphSpec) -> str:
    """``experiment / run name`` from the run activity."""
    for ident, _kind, label, attrs in spec.nodes:
        if "p4l:Run" in spec.types.get(ident, []):
            experiment = attrs.get("p4l:experiment_name")
            return f"{experiment} / {label}" if experiment else label
    return "provenance"
