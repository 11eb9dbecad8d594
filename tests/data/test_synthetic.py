"""Synthetic identity benchmark: determinism, identity structure, nuisance effects, real output formats."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from ekd.data.bins import load_bin
from ekd.data.datasets import FaceRecordDataset
from ekd.data.errors import DataError
from ekd.data.synthetic import (
    SyntheticConfig,
    identity_images,
    pooled_verification_pairs,
    render_image,
    sample_identity,
    sample_nuisance,
    similar_identities,
    template_identity_images,
    verification_pairs,
    write_synthetic,
)
from ekd.data.templates import read_template_set

# tiny template sets: 3 identities x 2 templates x 2 images (the default, 300 x 5 x 3, takes seconds)
TEMPLATES = {"template_identities": 3, "templates_per_identity": 2, "images_per_template": 2}
NO_TEMPLATES = {"template_identities": 0}
TINY = SyntheticConfig(
    identities=4, images_per_identity=3, pairs=6, heldout_identities=3, seed=5, **TEMPLATES
)


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
    assert meta["identities"] == 4 and meta["seed"] == 5 and meta["generator_version"] == 4
    # the template set: 3 identities x 2 templates x 2 images, all-vs-all 6 x 5 / 2 = 15 comparisons
    assert summary["templates"] == {"synth_ijb": str(tmp_path / "synth_ijb.npz")}
    counts = {"identities": 3, "templates": 6, "images": 12, "genuine": 3, "impostors": 12}
    assert meta["template_sets"] == {"synth_ijb": counts}
    tset = read_template_set(tmp_path / "synth_ijb.npz")
    assert (len(tset), tset.num_templates, tset.num_subjects, tset.pair_counts()) == (12, 6, 3, (3, 12))
    np.testing.assert_array_equal(tset.templates, np.repeat(np.arange(6), 2))
    np.testing.assert_array_equal(tset.subjects, np.repeat(np.arange(3), 4))
    rendered, yaw, age = template_identity_images(TINY, 1)
    np.testing.assert_array_equal(tset.extras["yaw"][4:8], yaw)
    decoded = tset.images(4, 8).float()
    assert (decoded - rendered.float()).abs().mean() < 10.0


def test_held_out_identities_differ_from_training_ones():
    train = sample_identity(np.random.default_rng([5, 0, 0]))
    heldout = sample_identity(np.random.default_rng([5, 1, 0]))
    templates = sample_identity(np.random.default_rng([5, 3, 0]))
    assert not np.allclose(train["skin"], heldout["skin"])
    assert not np.allclose(templates["skin"], train["skin"]) and not np.allclose(
        templates["skin"], heldout["skin"]
    )


def test_template_identities_are_a_pool_of_their_own_in_mixed_pose_and_age():
    config = SyntheticConfig(seed=5, template_identities=4, templates_per_identity=4, images_per_template=3)
    images, yaw, age = template_identity_images(config, 0)
    assert images.shape == (12, 3, 112, 112) and images.dtype == torch.uint8
    again, _, _ = template_identity_images(config, 0)
    assert torch.equal(images, again)  # deterministic
    # identity 0 of the template pool is none of the identities 0 of the other pools (other streams)
    assert not torch.equal(images[:1], identity_images(5, 0, 1))
    # templates mix near-frontal and clearly turned images, and ages around the identity's base age
    turned = np.abs(yaw) >= 0.6 * 0.99
    assert turned.any() and (~turned).any()
    base = sample_identity(np.random.default_rng([5, 3, 0]))["age"]
    assert np.ptp(age.reshape(4, 3), axis=1).max() > 0.1 and abs(float(np.mean(age)) - float(base)) < 0.3
    # other identities of the pool are other faces
    other, _, _ = template_identity_images(config, 1)
    assert not torch.equal(images, other)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"identities": 0}, "identities=0"),
        ({"pairs": 5}, "pairs=5: must be even"),
        ({"heldout_identities": 1}, "heldout_identities must be >= 2"),
        ({"difficulty": 5.0}, "difficulty=5.0"),
        ({"age_difficulty": 1.5}, r"age_difficulty=1.5: expected a value in \[0, 1\]"),
        ({"age_difficulty": -0.1}, "age_difficulty=-0.1"),
        ({"template_identities": -1}, "template_identities=-1: expected an integer >= 0"),
        ({"template_identities": 1}, "template_identities=1: must be 0 .* or >= 2"),
        ({"templates_per_identity": 1}, "templates_per_identity=1: must be >= 2"),
        ({"images_per_template": 0}, "images_per_template=0: expected a positive integer"),
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
    assert len(given_synthetic_fields(SyntheticConfig())) == 12
    # not given -> the documented defaults (200 identities x 24 images, seed 0, ...)
    assert as_synthetic_config(given) == SyntheticConfig(
        identities=7,
        images_per_identity=24,
        pairs=600,
        heldout_identities=100,
        seed=0,
        difficulty=0.5,
        quality=92,
        age_difficulty=1.0,
        template_identities=300,
        templates_per_identity=5,
        images_per_template=3,
    )
    # the template set of the defaults: >= 1,000,000 impostor comparisons, 1e-5 x impostors >= 10
    config = SyntheticConfig()
    templates = config.template_identities * config.templates_per_identity
    genuine = (
        config.template_identities * config.templates_per_identity * (config.templates_per_identity - 1) // 2
    )
    impostors = templates * (templates - 1) // 2 - genuine
    assert (templates, genuine, impostors) == (1500, 3000, 1_121_250) and impostors * 1e-5 >= 10


def test_write_synthetic_only_into_an_empty_folder_or_over_a_benchmark(tmp_path):
    from ekd.data.synthetic import read_synthetic_metadata

    tiny = SyntheticConfig(
        identities=2, images_per_identity=2, pairs=2, heldout_identities=2, seed=1, **TEMPLATES
    )
    out = tmp_path / "bench"
    write_synthetic(out, tiny)
    config, meta = read_synthetic_metadata(out)
    assert config == tiny and meta["verification_sets"] == ["frontal", "pose", "age"]
    assert (out / "synth_ijb.npz").is_file()
    # over an earlier benchmark: regenerated with the new arguments (no template set: none left over)
    write_synthetic(
        out,
        SyntheticConfig(identities=3, images_per_identity=2, pairs=2, heldout_identities=2, **NO_TEMPLATES),
    )
    assert read_synthetic_metadata(out)[0].identities == 3
    assert FaceRecordDataset(out).labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert not (out / "synth_ijb.npz").exists() and read_synthetic_metadata(out)[1]["template_sets"] == {}
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


def _smallest_benchmark(out):
    """Generate a 2-identity benchmark without template set into ``out``: its config and synthetic.json."""
    config = SyntheticConfig(
        identities=2, images_per_identity=2, pairs=2, heldout_identities=2, **NO_TEMPLATES
    )
    write_synthetic(out, config)
    return config, json.loads((out / "synthetic.json").read_text())


def test_a_version_3_benchmark_reads_as_one_without_template_set(tmp_path):
    from ekd.data.synthetic import read_synthetic_metadata

    out = tmp_path / "v3"
    _, meta = _smallest_benchmark(out)
    for key in ("template_identities", "templates_per_identity", "images_per_template", "template_sets"):
        del meta[key]
    meta["generator_version"] = 3
    (out / "synthetic.json").write_text(json.dumps(meta))
    recorded, _ = read_synthetic_metadata(out)
    assert recorded.template_identities == 0 and recorded.identities == 2
    # a version-4 record without them is broken, and says so
    meta["generator_version"] = 4
    (out / "synthetic.json").write_text(json.dumps(meta))
    with pytest.raises(
        DataError, match="lack template_identities, templates_per_identity, images_per_template"
    ):
        read_synthetic_metadata(out)


def test_the_cache_folder_changes_with_the_generator_version_and_the_template_set(monkeypatch):
    import ekd.data.sources as sources

    config = SyntheticConfig()
    root = sources.default_synthetic_root(config)
    assert sources.default_synthetic_root(SyntheticConfig(template_identities=200)) != root
    monkeypatch.setattr(sources, "GENERATOR_VERSION", 3)  # a cache made by generator version 3
    assert sources.default_synthetic_root(config) != root  # is not reused: version 4 generates anew


def test_age_pair_ranges_by_hand():
    from ekd.data.synthetic import age_pair_ranges

    young, old = age_pair_ranges(1.0)  # the gap of every benchmark made before the argument existed
    assert young == (0.0, 0.15) and old == (0.65, 0.9)
    young, old = age_pair_ranges(0.6)  # 0.15 + 0.5 * 0.6, 0.15 + 0.75 * 0.6
    assert young == (0.0, 0.15) and old == pytest.approx((0.45, 0.6), abs=1e-15)
    assert age_pair_ranges(0.0)[1] == (0.15, 0.15)  # no gap: both images young


def test_age_difficulty_changes_only_the_old_images_of_the_age_set():
    nearer = SyntheticConfig(**{**TINY.__dict__, "age_difficulty": 0.0})
    images, issame = verification_pairs(TINY, "age")
    near_images, near_issame = verification_pairs(nearer, "age")
    assert torch.equal(issame, near_issame)
    # the same identities, young images and random stream: only every pair's second (old) image moves
    assert torch.equal(images[0::2], near_images[0::2])
    assert all(not torch.equal(images[i], near_images[i]) for i in range(1, len(images), 2))
    # the old image comes nearer to its young partner in a same-identity pair
    young, old, near_old = (t[issame].float() for t in (images[0::2], images[1::2], near_images[1::2]))
    assert (near_old - young).abs().mean() < (old - young).abs().mean()
    for kind in ("frontal", "pose"):  # the other sets do not depend on it
        assert torch.equal(verification_pairs(TINY, kind)[0], verification_pairs(nearer, kind)[0])


def test_a_record_without_age_difficulty_reads_as_the_old_gap_and_the_cache_key_has_it(tmp_path):
    import ekd.data.sources as sources
    from ekd.data.synthetic import read_synthetic_metadata

    out = tmp_path / "before"
    config, meta = _smallest_benchmark(out)
    assert meta["age_difficulty"] == 1.0
    del meta["age_difficulty"]  # as written before the argument existed
    (out / "synthetic.json").write_text(json.dumps(meta))
    recorded, _ = read_synthetic_metadata(out)
    assert recorded == config
    nearer = sources.default_synthetic_root(SyntheticConfig(age_difficulty=0.5))
    assert nearer != sources.default_synthetic_root(SyntheticConfig())


POOLED = SyntheticConfig(
    identities=2, images_per_identity=2, pairs=24, heldout_identities=6, seed=3, pair_images=3, **NO_TEMPLATES
)


@pytest.mark.parametrize("kind", ["frontal", "pose", "age"])
def test_pooled_pairs_are_distinct_combinations_of_the_right_identities(kind):
    images, index, issame = pooled_verification_pairs(POOLED, kind)
    sides = 1 if kind == "frontal" else 2
    k, identities = POOLED.pair_images, POOLED.heldout_identities
    assert images.shape == (identities * sides * k, 3, 112, 112) and images.dtype == torch.uint8
    assert index.shape == (2 * POOLED.pairs,) and issame.tolist() == [i % 2 == 0 for i in range(POOLED.pairs)]
    pairs = index.view(-1, 2).tolist()
    assert len(set(map(tuple, pairs))) == POOLED.pairs  # no pair twice
    # the documented layout: slot (identity, side, j) = (identity * sides + side) * k + j
    identity = [[slot // (sides * k) for slot in pair] for pair in pairs]
    side = [[slot // k % sides for slot in pair] for pair in pairs]
    pool = [sample_identity(np.random.default_rng([POOLED.seed, 1, i])) for i in range(identities)]
    neighbours = similar_identities(pool)
    for (a, b), (side_a, side_b), (slot_a, slot_b), same in zip(identity, side, pairs, issame.tolist()):
        assert (side_a, side_b) == (0, sides - 1)  # pose / age: one image of each side
        if same:
            assert a == b and slot_a != slot_b  # never an image with itself
        else:
            assert b in neighbours[a]  # impostors are look-alikes, as in the fresh sets
    # each image is in several pairs: fewer distinct images than pair slots, all of them distinct renders
    assert len(set(index.tolist())) < index.numel()
    assert len({bytes(image.numpy().tobytes()) for image in images}) == images.shape[0]
    # deterministic, and what verification_pairs returns slot by slot
    again, again_index, _ = pooled_verification_pairs(POOLED, kind)
    assert torch.equal(again, images) and torch.equal(again_index, index)
    expanded, expanded_issame = verification_pairs(POOLED, kind)
    assert torch.equal(expanded, images[index]) and torch.equal(expanded_issame, issame)


def test_pooled_sets_are_written_once_per_image_and_read_back(tmp_path):
    write_synthetic(tmp_path / "pooled", POOLED)
    recorded = json.loads((tmp_path / "pooled" / "synthetic.json").read_text())
    assert recorded["pair_images"] == 3
    images, index, issame = pooled_verification_pairs(POOLED, "pose")
    loaded, loaded_issame = load_bin(tmp_path / "pooled" / "synth_pose.bin")
    assert torch.equal(loaded_issame, issame) and loaded.shape == (2 * POOLED.pairs, 3, 112, 112)
    # slots showing one image hold the same bytes, hence equal pixels; other images differ
    for slot in range(index.numel()):
        same_image = (index == index[slot]).nonzero().flatten()
        assert all(torch.equal(loaded[slot], loaded[other]) for other in same_image.tolist())
    assert (loaded.float() - images[index].float()).abs().mean() < 6  # JPEG at quality 92


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pair_images": 1}, "pair_images=1: must be 0"),
        ({"pair_images": -2}, "pair_images=-2: expected an integer >= 0"),
        ({"pair_images": 2, "pairs": 20}, "10 genuine pairs asked, but 6 held-out identities x pair_"),
    ],
)
def test_pooled_settings_that_cannot_work_are_refused(changes, message):
    config = SyntheticConfig(**{**dataclasses.asdict(POOLED), **changes})
    with pytest.raises(DataError, match=re.escape(message)):
        config.validate()


def test_pair_images_changes_the_cache_folder_only_when_set():
    from ekd.data import sources

    study = SyntheticConfig(
        identities=256, images_per_identity=24, pairs=1000, heldout_identities=150, difficulty=0.6,
        age_difficulty=0.4, template_identities=300, templates_per_identity=5, images_per_template=2,
    )  # fmt: skip
    # the folder the first study's benchmark was generated into, before pair_images existed
    assert sources.default_synthetic_root(study).name == "synthetic-10d96a9fc4"
    pooled = dataclasses.replace(study, pairs=6000, heldout_identities=300, pair_images=5)
    assert sources.default_synthetic_root(pooled).name not in {"synthetic-10d96a9fc4"}
    assert sources.default_synthetic_root(dataclasses.replace(pooled, pair_images=4)) != (
        sources.default_synthetic_root(pooled)
    )
