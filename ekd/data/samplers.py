"""Batch samplers for face training: plain shuffled, P x K identity-balanced, and EKD's mixed batches.

All three are *batch* samplers (pass them as ``DataLoader(batch_sampler=...)``) that

* are reproducible: the batches of an epoch are a function of ``(seed, epoch, rank, world_size)``;
* shard by rank themselves: rank and world size are given or read from ``torch.distributed`` when
  iterating, and ranks get disjoint streams (different images in the shuffled / general parts,
  different identities in the balanced part of the same step). Under Lightning use
  ``Trainer(use_distributed_sampler=False)`` so they are not wrapped again;
* expose ``set_epoch``, ``__len__`` and ``state_dict`` / ``load_state_dict`` holding the position inside
  the epoch: after ``load_state_dict`` the next iteration yields exactly the remaining batches of that
  epoch (Lightning restores the in-epoch batch counter and stops after ``len`` batches);
* are their own ``.sampler``, because Lightning calls ``dataloader.batch_sampler.sampler.set_epoch``;
* with ``flip=True`` decide the random horizontal flips themselves and yield ``(index, flip)`` pairs
  instead of plain indices (the datasets accept both). The flips are then a function of
  ``(seed, epoch, rank, batch)`` like the batches: a resumed run, or any number of loader workers,
  sees the same flips, and a consumer that needs to know which rows were flipped (the teacher
  embedding cache) can be told by the dataset.

Streams (all numpy ``default_rng`` seeded with ``[seed, epoch, stream]``):

* shuffled / general images: successive random permutations of all images, cut into blocks; step
  ``b`` of rank ``r`` takes block ``b * world_size + r``.
* balanced identities: successive random permutations of the identities, each cut into steps of
  ``P * world_size`` distinct identities (the remainder of a permutation is skipped, so identities in
  one step never repeat); rank ``r`` takes the ``r``-th group of ``P``.
* images of an identity: a random order per identity and epoch, consumed ``K`` at a time across the
  identity's successive appearances, wrapping around cyclically (so identities with fewer than ``K``
  images repeat their images cyclically).

The official EKD sampler draws identities with ``random.sample`` on a set, which Python 3.11 rejects;
nothing here samples from sets.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from ekd import dist
from ekd.data.errors import DataError

_GENERAL_STREAM = 0
_IDENTITY_STREAM = 1
_IMAGE_ORDER_STREAM = 2
_FLIP_STREAM = 3


def _as_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            f"sampler labels must be a non-empty 1-D integer array, got {array.dtype} {array.shape}"
        )
    return array.astype(np.int64)


def _positive(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise DataError(f"sampler argument {name}={value!r}: expected a positive integer")
    return int(value)


class _EpochBatchSampler(Sampler[list[int]]):
    """Shared epoch / rank / resume machinery; subclasses implement :meth:`_plan`."""

    def __init__(
        self, seed: int, rank: int | None, world_size: int | None, stream_length: int, flip: bool = False
    ) -> None:
        self.seed = int(seed)
        self.flip = bool(flip)
        self.epoch = 0
        if (rank is None) != (world_size is None):
            raise DataError(
                "sampler: give both rank and world_size, or neither (read from torch.distributed)"
            )
        if world_size is not None and not 0 <= int(rank) < int(world_size):  # type: ignore[arg-type]
            raise DataError(f"sampler: rank {rank} is not in [0, world_size={world_size})")
        self._rank = rank
        self._world_size = world_size
        self._num_items = stream_length
        self._position = 0  # batches handed out in the current epoch
        self._resume_from = 0  # first batch of the next iteration (set by load_state_dict)

    # Lightning calls ``dataloader.batch_sampler.sampler.set_epoch(epoch)``.
    @property
    def sampler(self) -> _EpochBatchSampler:
        return self

    def _ranks(self) -> tuple[int, int]:
        if self._world_size is not None:
            return int(self._rank), int(self._world_size)  # type: ignore[arg-type]
        return dist.rank(), dist.world_size()

    def _rng(self, stream: int, *extra: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, stream, *extra])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a new epoch starts at its first batch, the current one keeps its position."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self._position = 0
            self._resume_from = 0

    def num_batches(self, world_size: int) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_batches(self._ranks()[1])

    def _plan(self, rank: int, world_size: int) -> list[np.ndarray]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        rank, world_size = self._ranks()
        plan = self._plan(rank, world_size)
        start, self._resume_from = self._resume_from, 0
        self._position = start
        for number, batch in enumerate(plan[start:], start):
            self._position += 1
            if not self.flip:
                yield batch.tolist()
                continue
            # One generator per (epoch, rank, batch): the decision does not depend on where iteration
            # (re)started.
            flips = self._rng(_FLIP_STREAM, rank, number).random(len(batch)) < 0.5
            yield list(zip(batch.tolist(), flips.tolist()))

    def state_dict(self) -> dict[str, int]:
        """Seed, epoch, world size and batches already handed out in this epoch."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self._position,
            "world_size": self._ranks()[1],
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue epoch ``state['epoch']`` after ``state['position']`` batches (same world size)."""
        missing = {"seed", "epoch", "position"} - set(state)
        if missing:
            raise DataError(f"sampler state_dict lacks keys {sorted(missing)}; got {sorted(state)}")
        world_size = self._ranks()[1]
        if "world_size" in state and int(state["world_size"]) != world_size:
            raise DataError(
                f"sampler state_dict was saved with world_size {state['world_size']}, now {world_size}: "
                "the in-epoch position cannot be carried over to a different number of ranks"
            )
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self._position = self._resume_from = int(state["position"])

    # -- streams shared by the subclasses -------------------------------------------------------

    def _image_stream(self, total: int) -> np.ndarray:
        """``total`` image indices: successive random permutations of all images, concatenated."""
        rng = self._rng(_GENERAL_STREAM)
        chunks = [rng.permutation(self._num_items) for _ in range(-(-total // self._num_items))]
        return np.concatenate(chunks)[:total] if chunks else np.empty(0, dtype=np.int64)


class RandomBatchSampler(_EpochBatchSampler):
    """Ordinary shuffled batches: each epoch is a random permutation of the images split over ranks.

    Args:
        labels: per-image labels (only their number is used) or the number of images.
        batch_size: images per batch on each rank.
        drop_last: drop each rank's incomplete last batch (default, as insightface trains); otherwise
            the permutation is padded with the next permutation's first images.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | int,
        batch_size: int,
        drop_last: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        flip: bool = False,
    ) -> None:
        num_items = _positive("num_samples", labels) if isinstance(labels, int) else len(_as_labels(labels))
        super().__init__(seed, rank, world_size, num_items, flip)
        self.batch_size = _positive("batch_size", batch_size)
        self.drop_last = drop_last

    def num_batches(self, world_size: int) -> int:
        per_rank = self._per_rank(world_size)
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def _per_rank(self, world_size: int) -> int:
        n = self._num_items
        return n // world_size if self.drop_last else -(-n // world_size)

    def _plan(self, rank: int, world_size: int) -> list[np.ndarray]:
        per_rank = self._per_rank(world_size)
        stream = self._image_stream(per_rank * world_size)
        mine = stream[rank::world_size]
        return [
            mine[i : i + self.batch_size]
            for i in range(0, self.num_batches(world_size) * self.batch_size, self.batch_size)
        ]


class _IdentityBatchSampler(_EpochBatchSampler):
    """Adds the balanced P identities x K images stream."""

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        identities: int,
        images_per_identity: int,
        seed: int,
        rank: int | None,
        world_size: int | None,
        flip: bool = False,
        batches_per_epoch: int | None = None,
    ) -> None:
        self.labels = _as_labels(labels)
        super().__init__(seed, rank, world_size, len(self.labels), flip)
        self.batches_per_epoch = (
            None if batches_per_epoch is None else _positive("batches_per_epoch", batches_per_epoch)
        )
        self.identities = _positive("identities", identities)
        self.images_per_identity = _positive("images_per_identity", images_per_identity)
        self.identity_ids, self._counts = np.unique(self.labels, return_counts=True)

    def _balanced(self, steps: int, rank: int, world_size: int) -> np.ndarray:
        """``steps`` x (P * K) image indices of this rank's balanced part."""
        p, k = self.identities, self.images_per_identity
        per_step = p * world_size
        num_ids = len(self.identity_ids)
        if num_ids < per_step:
            raise DataError(
                f"balanced sampling needs at least identities x world_size = {p} x {world_size} = {per_step} "
                f"distinct identities per step, the dataset has {num_ids}"
            )
        steps_per_perm = num_ids // per_step
        id_rng = self._rng(_IDENTITY_STREAM)
        perms = [
            id_rng.permutation(num_ids)[: steps_per_perm * per_step]
            for _ in range(-(-steps // steps_per_perm))
        ]
        # (steps, world_size, P) identity positions; all ranks' occurrences are needed to advance the
        # per-identity image cursors identically on every rank.
        ids = np.concatenate(perms)[: steps * per_step]
        # Random order of each identity's images: sort by (label position, random key).
        order_rng = self._rng(_IMAGE_ORDER_STREAM)
        label_pos = np.searchsorted(self.identity_ids, self.labels)
        grouped = np.lexsort((order_rng.random(len(self.labels)), label_pos))
        starts = np.concatenate(([0], np.cumsum(self._counts)[:-1]))
        # Occurrence number of each identity appearance (0 for its first appearance this epoch, ...).
        by_id = np.argsort(ids, kind="stable")
        sorted_ids = ids[by_id]
        first_of_group = np.searchsorted(sorted_ids, sorted_ids, side="left")
        occurrence = np.empty_like(ids)
        occurrence[by_id] = np.arange(len(ids)) - first_of_group
        offsets = (occurrence[:, None] * k + np.arange(k)[None, :]) % self._counts[ids][:, None]
        images = grouped[starts[ids][:, None] + offsets]  # (steps * world_size * P, K)
        images = images.reshape(steps, world_size, p * k)
        return images[:, rank, :]


class PKBatchSampler(_IdentityBatchSampler):
    """P identities x K images per batch (triplet-style losses); rows grouped by identity.

    ``batches_per_epoch`` defaults to ``len(labels) // (P * K * world_size)`` (at least 1), so an epoch
    sees about as many images as one pass of plain training.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        identities: int = 8,
        images_per_identity: int = 4,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        batches_per_epoch: int | None = None,
        flip: bool = False,
    ) -> None:
        super().__init__(
            labels, identities, images_per_identity, seed, rank, world_size, flip, batches_per_epoch
        )

    def num_batches(self, world_size: int) -> int:
        if self.batches_per_epoch is not None:
            return self.batches_per_epoch
        return max(1, len(self.labels) // (self.identities * self.images_per_identity * world_size))

    def _plan(self, rank: int, world_size: int) -> list[np.ndarray]:
        return list(self._balanced(self.num_batches(world_size), rank, world_size))


class EKDBatchSampler(_IdentityBatchSampler):
    """EKD batches: ``general`` uniformly drawn images, then ``identities x images_per_identity`` balanced.

    Each batch is ``[general rows..., balanced rows...]`` (defaults 32 + 8 x 4 per device); training
    modules rely on the first ``general`` rows being the general part.

    The general part walks through a random permutation of all images (no repeats within an epoch).
    With ``cover_all=False`` an epoch has ``N // (general * world_size)`` batches (at least 1) and a
    random remainder of images is left out; with ``cover_all=True`` it has ``ceil(N / (general *
    world_size))`` batches, so every image appears exactly once in the general parts, and the last step's
    free slots (fewer than ``general * world_size``) are filled from the next random permutation.
    ``batches_per_epoch`` overrides both.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        general: int = 32,
        identities: int = 8,
        images_per_identity: int = 4,
        cover_all: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        batches_per_epoch: int | None = None,
        flip: bool = False,
    ) -> None:
        super().__init__(
            labels, identities, images_per_identity, seed, rank, world_size, flip, batches_per_epoch
        )
        self.general = _positive("general", general)
        self.cover_all = cover_all

    @property
    def batch_layout(self) -> dict[str, int]:
        return {"general": self.general, "balanced": self.identities * self.images_per_identity}

    def num_batches(self, world_size: int) -> int:
        if self.batches_per_epoch is not None:
            return self.batches_per_epoch
        per_step = self.general * world_size
        n = len(self.labels)
        return -(-n // per_step) if self.cover_all else max(1, n // per_step)

    def _plan(self, rank: int, world_size: int) -> list[np.ndarray]:
        steps = self.num_batches(world_size)
        general = self._image_stream(steps * world_size * self.general).reshape(
            steps, world_size, self.general
        )
        balanced = self._balanced(steps, rank, world_size)
        return list(np.concatenate([general[:, rank, :], balanced], axis=1))
