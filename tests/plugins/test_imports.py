"""ekd.plugins: modules named by the ``imports`` key and by ``ekd.plugins`` entry points are imported
(registering what they define); a module that cannot be imported is an error naming it and its source."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint

import pytest

import ekd.plugins
from ekd.distill import OBJECTIVES
from ekd.plugins import PluginError, import_modules, load_entry_point_plugins

MODULE = """
from ekd.distill import Objective, register_objective


@register_objective("{name}")
class Registered(Objective):
    def forward(self, student, teacher, labels):
        return (student.embedding - teacher.embedding).pow(2).mean()
"""


def _module(tmp_path, monkeypatch, module: str, objective: str) -> None:
    (tmp_path / f"{module}.py").write_text(MODULE.format(name=objective))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)


def test_imports_register_the_modules_objectives(tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "plugin_imports_a", "plugin-imports-a")
    try:
        (module,) = import_modules(["plugin_imports_a"])
        assert module.__name__ == "plugin_imports_a" and "plugin-imports-a" in OBJECTIVES
    finally:
        OBJECTIVES.unregister("plugin-imports-a")


def test_a_module_in_the_working_directory_is_found(tmp_path, monkeypatch):
    (tmp_path / "plugin_cwd_b.py").write_text(MODULE.format(name="plugin-cwd-b"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "plugin_cwd_b", raising=False)
    try:
        import_modules(["plugin_cwd_b"])
        assert "plugin-cwd-b" in OBJECTIVES
    finally:
        OBJECTIVES.unregister("plugin-cwd-b")


def test_an_unimportable_module_names_itself_and_the_key():
    with pytest.raises(PluginError, match=r"imports: cannot import module 'no_such_plugin_module'"):
        import_modules(["no_such_plugin_module"])


def test_entry_points_are_imported_once(tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "plugin_entry_c", "plugin-entry-c")
    points = [EntryPoint(name="mine", value="plugin_entry_c", group=ekd.plugins.ENTRY_POINT_GROUP)]
    asked = []
    monkeypatch.setattr(ekd.plugins, "entry_points", lambda group: asked.append(group) or points)
    monkeypatch.setattr(ekd.plugins, "_loaded", False)
    try:
        assert load_entry_point_plugins() == ["mine"] and "plugin-entry-c" in OBJECTIVES
        assert load_entry_point_plugins() == []  # once per process
        assert asked == ["ekd.plugins"]
    finally:
        OBJECTIVES.unregister("plugin-entry-c")
    broken = [EntryPoint(name="broken", value="no_such_plugin_module", group="ekd.plugins")]
    monkeypatch.setattr(ekd.plugins, "entry_points", lambda group: broken)
    monkeypatch.setattr(ekd.plugins, "_loaded", False)
    with pytest.raises(PluginError, match=r"entry point ekd.plugins:broken: cannot import module"):
        load_entry_point_plugins()
