"""The architecture, checked: every import inside the package points down the layers of
docs/architecture.md, no two packages import each other, and no module imports another's private name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import prov4ml_lightning

ROOT = Path(prov4ml_lightning.__file__).parent
PACKAGE = "prov4ml_lightning"

# A layer may import its own and lower layers only (leaves: imported by all, import no one above).
LAYERS = {
    "front": {"api", "api_measures", "lightning", "cli", "__main__", "<init>", "runs"},
    "plugin": {"capture", "distributed", "recovery", "signals"},
    "core": {"tracking"},
    "output": {"sinks", "provenance"},
    "leaf": {"errors", "context", "records", "files", "installs", "redact", "version"},
}
RANK = {"front": 0, "plugin": 1, "core": 2, "output": 3, "leaf": 4}
# plug-ins sit beside the core: they use it, it never uses them
ALLOWED_SIDEWAYS = {("front", "plugin"), ("plugin", "plugin"), ("leaf", "leaf")}  # cycles: see below


def _unit(module: str) -> str:
    parts = module.split(".")
    return "<init>" if len(parts) == 1 else parts[1]


def _layer(unit: str) -> str:
    for layer, units in LAYERS.items():
        if unit in units:
            return layer
    raise AssertionError(f"{unit!r} is in no layer of tests/test_layers.py: add it where docs/architecture.md says")


def _imports() -> list[tuple[str, str, str, int]]:
    """(importing module, imported module, imported name, line) for every import of the package."""
    out = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = module if rel.name == "__init__" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:  # relative: resolve against this module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
                out.extend((module, target, a.name, node.lineno) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
                out.extend((module, node.module, a.name, node.lineno) for a in node.names)
            elif isinstance(node, ast.Import):
                out.extend((module, a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == PACKAGE)
    return out


def test_every_unit_of_the_package_has_a_layer():
    units = {_unit(".".join(part for part in p.relative_to(ROOT.parent).with_suffix("").parts if part != "__init__"))
             for p in ROOT.rglob("*.py")}
    for unit in units:
        _layer(unit)


def test_imports_point_down_the_layers():
    wrong = []
    for module, target, name, line in _imports():
        full = f"{target}.{name}" if name else target
        src, dst = _unit(module), _unit(full if (ROOT / full.split(".", 1)[-1].replace(".", "/")).exists()
                                        or (ROOT / (full.split(".", 1)[-1].replace(".", "/") + ".py")).exists()
                                        else target)
        if src == dst:
            continue
        a, b = _layer(src), _layer(dst)
        if RANK[b] > RANK[a] or (a, b) in ALLOWED_SIDEWAYS or (a == "front" and b == "front"):
            continue
        wrong.append(f"{module}:{line} imports {full} ({a} -> {b})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def _target_unit(target: str, name: str) -> str:
    # `from prov4ml_lightning import x` imports the unit x, not the package's __init__
    return _unit(f"{target}.{name}") if target == PACKAGE and name else _unit(target)


def test_no_import_cycle_between_units():
    graph: dict[str, set[str]] = {}
    for m, t, n, _ in _imports():
        a, b = _unit(m), _target_unit(t, n)
        if a != b and a != "<init>":
            graph.setdefault(a, set()).add(b)
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles between units: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("allowed", ["__version__"])
def test_no_module_imports_another_modules_private_name(allowed):
    private = [f"{m}:{line} imports {t}.{n}" for m, t, n, line in _imports()
               if n.startswith("_") and n != allowed and not (ROOT / f"{n}.py").exists()]
    assert not private, "\n".join(private)


def test_only_the_mlflow_sink_imports_mlflow_and_only_provenance_imports_prov():
    owners = {"mlflow": "sinks/mlflow", "prov": "provenance"}
    wrong = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for n in names:
                top = n.split(".")[0]
                if top in owners and not rel.startswith(owners[top]):
                    wrong.append(f"{rel}:{node.lineno} imports {n}")
    assert not wrong, "\n".join(wrong)
