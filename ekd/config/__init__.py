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

import dataclasses
import os
import secrets
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

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
    "ConfigError",
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
    "validate_config",
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


class ConfigError(ValueError):
    """A configuration that composes but cannot be run (unknown keys, missing values, bad choices)."""


def _unknown_keys(node: Mapping[str, Any], schema: type, prefix: str = "") -> list[str]:
    """Dotted keys of ``node`` that the dataclass ``schema`` (recursively) does not declare.

    Free-form mappings (``dict[str, Any]`` fields such as ``student.kwargs``) are not descended into:
    their keys are checked by the parts they configure.
    """
    fields = {f.name for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    unknown = []
    for key, value in node.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            unknown.append(f"{prefix}{key} (not a key of {schema.__name__}; known: {known})")
            continue
        field_type = hints[key]
        if typing.get_origin(field_type) is typing.Union:  # Optional[X]
            field_type = next(a for a in typing.get_args(field_type) if a is not type(None))
        if dataclasses.is_dataclass(field_type) and isinstance(value, Mapping):
            unknown += _unknown_keys(value, field_type, f"{prefix}{key}.")
    return unknown


def validate_config(cfg: DictConfig) -> None:
    """Check a composed config's keys against :class:`TrainConfig`, raising :class:`ConfigError`.

    Composition already types every key, but Hydra's ``+key=value`` appends with the struct flag
    lifted, so ``+trainer.max_epoch=3`` would get through composition.
    """
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    unknown = _unknown_keys(plain, TrainConfig)
    if unknown:
        raise ConfigError("unknown configuration keys: " + "; ".join(unknown))


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
