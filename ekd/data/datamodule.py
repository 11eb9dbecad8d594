"""``FaceDataModule``: training images from a registered data source (``ekd.data.sources``: synthetic
benchmark, insightface RecordIO, image folder, or a user's), a batch sampler (plain, EKD general +
balanced, P x K), the verification ``.bin`` sets, and teacher embeddings served from an attached cache.

Training batches follow the batch contract of ``ekd/data/batch.py``: :class:`~ekd.data.batch.FaceBatch`
with ``indices`` and ``flipped`` always filled and ``teacher_embedding`` filled while a teacher
embedding cache is attached (:meth:`FaceDataModule.attach_teacher_cache`; ``ekd.distill.callbacks.
TeacherCacheCallback`` attaches the cache of a DistillationModule for the length of a fit).

The samplers shard the data by rank themselves, so the Trainer must be built with
``Trainer(use_distributed_sampler=False)``; otherwise Lightning would wrap them a second time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ekd.choices import Sampler, parse_choice
from ekd.data.batch import FaceBatch, IndexedDataset, TeacherEmbeddings, collate_face_batch
from ekd.data.bins import load_bin
from ekd.data.errors import DataError
from ekd.data.fingerprint import cache_unusable_reason, dataset_fingerprint
from ekd.data.samplers import EKDBatchSampler, PKBatchSampler, RandomBatchSampler
from ekd.data.sources import DataSource, SyntheticSource, create_data_source
from ekd.data.synthetic import SyntheticConfig, as_synthetic_config, given_synthetic_fields
from ekd.registry import RegistryError

# a closed choice: each sampler needs its own arguments (general / identities / images_per_identity)

log = logging.getLogger(__name__)


class FaceDataModule(pl.LightningDataModule):
    """Face training data and verification sets for Lightning.

    Args:
        name: the dataset's label in run names and tables (``ms1mv2``, ``synthetic``; default: ``source``).
        source: a registered data source (``ekd.data.DATA_SOURCES``): "synthetic" (generated into
            ``root`` when it is missing or empty), "rec" (insightface train.rec/.idx/property in ``root``),
            "folder" (one sub-folder of images per identity) or one registered by the user.
        root: data folder; for "synthetic" it defaults to a cache folder keyed by the generator args.
        val_sets: verification sets: paths of .bin files, or names resolved as ``root/<name>.bin``.
            Default: the source's default sets (the synthetic sets for "synthetic", otherwise the known
            sets (lfw, cfp_fp, ...) present in ``root``).
        sampler: "random" (``batch_size`` shuffled images), "ekd" (``general`` uniform images followed
            by ``identities x images_per_identity`` balanced ones) or "pk" (``identities x
            images_per_identity``). Batch sizes are per device.
        flip: random horizontal flips of training images, decided by the sampler (a function of seed,
            epoch, rank and batch, so resumed runs and any number of workers see the same flips).
        num_workers, pin_memory, persistent_workers: DataLoader settings (persistent workers only
            when ``num_workers > 0``).
        seed: sampler seed (batches depend on seed, epoch, rank and world size only).
        synthetic: for source "synthetic": a :class:`ekd.data.synthetic.SyntheticConfig` or a mapping of
            its fields (identities, images_per_identity, pairs, heldout_identities, seed, difficulty,
            quality, template_identities, templates_per_identity, images_per_template); an unknown key
            is an error naming it. None: a ``root`` that holds a generated benchmark is used with its
            recorded arguments, a missing or empty one gets the defaults.
            Given arguments that differ from those recorded in ``root`` are an error
            (:class:`~ekd.data.sources.SyntheticSource` has the rules).
        source_options: further keyword arguments of the source's factory (checked against it).

    Training batches are :class:`~ekd.data.batch.FaceBatch` (``indices``, ``flipped`` always filled,
    ``teacher_embedding`` while a cache is attached: :meth:`attach_teacher_cache`).

    Use with ``Trainer(use_distributed_sampler=False)``: the samplers already shard by rank. The
    module's ``state_dict`` (saved in Lightning checkpoints) holds the sampler position, so a run
    resumed mid-epoch sees exactly the batches it would have seen.
    """

    def __init__(
        self,
        source: str = "synthetic",
        name: str | None = None,
        root: str | None = None,
        val_sets: list[str] | None = None,
        sampler: str = "random",
        batch_size: int = 128,
        general: int = 32,
        identities: int = 8,
        images_per_identity: int = 4,
        flip: bool = True,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
        synthetic: SyntheticConfig | Mapping[str, Any] | None = None,
        source_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        try:
            sampler = parse_choice(Sampler, sampler, f"FaceDataModule sampler={sampler!r}", "sampler").value
        except ValueError as err:
            raise DataError(str(err)) from None
        for name, value in (("batch_size", batch_size), ("general", general), ("identities", identities),
                            ("images_per_identity", images_per_identity)):  # fmt: skip
            if not isinstance(value, int) or value < 1:
                raise DataError(f"FaceDataModule {name}={value!r}: expected a positive integer")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise DataError(f"FaceDataModule num_workers={num_workers!r}: expected an integer >= 0")
        options = dict(source_options or {})
        if isinstance(synthetic, Mapping) and not given_synthetic_fields(synthetic):
            as_synthetic_config(synthetic)  # still names an unknown key
            synthetic = None  # a config node with every field None (SyntheticSettings) gives nothing
        if synthetic is not None and (source != "synthetic" or "config" in options):
            where = f"source={source!r}" if source != "synthetic" else "source_options['config'] too"
            raise DataError(f"FaceDataModule: synthetic={synthetic!r} given but {where}")
        if synthetic is not None:
            options["config"] = synthetic
        try:
            self.data_source: DataSource = create_data_source(source, root=root, **options)
        except (RegistryError, DataError) as err:  # an unknown source or option lists the known ones
            raise DataError(f"FaceDataModule source={source!r}: {err}") from None
        self.source = source
        self.name = name or source
        self.root = self.data_source.root
        self.val_set_specs = list(val_sets) if val_sets is not None else None
        self.sampler_name = sampler
        self.batch_size = batch_size
        self.general = general
        self.identities = identities
        self.images_per_identity = images_per_identity
        self.flip = flip
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.seed = seed
        self._dataset: Dataset | None = None
        self._fingerprint: str | None = None
        self._sampler: RandomBatchSampler | EKDBatchSampler | PKBatchSampler | None = None
        self._pending_state: dict[str, Any] | None = None
        self._verification: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._teacher_cache: TeacherEmbeddings | None = None
        self._fit_set_up = False  # setup("fit") ran in this process (see teacher_cache_active)

    @property
    def synthetic_config(self) -> SyntheticConfig | None:
        """For source "synthetic": the generator arguments of the data (the recorded ones once ``root``
        holds a generated benchmark, see :class:`~ekd.data.sources.SyntheticSource`); else None."""
        return self.data_source.config if isinstance(self.data_source, SyntheticSource) else None

    # -- preparation --------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Download / generate the data source's files (synthetic: into a missing or empty ``root``); rank 0
        only under Lightning."""
        self.data_source.prepare()

    def setup(self, stage: str | None = None) -> None:
        if stage == "fit":
            # every fit starts without a cache (runs before the callbacks' setup, where the fit's
            # TeacherCacheCallback attaches one); it then stays attached after the fit, for the record
            self.detach_teacher_cache()
            self._fit_set_up = True
        self.dataset  # noqa: B018 - builds (and validates) the training set early

    @property
    def dataset(self) -> Dataset:
        """The training dataset (built on first use; generates synthetic data if needed)."""
        if self._dataset is None:
            if not self.data_source.ready():
                self.data_source.prepare()
            self._dataset = self.data_source.build_dataset(flip=self.flip)
        return self._dataset

    def fingerprint(self) -> str:
        """Identity of the training images and labels (:func:`ekd.data.dataset_fingerprint`), computed once.

        It keys what is computed from the training data and reused across runs (teacher class prototypes
        in ``prototype_cache``); the same files in another folder give the same fingerprint.
        """
        if self._fingerprint is None:
            self._fingerprint = dataset_fingerprint(self.dataset)
        return self._fingerprint

    @property
    def num_classes(self) -> int:
        return int(self.dataset.num_classes)  # type: ignore[attr-defined]

    @property
    def batch_layout(self) -> dict[str, int] | None:
        """``{"general": G, "balanced": P*K}`` for the EKD sampler (general rows first), else None."""
        if self.sampler_name != "ekd":
            return None
        return {"general": self.general, "balanced": self.identities * self.images_per_identity}

    # -- training data ---------------------------------------------------------------------------

    def build_sampler(self) -> RandomBatchSampler | EKDBatchSampler | PKBatchSampler:
        labels = self.dataset.labels  # type: ignore[attr-defined]
        # the sampler takes the flip decisions: reproducible across resumes and worker counts
        flip = self.flip
        if self.sampler_name == "ekd":
            return EKDBatchSampler(
                labels, self.general, self.identities, self.images_per_identity, seed=self.seed, flip=flip
            )
        if self.sampler_name == "pk":
            return PKBatchSampler(
                labels, self.identities, self.images_per_identity, seed=self.seed, flip=flip
            )
        return RandomBatchSampler(labels, self.batch_size, drop_last=True, seed=self.seed, flip=flip)

    def train_dataloader(self) -> DataLoader:
        """:class:`~ekd.data.batch.FaceBatch` batches: uint8 images N x 3 x 112 x 112 as stored (float for
        a dataset with a host transform), int64 labels, int64 indices into :attr:`dataset`, bool flipped
        (``teacher_embedding`` is added on the main process before the transfer to the device, see
        :meth:`add_teacher_embeddings`; after it :meth:`on_after_batch_transfer` mirrors and normalises)."""
        sampler = self.build_sampler()
        if self._pending_state is not None:
            sampler.load_state_dict(self._pending_state)
            self._pending_state = None
        self._sampler = sampler
        workers = self.num_workers
        return DataLoader(
            IndexedDataset(self.dataset),
            batch_sampler=sampler,
            collate_fn=collate_face_batch,
            num_workers=workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and workers > 0,
            # Seeds the workers' torch RNG (user transforms) reproducibly; flips come from the sampler.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def state_dict(self) -> dict[str, Any]:
        """Sampler state; under a Trainer the position is the number of batches the loop consumed.

        The sampler itself runs ahead of training by the DataLoader's prefetching, so the consumed
        count comes from the fit loop's progress when a trainer is attached.
        """
        if self._sampler is None:
            return {"sampler": self._pending_state} if self._pending_state is not None else {}
        state = dict(self._sampler.state_dict())
        trainer = getattr(self, "trainer", None)
        if trainer is not None and getattr(trainer.state, "fn", None) == "fit":
            state["position"] = int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)
            state["epoch"] = int(trainer.current_epoch)
        return {"sampler": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("sampler")
        if state is None:
            return
        if self._sampler is not None:
            self._sampler.load_state_dict(state)
        else:
            self._pending_state = dict(state)

    # -- teacher embedding cache -------------------------------------------------------------------

    def attach_teacher_cache(self, cache: TeacherEmbeddings) -> bool:
        """Fill ``FaceBatch.teacher_embedding`` of training batches from ``cache`` (until detached).

        Returns False, with a log line saying why, when the training data cannot be served from a cache
        (a transform beyond the flip, no dataset fingerprint): the teacher then runs online. Raises
        (``TeacherCacheMismatchError``) when the cache was built for another dataset.
        """
        dataset = self.dataset
        reason = cache_unusable_reason(dataset)
        if reason is not None:
            log.warning("teacher cache %s not used: %s; the teacher runs online", cache.directory, reason)
            self.detach_teacher_cache()
            return False
        cache.verify_dataset(dataset)
        self._teacher_cache = cache
        log.info("teacher cache %s: teacher embeddings are read from the cache", cache.directory)
        return True

    def detach_teacher_cache(self) -> None:
        """Stop serving teacher embeddings."""
        self._teacher_cache = None

    @property
    def teacher_cache(self) -> TeacherEmbeddings | None:
        """The attached teacher embedding cache, or None."""
        return self._teacher_cache

    @property
    def teacher_cache_active(self) -> bool | None:
        """Whether training batches carry ``teacher_embedding`` (a cache is attached).

        Under a Trainer: whether the current fit, or after it the last one, read the teacher's
        embeddings from a cache (``results.json``'s ``teacher_cache.used``); ``setup("fit")`` detaches.
        None while this object has run no ``setup("fit")`` and holds no cache (e.g. after a
        ``ddp_spawn`` fit, which ran in child processes on copies of it, so this one cannot tell).
        """
        if self._teacher_cache is None and not self._fit_set_up:
            return None
        return self._teacher_cache is not None

    def add_teacher_embeddings(self, batch: Any) -> Any:
        """``batch`` with ``teacher_embedding`` looked up in the attached cache (a FaceBatch with indices).

        Runs in the main process on CPU tensors (memory-mapped reads of the rows the batch touches);
        also checks the batch labels against the cached ones, a cheap guard against foreign indices.
        """
        cache = self._teacher_cache
        if cache is None or not isinstance(batch, FaceBatch) or batch.indices is None:
            return batch
        if batch.teacher_embedding is None:
            if batch.flipped is None:
                raise DataError("a FaceBatch with indices but no flipped flags cannot be served from a cache")
            cache.check_labels(batch.indices, batch.labels)
            batch.teacher_embedding = cache.lookup(batch.indices, batch.flipped)
        return batch

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # before the device transfer: the look-up reads CPU memory maps and the result moves with the batch
        return self.add_teacher_embeddings(batch)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # on the device: uint8 rows -> mirrored where flipped, normalised (ekd.data.batch.normalise_batch)
        return batch.normalised() if isinstance(batch, FaceBatch) else batch

    # -- verification sets ---------------------------------------------------------------------------

    def verification_paths(self) -> dict[str, Path]:
        """Name -> .bin path of each verification set."""
        specs = self.val_set_specs
        if specs is None:
            specs = self.data_source.default_val_sets()
        paths: dict[str, Path] = {}
        for spec in specs:
            candidate = Path(spec)
            if candidate.suffix == ".bin" and (candidate.is_file() or candidate.is_absolute()):
                path = candidate
            else:
                name = candidate.name[:-4] if candidate.name.endswith(".bin") else candidate.name
                path = self.root / f"{name}.bin"
            paths[path.stem] = path
        return paths

    def verification_sets(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Name -> ``(uint8 images 2N x 3 x 112 x 112, bool issame N)``; loaded once and cached."""
        if self._verification is None:
            if not self.data_source.ready():
                self.data_source.prepare()
            self._verification = {name: load_bin(path) for name, path in self.verification_paths().items()}
        return self._verification
