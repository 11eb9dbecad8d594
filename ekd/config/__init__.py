"""Structured configs of ``ekd-train`` and their registration with Hydra.

:func:`register_configs` (called by ``ekd.cli.train`` and ``ekd.cli.demo`` before Hydra composes
anything) registers, once per process:

- the typed base of the primary config, ``train_schema`` (:class:`TrainConfig`), in Hydra's ConfigStore;
- every ``experiments/**/*.yaml`` of the source tree as the config group ``experiment`` (see
  :func:`register_experiments` for why this is done here rather than through ``hydra.searchpath``);
- the OmegaConf resolver ``${ekd.uid:}``, a short per-process id that keeps output directories of
  jobs started in the same second apart.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from ekd.config.schema import (
    BackboneConfig,
    BenchmarkConfig,
    CallbacksConfig,
    DataConfig,
    DataSource,
    DistillConfig,
    EvalConfig,
    HeadConfig,
    LoggerConfig,
    Nonfinite,
    ProgressBar,
    Sampler,
    TrainConfig,
    TrainerConfig,
)

__all__ = [
    "BackboneConfig",
    "BenchmarkConfig",
    "CallbacksConfig",
    "CONF_DIR",
    "DataConfig",
    "DataSource",
    "DistillConfig",
    "EXPERIMENTS_DIR",
    "EvalConfig",
    "HeadConfig",
    "LoggerConfig",
    "Nonfinite",
    "ProgressBar",
    "Sampler",
    "TrainConfig",
    "TrainerConfig",
    "register_configs",
    "register_experiments",
    "run_uid",
]

# The Hydra configs live next to the package in the source tree (``pip install -e .``, the documented
# install): conf/ holds the config groups, experiments/ one file per reported number.
REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"
EXPERIMENTS_DIR = REPO_ROOT / "experiments"

# Chosen once per process: a job's directory name must not change between the moments Hydra resolves it.
_RUN_UID = f"{os.getpid() % 0x10000:04x}{secrets.token_hex(2)}"


def run_uid() -> str:
    """Eight hex digits: this process's pid (mod 2^16) and two random bytes."""
    return _RUN_UID


def register_experiments(directory: Path = EXPERIMENTS_DIR) -> list[str]:
    """Register ``directory/**/*.yaml`` as the Hydra group ``experiment``; return the names.

    ``experiments/ms1mv2/mobilefacenet/ekd.yaml`` becomes ``experiment=ms1mv2/mobilefacenet/ekd``.
    Hydra names a group after its directory, so a search-path entry could only expose a top-level
    ``experiments/`` folder as a group called ``experiments``; storing the files in the ConfigStore
    keeps the conventional ``experiment=...`` spelling, works the same under every launcher (the store
    is filled again on import in SLURM / joblib workers) and needs no packaging plugin. The files are
    global-package configs (``# @package _global_``), as experiment files conventionally are.
    """
    store = ConfigStore.instance()
    names = []
    if not directory.is_dir():
        return names
    for path in sorted(directory.rglob("*.yaml")):
        relative = path.relative_to(directory).with_suffix("")
        group = "/".join(("experiment", *relative.parts[:-1]))
        try:
            node = OmegaConf.load(path)
        except Exception as error:  # the YAML parser's message, with the file that caused it
            raise ValueError(f"experiment file {path} is not valid YAML: {error}") from error
        store.store(group=group, name=relative.name, node=node, package="_global_", provider="ekd")
        names.append(relative.as_posix())
    return names


_registered = False


def register_configs() -> None:
    """Fill Hydra's ConfigStore and register the resolvers (idempotent)."""
    global _registered
    if _registered:
        return
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig, provider="ekd")
    register_experiments()
    if not OmegaConf.has_resolver("ekd.uid"):
        OmegaConf.register_new_resolver("ekd.uid", run_uid)
    _registered = True
