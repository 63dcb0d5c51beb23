"""A logged model that loads anywhere: the user's own modules travel inside it.

MLflow's pytorch flavour saves the whole module with ``torch.save`` and cloudpickle, which
pickles a class *by reference* (``clf.Clf``) unless it was defined in ``__main__``. A model
whose class lives in the user's ``clf.py`` then loads only where ``clf`` can be imported: a
fresh interpreter in another folder fails with ``No module named 'clf'``.

:func:`local_modules_by_value` asks cloudpickle to pickle every *local* module the process
imported by value (classes, functions and their globals travel in the pickle). A module is
local when it is the user's own (:func:`prov4ml_lightning.installs.own_modules`, the definition
the code capture uses too): the user's scripts and helper modules next to them or on
``PYTHONPATH``. Installed packages (torch, lightning, a ``pip install -e`` project's own packages)
stay references, as MLflow's ``pip_requirements`` expect.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from types import ModuleType

from prov4ml_lightning.installs import own_modules  # loaded by path in the service process, as this module

__all__ = ["local_modules", "local_modules_by_value"]


def local_modules() -> list[ModuleType]:
    """The imported modules that are the user's own, ``__main__`` aside (cloudpickle pickles it by value already)."""
    return [sys.modules[name] for name in own_modules() if name != "__main__" and name in sys.modules]


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
