"""Face backbones behind one registry, plus checkpoint loading, complexity figures and ONNX export.

Importing this package registers every backbone family (iresnet, MobileFaceNet, timm).
"""

from ekd.models import iresnet as _iresnet  # noqa: F401  (registers the backbones)
from ekd.models import mobilefacenet as _mobilefacenet  # noqa: F401
from ekd.models import timm_backbone as _timm_backbone  # noqa: F401
from ekd.models.base import FaceBackbone
from ekd.models.complexity import count_macs, count_parameters
from ekd.models.export import export_onnx
from ekd.models.features import Features
from ekd.models.loading import (
    BackboneConflictError,
    BackboneRecordError,
    BackboneSpec,
    CheckpointError,
    CheckpointMismatchError,
    checkpoint_backbone,
    file_sha256,
    load_backbone,
    load_recorded_backbone,
    read_checkpoint,
    write_backbone_record,
)
from ekd.models.registry import (
    create_backbone,
    list_backbone_families,
    list_backbones,
    parse_backbone_options,
    register_backbone,
)

__all__ = [
    "BackboneConflictError",
    "BackboneRecordError",
    "BackboneSpec",
    "CheckpointError",
    "CheckpointMismatchError",
    "FaceBackbone",
    "Features",
    "checkpoint_backbone",
    "count_macs",
    "count_parameters",
    "create_backbone",
    "export_onnx",
    "file_sha256",
    "list_backbone_families",
    "list_backbones",
    "load_backbone",
    "load_recorded_backbone",
    "parse_backbone_options",
    "read_checkpoint",
    "register_backbone",
    "write_backbone_record",
]
