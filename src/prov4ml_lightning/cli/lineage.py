"""Lineage across runs: ``--downstream DATASET|RUN|MODEL`` lists every run, checkpoint and model
that depends on it, across runs and fine-tuning generations (a run whose initial weights are
another run's model or checkpoint derives from it); ``--upstream MODEL`` lists the data, code, runs
and weights behind a model. Reads every run's PROV document of a tracking store (--tracking-uri,
or $MLFLOW_TRACKING_URI) or of folders and files given as SOURCE. DATASET is a dataset's
fingerprint (or its first hex digits), RUN a run id, MODEL a ``models:/`` URI, a weights' or
file's sha256 (or a prefix), or an entity identifier.

--format svg|html draws the records the answer reached with ``prov4ml render``'s drawing: one
cluster per run (in start order, down the middle column), what the runs used (datasets, code,
initial weights) on the left, what they produced (checkpoints, models) on the right, and the
used / generated / derived-from edges between them, across runs (a run's initial weights derived
from another run's model). The relations of a run's other activities (its epochs, its session)
are drawn from its fit, else from the run. --format html is the interactive page of ``render``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

from prov4ml_lightning.cli._common import EXIT_OK, CliError, Scratch, echo, warn

__all__ = ["HELP", "NAME", "add_arguments", "run"]

NAME = "lineage"
HELP = "what depends on a dataset, run or model across runs (--downstream), or what a model came from (--upstream)"
#: --format: text, or what ``render`` draws
DRAWINGS = ("text", "svg", "png", "pdf", "dot", "html")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", metavar="SOURCE", nargs="*",
                        help="folders (searched recursively) or PROV-JSON files (provgraph_<run_id>.json); "
                             "default: every run of the tracking store")
    parser.add_argument("--tracking-uri", metavar="URI", default=None,
                        help="MLflow tracking store whose runs' PROV documents are read (sqlite:///path/mlflow.db, "
                             "http://host:5000); default: $MLFLOW_TRACKING_URI when no SOURCE is given")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--downstream", metavar="DATASET|RUN|MODEL",
                       help="list the runs, checkpoints and models depending on it")
    which.add_argument("--upstream", metavar="MODEL", help="list the datasets, code, runs and weights behind it")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.add_argument("--format", choices=DRAWINGS, default=None,
                        help="text (default): print the answer; svg, png, pdf, dot or html: draw the cross-run graph "
                             "the answer reached, laid out as `prov4ml render` draws a run (default: OUT's suffix)")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="the drawing to write (default: lineage_<downstream|upstream>.<format> in the current "
                             "folder); for svg, png, pdf and dot the DOT source goes next to it with the "
                             "suffix .dot (html: the page only)")
    parser.add_argument("--collapse", type=int, default=10, metavar="N",
                        help="in a drawing, collapse groups of more than N records of one type in one run "
                             "(default 10; 0: never)")


def document_paths(sources: list[str], tracking_uri: str | None, scratch: Scratch) -> list[Path]:
    """The PROV-JSON files of ``sources`` (folders searched recursively), plus every run's of the
    store ``tracking_uri`` (default ``$MLFLOW_TRACKING_URI`` when there is no source)."""
    paths: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(path.rglob("provgraph_*.json"))
            if not found:
                raise CliError(f"{source}: folder holds no provgraph_*.json")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise CliError(f"{source}: no such file or folder")
    uri = tracking_uri or (None if sources else os.environ.get("MLFLOW_TRACKING_URI"))
    if uri:
        from prov4ml_lightning.errors import Prov4MLError
        from prov4ml_lightning.sinks.mlflow.fetch import fetch_all_provenance

        uri = store_uri(uri)
        saved = {k: os.environ.get(k) for k in _HTTP_DEFAULTS}
        os.environ.update({k: v for k, v in _HTTP_DEFAULTS.items() if saved[k] is None})
        try:
            paths += fetch_all_provenance(uri, scratch.path())
        except Prov4MLError as err:
            raise CliError(str(err)) from err
        finally:
            for k, old in saved.items():
                if old is None:
                    os.environ.pop(k, None)
    if not sources and not uri:
        raise CliError("name PROV documents (SOURCE folders or files) or a store (--tracking-uri URI, or set "
                       "MLFLOW_TRACKING_URI)")
    if not paths:
        raise CliError(f"no run with a PROV document in {', '.join(sources) or uri}")
    return paths


#: MLflow's HTTP settings for a command reading a server, unless the user set them: a server that
#: stops answering fails in seconds, not after MLflow's default retries with backoff (minutes)
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
#: seconds a tracking server has to accept a connection
CONNECT_TIMEOUT_S = 3.0


def store_uri(uri: str) -> str:
    """The tracking store ``uri`` as the command reads it: a plain folder (or ``file:`` URI) holding
    ``mlflow.db`` is that SQLite store (said on stderr); any other plain folder or file is refused
    (MLflow's file store is in maintenance mode); a server must accept a connection within
    :data:`CONNECT_TIMEOUT_S` seconds.

    Raises:
        CliError: a plain folder or file that is no SQLite store, or an unreachable server.
    """
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        path = Path(parsed.path if parsed.scheme == "file" else uri).expanduser()
        if (path / "mlflow.db").is_file():
            sqlite = f"sqlite:///{(path / 'mlflow.db').resolve()}"
            warn(f"note: --tracking-uri {uri} is a folder holding mlflow.db: reading {sqlite}")
            return sqlite
        raise CliError(f"--tracking-uri {uri}: a plain {'folder' if path.is_dir() else 'path'} is MLflow's "
                       "file store, which is not read; give the database (sqlite:///FOLDER/mlflow.db) or a "
                       "server (http://host:5000), or name PROV folders as SOURCE")
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname or "localhost", port), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as err:
            raise CliError(f"--tracking-uri {uri}: no tracking server answers at {parsed.hostname}:{port} "
                           f"({err.strerror or type(err).__name__}, within {CONNECT_TIMEOUT_S:g} s)") from None
    return uri


def _format(args: argparse.Namespace) -> str:
    suffix = Path(args.output).suffix.lower().lstrip(".") if args.output else ""
    fmt = args.format or (suffix if suffix in DRAWINGS[1:] else "text")
    if args.output and fmt == "text":
        raise CliError(f"--output {args.output}: name a drawing format (--format svg or html, or a .svg/.html file)")
    if args.output and suffix and suffix != fmt:
        raise CliError(f"--output {args.output} has suffix .{suffix} but --format is {fmt}")
    if fmt != "text" and args.json:
        raise CliError(f"--json prints the answer, --format {fmt} draws it: use one of them")
    if args.collapse < 0:
        raise CliError(f"--collapse must be 0 (never) or a positive number, got {args.collapse}")
    return fmt


def run(args: argparse.Namespace, scratch: Scratch) -> int:
    from prov4ml_lightning.errors import Prov4MLError
    from prov4ml_lightning.provenance.runs_graph import HEX_PREFIX_MIN, read_graph

    fmt = _format(args)
    paths = document_paths(list(args.sources), args.tracking_uri, scratch)
    try:
        graph = read_graph(paths)
    except Prov4MLError as err:
        raise CliError(str(err)) from err
    query = args.downstream if args.downstream is not None else args.upstream
    direction = "downstream" if args.downstream is not None else "upstream"
    matched = graph.find(query)
    if not matched and re.fullmatch(rf"[0-9a-fA-F]{{1,{HEX_PREFIX_MIN - 1}}}", query.strip()):
        raise CliError(f"{query!r}: prefix too short ({HEX_PREFIX_MIN} hex digits minimum)")
    if direction == "upstream" and matched and all("p4l:Dataset" in n.types for n in matched):
        raise CliError(f"--upstream {query}: names a dataset; --upstream takes a model, run or checkpoint "
                       "(a dataset's runs are its downstream: --downstream)")
    if not matched:
        raise CliError(f"{query!r} names nothing in the {len(graph.documents)} runs read (tried: an identifier, "
                       "a run id, a models:/ URI, a fingerprint or sha256 or a prefix of one, a model or dataset name)")
    starts = [n.ident for n in matched]
    reached = graph.downstream(starts) if direction == "downstream" else graph.upstream(starts)
    if fmt != "text":
        from prov4ml_lightning.cli.render import draw

        out = Path(args.output) if args.output else Path.cwd() / f"lineage_{direction}.{fmt}"
        named = (f"{matched[0].label} (run {matched[0].run_id[:8]})" if len(matched) == 1 and matched[0].run_id
                 else query if len(query) <= 24 else query[:16] + "\u2026")
        title = f"{direction} of {named}"
        # the spec holds only what a lineage shows: drawn whole (level 2), one page level
        return draw(graph.spec(reached), title, out, fmt, level=2, collapse=args.collapse, levels=(2,), command=NAME)
    answer: dict[str, Any] = {"query": query, "direction": direction, "runs_read": len(graph.documents),
                              "matched": [{"id": n.ident, "run_id": n.run_id, "label": n.label} for n in matched],
                              **graph.summary(reached)}
    if direction == "downstream":
        for key in ("datasets", "code", "weights"):
            answer.pop(key)
    if args.json:
        echo(json.dumps(answer, indent=2, default=str))
    else:
        _print(answer)
    if len(matched) > 1 and not args.json:
        warn(f"note: {query!r} matched {len(matched)} records; the answer covers them all")
    return EXIT_OK


def _print(answer: dict[str, Any]) -> None:
    matched = answer["matched"]
    echo(f"{answer['direction']} of {answer['query']} ({len(matched)} record{'s' * (len(matched) != 1)} matched, "
         f"{answer['runs_read']} runs read: {', '.join(m['label'] for m in matched[:3])}"
         f"{', ...' if len(matched) > 3 else ''})")
    def partial(r: dict[str, Any]) -> str:
        return "".join(f"  partial load {word} {', '.join(i[:8] for i in r.get(key) or ())}"
                       for key, word in (("partial_load_from", "from"), ("partial_load_into", "into")) if r.get(key))

    sections = [("runs", lambda r: f"{r['run_id']}  {r['run_name'] or ''}  (experiment {r['experiment'] or '?'})"
                                   f"{partial(r)}"),
                ("datasets", lambda d: f"{(d['fingerprint'] or '(no fingerprint)')[:16]}  {d['label']}  "
                                       f"(run {str(d['run_id'])[:8]})"),
                ("code", lambda c: f"{c['script_path'] or c['label']}  git {str(c['git_commit'] or '-')[:12]}  "
                                   f"(run {str(c['run_id'])[:8]})"),
                ("checkpoints", lambda c: f"{c['label']}  weights {str(c['state_dict_sha256'] or '-')[:12]}  "
                                          f"(run {str(c['run_id'])[:8]})  {c['path'] or ''}"),
                ("models", lambda m: f"{m['label']}  {m['model_uri'] or ''}  weights "
                                     f"{str(m['state_dict_sha256'] or '-')[:12]}  (run {str(m['run_id'])[:8]})"),
                ("weights", lambda w: f"{w['label']}  weights {str(w['state_dict_sha256'] or '-')[:12]}  "
                                      f"(run {str(w['run_id'])[:8]})"),
                ("partial_loads", lambda p: f"{'partial' if p.get('partial') else 'renamed'}: run "
                                            f"{str(p['run_id'])[:8]} {p.get('target_prefixes') or ''} <- run "
                                            f"{str(p['from_run_id'])[:8]} {p.get('from_label')} "
                                            f"{p.get('source_prefixes') or ''}  "
                                            f"({p.get('tensors_matched')} tensors; {p.get('target_tensors')} there, "
                                            f"{p.get('source_tensors')} in the source)")]
    for key, line in sections:
        if key not in answer:
            continue
        items = answer[key]
        echo(f"{key} ({len(items)}):")
        for item in items:
            echo(f"  {line(item).rstrip()}")
