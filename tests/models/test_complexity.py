"""Parameter and MAC counts: insightface's published figures and a hand count of the convention."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ekd.models import count_macs, count_parameters, create_backbone

# insightface arcface_torch figures (params in M, GMACs at 112 x 112)
INSIGHTFACE = {
    "iresnet18": (24.03, 2.61),
    "iresnet34": (34.14, 4.46),
    "iresnet50": (43.59, 6.31),
    "iresnet100": (65.16, 12.09),
    "mbf": (2.06, 0.44),
}


@pytest.fixture(scope="session")
def figures() -> dict[str, tuple[float, float]]:
    """Measured (params M, GMACs) per backbone, computed once on the meta device (no arithmetic)."""
    measured = {}
    for name in (*INSIGHTFACE, "mobilefacenet", "resnet18"):
        with torch.device("meta"):
            model = create_backbone(name)
        measured[name] = (count_parameters(model) / 1e6, count_macs(model) / 1e9)
    return measured


@pytest.mark.parametrize("name", list(INSIGHTFACE))
def test_matches_insightface_figures_within_2_percent(figures, name: str) -> None:
    params, gmacs = figures[name]
    expected_params, expected_gmacs = INSIGHTFACE[name]
    assert params == pytest.approx(expected_params, rel=0.02)
    assert gmacs == pytest.approx(expected_gmacs, rel=0.02)


def test_resnet18_is_iresnet18(figures) -> None:
    assert figures["resnet18"] == figures["iresnet18"]


def test_mobilefacenet_matches_chen_et_al() -> None:
    # paper (128-d output): 0.99M parameters, 221M MAdds
    with torch.device("meta"):
        model = create_backbone("mobilefacenet", embedding_size=128)
    assert count_parameters(model) / 1e6 == pytest.approx(0.99, rel=0.02)
    assert count_macs(model) / 1e6 == pytest.approx(221, rel=0.02)


def test_mobilefacenet_512d_adds_exactly_the_wider_last_linear(figures) -> None:
    with torch.device("meta"):
        small = count_parameters(create_backbone("mobilefacenet", embedding_size=128))
    # Linear 512 -> D (no bias) plus the BN1d's gamma and beta
    assert figures["mobilefacenet"][0] * 1e6 - small == pytest.approx(512 * 384 + 2 * 384, abs=1)


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.PReLU(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.grouped = nn.Conv2d(8, 4, 1, groups=2, bias=False)
        self.fc = nn.Linear(4 * 5 * 5, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv(x)))
        x = self.grouped(self.dw(x)) + 1.0
        return self.fc(torch.flatten(x, 1))


def test_mac_convention_on_a_hand_counted_net() -> None:
    model = _Toy()
    # 10x10 input -> 5x5 after the stride-2 conv
    conv = 8 * 3 * 3 * 3 * 5 * 5  # C_out * C_in * k * k * positions
    depthwise = 8 * 1 * 3 * 3 * 5 * 5  # C_in / groups = 1
    grouped = 4 * (8 // 2) * 1 * 1 * 5 * 5
    linear = 4 * 5 * 5 * 6
    # BatchNorm, PReLU and the addition are not counted
    assert count_macs(model, input_size=(10, 10)) == conv + depthwise + grouped + linear
    assert count_parameters(model) == 8 * 27 + 16 + 8 + 8 * 9 + 4 * 4 + 100 * 6 + 6


def test_count_macs_restores_training_mode_and_matches_meta_count() -> None:
    model = create_backbone("mbf", width_mult=0.25, input_size=(32, 32)).train()
    real = count_macs(model)
    assert model.training
    with torch.device("meta"):
        meta = create_backbone("mbf", width_mult=0.25, input_size=(32, 32))
    assert count_macs(meta) == real > 0


def test_trainable_only_skips_the_fixed_embedding_gamma() -> None:
    with torch.device("meta"):
        model = create_backbone("iresnet18")
    assert count_parameters(model) - count_parameters(model, trainable_only=True) == 512
