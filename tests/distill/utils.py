"""Helpers shared by the distillation tests: Features builders and float64 reference arithmetic."""

from __future__ import annotations

import numpy as np
import torch

from ekd.models.features import Features


def feats(embedding=None, logits=None, **stages) -> Features:
    """Features from numpy arrays / tensors (float64 kept), stages given as keyword arguments."""

    def t(x):
        return None if x is None else torch.as_tensor(x)

    emb = t(embedding) if embedding is not None else torch.zeros(1, 1, dtype=torch.float64)
    return Features(embedding=emb, logits=t(logits), stages={k: t(v) for k, v in stages.items()})


def orthogonal(d: int, seed: int) -> np.ndarray:
    """A random d x d orthogonal matrix (QR of a Gaussian matrix)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).sum(axis=1, keepdims=True))


def smooth_l1(x: float) -> float:
    """Huber / Smooth-L1 with beta = 1."""
    return 0.5 * x * x if abs(x) < 1.0 else abs(x) - 0.5
