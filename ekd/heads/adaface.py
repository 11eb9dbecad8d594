"""AdaFace: the quality-adaptive margin of Kim, Jain and Liu (CVPR 2022), as the official ``head.py``.

Source: mk-minchul/AdaFace, ``head.py`` (class ``AdaFace``); defaults from ``scripts/run_ir50_ms1mv2.sh``
and ``scripts/run_ir101_ms1mv2.sh`` (``--m 0.4 --h 0.333``, the paper's setting) and ``config.py``
(``--s 64``, ``--t_alpha 0.01``; ``head.py``'s own class default ``t_alpha=1.0`` is never used by its
training script). Notation: x = raw embedding, W_j = centre j, theta_j = angle(x, W_j), y = target.

The feature norm ||x|| is the image-quality proxy. With eps = 1e-3 (official ``self.eps``)::

    n_i      = clip(||x_i||, 0.001, 100), detached (no gradient through the margin)
    mu, sigma <- EMA of the batch mean / unbiased std of n:  mu = t_alpha mean(n) + (1 - t_alpha) mu
    ms_i     = clip(h (n_i - mu) / (sigma + eps), -1, 1)             (updated mu, sigma: current batch)
    c_ij     = clip(cos theta_ij, -1 + eps, 1 - eps)                  (every column)
    g_ang_i  = -m ms_i,    g_add_i = m + m ms_i
    target   = cos(clip(acos(c_iy) + g_ang_i, eps, pi - eps)) - g_add_i
    logits   = s c_ij off the target,  s target on it;  margin-free (labels=None): s c_ij everywhere

ms = 0 (a norm at the running mean, or h = 0) is CosFace, s (cos theta - m); ms = -1 (low norm, a
poor image) is ArcFace, s cos(theta + m); ms = +1 (high norm, a good image) is s (cos(theta - m) - 2m),
which weights hard samples more.
mu and sigma start at 20 and 100 (official) and are the buffers ``batch_mean`` / ``batch_std`` (shape
(1,), as official), saved in checkpoints and restored on resume.

When the statistics move (ekd differs from official in the first two points; documented in
docs/methods.md):

- only on a training-mode call *with* labels. Margin-free calls (``labels=None``: KD logits,
  accuracy, inference) and eval-mode calls never touch them; an eval-mode call with labels applies the
  margin with the stored statistics. The official head updates on every call, but its training script
  calls the head from ``training_step`` only, so training is unchanged.
- a batch of fewer than two samples leaves ``batch_std`` unchanged (the unbiased std is undefined;
  the official head would write NaN into it for good); an empty batch changes nothing.
- the statistics are taken over every row the head is given, also rows whose target class lives on
  another shard (label -1), so all shards of a sharded head keep identical statistics.

Distributed training. The official code (Lightning DDP) computes them per GPU over the local batch;
PyTorch DDP's default ``broadcast_buffers=True`` (which the official trainer keeps) then overwrites
every rank's buffers with rank 0's before each forward, so each rank uses rank 0's running averages
updated with its own batch, and the checkpoint holds rank 0's. ekd by default
(``sync_stats=True``) uses the statistics of the *global* batch: replicated centres all-reduce
(count, sum, sum of squares; float64) across ranks, and the sharded classifier
(``ekd.heads.sharded``) hands :meth:`compute_logits` the all-gathered batch, on which every shard
computes the same numbers. Either way every rank holds the same buffers, equal to a single process
trained on the concatenated batch, and checkpoints do not depend on the world size.
``sync_stats=False`` is the official per-rank behaviour (with replicated centres; DDP's buffer
broadcast then reproduces the official run). The sharded classifier only ever sees the global batch,
so ``sync_stats=False`` with sharded centres on several ranks is an error.

Precision: the target arithmetic (acos, margins) runs in at least float32; fp16/bf16 cosines are
upcast for it. The centres are initialised as official: uniform(-1, 1) on a D x C kernel, each
class column renormed to unit length, stored transposed (ekd's ``weight`` is C x D), so one seed gives
the official kernel.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as torch_dist

from ekd import dist
from ekd.heads.base import Head, cosine_logits, register_head

# official head.py ``self.eps``: cosine clamp, theta clip and the std denominator
EPS = 1e-3
# official head.py: ``torch.clip(norms, min=0.001, max=100)``
NORM_MIN, NORM_MAX = 0.001, 100.0
# official head.py: ``batch_mean`` starts at 20, ``batch_std`` at 100
INITIAL_MEAN, INITIAL_STD = 20.0, 100.0


def _finite(name: str, value: float, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"head 'adaface': {name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ValueError(f"head 'adaface': {name} must lie in {bounds}, got {value!r}")
    return float(value)


@register_head("adaface")
class AdaFaceHead(Head):
    """AdaFace's feature-norm adaptive margin (module docstring); ``batch_mean``/``batch_std`` buffers.

    ``m``: margin (0.4), ``h``: concentration of the norm scaler (0.333), ``s``: scale (64),
    ``t_alpha``: EMA momentum of the norm statistics (0.01; 0 freezes them), ``sync_stats``: statistics
    of the global batch under DDP (True) or of each rank's batch as the official code (False).
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        m: float = 0.4,
        h: float = 0.333,
        s: float = 64.0,
        t_alpha: float = 0.01,
        sync_stats: bool = True,
    ) -> None:
        m, h, t_alpha = (
            _finite("m", m, low=0.0),
            _finite("h", h, low=0.0),
            _finite("t_alpha", t_alpha, 0.0, 1.0),
        )
        if _finite("s", s) <= 0:
            raise ValueError(f"head 'adaface': s must be a positive number, got {s!r}")
        if not isinstance(sync_stats, bool):
            raise ValueError(f"head 'adaface': sync_stats must be true or false, got {sync_stats!r}")
        super().__init__(embedding_size, num_classes, bias=False)
        self.m, self.h, self.s, self.t_alpha, self.sync_stats = m, h, float(s), t_alpha, sync_stats
        self.register_buffer("batch_mean", torch.full((1,), INITIAL_MEAN))
        self.register_buffer("batch_std", torch.full((1,), INITIAL_STD))
        # set by forward(): the replicated path, whose batch is this rank's only (see compute_logits)
        self._local_batch = False

    # ----------------------------------------------------------------------------- state
    def reset_parameters(self) -> None:
        """Official init (``kernel.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)`` on D x C, i.e. unit
        columns), transposed into ``weight``; the statistics go back to (20, 100)."""
        with torch.no_grad():
            kernel = torch.empty(
                self.embedding_size, self.weight.shape[0], dtype=self.weight.dtype, device=self.weight.device
            )
            kernel.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
            self.weight.copy_(kernel.t())
        self.reset_statistics()

    def reset_statistics(self) -> None:
        """``batch_mean`` = 20, ``batch_std`` = 100 (the official initial values)."""
        if hasattr(self, "batch_mean"):
            with torch.no_grad():
                self.batch_mean.fill_(INITIAL_MEAN)
                self.batch_std.fill_(INITIAL_STD)

    # ----------------------------------------------------------------------------- statistics
    def safe_norms(self, embeddings: torch.Tensor) -> torch.Tensor:
        """clip(||x||, 0.001, 100), detached, in at least float32 (N)."""
        x = embeddings.detach()
        dtype = torch.promote_types(x.dtype, torch.float32)
        return torch.linalg.vector_norm(x, dim=1, dtype=dtype).clip(NORM_MIN, NORM_MAX)

    @torch.no_grad()
    def _update_statistics(self, norms: torch.Tensor, across_ranks: bool) -> None:
        """EMA of the batch mean / unbiased std of ``norms`` (official order and formula)."""
        norms = norms.to(self.batch_mean.dtype)
        if across_ranks and dist.is_distributed():
            x = norms.double()
            sums = torch.stack([x.new_tensor(float(x.numel())), x.sum(), (x * x).sum()])
            torch_dist.all_reduce(sums, op=torch_dist.ReduceOp.SUM)
            count, total, squares = sums.unbind()
            if count < 1:
                return
            mean = total / count
            std = ((squares - total * mean) / (count - 1)).clamp(min=0).sqrt() if count >= 2 else None
            mean = mean.to(norms.dtype)
            std = None if std is None else std.to(norms.dtype)
        else:
            if norms.numel() < 1:
                return
            mean = norms.mean()
            std = norms.std() if norms.numel() >= 2 else None
        alpha = self.t_alpha
        self.batch_mean.copy_(mean * alpha + (1 - alpha) * self.batch_mean)
        if std is not None:
            self.batch_std.copy_(std * alpha + (1 - alpha) * self.batch_std)

    def margin_scaler(self, norms: torch.Tensor) -> torch.Tensor:
        """clip(h (n - mu) / (sigma + eps), -1, 1) with the current buffers (N, no gradient)."""
        norms = norms.to(self.batch_mean.dtype)
        scaler = (norms - self.batch_mean) / (self.batch_std + EPS) * self.h
        return scaler.clip(-1, 1).detach()

    # ----------------------------------------------------------------------------- logits
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # the replicated entry point: the batch is this rank's, so sync_stats all-reduces the statistics
        self._local_batch = True
        try:
            return super().forward(embeddings, labels)
        finally:
            self._local_batch = False

    def compute_logits(self, embeddings, weight, labels=None, bias=None):
        """Logits of ``embeddings`` (N x D, raw) against ``weight``; see the module docstring.

        Called directly (the sharded classifier), the statistics are those of the rows given here,
        which the sharded classifier makes the all-gathered global batch.
        """
        cos = cosine_logits(embeddings, weight).clamp(-1 + EPS, 1 - EPS)
        if labels is None:
            return self.s * cos
        norms = self.safe_norms(embeddings)
        if self.training:
            if not self._local_batch and not self.sync_stats and dist.is_distributed():
                raise ValueError(
                    "head 'adaface': sync_stats=False (per-rank feature-norm statistics, as the official "
                    "code) needs replicated class centres; the sharded classifier computes the head on the "
                    "all-gathered batch, so its statistics are always those of the global batch: use "
                    "sync_stats=True with sharded centres"
                )
            self._update_statistics(norms, across_ranks=self._local_batch and self.sync_stats)
        rows = (labels >= 0).nonzero().squeeze(1)
        if rows.numel() == 0:
            return self.s * cos
        cols = labels[rows].long()
        target = cos[rows, cols]
        work = torch.promote_types(target.dtype, torch.float32)
        scaler = self.margin_scaler(norms[rows]).to(work)
        g_angular = -self.m * scaler
        g_additive = self.m + self.m * scaler
        theta = torch.acos(target.to(work))
        theta_m = torch.clip(theta + g_angular, min=EPS, max=math.pi - EPS)
        target = (torch.cos(theta_m) - g_additive).to(cos.dtype)
        # out-of-place index_put keeps autograd through both the cosines and the margin
        return self.s * cos.index_put((rows, cols), target)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, m={self.m}, h={self.h}, s={self.s}, t_alpha={self.t_alpha}, "
            f"sync_stats={self.sync_stats}, batch_mean={float(self.batch_mean):.4g}, "
            f"batch_std={float(self.batch_std):.4g}"
        )
