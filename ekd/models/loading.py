"""Loading backbone weights from insightface files, pickled modules and this project's Lightning checkpoints.

Accepted files (``torch.save`` output, zip or legacy format):

- a plain state_dict (insightface ``backbone.pth`` / ``model.pt``), optionally with a DDP ``module.`` prefix;
- a Lightning checkpoint of this project (a dict with ``state_dict``): keys ``student.*`` are the
  trained model and ``teacher.*`` the teacher; ``prefix`` picks one, otherwise ``student.`` is taken
  when present, otherwise a common ``module.`` prefix is stripped;
- a whole pickled ``nn.Module`` (its ``state_dict()`` is used), only with ``trust_pickle=True``.

Files are read with ``torch.load(weights_only=True)``. Lightning checkpoints also pickle their
hyper-parameters (OmegaConf containers, ``typing.Any``, ...): the classes such a file references are
allow-listed by module (``SAFE_GLOBAL_MODULES``) and must be classes, never functions, so the file
still cannot run code. Anything else needs ``trust_pickle=True``, which unpickles arbitrary objects and
therefore may execute code from the file: use it only for files you trust.

A state dict that does not match the model key-for-key and shape-for-shape raises
``CheckpointMismatchError`` naming the file and the first missing / unexpected / mis-shaped keys
(with counts). Only ``num_batches_tracked`` buffers may be absent (checkpoints from PyTorch < 0.4.1
lack them); they keep the model's value.

Which network a file holds (``BackboneSpec``: registry name, embedding size, factory options) is read
from the file where it is recorded, so that commands need no architecture flags for it
(:func:`checkpoint_backbone`, :func:`load_recorded_backbone`):

- a Lightning checkpoint of ``ekd.lit``: the ``hyper_parameters`` section named like the prefix
  (``student`` by default, ``teacher`` with ``prefix="teacher."``; a ``BackboneConfig`` as a dict).
  A Lightning checkpoint without that section is a ``BackboneRecordError`` when nothing else names
  the backbone;
- any other file (``backbone.pth`` written by ``ekd-train``): its *backbone record*, a JSON file
  next to it with the same stem (``backbone.pth`` -> ``backbone.json``), written by
  :func:`write_backbone_record`::

      {"format": "ekd-backbone/1", "name": "mobilefacenet", "embedding_size": 512, "kwargs": {}}

  ``kwargs`` are the ``create_backbone`` options besides ``embedding_size`` (JSON values; lists
  stand for tuples). A file without a record (an insightface ``backbone.pth``) records nothing: the
  caller names the backbone.

Names, sizes and options given by the caller win where the record is silent (an option it lacks),
and must agree with it otherwise: a contradiction is a ``BackboneConflictError`` naming both values,
never a silently different network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import pickle
import re
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ekd.models.base import FaceBackbone
from ekd.models.registry import BACKBONES, create_backbone

PathLike = str | os.PathLike

# Module prefixes whose *classes* may be unpickled from a checkpoint without trust_pickle (hyper-
# parameter containers of Lightning checkpoints); plus the harmless builtin container types below.
SAFE_GLOBAL_MODULES = (
    "omegaconf.",
    "collections.",
    "typing.",
    "pathlib.",
    "enum.",
    "datetime.",
    "pytorch_lightning.utilities.parsing.",
    "lightning_fabric.utilities.data.",
    "ekd.config.",
    "ekd.choices.",  # str enums of the closed config choices (optimiser, schedule, sampler names)
)
SAFE_BUILTINS = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes", "slice"}
)
TRUST_REMEDY = (
    "if it is a whole model saved with torch.save(model), your own run's checkpoint or another trusted "
    "file, load it with trust_pickle=True (ekd-train: trust_pickle=true; this runs code from the file)"
)
SHOW_FIRST = 5  # keys listed per category in mismatch messages


class CheckpointError(ValueError):
    """A file that cannot be used as a backbone checkpoint (not a checkpoint, no state dict, bad prefix)."""


class BackboneRecordError(CheckpointError):
    """The file does not record which backbone it holds (and none was named), or its record is malformed."""


class BackboneConflictError(CheckpointError):
    """A backbone name, embedding size or option given by the caller contradicts the file's record."""

    def __init__(self, message: str, field: str, given: object, recorded: object) -> None:
        super().__init__(message)
        self.field = field
        self.given = given
        self.recorded = recorded


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's keys or shapes differ from the model's."""

    def __init__(
        self,
        message: str,
        missing: list[str],
        unexpected: list[str],
        shape_mismatches: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.shape_mismatches = shape_mismatches


def file_sha256(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk_size`` chunks (teacher files are hundreds of MB)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cannot hash {path}: no such file")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _resolve_global(qualified: str) -> object | None:
    """Import ``package.module.Name`` (the module part may be any prefix) or return None."""
    parts = qualified.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attribute in parts[split:]:
                obj = getattr(obj, attribute)
        except AttributeError:
            return None
        return obj
    return None


def _is_safe_global(qualified: str) -> bool:
    if qualified.startswith("builtins."):
        return qualified.split(".", 1)[1] in SAFE_BUILTINS
    if not qualified.startswith(SAFE_GLOBAL_MODULES):
        return False
    obj = _resolve_global(qualified)
    # classes only (and typing's special forms such as typing.Any): a function could do anything
    return isinstance(obj, type) or (qualified.startswith("typing.") and obj is not None)


# torch.save's legacy (pre-1.6) format starts with this pickled magic number; the current one is a zip
_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]


def _is_torch_file(path: Path) -> bool:
    if zipfile.is_zipfile(path):
        return True
    with path.open("rb") as handle:
        return handle.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC


def read_checkpoint(path: PathLike, trust_pickle: bool = False) -> object:
    """The object ``torch.save`` wrote to ``path``, loaded on CPU: the one checkpoint reader of ekd.

    Safe by default (``torch.load(weights_only=True)`` plus the allow-listed hyper-parameter classes
    of the module docstring); ``trust_pickle=True`` unpickles anything and may run code from the file.
    Errors name the file: ``FileNotFoundError`` (no such file), ``CheckpointError`` (a ValueError:
    not a file, not a PyTorch checkpoint, untrusted pickled objects).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path {path} is not a file")
    if not _is_torch_file(path):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (neither torch.save's zip nor its legacy format)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        weights_only_error = error
    except Exception as error:  # noqa: BLE001  (torch raises many types for a non-checkpoint)
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (torch.load failed: {type(error).__name__}: {error})"
        ) from error

    if trust_pickle:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001
            raise CheckpointError(
                f"{path}: unpickling with trust_pickle=True failed ({type(error).__name__}: {error}); "
                "a pickled module needs its classes importable under the same names"
            ) from error
    with allowed_checkpoint_classes(path, weights_only_error):
        return torch.load(path, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def allowed_checkpoint_classes(
    path: PathLike, weights_only_error: BaseException | None = None
) -> Iterator[None]:
    """Within this context ``torch.load(path, weights_only=True)`` accepts the allow-listed classes (the
    module docstring) that the file at ``path`` references, e.g. the OmegaConf containers older ekd
    checkpoints pickled in their hyper-parameters: Lightning's ``fit(ckpt_path=...)`` reads that way.
    A file referencing anything else is a ``CheckpointError`` naming the file and those globals."""
    path = Path(path)
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001  (legacy-format files cannot be scanned)
        needed = []
    unsafe = sorted(name for name in needed if not _is_safe_global(name))
    if not unsafe and (needed or weights_only_error is None):
        with torch.serialization.safe_globals([_resolve_global(name) for name in needed]):
            try:
                yield
            except pickle.UnpicklingError as error:  # allowed classes that torch's safe loader cannot build
                raise CheckpointError(
                    f"{path} cannot be read with torch.load(weights_only=True) ({_first_line(error)}); "
                    f"{TRUST_REMEDY}"
                ) from error
        return
    if not needed and weights_only_error is not None:  # legacy: the global names in torch's message
        unsafe = re.findall(r"GLOBAL ([\w.]+)", str(weights_only_error))
    shown = _listing(unsafe) or "objects torch's safe loader rejects"
    raise CheckpointError(
        f"{path} pickles Python objects beyond tensors and containers ({shown}); {TRUST_REMEDY}"
    )


def _first_line(error: BaseException) -> str:
    """The gist of torch's long weights_only message (its 'WeightsUnpickler error' line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return next(
        (line for line in lines if "WeightsUnpickler error" in line),
        lines[0] if lines else type(error).__name__,
    )


def _top_level_prefixes(keys) -> str:
    counts = Counter(key.split(".", 1)[0] for key in keys)
    return ", ".join(f"{name}. ({count} keys)" for name, count in counts.most_common(8))


def _strip(state: Mapping[str, object], prefix: str) -> dict[str, object]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def _strip_module(state: dict[str, object]) -> dict[str, object]:
    # DistributedDataParallel / DataParallel wrap the model as ``module``
    if state and all(key.startswith("module.") for key in state):
        return _strip(state, "module.")
    return state


def read_state_dict(
    path: PathLike, prefix: str | None = None, trust_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], str]:
    """Read the backbone state dict from ``path``; returns (state_dict, description of where it came from).

    See the module docstring for the accepted files and the prefix rule.
    """
    path = Path(path)
    return _select_state_dict(read_checkpoint(path, trust_pickle), path, prefix)


def _select_state_dict(obj: object, path: Path, prefix: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """``read_state_dict`` on an object already read from ``path``."""
    source = str(path)
    if isinstance(obj, nn.Module):
        state: dict[str, object] = dict(obj.state_dict())
        source += f" (pickled {type(obj).__name__})"
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state = dict(obj["state_dict"])
        source += " (Lightning checkpoint)"
    elif isinstance(obj, Mapping) and obj and all(isinstance(key, str) for key in obj):
        state = dict(obj)
    else:
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state_dict (str -> tensor), a Lightning checkpoint "
            "(dict with 'state_dict') or an nn.Module"
        )

    if prefix is None and any(key.startswith("student.") for key in state):
        prefix = "student."
    if prefix:
        if not prefix.endswith("."):
            prefix += "."
        selected = _strip(state, prefix)
        if not selected:
            raise CheckpointError(
                f"{source} has no keys with prefix {prefix!r}; "
                f"its key prefixes are: {_top_level_prefixes(state)}"
            )
        state = selected
        source += f" prefix {prefix!r}"
    state = _strip_module(state)

    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"{source} is not a state_dict: {len(not_tensors)} entries are not tensors, e.g. "
            f"{not_tensors[0]!r} is a {type(state[not_tensors[0]]).__name__}"
        )
    return state, source  # type: ignore[return-value]


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOW_FIRST])
    return shown + (f", ... and {len(keys) - SHOW_FIRST} more" if len(keys) > SHOW_FIRST else "")


def load_state_dict_checked(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)``, with a readable ``CheckpointMismatchError`` instead."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = {
        k: (tuple(state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    }
    if missing or unexpected or shapes:
        name = getattr(model, "backbone_name", type(model).__name__)
        lines = [f"checkpoint {source} does not match backbone {name!r}:"]
        if missing:
            lines.append(f"  {len(missing)} missing keys: {_listing(missing)}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected keys: {_listing(unexpected)}")
        if shapes:
            lines.append(f"  {len(shapes)} shape mismatches:")
            lines += [
                f"    {k}: checkpoint {c} vs model {m}" for k, (c, m) in list(shapes.items())[:SHOW_FIRST]
            ]
            if len(shapes) > SHOW_FIRST:
                lines.append(f"    ... and {len(shapes) - SHOW_FIRST} more")
        lines.append(f"  checkpoint key prefixes: {_top_level_prefixes(state) or 'none'}")
        raise CheckpointMismatchError("\n".join(lines), missing, unexpected, shapes)
    complete = dict(state)
    for key, value in expected.items():
        complete.setdefault(key, value)  # only num_batches_tracked can be absent here
    model.load_state_dict(complete, strict=True)


def load_backbone(
    name: str | None, path: PathLike, prefix: str | None = None, trust_pickle: bool = False, **options
) -> FaceBackbone:
    """Build the backbone ``path`` holds, load its weights strictly; returns the model in eval mode.

    ``name`` and ``options`` (``embedding_size`` and the ``create_backbone`` options) may be left out
    where the file records its backbone (module docstring); given ones must agree with the record.
    Errors: FileNotFoundError, ``CheckpointError`` (not a checkpoint, no state dict, unknown prefix,
    untrusted pickle), ``BackboneRecordError`` (no name and no record), ``BackboneConflictError``
    (a contradiction with the record) and ``CheckpointMismatchError`` (keys / shapes).
    """
    embedding_size = options.pop("embedding_size", None)
    model, _ = load_recorded_backbone(
        path,
        prefix=prefix,
        name=name,
        embedding_size=embedding_size,
        kwargs=options,
        trust_pickle=trust_pickle,
    )
    return model


# --------------------------------------------------------------------------------- backbone records
BACKBONE_RECORD_FORMAT = "ekd-backbone/1"
# how the arguments are called in messages; commands pass their flag names instead
DEFAULT_ARGUMENT_NAMES: dict[str, str] = {
    "name": "the backbone name",
    "embedding_size": "embedding_size",
    "kwargs": "option",
}


@dataclasses.dataclass
class BackboneSpec:
    """What builds a backbone: registry name, embedding size, the other ``create_backbone`` options.

    ``source`` says where it was read (``<file> hyper_parameters['student']``, ``<record>.json``) or
    ``"arguments"`` when the caller named it.
    """

    name: str
    embedding_size: int = 512
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str = "arguments"

    def create(self) -> FaceBackbone:
        """``create_backbone(name, embedding_size, **kwargs)``: the network, randomly initialised."""
        return create_backbone(self.name, embedding_size=self.embedding_size, **self.kwargs)


def backbone_record_path(weights: PathLike) -> Path:
    """The backbone record of a weights file: same folder and stem, ``.json`` (``backbone.json``)."""
    return Path(weights).with_suffix(".json")


def _json_value(value: Any) -> Any:
    # tuples (options parsed from the command line) and lists (JSON, OmegaConf) compare and store alike
    if isinstance(value, (tuple, list)):
        return [_json_value(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _json_value(item) for key, item in value.items()}
    return value


def _check_embedding_size(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BackboneRecordError(f"{where}: embedding_size must be a positive int, got {value!r}")
    return value


def write_backbone_record(
    path: PathLike, name: str, embedding_size: int, kwargs: Mapping[str, Any] | None = None
) -> Path:
    """Write the backbone record of the weights file ``path`` (``backbone.pth`` -> ``backbone.json``).

    ``name``: registry name; ``embedding_size``; ``kwargs``: the other ``create_backbone`` options
    (JSON-serialisable; tuples are stored as lists). Written atomically; returns the record's path.
    """
    record = backbone_record_path(path)
    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone record of {path}: name must be a non-empty string, got {name!r}")
    try:
        _check_embedding_size(embedding_size, f"backbone record of {path}")
    except BackboneRecordError as error:
        raise ValueError(str(error)) from None
    data = {
        "format": BACKBONE_RECORD_FORMAT,
        "name": name,
        "embedding_size": embedding_size,
        "kwargs": _json_value(dict(kwargs or {})),
    }
    try:
        text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"backbone record of {path}: kwargs are not JSON-serialisable ({error})") from None
    tmp = record.with_name(f".{record.name}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, record)
    return record


def read_backbone_record(weights: PathLike) -> BackboneSpec | None:
    """The backbone record next to ``weights`` (see :func:`backbone_record_path`); None when absent.

    A malformed record is a ``BackboneRecordError`` naming it.
    """
    record = backbone_record_path(weights)
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BackboneRecordError(f"backbone record {record} is not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise BackboneRecordError(
            f"backbone record {record} holds a {type(data).__name__}, not a JSON object"
        )
    if data.get("format", BACKBONE_RECORD_FORMAT) != BACKBONE_RECORD_FORMAT:
        raise BackboneRecordError(
            f"backbone record {record} has format {data.get('format')!r}; this ekd reads "
            f"{BACKBONE_RECORD_FORMAT!r}"
        )
    return _spec_from_section(data, str(record))


def _spec_from_section(section: Mapping[str, Any], source: str) -> BackboneSpec:
    name = section.get("name")
    if not isinstance(name, str) or not name:
        raise BackboneRecordError(f"{source} names no backbone (name: {name!r})")
    embedding_size = section.get("embedding_size")
    embedding_size = 512 if embedding_size is None else _check_embedding_size(embedding_size, source)
    kwargs = section.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise BackboneRecordError(f"{source}: kwargs must be a mapping, got {type(kwargs).__name__}")
    return BackboneSpec(name, embedding_size, dict(kwargs), source)


def _plain_container(value: Any, source: str) -> Any:
    # hyper-parameters of older runs may be OmegaConf containers; only the one section is converted,
    # so that interpolations elsewhere in the config (Hydra resolvers) cannot get in the way
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not OmegaConf.is_config(value):
        return value
    try:
        return OmegaConf.to_container(value, resolve=True)
    except OmegaConfBaseException as error:
        raise BackboneRecordError(f"{source} cannot be read ({type(error).__name__}: {error})") from None


def _network_of(prefix: str | None) -> str:
    return (prefix or "student.").rstrip(".")


def _recorded_spec(obj: object, path: Path, prefix: str | None) -> BackboneSpec | None:
    """What ``obj`` (read from ``path``) records about the network under ``prefix``; None: nothing."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        network = _network_of(prefix)
        where = f"{path} hyper_parameters[{network!r}]"
        hparams = obj.get("hyper_parameters")
        section = hparams.get(network) if isinstance(hparams, Mapping) else None
        section = _plain_container(section, where)
        if not isinstance(section, Mapping) or not isinstance(section.get("name"), str):
            recorded = (
                [k for k in ("student", "teacher") if isinstance(hparams.get(k), Mapping)]
                if isinstance(hparams, Mapping)
                else []
            )
            also = f" (it records: {', '.join(recorded)})" if recorded else ""
            raise BackboneRecordError(
                f"{path} is a Lightning checkpoint whose hyper_parameters record no '{network}' backbone"
                f"{also}; ekd.lit records the 'student' and 'teacher' sections"
            )
        return _spec_from_section(section, where)
    return read_backbone_record(path)


def checkpoint_backbone(
    path: PathLike, prefix: str | None = "student.", trust_pickle: bool = False
) -> BackboneSpec | None:
    """The backbone ``path`` records for ``prefix`` (module docstring), or None where it records none.

    An ekd Lightning checkpoint gives its ``hyper_parameters`` section named like the prefix
    (``student`` for ``None`` / ``"student."``, ``teacher`` for ``"teacher."``), and a
    ``BackboneRecordError`` when that section is absent; any other file gives its backbone record
    (``backbone.json`` beside ``backbone.pth``) or None (an insightface ``backbone.pth``).
    """
    path = Path(path)
    return _recorded_spec(read_checkpoint(path, trust_pickle), path, prefix)


def _same_backbone_name(given: str, recorded: str) -> bool:
    if given == recorded:
        return True
    try:  # aliases: one factory with the same arguments (a family's model name included)
        return BACKBONES.resolve(given) == BACKBONES.resolve(recorded)
    except ValueError:
        return False


def _conflict(
    field: str, given_text: str, recorded_text: str, given: object, recorded: object, spec: BackboneSpec
) -> BackboneConflictError:
    return BackboneConflictError(
        f"{given_text} contradicts {recorded_text} recorded in {spec.source}; leave it out to build the "
        "network these weights were trained in",
        field,
        given,
        recorded,
    )


def _hint(names: Mapping[str, str]) -> str:
    return f"give {names['name']} (and {names['embedding_size']} / {names['kwargs']} unless the defaults)"


def merge_backbone_spec(
    recorded: BackboneSpec | None,
    name: str | None = None,
    embedding_size: int | None = None,
    kwargs: Mapping[str, Any] | None = None,
    source: str = "the file",
    argument_names: Mapping[str, str] | None = None,
) -> BackboneSpec:
    """The backbone to build from what a file records and what the caller gave.

    Given values win where the record is silent (an option it lacks); a given name, embedding size
    or option value that differs from the record raises ``BackboneConflictError`` naming both (names
    of the same factory, e.g. aliases, agree). Without a record ``name`` is required
    (``BackboneRecordError`` otherwise; ``source`` names the file in that message), and the embedding
    size defaults to 512. ``argument_names`` says how the caller spells ``name`` / ``embedding_size``
    / ``kwargs`` in messages (command-line flags).
    """
    names = {**DEFAULT_ARGUMENT_NAMES, **(argument_names or {})}
    kwargs = dict(kwargs or {})
    if "embedding_size" in kwargs:  # accepted among the options too (ekd-cache's --teacher-kwargs)
        size = kwargs.pop("embedding_size")
        if embedding_size is not None and size != embedding_size:
            raise ValueError(f"embedding_size given twice: {embedding_size} and {size} (in the options)")
        embedding_size = size
    if recorded is None:
        if name is None:
            raise BackboneRecordError(f"{source} does not record which backbone it holds: {_hint(names)}")
        return BackboneSpec(name, 512 if embedding_size is None else embedding_size, kwargs, "arguments")

    if name is not None and not _same_backbone_name(name, recorded.name):
        raise _conflict(
            "name", f"{names['name']} {name!r}", repr(recorded.name), name, recorded.name, recorded
        )
    if embedding_size is not None and embedding_size != recorded.embedding_size:
        raise _conflict(
            "embedding_size",
            f"{names['embedding_size']} {embedding_size}",
            str(recorded.embedding_size),
            embedding_size,
            recorded.embedding_size,
            recorded,
        )
    merged = dict(recorded.kwargs)
    for key, value in kwargs.items():
        if key in merged and _json_value(value) != _json_value(merged[key]):
            raise _conflict(
                "kwargs",
                f"{names['kwargs']} {key}={value!r}",
                f"{key}={merged[key]!r}",
                value,
                merged[key],
                recorded,
            )
        merged[key] = value
    return BackboneSpec(name or recorded.name, recorded.embedding_size, merged, recorded.source)


def load_recorded_backbone(
    path: PathLike,
    prefix: str | None = None,
    name: str | None = None,
    embedding_size: int | None = None,
    kwargs: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    argument_names: Mapping[str, str] | None = None,
) -> tuple[FaceBackbone, BackboneSpec]:
    """(model in eval mode, what built it): the backbone ``path`` holds under ``prefix``, loaded strictly.

    Reads the file once. The network is what the file records (:func:`checkpoint_backbone`) merged
    with ``name`` / ``embedding_size`` / ``kwargs`` by :func:`merge_backbone_spec`; a Lightning
    checkpoint without the record is accepted when ``name`` is given. Errors: those of
    :func:`load_backbone`.
    """
    path = Path(path)
    obj = read_checkpoint(path, trust_pickle)
    names = {**DEFAULT_ARGUMENT_NAMES, **(argument_names or {})}
    try:
        recorded = _recorded_spec(obj, path, prefix)
    except BackboneRecordError as error:
        if name is None:
            raise BackboneRecordError(f"{error}; {_hint(names)}") from None
        recorded = None  # a Lightning checkpoint not written by ekd.lit: the caller's name is all there is
    source = (
        str(path)
        if recorded is not None or isinstance(obj, nn.Module)
        else f"{path} (a plain state dict, no backbone record {backbone_record_path(path).name} beside it)"
    )
    spec = merge_backbone_spec(recorded, name, embedding_size, kwargs, source, names)
    model = spec.create()
    state, source = _select_state_dict(obj, path, prefix)
    load_state_dict_checked(model, state, source)
    return model.eval(), spec
