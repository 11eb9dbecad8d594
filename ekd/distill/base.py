"""Base class, context and registry of distillation objectives.

An objective maps ``(student: Features, teacher: Features, labels)`` to a scalar loss. What is true of
the loss is declared on the class (read by ``ekd.lit.DistillationModule``, documented on
:class:`Objective`): the Features fields it needs (``requires``, checked at start-up), whether it is
``relational`` (computed on the global batch gathered across ranks under DDP), its recommended
``default_weight``, whether it ``needs_teacher_centres`` and whether it ``replaces_recognition``.

Life cycle in a training module: ``create(name, **hparams)`` -> ``bind(ObjectiveContext)`` once ->
the optimizer is built -> ``forward`` every step (``hint_only(step)`` asked every step).
Objectives own their adapters (e.g. the FitNet regressor): those are ordinary submodules and so
trainable parameters of the student side. They must exist before the optimizer, hence the one
mechanism for stage shapes: an objective whose constructor takes ``student_shapes`` /
``teacher_shapes`` is given the backbones' ``stage_shapes`` there by the training module (unless the
configuration gives them), so it builds its adapters at construction; ``bind`` receives the same
shapes for objectives that only read them. State that must survive a checkpoint (e.g. EKD's moving
thresholds) is a registered buffer: the module's ``objectives`` ModuleDict saves and restores it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ekd import dist
from ekd.models.features import Features
from ekd.registry import Registry

# every distillation objective, by name: ``create(name, **hparams)``
OBJECTIVES: Registry[type[Objective]] = Registry("distillation objective")

# stage name -> C x H x W, as in a backbone's ``stage_shapes``
StageShapes = dict[str, tuple[int, ...]]


@dataclasses.dataclass(frozen=True, eq=False)
class ObjectiveContext:
    """What the training module knows about the run, given once to :meth:`Objective.bind`.

    ``student_shapes`` / ``teacher_shapes``: the backbones' ``stage_shapes`` (stage name -> C x H x W).
    ``head``: the student's recognition head, an ``ekd.heads.RecognitionLoss`` (None without a head):
    the class centres the student is trained against, for objectives that compute the classification
    loss themselves or move those centres (AdaDistill-style, ``replaces_recognition``). Use its API
    (``forward(embeddings, labels) -> (loss, logits)``, ``margin_free_logits``, ``centres``,
    ``set_centres``, ``.head``): under ``sharded_head`` its rows are split over ranks at fit start,
    after ``bind``. Keep the context itself (a plain dataclass) rather than assigning ``context.head``
    to a module attribute: that would register the head a second time as a submodule of the objective
    (its parameters twice in the optimizer and in checkpoints). Nothing here depends on the world size.
    """

    num_classes: int
    student_embedding_size: int
    teacher_embedding_size: int
    student_shapes: StageShapes = dataclasses.field(default_factory=dict)
    teacher_shapes: StageShapes = dataclasses.field(default_factory=dict)
    head: nn.Module | None = None


class Objective(nn.Module):
    """Base of every distillation objective (see the module docstring).

    Class attributes (override on the subclass; an instance may override ``requires``):

    - ``requires``: Features fields read (``"embedding"``, ``"logits"``, ``"stages.stage4"``, ...).
    - ``relational``: needs the global batch under DDP (``gather_global``), not only this rank's rows.
    - ``default_weight``: the weight used when the configuration gives none (the recommended one).
    - ``needs_teacher_centres``: the training module calls :meth:`set_teacher_centres` with the
      teacher's C x D class centres before training (e.g. MarginDistillation).
    - ``replaces_recognition``: the objective computes the student's classification loss itself
      (through ``ObjectiveContext.head``), so the training module adds no recognition cross-entropy
      term of its own (the recognition accuracy is still logged). At most one per run.
    """

    name: str = ""
    requires: frozenset[str] = frozenset({"embedding"})
    relational: bool = False
    default_weight: float = 1.0
    needs_teacher_centres: bool = False
    replaces_recognition: bool = False

    def bind(self, context: ObjectiveContext) -> None:
        """Called once by the training module after construction, before the optimizer exists.

        Default: nothing. Override to read the class count, embedding sizes, stage shapes or the
        student head (see :class:`ObjectiveContext`); parameters created here are optimised too.
        """

    def hint_only(self, step: int) -> bool:
        """True when, at optimiser step ``step`` (0-based), this objective's term is the only trained one
        (every other term gets weight 0 but stays computed and logged); FitNet's warm-up. Default False."""
        return False

    def set_teacher_centres(self, centres: torch.Tensor) -> None:
        """Receive the teacher's C x D class centres (objectives with ``needs_teacher_centres``)."""
        raise TypeError(f"distillation objective {self.name!r} does not use teacher class centres")

    def forward(self, student: Features, teacher: Features, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def required_stages(self) -> list[str]:
        """Names of the stage maps listed in ``requires`` (what ``gather_global`` must gather)."""
        return sorted(r.split(".", 1)[1] for r in self.requires if r.startswith("stages."))

    def log_items(self) -> dict[str, torch.Tensor]:
        """Extra values to log after the last forward (e.g. EKD thresholds); none by default."""
        return {}

    def check_features(self, features: Features, side: str) -> None:
        """Raise a configuration error when ``features`` lacks a field this objective needs."""
        missing = sorted(r for r in self.requires if not features.has(r))
        if missing:
            raise ValueError(
                f"distillation objective {self.name!r} needs {missing} from the {side}, which does not "
                f"provide them (it provides embedding, logits={features.logits is not None}, "
                f"stages={sorted(features.stages)})"
            )


def gather_global(
    student: Features,
    teacher: Features,
    labels: torch.Tensor,
    layout: list[int] | None = None,
    stages: Iterable[str] = (),
) -> tuple[Features, Features, torch.Tensor]:
    """The global batch for relational objectives under DDP (identity on one process).

    Student embeddings and logits are gathered with gradients flowing back to the local rows (see
    ``ekd.dist`` for the gradient scale), teacher tensors and labels without. Stage maps are not
    gathered. ``layout`` splits the local rows into consecutive parts (e.g. ``[32, 32]`` for EKD's
    general + balanced images); each part is gathered separately and the result is part-major:
    [part 0 of every rank, part 1 of every rank, ...], the order of the official EKD code.
    """
    if not dist.is_distributed():
        return student, teacher, labels
    layout = layout or [labels.shape[0]]
    if sum(layout) != labels.shape[0]:
        raise ValueError(f"batch layout {layout} does not add up to the batch size {labels.shape[0]}")

    def gather(tensor: torch.Tensor | None, with_grad: bool) -> torch.Tensor | None:
        if tensor is None:
            return None
        fn = dist.gather_with_grad if with_grad else dist.gather_nograd
        return torch.cat([fn(part) for part in torch.split(tensor, layout)], dim=0)

    stages = list(stages)
    student_global = Features(
        embedding=gather(student.embedding, True),
        stages={name: gather(student.stages[name], True) for name in stages},
        logits=gather(student.logits, True),
    )
    teacher_global = Features(
        embedding=gather(teacher.embedding, False),
        stages={name: gather(teacher.stages[name], False) for name in stages},
        logits=gather(teacher.logits, False),
    )
    return student_global, teacher_global, gather(labels, False)


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """Class decorator adding an objective to ``OBJECTIVES`` under ``name`` (and setting its ``name``)."""
    add = OBJECTIVES.register(name)

    def decorator(cls: type[Objective]) -> type[Objective]:
        add(cls)
        cls.name = name
        return cls

    return decorator


def list_objectives() -> list[str]:
    """Names accepted by :func:`create`, sorted."""
    return OBJECTIVES.names()


def objective_class(name: str) -> type[Objective]:
    """The class registered as ``name`` (e.g. to inspect its constructor's defaults)."""
    return OBJECTIVES.get(name)


def create(name: str, **hparams) -> Objective:
    """Build the objective registered as ``name`` with its hyper-parameters (defaults otherwise).

    Raises UnknownNameError for an unknown name and UnknownOptionError (a ValueError and a TypeError)
    for a hyper-parameter the objective does not take, listing the accepted ones.
    """
    return OBJECTIVES.create(name, **hparams)
