"""Dataset fingerprints: follow samples and labels, not the location; only on-disk datasets have one."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ekd.data import DataError, FaceFolderDataset, FaceRecordDataset, dataset_fingerprint, write_face_records
from ekd.data.images import encode_png

LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3]


def _write_records(root: Path, labels=LABELS, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in labels]
    write_face_records(root, [encode_png(im) for im in images], labels)
    return root


def test_record_fingerprint_follows_content_not_location(tmp_path):
    data = _write_records(tmp_path / "data")
    reference = dataset_fingerprint(FaceRecordDataset(data))
    assert len(reference) == 64 and int(reference, 16) >= 0  # hex SHA-256
    assert dataset_fingerprint(FaceRecordDataset(data, flip=False)) == reference
    moved = shutil.copytree(data, tmp_path / "elsewhere")
    assert dataset_fingerprint(FaceRecordDataset(moved)) == reference
    (moved / "property").write_text("5,112,112")  # one more class declared
    assert dataset_fingerprint(FaceRecordDataset(moved)) != reference
    other = _write_records(tmp_path / "other", labels=[0, 0, 1, 1, 2, 2, 3, 3, 3, 3, 3])
    assert dataset_fingerprint(FaceRecordDataset(other)) != reference


def test_folder_fingerprint_is_the_file_list(tmp_path):
    from PIL import Image

    for person in ("a", "b"):
        (tmp_path / "f" / person).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (112, 112), (i * 40, 10, 10)).save(tmp_path / "f" / person / f"{i}.png")
    first = dataset_fingerprint(FaceFolderDataset(tmp_path / "f"))
    assert dataset_fingerprint(FaceFolderDataset(shutil.copytree(tmp_path / "f", tmp_path / "g"))) == first
    (tmp_path / "g" / "b" / "1.png").rename(tmp_path / "g" / "b" / "2.png")
    assert dataset_fingerprint(FaceFolderDataset(tmp_path / "g")) != first


def test_other_datasets_have_no_fingerprint():
    with pytest.raises(DataError, match="TensorDataset has no dataset fingerprint"):
        dataset_fingerprint(torch.utils.data.TensorDataset(torch.zeros(2)))
