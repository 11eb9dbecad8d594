"""Any timm model as a face backbone: ``timm/<model_name>`` (e.g. ``timm/resnet18``).

The trunk is ``timm.create_model(model_name, pretrained=False, features_only=True,
out_indices=(-4, -3, -2, -1))``: its last four feature levels become ``stage1``..``stage4`` (a model with
fewer levels names its last ones so that the deepest is always ``stage4``). Models without
``features_only`` support fall back to ``forward_features`` (only its last map, if 4-D, is ``stage4``).
Models whose timm config fixes the input size (ViTs and relatives) are created with
``img_size=input_size``. Nothing is ever downloaded (``pretrained=False``).

Embedding neck on the deepest map, as insightface's IResNet head: BN2d -> flatten -> dropout ->
Linear -> BN1d (weight fixed at 1.0 and not trained, like IResNet's ``features``). Token outputs
(N x L x C) are flattened first and normalised with BN1d. Shapes are found by one dry forward pass at
construction (``stage_shapes``), since timm strides and paddings differ per model.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from ekd.models.base import FaceBackbone
from ekd.models.features import STAGE_NAMES, Features
from ekd.models.registry import register_backbone
from ekd.models.utils import check_input_size

LAST_FOUR = (-4, -3, -2, -1)


def _import_timm():
    # imported lazily: timm takes seconds to import and most runs never use it
    import timm

    return timm


def _check_model_name(timm, model_name: str) -> None:
    if timm.is_model(model_name):
        return
    close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"close matches: {', '.join('timm/' + m for m in close)}" if close else "see timm.list_models()"
    raise ValueError(f"unknown timm model {model_name!r} (backbone 'timm/{model_name}'); {hint}")


def _create_trunk(
    timm, model_name: str, input_size: tuple[int, int], options: dict
) -> tuple[nn.Module, bool]:
    """Return (trunk, features_only): a features_only trunk returns a list of maps."""
    kwargs = dict(options)
    cfg = timm.get_pretrained_cfg(model_name)
    if cfg is not None and cfg.to_dict().get("fixed_input_size"):
        kwargs.setdefault("img_size", input_size)
    attempts = (
        {"features_only": True, "out_indices": LAST_FOUR},
        {"features_only": True},  # fewer than four levels, or no negative out_indices
        {"num_classes": 0, "global_pool": ""},  # no feature extraction at all: forward_features
    )
    for index, extra in enumerate(attempts):
        last = index == len(attempts) - 1
        try:
            return timm.create_model(
                model_name, pretrained=False, **extra, **kwargs
            ), "features_only" in extra
        except TypeError as error:
            # the plain model failing on a keyword too means the user's options are at fault
            if last:
                raise ValueError(
                    f"timm model {model_name!r} rejected options {sorted(kwargs)}: {error}"
                ) from None
        except Exception:  # noqa: BLE001  (timm raises various types for "no features_only"/"fewer levels")
            if last:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


class TimmBackbone(FaceBackbone):
    """A timm trunk with a face-embedding neck; see the module docstring."""

    def __init__(
        self,
        model_name: str,
        embedding_size: int = 512,
        input_size: tuple[int, int] = (112, 112),
        dropout: float = 0.0,
        **timm_options,
    ) -> None:
        super().__init__()
        timm = _import_timm()
        _check_model_name(timm, model_name)
        input_size = check_input_size(input_size, minimum=8, owner=f"timm/{model_name}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"timm/{model_name}: dropout must be in [0, 1), got {dropout!r}")
        self.model_name = model_name
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.trunk, self.features_only = _create_trunk(timm, model_name, input_size, timm_options)

        maps = self._dry_run()
        names = STAGE_NAMES[-len(maps) :] if maps else ()
        self.stage_names = tuple(names)
        self.stage_shapes = {name: tuple(m.shape[1:]) for name, m in zip(names, maps) if m.ndim == 4}
        last = maps[-1]
        if last.ndim == 4:
            self.neck_norm: nn.Module = nn.BatchNorm2d(last.shape[1])
        else:
            self.neck_norm = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(last[0].numel()))
        self.dropout = nn.Dropout(p=float(dropout))
        self.fc = nn.Linear(last[0].numel(), embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False

    def _trunk_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.features_only:
            return list(self.trunk(x))[-len(STAGE_NAMES) :]
        return [self.trunk.forward_features(x)]

    @torch.no_grad()
    def _dry_run(self) -> list[torch.Tensor]:
        # eval mode: BN in training mode rejects 1-sample batches with 1x1 maps
        was_training = self.trunk.training
        self.trunk.eval()
        reference = next(iter(self.trunk.parameters()), None)
        device = reference.device if reference is not None else torch.device("cpu")
        try:
            maps = self._trunk_maps(torch.zeros(1, 3, *self.input_size, device=device))
        except Exception as error:  # noqa: BLE001
            raise ValueError(
                f"timm/{self.model_name} cannot run at input size {self.input_size}: "
                f"{type(error).__name__}: {error}"
            ) from error
        finally:
            self.trunk.train(was_training)
        return maps

    def forward_features(self, x: torch.Tensor) -> Features:
        self.check_input(x)
        maps = self._trunk_maps(x)
        stages = {name: m for name, m in zip(self.stage_names, maps) if m.ndim == 4}
        flat = torch.flatten(self.neck_norm(maps[-1]), 1)
        embedding = self.features(self.fc(self.dropout(flat)))
        return Features(embedding=embedding, stages=stages)


@register_backbone("timm/*")
def timm_backbone(
    model_name: str,
    embedding_size: int = 512,
    input_size: tuple[int, int] = (112, 112),
    dropout: float = 0.0,
    **timm_options,
) -> TimmBackbone:
    """``timm/<model_name>``: any timm model with the face-embedding neck; extra options go to timm."""
    return TimmBackbone(model_name, embedding_size, input_size=input_size, dropout=dropout, **timm_options)
