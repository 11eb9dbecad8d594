"""The one registry helper (``ekd.registry``) and the registries built on it, tested from their contents.

The first half exercises :class:`Registry` on a throw-away instance. The second half is generated from
the registries themselves (timm-style): every registered backbone, head, objective and auxiliary loss
builds with its defaults, and every one of them rejects an unknown option by listing the ones it takes.
A name added to any registry is covered without touching this file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from ekd.distill import OBJECTIVES, Objective, ObjectiveContext
from ekd.distill import create as create_objective
from ekd.heads import AUX_LOSSES, HEADS, Head, RecognitionLoss
from ekd.heads import create as create_head
from ekd.lit.recognition import build_aux_loss
from ekd.models import FaceBackbone, create_backbone
from ekd.models.registry import BACKBONES
from ekd.registry import (
    Registry,
    RegistryError,
    UnknownNameError,
    UnknownOptionError,
    accepted_options,
    takes_any_option,
)

D, C = 8, 5  # embedding size and class count of the built heads / losses


# ------------------------------------------------------------------------------------ the helper
def _widgets() -> Registry:
    widgets: Registry = Registry("widget")

    @widgets.register("cog12")
    def cog12(size: int, teeth: int = 12, material: str = "steel") -> tuple:
        return ("cog", size, teeth, material)

    @widgets.register("cog2")
    class Cog2:
        def __init__(self, size: int, teeth: int = 2) -> None:
            self.size, self.teeth = size, teeth

    @widgets.register("loose")
    def loose(**anything: Any) -> dict:
        return anything

    @widgets.register("hub/*")
    def hub(model_name: str, size: int = 1) -> tuple:
        return ("hub", model_name, size)

    @widgets.register("hub/deep/*")
    def deep_hub(model_name: str) -> tuple:
        return ("deep", model_name)

    return widgets


def test_unknown_name_lists_the_known_names_and_families() -> None:
    widgets = _widgets()
    with pytest.raises(UnknownNameError, match=r"unknown widget 'cog3'; known: cog2, cog12, loose") as info:
        widgets.get("cog3")
    assert "families: hub/<model_name>, hub/deep/<model_name>" in str(info.value)
    with pytest.raises(UnknownNameError, match="widget name must be a string"):
        widgets.get(3)  # type: ignore[arg-type]
    assert "cog2" in widgets and "hub/anything" in widgets and "cog3" not in widgets


def test_names_in_natural_order_families_apart() -> None:
    widgets = _widgets()
    assert widgets.names() == ["cog2", "cog12", "loose"] == list(widgets)
    assert widgets.families() == ["hub/*", "hub/deep/*"]


def test_unknown_option_lists_the_accepted_ones() -> None:
    widgets = _widgets()
    with pytest.raises(
        UnknownOptionError,
        match=r"widget 'cog12' got options \['colour'\].*has no hyper-parameter 'colour'; "
        r"it accepts: teeth, material",
    ):
        widgets.create("cog12", 3, colour="red")  # the positional size is not an option
    with pytest.raises(UnknownOptionError, match="it accepts: size, teeth"):
        widgets.create("cog2", colour="red")  # a class: its __init__ without self
    assert widgets.create("cog12", 3, teeth=5) == ("cog", 3, 5, "steel")
    assert widgets.create("loose", colour="red") == {"colour": "red"}  # **kwargs: not checkable by name
    assert takes_any_option(widgets.get("loose")) and not takes_any_option(widgets.get("cog12"))
    assert accepted_options(widgets.get("cog2")) == ["size", "teeth"]
    assert accepted_options(widgets.get("cog12"), skip=1) == ["teeth", "material"]


def test_both_errors_are_value_errors_and_the_option_error_a_type_error() -> None:
    assert issubclass(UnknownNameError, ValueError) and not issubclass(UnknownNameError, TypeError)
    assert issubclass(UnknownOptionError, ValueError) and issubclass(UnknownOptionError, TypeError)
    assert issubclass(UnknownNameError, RegistryError) and issubclass(UnknownOptionError, RegistryError)
    widgets = _widgets()
    with pytest.raises(TypeError):  # callers that catch Python's own unexpected-keyword error still do
        widgets.create("cog2", 1, colour="red")


def test_family_resolution() -> None:
    widgets = _widgets()
    assert widgets.create("hub/small", size=2) == ("hub", "small", 2)
    assert widgets.resolve("hub/small") == (widgets.get("hub/x"), ("small",))
    assert widgets.create("hub/deep/tiny") == ("deep", "tiny")  # the longest prefix wins
    with pytest.raises(UnknownNameError, match=r"'hub/' names no model: write hub/<model_name>"):
        widgets.get("hub/")
    with pytest.raises(UnknownOptionError, match="it accepts: size"):  # model_name is not an option
        widgets.create("hub/small", colour="red")


def test_double_registration_and_bad_names() -> None:
    widgets = _widgets()
    with pytest.raises(RegistryError, match="widget 'cog2' is already registered"):
        widgets.register("cog2")(lambda: None)
    with pytest.raises(RegistryError, match="widget family 'hub/\\*' is already registered"):
        widgets.register("hub/*")(lambda model_name: None)
    for bad in ("", " cog", "cog "):
        with pytest.raises(RegistryError, match="non-empty string without spaces"):
            widgets.register(bad)


def test_registered_is_temporary() -> None:
    widgets = _widgets()
    with widgets.registered("temp", lambda: "t"):
        assert widgets.create("temp") == "t"
    assert "temp" not in widgets
    with pytest.raises(RuntimeError), widgets.registered("temp2", lambda: "t"):
        raise RuntimeError  # removed on the way out of a failing block too
    assert "temp2" not in widgets
    widgets.unregister("hub/*")
    assert widgets.families() == ["hub/deep/*"]


# ---------------------------------------------------------------- generated from the registries
def _tiny_backbone(name: str, **options: Any) -> FaceBackbone:
    accepted = accepted_options(BACKBONES.get(name))
    tiny = {"input_size": (32, 32), "base_width": 8, "width_mult": 0.25}
    return create_backbone(
        name, embedding_size=D, **{k: v for k, v in tiny.items() if k in accepted}, **options
    )


def _head(name: str, **options: Any) -> Head:
    return create_head(name, D, C, **options)


def _objective(name: str, **options: Any) -> Objective:
    return create_objective(name, **options)


def _aux_loss(name: str, **options: Any) -> nn.Module:
    return build_aux_loss(name, options, D, C)


# kind (test ids) -> (registry, builder filling in the registry's positional arguments)
BUILDERS: dict[str, tuple[Registry, Callable[..., Any]]] = {
    "backbone": (BACKBONES, _tiny_backbone),
    "head": (HEADS, _head),
    "objective": (OBJECTIVES, _objective),
    "aux_loss": (AUX_LOSSES, _aux_loss),
}
ENTRIES = [(kind, name) for kind, (registry, _) in BUILDERS.items() for name in registry.names()]


def test_every_registry_has_entries() -> None:
    for kind, (registry, _) in BUILDERS.items():
        assert registry.names(), kind
    assert BACKBONES.families() == ["timm/*"]


@pytest.mark.parametrize(("kind", "name"), ENTRIES, ids=[f"{k}:{n}" for k, n in ENTRIES])
def test_every_registered_name_builds(kind: str, name: str) -> None:
    built = BUILDERS[kind][1](name)
    x, labels = torch.randn(4, D), torch.tensor([0, 1, 2, 0])
    if kind == "backbone":
        assert isinstance(built, FaceBackbone) and built.backbone_name == name
        assert built.embedding_size == D
    elif kind == "head":
        assert isinstance(built, Head) and built.name == name
        assert built(x, labels).shape == (4, C)
    elif kind == "objective":
        assert isinstance(built, Objective) and built.name == name
        assert built.default_weight > 0 and built.hint_only(0) is False
        # as in a training module: the student head is there (objectives replacing recognition need it)
        head = RecognitionLoss("arcface", D, C)
        built.bind(
            ObjectiveContext(num_classes=C, student_embedding_size=D, teacher_embedding_size=D, head=head)
        )
    else:
        value = built(x, labels)
        assert value.ndim == 0 and torch.isfinite(value)


@pytest.mark.parametrize(("kind", "name"), ENTRIES, ids=[f"{k}:{n}" for k, n in ENTRIES])
def test_every_registered_name_rejects_an_unknown_option(kind: str, name: str) -> None:
    registry, build = BUILDERS[kind]
    if takes_any_option(registry.get(name)):
        pytest.skip(f"{kind} {name!r} takes **options")
    with pytest.raises(UnknownOptionError, match=rf"'{name}' has no hyper-parameter 'no_such_option'"):
        build(name, no_such_option=1)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_every_registry_names_the_known_on_an_unknown_name(kind: str) -> None:
    registry, build = BUILDERS[kind]
    with pytest.raises(UnknownNameError, match=f"unknown {registry.kind} 'no-such-name'") as info:
        build("no-such-name")
    assert all(name in str(info.value) for name in registry.names())
