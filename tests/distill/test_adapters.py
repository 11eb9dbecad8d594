"""Stage adapters with the real backbones: regressors built from ``stage_shapes`` fit the actual maps."""

from __future__ import annotations

import pytest
import torch

from ekd.distill import create
from ekd.models import create_backbone


@pytest.fixture(scope="module")
def features():
    torch.manual_seed(0)
    student, teacher = create_backbone("mobilefacenet"), create_backbone("iresnet18").eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        teacher_features = teacher.forward_features(x)
    return student, teacher, student.forward_features(x), teacher_features


def test_regressors_from_backbone_stage_shapes(features):
    student, teacher, f_s, f_t = features
    differing = {s for s in student.stage_shapes if student.stage_shapes[s][0] != teacher.stage_shapes[s][0]}
    angular = create(
        "shrinkteanet",
        stages=["stage1", "stage2", "stage3", "stage4"],
        student_shapes=student.stage_shapes,
        teacher_shapes=teacher.stage_shapes,
    )
    assert set(angular.regressors) == differing and differing  # mobilefacenet is narrower in the middle
    fitnet = create(
        "fitnet", stage="stage3", student_shapes=student.stage_shapes, teacher_shapes=teacher.stage_shapes
    )
    assert fitnet.regressor is not None
    for objective in (angular, fitnet):
        loss = objective(f_s, f_t, torch.zeros(2))
        assert torch.isfinite(loss) and loss.requires_grad
    # stage 4 is 512 x 7 x 7 for both: the default FitNet hint needs no regressor
    assert (
        create("fitnet", student_shapes=student.stage_shapes, teacher_shapes=teacher.stage_shapes).regressor
        is None
    )
