"""Which imported modules are the user's own, and which are installed.

The one definition behind two uses: the code capture snapshots the user's own source files git
does not track (:mod:`prov4ml_lightning.capture.code`), and a logged model carries the user's own
modules by value, so that it loads where they cannot be imported
(:mod:`prov4ml_lightning.sinks.mlflow.pickling`).

A module is the user's own when its ``.py`` file lies outside the interpreter's installation (its
prefixes, the standard library, every site-packages folder, the user's one included) and outside
this library, and it is no part of an editable or local install (``pip install -e DIR``, ``pip
install DIR``): inside such an install's folder only the distribution's own top-level packages and
modules are installed files; anything else imported from there (a script and its helpers beside a
``pip install -e .`` project) is the user's own like any other.

Only the distributions installed from a folder are read (their ``direct_url.json``, PEP 610): a
few milliseconds, where mapping every installed distribution to its top-level names
(``importlib.metadata.packages_distributions``) reads each one's file list, ~0.3 s with torch,
Lightning and MLflow installed. It imports nothing but the standard library: the MLflow service
process loads it by path.
"""

from __future__ import annotations

import json
import os
import site
import sys
import sysconfig
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["Installs", "installation_roots", "local_installs", "own_modules"]

#: folder of a local install -> (its distribution's name, its top-level import names, whether editable)
Installs = dict[Path, tuple[str, frozenset[str], bool]]

_LIBRARY = Path(__file__).resolve().parent


def installation_roots() -> tuple[Path, ...]:
    """The folders of the interpreter's installation: its prefixes, the standard library, every
    site-packages folder (the user's own, ``pip install --user``, too)."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots.update(p for p in sysconfig.get_paths().values() if p)
    try:
        roots.update(site.getsitepackages())
        roots.add(site.getusersitepackages())
    except AttributeError:  # an interpreter started with an old virtualenv's site.py
        pass
    return tuple(Path(r).resolve() for r in roots if r)


def local_installs() -> Installs:
    """The folders of editable and local (``pip install DIR``) installs: each with its
    distribution's name, the top-level import names that belong to it, and whether it is editable."""
    from importlib import metadata

    out: Installs = {}
    for dist in metadata.distributions():
        try:
            text = dist.read_text("direct_url.json")
        except OSError:
            continue
        if not text or '"dir_info"' not in text:
            continue
        try:
            info = json.loads(text)
            url, editable = info["url"], bool((info.get("dir_info") or {}).get("editable"))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if isinstance(url, str) and url.startswith("file://"):
            folder = Path(unquote(urlsplit(url).path)).resolve()
            name = str(dist.metadata["Name"] or folder.name)
            out[folder] = (name, _distribution_names(dist, name), editable)
    return out


def own_modules(installs: Installs | None = None) -> dict[str, Path]:
    """The imported modules that are the user's own (see the module docstring), ``__main__``
    included, by name, with their resolved ``.py`` file. ``installs``: :func:`local_installs`, when
    the caller has it."""
    skip = [*installation_roots(), _LIBRARY]
    editable = local_installs() if installs is None else installs
    # A plain prefix test on the file name first: resolving the ~2000 files torch and Lightning
    # import costs a few hundred ms, and nearly all of them lie under an installation root.
    prefixes = tuple({str(root) + os.sep for root in skip} | {os.path.abspath(p) + os.sep for p in
                                                               (sys.prefix, sys.base_prefix, sys.exec_prefix)})
    found: dict[str, Path] = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not isinstance(file, str) or not file.endswith(".py") or file.startswith(prefixes):
            continue
        try:
            path = Path(file).resolve()
        except OSError:
            continue
        if any(path.is_relative_to(root) for root in skip) or not path.is_file():
            continue
        top = str(name).split(".")[0]
        if any(path.is_relative_to(folder) and top in names for folder, (_, names, _) in editable.items()):
            continue  # the editable distribution's own module: the lock (and its folder's state) records it
        found[str(name)] = path
    return found


def _distribution_names(dist: Any, name: str) -> frozenset[str]:
    """The top-level import names of ``dist``: its ``top_level.txt`` (setuptools), the top-level
    packages and modules its RECORD lists, the packages setuptools' editable finder maps, and its
    own name (normalised): a hatchling or flit editable install lists only a ``.pth`` file."""
    names = {name.replace("-", "_").replace(".", "_").lower()}
    try:
        top = dist.read_text("top_level.txt")
    except OSError:
        top = None
    names.update(line.strip() for line in (top or "").splitlines() if line.strip())
    for file in dist.files or ():
        parts = file.parts
        if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith((".dist-info", ".egg-info", ".data")):
            continue
        first = parts[0]
        if len(parts) > 1:
            names.add(first)
        elif first.endswith(".py") and first.startswith("__editable__") and first.endswith("_finder.py"):
            names.update(_finder_names(file.locate()))
        elif first.endswith(".py"):
            names.add(first[:-3])
    return frozenset(n for n in names if n.isidentifier())


def _finder_names(finder: Any) -> set[str]:
    """The packages setuptools' editable finder (``__editable___<dist>_finder.py``) maps: the keys
    of its ``MAPPING``, read as text (not imported)."""
    import ast

    try:
        tree = ast.parse(Path(finder).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MAPPING" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return set()
            return {str(k) for k in value} if isinstance(value, dict) else set()
    return set()
