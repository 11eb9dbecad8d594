"""Base class of every face backbone: input checking and the stage-output contract."""

from __future__ import annotations

import torch
from torch import nn

from ekd.models.features import Features


class FaceBackbone(nn.Module):
    """A face backbone maps N x 3 x H x W images (RGB, (x - 127.5) / 127.5) to N x D raw embeddings.

    Subclasses implement ``forward_features`` and set ``embedding_size``, ``input_size`` and
    ``stage_shapes`` (name -> (C, H, W) at the native input size).
    """

    embedding_size: int
    input_size: tuple[int, int] = (112, 112)
    stage_shapes: dict[str, tuple[int, int, int]] = {}

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != tuple(self.input_size):
            h, w = self.input_size
            raise ValueError(
                f"{type(self).__name__} expects input of shape N x 3 x {h} x {w} "
                f"(RGB normalised as (x - 127.5) / 127.5), got {tuple(x.shape)}"
            )

    def forward_features(self, x: torch.Tensor) -> Features:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).embedding
