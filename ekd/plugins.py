"""User extensions without editing ekd: objectives, backbones, heads and data sources from other modules.

A registry entry (``@register_objective("mine")``, ``@register_backbone(...)``, ...) is made when the
module defining it is imported. ekd imports such modules from two places before it builds anything:

- the ``imports`` config key of ``ekd-train`` / ``ekd-demo`` (``imports=[my_package.my_losses]``), for
  a module on ``PYTHONPATH`` or in the working directory;
- the ``ekd.plugins`` entry-point group of installed packages, loaded by every ekd command::

      # pyproject.toml of the user's package
      [project.entry-points."ekd.plugins"]
      my_losses = "my_package.my_losses"

A plugin module may also ship method files (``distill`` configs): give their folder to Hydra's search
path (``hydra.searchpath=[file:///path/to/conf]``, ``ekd-demo --config-dir``). See docs/extending.md.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from importlib.metadata import entry_points
from types import ModuleType

ENTRY_POINT_GROUP = "ekd.plugins"


class PluginError(ImportError):
    """A module named by ``imports`` or an ``ekd.plugins`` entry point could not be imported."""


def import_modules(names: Iterable[str], source: str = "imports") -> list[ModuleType]:
    """Import each module of ``names`` (registering what it defines); a failure names the module and
    ``source`` (the config key or entry point that asked for it)."""
    modules = []
    for name in names:
        name = str(name)
        try:
            modules.append(_import(name))
        except Exception as error:
            raise PluginError(
                f"{source}: cannot import module {name!r}: {type(error).__name__}: {error}"
            ) from error
    return modules


def _import(name: str) -> ModuleType:
    """``importlib.import_module``; a module not found is looked up in the working directory too (console
    scripts such as ``ekd-train`` do not put it on ``sys.path``; appended, so it shadows nothing)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        cwd = os.getcwd()
        if error.name != name.split(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(name)


_loaded = False


def load_entry_point_plugins() -> list[str]:
    """Import every module of the ``ekd.plugins`` entry-point group once per process; return their names."""
    global _loaded
    if _loaded:
        return []
    _loaded = True
    names = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        import_modules([entry.value.split(":", 1)[0]], source=f"entry point {ENTRY_POINT_GROUP}:{entry.name}")
        names.append(entry.name)
    return names
