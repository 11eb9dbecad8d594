"""The recognition heads: softmax, NormFace, SphereFace, CosFace, ArcFace and the combined margin.

Notation: x = embedding, W_j = centre of class j, theta_j = angle(x, W_j), y = target class.
Non-target logits of every normalised head are ``scale * cos theta_j``; heads differ in the scale and
in the target logit.

* ``softmax`` (DeepFace-style classification): z_j = W_j . x + b_j.
* ``normface`` (modified softmax, Liu et al. 2017 / Wang et al. 2017): ||W_j|| = 1, no bias,
  z_j = ||x|| cos theta_j (``scale=None``, the "modified softmax" of SphereFace's Fig. 2) or
  s cos theta_j (``scale=s``, NormFace with normalised features).
* ``sphereface`` (A-Softmax, Liu et al. CVPR 2017): z_y = ||x|| (lambda cos theta_y + psi(theta_y)) /
  (1 + lambda), psi(theta) = (-1)^k cos(m theta) - 2k for theta in [k pi/m, (k+1) pi/m], m = 4.
  cos(m theta) is evaluated as the Chebyshev polynomial T_m(cos theta) (as the original Caffe layer
  does), so no acos is needed and the gradient is finite everywhere. lambda anneals as
  lambda = max(lambda_min, base (1 + gamma it)^-power) (base 1000, gamma 0.12, power 1, lambda_min 5,
  the values of the released SphereFace prototxt); ``it`` is a buffer incremented on every
  training-mode forward *with labels* before lambda is read (so the first step uses it = 1, as in
  Caffe). Margin-free calls (labels=None, e.g. KD logits) do not advance it.
* ``cosface`` (LMCL, Wang et al. CVPR 2018): z_y = s (cos theta_y - m), s = 64, m = 0.35.
* ``arcface`` (Deng et al. CVPR 2019), s = 64, m = 0.5, two rules:

  - default (``straight_through=False``), the classic rule with the fix: z_y = s cos(theta_y + m)
    where cos theta_y > cos(pi - m); past theta_y + m > pi, where cos(theta + m) would rise again, it
    becomes s (cos theta_y - m sin(pi - m)); it jumps down by 1 - cos m - m sin m at the threshold,
    monotonic but not continuous. Exact gradient of that value. This is the head the EKD paper's code
    trains with (TFace ``recognition/torchkit/head/distfc/arcface.py``, ``easy_margin=False``) and
    insightface's arcface_torch ``losses.py`` until 2022-12 (``2e2e8c97`` ... ``5ef98047``).
  - ``straight_through=True``: insightface's current arcface_torch (``losses.py`` since ``657ae30e``,
    2022-12, ``CombinedMarginLoss(s, 1, m, 0)`` and ``ArcFace``): z_y = s cos(theta_y + m)
    *everywhere*, no fix past theta_y > pi - m (there the target logit rises again, up to
    s cos(pi + m) = -s cos m at theta_y = pi); the margin is applied under no_grad, so the gradient of
    every logit is that of s cos theta.

  ``easy_margin``: margin only where cos theta > 0 (cos theta elsewhere); with ``straight_through`` it
  keeps the value and takes the gradient of s cos theta.
* ``combined`` (insightface's combined margin): z_y = s (cos(m1 theta + m2) - m3); ArcFace is
  (1, 0.5, 0), CosFace (1, 0, 0.35). Past m1 theta + m2 > pi it continues monotonically like
  SphereFace: (-1)^k cos(m1 theta + m2) - 2k, k = floor((m1 theta + m2) / pi) (continuous; for m1 = 1
  this differs from ArcFace's rule only beyond theta = pi - m2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ekd.heads.base import Head, cosine_logits, register_head, safe_acos


def _positive(head: str, **values: float) -> None:
    for key, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"head {head!r}: {key} must be a positive number, got {value!r}")


def _non_negative(head: str, **values: float) -> None:
    for key, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"head {head!r}: {key} must be a non-negative number, got {value!r}")


@register_head("softmax")
class SoftmaxHead(Head):
    """Linear classifier with bias; logits W x + b (no margin, labels are ignored)."""

    normalised = False

    def __init__(self, embedding_size: int, num_classes: int) -> None:
        super().__init__(embedding_size, num_classes, bias=True)

    def reset_parameters(self) -> None:
        # nn.Linear's default initialisation (depends on D only, so shards initialise alike).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(self.embedding_size)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def compute_logits(self, embeddings, weight, labels=None, bias=None):
        return F.linear(embeddings, weight, bias)


class _NormalisedHead(Head):
    """||W_j|| = 1, no bias: logits scale * cos theta with a margin on the target (subclasses)."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float | None) -> None:
        if scale is not None:
            _positive(self.name, scale=scale)
        super().__init__(embedding_size, num_classes, bias=False)
        self.scale = None if scale is None else float(scale)

    def _scale(self, embeddings: torch.Tensor) -> torch.Tensor | float:
        # scale=None: the feature norm ||x|| (per row) multiplies the cosines.
        return embeddings.norm(dim=1, keepdim=True) if self.scale is None else self.scale

    def target(self, cos: torch.Tensor) -> torch.Tensor:
        """The margin-adjusted target value (before scaling) for target cosines ``cos`` (1-D)."""
        return cos

    def compute_logits(self, embeddings, weight, labels=None, bias=None):
        cos = cosine_logits(embeddings, weight)
        if labels is not None:
            rows = (labels >= 0).nonzero().squeeze(1)
            if rows.numel() > 0:
                cols = labels[rows].long()
                # out-of-place index_put keeps autograd through both the cosines and the margin
                cos = cos.index_put((rows, cols), self.target(cos[rows, cols]))
        return self._scale(embeddings) * cos

    def extra_repr(self) -> str:
        scale = "||x||" if self.scale is None else self.scale
        return f"{super().extra_repr()}, scale={scale}"


@register_head("normface")
class NormFaceHead(_NormalisedHead):
    """Modified softmax / NormFace: ||x|| cos theta (``scale=None``) or s cos theta; no margin."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float | None = None) -> None:
        super().__init__(embedding_size, num_classes, scale)


def chebyshev(cos: torch.Tensor, m: int) -> torch.Tensor:
    """cos(m theta) as the Chebyshev polynomial T_m(cos theta) (T_0 = 1, T_1 = c, T_k+1 = 2c T_k - T_k-1)."""
    previous, current = torch.ones_like(cos), cos
    if m == 0:
        return previous
    for _ in range(m - 1):
        previous, current = current, 2 * cos * current - previous
    return current


def sphereface_psi(cos: torch.Tensor, m: int) -> torch.Tensor:
    """psi(theta) = (-1)^k cos(m theta) - 2k, theta in [k pi/m, (k+1) pi/m], as a function of cos theta."""
    cos = cos.clamp(-1.0, 1.0)
    # k = number of thresholds cos(j pi / m), j = 1..m-1, that theta has passed
    k = torch.zeros_like(cos)
    for j in range(1, m):
        k = k + (cos <= math.cos(j * math.pi / m)).to(cos.dtype)
    sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * chebyshev(cos, m) - 2.0 * k


@register_head("sphereface")
class SphereFaceHead(_NormalisedHead):
    """A-Softmax with the annealed target (lambda cos + psi) / (1 + lambda), scale ||x||."""

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        m: int = 4,
        base: float = 1000.0,
        gamma: float = 0.12,
        power: float = 1.0,
        lambda_min: float = 5.0,
    ) -> None:
        if not (isinstance(m, int) and m >= 1):
            raise ValueError(f"head 'sphereface': m must be a positive integer, got {m!r}")
        _non_negative("sphereface", base=base, gamma=gamma, power=power, lambda_min=lambda_min)
        super().__init__(embedding_size, num_classes, scale=None)
        self.m, self.base, self.gamma, self.power, self.lambda_min = m, base, gamma, power, lambda_min
        # persisted so that a resumed run continues the annealing where it stopped
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def lambda_at(self, iteration: int) -> float:
        """lambda = max(lambda_min, base (1 + gamma it)^-power)."""
        return max(self.lambda_min, self.base * (1.0 + self.gamma * iteration) ** (-self.power))

    @property
    def current_lambda(self) -> float:
        return self.lambda_at(int(self.iteration))

    def target(self, cos: torch.Tensor) -> torch.Tensor:
        lam = self.current_lambda
        return (lam * cos + sphereface_psi(cos, self.m)) / (1.0 + lam)

    def compute_logits(self, embeddings, weight, labels=None, bias=None):
        if labels is not None and self.training:
            self.iteration += 1
        return super().compute_logits(embeddings, weight, labels, bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}, iteration={int(self.iteration)}"


@register_head("cosface")
class CosFaceHead(_NormalisedHead):
    """LMCL: target s (cos theta - m)."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.35) -> None:
        _non_negative("cosface", m=m)
        super().__init__(embedding_size, num_classes, scale=s)
        self.m = float(m)

    def target(self, cos: torch.Tensor) -> torch.Tensor:
        return cos - self.m

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}"


def arcface_target(cos: torch.Tensor, m: torch.Tensor | float) -> torch.Tensor:
    """ArcFace target cos(theta + m), continued as cos theta - m sin(pi - m) where theta + m > pi.

    ``m`` is a scalar or a per-sample tensor broadcastable to ``cos`` (MarginDistillation).
    """
    m = torch.as_tensor(m, dtype=cos.dtype, device=cos.device)
    phi = torch.cos(safe_acos(cos) + m)
    return torch.where(cos > torch.cos(math.pi - m), phi, cos - m * torch.sin(math.pi - m))


@register_head("arcface")
class ArcFaceHead(_NormalisedHead):
    """Additive angular margin s cos(theta + m): with the theta + m > pi fix by default, everywhere and
    with the gradient of s cos theta when ``straight_through`` (insightface's arcface_torch; module doc)."""

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        s: float = 64.0,
        m: float = 0.5,
        easy_margin: bool = False,
        straight_through: bool = False,
    ) -> None:
        _non_negative("arcface", m=m)
        if m >= math.pi:
            raise ValueError(f"head 'arcface': m must be below pi, got {m!r}")
        super().__init__(embedding_size, num_classes, scale=s)
        self.m, self.easy_margin, self.straight_through = float(m), bool(easy_margin), bool(straight_through)

    def target(self, cos: torch.Tensor) -> torch.Tensor:
        if self.straight_through:
            # insightface's CombinedMarginLoss: acos, + m, cos under no_grad, so autograd sees only cos
            # (and no fix past pi - m); the gradient-free acos may take +-1 exactly.
            with torch.no_grad():
                phi = torch.cos(torch.acos(cos.clamp(-1.0, 1.0)) + self.m)
                if self.easy_margin:
                    phi = torch.where(cos > 0, phi, cos)
            return cos + (phi - cos).detach()
        if self.easy_margin:
            return torch.where(cos > 0, torch.cos(safe_acos(cos) + self.m), cos)
        return arcface_target(cos, self.m)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, m={self.m}, easy_margin={self.easy_margin}, "
            f"straight_through={self.straight_through}"
        )


def monotonic_cos(angle: torch.Tensor) -> torch.Tensor:
    """cos(u) for u in [0, pi], continued past pi as (-1)^k cos(u) - 2k, k = floor(u / pi)."""
    k = torch.floor(angle / math.pi).clamp(min=0).detach()
    sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * torch.cos(angle) - 2.0 * k


@register_head("combined")
class CombinedMarginHead(_NormalisedHead):
    """Target s (cos(m1 theta + m2) - m3), continued monotonically past m1 theta + m2 = pi."""

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
    ) -> None:
        _positive("combined", m1=m1)
        _non_negative("combined", m2=m2, m3=m3)
        super().__init__(embedding_size, num_classes, scale=s)
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)

    def target(self, cos: torch.Tensor) -> torch.Tensor:
        if self.m1 == 1.0 and self.m2 == 0.0:
            return cos - self.m3  # pure CosFace: no acos, exact gradient
        return monotonic_cos(self.m1 * safe_acos(cos) + self.m2) - self.m3

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m1={self.m1}, m2={self.m2}, m3={self.m3}"
