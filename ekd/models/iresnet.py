"""insightface arcface_torch "improved ResNet" (IResNet) backbones: iresnet18/34/50/100/200.

Architecture and state_dict keys are identical to insightface's
``recognition/arcface_torch/backbones/iresnet.py``, so its ``backbone.pth`` files load with
``strict=True`` and give the same embeddings:

- stem: ``conv1`` 3x3 s1 (3 -> 64, no bias), ``bn1``, ``prelu`` (one slope per channel);
- ``layer1..layer4``: IBasicBlocks ``bn1 -> conv1 3x3 -> bn2 -> prelu -> conv2 3x3 (stride) -> bn3``
  plus the shortcut, no activation after the add; block 0 of each stage has stride 2 and a
  ``downsample`` = (1x1 conv with the stride, BN);
- head: ``bn2`` (BN2d) -> flatten -> dropout -> ``fc`` (Linear, bias) -> ``features`` (BN1d whose weight is
  fixed at 1.0 and not trained, but kept in the state_dict).

Depths r18 [2,2,2,2], r34 [3,4,6,3], r50 [3,4,14,3], r100 [3,13,30,3], r200 [6,26,60,6]; all BN eps 1e-5.

Stages (``forward_features``) are the outputs of ``layer1..layer4``; at the defaults
(``base_width=64``, 112x112) they are 64x56x56, 128x28x28, 256x14x14, 512x7x7. ``base_width`` (stage
widths ``base_width * [1, 2, 4, 8]``) and ``input_size`` exist for tiny test/demo models; the ``fc``
input then is ``C4 * H4 * W4`` with ``H4 = ceil(H / 16)`` (four stride-2 convolutions with padding 1).
"""

from __future__ import annotations

import torch
from torch import nn

from ekd.models.base import FaceBackbone
from ekd.models.features import Features
from ekd.models.registry import register_backbone
from ekd.models.utils import check_input_size, check_positive, halve

IRESNET_DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}

BN_EPS = 1e-5


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block of IResNet (BN first, PReLU in the middle, none after the add)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.conv1 = _conv3x3(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.prelu = nn.PReLU(channels)
        # the stride sits on the second conv, as in insightface (not on the first as in torchvision)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(channels, eps=BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(FaceBackbone):
    """insightface IResNet; see the module docstring for layout and stage shapes."""

    stage_shapes = {
        "stage1": (64, 56, 56),
        "stage2": (128, 28, 28),
        "stage3": (256, 14, 14),
        "stage4": (512, 7, 7),
    }

    def __init__(
        self,
        depths: tuple[int, int, int, int],
        embedding_size: int = 512,
        base_width: int = 64,
        input_size: tuple[int, int] = (112, 112),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or any(int(d) < 1 for d in depths):
            raise ValueError(f"IResNet depths must be four positive ints, got {depths!r}")
        check_positive(base_width, "base_width", "IResNet")
        input_size = check_input_size(input_size, minimum=16, owner="IResNet")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"IResNet dropout must be in [0, 1), got {dropout!r}")

        self.embedding_size = embedding_size
        self.input_size = input_size
        widths = [base_width * m for m in (1, 2, 4, 8)]
        self.conv1 = nn.Conv2d(3, base_width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width, eps=BN_EPS)
        self.prelu = nn.PReLU(base_width)
        in_channels = base_width
        for index, (width, depth) in enumerate(zip(widths, depths), start=1):
            blocks = [IBasicBlock(in_channels, width, stride=2)]
            blocks += [IBasicBlock(width, width) for _ in range(depth - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
            in_channels = width

        height, width_px = input_size
        self.stage_shapes = {
            f"stage{i}": (widths[i - 1], halve(height, i), halve(width_px, i)) for i in range(1, 5)
        }
        c4, h4, w4 = self.stage_shapes["stage4"]
        self.bn2 = nn.BatchNorm2d(c4, eps=BN_EPS)
        self.dropout = nn.Dropout(p=float(dropout))
        self.fc = nn.Linear(c4 * h4 * w4, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=BN_EPS)
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        # insightface's initialisation, so a model trained here starts like one trained there
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # the embedding BN only centres and scales by its statistics and bias: gamma stays 1
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False

    def forward_features(self, x: torch.Tensor) -> Features:
        self.check_input(x)
        x = self.prelu(self.bn1(self.conv1(x)))
        stage1 = self.layer1(x)
        stage2 = self.layer2(stage1)
        stage3 = self.layer3(stage2)
        stage4 = self.layer4(stage3)
        x = torch.flatten(self.bn2(stage4), 1)
        embedding = self.features(self.fc(self.dropout(x)))
        return Features(
            embedding=embedding,
            stages={"stage1": stage1, "stage2": stage2, "stage3": stage3, "stage4": stage4},
        )


def _make_factory(name: str):
    depths = IRESNET_DEPTHS[name]

    def factory(
        embedding_size: int = 512,
        base_width: int = 64,
        input_size: tuple[int, int] = (112, 112),
        dropout: float = 0.0,
    ) -> IResNet:
        return IResNet(depths, embedding_size, base_width=base_width, input_size=input_size, dropout=dropout)

    factory.__name__ = name
    factory.__doc__ = f"insightface {name} (depths {list(depths)}); see ekd.models.iresnet."
    return register_backbone(name)(factory)


iresnet18 = _make_factory("iresnet18")
iresnet34 = _make_factory("iresnet34")
iresnet50 = _make_factory("iresnet50")
iresnet100 = _make_factory("iresnet100")
iresnet200 = _make_factory("iresnet200")


@register_backbone("resnet18")
def resnet18(
    embedding_size: int = 512,
    base_width: int = 64,
    input_size: tuple[int, int] = (112, 112),
    dropout: float = 0.0,
) -> IResNet:
    """The ResNet18 student of the face-KD literature, which is insightface's iresnet18.

    Face-recognition papers (EKD included) train their "ResNet18" students in the insightface
    codebase, i.e. the IResNet of ArcFace: 3x3 stride-1 stem (no 7x7 conv / max-pool, which would
    leave a 4x4 map at 112x112), BN-conv-BN-PReLU-conv-BN blocks and the BN-dropout-FC-BN embedding
    head. A torchvision ResNet18 with a new head is available as ``timm/resnet18``.
    """
    return IResNet(
        IRESNET_DEPTHS["iresnet18"],
        embedding_size,
        base_width=base_width,
        input_size=input_size,
        dropout=dropout,
    )
