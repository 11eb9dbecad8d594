"""Command-line entry points (one module per command). Importing this package imports the modules of
installed packages' ``ekd.plugins`` entry points first, so every command sees their registry entries."""

from ekd.plugins import load_entry_point_plugins

load_entry_point_plugins()
