"""AdaDistill (Boutros, Struc and Damer, ECCV 2024) and its fixed-centre forms ArcDistill / CosDistill.

The student is trained by a margin-penalty softmax (ArcFace or CosFace) against class centres W
(C x D) that are *distilled from the teacher* instead of learnt by gradient. Every step, before the
loss, the centre of each sample's class is moved toward the teacher's embedding of that sample:

    f^_s = f_s / ||f_s||,  f^_t = f_t / ||f_t||       (student / teacher embeddings of sample i)
    W_{y_i} <- alpha_i W_{y_i} + (1 - alpha_i) f^_t,i                (no gradient; W not normalised)

with alpha_i, by ``alpha``:

* ``"weighted"`` (AdaDistill, the official default ``adaptive_alpha=True``):
  alpha_i = clamp(cos(f^_s,i, f^_t,i) * lambda_i, 1e-6, 1), lambda_i = clamp(cos(W_{y_i}, f^_t,i), 1e-6, 1)
  with W_{y_i} the centre *before* this step's update. Early in training the student agrees little with
  the teacher (small alpha), so the centre is mostly the teacher's sample embedding (sample-to-sample
  knowledge); as the student improves, alpha grows and the centre keeps its history (sample-to-centre
  knowledge). lambda makes samples far from their centre (hard samples) move it more.
* ``"unweighted"``: alpha_i = clamp(cos(f^_s,i, f^_t,i), 1e-6, 1). The official code's other branch
  subtracts ``self.t_alpha``, an attribute it never defines (and then returns an undefined ``lam``), so it
  cannot run; this form is that branch with t_alpha = 0, as the paper's unweighted alpha reads.
* ``"fixed"``: alpha_i = ``momentum`` for every sample (the official ``ACosFace`` form).

Then, with cos_ij = clamp(f^_s,i . W_j / ||W_j||, -1, 1) against the updated centres,

    ArcFace (``margin="arc"``): z_iy = s cos(arccos(cos_iy) + m)
    CosFace (``margin="cos"``): z_iy = s (cos_iy - m)
    z_ij = s cos_ij (j != y_i),        L = mean_i CE(z_i, y_i).

The ArcFace target is the official one: cos(theta + m) everywhere, no continuation past theta > pi - m
and no easy margin (ekd's ``arcface`` head continues it as cos theta - m sin(pi - m) there), with the
true gradient of cos(theta + m) (unlike insightface's straight-through arcface_torch).

The four named forms (``conf/distill/{adaarcdistill,adacosdistill,arcdistill,cosdistill}.yaml``):

* AdaArcDistill / AdaCosDistill: ``alpha="weighted"``, ``init="head"`` — official
  ``train/train_AdaDistill.py`` with ``utils/losses.py`` ``AdaptiveAArcFace`` / ``AdaptiveACosFace``
  (centres start at the student head's N(0, 0.01) initialisation, as the official ``kernel``).
* ArcDistill / CosDistill ("AMLDistill"): ``alpha="fixed"``, ``momentum=1.0``, ``init="teacher"`` —
  official ``train/train_AMLDistill.py``: the student is trained against the teacher's class centres
  (its trained header), which never move. ``momentum < 1`` gives ``ACosFace``'s moving centres instead.

Defaults and their sources: s = 64 and m = 0.45 for ArcFace (``config/config.py``: ``config.s``,
``config.m``, set for ``config.loss = "ArcFace"``), m = 0.35 for CosFace (the ``CosFace`` / ``ACosFace``
class default in ``utils/losses.py``; the config's single ``m`` is the ArcFace run's). The centres are
the student's recognition head (``ObjectiveContext.head``): its ``weight`` is frozen (left out of the
optimiser, as the official header is, which is not in ``opt_backbone``) and moved only by the update
above, so it is saved and restored with the checkpoint (``recognition.*`` keys) and the logged
recognition accuracy is measured against it. The head must be a normalised one (``arcface``,
``cosface``, ...) and not sharded; student and teacher embeddings must have the same size.

Several processes (DDP): every rank applies the update of the *global* batch (the rows of all ranks,
gathered in rank order), so the centres stay identical on every rank; the loss is this rank's rows
(DDP averages the gradients). The official code updates each GPU's copy of the centres from its own
batch only (the header's kernel is a parameter outside the optimiser, never re-synchronised), so on
several GPUs its copies drift apart; on one process the two agree. A class met several times in one
update takes the update of its last occurrence (batch order), each computed from the centre before
the step: what the official in-place ``kernel[:, label] = ...`` does on the CPU, made deterministic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ekd import dist
from ekd.distill.base import Objective, ObjectiveContext, register_objective
from ekd.distill.common import check_batch, check_labels, compute_dtype, student_teacher_pair
from ekd.models.features import Features

MARGINS = ("arc", "cos")
ALPHAS = ("weighted", "unweighted", "fixed")
INITS = ("head", "teacher")
DEFAULT_MARGIN = {"arc": 0.45, "cos": 0.35}
ALPHA_FLOOR = 1e-6  # the official clamp(1e-6, 1) of lambda and alpha


def _choice(option: str, value: str, accepted: tuple[str, ...]) -> str:
    if value not in accepted:
        raise ValueError(f"adadistill: {option} must be one of {list(accepted)}, got {value!r}")
    return value


def last_occurrence(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Positions of the last row of each class present in ``labels`` (ascending by class)."""
    positions = torch.arange(labels.shape[0], device=labels.device)
    last = torch.full((num_classes,), -1, dtype=positions.dtype, device=labels.device)
    last = last.scatter_reduce(0, labels, positions, reduce="amax", include_self=True)
    return last[last >= 0]


@register_objective("adadistill")
class AdaDistillObjective(Objective):
    """Margin softmax against class centres moved toward the teacher's embeddings (module docstring)."""

    requires = frozenset({"embedding"})
    relational = False
    replaces_recognition = True
    default_weight = 1.0

    def __init__(
        self,
        margin: str = "arc",
        m: float | None = None,
        scale: float = 64.0,
        alpha: str = "weighted",
        momentum: float = 1.0,
        init: str = "head",
    ) -> None:
        super().__init__()
        self.margin = _choice("margin", margin, MARGINS)
        self.alpha = _choice("alpha", alpha, ALPHAS)
        self.init = _choice("init", init, INITS)
        self.m = DEFAULT_MARGIN[self.margin] if m is None else float(m)
        if not (math.isfinite(self.m) and self.m >= 0):
            raise ValueError(f"adadistill: m must be a non-negative number, got {m!r}")
        if self.margin == "arc" and self.m >= math.pi:
            raise ValueError(f"adadistill: the ArcFace margin m must be below pi, got {m!r}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"adadistill: scale must be > 0, got {scale!r}")
        if not (0.0 <= momentum <= 1.0):
            raise ValueError(f"adadistill: momentum must lie in [0, 1], got {momentum!r}")
        self.scale = float(scale)
        self.momentum = float(momentum)
        # the teacher's centres are asked for only when they are the starting point
        self.needs_teacher_centres = self.init == "teacher"
        # set once the teacher's centres were copied in: a resumed run must not reset moved centres
        self.register_buffer("initialised", torch.tensor(False))
        self.context: ObjectiveContext | None = None
        self._last: dict[str, torch.Tensor] = {}

    # ----------------------------------------------------------------------------------- set-up
    def bind(self, context: ObjectiveContext) -> None:
        recognition = context.head
        if recognition is None:
            raise ValueError("adadistill: the student needs a recognition head (its centres are distilled)")
        if getattr(recognition, "sharded", False):
            raise ValueError(
                "adadistill moves every class centre of the batch each step and needs all centres on "
                "every rank: use a replicated head (sharded_head=false, sample_rate=1)"
            )
        head = recognition.head
        if not getattr(head, "normalised", False) or head.bias is not None:
            raise ValueError(
                f"adadistill needs a normalised margin head (arcface, cosface, normface, ...), got "
                f"{getattr(head, 'name', type(head).__name__)!r}"
            )
        if context.teacher_embedding_size != context.student_embedding_size:
            raise ValueError(
                f"adadistill moves {context.student_embedding_size}-d student centres toward teacher "
                f"embeddings of size {context.teacher_embedding_size}: the sizes must match"
            )
        if tuple(head.weight.shape) != (context.num_classes, context.student_embedding_size):
            raise ValueError(
                f"adadistill: the head's centres have shape {tuple(head.weight.shape)}, expected "
                f"({context.num_classes}, {context.student_embedding_size})"
            )
        # the centres are moved by the update only, as the official header (outside the optimiser)
        head.weight.requires_grad_(False)
        self.context = context  # the dataclass, not the head: it must not become our submodule

    @property
    def centres(self) -> torch.Tensor:
        """The C x D centres being distilled (the student head's weight; updated in place)."""
        if self.context is None or self.context.head is None:
            raise RuntimeError("adadistill: bind(ObjectiveContext) was not called (no student head)")
        return self.context.head.head.weight

    def set_teacher_centres(self, centres: torch.Tensor) -> None:
        """``init="teacher"``: start from the teacher's C x D class centres (once per run, not on resume)."""
        if self.init != "teacher":
            raise TypeError("adadistill uses the teacher's centres only with init='teacher'")
        if bool(self.initialised):
            return
        with torch.no_grad():
            weight = self.centres
            if tuple(centres.shape) != tuple(weight.shape):
                raise ValueError(
                    f"adadistill: teacher centres have shape {tuple(centres.shape)}, the student head "
                    f"{tuple(weight.shape)}"
                )
            weight.copy_(centres.to(weight))
        self.initialised.fill_(True)

    # ----------------------------------------------------------------------------------- forward
    @torch.no_grad()
    def update_centres(self, f_s: torch.Tensor, f_t: torch.Tensor, labels: torch.Tensor) -> None:
        """Move the centres of the (global) batch's classes toward the teacher embeddings."""
        unit_s = F.normalize(f_s, dim=1)
        unit_t = F.normalize(f_t, dim=1)
        weight = self.centres
        old = weight[labels].to(unit_t.dtype)
        agreement = F.cosine_similarity(unit_s, unit_t, dim=1).clamp(-1.0, 1.0)
        items = {"cos_student_teacher": agreement.mean()}
        if self.alpha == "fixed":
            alpha = torch.full_like(agreement, self.momentum)
        elif self.alpha == "unweighted":
            alpha = agreement.clamp(ALPHA_FLOOR, 1.0)
        else:
            lam = F.cosine_similarity(old, unit_t, dim=1).clamp(ALPHA_FLOOR, 1.0)
            alpha = (agreement * lam).clamp(ALPHA_FLOOR, 1.0)
            items["lambda"] = lam.mean()
        items["alpha"] = alpha.mean()
        moved = alpha.unsqueeze(1) * old + (1.0 - alpha.unsqueeze(1)) * unit_t
        keep = last_occurrence(labels, weight.shape[0])
        weight.index_copy_(0, labels[keep], moved[keep].to(weight.dtype))
        self._last = items

    def forward(self, student: Features, teacher: Features, labels: torch.Tensor) -> torch.Tensor:
        f_s, f_t = student_teacher_pair(self.name, "embedding", student.embedding, teacher.embedding)
        check_batch(self.name, "embedding", f_s, labels)
        labels = labels.long()
        num_classes = self.centres.shape[0]
        check_labels(self.name, labels, num_classes)
        if self.training:
            # every rank applies the global batch's update (module docstring), so centres stay equal
            self.update_centres(
                dist.gather_nograd(f_s.detach()), dist.gather_nograd(f_t), dist.gather_nograd(labels)
            )
        centres = F.normalize(compute_dtype(self.centres.detach()).to(f_s.dtype), dim=1)
        cos = (F.normalize(f_s, dim=1) @ centres.t()).clamp(-1.0, 1.0)
        target = cos.gather(1, labels.unsqueeze(1))
        if self.margin == "arc":
            target = torch.cos(torch.acos(target) + self.m)
        else:
            target = target - self.m
        logits = cos.scatter(1, labels.unsqueeze(1), target) * self.scale
        return F.cross_entropy(logits, labels)

    def log_items(self) -> dict[str, torch.Tensor]:
        """Means over the last update: alpha, lambda (weighted form) and cos(f_s, f_t)."""
        return dict(self._last)

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, m={self.m}, scale={self.scale}, alpha={self.alpha}, "
            f"momentum={self.momentum}, init={self.init}"
        )
