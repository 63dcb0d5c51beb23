"""One self-contained HTML page to explore a run's provenance: ``prov4ml render --format html``,
and ``provgraph_<run_id>.html`` beside the SVG of every run.

The page holds the Graphviz drawing of each detail level (the same :class:`~.layout.Plan` the
SVG is drawn from) and the records behind every node, and its own script and style from
``assets/`` (no network: it also works inside the MLflow UI, which shows HTML artifacts in a
sandboxed iframe). Pan and zoom, click a node for all its attributes, search by name, switch
level, highlight a node's lineage upstream or downstream.

Every string that comes from the run is escaped: the SVG text by Graphviz (XML entities), the
records as JSON in a ``<script type="application/json">`` element with ``<``, ``>`` and ``&``
written as ``\\u003c``, ``\\u003e``, ``\\u0026``, and the script shows them with ``textContent``
only, never as markup. A Content-Security-Policy allows only the page's own script (by its
hash) and no network at all.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from importlib import resources
from typing import Any

from prov4ml_lightning.errors import Prov4MLInputError
from prov4ml_lightning.provenance.graph import dot_from_plan, svg_text
from prov4ml_lightning.provenance.layout import Plan, plan
from prov4ml_lightning.provenance.views import GraphSpec

__all__ = ["MAX_MEMBERS", "script_json", "to_html"]

#: Members of a collapsed or list node whose records the page carries (the rest are counted).
MAX_MEMBERS = 500
_PROLOG = re.compile(r"\A.*?(?=<svg\b)", re.DOTALL)


def script_json(data: Any) -> str:
    """``data`` as JSON safe inside a ``<script>`` element: no ``</script>``, no ``<!--``, no HTML."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for char, code in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                       ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, code)
    return text


def _record(p: Plan, ident: str) -> dict[str, Any]:
    kind, category, label, attrs = p.records.get(ident, ("entity", "unknown", ident, {}))
    return {"id": ident, "kind": kind, "type": category, "label": label, "attrs": attrs}


def _level_data(p: Plan, ids: str) -> dict[str, Any]:
    """What the script needs of one level: each drawn node's records, and the drawn edges."""
    names = {ident: f"{ids}n{k}" for k, ident in enumerate(p.nodes)}
    nodes = {}
    for ident, node in p.nodes.items():
        entry = {**_record(p, ident), "label": node.label, "style": node.style or ("placeholder" if node.placeholder
                                                                                  else "")}
        if node.members:
            entry["type"] = node.category
            entry["members"] = [_record(p, m) for m in node.members[:MAX_MEMBERS]]
            entry["more"] = max(0, len(node.members) - MAX_MEMBERS)
        nodes[names[ident]] = entry
    edges = [[names[e.src], names[e.dst], e.text(), f"{ids}e{k}"] for k, e in enumerate(p.edges)]
    return {"nodes": nodes, "edges": edges}


def to_html(spec: GraphSpec, title: str = "provenance", *, collapse: int = 10, level: int = 1,
            levels: tuple[int, ...] = (1, 2)) -> str:
    """The page for ``spec`` (``levels``, 1 and 2 by default; ``level`` is the one shown first; a
    page of one level has no level buttons).

    Raises:
        FileNotFoundError: Graphviz ``dot`` is not installed (it lays the graphs out).
        GraphvizError: ``dot`` failed.
    """
    if level not in levels:
        raise Prov4MLInputError(f"to_html: level {level!r} is not one of the page's levels {levels!r}")
    drawn = []
    for lvl in levels:
        p = plan(spec, level=lvl, collapse=collapse)
        ids = f"l{lvl}-"
        svg = _PROLOG.sub("", svg_text(dot_from_plan(p, title, ids=ids)))
        drawn.append((lvl, svg, _level_data(p, ids)))
    assets = resources.files("prov4ml_lightning.provenance") / "assets"
    script = (assets / "view.js").read_text(encoding="utf-8")
    style = (assets / "view.css").read_text(encoding="utf-8")
    data = {"title": title, "level": level, "levels": {str(lvl): d for lvl, _svg, d in drawn}}
    panes = "\n".join(
        f'<div class="pane" data-level="{lvl}"{"" if lvl == level else " hidden"}>{svg}</div>'
        for lvl, svg, _d in drawn)
    # The policy allows exactly this script (by hash): an injected inline handler could not run either.
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return _PAGE.format(title=html.escape(title), style=style, script=script, data=script_json(data),
                        panes=panes, script_hash=f"sha256-{digest}", levels=_LEVELS if len(levels) > 1 else "")


_LEVELS = """
    <span class="group" role="group" aria-label="detail level">
      <button type="button" data-level="1" title="the run, its fits, epochs, data, model, checkpoints">overview</button>
      <button type="button" data-level="2" title="every record">every record</button>
    </span>"""


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; \
script-src '{script_hash}'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} \u2014 provenance</title>
<style>{style}</style>
</head>
<body>
<header>
  <h1>{title}</h1>
  <div class="tools">{levels}
    <input id="search" type="search" placeholder="search a name\u2026" autocomplete="off">
    <span id="hits" aria-live="polite"></span>
    <span class="group" role="group" aria-label="lineage">
      <button type="button" id="up" disabled title="what the selected node depends on">upstream</button>
      <button type="button" id="down" disabled title="what depends on the selected node">downstream</button>
      <button type="button" id="clear" title="show everything">clear</button>
    </span>
    <button type="button" id="fit" title="fit the graph to the window">fit</button>
  </div>
</header>
<main>
  <div id="stage">
{panes}
  </div>
  <aside id="details"><p class="hint">Click a node to see all its attributes. Drag to pan, wheel to zoom.</p></aside>
</main>
<script type="application/json" id="prov-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""
