"""Small tensor helpers shared by the distillation objectives (one copy, called everywhere).

Objectives compute in float32 at least: under fp16 / bf16 autocast the embeddings arrive in half
precision, and pairwise distances, softmaxes and Gram matrices lose too much there. float64 inputs
stay float64 (gradcheck in the tests relies on it).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

_WARNED: set[str] = set()


def compute_dtype(x: Tensor) -> Tensor:
    """``x`` upcast to float32 when it is half precision; unchanged otherwise."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def student_teacher_pair(
    name: str, what: str, student: Tensor, teacher: Tensor, same_width: bool = True
) -> tuple[Tensor, Tensor]:
    """Both tensors in the student's compute dtype, the teacher detached.

    Shapes must agree; with ``same_width=False`` only the batch size must (relational objectives
    compare B x B relations, so a 128-d student can learn from a 512-d teacher). ``name`` (the
    objective) and ``what`` (e.g. "embedding") only serve the error message.
    """
    student = compute_dtype(student)
    teacher = teacher.detach().to(student.dtype)
    mismatch = student.shape[:1] != teacher.shape[:1] if not same_width else student.shape != teacher.shape
    if mismatch:
        kind = "batch sizes" if not same_width else f"{what} shapes"
        raise ValueError(
            f"distillation objective {name!r}: student and teacher {kind} differ "
            f"({tuple(student.shape)} vs {tuple(teacher.shape)})"
        )
    return student, teacher


def check_batch(
    name: str, what: str, tensor: Tensor, labels: Tensor | None = None, min_size: int = 1
) -> None:
    """Raise a clear error when ``tensor`` is not N x ... with N >= min_size (and N labels)."""
    if tensor.ndim < 2:
        raise ValueError(
            f"distillation objective {name!r}: {what} must be N x ..., got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[0] < min_size:
        raise ValueError(
            f"distillation objective {name!r} needs at least {min_size} samples in the batch, "
            f"got {tensor.shape[0]}"
        )
    if labels is not None and labels.shape != (tensor.shape[0],):
        raise ValueError(
            f"distillation objective {name!r}: labels must have shape ({tensor.shape[0]},), "
            f"got {tuple(labels.shape)}"
        )


def check_labels(name: str, labels: Tensor, num_classes: int) -> None:
    """Raise a clear error when a label lies outside [0, num_classes) (the classes of the centres)."""
    if labels.numel() and (bool((labels < 0).any()) or bool((labels >= num_classes).any())):
        raise ValueError(
            f"{name}: labels must lie in [0, {num_classes}) (the classes of the centres), got min "
            f"{int(labels.min())}, max {int(labels.max())}"
        )


def pairwise_squared_distances(x: Tensor) -> Tensor:
    """B x B squared Euclidean distances between the raw rows via the Gram matrix (no B x B x D tensor);
    exact 0 on the diagonal.

    Rounding can make an off-diagonal entry slightly negative; it is clamped to 0. Distances between the
    L2-normalised rows: ``ekd.heads.triplet.normalised_pairwise_squared_distances``.
    """
    sq_norms = (x * x).sum(dim=1)
    sq = (sq_norms.unsqueeze(1) + sq_norms.unsqueeze(0) - 2.0 * x @ x.t()).clamp_min(0.0)
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return sq.masked_fill(eye, 0.0)


def distances(x: Tensor, eps: float = 1e-12) -> Tensor:
    """B x B Euclidean distances, exact 0 on the diagonal.

    The square root is taken of ``max(d^2, eps)`` so its gradient stays finite for coincident points
    (the diagonal, duplicates); the diagonal is then zeroed, as in the RKD reference code.
    """
    dist = pairwise_squared_distances(x).clamp_min(eps).sqrt()
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return dist.masked_fill(eye, 0.0)


def cosine_matrix(x: Tensor, eps: float = 1e-12) -> Tensor:
    """B x B cosine similarities of the rows of ``x`` (zero rows give 0)."""
    unit = torch.nn.functional.normalize(x, dim=1, eps=eps)
    return unit @ unit.t()


def zero_loss(*tensors: Tensor) -> Tensor:
    """A scalar 0 connected to the graph of ``tensors``, so every parameter still gets a (zero) gradient.

    DDP expects each rank to produce gradients for the same parameters; a detached constant would make
    one rank skip the reduction the others wait for.
    """
    total = tensors[0].sum() * 0.0
    for t in tensors[1:]:
        total = total + t.sum() * 0.0
    return total


def warn_once(key: str, message: str) -> None:
    """Issue ``message`` as a RuntimeWarning the first time ``key`` is seen in this process."""
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
