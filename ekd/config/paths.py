"""Where the Hydra configs are read from: the repository's folders, or the copies shipped in the wheel.

``conf/`` (the config groups) and ``experiments/`` (one file per reported number) live at the top of the
repository, which is their only copy under version control. Running from a source checkout
(``pip install -e .``, the documented install) reads them there, so an edit takes effect at once. A
wheel has no repository around it: ``setup.py`` copies both folders into the package at build time, as
``ekd/_configs/conf`` and ``ekd/_configs/experiments``, and an installed (non-editable) ``ekd`` reads
those.

- :data:`SOURCE_ROOT`: the repository root when the package runs from a source checkout, else None
  (used to record the run's ``git`` commit).
- :data:`CONF_DIR`, :data:`EXPERIMENTS_DIR`: the first of (repository folder, packaged copy) that exists;
  importing this module fails with both locations named when neither does.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CONF_DIR",
    "EXPERIMENTS_DIR",
    "PACKAGED_CONFIGS",
    "SOURCE_ROOT",
    "find_source_root",
    "resolve_config_dir",
]

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../ekd

#: Where the build puts the copies (``setup.py`` writes the same path; see its ``PACKAGED_CONFIGS``).
PACKAGED_CONFIGS = _PACKAGE_DIR / "_configs"


def find_source_root(package_dir: Path = _PACKAGE_DIR) -> Path | None:
    """The directory above ``package_dir`` if it is the project's source checkout, else None.

    An installed package sits in ``site-packages``, which holds no ``pyproject.toml``; a checkout does.
    """
    root = package_dir.parent
    return root if (root / "pyproject.toml").is_file() else None


def resolve_config_dir(name: str, source_root: Path | None, packaged: Path = PACKAGED_CONFIGS) -> Path:
    """``source_root/name`` if that directory exists, else ``packaged/name``; FileNotFoundError if neither."""
    in_checkout = source_root / name if source_root is not None else None
    in_package = packaged / name
    for candidate in (in_checkout, in_package):
        if candidate is not None and candidate.is_dir():
            return candidate
    checkout = f"{in_checkout}" if in_checkout else "no source checkout (no pyproject.toml above the package)"
    raise FileNotFoundError(
        f"ekd: the Hydra config folder {name}/ was not found. Looked in the source checkout: {checkout}; "
        f"and in the copy packaged by the build: {in_package}. Run from a source checkout "
        f"(pip install -e .) or install a wheel built with the project's setup.py, which copies {name}/ "
        "into ekd/_configs/."
    )


SOURCE_ROOT: Path | None = find_source_root()
CONF_DIR: Path = resolve_config_dir("conf", SOURCE_ROOT)
EXPERIMENTS_DIR: Path = resolve_config_dir("experiments", SOURCE_ROOT)
