"""FaceRecordDataset / FaceFolderDataset / pack_folder: labels, pixels, both header styles, bad input."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from ekd.data.batch import IndexedDataset, normalise_batch
from ekd.data.datasets import FaceFolderDataset, FaceRecordDataset, pack_folder, write_face_records
from ekd.data.errors import DataError, RecordIOError
from ekd.data.images import decode_image, encode_jpeg, encode_png, fit_to_size
from ekd.data.recordio import RecordWriter, pack_payload, unpack_payload


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(n)]


LABELS = [0, 0, 0, 1, 2, 2]


@pytest.fixture()
def insightface_root(tmp_path):
    images = _images(len(LABELS))
    write_face_records(tmp_path, [encode_png(im) for im in images], LABELS, num_classes=3)
    return tmp_path, images


def test_insightface_layout_header_and_identity_records(insightface_root):
    root, _ = insightface_root
    dataset = FaceRecordDataset(root, flip=False)
    reader = dataset.reader
    header0 = reader.read_header(0)
    # Record 0: [A, B] with A = 1 + number of images, B = A + number of identities.
    np.testing.assert_array_equal(header0.label, [7.0, 10.0])
    ranges = [tuple(reader.read_header(k).label.tolist()) for k in (7, 8, 9)]
    assert ranges == [(1.0, 4.0), (4.0, 5.0), (5.0, 7.0)]
    assert (root / "property").read_text() == "3,112,112"
    assert dataset.labels.dtype == np.int64
    np.testing.assert_array_equal(dataset.labels, LABELS)
    assert dataset.num_classes == 3 and len(dataset) == 6


def _host_normalised(hwc: np.ndarray, flip: bool) -> torch.Tensor:
    """The former host path, computed independently: numpy mirror, float32 (x - 127.5) / 127.5, CHW."""
    if flip:
        hwc = hwc[:, ::-1]
    out = (hwc.astype(np.float32) - np.float32(127.5)) / np.float32(127.5)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def test_samples_are_uint8_rgb_and_normalise_on_the_batch(insightface_root):
    root, images = insightface_root
    dataset = FaceRecordDataset(root, flip=False)
    image, label = dataset[4]
    # the item is the decoded image, nothing more: uint8 RGB as stored
    assert label == 2 and image.dtype == torch.uint8 and image.shape == (3, 112, 112)
    assert np.array_equal(image.permute(1, 2, 0).numpy(), images[4])
    normalised = normalise_batch(image.unsqueeze(0))[0]
    assert normalised.dtype == torch.float32
    expected = (torch.from_numpy(images[4]).permute(2, 0, 1).double() - 127.5) / 127.5
    torch.testing.assert_close(normalised.double(), expected, rtol=0, atol=1e-6)
    assert torch.equal(normalised, _host_normalised(images[4], flip=False))
    assert normalised.min() >= -1.0 and normalised.max() <= 1.0


def test_flip_is_random_and_horizontal(insightface_root):
    root, images = insightface_root
    plain = FaceRecordDataset(root, flip=False)[0][0]
    # the random flip of a plain index is drawn by IndexedDataset (reported, applied on the batch)
    flipping = IndexedDataset(FaceRecordDataset(root, flip=True))
    torch.manual_seed(0)
    seen = {"plain": 0, "flipped": 0}
    for _ in range(20):
        image, label, index, flipped = flipping[0]
        assert torch.equal(image, plain) and (label, index) == (0, 0)  # the item is never mirrored
        normalised = normalise_batch(image.unsqueeze(0), torch.tensor([flipped]))[0]
        if not flipped:
            assert torch.equal(normalised, _host_normalised(images[0], flip=False))
            seen["plain"] += 1
        else:
            assert torch.equal(normalised, _host_normalised(images[0], flip=True))
            torch.testing.assert_close(normalised, normalise_batch(plain[None])[0].flip(-1), rtol=0, atol=0)
            seen["flipped"] += 1
    assert seen["plain"] > 0 and seen["flipped"] > 0


def test_transform_keeps_the_host_path_with_its_flip(insightface_root):
    root, images = insightface_root
    dataset = FaceRecordDataset(root, transform=lambda x: x, flip=True)
    for flip in (False, True):
        image, _ = dataset[(1, flip)]
        assert torch.equal(image, _host_normalised(images[1], flip))
    # float items are final: the batch transform leaves them alone
    image = dataset[(1, True)][0].unsqueeze(0)
    assert normalise_batch(image, torch.tensor([True])) is image


def test_transform_applies_after_normalisation(insightface_root):
    root, _ = insightface_root
    dataset = FaceRecordDataset(root, transform=lambda x: x * 0 + 0.25, flip=False)
    assert torch.all(dataset[0][0] == 0.25)


def test_im2rec_file_without_header_and_label_arrays(tmp_path):
    images = _images(3)
    labels = [[2.0, 0.5], 0.0, [1.0, 9.0, 9.0]]  # label arrays: the first value is the class
    with RecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        for key, (image, label) in enumerate(zip(images, labels)):
            writer.write(key, pack_payload(label, encode_png(image), id=key))
    dataset = FaceRecordDataset(tmp_path, flip=False)
    np.testing.assert_array_equal(dataset.keys, [0, 1, 2])
    np.testing.assert_array_equal(dataset.labels, [2, 0, 1])
    assert dataset.num_classes == 3  # no property file: max label + 1
    assert dataset[0][1] == 2


def test_identity_ranges_inconsistent_with_labels_fall_back_to_headers(tmp_path):
    images = _images(2)
    with RecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        writer.write(0, pack_payload([3.0, 4.0], b""))
        writer.write(1, pack_payload(5.0, encode_png(images[0]), id=1))
        writer.write(2, pack_payload(5.0, encode_png(images[1]), id=2))
        writer.write(3, pack_payload([1.0, 3.0], b"", id=3))
    (tmp_path / "property").write_text("6,112,112")
    dataset = FaceRecordDataset(tmp_path)
    np.testing.assert_array_equal(dataset.labels, [5, 5])


def _write_identity_layout(root, header_labels, ranges, first_identity=None) -> None:
    """insightface layout with the given image header labels and identity ranges, written record by
    record with the project's writer (write_face_records always writes consistent ranges)."""
    images = _images(len(header_labels))
    first = len(header_labels) + 1 if first_identity is None else first_identity
    with RecordWriter(root / "train.rec", root / "train.idx") as writer:
        writer.write(0, pack_payload([first, first + len(ranges)], b""))
        for key, (image, label) in enumerate(zip(images, header_labels), start=1):
            writer.write(key, pack_payload(float(label), encode_png(image), id=key))
        for i, (start, end) in enumerate(ranges):
            writer.write(first + i, pack_payload([start, end], b"", id=first + i))


def _count_header_reads(monkeypatch) -> list[int]:
    from ekd.data.recordio import RecordReader

    seen: list[int] = []
    original = RecordReader.read_header

    def counting(self, key):
        seen.append(int(key))
        return original(self, key)

    monkeypatch.setattr(RecordReader, "read_header", counting)
    return seen


def test_good_identity_ranges_give_the_labels_cheaply(tmp_path, caplog, monkeypatch):
    written = [0, 0, 0, 1, 2, 2]
    _write_identity_layout(tmp_path, written, [(1, 4), (4, 5), (5, 7)])
    reads = _count_header_reads(monkeypatch)
    with caplog.at_level("INFO", logger="ekd.data.datasets"):
        dataset = FaceRecordDataset(tmp_path, flip=False)
    assert dataset.labels.tolist() == written and dataset.keys.tolist() == [1, 2, 3, 4, 5, 6]
    # 3 identity records + first and last image of each identity (keys 1, 3 | 4 | 5, 6): not all images
    assert sorted(reads) == [1, 3, 4, 5, 6, 7, 8, 9]
    # the same labels through write_face_records (what ekd-data pack and the synthetic benchmark write)
    packed = tmp_path / "packed"
    write_face_records(packed, [encode_png(im) for im in _images(6)], written)
    with caplog.at_level("INFO", logger="ekd.data.datasets"):
        assert FaceRecordDataset(packed).labels.tolist() == written
    assert not caplog.records


@pytest.mark.parametrize(
    ("written", "ranges", "why"),
    [
        # (b) identity 1's range [2, 5) overlaps identity 0's [1, 3)
        ([0, 0, 1, 1, 2], [(1, 3), (2, 5), (5, 6)], r"overlapping ranges: identity record 7 has \[2, 5\)"),
        # (c) the ranges of identities 0 and 1 are swapped
        (
            [0, 0, 1, 1, 2],
            [(3, 5), (1, 3), (5, 6)],
            r"unsorted ranges: identity record 7 has \[1, 3\) after \[3, 5\) of record 6",
        ),
        # (d) a partition of the images, but record 4 says 2 where the range says identity 1 (the last
        # image of its range: checking only the first image of each identity would miss it)
        (
            [0, 0, 1, 2, 2],
            [(1, 3), (3, 5), (5, 6)],
            r"image record 4 has header label 2 but lies in the range",
        ),
        # (d) the headers number the identities differently from the identity records
        ([1, 1, 0, 0, 2], [(1, 3), (3, 5), (5, 6)], r"image record 1 has header label 1 .* identity 0"),
        # a gap: image 3 belongs to no identity
        ([0, 0, 1, 1, 1], [(1, 3), (4, 6)], r"image records 3\.\.3 belong to no identity"),
        # ranges end before the last image
        ([0, 0, 1, 1, 1], [(1, 3), (3, 5)], r"the identity ranges end at 5, the image records at 6"),
        # no identity records at all
        ([3, 3, 0, 1, 2], [], r"record 0 announces no identity records"),
    ],
)
def test_identity_ranges_that_do_not_determine_the_labels_read_every_header(
    tmp_path, caplog, written, ranges, why
):
    _write_identity_layout(tmp_path, written, ranges)
    with caplog.at_level("WARNING", logger="ekd.data.datasets"):
        dataset = FaceRecordDataset(tmp_path, flip=False)
    assert dataset.labels.tolist() == written and dataset.keys.tolist() == [1, 2, 3, 4, 5]
    assert [dataset[i][1] for i in range(5)] == written
    (record,) = caplog.records
    message = record.getMessage()
    assert record.levelname == "WARNING" and "do not determine the labels" in message
    assert re.search(why, message), message
    assert re.search(r"read the labels of all 5 image record headers instead \(\d+\.\d s\)", message)


def test_non_integer_header_label_names_file_and_record(tmp_path):
    # in a checked position of the identity ranges (the first image of identity 1)
    _write_identity_layout(tmp_path, [0, 0, 1.5, 1], [(1, 3), (3, 5)])
    with pytest.raises(DataError, match=r"train\.rec record 3: header label 1\.5 is not an integer class"):
        FaceRecordDataset(tmp_path)
    # read with every header (im2rec layout: no header record)
    other = tmp_path / "im2rec"
    other.mkdir()
    with RecordWriter(other / "train.rec", other / "train.idx") as writer:
        for key, label in enumerate([0.0, float("nan"), 2.25]):
            writer.write(key, pack_payload(label, b"", id=key))
    with pytest.raises(
        DataError, match=r"im2rec/train\.rec record 1: header label nan .*\(2 records have such"
    ):
        FaceRecordDataset(other)


def test_label_out_of_range_names_record(insightface_root):
    root, _ = insightface_root
    (root / "property").write_text("2,112,112")
    with pytest.raises(
        DataError, match=r"train\.rec: record key 5 has label 2, expected 0 <= label < num_classes = 2"
    ):
        FaceRecordDataset(root)


def test_malformed_property(insightface_root):
    root, _ = insightface_root
    (root / "property").write_text("three,112")
    with pytest.raises(DataError, match=r"property: content 'three,112'"):
        FaceRecordDataset(root)


def test_missing_files(tmp_path):
    with pytest.raises(RecordIOError, match=r"train\.rec: record file not found"):
        FaceRecordDataset(tmp_path)


def test_undecodable_payload_names_record(tmp_path):
    with RecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        writer.write(0, pack_payload(0.0, b"\xff\xd8 not really a jpeg", id=0))
    dataset = FaceRecordDataset(tmp_path)
    with pytest.raises(DataError, match=r"train\.rec record 0: cannot decode"):
        dataset[0]


def test_jpeg_decoders_agree_with_pil(tmp_path):
    image = _images(1)[0]
    data = encode_jpeg(image, quality=90)
    with Image.open(io.BytesIO(data)) as im:
        reference = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(decode_image(data).permute(1, 2, 0).numpy(), reference)


def test_fit_to_size_crops_centre_and_resizes():
    wide = torch.zeros(3, 112, 200, dtype=torch.uint8)
    wide[0] = torch.arange(200, dtype=torch.uint8)[None, :]  # red = column index
    out = fit_to_size(wide)
    assert out.shape == (3, 112, 112)
    # Shorter side already 112: no resampling, crop offset (200 - 112) // 2 = 44.
    np.testing.assert_array_equal(out[0, 0].numpy(), np.arange(44, 156))
    constant = torch.full((3, 224, 300), 77, dtype=torch.uint8)
    assert torch.all(fit_to_size(constant) == 77)


def _folder(tmp_path, sizes=((112, 112), (150, 120))):
    root = tmp_path / "faces"
    rng = np.random.default_rng(1)
    saved = {}
    for name, count in (("bob", 2), ("alice", 1), ("carol", 3)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            w, h = sizes[i % len(sizes)]
            # Smooth images: JPEG keeps them close, so re-encoding can be checked pixel-wise.
            ramp = np.linspace(0.0, 60.0, w)[None, :, None] + np.linspace(0.0, 60.0, h)[:, None, None]
            image = (rng.uniform(40, 140, 3)[None, None, :] + ramp).astype(np.uint8)
            path = root / name / f"{i}.{'jpg' if i % 2 == 0 else 'png'}"
            Image.fromarray(image).save(path, quality=95)
            saved[path] = image
    (root / "notes.txt").write_text("ignored: not a folder")
    return root, saved


def test_folder_dataset_sorted_labels_and_resize(tmp_path):
    root, _ = _folder(tmp_path)
    dataset = FaceFolderDataset(root, flip=False)
    assert dataset.classes == ["alice", "bob", "carol"]
    np.testing.assert_array_equal(dataset.labels, [0, 1, 1, 2, 2, 2])
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert image.shape == (3, 112, 112) and label == dataset.labels[i]


def test_empty_identity_folder(tmp_path):
    root, _ = _folder(tmp_path)
    (root / "dave").mkdir()
    with pytest.raises(DataError, match=r"dave: identity folder has no images"):
        FaceFolderDataset(root)
    with pytest.raises(DataError, match="image folder not found"):
        FaceFolderDataset(tmp_path / "nope")


def test_pack_folder_round_trip(tmp_path):
    root, _ = _folder(tmp_path)
    out = tmp_path / "packed"
    assert pack_folder(root, out) == (6, 3)
    records = FaceRecordDataset(out, flip=False)
    folder = FaceFolderDataset(root, flip=False)
    np.testing.assert_array_equal(records.labels, folder.labels)
    assert records.num_classes == 3
    for i, (path, _) in enumerate(folder.samples):
        payload_image, _ = records.read_uint8(i)
        if path.suffix == ".jpg" and Image.open(path).size == (112, 112):
            # 112 x 112 JPEGs are stored byte for byte.
            assert unpack_payload(records.reader.read(int(records.keys[i])))[1] == path.read_bytes()
        reference = fit_to_size(decode_image(path.read_bytes()))
        diff = (payload_image.int() - reference.int()).abs().float().mean()
        assert diff < 2.0  # JPEG re-encoding of a smooth image at quality 95


def test_index_flip_pairs(insightface_root):
    root, images = insightface_root
    dataset = FaceRecordDataset(root, flip=True)
    image, label = dataset[(2, True)]
    # the item is the image as stored; the pair's flip is applied on the batch (FaceBatch.flipped)
    assert image.dtype == torch.uint8 and np.array_equal(image.permute(1, 2, 0).numpy(), images[2])
    image = normalise_batch(image.unsqueeze(0), torch.tensor([True]))[0]
    expected = (torch.from_numpy(images[2]).permute(2, 0, 1).double().flip(-1) - 127.5) / 127.5
    torch.testing.assert_close(image.double(), expected, rtol=0, atol=1e-6)
    assert label == 0
    # the flip of a pair is taken as given, never drawn (the datamodule reports it in FaceBatch.flipped)
    assert all(torch.equal(dataset[(2, False)][0], dataset[(2, False)][0]) for _ in range(4))
    torch.testing.assert_close(normalise_batch(dataset[(2, False)][0][None])[0].flip(-1), image)
    with pytest.raises(DataError, match=r"sample key \(1, 2, 3\)"):
        dataset[(1, 2, 3)]


def test_dataloader_workers_read_through_their_own_handles(insightface_root):
    root, _ = insightface_root
    dataset = FaceRecordDataset(root, flip=False)
    dataset[0]  # the parent opens its handle before the workers fork
    serial = [b for b in torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=0)]
    parallel = [b for b in torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)]
    for (xs, ys), (xp, yp) in zip(serial, parallel):
        assert torch.equal(xs, xp) and torch.equal(ys, yp)
