"""The backbone registry: names, families, option checking, errors."""

from __future__ import annotations

import pytest
import torch

from ekd.models import create_backbone, list_backbone_families, list_backbones, parse_backbone_options
from ekd.models.iresnet import IResNet
from ekd.models.registry import BACKBONES, register_backbone


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'iresnet51'") as info:
        create_backbone("iresnet51")
    for name in list_backbones():
        assert name in str(info.value)
    assert "timm/<model_name>" in str(info.value)


def test_names_are_in_natural_order_and_families_separate() -> None:
    names = list_backbones()
    assert (
        names.index("iresnet18")
        < names.index("iresnet34")
        < names.index("iresnet50")
        < names.index("iresnet100")
    )
    assert list_backbone_families() == ["timm/*"]
    assert not any("/" in name for name in names)


def test_option_a_backbone_does_not_take_is_named_with_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"'mbf' got options \['base_width'\].*width_mult, input_size"):
        create_backbone("mbf", base_width=8)


@pytest.mark.parametrize("size", [0, -3, 1.5, True, "512"])
def test_bad_embedding_size(size) -> None:
    with pytest.raises(ValueError, match="embedding_size of backbone 'iresnet18' must be a positive int"):
        create_backbone("iresnet18", embedding_size=size)


def test_unknown_timm_model_lists_close_matches() -> None:
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet19'.*timm/resnet18"):
        create_backbone("timm/resnet19")
    with pytest.raises(ValueError, match="names no model"):
        create_backbone("timm/")


def test_register_and_reject_duplicates() -> None:
    @register_backbone("test-tiny-iresnet")
    def tiny(embedding_size: int = 512) -> IResNet:
        return IResNet((1, 1, 1, 1), embedding_size, base_width=4, input_size=(16, 16))

    try:
        model = create_backbone("test-tiny-iresnet", embedding_size=3)
        assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
        with pytest.raises(ValueError, match="already registered"):
            register_backbone("test-tiny-iresnet")(tiny)
    finally:
        BACKBONES.unregister("test-tiny-iresnet")


def test_factory_must_return_a_face_backbone() -> None:
    register_backbone("test-not-a-backbone")(lambda embedding_size=512: torch.nn.Linear(2, 2))
    try:
        with pytest.raises(TypeError, match="not a FaceBackbone"):
            create_backbone("test-not-a-backbone")
    finally:
        BACKBONES.unregister("test-not-a-backbone")


def test_parse_backbone_options() -> None:
    assert parse_backbone_options(["width_mult=0.25", "input_size=[32, 48]", "name=abc", "base_width=8"]) == {
        "width_mult": 0.25,
        "input_size": (32, 48),
        "name": "abc",
        "base_width": 8,
    }
    assert parse_backbone_options(None) == {}
    for bad in ("width_mult", "=3", "two words=1"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_backbone_options([bad])
