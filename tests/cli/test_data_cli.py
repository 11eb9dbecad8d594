"""``ekd-data``: pack, synth, reindex, info, and the one-line error on bad input."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ekd.cli.data import main
from ekd.data.datasets import FaceRecordDataset


def _folder(root):
    for name, count in (("x", 2), ("y", 1)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((130, 120, 3), 30 * i + 50, np.uint8)).save(root / name / f"{i}.jpg")


def test_pack_reindex_info(tmp_path, capsys):
    _folder(tmp_path / "faces")
    out = tmp_path / "rec"
    assert main(["pack", str(tmp_path / "faces"), str(out)]) == 0
    assert "packed 3 images of 2 identities" in capsys.readouterr().out
    dataset = FaceRecordDataset(out)
    assert dataset.num_classes == 2 and dataset.labels.tolist() == [0, 0, 1]
    original = (out / "train.idx").read_text()
    (out / "train.idx").unlink()
    assert main(["reindex", str(out / "train.rec")]) == 0
    assert (out / "train.idx").read_text() == original
    assert main(["info", str(out)]) == 0
    assert "3 images, 2 classes" in capsys.readouterr().out


def test_synth_writes_rec_and_bins(tmp_path, capsys):
    out = tmp_path / "synth"
    argv = ["synth", str(out), "--identities", "3", "--images-per-identity", "2", "--pairs", "4",
            "--heldout-identities", "2", "--seed", "3"]  # fmt: skip
    assert main(argv) == 0
    assert "wrote 6 images of 3 identities" in capsys.readouterr().out
    for name in (
        "train.rec",
        "train.idx",
        "property",
        "synth_frontal.bin",
        "synth_pose.bin",
        "synth_age.bin",
    ):
        assert (out / name).is_file()
    assert main(["info", str(out / "synth_age.bin")]) == 0
    assert "4 pairs (2 same)" in capsys.readouterr().out


def test_errors_are_one_line_with_status_2(tmp_path, capsys):
    _folder(tmp_path / "faces")
    (tmp_path / "faces" / "empty").mkdir()
    assert main(["pack", str(tmp_path / "faces"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "empty: identity folder has no images" in err
    (tmp_path / "broken.rec").write_bytes(b"\x00" * 16)
    assert main(["reindex", str(tmp_path / "broken.rec")]) == 2
    assert "wrong magic 0x00000000 at byte offset 0" in capsys.readouterr().err
