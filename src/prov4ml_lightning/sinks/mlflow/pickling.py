"""A logged model that loads anywhere: the user's own modules travel inside it.

MLflow's pytorch flavour saves the whole module with ``torch.save`` and cloudpickle, which
pickles a class *by reference* (``clf.Clf``) unless it was defined in ``__main__``. A model
whose class lives in the user's ``clf.py`` then loads only where ``clf`` can be imported: a
fresh interpreter in another folder fails with ``No module named 'clf'``.

:func:`local_modules_by_value` asks cloudpickle to pickle every *local* module the process
imported by value (classes, functions and their globals travel in the pickle). A module is
local when its file lies outside the interpreter's installation (its prefixes, site-packages,
the standard library) and no installed distribution provides it: the user's scripts and
helper modules next to them or on ``PYTHONPATH``. Installed packages (torch, lightning, an
``pip install -e`` project) stay references, as MLflow's ``pip_requirements`` expect.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

__all__ = ["installation_roots", "local_modules", "local_modules_by_value"]


def installation_roots() -> tuple[Path, ...]:
    """The folders of the interpreter's installation: its prefixes, the standard library, site-packages."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots.update(p for p in sysconfig.get_paths().values() if p)
    return tuple(Path(r).resolve() for r in roots)


def local_modules() -> list[ModuleType]:
    """The imported modules that are the user's own (see the module docstring), ``__main__`` aside
    (cloudpickle pickles it by value already)."""
    installed = installation_roots()
    distributed = set(importlib.metadata.packages_distributions())
    found = []
    for name, module in list(sys.modules.items()):
        if not isinstance(module, ModuleType) or name == "__main__" or name.split(".")[0] in distributed:
            continue
        if name.split(".")[0] == __name__.split(".")[0]:  # this library: installed, even when editable
            continue
        file = getattr(module, "__file__", None)
        if not file or not file.endswith(".py"):
            continue
        try:
            path = Path(file).resolve()
        except OSError:
            continue
        if not any(path.is_relative_to(root) for root in installed):
            found.append(module)
    return found


@contextlib.contextmanager
def local_modules_by_value() -> Iterator[list[str]]:
    """Within the block, cloudpickle pickles the :func:`local_modules` by value; yields their names."""
    import cloudpickle

    before = set(cloudpickle.list_registry_pickle_by_value())  # the user's own registrations stay theirs
    registered = []
    for module in local_modules():
        if module.__name__ not in before:
            cloudpickle.register_pickle_by_value(module)
            registered.append(module)
    try:
        yield [module.__name__ for module in registered]
    finally:
        for module in registered:
            with contextlib.suppress(ValueError):
                cloudpickle.unregister_pickle_by_value(module)
