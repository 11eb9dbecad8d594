"""``ekd-data``: pack, synth (its recorded arguments, refusal of a folder with other files), reindex, info,
the usage examples of --help, and the one-line error on bad input."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
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
    # a template set of 2 identities x 2 templates x 1 image (the default, 300 identities, takes 25 s)
    argv = ["synth", str(out), "--identities", "3", "--images-per-identity", "2", "--pairs", "4",
            "--heldout-identities", "2", "--seed", "3", "--template-identities", "2",
            "--templates-per-identity", "2", "--images-per-template", "1"]  # fmt: skip
    assert main(argv) == 0
    assert "wrote 6 images of 3 identities" in capsys.readouterr().out
    for name in (
        "train.rec",
        "train.idx",
        "property",
        "synth_frontal.bin",
        "synth_pose.bin",
        "synth_age.bin",
        "synth_ijb.npz",
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


def test_help_shows_usage_examples(capsys):
    for argv, example in (
        ([], "ekd-data synth data/synth --identities 20 --images-per-identity 8"),
        (["pack"], "ekd-data pack faces/ data/mydata"),
        (["synth"], "ekd-train experiment=synthetic/teacher data.root=data/synth data.synthetic=null"),
        (["reindex"], "ekd-data reindex data/mydata/train.rec --idx /tmp/train.idx"),
        (["info"], "ekd-data info data/synth/synth_pose.bin"),
    ):
        with pytest.raises(SystemExit) as done:
            main([*argv, "--help"])
        out = capsys.readouterr().out
        assert done.value.code == 0 and "example" in out and example in out, (argv, out)
    # the raw formatter keeps the example lines as written (one command per line)
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    assert "\n  ekd-data synth data/synth --identities 20 --images-per-identity 8 --pairs 100 --seed 1\n" in (
        capsys.readouterr().out
    )


def test_synth_records_its_arguments_for_the_synthetic_source(tmp_path, capsys):
    import json

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import ekd.cli.train  # noqa: F401 - registers the config schema
    from ekd.config import CONF_DIR
    from ekd.data.datamodule import FaceDataModule

    out = tmp_path / "synth"
    argv = ["synth", str(out), "--identities", "3", "--images-per-identity", "2", "--pairs", "4",
            "--heldout-identities", "2", "--seed", "3", "--quality", "80", "--template-identities", "2",
            "--templates-per-identity", "2", "--images-per-template", "1", "--pair-images", "2"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"arguments recorded in {out / 'synthetic.json'}" in printed
    assert f"ekd-train data.source=synthetic data.root={out}" in printed
    recorded = json.loads((out / "synthetic.json").read_text())
    expected = {"identities": 3, "images_per_identity": 2, "pairs": 4, "heldout_identities": 2, "seed": 3,
                "difficulty": 1.0, "quality": 80, "template_identities": 2, "templates_per_identity": 2,
                "images_per_template": 1, "pair_images": 2}  # fmt: skip
    assert {k: recorded[k] for k in expected} == expected
    # plain files with the usual permissions (what the umask leaves of rw-rw-rw-)
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("train.rec", "train.idx", "property", "synth_pose.bin", "synth_ijb.npz", "synthetic.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name
    # the data source takes the recorded arguments when none are given ...
    dm = FaceDataModule(source="synthetic", root=str(out), num_workers=0)
    assert dm.num_classes == 3 and len(dm.dataset) == 6 and dm.synthetic_config.quality == 80
    # ... also through the training config, with the data.synthetic settings dropped
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data.root={out}", "data.synthetic=null"])
    assert instantiate(cfg.data).num_classes == 3


def test_synth_refuses_a_folder_with_other_files(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "me.jpg").write_bytes(b"\xff\xd8")
    assert main(["synth", str(folder), "--identities", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {folder} is not empty and holds no generated synthetic benchmark")
    assert "it contains me.jpg." in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in folder.iterdir()] == ["me.jpg"]
