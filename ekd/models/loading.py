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
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import re
import zipfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ekd.models.base import FaceBackbone
from ekd.models.registry import create_backbone

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
SHOW_FIRST = 5  # keys listed per category in mismatch messages


class CheckpointError(ValueError):
    """A file that cannot be used as a backbone checkpoint (not a checkpoint, no state dict, bad prefix)."""


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
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001  (legacy-format files cannot be scanned)
        needed = []
    unsafe = sorted(name for name in needed if not _is_safe_global(name))
    if needed and not unsafe:
        allowed = [_resolve_global(name) for name in needed]
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    if not needed:  # legacy files cannot be scanned: take the global torch names in its message
        unsafe = re.findall(r"GLOBAL ([\w.]+)", str(weights_only_error))
    shown = _listing(unsafe) or "objects torch's safe loader rejects"
    raise CheckpointError(
        f"{path} pickles Python objects beyond tensors and containers ({shown}); if it is a whole model "
        "saved with torch.save(model) or another trusted file, load it with trust_pickle=True (this "
        "runs code from the file)"
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
    obj = read_checkpoint(path, trust_pickle)

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
    name: str, path: PathLike, prefix: str | None = None, trust_pickle: bool = False, **options
) -> FaceBackbone:
    """Build backbone ``name`` (``options`` go to ``create_backbone``), load ``path`` strictly.

    Returns the model in eval mode. Errors: FileNotFoundError, ``CheckpointError`` (not a checkpoint,
    no state dict, unknown prefix, untrusted pickle) and ``CheckpointMismatchError`` (keys / shapes).
    """
    model = create_backbone(name, **options)
    state, source = read_state_dict(path, prefix=prefix, trust_pickle=trust_pickle)
    load_state_dict_checked(model, state, source)
    return model.eval()
