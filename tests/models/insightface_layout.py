"""Test-side description of insightface's backbone checkpoints, written from methods.md (not from ekd code).

``*_layout`` give the expected state_dict key -> shape tables; ``random_state_dict`` fills one with
well-scaled random values; ``*_reference_forward`` recompute the embedding directly from a state
dict with torch.nn.functional, following insightface's forward passes, as an independent check of
the ekd modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{s}": (() if s == "num_batches_tracked" else (channels,)) for s in BN_SUFFIXES}


def iresnet_layout(
    depths=(2, 2, 2, 2), base: int = 64, final_hw: int = 7, embedding: int = 512
) -> dict[str, tuple[int, ...]]:
    widths = [base, 2 * base, 4 * base, 8 * base]
    table: dict[str, tuple[int, ...]] = {"conv1.weight": (base, 3, 3, 3)}
    table |= _bn("bn1", base)
    table["prelu.weight"] = (base,)
    in_c = base
    for stage, (c, depth) in enumerate(zip(widths, depths), start=1):
        for i in range(depth):
            p = f"layer{stage}.{i}"
            cin = in_c if i == 0 else c
            table |= _bn(f"{p}.bn1", cin)
            table[f"{p}.conv1.weight"] = (c, cin, 3, 3)
            table |= _bn(f"{p}.bn2", c)
            table[f"{p}.prelu.weight"] = (c,)
            table[f"{p}.conv2.weight"] = (c, c, 3, 3)
            table |= _bn(f"{p}.bn3", c)
        table[f"layer{stage}.0.downsample.0.weight"] = (c, in_c, 1, 1)
        table |= _bn(f"layer{stage}.0.downsample.1", c)
        in_c = c
    table |= _bn("bn2", in_c)
    table["fc.weight"] = (embedding, in_c * final_hw * final_hw)
    table["fc.bias"] = (embedding,)
    table |= _bn("features", embedding)
    return table


def _conv_block(p: str, cin: int, cout: int, k: int, groups: int = 1) -> dict[str, tuple[int, ...]]:
    return {
        f"{p}.layers.0.weight": (cout, cin // groups, k, k),
        **_bn(f"{p}.layers.1", cout),
        f"{p}.layers.2.weight": (cout,),
    }


def _linear_block(p: str, cin: int, cout: int, k: int, groups: int = 1) -> dict[str, tuple[int, ...]]:
    return {f"{p}.layers.0.weight": (cout, cin // groups, k, k), **_bn(f"{p}.layers.1", cout)}


def _depthwise(p: str, cin: int, cout: int, g: int) -> dict[str, tuple[int, ...]]:
    return {
        **_conv_block(f"{p}.layers.0", cin, g, 1),
        **_conv_block(f"{p}.layers.1", g, g, 3, groups=g),
        **_linear_block(f"{p}.layers.2", g, cout, 1),
    }


# insightface mbf: stem 128 (layers.1 with 64 groups), trunk 128 / 256, expansions 128, 256, 512, 256
MBF_WIDTHS = dict(
    stem=128, stem_groups=64, wide=256, e1=128, e2=256, e3=512, sep=512, blocks=(4, 6, 2), kernel=7
)


def mbf_layout(widths: dict = MBF_WIDTHS, embedding: int = 512) -> dict[str, tuple[int, ...]]:
    w = widths
    s, wide = w["stem"], w["wide"]
    table = {**_conv_block("layers.0", 3, s, 3), **_conv_block("layers.1", s, s, 3, groups=w["stem_groups"])}
    table |= _depthwise("layers.2", s, s, w["e1"])
    for i in range(w["blocks"][0]):
        table |= _depthwise(f"layers.3.layers.{i}", s, s, w["e1"])
    table |= _depthwise("layers.4", s, wide, w["e2"])
    for i in range(w["blocks"][1]):
        table |= _depthwise(f"layers.5.layers.{i}", wide, wide, w["e2"])
    table |= _depthwise("layers.6", wide, wide, w["e3"])
    for i in range(w["blocks"][2]):
        table |= _depthwise(f"layers.7.layers.{i}", wide, wide, w["e2"])
    table |= _conv_block("conv_sep", wide, w["sep"], 1)
    table |= _linear_block("features.layers.0", w["sep"], w["sep"], w["kernel"], groups=w["sep"])
    table["features.layers.2.weight"] = (embedding, w["sep"])
    table |= _bn("features.layers.3", embedding)
    return table


def random_state_dict(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values of sensible scale (weights ~ 1/sqrt(fan_in), BN near identity) for the layout."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("running_mean") or key.endswith(".bias"):
            state[key] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) >= 2:  # conv / linear weights
            fan_in = 1
            for v in shape[1:]:
                fan_in *= v
            state[key] = torch.randn(shape, generator=g) / fan_in**0.5
        elif "prelu" in key or key.endswith("layers.2.weight"):  # PReLU slopes
            state[key] = torch.rand(shape, generator=g) * 0.3
        else:  # BN gamma
            state[key] = torch.rand(shape, generator=g) + 0.5
    if "features.weight" in state:
        state["features.weight"] = torch.ones_like(state["features.weight"])  # fixed to 1 in insightface
    return state


def _bn_f(x: torch.Tensor, sd: dict, p: str) -> torch.Tensor:
    return F.batch_norm(
        x,
        sd[f"{p}.running_mean"],
        sd[f"{p}.running_var"],
        sd[f"{p}.weight"],
        sd[f"{p}.bias"],
        False,
        0.0,
        1e-5,
    )


def iresnet_reference_forward(sd: dict, x: torch.Tensor, depths=(2, 2, 2, 2)) -> torch.Tensor:
    """insightface IResNet.forward, written with functional ops on the state dict (eval mode)."""
    x = F.prelu(_bn_f(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1"), sd["prelu.weight"])
    for stage, depth in enumerate(depths, start=1):
        for i in range(depth):
            p = f"layer{stage}.{i}"
            stride = 2 if i == 0 else 1
            out = _bn_f(x, sd, f"{p}.bn1")
            out = F.conv2d(out, sd[f"{p}.conv1.weight"], padding=1)
            out = F.prelu(_bn_f(out, sd, f"{p}.bn2"), sd[f"{p}.prelu.weight"])
            out = _bn_f(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1), sd, f"{p}.bn3")
            if i == 0:
                shortcut = _bn_f(
                    F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=2), sd, f"{p}.downsample.1"
                )
            else:
                shortcut = x
            x = out + shortcut
    x = torch.flatten(_bn_f(x, sd, "bn2"), 1)
    x = F.linear(x, sd["fc.weight"], sd["fc.bias"])
    return _bn_f(x, sd, "features")


def _conv_block_f(x, sd, p, stride=1, padding=0, groups=1, act=True):
    x = _bn_f(
        F.conv2d(x, sd[f"{p}.layers.0.weight"], stride=stride, padding=padding, groups=groups),
        sd,
        f"{p}.layers.1",
    )
    return F.prelu(x, sd[f"{p}.layers.2.weight"]) if act else x


def _depthwise_f(x, sd, p, g, stride, residual):
    out = _conv_block_f(x, sd, f"{p}.layers.0")
    out = _conv_block_f(out, sd, f"{p}.layers.1", stride=stride, padding=1, groups=g)
    out = _conv_block_f(out, sd, f"{p}.layers.2", act=False)
    return x + out if residual else out


def mbf_reference_forward(sd: dict, x: torch.Tensor, widths: dict = MBF_WIDTHS) -> torch.Tensor:
    """insightface MobileFaceNet.forward on the state dict (eval mode)."""
    w = widths
    x = _conv_block_f(x, sd, "layers.0", stride=2, padding=1)
    x = _conv_block_f(x, sd, "layers.1", padding=1, groups=w["stem_groups"])
    for index, g, residual_index in ((2, w["e1"], 3), (4, w["e2"], 5), (6, w["e3"], 7)):
        x = _depthwise_f(x, sd, f"layers.{index}", g, stride=2, residual=False)
        blocks = w["blocks"][(residual_index - 3) // 2]
        g_res = w["e1"] if residual_index == 3 else w["e2"]
        for i in range(blocks):
            x = _depthwise_f(x, sd, f"layers.{residual_index}.layers.{i}", g_res, stride=1, residual=True)
    x = _conv_block_f(x, sd, "conv_sep")
    x = _conv_block_f(x, sd, "features.layers.0", groups=w["sep"], act=False)
    x = F.linear(torch.flatten(x, 1), sd["features.layers.2.weight"])
    return _bn_f(x, sd, "features.layers.3")
