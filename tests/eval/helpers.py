"""Tiny models and data shared by the evaluation tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ekd.models.base import FaceBackbone
from ekd.models.features import Features


class TinyConvNet(FaceBackbone):
    """conv-BN-PReLU-pool-linear: a real (BN, non-linear) backbone at a few hundred parameters."""

    def __init__(self, embedding_size: int = 8, size: int = 16) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.input_size = (size, size)
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.PReLU(6)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(24, embedding_size)

    def forward_features(self, x: torch.Tensor) -> Features:
        stage = self.act(self.bn(self.conv(x)))
        return Features(embedding=self.fc(torch.flatten(self.pool(stage), 1)), stages={"stage1": stage})


class LinearNet(nn.Module):
    """f(x) = W vec(x): a model whose output is known in closed form."""

    def __init__(self, weight: np.ndarray) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(x, 1))


class ColourNet(nn.Module):
    """f(x) = W mean_hw(x) + b: depends only on the mean colour of the (aligned) image."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.linear = nn.Linear(3, weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(weight))
            self.linear.bias.copy_(torch.from_numpy(bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3)))


def random_pair_images(n_pairs: int, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images 2N x 3 x size x size where 'same' pairs are noisy copies; and the labels."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2 * n_pairs, 3, size, size), generator=gen, dtype=torch.int64)
    issame = torch.rand(n_pairs, generator=gen) < 0.5
    noise = torch.randint(-20, 21, (n_pairs, 3, size, size), generator=gen)
    second = images[1::2].clone()
    second[issame] = (images[0::2][issame] + noise[issame]).clamp(0, 255)
    images[1::2] = second
    return images.to(torch.uint8), issame


class SideNet(nn.Module):
    """f(x) = W_l mean(left half of x) + W_r mean(right half of x) + b: sees a mirror as another image."""

    def __init__(self, left: np.ndarray, right: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.left = nn.Linear(3, left.shape[0], bias=False)
        self.right = nn.Linear(3, right.shape[0])
        with torch.no_grad():
            self.left.weight.copy_(torch.from_numpy(left))
            self.right.weight.copy_(torch.from_numpy(right))
            self.right.bias.copy_(torch.from_numpy(bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[3] // 2
        return self.left(x[..., :half].mean(dim=(2, 3))) + self.right(x[..., half:].mean(dim=(2, 3)))


class AutocastProbe(nn.Module):
    """A linear map that records, per call, the autocast dtype it ran under (None: no autocast)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.seen: list[torch.dtype | None] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        enabled = torch.is_autocast_enabled(device)
        self.seen.append(torch.get_autocast_dtype(device) if enabled else None)
        return self.linear(x.mean(dim=(2, 3))).float()
