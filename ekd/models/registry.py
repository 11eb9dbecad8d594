"""The backbone registry: ``register_backbone`` / ``create_backbone`` / ``list_backbones``.

Thin functions over one :class:`ekd.registry.Registry`, ``BACKBONES``. A name is either exact
(``iresnet50``, ``mbf``) or a family registered with a trailing ``/*`` (``timm/*``):
``create_backbone("timm/resnet18")`` calls the family factory with ``model_name="resnet18"``. Factories
take ``embedding_size`` plus their own keyword options; an option a factory does not take is reported
by name together with the options it does take, before anything is built
(:class:`ekd.registry.UnknownOptionError`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ekd.models.base import FaceBackbone
from ekd.registry import Registry

Factory = Callable[..., FaceBackbone]
F = TypeVar("F", bound=Factory)

BACKBONES: Registry[Factory] = Registry("backbone")


def register_backbone(name: str) -> Callable[[F], F]:
    """Decorator registering ``factory(embedding_size=512, **options) -> FaceBackbone`` under ``name``.

    ``name`` ending in ``/*`` registers a family whose factory is called as
    ``factory(model_name, embedding_size=..., **options)``.
    """
    return BACKBONES.register(name)


def list_backbones() -> list[str]:
    """Concrete backbone names in natural order (families such as ``timm/*``: ``list_backbone_families``)."""
    return BACKBONES.names()


def list_backbone_families() -> list[str]:
    """Registered families, written as ``"<prefix>*"`` (e.g. ``"timm/*"``)."""
    return BACKBONES.families()


def create_backbone(name: str, embedding_size: int = 512, **options) -> FaceBackbone:
    """Build the backbone registered as ``name`` with an ``embedding_size``-d output.

    Raises ValueError for an unknown name (listing the known ones), a bad embedding size, or an
    option the backbone does not take (listing the ones it does).
    """
    BACKBONES.resolve(name)  # an unknown name is reported before its options
    if isinstance(embedding_size, bool) or not isinstance(embedding_size, int) or embedding_size < 1:
        raise ValueError(
            f"embedding_size of backbone {name!r} must be a positive int, got {embedding_size!r}"
        )
    model = BACKBONES.create(name, embedding_size=embedding_size, **options)
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
