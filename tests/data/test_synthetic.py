"""Synthetic identity benchmark: determinism, identity structure, nuisance effects, real output formats."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ekd.data.bins import load_bin
from ekd.data.datasets import FaceRecordDataset
from ekd.data.errors import DataError
from ekd.data.synthetic import (
    SyntheticConfig,
    identity_images,
    render_image,
    sample_identity,
    sample_nuisance,
    verification_pairs,
    write_synthetic,
)

TINY = SyntheticConfig(identities=4, images_per_identity=3, pairs=6, heldout_identities=3, seed=5)


def test_identity_images_are_deterministic_and_seed_dependent():
    a = identity_images(seed=1, identity=2, count=3)
    b = identity_images(seed=1, identity=2, count=3)
    assert a.dtype == torch.uint8 and a.shape == (3, 3, 112, 112)
    assert torch.equal(a, b)
    assert not torch.equal(a, identity_images(seed=2, identity=2, count=3))
    # Images of one identity differ from each other (nuisance), and the prefix does not depend on count.
    assert not torch.equal(a[0], a[1])
    assert torch.equal(identity_images(seed=1, identity=2, count=1)[0], a[0])


def _frontal(rng: np.random.Generator) -> dict:
    q = sample_nuisance(rng, "frontal", difficulty=0.0, base_age=0.2)
    q["noise"] = np.asarray(0.0)
    return q


def test_zero_difficulty_removes_pose_and_noise():
    p = sample_identity(np.random.default_rng(0))
    q = _frontal(np.random.default_rng(1))
    assert float(q["rot"]) == 0.0 and float(q["yaw"]) == 0.0 and float(q["scale"]) == 1.0
    assert float(q["blur"]) == 0.0 and float(q["occ_on"]) == 0.0
    one = render_image(p, q, np.random.default_rng(2))
    two = render_image(p, q, np.random.default_rng(3))  # the noise generator does not matter at noise 0
    assert np.array_equal(one, two)


def test_same_identity_is_closer_than_other_identity_without_nuisance():
    # Raw-pixel sanity check: with pose, light and background fixed, the identity parameters are
    # what changes the picture.
    q = _frontal(np.random.default_rng(1))
    faces = [
        render_image(sample_identity(np.random.default_rng(i)), q, np.random.default_rng(0)) for i in range(3)
    ]
    q2 = dict(q, age=np.asarray(0.3))
    again = render_image(sample_identity(np.random.default_rng(0)), q2, np.random.default_rng(0))
    same = np.abs(again.astype(int) - faces[0]).mean()
    other = min(np.abs(f.astype(int) - faces[0]).mean() for f in faces[1:])
    assert same < other


def test_yaw_moves_the_inner_features():
    p = sample_identity(np.random.default_rng(0))
    q = _frontal(np.random.default_rng(1))
    left = render_image(p, dict(q, yaw=np.asarray(-0.8)), np.random.default_rng(0))
    right = render_image(p, dict(q, yaw=np.asarray(0.8)), np.random.default_rng(0))
    assert np.abs(left.astype(int) - right).mean() > 2.0


def test_age_greys_the_hair_and_adds_wrinkles():
    p = sample_identity(np.random.default_rng(4))
    p["hair"] = np.array([20.0, 15.0, 10.0])  # dark hair
    q = _frontal(np.random.default_rng(1))
    young = render_image(p, dict(q, age=np.asarray(0.0)), np.random.default_rng(0)).astype(int)
    old = render_image(p, dict(q, age=np.asarray(1.0)), np.random.default_rng(0)).astype(int)
    assert old.mean() > young.mean()  # grey hair is lighter than dark hair
    assert np.abs(old - young).mean() > 2.0


def test_verification_pairs_structure():
    images, issame = verification_pairs(TINY, "age")
    assert images.shape == (12, 3, 112, 112) and issame.tolist() == [True, False] * 3
    again, _ = verification_pairs(TINY, "age")
    assert torch.equal(images, again)
    with pytest.raises(DataError, match="unknown synthetic verification set 'side'"):
        verification_pairs(TINY, "side")


def test_write_synthetic_real_formats(tmp_path):
    summary = write_synthetic(tmp_path, TINY)
    assert summary["images"] == 12
    dataset = FaceRecordDataset(tmp_path, flip=False)
    assert dataset.num_classes == 4
    np.testing.assert_array_equal(dataset.labels, np.repeat(np.arange(4), 3))
    image, label = dataset[4]
    assert image.shape == (3, 112, 112) and label == 1
    # The stored JPEG is the rendering of the same image (JPEG error on sensor noise aside), far closer
    # than another image of the same identity.
    rendered = identity_images(5, 1, 3).float()
    assert image.dtype == torch.uint8  # the decoded pixels (normalised per batch on the device)
    decoded = image.float()
    error = (decoded - rendered[1]).abs().mean()
    assert error < 10.0 and error < 0.5 * (decoded - rendered[0]).abs().mean()
    for kind in ("frontal", "pose", "age"):
        images, issame = load_bin(tmp_path / f"synth_{kind}.bin")
        assert images.shape == (12, 3, 112, 112) and int(issame.sum()) == 3
    meta = json.loads((tmp_path / "synthetic.json").read_text())
    assert meta["identities"] == 4 and meta["seed"] == 5 and meta["generator_version"] == 3


def test_held_out_identities_differ_from_training_ones():
    train = sample_identity(np.random.default_rng([5, 0, 0]))
    heldout = sample_identity(np.random.default_rng([5, 1, 0]))
    assert not np.allclose(train["skin"], heldout["skin"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"identities": 0}, "identities=0"),
        ({"pairs": 5}, "pairs=5: must be even"),
        ({"heldout_identities": 1}, "heldout_identities must be >= 2"),
        ({"difficulty": 5.0}, "difficulty=5.0"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(DataError, match=message):
        SyntheticConfig(**kwargs).validate()


def test_negative_pairs_are_look_alikes():
    from ekd.data.synthetic import similar_identities

    pool = [sample_identity(np.random.default_rng(i)) for i in range(5)]
    for i, (skin, hair) in enumerate([(0, 0), (10, 0), (200, 200), (0, 12), (205, 190)]):
        pool[i]["skin"], pool[i]["hair"] = np.full(3, float(skin)), np.full(3, float(hair))
    # fraction 0.4 of 5 -> 2 neighbours each, by squared colour distance (by hand).
    neighbours = similar_identities(pool, fraction=0.4)
    assert neighbours.tolist() == [[1, 3], [0, 3], [4, 3], [0, 1], [2, 3]]


def test_settings_mirror_the_config_and_none_means_not_given():
    from dataclasses import fields

    from ekd.data.synthetic import SyntheticSettings, as_synthetic_config, given_synthetic_fields

    assert [f.name for f in fields(SyntheticSettings)] == [f.name for f in fields(SyntheticConfig)]
    assert all(getattr(SyntheticSettings(), f.name) is None for f in fields(SyntheticSettings))
    given = {"identities": 7, "seed": None, "difficulty": 0.5}
    assert given_synthetic_fields(given) == ("identities", "difficulty")
    assert given_synthetic_fields(None) == ()
    assert len(given_synthetic_fields(SyntheticConfig())) == 7
    # not given -> the documented defaults (200 identities x 24 images, seed 0, ...)
    assert as_synthetic_config(given) == SyntheticConfig(
        identities=7,
        images_per_identity=24,
        pairs=600,
        heldout_identities=100,
        seed=0,
        difficulty=0.5,
        quality=92,
    )


def test_write_synthetic_only_into_an_empty_folder_or_over_a_benchmark(tmp_path):
    from ekd.data.synthetic import read_synthetic_metadata

    tiny = SyntheticConfig(identities=2, images_per_identity=2, pairs=2, heldout_identities=2, seed=1)
    out = tmp_path / "bench"
    write_synthetic(out, tiny)
    config, meta = read_synthetic_metadata(out)
    assert config == tiny and meta["verification_sets"] == ["frontal", "pose", "age"]
    # over an earlier benchmark: regenerated with the new arguments
    write_synthetic(out, SyntheticConfig(identities=3, images_per_identity=2, pairs=2, heldout_identities=2))
    assert read_synthetic_metadata(out)[0].identities == 3
    assert FaceRecordDataset(out).labels.tolist() == [0, 0, 1, 1, 2, 2]
    # a folder with other files: refused, untouched
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("x")
    with pytest.raises(DataError, match=r"other is not empty and holds no generated synthetic benchmark .*"
                       r"it contains a\.txt\. "):  # fmt: skip
        write_synthetic(other, tiny)
    assert [p.name for p in other.iterdir()] == ["a.txt"]
    assert read_synthetic_metadata(other) is None
    # a broken record of the arguments names the file
    (out / "synthetic.json").write_text("{not json")
    with pytest.raises(
        DataError, match=r"bench/synthetic\.json: cannot read the recorded generator arguments"
    ):
        read_synthetic_metadata(out)
    (out / "synthetic.json").write_text('{"identities": 3}')
    with pytest.raises(
        DataError, match=r"synthetic\.json: the recorded generator arguments lack images_per_identity"
    ):
        read_synthetic_metadata(out)
