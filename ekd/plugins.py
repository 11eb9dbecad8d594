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
            modules.append(importlib.import_module(name))
        except Exception as error:
            cwd = "" if "" in sys.path else " (the working directory is not on sys.path: set PYTHONPATH)"
            raise PluginError(
                f"{source}: cannot import module {name!r}{cwd}: {type(error).__name__}: {error}"
            ) from error
    return modules


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
