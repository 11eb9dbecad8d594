"""The training batch contract: FaceBatch, as_face_batch, collation, and Lightning's device transfer."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ekd.data.batch import FaceBatch, IndexedDataset, as_face_batch, collate_face_batch, normalise_batch


def test_face_batch_from_a_tuple_or_a_list():
    images, labels = torch.zeros(3, 3, 112, 112), torch.tensor([0, 1, 1])
    for plain in ((images, labels), [images, labels]):
        batch = as_face_batch(plain)
        assert isinstance(batch, FaceBatch) and batch.images is images and batch.labels is labels
        assert batch.indices is None and batch.flipped is None and batch.teacher_embedding is None
    assert as_face_batch(batch) is batch
    # what a TensorDataset loader yields is a valid training batch
    loaded = next(iter(DataLoader(TensorDataset(images, labels), batch_size=3)))
    assert torch.equal(as_face_batch(loaded).labels, labels)


@pytest.mark.parametrize(
    ("batch", "what"),
    [((torch.zeros(1), torch.zeros(1), torch.zeros(1)), "a sequence of 3 items"), ({"images": 1}, "dict")],
)
def test_other_batches_are_refused(batch, what):
    with pytest.raises(
        ValueError, match=f"must be \\(images, labels\\) or an ekd.data.FaceBatch, got {what}"
    ):
        as_face_batch(batch)


def test_collation_of_indexed_samples_in_worker_processes():
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()

    class Mirrorable(TensorDataset):
        def __getitem__(self, key):
            index, flipped = key if isinstance(key, tuple) else (key, False)
            image, label = super().__getitem__(index)
            return (image.flip(-1) if flipped else image), label

    dataset = IndexedDataset(Mirrorable(images, torch.tensor([0, 0, 1, 1])))
    keys = [[(3, True), (0, False)], [1, 2]]  # pairs: the sampler's flips; plain indices: no flip
    for workers in (0, 1):
        loader = DataLoader(dataset, batch_sampler=keys, collate_fn=collate_face_batch, num_workers=workers)
        first, second = list(loader)
        assert isinstance(first, FaceBatch) and first.indices.tolist() == [3, 0]
        assert first.flipped.tolist() == [True, False] and first.labels.tolist() == [1, 0]
        assert first.indices.dtype == torch.int64 and first.flipped.dtype == torch.bool
        assert torch.equal(first.images[0], images[3].flip(-1))
        assert second.indices.tolist() == [1, 2] and second.flipped.tolist() == [False, False]


def test_lightning_moves_and_converts_every_field():
    from lightning_utilities.core.apply_func import apply_to_collection
    from pytorch_lightning.utilities import move_data_to_device

    batch = FaceBatch(
        torch.zeros(2, 3, 4, 4),
        torch.tensor([0, 1]),
        torch.tensor([5, 6]),
        torch.tensor([True, False]),
        torch.ones(2, 8),
    )
    moved = move_data_to_device(batch, torch.device("meta"))
    assert isinstance(moved, FaceBatch) and moved is not batch
    assert all(
        getattr(moved, name).device.type == "meta"
        for name in ("images", "labels", "indices", "flipped", "teacher_embedding")
    )
    assert batch.images.device.type == "cpu"  # the original is left alone
    # what precision plugins do (e.g. bf16-true casts floating tensors): fields keep their names
    half = apply_to_collection(batch, torch.Tensor, lambda t: t.bfloat16() if t.is_floating_point() else t)
    assert half.teacher_embedding.dtype == torch.bfloat16 and half.flipped.dtype == torch.bool
    # no teacher embedding: None stays None
    assert move_data_to_device(FaceBatch(batch.images, batch.labels), "cpu").teacher_embedding is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pin_memory_pins_every_tensor():
    batch = FaceBatch(
        torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([True, False])
    )
    pinned = batch.pin_memory()
    assert pinned.images.is_pinned() and pinned.flipped.is_pinned() and pinned.teacher_embedding is None


def test_normalise_batch_mirrors_flipped_rows_and_leaves_float_alone():
    values = torch.arange(256, dtype=torch.uint8)
    images = torch.stack([values.roll(k).view(1, 16, 16).expand(3, 16, 16) for k in range(3)])
    flipped = torch.tensor([False, True, False])
    out = normalise_batch(images, flipped)
    assert out.dtype == torch.float32 and out.shape == images.shape
    # independently: the float32 value of each byte, (x - 127.5) / 127.5, with the flipped row mirrored
    table = [(float(v) - 127.5) / 127.5 for v in range(256)]
    for row in range(3):
        source = images[row].flip(-1) if flipped[row] else images[row]
        expected = torch.tensor([table[int(v)] for v in source.flatten()], dtype=torch.float32)
        assert torch.equal(out[row].flatten(), expected.view(-1))
    assert out.min() == -1.0 and out.max() == 1.0
    assert torch.equal(normalise_batch(images), normalise_batch(images, torch.zeros(3, dtype=torch.bool)))
    # float input is final (already normalised and mirrored): returned as is, however often applied
    assert normalise_batch(out, flipped) is out
    batch = FaceBatch(images, torch.zeros(3, dtype=torch.long), torch.arange(3), flipped)
    once = batch.normalised()
    assert torch.equal(once.images, out) and torch.equal(once.normalised().images, out)
    plain = FaceBatch(out, batch.labels)
    assert plain.normalised() is plain


def test_indexed_dataset_draws_and_reports_the_flip_of_plain_keys():
    class Flipping(TensorDataset):
        flip = True

        def __getitem__(self, key):
            assert isinstance(key, tuple)  # the drawn flip is passed on as a pair
            return super().__getitem__(key[0])

    dataset = IndexedDataset(Flipping(torch.zeros(2, 3, 2, 2, dtype=torch.uint8), torch.tensor([0, 1])))
    torch.manual_seed(0)
    flips = [dataset[1][3] for _ in range(20)]
    assert any(flips) and not all(flips)
    assert dataset[(1, True)][2:] == (1, True) and dataset[(0, False)][2:] == (0, False)
