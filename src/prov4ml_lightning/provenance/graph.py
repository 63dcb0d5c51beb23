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

import logging
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import graphviz

from prov4ml_lightning.errors import GraphvizError, Prov4MLInputError
from prov4ml_lightning.provenance.views import GraphSpec

__all__ = ["INSTALL_GRAPHVIZ", "OVERVIEW_TYPES", "dot_available", "render_file", "render_svg", "to_dot"]

log = logging.getLogger(__name__)

_STYLE = {
    "entity": {"shape": "ellipse", "style": "filled", "fillcolor": "#FFFC87", "color": "#808080"},
    "activity": {"shape": "box", "style": "filled", "fillcolor": "#9FB1FC", "color": "#0000FF"},
    "agent": {"shape": "house", "style": "filled", "fillcolor": "#FED37F"},
}
_COLLAPSED_FILL = {"entity": "#FFFDD0", "activity": "#D8E0FE", "agent": "#FEEBC6"}
_MAX_LABEL = 48
_MAX_TOOLTIP_VALUE = 200
#: Members shown at each end of a collapsed group.
_HEAD = _TAIL = 3

#: Record types (``p4l:`` local names, agent types) drawn at level 1.
OVERVIEW_TYPES = frozenset({
    "Run", "Fit", "TrainingEpoch", "Dataset", "Model", "Checkpoint", "Code", "Environment",
    "Person", "SoftwareAgent", "Organization", "Host",
})

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


def _truthy(text: str | None) -> bool:
    return str(text).lower() in ("true", "1", "yes")


@dataclass
class _Node:
    ident: str
    kind: str
    category: str
    label: str
    attrs: dict[str, str]
    members: list[str] = field(default_factory=list)  # labels of the records a collapsed node stands for


def _category(kind: str, types: list[str]) -> str:
    """The type a node is grouped and styled by: its ``p4l:`` type, else its first type, else its kind."""
    for t in types:
        if t.startswith("p4l:"):
            return t[4:]
    if types:
        return types[0].rsplit(":", 1)[-1]
    return kind


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
        if _truthy(get("p4l:best")):
            parts.append("best")
    elif category == "Dataset":
        parts = [f"fingerprint {get('p4l:fingerprint', '')[:10]}" if get("p4l:fingerprint") else "",
                 f"batch {get('p4l:batch_size')}" if get("p4l:batch_size") else ""]
    elif category == "Code":
        if get("p4l:git_commit"):
            parts.append(f"git {get('p4l:git_commit', '')[:10]}" + (" dirty" if _truthy(get("p4l:git_dirty")) else ""))
    elif category == "Environment":
        parts = [f"Python {get('p4l:python_version')}" if get("p4l:python_version") else "",
                 f"torch {get('p4l:torch_version')}" if get("p4l:torch_version") else "", get("p4l:hostname", "")]
    elif category == "Run":
        parts = [get("p4l:status", "")]
    elif get("p4l:sha256"):
        parts = [f"sha256 {get('p4l:sha256', '')[:12]}"]
    return " \u00b7 ".join(p for p in parts if p)


def _label(*lines: str) -> str:
    # escape() each line (no HTML, literal backslashes), join with DOT's own newline escape.
    text = "\\n".join(graphviz.escape(_short(line)) for line in lines if line)
    return graphviz.nohtml(text)


def _tooltip(node: _Node) -> str:
    lines = [node.ident, *(f"{k}: {_short(v, _MAX_TOOLTIP_VALUE)}" for k, v in node.attrs.items() if k != "prov:label")]
    return graphviz.escape("\n".join(lines))


_NAMES = {
    "Parameter": ("hyperparameter", "hyperparameters"), "MetricSeries": ("metric series", "metric series"),
    "TrainingEpoch": ("epoch", "epochs"), "ValidationLoop": ("validation loop", "validation loops"),
    "TestLoop": ("test loop", "test loops"), "Checkpoint": ("checkpoint", "checkpoints"),
    "Artifact": ("artifact", "artifacts"), "Dataset": ("dataset", "datasets"), "Model": ("model", "models"),
    "MetricSegment": ("metric segment", "metric segments"), "SanityCheck": ("sanity check", "sanity checks"),
    "Fit": ("fit", "fits"),
}


def _plural(category: str, n: int) -> str:
    one, many = _NAMES.get(category, (category, category if category.endswith("s") else category + "s"))
    return one if n == 1 else many


def _collapse(nodes: dict[str, _Node], limit: int) -> dict[str, str]:
    """Replace the middle of each large group by one node; return ``{hidden id: collapsed node id}``."""
    groups: dict[tuple[str, str], list[str]] = {}
    for ident, node in nodes.items():
        groups.setdefault((node.kind, node.category), []).append(ident)
    moved: dict[str, str] = {}
    for (kind, category), members in groups.items():
        if len(members) <= limit:
            continue
        middle = [m for m in members[_HEAD:-_TAIL] if not _truthy(nodes[m].attrs.get("p4l:best"))]
        if len(middle) < 2:  # one hidden node would not save anything
            continue
        collapsed_id = f"collapsed:{kind}:{category}"
        labels = [nodes[m].label for m in middle]
        collapsed = _Node(collapsed_id, kind, category, f"\u2026 {len(middle)} more {_plural(category, len(middle))}",
                          {"collapsed": f"{len(middle)} records"}, labels)
        # Insert the collapsed node where its first member was, so document order stays meaningful.
        rebuilt: dict[str, _Node] = {}
        for ident, node in nodes.items():
            if ident == middle[0]:
                rebuilt[collapsed_id] = collapsed
            if ident not in middle:
                rebuilt[ident] = node
        nodes.clear()
        nodes.update(rebuilt)
        moved.update(dict.fromkeys(middle, collapsed_id))
    return moved


def to_dot(spec: GraphSpec, title: str = "provenance", *, level: int = 2, collapse: int = 10,
           legend: bool = True) -> str:
    """DOT source for ``spec``.

    Args:
        spec: the flattened document (:func:`prov4ml_lightning.provenance.to_graph`).
        title: the graph's caption.
        level: 1 for the overview (:data:`OVERVIEW_TYPES`), 2 for every record.
        collapse: groups of more than this many same-type nodes are collapsed; 0 keeps every node.
        legend: draw a legend box (shapes, collapsed groups, what level 1 left out).
    """
    if level not in (1, 2):
        raise Prov4MLInputError(f"to_dot: level must be 1 or 2, got {level!r}")
    nodes: dict[str, _Node] = {}
    for ident, kind, label, attrs in spec.nodes:
        category = _category(kind, spec.types.get(ident, []))
        nodes[ident] = _Node(ident, kind, category, label, attrs)
    left_out: Counter[str] = Counter()
    if level == 1:
        for ident in [i for i, n in nodes.items() if n.category not in OVERVIEW_TYPES]:
            left_out[nodes.pop(ident).category] += 1
    moved = _collapse(nodes, collapse) if collapse > 0 else {}

    caption = f"{title}  (level {level}{', overview' if level == 1 else ''})"
    graph = graphviz.Digraph(name="prov", graph_attr={"rankdir": "BT", "label": graphviz.escape(_short(caption, 100)),
                                                      "fontsize": "12", "labelloc": "t"})
    # Node names are our own counters: PROV ids hold ':' which DOT reads as a port separator.
    names: dict[str, str] = {}
    for ident, node in nodes.items():
        names[ident] = f"n{len(names)}"
        style: dict[str, Any] = dict(_STYLE.get(node.kind, {}))
        if node.members:
            style.update(style="filled,dashed", fillcolor=_COLLAPSED_FILL.get(node.kind, "#EEEEEE"))
            shown = node.members if len(node.members) <= 2 else [node.members[0], "\u2026", node.members[-1]]
            graph.node(names[ident], _label(node.label, " ".join(_short(m, 20) for m in shown)),
                       tooltip=graphviz.escape("\n".join(node.members[:200])), **style)
        else:
            graph.node(names[ident], _label(node.label, _detail(node.category, node.attrs)),
                       tooltip=_tooltip(node), **style)

    # Parallel relations between the same two nodes become one edge: "used x12, wasInformedBy".
    edges: dict[tuple[str, str], Counter[str]] = {}
    for src, dst, relation in spec.edges:
        src, dst = moved.get(src, src), moved.get(dst, dst)
        if src == dst:
            continue  # a chain inside a collapsed group
        for ident in (src, dst):
            if ident not in names:
                if level == 1:
                    break
                names[ident] = f"n{len(names)}"  # a relation to a record declared elsewhere
                graph.node(names[ident], _label(ident), style="dashed")
        else:
            edges.setdefault((src, dst), Counter())[relation] += 1
    for (src, dst), relations in edges.items():
        text = ", ".join(r if n == 1 else f"{r} \u00d7{n}" for r, n in relations.items())
        graph.edge(names[src], names[dst], label=graphviz.escape(text), fontsize="9")

    if legend:
        _legend(graph, any(n.members for n in nodes.values()), left_out, collapse)
    return graph.source


def _legend(graph: graphviz.Digraph, collapsed: bool, left_out: Counter[str], limit: int) -> None:
    with graph.subgraph(name="cluster_legend") as box:
        box.attr(label="Legend", fontsize="10", style="rounded", color="#999999", rank="same")
        # Declared right to left: dot lays a rank=same group out in reverse under rankdir=BT.
        keys = [("legend_agent", "agent", "Agent\\n(person, software)"),
                ("legend_activity", "activity", "Activity\\n(run, epoch, loop)"),
                ("legend_entity", "entity", "Entity\\n(data, model, metric, file)")]
        for name, kind, text in keys:
            box.node(name, text, fontsize="9", **_STYLE[kind])
        notes = ["edge A \u2192 B reads \u201cA relation B\u201d", "\u00d7n: n relations merged"]
        if collapsed:
            box.node("legend_collapsed", f"\u2026 N more\\n(groups of > {limit} collapsed)", fontsize="9",
                     shape="box", style="filled,dashed", fillcolor=_COLLAPSED_FILL["activity"])
        if left_out:
            hidden = ", ".join(f"{n} {_plural(c, n)}" for c, n in sorted(left_out.items()))
            notes.append(_short(f"level 1 leaves out: {hidden}", 120))
            notes.append("(--level 2 shows every record)")
        box.node("legend_notes", graphviz.nohtml("\\l".join(graphviz.escape(n) for n in notes) + "\\l"),
                 shape="plaintext", fontsize="9")


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


def render_svg(dot_path: Path, fmt: str = "svg") -> Path | None:
    """Render ``dot_path`` next to itself; ``None`` (and a log line) when Graphviz is missing."""
    if not dot_available():
        log.info("Graphviz `dot` not found; wrote %s only (apt-get install graphviz)", dot_path)
        return None
    return render_file(dot_path, dot_path.with_suffix(f".{fmt}"), fmt)
