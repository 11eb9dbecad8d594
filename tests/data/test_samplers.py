"""Batch samplers: composition, reproducibility, rank disjointness, cyclic repeats, exact resume."""

from __future__ import annotations

import collections
import random

import numpy as np
import pytest

from ekd.data.errors import DataError
from ekd.data.samplers import EKDBatchSampler, PKBatchSampler, RandomBatchSampler

# 12 identities with 1..6 images each (label k has 1 + k % 6 images): 42 images.
LABELS = np.repeat(np.arange(12), [1 + k % 6 for k in range(12)])


def epoch(sampler, e: int = 0) -> list[list[int]]:
    sampler.set_epoch(e)
    return list(sampler)


def test_random_sampler_covers_disjointly_across_ranks():
    n, bs, world = 42, 5, 3
    per_rank = [epoch(RandomBatchSampler(LABELS, bs, seed=1, rank=r, world_size=world)) for r in range(world)]
    # 42 // 3 = 14 images per rank -> 2 full batches of 5 (drop_last).
    assert [len(b) for b in per_rank] == [2, 2, 2]
    flat = [i for batches in per_rank for b in batches for i in b]
    assert len(flat) == len(set(flat)) == 30 and all(0 <= i < n for i in flat)
    assert all(len(b) == bs for batches in per_rank for b in batches)


def test_random_sampler_without_drop_last_pads_from_next_permutation():
    sampler = RandomBatchSampler(10, 4, drop_last=False, seed=0, rank=0, world_size=3)
    # ceil(10 / 3) = 4 per rank -> one batch of 4.
    assert len(sampler) == 1
    all_ranks = [epoch(RandomBatchSampler(10, 4, drop_last=False, rank=r, world_size=3))[0] for r in range(3)]
    flat = [i for b in all_ranks for i in b]
    assert set(flat) == set(range(10)) and len(flat) == 12


def test_reproducible_and_epoch_dependent():
    a = epoch(RandomBatchSampler(LABELS, 8, seed=3, rank=0, world_size=1), 2)
    b = epoch(RandomBatchSampler(LABELS, 8, seed=3, rank=0, world_size=1), 2)
    c = epoch(RandomBatchSampler(LABELS, 8, seed=3, rank=0, world_size=1), 3)
    d = epoch(RandomBatchSampler(LABELS, 8, seed=4, rank=0, world_size=1), 2)
    assert a == b and a != c and a != d


def _check_balanced(block: list[int], p: int, k: int) -> list[int]:
    """The balanced part is P groups of K rows of one identity each, identities distinct."""
    ids = [int(LABELS[i]) for i in block]
    groups = [ids[j * k : (j + 1) * k] for j in range(p)]
    assert all(len(set(g)) == 1 for g in groups)
    identities = [g[0] for g in groups]
    assert len(set(identities)) == p
    return identities


def test_ekd_batch_layout_general_first():
    g, p, k = 6, 3, 4
    sampler = EKDBatchSampler(
        LABELS, general=g, identities=p, images_per_identity=k, seed=0, rank=0, world_size=1
    )
    assert sampler.batch_layout == {"general": 6, "balanced": 12}
    batches = epoch(sampler)
    assert len(batches) == len(sampler) == 42 // 6
    general = []
    for batch in batches:
        assert len(batch) == g + p * k
        general += batch[:g]
        _check_balanced(batch[g:], p, k)
    assert len(general) == len(set(general))  # one permutation: no repeats in an epoch


def test_ekd_identities_with_few_images_repeat_cyclically():
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 2, 3, 3, 3, 3])  # identity 0 has 2 images, identity 2 only 1
    sampler = EKDBatchSampler(labels, general=2, identities=4, images_per_identity=4, rank=0, world_size=1)
    for batch in epoch(sampler):
        balanced = batch[2:]
        for j in range(4):
            group = balanced[j * 4 : (j + 1) * 4]
            identity = labels[group[0]]
            members = np.flatnonzero(labels == identity)
            if len(members) >= 4:
                assert len(set(group)) == 4
            else:  # cyclic: each image appears 4 / n times (n = 1 or 2), in a repeating order
                n = len(members)
                assert group[:n] * (4 // n) == group
                assert sorted(set(group)) == sorted(members.tolist())


def test_ekd_cursor_walks_through_identity_images_across_batches():
    labels = np.repeat([0, 1], 8)  # two identities of 8 images, P=2, K=4: every step uses both
    sampler = EKDBatchSampler(labels, general=4, identities=2, images_per_identity=4, rank=0, world_size=1)
    batches = epoch(sampler)  # 16 // 4 = 4 steps
    seen = collections.defaultdict(list)
    for batch in batches:
        for i in batch[4:]:
            seen[int(labels[i])].append(i)
    for identity, images in seen.items():
        # 4 appearances x 4 images = two full passes over its 8 images, each pass a permutation.
        assert sorted(images[:8]) == sorted(images[8:]) == list(range(identity * 8, identity * 8 + 8))


def test_ekd_cover_all_sees_every_image():
    g, world = 8, 2
    ranks = [
        epoch(EKDBatchSampler(LABELS, general=g, identities=2, images_per_identity=2, cover_all=True,
                              rank=r, world_size=world))
        for r in range(world)
    ]  # fmt: skip
    steps = -(-42 // (g * world))  # ceil
    assert all(len(b) == steps for b in ranks)
    general = [i for batches in ranks for b in batches for i in b[:g]]
    assert set(general) == set(range(42))
    assert len(general) - 42 < g * world  # only the last step is topped up
    without = EKDBatchSampler(
        LABELS, general=g, identities=2, images_per_identity=2, rank=0, world_size=world
    )
    assert len(without) == 42 // (g * world)


def test_ekd_ranks_disjoint():
    world, g, p, k = 2, 5, 3, 2
    ranks = [
        epoch(EKDBatchSampler(LABELS, general=g, identities=p, images_per_identity=k, seed=5, rank=r,
                              world_size=world), 1)
        for r in range(world)
    ]  # fmt: skip
    general = [set(i for b in batches for i in b[:g]) for batches in ranks]
    assert not general[0] & general[1]
    for step in range(len(ranks[0])):
        ids = [set(_check_balanced(ranks[r][step][g:], p, k)) for r in range(world)]
        assert not ids[0] & ids[1]  # the same step never shares an identity between ranks


def test_too_few_identities_for_world_size():
    sampler = EKDBatchSampler(LABELS, general=4, identities=8, images_per_identity=2, rank=0, world_size=2)
    with pytest.raises(DataError, match="8 x 2 = 16 distinct identities per step, the dataset has 12"):
        list(sampler)


def test_pk_sampler():
    sampler = PKBatchSampler(LABELS, identities=3, images_per_identity=2, seed=0, rank=0, world_size=1)
    batches = epoch(sampler)
    assert len(batches) == 42 // 6
    for batch in batches:
        assert len(batch) == 6
        _check_balanced(batch, 3, 2)
    assert len(PKBatchSampler(LABELS, 3, 2, batches_per_epoch=11, rank=0, world_size=1)) == 11


@pytest.mark.parametrize(
    "make",
    [
        lambda: RandomBatchSampler(LABELS, 4, seed=7, rank=1, world_size=2),
        lambda: EKDBatchSampler(
            LABELS, general=3, identities=2, images_per_identity=3, seed=7, rank=1, world_size=2
        ),
        lambda: PKBatchSampler(LABELS, identities=2, images_per_identity=2, seed=7, rank=1, world_size=2),
    ],
)
def test_state_dict_resumes_exactly(make):
    full = epoch(make(), 4)
    assert len(full) >= 3
    run = make()
    run.set_epoch(4)
    it = iter(run)
    consumed = [next(it), next(it)]
    state = run.state_dict()
    assert state == {"seed": 7, "epoch": 4, "position": 2, "world_size": 2}
    resumed = make()
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # Lightning calls set_epoch with the same epoch after restoring
    assert consumed + list(resumed) == full
    # The next epoch starts from its beginning again.
    assert epoch(resumed, 5) == epoch(make(), 5)
    # A new iteration of the same epoch is complete again (the resume position is used once).
    assert list(resumed) == epoch(make(), 5)


def test_state_dict_checks_world_size_and_keys():
    sampler = RandomBatchSampler(LABELS, 4, rank=0, world_size=2)
    with pytest.raises(DataError, match="saved with world_size 4, now 2"):
        sampler.load_state_dict({"seed": 0, "epoch": 0, "position": 1, "world_size": 4})
    with pytest.raises(DataError, match=r"lacks keys \['position'\]"):
        sampler.load_state_dict({"seed": 0, "epoch": 0})


def test_lightning_finds_set_epoch_on_batch_sampler_sampler():
    sampler = EKDBatchSampler(LABELS, general=4, identities=2, images_per_identity=2, rank=0, world_size=1)
    sampler.sampler.set_epoch(3)  # what Lightning calls
    assert sampler.epoch == 3


def test_bad_arguments():
    with pytest.raises(DataError, match="batch_size=0"):
        RandomBatchSampler(LABELS, 0)
    with pytest.raises(DataError, match="rank 2 is not in"):
        RandomBatchSampler(LABELS, 2, rank=2, world_size=2)
    with pytest.raises(DataError, match="both rank and world_size"):
        RandomBatchSampler(LABELS, 2, rank=0)
    with pytest.raises(DataError, match="1-D integer array"):
        EKDBatchSampler(np.array([0.5, 1.5]))


def test_no_set_sampling_needed_on_python_311():
    # The official sampler's random.sample(set, k) raises TypeError since 3.11; ours never samples sets.
    with pytest.raises(TypeError):
        random.sample({1, 2, 3}, 2)
    labels = np.array([5, 5, 9, 9, 7, 7])  # sparse label values
    assert len(epoch(PKBatchSampler(labels, identities=3, images_per_identity=2, rank=0, world_size=1))) == 1


def test_reads_rank_from_torch_distributed_when_not_given():
    sampler = RandomBatchSampler(LABELS, 4, seed=0)  # no process group: rank 0 of 1
    assert sampler.state_dict()["world_size"] == 1 and len(sampler) == 42 // 4


def _ekd_worker(rank: int, world_size: int) -> dict:
    sampler = EKDBatchSampler(LABELS, general=4, identities=2, images_per_identity=2, seed=11)
    sampler.set_epoch(1)
    return {"batches": list(sampler), "length": len(sampler), "state": sampler.state_dict()}


@pytest.mark.ddp
def test_rank_and_world_size_come_from_the_process_group():
    from tests.ddp_utils import run_gloo

    results = run_gloo(_ekd_worker)
    for rank, result in enumerate(results):
        explicit = EKDBatchSampler(LABELS, general=4, identities=2, images_per_identity=2, seed=11, rank=rank,
                                   world_size=2)  # fmt: skip
        assert result["batches"] == epoch(explicit, 1)
        assert result["length"] == 42 // 8 and result["state"]["world_size"] == 2
    assert results[0]["batches"] != results[1]["batches"]


def test_sampler_flips_are_pairs_reproducible_and_resume_safe():
    make = lambda: EKDBatchSampler(LABELS, general=3, identities=2, images_per_identity=2, seed=2, flip=True,  # noqa: E731
                                   rank=0, world_size=1)  # fmt: skip
    full = epoch(make(), 1)
    assert all(isinstance(row, tuple) and isinstance(row[1], bool) for batch in full for row in batch)
    flips = [f for batch in full for _, f in batch]
    assert 0 < sum(flips) < len(flips)
    # Same indices as without flips, and the same flips after a mid-epoch resume.
    plain = epoch(EKDBatchSampler(LABELS, general=3, identities=2, images_per_identity=2, seed=2, rank=0,
                                  world_size=1), 1)  # fmt: skip
    assert [[i for i, _ in batch] for batch in full] == plain
    run = make()
    run.set_epoch(1)
    it = iter(run)
    next(it)
    resumed = make()
    resumed.load_state_dict(run.state_dict())
    resumed.set_epoch(1)
    assert list(resumed) == full[1:]
