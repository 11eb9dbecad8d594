"""Build hook: ship the repository's Hydra configs inside the package (metadata lives in pyproject.toml).

``conf/`` and ``experiments/`` stay at the top of the repository, their only copy under version control.
A wheel carries no repository, so ``build_py`` copies both folders into the build as
``ekd/_configs/conf`` and ``ekd/_configs/experiments``; ``ekd.config.paths`` reads them there when the
package does not run from a source checkout. Editable installs (``pip install -e .``) copy nothing and
read the repository folders directly. MANIFEST.in puts both folders into the sdist, so a wheel built
from the sdist gets them too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CONFIG_FOLDERS = ("conf", "experiments")
PACKAGED_CONFIGS = Path("ekd", "_configs")  # relative to the build's lib folder; ekd.config.paths reads it


class BuildPyWithConfigs(build_py):
    """``build_py`` that also copies ``conf/`` and ``experiments/`` to ``<build_lib>/ekd/_configs/``."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # the editable package reads the repository folders
            return
        for name in CONFIG_FOLDERS:
            source = ROOT / name
            if not source.is_dir():
                raise FileNotFoundError(f"setup.py: {source} is missing; the wheel would ship no {name}/")
            target = Path(self.build_lib, PACKAGED_CONFIGS, name)
            shutil.rmtree(target, ignore_errors=True)  # files removed from the repository leave the build
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        packaged = Path(self.build_lib, PACKAGED_CONFIGS)
        return outputs + [str(path) for path in sorted(packaged.rglob("*")) if path.is_file()]


setup(cmdclass={"build_py": BuildPyWithConfigs})
