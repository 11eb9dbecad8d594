"""``build_module``: the training module of a composed config, its sections passed whole.

Every constructor argument of :class:`~ekd.lit.RecognitionModule` / :class:`~ekd.lit.DistillationModule`
is a top-level section of the config under the same name (``student``, ``head``, ``teacher``,
``distill``, ``optim``, ``schedule``, ``aux_losses``, ``recognition_rows``, ``channels_last``,
``nonfinite``); the datamodule supplies ``num_classes`` and ``batch_layout``. A config without
distillation objectives builds a RecognitionModule (the teacher and no-KD rows).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from ekd.lit.distillation import DistillationModule
from ekd.lit.recognition import RecognitionModule


def module_class(config: Mapping[str, Any]) -> type[RecognitionModule]:
    """DistillationModule when ``config.distill.objectives`` is not empty, else RecognitionModule."""
    return DistillationModule if config["distill"]["objectives"] else RecognitionModule


def build_module(config: Mapping[str, Any], **given: Any) -> RecognitionModule:
    """The module for ``config``: each constructor argument from the config section of that name
    (unless ``given``, e.g. ``num_classes`` and ``batch_layout`` from the datamodule)."""
    cls = module_class(config)
    if cls is RecognitionModule:
        given.pop("batch_layout", None)  # only distillation gathers batch parts
    names = [  # DistillationModule passes its **recognition_kwargs on to RecognitionModule
        p.name
        for klass in {cls, RecognitionModule}
        for p in inspect.signature(klass.__init__).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    ]
    sections = {name: config[name] for name in names if name not in given and name in config}
    return cls(**sections, **given)
