"""Every registered backbone: embedding and stage shapes, the Features contract, input checks, gradients."""

from __future__ import annotations

import inspect

import pytest
import torch

from ekd.models import FaceBackbone, Features, create_backbone, list_backbones
from ekd.models.registry import BACKBONES

TIMM_SMALL = "timm/mobilenetv3_small_050"


def _tiny_options(name: str) -> dict:
    """Smallest sensible variant of each backbone, chosen from the options its factory takes."""
    if name.startswith("timm/"):
        return {"input_size": (64, 64)}
    params = inspect.signature(BACKBONES.get(name)).parameters
    options = {"input_size": (32, 32)}
    if "base_width" in params:
        options["base_width"] = 8
    if "width_mult" in params:
        options["width_mult"] = 0.25
    return options


ALL = [*list_backbones(), TIMM_SMALL]

# documented shapes at the defaults (112 x 112)
DOCUMENTED = {
    "iresnet": {
        "stage1": (64, 56, 56),
        "stage2": (128, 28, 28),
        "stage3": (256, 14, 14),
        "stage4": (512, 7, 7),
    },
    "mbf": {"stage1": (128, 56, 56), "stage2": (128, 28, 28), "stage3": (256, 14, 14), "stage4": (512, 7, 7)},
    "mobilefacenet": {
        "stage1": (64, 56, 56),
        "stage2": (64, 28, 28),
        "stage3": (128, 14, 14),
        "stage4": (512, 7, 7),
    },
}


def test_registry_holds_the_briefed_backbones() -> None:
    expected = {
        "iresnet18",
        "iresnet34",
        "iresnet50",
        "iresnet100",
        "iresnet200",
        "mbf",
        "mobilefacenet",
        "resnet18",
    }
    assert expected <= set(list_backbones())


@pytest.mark.parametrize("name", ALL)
def test_forward_and_stage_shapes(name: str) -> None:
    model = create_backbone(name, embedding_size=24, **_tiny_options(name)).eval()
    assert isinstance(model, FaceBackbone)
    assert model.embedding_size == 24 and model.backbone_name == name
    h, w = model.input_size
    x = torch.rand(3, 3, h, w) * 2 - 1
    with torch.no_grad():
        features = model.forward_features(x)
        embedding = model(x)
    assert isinstance(features, Features)
    assert embedding.shape == (3, 24)
    torch.testing.assert_close(features.embedding, embedding)
    assert list(features.stages) == ["stage1", "stage2", "stage3", "stage4"]
    for stage, tensor in features.stages.items():
        assert tuple(tensor.shape) == (3, *model.stage_shapes[stage]), stage
    assert features.has("stages.stage4") and not features.has("logits")
    # stages are computed in forward code, not collected by hooks
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("name", [n for n in list_backbones() if n not in ("iresnet200",)])
def test_documented_stage_shapes_at_112(name: str) -> None:
    with torch.device("meta"):
        model = create_backbone(name)
    family = "iresnet" if "resnet" in name else name
    assert model.stage_shapes == DOCUMENTED[family]
    assert tuple(model.input_size) == (112, 112)
    with torch.no_grad():
        features = model.forward_features(torch.zeros(2, 3, 112, 112, device="meta"))
    assert {k: tuple(v.shape[1:]) for k, v in features.stages.items()} == DOCUMENTED[family]
    assert features.embedding.shape == (2, 512)


def test_timm_resnet18_stages_are_its_last_four_levels() -> None:
    with torch.device("meta"):
        model = create_backbone("timm/resnet18")
    # timm resnet18 at 112: strides 4, 8, 16, 32 -> 28, 14, 7, 4 (ceil)
    assert model.stage_shapes == {
        "stage1": (64, 28, 28),
        "stage2": (128, 14, 14),
        "stage3": (256, 7, 7),
        "stage4": (512, 4, 4),
    }
    assert model.fc.in_features == 512 * 4 * 4


@pytest.mark.parametrize("name", ALL)
def test_wrong_input_size_is_a_clear_error(name: str) -> None:
    model = create_backbone(name, embedding_size=8, **_tiny_options(name))
    h, w = model.input_size
    for bad in (torch.zeros(2, 3, h + 16, w), torch.zeros(2, 1, h, w), torch.zeros(3, h, w)):
        with pytest.raises(ValueError, match=rf"expects input of shape N x 3 x {h} x {w}"):
            model(bad)


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_the_first_layer_and_embedding_bn_stays_fixed(name: str) -> None:
    model = create_backbone(name, embedding_size=8, **_tiny_options(name)).train()
    h, w = model.input_size
    features = model.forward_features(torch.rand(4, 3, h, w) * 2 - 1)
    (features.embedding.square().mean() + features.stages["stage4"].mean()).backward()
    first = next(p for p in model.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0
    # insightface convention: the BN1d on the embedding has gamma fixed at 1 (kept in the state_dict)
    bn = model.features if isinstance(model.features, torch.nn.BatchNorm1d) else model.features.layers[3]
    if name.startswith(("iresnet", "resnet", "timm/")):
        assert bn.weight.requires_grad is False and torch.all(bn.weight == 1)
        assert "features.weight" in model.state_dict()


def test_iresnet_fc_adapts_to_width_and_input_size() -> None:
    with torch.device("meta"):
        model = create_backbone("iresnet34", embedding_size=64, base_width=16, input_size=(112, 96))
    # widths 16 * [1, 2, 4, 8]; 112 -> 7, 96 -> 6 after four halvings
    assert model.fc.in_features == 128 * 7 * 6
    assert model.stage_shapes["stage1"] == (16, 56, 48) and model.stage_shapes["stage4"] == (128, 7, 6)


def test_dropout_option_is_applied_in_training_only() -> None:
    model = create_backbone("iresnet18", embedding_size=8, base_width=8, input_size=(32, 32), dropout=0.5)
    assert model.dropout.p == 0.5
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        model.dropout.train()  # only the dropout in training mode: BN statistics stay fixed
        assert not torch.allclose(model(x), model(x))


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("iresnet18", {"base_width": 0}, "base_width must be a positive int"),
        ("iresnet18", {"input_size": (8, 8)}, "input_size must be"),
        ("iresnet18", {"input_size": 112}, "input_size must be"),
        ("iresnet18", {"dropout": 1.5}, "dropout must be in"),
        ("mbf", {"width_mult": -1.0}, "width_mult must be a positive"),
        ("mobilefacenet", {"input_size": (112,)}, "input_size must be"),
    ],
)
def test_bad_options_are_clear_errors(name: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_backbone(name, **options)


def test_timm_model_without_features_only_falls_back_to_forward_features(monkeypatch) -> None:
    import timm

    real_create = timm.create_model

    def no_feature_extraction(name, **kwargs):
        if kwargs.get("features_only"):
            raise RuntimeError("features_only not implemented for this model")
        return real_create(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", no_feature_extraction)
    model = create_backbone("timm/resnet10t", embedding_size=8, input_size=(64, 64)).eval()
    assert not model.features_only
    # forward_features of a ResNet is its last map (stride 32): only stage4 exists
    assert model.stage_shapes == {"stage4": (512, 2, 2)}
    with torch.no_grad():
        features = model.forward_features(torch.zeros(2, 3, 64, 64))
    assert list(features.stages) == ["stage4"] and features.embedding.shape == (2, 8)
