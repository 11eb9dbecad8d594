"""Model size and cost: parameter count and multiply-accumulates (MACs) per image.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass of a single
image (MACs = FLOPs / 2). What is counted: convolutions (grouped and depthwise ones by their real
cost, ``C_out * C_in/groups * k_h * k_w`` per output position) and matrix products (Linear layers).
BatchNorm, PReLU, residual additions, pooling and dropout are not counted. This is the convention of
the insightface figures (iresnet50 6.31 GMACs, mbf 0.44 GMACs at 112x112) and of the papers that
quote them; the element-wise layers would add well under 1% for these networks.

A model whose parameters live on the ``meta`` device is measured on a meta input: no arithmetic is
done, so even iresnet200 costs only the graph walk (``ekd-info`` builds its models that way).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all of them, as insightface reports; ``trainable_only`` skips frozen ones)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def count_macs(model: nn.Module, input_size: tuple[int, int] | None = None) -> int:
    """MACs of one forward pass on one 3 x H x W image (see the module docstring for what is counted).

    ``input_size`` defaults to the model's own ``input_size`` attribute, else 112 x 112. The model is
    run in eval mode (restored afterwards) without gradients.
    """
    if input_size is None:
        input_size = tuple(getattr(model, "input_size", (112, 112)))
    height, width = (int(v) for v in input_size)
    x = torch.zeros(1, 3, height, width, device=_model_device(model))
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
