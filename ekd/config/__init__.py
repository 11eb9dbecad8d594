"""Structured configs of ``ekd-train`` and their registration with Hydra.

:func:`register_configs` (called by ``ekd.cli.train`` and ``ekd.cli.demo`` before Hydra composes
anything) registers, once per process:

- the typed base of the primary config, ``train_schema`` (:class:`TrainConfig`), in Hydra's ConfigStore;
- every ``experiments/**/*.yaml`` of the source tree as the config group ``experiment`` (see
  :func:`register_experiments` for why this is done here rather than through ``hydra.searchpath``);
- the OmegaConf resolver ``${ekd.uid:}``, a short per-process id that keeps output directories of
  jobs started in the same second apart;

and imports the ``ekd.plugins`` entry points of installed packages (:mod:`ekd.plugins`).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from ekd.choices import EvalPrecision, parse_choice
from ekd.config.paths import CONF_DIR, EXPERIMENTS_DIR, SOURCE_ROOT
from ekd.config.schema import (
    BackboneConfig,
    BenchmarkConfig,
    DataConfig,
    DistillConfig,
    EvalConfig,
    HeadConfig,
    TrainConfig,
    TrainerConfig,
)
from ekd.plugins import load_entry_point_plugins

__all__ = [
    "BackboneConfig",
    "BenchmarkConfig",
    "CONF_DIR",
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "EXPERIMENTS_DIR",
    "EvalConfig",
    "HeadConfig",
    "TrainConfig",
    "TrainerConfig",
    "MethodInfo",
    "check_config",
    "list_methods",
    "instantiate_entries",
    "uses_teacher",
    "validate_config",
    "register_configs",
    "register_experiments",
    "run_uid",
]

# conf/ holds the config groups, experiments/ one file per reported number: the repository's folders in a
# source checkout, the copies packaged into the wheel otherwise (ekd.config.paths). REPO_ROOT is None
# outside a checkout.
REPO_ROOT = SOURCE_ROOT

# Chosen once per process: a job's directory name must not change between the moments Hydra resolves it.
_RUN_UID = f"{os.getpid() % 0x10000:04x}{secrets.token_hex(2)}"


def run_uid() -> str:
    """Eight hex digits: this process's pid (mod 2^16) and two random bytes."""
    return _RUN_UID


def register_experiments(directory: Path = EXPERIMENTS_DIR) -> list[str]:
    """Register ``directory/**/*.yaml`` as the Hydra group ``experiment``; return the names.

    ``experiments/ms1mv2/student.yaml`` becomes ``experiment=ms1mv2/student``.
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


def uses_teacher(cfg: DictConfig) -> bool:
    """True when the run distills (``distill.objectives`` is not empty)."""
    return bool(cfg.distill.objectives)


def check_config(cfg: DictConfig) -> None:
    """Fail early, naming the key, on unknown keys, missing mandatory values and inconsistent choices."""
    validate_config(cfg)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if not uses_teacher(cfg):
        missing = [key for key in missing if not key.startswith("teacher.")]
    if missing:
        hints = ", ".join(f"{key}=..." for key in missing)
        raise ConfigError(
            f"missing mandatory values: {', '.join(missing)}; give them on the command line ({hints})"
        )
    if uses_teacher(cfg) and cfg.teacher is None:
        raise ConfigError(
            f"distill={cfg.distill.method} has objectives {sorted(cfg.distill.objectives)} but no teacher is "
            "configured: add teacher=<name> (conf/teacher) and teacher.checkpoint=<file>"
        )
    if uses_teacher(cfg) and not cfg.teacher.checkpoint:
        raise ConfigError(
            f"teacher.checkpoint is not set: distill={cfg.distill.method} needs the trained weights of the "
            f"{cfg.teacher.name} teacher (teacher.checkpoint=<backbone.pth or last.ckpt>)"
        )
    try:
        parse_choice(EvalPrecision, cfg.eval.precision, "eval.precision", "precision")
    except ValueError as error:  # the schema keeps it a string (module ekd.config.schema)
        raise ConfigError(str(error)) from None
    if cfg.data.source != "synthetic" and not cfg.data.root:
        raise ConfigError(
            f"data.root is not set: data={cfg.data.name} reads {cfg.data.source} data from a "
            "directory (data.root=<directory>; see the layout in conf/data/)"
        )
    for key, spec in cfg.distill.objectives.items():
        if not OmegaConf.is_dict(spec):
            raise ConfigError(
                f"distill.objectives.{key} must be a mapping {{weight: w, <hyper-parameters>}}, got {spec!r}"
            )


def instantiate_entries(nodes: Mapping[str, Any] | None, key: str) -> list[Any]:
    """One object per ``{name: {_target_: ..., **arguments}}`` entry (null entries left out)."""
    objects = []
    for name, node in (nodes or {}).items():
        if node is None:
            continue
        if not OmegaConf.is_dict(node) or "_target_" not in node:
            raise ConfigError(
                f"{key}.{name} must be a mapping with a _target_ (the class to build), got {node!r}"
            )
        try:
            objects.append(hydra.utils.instantiate(node, _convert_="all"))
        except Exception as error:  # hydra's InstantiationException: name the entry first
            raise ConfigError(f"{key}.{name}: cannot build {node._target_}: {error}") from error
    return objects


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    """What a method file (``distill/<name>.yaml``) says about its row; ``name`` is the file's stem."""

    name: str
    label: str
    order: float
    demo: bool
    paper_row: str | None
    path: Path


def list_methods(config_dirs: list[Path] | tuple[Path, ...] = ()) -> list[MethodInfo]:
    """Every method file of ``conf/distill`` and of ``config_dirs``' ``distill/`` folders (a user's
    methods; a later folder's file replaces an earlier one of the same name), sorted by ``order``.

    The files are read as the typed schema reads them (:class:`DistillConfig` defaults filled in), so an
    unknown key or a value of the wrong type names the file.
    """
    found: dict[str, Path] = {}
    for directory in (CONF_DIR, *map(Path, config_dirs)):
        for path in sorted((directory / "distill").glob("*.yaml")):
            found[path.stem] = path
    methods = []
    for name, path in found.items():
        try:
            node = OmegaConf.merge(OmegaConf.structured(DistillConfig), OmegaConf.load(path))
            info = MethodInfo(name, str(node.label), float(node.order), bool(node.demo), node.paper_row, path)
        except Exception as error:  # OmegaConf's message names the key; add the file
            raise ConfigError(f"method file {path}: {error}") from error
        methods.append(info)
    return sorted(methods, key=lambda m: (m.order, m.name))


_registered = False


def register_configs() -> None:
    """Fill Hydra's ConfigStore and register the resolvers (idempotent)."""
    global _registered
    if _registered:
        return
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig, provider="ekd")
    register_experiments()
    load_entry_point_plugins()
    if not OmegaConf.has_resolver("ekd.uid"):
        OmegaConf.register_new_resolver("ekd.uid", run_uid)
    _registered = True
