"""Draw a run's provenance with Graphviz: DOT always, SVG/PNG/PDF when the ``dot`` binary exists.

Shapes and colours follow the PROV conventions (entities yellow ellipses, activities blue
boxes, agents orange houses). Labels go through :func:`graphviz.escape`, so a metric named
``a" -> b`` or ``<b>x</b>`` cannot add edges or switch to HTML labels.

Two levels: level 1 is the overview (the run, its epochs, data, model, checkpoints, code,
environment and agents) with one legend line counting what it leaves out; level 2 is every
record. Large runs stay legible because repetitive structure is collapsed: any group of more
than ``collapse`` nodes of the same kind and type (hundreds of epochs, validation loops or
checkpoints) shows its first and last three members and one dashed "N more" node in between;
the best checkpoint is always shown; edges of the hidden members are merged onto the dashed
node, and parallel edges between two nodes become one edge labelled with each relation and
its count (drawn as ``wasInformedBy`` times 494).
"""

from __future__ import annotations

import itertools
import logging
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import graphviz

from prov4ml_lightning.errors import GraphvizError
from prov4ml_lightning.provenance.layout import OVERVIEW_TYPES, Node, Plan, plan, plural, truthy
from prov4ml_lightning.provenance.views import GraphSpec

__all__ = ["INSTALL_GRAPHVIZ", "OVERVIEW_TYPES", "dot_available", "dot_from_plan", "render_file", "render_svg",
           "svg_text", "to_dot"]

log = logging.getLogger(__name__)

_STYLE = {
    "entity": {"shape": "ellipse", "style": "filled", "fillcolor": "#FFFC87", "color": "#808080"},
    "activity": {"shape": "box", "style": "filled", "fillcolor": "#9FB1FC", "color": "#0000FF"},
    "agent": {"shape": "house", "style": "filled", "fillcolor": "#FED37F"},
}
_COLLAPSED_FILL = {"entity": "#FFFDD0", "activity": "#D8E0FE", "agent": "#FEEBC6"}
_MAX_LABEL = 48
#: Characters per label line and lines per label part: the picture grows down, not across.
_WRAP, _WRAP_LINES = 24, 3
_MAX_TOOLTIP_VALUE = 200
#: Lines a level-1 list node (hyperparameters, metric series) shows.
_LIST_LINES = 14

INSTALL_GRAPHVIZ = """\
Install Graphviz, which provides `dot`:
  Debian/Ubuntu:  sudo apt-get install graphviz
  Fedora/RHEL:    sudo dnf install graphviz
  macOS:          brew install graphviz
  conda:          conda install -c conda-forge graphviz
  Windows:        winget install graphviz
(the Python package `graphviz` alone is not enough: it calls the `dot` program)"""


def _short(text: str, limit: int = _MAX_LABEL) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _number(text: str) -> str:
    """A float shown with 4 significant digits; anything else unchanged."""
    try:
        value = float(text)
    except ValueError:
        return text
    if text.lstrip("-").isdigit():
        return text
    return f"{value:.4g}"


def _detail(category: str, a: dict[str, str]) -> str:
    """A second label line with the one or two values that identify a record of ``category``."""
    get = a.get
    parts: list[str] = []
    if category == "Parameter":
        parts = [f"= {_number(get('prov:value', ''))}"]
    elif category == "MetricSeries":
        if get("p4l:last_value"):
            parts.append(f"last {_number(get('p4l:last_value', ''))}")
        if get("p4l:count"):
            parts.append(f"{get('p4l:count')} points")
    elif category == "Model":
        if get("p4l:total_params"):
            parts.append(f"{int(float(get('p4l:total_params', '0'))):,} params")
    elif category == "Checkpoint":
        if get("p4l:score"):
            parts.append(f"{get('p4l:monitor', 'score')} {_number(get('p4l:score', ''))}")
        if truthy(get("p4l:best")):
            parts.append("best")
    elif category == "Dataset":
        parts = [f"fingerprint {get('p4l:fingerprint', '')[:10]}" if get("p4l:fingerprint") else "",
                 f"batch {get('p4l:batch_size')}" if get("p4l:batch_size") else ""]
    elif category == "Code":
        if get("p4l:git_commit"):
            parts.append(f"git {get('p4l:git_commit', '')[:10]}" + (" dirty" if truthy(get("p4l:git_dirty")) else ""))
    elif category == "Environment":
        parts = [f"Python {get('p4l:python_version')}" if get("p4l:python_version") else "",
                 f"torch {get('p4l:torch_version')}" if get("p4l:torch_version") else "", get("p4l:hostname", "")]
    elif category == "Run":
        parts = [get("p4l:status", "")]
    elif get("p4l:sha256"):
        parts = [f"sha256 {get('p4l:sha256', '')[:12]}"]
    return " \u00b7 ".join(p for p in parts if p)


_BREAK = re.compile(r"[^\s_/=\-:,]*[\s_/=\-:,]?")


def _wrap(text: str, width: int = _WRAP, most: int = _WRAP_LINES) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken after a space, ``_ / = - : ,`` (inside a
    long word when it has none); the last of ``most`` lines ends with an ellipsis when text is left."""
    pieces = [w[i:i + width] for w in _BREAK.findall(text) if w for i in range(0, len(w), width)]
    lines = [""]
    for piece in pieces:
        if lines[-1] and len(lines[-1] + piece.rstrip()) > width:
            lines.append("")
        lines[-1] += piece.lstrip() if not lines[-1] else piece
    lines = [line.rstrip() for line in lines]
    if len(lines) > most:
        lines = [*lines[: most - 1], _short(lines[most - 1] + "\u2026", width)]
    return lines


def _label(*lines: str, width: int = _WRAP) -> str:
    # escape() each line (no HTML, literal backslashes), join with DOT's own newline escape.
    text = "\\n".join(graphviz.escape(part) for line in lines if line for part in _wrap(line, width))
    return graphviz.nohtml(text)


def _member_line(plan: Plan, ident: str) -> str:
    """One line of a list node: ``lr = 0.002`` or ``val_loss (validation): last 0.0257``."""
    _kind, category, label, attrs = plan.records[ident]
    if category == "Parameter":
        return f"{label} = {_number(attrs.get('prov:value', ''))}"
    if category == "MetricSeries" and attrs.get("p4l:last_value"):
        return f"{label}: last {_number(attrs['p4l:last_value'])}"
    return label


def _node_label(plan: Plan, node: Node) -> str:
    if node.style == "list":
        lines = [_member_line(plan, m) for m in node.members]
        if len(lines) > _LIST_LINES:
            lines = [*lines[: _LIST_LINES - 1], f"\u2026 {len(lines) - _LIST_LINES + 1} more"]
        body = "".join(graphviz.escape(_short(line, 40)) + "\\l" for line in lines)
        return graphviz.nohtml(graphviz.escape(node.label) + "\\n" + body)
    if node.style == "collapsed":
        labels = [plan.records[m][2] for m in node.members]
        shown = labels if len(labels) <= 2 else [labels[0], "\u2026", labels[-1]]
        return _label(node.label, " ".join(_short(m, 20) for m in shown))
    # a house is about twice as wide as its text: agents' lines are kept shorter
    return _label(node.label, _detail(node.category, node.attrs), width=_WRAP if node.kind != "agent" else 16)


def _node_tooltip(plan: Plan, node: Node) -> str:
    if node.members:
        return graphviz.escape("\n".join(plan.records[m][2] for m in node.members[:200]))
    lines = [node.ident, *(f"{k}: {_short(v, _MAX_TOOLTIP_VALUE)}" for k, v in node.attrs.items())]
    return graphviz.escape("\n".join(lines))


_CLUSTER_STYLE = {"fit": {"style": "rounded,filled", "fillcolor": "#F3F5FF", "color": "#8090D0"},
                  "session": {"style": "rounded,dashed", "color": "#606060"},
                  "run": {"style": "rounded,filled", "fillcolor": "#F7F7F7", "color": "#404040", "penwidth": "1.5"},
                  "side": {"style": "rounded", "color": "#B0B0B0"}}


def to_dot(spec: GraphSpec, title: str = "provenance", *, level: int = 1, collapse: int = 10,
           legend: bool = True, ids: str = "") -> str:
    """DOT source for ``spec``, laid out as :mod:`.layout` plans it.

    Args:
        spec: the flattened document (:func:`prov4ml_lightning.provenance.to_graph`).
        title: the graph's caption.
        level: 1 for the overview (the default), 2 for every record.
        collapse: groups of more than this many same-type nodes are collapsed; 0 keeps every node.
        legend: draw a legend box (shapes, collapsed groups, what level 1 left out).
        ids: prefix of the SVG ``id`` of each node (``<ids>n3``) and edge (``<ids>e7``); the HTML
            view uses it to find them.
    """
    return dot_from_plan(plan(spec, level=level, collapse=collapse), title, legend=legend, ids=ids)


def dot_from_plan(p: Plan, title: str = "provenance", *, legend: bool = True, ids: str = "") -> str:
    """DOT source of an already computed :class:`~.layout.Plan` (names ``n<i>`` in ``p.nodes`` order)."""
    caption = f"{title}  ({p.runs} runs)" if p.runs > 1 else \
        f"{title}  (level {p.level}{', overview' if p.level == 1 else ''})"
    graph = graphviz.Digraph(name="prov", graph_attr={
        "rankdir": "TB", "newrank": "true", "label": graphviz.escape(_short(caption, 100)), "fontsize": "14",
        "labelloc": "t", "labeljust": "l", "nodesep": "0.2", "ranksep": "0.35", "fontname": "Helvetica",
    }, node_attr={"fontname": "Helvetica", "fontsize": "11"}, edge_attr={"fontname": "Helvetica"})
    # Node names are our own counters: PROV ids hold ':' which DOT reads as a port separator.
    names = {ident: f"n{k}" for k, ident in enumerate(p.nodes)}
    bodies: dict[str | None, list[tuple[str, str, dict[str, Any]]]] = {}
    for ident, node in p.nodes.items():
        style: dict[str, Any] = dict(_STYLE.get(node.kind, {}))
        if node.style == "collapsed":
            style.update(style="filled,dashed", fillcolor=_COLLAPSED_FILL.get(node.kind, "#EEEEEE"))
        elif node.style == "list":
            style.update(shape="note")
        elif node.placeholder:
            style = {"style": "dashed"}
        if ids:
            style["id"] = f"{ids}{names[ident]}"
        where = node.cluster if node.role == "activity" else f"cluster_{node.role}s"
        label = _node_label(p, node) if not node.placeholder else _label(node.ident)
        bodies.setdefault(where, []).append((names[ident], label, {"tooltip": _node_tooltip(p, node), **style}))
    # The middle column of a row with no activity of its own (its activity made more than one record):
    # an invisible point in that activity's cluster, so the row still has a left, a middle and a right.
    middles: list[str] = []
    cluster: str | None = None
    for r, row in enumerate(p.rows):
        if row.middle is not None:
            middles.append(names[row.middle])
            cluster = p.nodes[row.middle].cluster
        else:
            middles.append(f"s{r}")
            bodies.setdefault(cluster, []).append(
                (f"s{r}", "", {"shape": "point", "style": "invis", "width": "0", "height": "0"}))

    def add_cluster(parent: graphviz.Digraph, cluster_id: str | None) -> None:
        for name, label, attrs in bodies.get(cluster_id, []):
            parent.node(name, label, **attrs)
        for child in [c for c in p.clusters.values() if c.parent == cluster_id]:
            with parent.subgraph(name=child.ident) as sub:
                kind = next((k for k in ("session", "run") if child.ident.startswith(f"cluster_{k}_")), "fit")
                sub.attr(label=graphviz.escape(_short(child.label, 60)), fontsize="11", peripheries="1",
                         **_CLUSTER_STYLE[kind])
                add_cluster(sub, child.ident)

    def add_side(parent: graphviz.Digraph, side: str, text: str) -> None:
        if bodies.get(f"cluster_{side}"):
            with parent.subgraph(name=f"cluster_{side}") as sub:
                sub.attr(label=text, fontsize="11", peripheries="1", **_CLUSTER_STYLE["side"])
                for name, label, attrs in bodies[f"cluster_{side}"]:
                    sub.node(name, label, **attrs)

    # Three columns, each a cluster: Graphviz orders clusters by edge crossings (flat edges only order the
    # nodes inside one cluster); the anchors below decide between the two mirror images. The used column
    # and the timeline share an invisible cluster: an edge from a record used to a later activity then
    # runs between the two columns, not around the produced one.
    with graph.subgraph(name="cluster_used_then") as used_then:
        used_then.attr(label="", peripheries="0")
        add_side(used_then, "inputs", "used: data, code, environment, hyperparameters, agents")
        with used_then.subgraph(name="cluster_timeline") as timeline:
            timeline.attr(label="", peripheries="0")
            add_cluster(timeline, None)
    add_side(graph, "outputs", "produced: checkpoints, model, metrics, files")

    # Layout only: one rank per planned row, its used records left of its activity, its products right
    # of it (flat invisible edges fix that order); rows chained top to bottom, activities in time order.
    for row, middle in zip(p.rows, middles, strict=True):
        members = [*((names[row.left],) if row.left else ()), middle, *((names[row.right],) if row.right else ())]
        with graph.subgraph() as same:
            same.attr(rank="same")
            for name in members:
                same.node(name)
    for a, b in itertools.pairwise(middles):
        graph.edge(a, b, style="invis", weight="4")
    # Anchors above the first row, outside every cluster (flat edges do order them): the columns hang
    # from them, and the mirror image of the three columns would cross these edges.
    heads = {"input": "anchor_l", "activity": "anchor_m", "output": "anchor_r"}
    with graph.subgraph() as top:
        top.attr(rank="min")
        for name in heads.values():
            top.node(name, "", shape="point", style="invis", width="0", height="0")
    graph.edge("anchor_l", "anchor_m", style="invis")
    graph.edge("anchor_m", "anchor_r", style="invis")
    for role, head in heads.items():
        column = [names[i] for row in p.rows for i in (row.left if role == "input" else row.right if role == "output"
                                                       else None,) if i] if role != "activity" else middles
        first = column[0] if column else None
        if first:
            graph.edge(head, first, style="invis")
    # PROV edges point from effect to cause (entity -> the activity that generated it); drawn from
    # cause to effect with the arrowhead at the cause, so time runs downwards and arrows keep PROV's sense.
    for k, edge in enumerate(p.edges):
        extra = {"id": f"{ids}e{k}"} if ids else {}
        src, dst = p.nodes[edge.src], p.nodes[edge.dst]
        extra["constraint"] = "false"  # the rows above place every node
        # The side says it: an edge into the left column is `used`, one out to the right `wasGeneratedBy`;
        # the others are labelled (xlabel: placed after the layout, so labels do not widen the gaps).
        text = graphviz.escape(edge.text())
        obvious = {"used": "input", "wasGeneratedBy": "output"}
        if len(edge.relations) == 1 and edge.relations.get(next(iter(edge.relations))) == 1 and \
                obvious.get(next(iter(edge.relations))) in (src.role, dst.role):
            extra["tooltip"] = text
        else:
            extra["xlabel"] = text
        graph.edge(names[edge.dst], names[edge.src], dir="back", fontsize="8", fontcolor="#505050", color="#707070",
                   **extra)

    if legend:
        _legend(graph, p, middles[-1] if middles else None)
    return graph.source


def _legend(graph: graphviz.Digraph, p: Plan, above: str | None) -> None:
    """A box under the drawing (below ``above``, the last row's middle): the shapes in one row, notes under them."""
    with graph.subgraph(name="cluster_legend") as box:
        box.attr(label="Legend", fontsize="10", style="rounded", color="#999999")
        keys = [("legend_entity", "entity", "Entity\\n(data, model,\\nmetric, file)"),
                ("legend_activity", "activity", "Activity\\n(run, epoch, loop)"),
                ("legend_agent", "agent", "Agent\\n(person, software)")]
        with box.subgraph() as row:
            row.attr(rank="same")
            for name, kind, text in keys:
                row.node(name, text, fontsize="9", **_STYLE[kind])
            if any(n.style == "collapsed" for n in p.nodes.values()):
                row.node("legend_collapsed", f"\u2026 N more\\n(groups of > {p.collapse}\\ncollapsed)", fontsize="9",
                         shape="box", style="filled,dashed", fillcolor=_COLLAPSED_FILL["activity"])
        notes = ["time runs top to bottom", "edge A \u2192 B reads \u201cA relation B\u201d",
                 "unlabelled: used (left column), wasGeneratedBy (right)", "\u00d7n: n relations merged"]
        if p.implied:
            notes.append(f"{p.implied} wasInformedBy/wasStartedBy shown by a nearer chain")
        if p.left_out or p.relations_left_out:
            hidden = ", ".join([*(f"{n} {plural(c, n)}" for c, n in sorted(p.left_out.items())),
                                *(f"{n} {r} of checkpoints" for r, n in sorted(p.relations_left_out.items()))])
            notes.extend(_wrap(f"level 1 leaves out: {hidden}", 60, 4))
            notes.append("(--level 2 shows every record)")
        box.node("legend_notes", graphviz.nohtml("\\l".join(graphviz.escape(n) for n in notes) + "\\l"),
                 shape="plaintext", fontsize="9")
        box.edge("legend_activity", "legend_notes", style="invis")
    if above:
        graph.edge(above, "legend_activity", style="invis")


def dot_available() -> bool:
    return shutil.which("dot") is not None


def render_file(dot_path: Path, out: Path, fmt: str = "svg") -> Path:
    """Run Graphviz ``dot -T<fmt> dot_path -o out``.

    Raises:
        FileNotFoundError: ``dot`` is not installed (see :data:`INSTALL_GRAPHVIZ`).
        GraphvizError: ``dot`` failed (also a ``RuntimeError``); the message is its first error line.
    """
    exe = shutil.which("dot")
    if exe is None:
        raise FileNotFoundError("Graphviz `dot` not found")
    proc = subprocess.run([exe, f"-T{fmt}", str(dot_path), "-o", str(out)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[0]
        raise GraphvizError(f"dot -T{fmt} {dot_path} failed: {first}")
    return out


def svg_text(dot_source: str) -> str:
    """Lay ``dot_source`` out with Graphviz ``dot`` and return the SVG text.

    Raises:
        FileNotFoundError: ``dot`` is not installed (see :data:`INSTALL_GRAPHVIZ`).
        GraphvizError: ``dot`` failed; the message is its first error line.
    """
    exe = shutil.which("dot")
    if exe is None:
        raise FileNotFoundError("Graphviz `dot` not found")
    proc = subprocess.run([exe, "-Tsvg"], input=dot_source.encode("utf-8"), capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GraphvizError(f"dot -Tsvg failed: {err[0] if err else f'exit status {proc.returncode}'}")
    return proc.stdout.decode("utf-8")


def render_svg(dot_path: Path, fmt: str = "svg") -> Path | None:
    """Render ``dot_path`` next to itself; ``None`` (and a log line) when Graphviz is missing."""
    if not dot_available():
        log.info("Graphviz `dot` not found; wrote %s only (apt-get install graphviz)", dot_path)
        return None
    return render_file(dot_path, dot_path.with_suffix(f".{fmt}"), fmt)
