"""DarkRank: transfer of cross-sample similarity rankings (Chen, Wang and Zhang, AAAI 2018).

On L2-normalised embeddings, the score of a candidate x for a query q is
    S(q, x) = -alpha ||q - x||^beta          (alpha = 3, beta = 3).
For each query q of the (global) batch the *teacher* picks q's top-L neighbours (highest teacher
scores, q itself excluded; L = ``list_length`` = 3) and orders them: pi_t. Under the Plackett-Luce
model a ranking pi = (x_1, ..., x_L) of that list has probability
    P(pi | S) = prod_{i=1..L} exp(S(q, x_i)) / sum_{k=i..L} exp(S(q, x_k)),
computed in log space with logsumexp (scores reach -alpha 2^beta = -24, so no exp overflows).

- ``variant="hard"``: L_hard = -mean_q log P(pi_t | S_s), the student's log-likelihood of the teacher's
  order. Not zero when the student equals the teacher (P < 1 unless the scores are infinitely apart).
  The only DarkRank of the code behind the EKD paper's Table 2 (Tencent/TFace
  ``recognition/tasks/ekd/distillation/darkrank.py``, ``HardDarkRank(alpha=3, beta=3, permute_len=3)``),
  which it equals (tests/distill/test_darkrank.py) except at exact ties with the query: TFace drops the
  first entry of the teacher's sorted row, assumed to be the query; ekd masks the query itself.
- ``variant="soft"`` (default): L_soft = mean_q KL(P(. | S_t) || P(. | S_s)) over the L! permutations
  of the teacher's list, i.e. ListNet with the *permutation* probability distribution, exactly the
  soft loss of the DarkRank paper. It is chosen over ListNet's top-one approximation because the list
  is short (L! = 6 permutations for L = 3, 24 for L = 4: a B x L! x L tensor) and the permutation
  distribution carries the whole order, not only which candidate comes first. KL rather than the
  cross-entropy: same gradient, and the loss is 0 when the student's scores equal the teacher's.
  ``soft_distribution="top_one"`` gives ListNet's top-one variant, KL(softmax(S_t) || softmax(S_s))
  over the L candidates (for long lists; the permutation variant refuses L > 6).
Both variants are averaged over the queries; recommended weight 1. Relational: global batch.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from ekd.distill.base import Objective, register_objective
from ekd.distill.common import check_batch, pairwise_squared_distances, student_teacher_pair
from ekd.models.features import Features

_MAX_PERMUTATION_LIST = 6


def plackett_luce_log_prob(scores: torch.Tensor) -> torch.Tensor:
    """log P of the order given by the last axis of ``scores`` (... x L) under Plackett-Luce."""
    # suffix logsumexp: lse_i = log sum_{k >= i} exp(s_k)
    suffix = torch.logcumsumexp(scores.flip(-1), dim=-1).flip(-1)
    return (scores - suffix).sum(dim=-1)


@register_objective("darkrank")
class DarkRankObjective(Objective):
    """Plackett-Luce ranking transfer of the teacher's top-L neighbours (hard or soft variant)."""

    requires = frozenset({"embedding"})
    relational = True
    default_weight = 1.0

    def __init__(
        self,
        variant: str = "soft",
        alpha: float = 3.0,
        beta: float = 3.0,
        list_length: int = 3,
        soft_distribution: str = "permutation",
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if variant not in ("hard", "soft"):
            raise ValueError(f"darkrank: variant must be 'hard' or 'soft', got {variant!r}")
        if soft_distribution not in ("permutation", "top_one"):
            raise ValueError(
                f"darkrank: soft_distribution must be 'permutation' or 'top_one', got {soft_distribution!r}"
            )
        if not alpha > 0 or not beta > 0:
            raise ValueError(f"darkrank: alpha and beta must be > 0, got alpha={alpha}, beta={beta}")
        if int(list_length) < 2:
            raise ValueError(f"darkrank: list_length must be >= 2, got {list_length}")
        if (
            variant == "soft"
            and soft_distribution == "permutation"
            and int(list_length) > _MAX_PERMUTATION_LIST
        ):
            raise ValueError(
                f"darkrank: the permutation distribution over list_length={list_length} candidates "
                f"has {math.factorial(int(list_length))} permutations; use list_length <= "
                f"{_MAX_PERMUTATION_LIST} or soft_distribution='top_one'"
            )
        self.variant = variant
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.list_length = int(list_length)
        self.soft_distribution = soft_distribution
        self.eps = float(eps)
        perms = torch.tensor(list(itertools.permutations(range(self.list_length))), dtype=torch.long)
        self.register_buffer("permutations", perms, persistent=False)

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        sq = pairwise_squared_distances(F.normalize(x, dim=1, eps=self.eps))
        # ||q - x||^beta = (||q - x||^2)^(beta / 2); the clamp keeps the gradient finite at duplicates
        return -self.alpha * sq.clamp_min(self.eps).pow(self.beta / 2.0)

    def forward(self, student: Features, teacher: Features, labels: torch.Tensor) -> torch.Tensor:
        s, t = student_teacher_pair(
            self.name, "embedding", student.embedding, teacher.embedding, same_width=False
        )
        check_batch(self.name, "embedding", s, min_size=self.list_length + 1)
        scores_s = self._scores(s)
        with torch.no_grad():
            scores_t = self._scores(t)
            eye = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
            neighbours = scores_t.masked_fill(eye, float("-inf")).topk(self.list_length, dim=1).indices
            list_t = scores_t.gather(1, neighbours)
        list_s = scores_s.gather(1, neighbours)  # B x L, in the teacher's order
        if self.variant == "hard":
            return -plackett_luce_log_prob(list_s).mean()
        if self.soft_distribution == "top_one":
            log_p_s = F.log_softmax(list_s, dim=1)
            log_p_t = F.log_softmax(list_t, dim=1)
        else:
            log_p_s = plackett_luce_log_prob(list_s[:, self.permutations])  # B x L!
            log_p_t = plackett_luce_log_prob(list_t[:, self.permutations])
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean()

    def extra_repr(self) -> str:
        extra = f", soft_distribution={self.soft_distribution!r}" if self.variant == "soft" else ""
        return (
            f"variant={self.variant!r}, alpha={self.alpha}, beta={self.beta}, "
            f"list_length={self.list_length}{extra}"
        )
