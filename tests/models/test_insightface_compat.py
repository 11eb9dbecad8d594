"""insightface checkpoint compatibility: key/shape tables from methods.md, strict loading, same embeddings."""

from __future__ import annotations

import torch

from ekd.models import create_backbone, load_backbone
from tests.models.insightface_layout import (
    MBF_WIDTHS,
    iresnet_layout,
    iresnet_reference_forward,
    mbf_layout,
    mbf_reference_forward,
    random_state_dict,
)

# mbf at width_mult 0.25 / 32x32: every width / 4, groups keep 2 channels each, GDC kernel 2x2
TINY_MBF = dict(stem=32, stem_groups=16, wide=64, e1=32, e2=64, e3=128, sep=128, blocks=(4, 6, 2), kernel=2)


def _model_table(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_iresnet18_and_resnet18_state_dict_layout_matches_insightface() -> None:
    expected = iresnet_layout(depths=(2, 2, 2, 2))
    with torch.device("meta"):
        for name in ("iresnet18", "resnet18"):
            assert _model_table(create_backbone(name)) == expected


def test_iresnet50_and_100_key_counts_follow_the_depths() -> None:
    with torch.device("meta"):
        for name, depths in (("iresnet50", (3, 4, 14, 3)), ("iresnet100", (3, 13, 30, 3))):
            assert _model_table(create_backbone(name)) == iresnet_layout(depths=depths)


def test_mbf_state_dict_layout_matches_insightface() -> None:
    with torch.device("meta"):
        assert _model_table(create_backbone("mbf")) == mbf_layout()


def test_mobilefacenet_is_insightface_mobilefacenet_at_scale_1() -> None:
    # Chen et al.'s table: trunk 64 / 128, expansions 128, 256, 512, 256, depthwise stem (64 groups)
    chen = dict(
        stem=64, stem_groups=64, wide=128, e1=128, e2=256, e3=512, sep=512, blocks=(4, 6, 2), kernel=7
    )
    with torch.device("meta"):
        assert _model_table(create_backbone("mobilefacenet", embedding_size=128)) == mbf_layout(
            chen, embedding=128
        )


def test_iresnet18_insightface_file_loads_strictly_and_gives_insightface_embeddings(tmp_path) -> None:
    layout = iresnet_layout(base=8, final_hw=2, embedding=16)
    state = random_state_dict(layout)
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    model = load_backbone("iresnet18", path, embedding_size=16, base_width=8, input_size=(32, 32)).double()
    assert not model.training
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64) * 2 - 1
    reference = iresnet_reference_forward({k: v.double() for k, v in state.items()}, x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference, rtol=1e-10, atol=1e-10)
    assert torch.equal(model.state_dict()["layer2.0.conv1.weight"], state["layer2.0.conv1.weight"].double())


def test_full_size_iresnet18_loads_strictly(tmp_path) -> None:
    state = random_state_dict(iresnet_layout())
    torch.save(state, tmp_path / "backbone.pth")
    model = load_backbone("iresnet18", tmp_path / "backbone.pth")
    assert torch.equal(model.fc.weight, state["fc.weight"])
    assert model.features.weight.requires_grad is False


def test_mbf_insightface_file_loads_strictly_and_gives_insightface_embeddings(tmp_path) -> None:
    state = random_state_dict(mbf_layout(TINY_MBF, embedding=24), seed=1)
    torch.save(state, tmp_path / "model.pt")
    model = load_backbone(
        "mbf", tmp_path / "model.pt", embedding_size=24, width_mult=0.25, input_size=(32, 32)
    )
    model = model.double()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64) * 2 - 1
    reference = mbf_reference_forward({k: v.double() for k, v in state.items()}, x, TINY_MBF)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference, rtol=1e-10, atol=1e-10)


def test_full_size_mbf_loads_strictly(tmp_path) -> None:
    state = random_state_dict(mbf_layout(MBF_WIDTHS))
    torch.save(state, tmp_path / "model.pt")
    model = load_backbone("mbf", tmp_path / "model.pt")
    assert torch.equal(model.features.layers[2].weight, state["features.layers.2.weight"])
