"""Base class and registry of recognition heads (classifiers over identities).

A head owns the class centres as its parameter ``weight`` (C x D) and maps ``(embeddings, labels)``
to logits (N x C); cross-entropy on those logits is the recognition loss. ``labels=None`` gives the
margin-free logits used by inference and KD.

The arithmetic lives in :meth:`Head.compute_logits`, which takes the centres as an argument and
labels that index *those* rows, with ``-1`` meaning "this sample's class is not among these rows".
That is what lets the sharded classifier (``ekd.heads.sharded``) run the very same head on one
rank's slice of the centres: a margin is applied only where the target class lives.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ekd.registry import Registry

# every recognition head, by name: ``create(name, embedding_size, num_classes, **hparams)``
HEADS: Registry[type[Head]] = Registry("recognition head")
# auxiliary losses called as ``loss(embeddings, labels)`` next to the head (center, triplet; registered
# in ``ekd.heads``); ``ekd.lit.recognition.build_aux_loss`` builds them
AUX_LOSSES: Registry[Callable[..., nn.Module]] = Registry("auxiliary loss")

# acos has an infinite derivative at +-1; clamping keeps theta's gradient finite (zero at the clamp).
_ACOS_EPS = {torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float32: 1e-6, torch.float64: 1e-12}


def safe_acos(cos: torch.Tensor) -> torch.Tensor:
    """``acos`` with the argument clamped just inside [-1, 1], so gradients stay finite at +-1."""
    eps = _ACOS_EPS.get(cos.dtype, 1e-6)
    return torch.acos(cos.clamp(-1.0 + eps, 1.0 - eps))


def cosine_logits(embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """cos(theta_ij) between each embedding row and each centre row (N x C)."""
    return F.linear(F.normalize(embeddings, dim=1), F.normalize(weight, dim=1))


def check_labels(labels: torch.Tensor, batch: int, num_rows: int, allow_missing: bool) -> None:
    """Raise a clear error on labels of the wrong shape, dtype or range."""
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(
            f"labels must be a 1-D tensor of length {batch} (the batch), got shape {tuple(labels.shape)}"
        )
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.numel() == 0:
        return
    low = -1 if allow_missing else 0
    lo, hi = int(labels.min()), int(labels.max())
    if lo < low or hi >= num_rows:
        raise ValueError(
            f"labels must lie in [{low}, {num_rows - 1}] (number of classes {num_rows}), got [{lo}, {hi}]"
        )


class Head(nn.Module):
    """Base of every recognition head (see the module docstring).

    Subclasses implement :meth:`compute_logits`. ``weight`` is C x D; ``bias`` is a C-vector or None.
    """

    name: str = ""
    # True when the logits only depend on the direction of the centres (||W_j|| = 1 heads); the
    # sharded classifier and KD use it to know the centres may be compared as unit vectors.
    normalised: bool = True

    def __init__(self, embedding_size: int, num_classes: int, bias: bool = False) -> None:
        super().__init__()
        if embedding_size < 1 or num_classes < 1:
            raise ValueError(
                f"head {self.name!r}: embedding_size and num_classes must be positive, got "
                f"embedding_size={embedding_size}, num_classes={num_classes}"
            )
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # insightface / Partial FC initialise the centres with N(0, 0.01); only their direction matters
        # for normalised heads.
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits N x C; with ``labels`` the margin is applied to each sample's target class."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"head {self.name!r} expects embeddings of shape N x {self.embedding_size}, "
                f"got {tuple(embeddings.shape)}"
            )
        if labels is not None:
            check_labels(labels, embeddings.shape[0], self.num_classes, allow_missing=False)
        return self.compute_logits(embeddings, self.weight, labels, self.bias)

    def compute_logits(
        self,
        embeddings: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of ``embeddings`` against the centre rows ``weight`` (and ``bias``).

        ``labels`` index rows of ``weight``; ``-1`` marks a sample whose target is not among them
        (no margin for that sample here). ``None`` gives margin-free logits.
        """
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}"


def register_head(name: str) -> Callable[[type[Head]], type[Head]]:
    """Class decorator adding a head to ``HEADS`` under ``name`` (and setting the class's ``name``)."""
    add = HEADS.register(name)

    def decorator(cls: type[Head]) -> type[Head]:
        add(cls)
        cls.name = name
        return cls

    return decorator


def list_heads() -> list[str]:
    """Names accepted by :func:`create`, sorted."""
    return HEADS.names()


def head_class(name: str) -> type[Head]:
    """The class registered as ``name`` (else UnknownNameError, a ValueError, listing the known names)."""
    return HEADS.get(name)


def create(name: str, embedding_size: int, num_classes: int, **hparams) -> Head:
    """Build the head registered as ``name``; an unknown hyper-parameter is an UnknownOptionError (a
    ValueError) naming the head and the hyper-parameters it accepts."""
    return HEADS.create(name, embedding_size, num_classes, **hparams)
