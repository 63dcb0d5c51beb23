"""What a drawing of a run shows, and where: the :class:`Plan` both the Graphviz picture
(``graph.py``) and the interactive HTML view (``html.py``) draw.

Time flows top to bottom: the run, then its activities in start-time order (epoch 0, 1, 2, ...)
down the middle column, clustered by fit and, for a reopened run, by session. A spec of several
runs (``GraphSpec.runs``, ``prov4ml lineage``) has one cluster per run instead, the runs in start
order, and collapses groups within a run only. What the run used
(data, code, environment, hyperparameters, agents) is the left column, what it produced
(checkpoints, model, metric series, artifacts) the right one, each record in the row of the
first activity it is related to (:class:`Row`): a checkpoint beside the epoch that wrote it, the
model beside its fit, the test data beside the test. The picture
grows down, not across, so it keeps its natural size in a narrow pane (MLflow's artifact
preview scales an image to the pane's width).

Level 1 (the default overview) draws the run's activities down to epochs and test loops, its
data, code, environment, model, checkpoints and agents, and one list node each for the
hyperparameters and the metric series, without the checkpoints' bookkeeping (which later epoch
replaced a checkpoint, which checkpoint continues which: counted in the legend); level 2 draws
every record and relation. Groups of more than
``collapse`` records of one type in one cluster (hundreds of epochs or checkpoints) keep their
first and last three members, the best checkpoint, and one dashed "... N more" node. An
activity's ``wasInformedBy`` (or ``wasStartedBy``) edge to an activity that already informed one of its nearer
informers (epoch -> run, when epoch -> fit -> run is drawn) is left out of the picture: the
chain shows it, and the document keeps it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from dataclasses import dataclass, field

from prov4ml_lightning.errors import Prov4MLInputError
from prov4ml_lightning.provenance.views import GraphSpec

__all__ = ["INPUT_TYPES", "OUTPUT_TYPES", "OVERVIEW_TYPES", "Cluster", "Edge", "Node", "Plan", "Row", "plan",
           "plural", "truthy"]

#: Record types (``p4l:`` local names, agent types) drawn at level 1.
OVERVIEW_TYPES = frozenset({
    "Run", "Session", "Fit", "TrainingEpoch", "TestLoop", "Dataset", "Model", "Checkpoint", "Code", "Environment",
    "Parameter", "MetricSeries", "MetricsFile", "Artifact", "Person", "SoftwareAgent", "Organization", "Host",
})
#: Entity types drawn on the left (what a run used) and on the right (what it produced).
INPUT_TYPES = frozenset({"Dataset", "Code", "Environment", "Parameter"})
OUTPUT_TYPES = frozenset({"Checkpoint", "Model", "MetricSeries", "MetricSegment", "Artifact", "MetricsFile"})
#: Relations level 1 leaves out (checkpoint bookkeeping: a later epoch replaced it, a checkpoint
#: continues another), by (relation, category of the source, category of the target); the legend counts them.
_BOOKKEEPING = {("wasInvalidatedBy", "Checkpoint", None), ("wasDerivedFrom", "Checkpoint", "Checkpoint")}
#: Types level 1 draws as one list node (its lines name every member).
_LISTED = {"Parameter": ("hyperparameter", "hyperparameters"), "MetricSeries": ("metric series", "metric series")}
#: Members shown at each end of a collapsed group.
_HEAD = _TAIL = 3
_EPOCH = dt.datetime.min.replace(tzinfo=dt.timezone.utc)  # sorts records without a time first


def truthy(text: object) -> bool:
    return str(text).lower() in ("true", "1", "yes")


@dataclass
class Node:
    """One drawn node: a record, or a stand-in for several (``members`` holds their PROV ids)."""

    ident: str
    kind: str  # entity / activity / agent
    category: str  # its p4l type (TrainingEpoch, Checkpoint, ...), else its first type, else kind
    label: str
    attrs: dict[str, str]
    role: str = "input"  # input / activity / output
    cluster: str | None = None  # id of the innermost Cluster holding it
    start: dt.datetime | None = None
    members: list[str] = field(default_factory=list)
    style: str = ""  # "" a record, "collapsed" the middle of a large group, "list" level 1's list node
    placeholder: bool = False  # a relation names a record this document does not declare
    run: str | None = None  # its run, in a spec of several runs (GraphSpec.runs)


@dataclass
class Edge:
    """Relations between two drawn nodes in PROV's direction (``src`` wasGeneratedBy ``dst``...)."""

    src: str
    dst: str
    relations: Counter[str]

    def text(self) -> str:
        return ", ".join(r if n == 1 else f"{r} \u00d7{n}" for r, n in self.relations.items())


@dataclass
class Cluster:
    ident: str
    label: str
    parent: str | None = None


@dataclass
class Row:
    """One row of the drawing: a record used (``left``) and one produced (``right``) beside ``middle``, the
    activity of that time (``None`` in the extra rows an activity with several records needs)."""

    left: str | None = None
    middle: str | None = None
    right: str | None = None


@dataclass
class Plan:
    level: int
    collapse: int
    nodes: dict[str, Node]
    edges: list[Edge]
    clusters: dict[str, Cluster]
    #: activity nodes in start-time order (the drawing chains them top to bottom).
    timeline: list[str]
    #: records level 1 leaves out, by type.
    left_out: Counter[str]
    #: wasInformedBy edges left out because a nearer informer's chain shows them.
    implied: int
    #: every record of the document by PROV id: (kind, category, label, attrs), for members' details.
    records: dict[str, tuple[str, str, str, dict[str, str]]]
    #: the drawing's rows, top to bottom (time order).
    rows: list[Row] = field(default_factory=list)
    #: relations level 1 leaves out (checkpoint bookkeeping), by relation name.
    relations_left_out: Counter[str] = field(default_factory=Counter)
    #: how many runs the drawing holds (several: ``prov4ml lineage``, one cluster each).
    runs: int = 1


def _category(kind: str, types: list[str]) -> str:
    for t in types:
        if t.startswith("p4l:"):
            return t[4:]
    if types:
        return types[0].rsplit(":", 1)[-1]
    return kind


def _number(text: str | None) -> float:
    try:
        return float(text) if text is not None else float("inf")
    except ValueError:
        return float("inf")


def _plural(category: str, n: int) -> str:
    names = {**_LISTED, "TrainingEpoch": ("epoch", "epochs"), "ValidationLoop": ("validation loop", "validation loops"),
             "TestLoop": ("test loop", "test loops"), "Checkpoint": ("checkpoint", "checkpoints"),
             "Artifact": ("artifact", "artifacts"), "Dataset": ("dataset", "datasets"), "Model": ("model", "models"),
             "MetricSegment": ("metric segment", "metric segments"),
             "SanityCheck": ("sanity check", "sanity checks"), "Fit": ("fit", "fits")}
    one, many = names.get(category, (category, category if category.endswith("s") else category + "s"))
    return one if n == 1 else many


def plan(spec: GraphSpec, *, level: int = 1, collapse: int = 10) -> Plan:
    """Decide what to draw of ``spec`` and where (see the module docstring).

    Raises:
        Prov4MLInputError: ``level`` is not 1 or 2, or ``collapse`` is negative.
    """
    if level not in (1, 2):
        raise Prov4MLInputError(f"to_dot: level must be 1 or 2, got {level!r}")
    if collapse < 0:
        raise Prov4MLInputError(f"to_dot: collapse must be 0 (never) or positive, got {collapse!r}")
    generated = {src for src, _dst, rel in spec.edges if rel == "wasGeneratedBy"}
    records: dict[str, tuple[str, str, str, dict[str, str]]] = {}
    nodes: dict[str, Node] = {}
    for ident, kind, label, attrs in spec.nodes:
        category = _category(kind, spec.types.get(ident, []))
        records[ident] = (kind, category, label, attrs)
        if kind == "activity":
            role = "activity"
        elif kind == "entity" and (category in OUTPUT_TYPES or (category not in INPUT_TYPES and ident in generated)):
            role = "output"
        else:
            role = "input"
        nodes[ident] = Node(ident, kind, category, label, attrs, role, start=spec.starts.get(ident),
                            run=spec.runs.get(ident))

    left_out: Counter[str] = Counter()
    removed: set[str] = set()
    if level == 1:
        removed = {i for i, n in nodes.items() if n.category not in OVERVIEW_TYPES}
        for ident in removed:
            left_out[nodes.pop(ident).category] += 1

    clusters = _clusters(spec, nodes)
    implied_edges = _implied_informers(spec, nodes)
    moved: dict[str, str] = {}
    if level == 1:
        moved.update(_list_nodes(nodes))
    if collapse > 0:
        moved.update(_collapse(nodes, collapse))

    edges: dict[tuple[str, str], Counter[str]] = {}
    quiet: Counter[str] = Counter()
    # Level 1: what a left-out activity used (the validation data a validation loop read) is drawn
    # from the drawn activity that started it (its epoch, the fit for the sanity check), labelled
    # with the loop's kind: otherwise that data would stand alone. The document keeps the real edge.
    started_by = {s: d for s, d, r in spec.edges if r == "wasStartedBy"}
    for src, dst, relation in list(spec.edges) if level == 1 else ():
        if relation != "used" or src not in removed or dst in removed or records[src][0] != "activity":
            continue
        starter, hops = started_by.get(src), 0
        while starter is not None and starter in removed and hops < 5:
            starter, hops = started_by.get(starter), hops + 1
        target = moved.get(dst, dst)
        if starter is not None and starter in nodes and target in nodes:
            kind = re.sub(r"(?<!^)(?=[A-Z])", " ", records[src][1]).lower()
            edges.setdefault((moved.get(starter, starter), target), Counter())[f"used by its {kind}"] += 1
    for src, dst, relation in spec.edges:
        if (src, dst, relation) in implied_edges:
            continue
        if level == 1 and src in records and dst in records and \
                {(relation, records[src][1], None), (relation, records[src][1], records[dst][1])} & _BOOKKEEPING:
            quiet[relation] += 1
            continue
        if src in removed or dst in removed:
            continue  # a relation of a record level 1 leaves out
        src, dst = moved.get(src, src), moved.get(dst, dst)
        if src == dst:
            continue  # a chain inside a collapsed group
        missing = [i for i in (src, dst) if i not in nodes]
        if missing and level == 1:
            continue
        for ident in missing:  # a relation to a record declared elsewhere
            nodes[ident] = Node(ident, "entity", "unknown", ident, {}, "input", placeholder=True)
        edges.setdefault((src, dst), Counter())[relation] += 1

    # the run first (its sessions may have begun a moment before it), then activities by start time;
    # several runs one after the other, in their start order
    run_starts = {n.run: (n.start is None, n.start or _EPOCH, n.run or "")
                  for n in nodes.values() if n.category == "Run"}
    timeline = sorted((i for i, n in nodes.items() if n.role == "activity"),
                      key=lambda i: (run_starts.get(nodes[i].run, (False, _EPOCH, "")), nodes[i].category != "Run",
                                     nodes[i].start is None, nodes[i].start or _EPOCH))
    drawn = [Edge(s, d, r) for (s, d), r in edges.items()]
    rows = _rows(nodes, drawn, timeline)
    return Plan(level, collapse, nodes, drawn, clusters, timeline, left_out, len(implied_edges), records, rows, quiet,
                max(1, len(set(spec.runs.values()))))


def _rows(nodes: dict[str, Node], edges: list[Edge], timeline: list[str]) -> list[Row]:
    """Each side record in the row of the first activity (in time order) it is related to: a checkpoint
    beside the epoch that wrote it, the data beside the first epoch that read it; a record related to
    no activity goes to the first row (inputs) or the last (outputs)."""
    index = {ident: k for k, ident in enumerate(timeline)}
    first: dict[str, int] = {}
    for edge in edges:
        for a, b in ((edge.src, edge.dst), (edge.dst, edge.src)):
            if b in index:
                first[a] = min(index[b], first.get(a, index[b]))
    last = max(len(timeline) - 1, 0)
    cells: dict[int, tuple[list[str], list[str]]] = {k: ([], []) for k in range(len(timeline))}
    for ident, node in nodes.items():
        if node.role != "activity":
            k = first.get(ident, last if node.role == "output" else 0)
            cells.setdefault(k, ([], []))[node.role == "output"].append(ident)
    rows: list[Row] = []
    for k in sorted(cells):
        left, right = cells[k]
        for r in range(max(1, len(left), len(right))):
            rows.append(Row(left[r] if r < len(left) else None, timeline[k] if r == 0 and k < len(timeline) else None,
                            right[r] if r < len(right) else None))
    return rows


def _informers(spec: GraphSpec, nodes: dict[str, Node]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for src, dst, relation in spec.edges:
        if relation in ("wasInformedBy", "wasStartedBy") and src in nodes and dst in nodes:
            out.setdefault(src, []).append(dst)
    return out


def _ancestors(ident: str, informers: dict[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(informers.get(ident, []))
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(informers.get(current, []))
    return seen


def _implied_informers(spec: GraphSpec, nodes: dict[str, Node]) -> set[tuple[str, str, str]]:
    """``A wasInformedBy B`` (or ``wasStartedBy B``) where B already informed or started another informer of
    A: the drawn chain A -> C -> ... -> B shows it (epoch 1 -> epoch 0 -> fit, not epoch 1 -> fit)."""
    informers = _informers(spec, nodes)
    implied = set()
    for src, dst, relation in spec.edges:
        if relation in ("wasInformedBy", "wasStartedBy") and src in informers and \
                any(dst in _ancestors(c, informers) for c in informers[src] if c != dst):
            implied.add((src, dst, relation))
    return implied


def _clusters(spec: GraphSpec, nodes: dict[str, Node]) -> dict[str, Cluster]:
    """Fits (with the activities they informed) as clusters, inside sessions when a run was reopened;
    in a spec of several runs, each run's activities as one cluster."""
    clusters: dict[str, Cluster] = {}
    if len(set(spec.runs.values())) > 1:
        keys: dict[str, str] = {}
        for node in nodes.values():
            if node.role == "activity" and node.run is not None:
                node.cluster = keys.setdefault(node.run, f"cluster_run_{len(keys) + 1}")
        for node in nodes.values():
            if node.category == "Run" and node.run in keys:
                name, experiment = node.attrs.get("p4l:run_name"), node.attrs.get("p4l:experiment_name")
                text = f"run {name} ({node.run[:8]})" if name else f"run {node.run}"
                key = keys[node.run]
                clusters[key] = Cluster(key, f"{text} \u00b7 {experiment}" if experiment else text)
        for run, key in keys.items():
            clusters.setdefault(key, Cluster(key, f"run {run}"))
        return clusters
    fits = [i for i, n in nodes.items() if n.category == "Fit"]
    fit_keys: dict[str, str] = {}
    sessions = _sessions(spec, nodes)
    def session_of(start: dt.datetime | None) -> str | None:
        if not sessions or start is None:
            return None
        k = max((k for k, t in sessions.items() if t <= start), default=min(sessions))
        clusters.setdefault(f"cluster_session_{k}", Cluster(f"cluster_session_{k}", f"session {k}"))
        return f"cluster_session_{k}"

    for ident, node in nodes.items():
        if node.role != "activity" or node.category == "Run":
            continue
        # A fit's own activities have ids below its id (run.fit_1.epoch_0); a later test informed by it does not.
        fit = next((f for f in fits if ident == f or ident.startswith(f + ".")), None)
        if fit is None:
            node.cluster = session_of(node.start)
            continue
        # our own names (cluster_fit_<n>): a PROV id in a DOT subgraph name would need quoting rules
        key = fit_keys.setdefault(fit, f"cluster_fit_{len(fit_keys) + 1}")
        if key not in clusters:
            clusters[key] = Cluster(key, nodes[fit].label, session_of(nodes[fit].start))
        node.cluster = key
    return clusters


def _sessions(spec: GraphSpec, nodes: dict[str, Node]) -> dict[int, dt.datetime]:
    """Session number -> when it began (its code/environment was used), when the run has several."""
    starts: dict[int, dt.datetime] = {}
    for (_src, dst, relation), time in spec.edge_times.items():
        node = nodes.get(dst)
        if relation == "used" and node is not None and node.category in ("Code", "Environment"):
            session = int(_number(node.attrs.get("p4l:session", "1"))) if node.attrs.get("p4l:session") else 1
            starts[session] = min(time, starts.get(session, time))
    return starts if len(starts) > 1 else {}


def _list_nodes(nodes: dict[str, Node]) -> dict[str, str]:
    """Level 1: every hyperparameter in one node, every metric series in another."""
    moved: dict[str, str] = {}
    for category, (_one, many) in _LISTED.items():
        members = [i for i, n in nodes.items() if n.category == category]
        if len(members) < 2:
            continue
        first = nodes[members[0]]
        group = Node(f"list:{category}", first.kind, category, f"{len(members)} {many}", {}, first.role,
                     members=members, style="list")
        _replace(nodes, members, group)
        moved.update(dict.fromkeys(members, group.ident))
    return moved


def _order(node: Node, index: int) -> tuple[object, ...]:
    a = node.attrs
    return (node.start is None, node.start or _EPOCH,
            _number(a.get("p4l:global_step")), _number(a.get("p4l:epoch")), index)


def _collapse(nodes: dict[str, Node], limit: int) -> dict[str, str]:
    """Replace the middle of each large group by one node; return ``{hidden id: collapsed node id}``."""
    groups: dict[tuple[str, str, str | None, str | None], list[str]] = {}
    for ident, node in nodes.items():
        if not node.style:
            groups.setdefault((node.kind, node.category, node.cluster, node.run), []).append(ident)
    moved: dict[str, str] = {}
    for (kind, category, cluster, run), members in groups.items():
        if len(members) <= limit:
            continue
        ordered = [m for _, m in sorted((_order(nodes[m], k), m) for k, m in enumerate(members))]
        middle = [m for m in ordered[_HEAD:-_TAIL] if not truthy(nodes[m].attrs.get("p4l:best"))]
        if len(middle) < 2:  # one hidden node would not save anything
            continue
        first = nodes[middle[0]]
        collapsed = Node(f"collapsed:{kind}:{category}:{cluster or ''}{':' + run if run else ''}", kind, category,
                         f"\u2026 {len(middle)} more {_plural(category, len(middle))}", {}, first.role,
                         cluster, first.start, list(middle), "collapsed", run=run)
        _replace(nodes, middle, collapsed)
        moved.update(dict.fromkeys(middle, collapsed.ident))
    return moved


def _replace(nodes: dict[str, Node], members: list[str], stand_in: Node) -> None:
    """Put ``stand_in`` where the first of ``members`` was (document order stays meaningful)."""
    hidden = set(members)
    rebuilt: dict[str, Node] = {}
    for ident, node in nodes.items():
        if ident == members[0]:
            rebuilt[stand_in.ident] = stand_in
        if ident not in hidden:
            rebuilt[ident] = node
    nodes.clear()
    nodes.update(rebuilt)


def plural(category: str, n: int) -> str:
    """``"epoch"``/``"epochs"``... for a count of records of ``category``."""
    return _plural(category, n)
