"""Many runs' PROV documents as one graph, for questions that span runs (``prov4ml lineage``).

Each run's document names its records in the run's own namespace (``run_<id>.model.net.v1``); a
run whose initial weights came from another run's model or checkpoint names that entity as the
other run's document does (``tracking/lineage.trace_weights``), so reading every document into one
graph keyed by full identifiers (namespace URI + local name) joins the runs. Documents are read as
plain JSON (``rocrate_input``): a thousand runs read in seconds.

Dependency, in both directions, follows PROV's edges and the ``p4l:partOf`` structure:

- an entity's dependents are the activities that used it, the entities derived from it (a
  partial load's derivation too: ``p4l:partial``, a backbone loaded into a new head) and the
  entities holding the same weights (``alternateOf``);
- an activity that depends on something passes it on to what it generated, to the activities it
  informed and to its sub-activities (the epochs of a fit); it also makes its enclosing
  activities (the fit of an epoch, the session, the run) depend, but these pass it on only to
  what they generated themselves and the activities they informed, never to their other
  sub-activities (a fit on Z before a test on X does not depend on X).

Upstream is the mirror image: an entity depends on the activities that generated it and the
entities it was derived from; an activity on what it and its sub-activities used and on the
activities that informed it, and on what its enclosing activities used themselves (the session's
code and environment).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prov4ml_lightning.errors import Prov4MLInputError
from prov4ml_lightning.provenance.rocrate_input import attr_types, attr_value

if TYPE_CHECKING:
    from prov4ml_lightning.provenance.views import GraphSpec

__all__ = ["DRAWN_TYPES", "Node", "RunsGraph", "combined_document", "read_graph"]

_RUN_ID = re.compile(r"(?:^|[/#:])run_([0-9a-f]{32})(?:\.|$)")
#: the fewest hex digits a fingerprint or sha256 prefix may have
HEX_PREFIX_MIN = 6
_HEX = re.compile(rf"^[0-9a-fA-F]{{{HEX_PREFIX_MIN},64}}$")

#: PROV-JSON relation -> (subject key, object key); the subject depends on the object
_RELATIONS = {
    "used": ("prov:activity", "prov:entity"),
    "wasGeneratedBy": ("prov:entity", "prov:activity"),
    "wasDerivedFrom": ("prov:generatedEntity", "prov:usedEntity"),
    "wasInformedBy": ("prov:informed", "prov:informant"),
    "alternateOf": ("prov:alternate1", "prov:alternate2"),
}

#: what the answers list, by ``prov:type``
WEIGHT_TYPES = ("p4l:Model", "p4l:Checkpoint", "p4l:Model_version", "p4l:TrialModel", "p4l:ModelState")
#: what a drawing of a lineage shows (:meth:`RunsGraph.spec`), by kind and ``prov:type``
DRAWN_TYPES = {"activity": frozenset({"p4l:Run", "p4l:Fit"}),
               "entity": frozenset({"p4l:Dataset", "p4l:Code", *WEIGHT_TYPES, "p4l:EarlierRunWeights"})}


@dataclass
class Node:
    """One record of the joined graph: its full identifier, kind, types and attributes (the
    first document's that declared it, completed by later ones)."""

    ident: str
    kind: str  # "entity" | "activity" | "agent"
    types: set[str] = field(default_factory=set)
    attrs: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None

    def attr(self, name: str) -> Any:
        return attr_value(self.attrs.get(name))

    @property
    def label(self) -> str:
        value = self.attr("prov:label")
        return str(value) if value is not None else self.ident.rsplit("/", 1)[-1]


class RunsGraph:
    """Records and dependency edges of many runs' documents (see the module docstring)."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.documents: dict[str, str] = {}  # run id -> PROV file
        self.runs: dict[str, str] = {}  # run id -> identifier of its p4l:Run activity
        self._out: dict[str, dict[str, set[str]]] = {r: defaultdict(set) for r in _RELATIONS}
        self._in: dict[str, dict[str, set[str]]] = {r: defaultdict(set) for r in _RELATIONS}
        self._parent: dict[str, str] = {}
        self._children: dict[str, set[str]] = defaultdict(set)
        #: (entity, the other run's entity it derives from) -> what matched, for derivations of a
        #: partial load (``p4l:partial`` on the derivation: a backbone loaded into a new head)
        self.partial: dict[tuple[str, str], dict[str, Any]] = {}

    # -- reading ---------------------------------------------------------------------------------
    def add_document(self, data: Mapping[str, Any], source: str = "") -> None:
        """Add one PROV-JSON document (already parsed)."""
        prefixes = {k: v for k, v in (data.get("prefix") or {}).items() if isinstance(v, str)}

        def full(name: Any) -> str:
            text = str(attr_value(name))
            prefix, sep, local = text.partition(":")
            return prefixes[prefix] + local if sep and prefix in prefixes else text

        owners = set()
        for kind in ("activity", "entity", "agent"):
            for ident, raw in (data.get(kind) or {}).items():
                node_id = full(ident)
                node = self.nodes.get(node_id)
                if node is None:
                    match = _RUN_ID.search(node_id)
                    node = self.nodes[node_id] = Node(node_id, kind, run_id=match.group(1) if match else None)
                for attrs in raw if isinstance(raw, list) else [raw]:
                    node.types |= attr_types(attrs)
                    if node.run_id in owners:  # the run's own document describes it best
                        node.attrs.update(attrs)
                    else:  # another run's mention (EarlierRunWeights): what its own document lacks
                        for key, value in attrs.items():
                            node.attrs.setdefault(key, value)
                    part_of = attrs.get("p4l:partOf")
                    if part_of is not None:
                        parent = full(part_of)
                        self._parent[node_id] = parent
                        self._children[parent].add(node_id)
                if kind == "activity" and "p4l:Run" in node.types and node.run_id:
                    owners.add(node.run_id)
                    self.runs[node.run_id] = node_id
        for run_id in owners:
            self.documents[run_id] = source
        for relation, (subject_key, object_key) in _RELATIONS.items():
            for raw in (data.get(relation) or {}).values():
                for rec in raw if isinstance(raw, list) else [raw]:
                    if subject_key in rec and object_key in rec:
                        subject, obj = full(rec[subject_key]), full(rec[object_key])
                        self._out[relation][subject].add(obj)
                        self._in[relation][obj].add(subject)
                        if relation == "wasDerivedFrom" and "p4l:partial" in rec:  # a partial load
                            self.partial[(subject, obj)] = {k.removeprefix("p4l:"): attr_value(v)
                                                            for k, v in rec.items() if k.startswith("p4l:")}

    def add_file(self, path: str | os.PathLike[str]) -> None:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise Prov4MLInputError(f"{path}: not a readable PROV-JSON document ({err})") from err
        if not isinstance(data, dict):
            raise Prov4MLInputError(f"{path}: not a PROV-JSON document (a JSON object expected)")
        self.add_document(data, str(path))

    # -- finding -----------------------------------------------------------------------------------
    def find(self, query: str) -> list[Node]:
        """The records ``query`` names: an identifier (full, or its local part), a run id (the
        run), a ``models:/`` URI, a dataset's fingerprint or a weights' ``state_dict_sha256`` (or
        file ``sha256``) or a prefix of one (6 hex digits at least), or a model's or dataset's name."""
        q = query.strip()
        if not q:
            return []
        if q in self.nodes:
            return [self.nodes[q]]
        if q in self.runs:
            return [self.nodes[self.runs[q]]]
        found = [n for n in self.nodes.values() if n.ident.endswith(("/" + q, "#" + q, ":" + q))]
        if found:
            return found
        if q.startswith(("models:/", "runs:/")):
            return [n for n in self.nodes.values() if n.attr("p4l:model_uri") == q]
        if _HEX.match(q):
            low = q.lower()
            return [n for n in self.nodes.values()
                    if any(str(n.attr(k) or "").lower().startswith(low)
                           for k in ("p4l:fingerprint", "p4l:state_dict_sha256", "p4l:sha256"))]
        return [n for n in self.nodes.values() if n.kind == "entity"
                and ({"p4l:Model", "p4l:Dataset"} & n.types) and q in (n.attr("p4l:name"), n.label)]

    # -- walking -----------------------------------------------------------------------------------
    def _ancestors(self, ident: str) -> list[str]:
        out, seen = [], {ident}
        while ident in self._parent and self._parent[ident] not in seen:
            ident = self._parent[ident]
            seen.add(ident)
            out.append(ident)
        return out

    def downstream(self, starts: Iterable[str]) -> set[str]:
        """Every record that depends on one of ``starts`` (the starts included)."""
        return self._walk(starts, forward=True)

    def upstream(self, starts: Iterable[str]) -> set[str]:
        """Every record one of ``starts`` depends on (the starts included)."""
        return self._walk(starts, forward=False)

    def _walk(self, starts: Iterable[str], *, forward: bool) -> set[str]:
        """The records reached from ``starts`` along the dependencies, towards what depends on them
        (``forward``) or towards what they depend on. A reached activity passes it on to its
        sub-activities; the activities enclosing it are reached as ``enclosing``: they pass it on to
        their own inputs/outputs only, not to their other parts (going back, every reached
        activity's enclosing ones are; going forward, only a wholly reached one's)."""
        ahead, behind = (self._in, self._out) if forward else (self._out, self._in)
        from_activity, from_entity = ("wasGeneratedBy", "used") if forward else ("used", "wasGeneratedBy")
        full: set[str] = set()  # reached, with its sub-activities
        enclosing: set[str] = set()  # encloses one reached
        todo = [(s, True) for s in starts]
        while todo:
            ident, whole = todo.pop()
            if ident in full or (not whole and ident in enclosing):
                continue
            (full if whole else enclosing).add(ident)
            node = self.nodes.get(ident)
            if node is not None and node.kind == "activity":
                nxt = [(e, True) for e in ahead[from_activity].get(ident, ())]
                nxt += [(a, True) for a in ahead["wasInformedBy"].get(ident, ())]
                if whole:
                    nxt += [(c, True) for c in self._children.get(ident, ())]
                if whole or not forward:
                    nxt += [(p, False) for p in self._ancestors(ident)]
            else:
                nxt = [(a, True) for a in ahead[from_entity].get(ident, ())]
                nxt += [(e, True) for e in ahead["wasDerivedFrom"].get(ident, ())]
                nxt += [(e, True) for e in (behind["alternateOf"].get(ident, set())
                                           | ahead["alternateOf"].get(ident, set()))]
            todo.extend(nxt)
        return full | enclosing

    # -- drawing -----------------------------------------------------------------------------------
    def spec(self, idents: Iterable[str]) -> GraphSpec:
        """The records ``idents`` (a walk's answer) as a :class:`~.views.GraphSpec` that ``render``'s
        drawing code draws (``prov4ml lineage --format svg|html``): their runs and fits, datasets,
        code, models, checkpoints and weights (:data:`DRAWN_TYPES`), each record's run in
        ``GraphSpec.runs`` (one cluster per run), and the relations between them. A relation of an
        activity not drawn (an epoch used the data, a session the initial weights) is drawn, once,
        from the nearest drawn activity it is part of (the fit, else the run)."""
        from prov4ml_lightning.provenance.views import GraphSpec

        reached = set(idents)
        drawn = {i for i in reached if i in self.nodes
                 and self.nodes[i].types & DRAWN_TYPES.get(self.nodes[i].kind, frozenset())}

        def stand_in(ident: str) -> str | None:
            if ident in drawn:
                return ident
            node = self.nodes.get(ident)
            if node is None or node.kind != "activity":
                return None
            return next((a for a in self._ancestors(ident) if a in drawn), None)

        spec = GraphSpec()
        for ident in sorted(drawn, key=lambda i: (self.nodes[i].run_id or "", i)):
            node = self.nodes[ident]
            attrs = {k: str(attr_value(v)) for k, v in node.attrs.items() if k != "prov:label"}
            # a run's own type first: another run's mention of it (EarlierRunWeights) only completes it
            types = sorted(node.types, key=lambda t: (t == "p4l:EarlierRunWeights", not t.startswith("p4l:"), t))
            attrs["prov:type"] = types[0] if types else ""
            spec.nodes.append((ident, node.kind, node.label, attrs))
            spec.types[ident] = types
            start = _when(node.attr("prov:startTime"))
            if start is not None:
                spec.starts[ident] = start
            if node.run_id:
                spec.runs[ident] = node.run_id
        edges: set[tuple[str, str, str]] = set()
        for relation, out in self._out.items():
            for subject, objects in out.items():
                src = stand_in(subject) if subject in reached else None
                for obj in objects if src is not None else ():
                    dst = stand_in(obj) if obj in reached else None
                    if dst is not None and dst != src:
                        part = self.partial.get((subject, obj)) if relation == "wasDerivedFrom" else None
                        edges.add((src, dst, relation if part is None else partial_label(part)))
        spec.edges = sorted(edges)
        return spec

    # -- answers -----------------------------------------------------------------------------------
    def summary(self, idents: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """``runs``, ``datasets``, ``code``, ``checkpoints``, ``models`` and ``weights`` (initial or
        restored weights, other runs' entities) among ``idents``, each a sorted list of plain dicts,
        and ``partial_loads``: the derivations of a partial load between two of them (a run's entry
        names the runs it loaded part of its weights from, ``partial_load_from``, and into)."""
        idents = set(idents)
        nodes = [self.nodes[i] for i in idents if i in self.nodes]
        runs = sorted({n.run_id for n in nodes if n.run_id})
        out: dict[str, list[dict[str, Any]]] = {"runs": [], "datasets": [], "code": [], "checkpoints": [],
                                                "models": [], "weights": [], "partial_loads": []}
        for (entity, source), part in sorted(self.partial.items()):  # the partial loads among them
            if entity in idents and source in idents:
                out["partial_loads"].append({"run_id": self.nodes[entity].run_id if entity in self.nodes else None,
                                             "entity": entity, "from_run_id": _RUN_ID.search(source).group(1)
                                             if _RUN_ID.search(source) else None, "from_entity": source,
                                             "from_label": self.nodes[source].label if source in self.nodes
                                             else source, **part})
        for run_id in runs:
            run = self.nodes.get(self.runs.get(run_id, ""))
            out["runs"].append({"run_id": run_id, "run_name": run.attr("p4l:run_name") if run else None,
                                "experiment": run.attr("p4l:experiment_name") if run else None,
                                "provenance_file": self.documents.get(run_id),
                                # its weights came in part from another run's (or went in part into one)
                                "partial_load_from": sorted({p["from_run_id"] for p in out["partial_loads"]
                                                             if p["run_id"] == run_id and p.get("partial")}),
                                "partial_load_into": sorted({p["run_id"] for p in out["partial_loads"]
                                                             if p["from_run_id"] == run_id and p.get("partial")})})
        for n in sorted(nodes, key=lambda n: (n.run_id or "", n.ident)):
            if n.kind != "entity":
                continue
            item = {"id": n.ident, "run_id": n.run_id, "label": n.label}
            if "p4l:Dataset" in n.types:
                out["datasets"].append({**item, "fingerprint": n.attr("p4l:fingerprint"),
                                        "fingerprint_status": n.attr("p4l:fingerprint_status")})
            elif "p4l:Code" in n.types:
                out["code"].append({**item, "script_path": n.attr("p4l:script_path"),
                                    "script_sha256": n.attr("p4l:script_sha256"),
                                    "git_commit": n.attr("p4l:git_commit")})
            elif "p4l:Checkpoint" in n.types:
                out["checkpoints"].append({**item, "path": n.attr("p4l:path"),
                                           "state_dict_sha256": n.attr("p4l:state_dict_sha256")})
            elif {"p4l:Model", "p4l:Model_version", "p4l:TrialModel"} & n.types:
                out["models"].append({**item, "model_uri": n.attr("p4l:model_uri"),
                                      "state_dict_sha256": n.attr("p4l:state_dict_sha256")})
            elif {"p4l:ModelState", "p4l:EarlierRunWeights"} & n.types and n.run_id in self.documents:
                out["weights"].append({**item, "state_dict_sha256": n.attr("p4l:state_dict_sha256")})
        return out


def _when(value: Any) -> dt.datetime | None:
    """A PROV time as an aware datetime (UTC where it has no offset: the drawing compares them)."""
    if value is None:
        return None
    try:
        when = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.timezone.utc)


def read_graph(paths: Iterable[str | os.PathLike[str]]) -> RunsGraph:
    """The graph of the PROV-JSON files ``paths`` (one per run; a run read twice keeps its newest)."""
    newest: dict[str, tuple[int, Path]] = {}
    others: list[Path] = []
    for p in map(Path, paths):
        match = re.fullmatch(r"provgraph_([0-9a-f]{32})\.json", p.name)
        if match is None:
            others.append(p)
            continue
        mtime = p.stat().st_mtime_ns
        if match.group(1) not in newest or newest[match.group(1)][0] < mtime:
            newest[match.group(1)] = (mtime, p)
    graph = RunsGraph()
    for path in [*(p for _, p in newest.values()), *others]:
        graph.add_file(path)
    return graph


def combined_document(paths: Iterable[str | os.PathLike[str]]) -> Any:
    """One :class:`prov.model.ProvDocument` of the PROV-JSON files ``paths`` (``prov4ml export
    --all``): the runs' records side by side, joined where a run names another run's entity."""
    from prov.model import ProvDocument

    from prov4ml_lightning.provenance.files import load_document

    combined = ProvDocument()
    for path in paths:
        combined.update(load_document(Path(path)))
    return combined


def partial_label(part: Mapping[str, Any]) -> str:
    """The drawn label of a partial load's derivation (``RunsGraph.partial``): ``wasDerivedFrom``
    (partial: the tensors matched of the source's, the prefixes on each side), or ``renamed`` when
    the whole was loaded under other names."""
    kind = "partial" if part.get("partial") else "renamed"
    prefixes = f"; {part.get('source_prefixes') or '(root)'} \u2192 {part.get('target_prefixes') or '(root)'}"
    return (f"wasDerivedFrom ({kind}: {part.get('tensors_matched')} of {part.get('source_tensors')} "
            f"tensors{prefixes})")
