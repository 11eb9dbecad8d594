"""MobileFaceNet backbones: insightface's ``mbf`` and the original MobileFaceNet (``mobilefacenet``).

Both are one architecture, insightface's ``recognition/arcface_torch/backbones/mobilefacenet.py``, whose
state_dict keys this module reproduces exactly (insightface checkpoints load with ``strict=True``):

- ``ConvBlock`` = ``layers.{0: conv (no bias), 1: BN2d, 2: PReLU}``;
  ``LinearBlock`` = ``layers.{0: conv, 1: BN2d}``;
- ``DepthWise(in, out, g)`` (a MobileNetV2 inverted residual with expansion width ``g``) =
  ``layers.0`` ConvBlock 1x1 in->g, ``layers.1`` ConvBlock 3x3 depthwise g (carries the stride),
  ``layers.2`` LinearBlock 1x1 g->out,
  with the identity added only inside a ``Residual`` stack (``layers.i`` = DepthWise, stride 1);
- ``conv_sep`` = ConvBlock 1x1 -> 512, ``features`` = GDC head: ``layers.0`` LinearBlock 7x7 depthwise,
  ``layers.1`` flatten, ``layers.2`` Linear 512 -> D (no bias), ``layers.3`` BN1d.

The widths of the trunk are ``64 * scale`` / ``128 * scale`` while the expansion widths ``g`` stay fixed,
so ``scale`` 1 is exactly the network of Chen et al. 2018 and ``scale`` 2 is insightface's ``mbf``.

``mobilefacenet`` (scale 1; Chen et al., "MobileFaceNets", CCBR 2018, Table 1; the EKD paper's student).
t = expansion factor, c = output channels, n = repeats, s = stride of the first repeat::

    input        operator                     t   c    n  s   here
    112x112x3    conv3x3                      -   64   1  2   layers.0   ConvBlock 3->64
    56x56x64     depthwise conv3x3            -   64   1  1   layers.1   ConvBlock 64->64, groups 64
    56x56x64     bottleneck                   2   64   5  2   layers.2   DepthWise 64->64 g128 s2
                                                              layers.3   Residual x4, g128
    28x28x64     bottleneck                   4   128  1  2   layers.4   DepthWise 64->128 g256 s2
    14x14x128    bottleneck                   2   128  6  1   layers.5   Residual x6, g256
    14x14x128    bottleneck                   4   128  1  2   layers.6   DepthWise 128->128 g512 s2
    7x7x128      bottleneck                   2   128  2  1   layers.7   Residual x2, g256
    7x7x128      conv1x1                      -   512  1  1   conv_sep   ConvBlock 128->512
    7x7x512      linear GDConv7x7             -   512  1  1   features.layers.0
    1x1x512      linear conv1x1               -   128  1  1   features.layers.2 Linear 512->D + layers.3 BN1d

The paper reports 0.99M parameters and 221M MAdds with a 128-d output; with the 512-d embedding used
here the last linear layer adds 512 x 384 weights (about 1.2M parameters, 0.23 GMACs).

``mbf`` (scale 2): trunk widths 128 / 128 / 256, ``layers.1`` a grouped (64 groups of 2 channels) 3x3
conv; 2.06M parameters, 0.44 GMACs with a 512-d embedding.

Stages (``forward_features``): ``stage1`` = output of ``layers.1`` (56x56), ``stage2`` = ``layers.3``
(28x28), ``stage3`` = ``layers.5`` (14x14), ``stage4`` = ``conv_sep`` (512x7x7, the same shape as
iresnet's stage 4 so FitNet needs no regressor there). mobilefacenet: 64x56x56, 64x28x28, 128x14x14,
512x7x7; mbf: 128x56x56, 128x28x28, 256x14x14, 512x7x7.

``width_mult`` scales every width (trunk, expansions, ``conv_sep``; rounded to multiples of 8) for tiny
test/demo models; ``input_size`` changes the GDC kernel to the final map size (H/16, W/16 rounded up).
"""

from __future__ import annotations

import torch
from torch import nn

from ekd.models.base import FaceBackbone
from ekd.models.features import Features
from ekd.models.registry import register_backbone
from ekd.models.utils import check_input_size, check_positive, halve


class ConvBlock(nn.Module):
    """conv (no bias) -> BN -> PReLU, keys ``layers.{0,1,2}``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | tuple[int, int] = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    """conv (no bias) -> BN without activation, keys ``layers.{0,1}``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | tuple[int, int] = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted residual: 1x1 expand to ``groups`` channels, 3x3 depthwise (stride), linear 1x1 projection."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, stride: int, residual: bool) -> None:
        super().__init__()
        if residual and (stride != 1 or in_channels != out_channels):
            raise ValueError("a residual DepthWise block needs stride 1 and equal in/out channels")
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_channels, groups, kernel=1),
            ConvBlock(groups, groups, kernel=3, stride=stride, padding=1, groups=groups),
            LinearBlock(groups, out_channels, kernel=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """``num_blocks`` stride-1 residual DepthWise blocks, keys ``layers.i``."""

    def __init__(self, channels: int, num_blocks: int, groups: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *(DepthWise(channels, channels, groups, stride=1, residual=True) for _ in range(num_blocks))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise convolution head: linear depthwise conv over the whole map, Linear, BN1d."""

    def __init__(self, channels: int, kernel: tuple[int, int], embedding_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(channels, channels, kernel=kernel, groups=channels),
            nn.Flatten(),
            nn.Linear(channels, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _scaled(channels: int, width_mult: float) -> int:
    # nearest multiple of 8 (at least 8): keeps group counts integral and BLAS-friendly widths
    return max(8, int(round(channels * width_mult / 8)) * 8)


class MobileFaceNet(FaceBackbone):
    """insightface MobileFaceNet; ``scale`` 1 = Chen et al. 2018, ``scale`` 2 = ``mbf`` (module docstring)."""

    stage_shapes = {
        "stage1": (128, 56, 56),
        "stage2": (128, 28, 28),
        "stage3": (256, 14, 14),
        "stage4": (512, 7, 7),
    }

    def __init__(
        self,
        scale: int = 2,
        embedding_size: int = 512,
        blocks: tuple[int, int, int] = (4, 6, 2),
        width_mult: float = 1.0,
        input_size: tuple[int, int] = (112, 112),
    ) -> None:
        super().__init__()
        check_positive(scale, "scale", "MobileFaceNet")
        check_positive(width_mult, "width_mult", "MobileFaceNet", kind=float)
        if len(blocks) != 3 or any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in blocks):
            raise ValueError(f"MobileFaceNet: blocks must be three ints >= 0, got {blocks!r}")
        input_size = check_input_size(input_size, minimum=16, owner="MobileFaceNet")
        self.embedding_size = embedding_size
        self.input_size = input_size

        def w(channels: int) -> int:
            return _scaled(channels, width_mult)

        stem, wide = w(64 * scale), w(128 * scale)
        # insightface: groups=64 whatever the scale, i.e. ``scale`` channels per group
        stem_groups = max(1, stem // scale)
        if stem % stem_groups:
            raise ValueError(f"MobileFaceNet: stem width {stem} is not divisible by its {stem_groups} groups")
        separable = w(512)
        self.layers = nn.ModuleList(
            [
                ConvBlock(3, stem, kernel=3, stride=2, padding=1),
                ConvBlock(stem, stem, kernel=3, stride=1, padding=1, groups=stem_groups),
                DepthWise(stem, stem, w(128), stride=2, residual=False),
                Residual(stem, blocks[0], w(128)),
                DepthWise(stem, wide, w(256), stride=2, residual=False),
                Residual(wide, blocks[1], w(256)),
                DepthWise(wide, wide, w(512), stride=2, residual=False),
                Residual(wide, blocks[2], w(256)),
            ]
        )
        self.conv_sep = ConvBlock(wide, separable, kernel=1)
        height, width = input_size
        final = (halve(height, 4), halve(width, 4))
        self.features = GDC(separable, final, embedding_size)
        self.stage_shapes = {
            "stage1": (stem, halve(height, 1), halve(width, 1)),
            "stage2": (stem, halve(height, 2), halve(width, 2)),
            "stage3": (wide, halve(height, 3), halve(width, 3)),
            "stage4": (separable, *final),
        }
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        # insightface's initialisation
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> Features:
        self.check_input(x)
        stages: dict[str, torch.Tensor] = {}
        # cut points: after the stem (layers.1) and after each residual stack at 28x28 and 14x14
        cut_points = {1: "stage1", 3: "stage2", 5: "stage3"}
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index in cut_points:
                stages[cut_points[index]] = x
        stage4 = self.conv_sep(x)
        stages["stage4"] = stage4
        return Features(embedding=self.features(stage4), stages=stages)


@register_backbone("mbf")
def mbf(
    embedding_size: int = 512, width_mult: float = 1.0, input_size: tuple[int, int] = (112, 112)
) -> MobileFaceNet:
    """insightface's ``mbf`` (MobileFaceNet, scale 2, blocks (1, 4, 6, 2)): 2.06M params, 0.44 GMACs."""
    return MobileFaceNet(scale=2, embedding_size=embedding_size, width_mult=width_mult, input_size=input_size)


@register_backbone("mobilefacenet")
def mobilefacenet(
    embedding_size: int = 512, width_mult: float = 1.0, input_size: tuple[int, int] = (112, 112)
) -> MobileFaceNet:
    """MobileFaceNet of Chen et al. 2018 (the EKD paper's student), layer table in the module docstring."""
    return MobileFaceNet(scale=1, embedding_size=embedding_size, width_mult=width_mult, input_size=input_size)
