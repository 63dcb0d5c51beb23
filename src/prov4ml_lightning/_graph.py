"""Draw a run's provenance with Graphviz: DOT always, SVG when the ``dot`` binary exists.

Shapes and colours follow the PROV conventions (entities yellow ellipses, activities blue
boxes, agents orange houses). Labels go through the ``graphviz`` package, which quotes and
escapes them, so a metric named ``a" -> b`` cannot add edges.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import graphviz

from prov4ml_lightning._prov import GraphSpec

__all__ = ["dot_available", "render_svg", "to_dot"]

log = logging.getLogger(__name__)

_STYLE = {
    "entity": {"shape": "ellipse", "style": "filled", "fillcolor": "#FFFC87", "color": "#808080"},
    "activity": {"shape": "box", "style": "filled", "fillcolor": "#9FB1FC", "color": "#0000FF"},
    "agent": {"shape": "house", "style": "filled", "fillcolor": "#FED37F"},
}
_MAX_LABEL = 48


def _short(text: str, limit: int = _MAX_LABEL) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def to_dot(spec: GraphSpec, title: str = "provenance") -> str:
    """DOT source for ``spec``."""
    graph = graphviz.Digraph(name="prov", graph_attr={"rankdir": "BT", "label": _short(title, 80),
                                                      "fontsize": "12", "labelloc": "t"})
    # Node names are our own counters: PROV ids hold ':' which DOT reads as a port separator.
    names: dict[str, str] = {}
    for ident, kind, label, _attrs in spec.nodes:
        names[ident] = f"n{len(names)}"
        graph.node(names[ident], _short(label), tooltip=ident, **_STYLE.get(kind, {}))
    for src, dst, relation in spec.edges:
        for ident in (src, dst):
            if ident not in names:  # a relation to a record declared elsewhere
                names[ident] = f"n{len(names)}"
                graph.node(names[ident], _short(ident), style="dashed")
        graph.edge(names[src], names[dst], label=relation, fontsize="9")
    return graph.source


def dot_available() -> bool:
    return shutil.which("dot") is not None


def render_svg(dot_path: Path, fmt: str = "svg") -> Path | None:
    """Render ``dot_path`` next to itself; ``None`` (and a log line) when Graphviz is missing."""
    if not dot_available():
        log.info("Graphviz `dot` not found; wrote %s only (apt-get install graphviz)", dot_path)
        return None
    out = dot_path.with_suffix(f".{fmt}")
    graphviz.render("dot", fmt, str(dot_path), outfile=str(out))
    return out
