"""RKD: relational knowledge distillation, distance + angle terms (Park et al., CVPR 2019).

Distance term, per model: psi_D(i, j) = ||x_i - x_j|| / mu, mu = mean of the non-zero pairwise
distances of that model's batch (so the term is scale-invariant), taken over all pairs i != j: a
duplicate sample (distance 0 off the diagonal) is counted in that mean as in the authors' code,
where such a pair has distance sqrt(eps) > 0 and passes their "> 0" test;
    L_D = mean over all B x B pairs (i, j) of SmoothL1(psi_D^s(i, j) - psi_D^t(i, j)).
Angle term: psi_A(i, j, k) = <e_ji, e_ki>, e_ji = (x_j - x_i) / ||x_j - x_i|| the unit vector from the
vertex x_i (a zero vector when x_j = x_i);
    L_A = mean over all B x B x B triples of SmoothL1(psi_A^s - psi_A^t).
L_RKD = 25 L_D + 50 L_A (``distance_weight``, ``angle_weight``); SmoothL1 with beta = 1. The means
include the degenerate entries (i = j, vertex = endpoint), which are 0 for both models, exactly as in
the authors' code. Invariant to translation, rotation and scaling of either model's embeddings; zero
when the student equals the teacher. Raw (unnormalised) embeddings; recommended weight 1 (the two
weights above are the method's). Relational: computed on the global batch.

Angle term without the B x B x D differences. The authors' code (RepDistiller / TFace ``RKDLoss``)
builds the B x B x D unit differences and a B x B x B batched product of them: O(B^3 D) work and
O(B^2 D) memory (0.5 GiB per tensor at B = D = 512). Every angle is a function of three squared
distances only (law of cosines):
    <x_j - x_i, x_k - x_i> = (d_ij + d_ik - d_jk) / 2,   d_ij = ||x_i - x_j||^2,
    psi_A(i, j, k) = (d_ij + d_ik - d_jk) v_ij v_ik,     v_ij = 1 / sqrt(2 d_ij)  (0 when x_i = x_j),
so the B^3 part is a few scalar operations per triple on B x B matrices, with no D factor. The vertices
are processed ``angle_chunk`` at a time (c x B x B temporaries, also capped at 2^21 elements so a chunk
stays in cache); the loss and its gradient with respect to the d matrix are computed in the same pass
(analytic backward: with W = SmoothL1'(psi_A^s - psi_A^t) / N and M_ijk = W_ijk v_ij v_ik,
dL/dd_ij = 2 sum_k M_ijk - 2 v_ij^2 sum_k M_ijk (d_ij + d_ik - d_jk) - sum_l M_lij), and
dL/dx_i = 2 sum_j (S_ij (x_i - x_j)), S = dL/dd + (dL/dd)^T, is one B x B x D matrix product. Only
B x B matrices and the B x D gradient are kept for the backward pass, so the memory is O(B^2): about
0.3 GiB at B = 2048. For B >= 256 (``angle_kernel="auto"``) the per-chunk arithmetic runs as one
kernel fused by ``torch.compile`` (about 5x faster than the eager chunk loop on a CPU; compiled once
per process and dtype, a few seconds with PyTorch's on-disk cache, ~20 s without); when compilation is
unavailable or fails the same arithmetic runs in eager PyTorch (a warning says so once), still 10-20x
faster than the authors' code at B = 256-512 (BENCHMARKS.md). ``EKD_RKD_COMPILE=0`` in the environment
disables compilation.

Precision. The squared distances are computed in float64 from the batch centred on its mean (a Gram
matrix; the few pairs with d_ij <= 0.01 (|c_i|^2 + |c_j|^2), c the centred rows, always including the
diagonal, are recomputed from their difference vectors, so coincident rows give exactly 0), then
rounded to the compute dtype: each d_ij is correct to half an ulp whatever the offset of the batch. float32
cancellation then only enters through the three-term sum d_ij + d_ik - d_jk; with u = 2^-24 and
rho = ||x_j - x_i|| / ||x_k - x_i|| (the ratio of the two edges at the vertex) one float32 angle is off
by at most u (2.5 (rho + 1/rho) + 6) (11 u = 7e-7 for equal edges), independent of the scale and the
mean of the embeddings; SmoothL1 is 1-Lipschitz, so L_A is off by at most the mean of that bound over
the student's and the teacher's triples plus the rounding of the sums (row sums of B terms in the
compute dtype, summed in float64 across rows and chunks); tests/distill/test_rkd.py checks that bound.
Measured (bench/bench_rkd.py, B = 256, D = 512): the float32 loss is within 1e-7 (relative) of the
float64 value, also with a common offset of 10 on every embedding, where the authors' float32 code is
off by 1e-6 (its Gram-based distances and its differences cancel against the offset; the distance term
here is computed on the centred batch for the same reason). Coincident points behave as in the
authors' code: a zero difference gives a zero unit vector (angles 0); differences shorter than ``eps``
are treated as zero too (the authors' F.normalize divides them by eps instead); the gradient through
such a pair's undefined direction is taken as 0 (theirs is of order 1 / eps).

``angle_anchors`` (default None = all) additionally subsamples that many vertices per call (uniformly,
without replacement): an unbiased estimate of L_A at a cost linear in the number of anchors (under
DDP every rank uses rank 0's draw, so the ranks agree).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ekd import dist
from ekd.distill.base import Objective, register_objective
from ekd.distill.common import check_batch, distances, student_teacher_pair
from ekd.models.features import Features

# pairs whose Gram-based squared distance is below this fraction of the sum of their centred squared
# norms are recomputed from the difference vector: above it the float64 Gram formula loses at most
# ~D * 2^-53 / 1e-2 (< 1e-11 relative at D = 512), far below a float32 ulp
_CLOSE_PAIR = 1e-2
# elements of one c x B x B chunk temporary (8 MiB in float32): larger chunks fall out of the cache
_CHUNK_ELEMENTS = 2**21
# smallest batch for which angle_kernel="auto" uses the compiled kernel (below, eager is ~20 ms)
COMPILE_MIN_BATCH = 256
KERNELS = ("auto", "compiled", "eager")


def _normalised_distances(x: torch.Tensor, eps: float) -> torch.Tensor:
    # centred first: the same distances, but the Gram formula then cancels against the spread of the
    # batch, not against a common offset of the embeddings (float32)
    d = distances(x - x.mean(dim=0), eps=eps)
    b = x.shape[0]
    # mean over the B(B - 1) pairs i != j (the diagonal is the only exact zero; see the module docstring)
    mu = d.sum() / (b * (b - 1))
    if mu <= 0:  # every point coincides: nothing to normalise, all distances are 0
        return d
    return d / mu


def _edges(x: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """The centred float64 batch, the squared distances d and v = 1 / sqrt(2 d) (0 for d <= eps^2).

    d and v are returned in ``x``'s dtype; see the module docstring for the precision argument.
    """
    c = x.detach().to(torch.float64)
    c = c - c.mean(dim=0)
    sq = (c * c).sum(dim=1)
    scale = sq.unsqueeze(1) + sq.unsqueeze(0)
    d = (scale - 2.0 * (c @ c.t())).clamp_min_(0.0)
    rows, cols = (d <= _CLOSE_PAIR * scale).nonzero(as_tuple=True)
    step = max(1, 2**22 // max(1, c.shape[1]))  # bound the gathered pair differences to 32 MiB
    for start in range(0, rows.numel(), step):
        i, j = rows[start : start + step], cols[start : start + step]
        d[i, j] = (c[i] - c[j]).square().sum(dim=1)
    positive = d > eps * eps
    v = torch.where(positive, torch.rsqrt(2.0 * d.clamp_min(eps * eps)), torch.zeros_like(d))
    return c, d.to(x.dtype), v.to(x.dtype)


def _chunk_loss(a_s: Tensor, w_s: Tensor, d_s: Tensor, a_t: Tensor, w_t: Tensor, d_t: Tensor) -> Tensor:
    """Per-(vertex, j) sums over k of SmoothL1(psi_A^s - psi_A^t) for the chunk's c vertices.

    ``a_*`` / ``w_*``: the chunk's rows of d and v (c x B); ``d_*``: the whole B x B matrix d.
    """
    angle_s = (a_s.unsqueeze(2) + a_s.unsqueeze(1)).sub_(d_s).mul_(w_s.unsqueeze(2)).mul_(w_s.unsqueeze(1))
    angle_t = (a_t.unsqueeze(2) + a_t.unsqueeze(1)).sub_(d_t).mul_(w_t.unsqueeze(2)).mul_(w_t.unsqueeze(1))
    return F.smooth_l1_loss(angle_s, angle_t, reduction="none").sum(dim=2)


def _chunk_loss_and_grads(
    a_s: Tensor, w_s: Tensor, d_s: Tensor, a_t: Tensor, w_t: Tensor, d_t: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """As :func:`_chunk_loss`, plus the pieces of dL/dd (unscaled by the 1 / N of the mean).

    Returns (row losses c x B, R = sum_k M, T = sum_k M P, C = sum_vertices M (B x B)) with
    P_ijk = d_ij + d_ik - d_jk and M_ijk = SmoothL1'(diff_ijk) v_ij v_ik. Written with in-place
    operations so that the eager version allocates three c x B x B tensors; torch.compile fuses it.
    """
    p_s = (a_s.unsqueeze(2) + a_s.unsqueeze(1)).sub_(d_s)
    vv_s = w_s.unsqueeze(2) * w_s.unsqueeze(1)
    angle_t = (a_t.unsqueeze(2) + a_t.unsqueeze(1)).sub_(d_t).mul_(w_t.unsqueeze(2)).mul_(w_t.unsqueeze(1))
    diff = torch.addcmul(angle_t, p_s, vv_s, value=-1.0).neg_()  # psi_s - psi_t
    slope = diff.clamp(-1.0, 1.0)  # SmoothL1'(diff), beta = 1
    # SmoothL1(diff) = slope * (diff - slope / 2) on both branches (0.5 x^2 inside, |x| - 0.5 outside)
    row_loss = diff.sub_(slope, alpha=0.5).mul_(slope).sum(dim=2)
    m = slope.mul_(vv_s)
    return row_loss, m.sum(dim=2), (m * p_s).sum(dim=2), m.sum(dim=0)


ChunkKernel = Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]
_COMPILED: dict[str, ChunkKernel | None] = {}  # torch.dtype name -> compiled kernel, None once it failed


def _compile_enabled() -> bool:
    return os.environ.get("EKD_RKD_COMPILE", "1").strip().lower() not in ("0", "false", "no", "off")


def _run_chunk(kernel: str, dtype: torch.dtype, *args: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The fused (torch.compile) chunk kernel when ``kernel`` asks for it and it works, else eager."""
    use_compiled = (
        kernel == "compiled"
        and _compile_enabled()
        and args[0].shape[0] >= 2  # a 1-vertex chunk would make dynamo specialise (recompile) on size 1
        and not torch.compiler.is_compiling()  # inside someone's compiled graph: let it trace eager code
    )
    key = str(dtype)
    if use_compiled and _COMPILED.get(key, True) is not None:
        if key not in _COMPILED:
            _COMPILED[key] = torch.compile(_chunk_loss_and_grads, dynamic=True, fullgraph=True)
        try:
            return _COMPILED[key](*args)
        except Exception as error:  # no C++ compiler / Triton, unsupported backend: the eager arithmetic
            _COMPILED[key] = None
            warnings.warn(
                f"rkd: torch.compile of the angle kernel failed ({type(error).__name__}: {error}); "
                "using the eager implementation (same values, several times slower)",
                RuntimeWarning,
                stacklevel=3,
            )
    return _chunk_loss_and_grads(*args)


def _vertex_chunks(vertices: Tensor, b: int, chunk: int | None) -> list[Tensor]:
    """Split the vertices into near-equal chunks of at most ``chunk`` and at most 2^21 / B^2 (>= 2)."""
    size = max(2, _CHUNK_ELEMENTS // (b * b))
    if chunk:
        size = min(size, int(chunk))
    count = -(-len(vertices) // size)
    return list(torch.tensor_split(vertices, count))


def _angle_loss_and_grad(
    student: Tensor, teacher: Tensor, vertices: Tensor, chunk: int | None, kernel: str, eps: float, grad: bool
) -> tuple[Tensor, Tensor | None]:
    """L_A over ``vertices`` and, when ``grad``, dL_A/dstudent (B x D)."""
    b = student.shape[0]
    centred, d_s, v_s = _edges(student, eps)
    _, d_t, v_t = _edges(teacher.to(student.dtype), eps)
    total = torch.zeros((), dtype=torch.float64, device=student.device)
    dd = torch.zeros_like(d_s) if grad else None  # dL/dd without the 1 / N, rows = first index
    for part in _vertex_chunks(vertices, b, chunk):
        args = (d_s[part], v_s[part], d_s, d_t[part], v_t[part], d_t)
        if not grad:
            total += _chunk_loss(*args).sum(dtype=torch.float64)
            continue
        row_loss, r, t, c = _run_chunk(kernel, student.dtype, *args)
        total += row_loss.sum(dtype=torch.float64)
        dd.index_add_(0, part, 2.0 * r - 2.0 * t * v_s[part].square())
        dd -= c
    count = len(vertices) * b * b
    loss = (total / count).to(student.dtype)
    if not grad:
        return loss, None
    s = (dd + dd.t()).to(torch.float64) / count
    # d_ij = ||x_i - x_j||^2 for every ordered pair: dL/dx_i = 2 sum_j S_ij (x_i - x_j) (centring is exact
    # here: the rows of the gradient sum to zero, as the loss is translation invariant)
    dx = 2.0 * (s.sum(dim=1, keepdim=True) * centred - s @ centred)
    return loss, dx.to(student.dtype)


class _AngleLoss(torch.autograd.Function):
    """L_A with the gradient computed in the forward pass (see the module docstring); teacher constant."""

    @staticmethod
    def forward(ctx, student, teacher, vertices, chunk, kernel, eps, grad):  # type: ignore[override]
        loss, dx = _angle_loss_and_grad(student, teacher, vertices, chunk, kernel, eps, grad)
        if dx is not None:
            ctx.save_for_backward(dx)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        (dx,) = ctx.saved_tensors
        return grad_output * dx, None, None, None, None, None, None


def rkd_angle_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    chunk: int | None = 32,
    vertices: torch.Tensor | None = None,
    kernel: str = "auto",
    eps: float = 1e-12,
) -> torch.Tensor:
    """L_A over ``vertices`` (default: all B), ``chunk`` vertices at a time at most (None: no cap).

    ``kernel``: "auto" (compiled for B >= COMPILE_MIN_BATCH), "compiled" or "eager"; the values do not
    depend on it nor on ``chunk``. Without gradients (no_grad, or a student that does not require them)
    a loss-only eager pass runs instead. The teacher is a constant (no gradient). Once differentiable.
    """
    if kernel not in KERNELS:
        raise ValueError(f"rkd: angle kernel must be one of {KERNELS}, got {kernel!r}")
    b = student.shape[0]
    if vertices is None:
        vertices = torch.arange(b, device=student.device)
    if kernel == "auto":
        kernel = "compiled" if b >= COMPILE_MIN_BATCH else "eager"
    grad = torch.is_grad_enabled() and student.requires_grad
    return _AngleLoss.apply(student, teacher.detach(), vertices, chunk, kernel, float(eps), grad)


@register_objective("rkd")
class RKDObjective(Objective):
    """Relational KD: Smooth-L1 on normalised pairwise distances and on angles of triples."""

    requires = frozenset({"embedding"})
    relational = True
    default_weight = 1.0

    def __init__(
        self,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        angle_chunk: int | None = 32,
        angle_anchors: int | None = None,
        angle_kernel: str = "auto",
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if distance_weight < 0 or angle_weight < 0:
            raise ValueError(
                f"rkd: weights must be >= 0, got distance {distance_weight}, angle {angle_weight}"
            )
        if angle_chunk is not None and int(angle_chunk) < 0:
            raise ValueError(
                f"rkd: angle_chunk must be >= 1 (or None / 0 for no chunking), got {angle_chunk}"
            )
        if angle_anchors is not None and int(angle_anchors) < 1:
            raise ValueError(f"rkd: angle_anchors must be >= 1 or None (all), got {angle_anchors}")
        if angle_kernel not in KERNELS:
            raise ValueError(f"rkd: angle_kernel must be one of {KERNELS}, got {angle_kernel!r}")
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)
        self.angle_chunk = int(angle_chunk) if angle_chunk else None
        self.angle_anchors = None if angle_anchors is None else int(angle_anchors)
        self.angle_kernel = angle_kernel
        self.eps = float(eps)
        self._last: dict[str, torch.Tensor] = {}

    def forward(self, student: Features, teacher: Features, labels: torch.Tensor) -> torch.Tensor:
        s, t = student_teacher_pair(
            self.name, "embedding", student.embedding, teacher.embedding, same_width=False
        )
        check_batch(self.name, "embedding", s, min_size=2)
        loss = s.new_zeros(())
        if self.distance_weight:
            with torch.no_grad():
                d_t = _normalised_distances(t, self.eps)
            loss_d = F.smooth_l1_loss(_normalised_distances(s, self.eps), d_t, reduction="mean")
            loss = loss + self.distance_weight * loss_d
            self._last["distance"] = loss_d.detach()
        if self.angle_weight:
            vertices = None
            if self.angle_anchors is not None and self.angle_anchors < s.shape[0]:
                vertices = torch.randperm(s.shape[0], device=s.device)[: self.angle_anchors]
                # every rank must compute the same loss on the global batch: use rank 0's draw
                dist.broadcast_(vertices, src=0)
            loss_a = rkd_angle_loss(
                s, t, chunk=self.angle_chunk, vertices=vertices, kernel=self.angle_kernel, eps=self.eps
            )
            loss = loss + self.angle_weight * loss_a
            self._last["angle"] = loss_a.detach()
        return loss

    def log_items(self) -> dict[str, torch.Tensor]:
        """Unweighted distance and angle terms of the last forward."""
        return dict(self._last)

    def extra_repr(self) -> str:
        return (
            f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}, "
            f"angle_chunk={self.angle_chunk}, angle_anchors={self.angle_anchors}, "
            f"angle_kernel={self.angle_kernel!r}"
        )
