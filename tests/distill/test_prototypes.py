"""Teacher class prototypes: means on a hand-made loader, eval mode, errors, the fingerprinted cache."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ekd.data.batch import FaceBatch
from ekd.distill.prototypes import (
    cached_class_prototypes,
    compute_class_prototypes,
    load_or_compute_prototypes,
)


class Recorder(nn.Module):
    """Identity 'teacher' on 2-d vectors that records the mode it ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return x * 1.0


class Forbidden(nn.Module):
    def forward(self, x):
        raise AssertionError("the teacher must not run on a cache hit")


# class 0: (3, 0) and (0, 5) -> mean of units (0.5, 0.5) -> (1, 1) / sqrt 2; class 1: (0, -2) -> (0, -1);
# class 2: (1, 1), (2, 2), (-1, 0) -> mean of units (sqrt2 - 1, sqrt2) / 3 -> normalised
BATCHES = [
    (torch.tensor([[3.0, 0.0], [0.0, -2.0], [1.0, 1.0]]), torch.tensor([0, 1, 2])),
    (torch.tensor([[0.0, 5.0], [2.0, 2.0], [-1.0, 0.0]]), torch.tensor([0, 2, 2])),
]


def expected() -> torch.Tensor:
    r = 1 / math.sqrt(2)
    c2 = torch.tensor([2 * r - 1, 2 * r], dtype=torch.float64)
    return torch.stack(
        [
            torch.tensor([r, r], dtype=torch.float64),
            torch.tensor([0.0, -1.0], dtype=torch.float64),
            c2 / c2.norm(),
        ]
    ).float()


def test_means_of_normalised_embeddings_in_eval_mode():
    teacher = Recorder().train()
    protos = compute_class_prototypes(teacher, BATCHES, num_classes=3)
    assert protos.dtype == torch.float32 and protos.shape == (3, 2)
    assert torch.allclose(protos, expected(), atol=1e-7)
    assert teacher.modes == [False, False] and teacher.training  # eval during the pass, mode restored


def test_mapping_batches_and_extra_items():
    dict_batches = [{"image": x, "label": y, "index": torch.arange(3)} for x, y in BATCHES]
    assert torch.allclose(compute_class_prototypes(Recorder(), dict_batches, 3), expected(), atol=1e-7)
    tuple_batches = [(x, y, "extra") for x, y in BATCHES]
    assert torch.allclose(compute_class_prototypes(Recorder(), tuple_batches, 3), expected(), atol=1e-7)
    # the datamodule's batches (the batch contract of ekd/data/batch.py)
    face_batches = [FaceBatch(x, y, torch.arange(3), torch.zeros(3, dtype=torch.bool)) for x, y in BATCHES]
    assert torch.allclose(compute_class_prototypes(Recorder(), face_batches, 3), expected(), atol=1e-7)


class RowSums(nn.Module):
    """'Teacher' of N x 3 x 2 x 2 float images: (sum of column 0, sum of column 1) of each image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float32  # uint8 batches are normalised before the teacher sees them
        return x.sum(dim=(1, 2))


def test_uint8_face_batches_are_mirrored_and_normalised_first():
    # 2 x 2 images: pixel 255 in column 0, 0 in column 1 -> normalised column 0 is +1, column 1 is -1
    image = torch.zeros(3, 2, 2, dtype=torch.uint8)
    image[:, :, 0] = 255
    images = image.expand(4, 3, 2, 2).contiguous()
    labels, flipped = torch.tensor([0, 0, 1, 1]), torch.tensor([False, False, True, True])
    batch = FaceBatch(images, labels, torch.arange(4), flipped)
    protos = compute_class_prototypes(RowSums(), [batch], num_classes=2)
    # class 0 as stored: (6, -6) -> (1, -1) / sqrt 2; class 1 mirrored: (-6, 6) -> (-1, 1) / sqrt 2
    r = 1 / math.sqrt(2)
    assert torch.allclose(protos, torch.tensor([[r, -r], [-r, r]]), atol=1e-7)


def test_prototypes_from_a_teacher_embedding_cache():
    """Every cached image and its mirror, read in chunks: the same as a pass over both embeddings."""

    class Cache:
        num_images = 3
        labels = [0, 1, 2]
        plain = torch.tensor([[3.0, 0.0], [0.0, -2.0], [1.0, 1.0]])
        mirrored = torch.tensor([[0.0, 5.0], [0.0, -1.0], [2.0, 2.0]])

        def lookup(self, indices, flipped):
            return torch.where(flipped[:, None], self.mirrored[indices], self.plain[indices])

    cache = Cache()
    both = [(cache.plain, torch.arange(3)), (cache.mirrored, torch.arange(3))]
    direct = compute_class_prototypes(Recorder(), both, 3)
    for chunk in (1, 2, 65536):
        torch.testing.assert_close(cached_class_prototypes(cache, 3, chunk=chunk), direct)


def test_errors():
    with pytest.raises(ValueError, match=r"2 of 5 classes have no image in the loader \(classes 3, 4\)"):
        compute_class_prototypes(Recorder(), BATCHES, num_classes=5)
    with pytest.raises(ValueError, match=r"batch 0 has labels in \[0, 2\], outside \[0, 2\)"):
        compute_class_prototypes(Recorder(), BATCHES, num_classes=2)
    with pytest.raises(ValueError, match="no batch"):
        compute_class_prototypes(Recorder(), [], num_classes=2)
    with pytest.raises(ValueError, match="keys"):
        compute_class_prototypes(Recorder(), [{"x": 1}], num_classes=2)


def test_cache_miss_hit_refusal_and_overwrite(tmp_path):
    path = tmp_path / "cache" / "protos.pt"
    first = load_or_compute_prototypes(path, "teacher-abc|ds-1", Recorder(), BATCHES, 3)
    assert path.exists() and torch.allclose(first, expected(), atol=1e-7)
    hit = load_or_compute_prototypes(path, "teacher-abc|ds-1", Forbidden(), BATCHES, 3)
    assert torch.equal(hit, first)
    with pytest.raises(
        ValueError, match=r"made for fingerprint 'teacher-abc\|ds-1'.*'teacher-xyz\|ds-1'.*overwrite"
    ):
        load_or_compute_prototypes(path, "teacher-xyz|ds-1", Forbidden(), BATCHES, 3)
    # overwrite: recomputed with the new teacher (negated embeddings) and the file now carries the new key
    negating = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        negating.weight.copy_(-torch.eye(2))
    redone = load_or_compute_prototypes(path, "teacher-xyz|ds-1", negating, BATCHES, 3, overwrite=True)
    assert torch.allclose(redone, -expected(), atol=1e-6)
    again = load_or_compute_prototypes(path, "teacher-xyz|ds-1", Forbidden(), BATCHES, 3)
    assert torch.equal(again, redone)


def test_corrupt_cache_is_named(tmp_path):
    path = tmp_path / "protos.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=f"prototypes cache {path} is not a readable"):
        load_or_compute_prototypes(path, "fp", Forbidden(), BATCHES, 3)
    torch.save({"something": 1}, path)
    with pytest.raises(ValueError, match="is not an ekd.prototypes/1 file"):
        load_or_compute_prototypes(path, "fp", Forbidden(), BATCHES, 3)
