"""The one backbone registry: ``register_backbone`` / ``create_backbone`` / ``list_backbones``.

A name is either exact (``iresnet50``, ``mbf``) or a family registered with a trailing ``/*``
(``timm/*``): ``create_backbone("timm/resnet18")`` calls the family factory with
``model_name="resnet18"``. Factories take ``embedding_size`` plus their own keyword options; an option a
factory does not take is reported by name together with the options it does take, before anything
is built.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import TypeVar

from ekd.models.base import FaceBackbone

Factory = Callable[..., FaceBackbone]
F = TypeVar("F", bound=Factory)

_BACKBONES: dict[str, Factory] = {}
# family prefix ("timm/") -> factory taking ``model_name`` as its first argument
_FAMILIES: dict[str, Factory] = {}


def register_backbone(name: str) -> Callable[[F], F]:
    """Decorator registering ``factory(embedding_size=512, **options) -> FaceBackbone`` under ``name``.

    ``name`` ending in ``/*`` registers a family whose factory is called as
    ``factory(model_name, embedding_size=..., **options)``.
    """
    if not name or name != name.strip():
        raise ValueError(f"backbone name must be a non-empty string without surrounding spaces, got {name!r}")

    def decorator(factory: F) -> F:
        if name.endswith("/*"):
            prefix = name[:-1]  # keep the slash: "timm/"
            if prefix in _FAMILIES:
                raise ValueError(f"backbone family {name!r} is already registered")
            _FAMILIES[prefix] = factory
        else:
            if name in _BACKBONES:
                raise ValueError(f"backbone {name!r} is already registered")
            _BACKBONES[name] = factory
        return factory

    return decorator


def _natural_key(name: str) -> list[object]:
    # iresnet18 < iresnet34 < iresnet100, not lexicographic order
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_backbones() -> list[str]:
    """Concrete backbone names in natural order (families such as ``timm/*``: ``list_backbone_families``)."""
    return sorted(_BACKBONES, key=_natural_key)


def list_backbone_families() -> list[str]:
    """Registered families, written as ``"<prefix>*"`` (e.g. ``"timm/*"``)."""
    return sorted(f"{prefix}*" for prefix in _FAMILIES)


def _known_names_text() -> str:
    families = ", ".join(f"{prefix}<model_name>" for prefix in sorted(_FAMILIES))
    text = ", ".join(list_backbones())
    return f"{text}; families: {families}" if families else text


def _resolve(name: str) -> tuple[Factory, tuple]:
    if not isinstance(name, str):
        raise ValueError(f"backbone name must be a string, got {type(name).__name__}: {name!r}")
    if name in _BACKBONES:
        return _BACKBONES[name], ()
    for prefix, factory in _FAMILIES.items():
        if name.startswith(prefix):
            model_name = name[len(prefix) :]
            if not model_name:
                raise ValueError(f"backbone {name!r} names no model: write {prefix}<model_name>")
            return factory, (model_name,)
    raise ValueError(f"unknown backbone {name!r}; known backbones: {_known_names_text()}")


def create_backbone(name: str, embedding_size: int = 512, **options) -> FaceBackbone:
    """Build the backbone registered as ``name`` with an ``embedding_size``-d output.

    Raises ValueError for an unknown name (listing the known ones), a bad embedding size, or an
    option the backbone does not take (listing the ones it does).
    """
    factory, args = _resolve(name)
    if isinstance(embedding_size, bool) or not isinstance(embedding_size, int) or embedding_size < 1:
        raise ValueError(
            f"embedding_size of backbone {name!r} must be a positive int, got {embedding_size!r}"
        )
    signature = inspect.signature(factory)
    try:
        signature.bind(*args, embedding_size=embedding_size, **options)
    except TypeError as error:
        accepted = [
            p.name
            for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("model_name",)
        ]
        raise ValueError(
            f"backbone {name!r} got options {sorted(options)} it cannot take ({error}); "
            f"it takes: {', '.join(accepted)}"
        ) from None
    model = factory(*args, embedding_size=embedding_size, **options)
    if not isinstance(model, FaceBackbone):
        raise TypeError(f"factory of backbone {name!r} returned {type(model).__name__}, not a FaceBackbone")
    # the registry name travels with the model (export metadata, ekd-info, error messages)
    model.backbone_name = name
    return model


def parse_backbone_options(assignments: list[str] | None) -> dict[str, object]:
    """Turn command-line ``KEY=VALUE`` strings into ``create_backbone`` options.

    Values are Python literals where they parse as one (``8``, ``0.25``, ``[32,32]``), else strings;
    lists become tuples (``input_size=[32,32]``).
    """
    import ast

    options: dict[str, object] = {}
    for item in assignments or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"backbone option {item!r} must look like KEY=VALUE (e.g. width_mult=0.25)")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
        options[key] = tuple(value) if isinstance(value, list) else value
    return options
