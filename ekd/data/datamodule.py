"""``FaceDataModule``: training images (synthetic benchmark, insightface RecordIO or an image folder),
a batch sampler (plain, EKD general + balanced, P x K) and the verification ``.bin`` sets.

The samplers shard the data by rank themselves, so the Trainer must be built with
``Trainer(use_distributed_sampler=False)``; otherwise Lightning would wrap them a second time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ekd.data.bins import KNOWN_BIN_SETS, load_bin
from ekd.data.datasets import FaceFolderDataset, FaceRecordDataset
from ekd.data.errors import DataError
from ekd.data.fingerprint import dataset_fingerprint
from ekd.data.samplers import EKDBatchSampler, PKBatchSampler, RandomBatchSampler
from ekd.data.synthetic import GENERATOR_VERSION, VERIFICATION_SETS, SyntheticConfig, write_synthetic

SOURCES = ("synthetic", "rec", "folder")
SAMPLERS = ("random", "ekd", "pk")


def default_synthetic_root(config: SyntheticConfig) -> Path:
    """Cache folder of a generated benchmark: ``$EKD_DATA_DIR`` (default ``~/.cache/ekd``)/synthetic-<hash>
    of the generator arguments."""
    key = json.dumps({"v": GENERATOR_VERSION, **config.__dict__}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return Path(os.environ.get("EKD_DATA_DIR", "~/.cache/ekd")).expanduser() / f"synthetic-{digest}"


class FaceDataModule(pl.LightningDataModule):
    """Face training data and verification sets for Lightning.

    Args:
        source: "synthetic" (generated into ``root`` when it lacks train.rec), "rec" (insightface
            train.rec/.idx/property in ``root``) or "folder" (one sub-folder of images per identity).
        root: data folder; for "synthetic" it defaults to a cache folder keyed by the generator args.
        val_sets: verification sets: paths of .bin files, or names resolved as ``root/<name>.bin``.
            Default: the synthetic sets for "synthetic", otherwise the known sets (lfw, cfp_fp, ...)
            present in ``root``.
        sampler: "random" (``batch_size`` shuffled images), "ekd" (``general`` uniform images followed
            by ``identities x images_per_identity`` balanced ones) or "pk" (``identities x
            images_per_identity``). Batch sizes are per device.
        flip: random horizontal flips of training images, decided by the sampler (a function of seed,
            epoch, rank and batch, so resumed runs and any number of workers see the same flips).
        return_index: training batches are ``(images, labels, indices, flipped)`` instead of
            ``(images, labels)`` (indices into ``dataset``; used by the teacher embedding cache).
        num_workers, pin_memory, persistent_workers: DataLoader settings (persistent workers only
            when ``num_workers > 0``).
        seed: sampler seed (batches depend on seed, epoch, rank and world size only).
        synthetic: arguments of :class:`ekd.data.synthetic.SyntheticConfig` (identities,
            images_per_identity, pairs, heldout_identities, seed, difficulty, quality).

    Use with ``Trainer(use_distributed_sampler=False)``: the samplers already shard by rank. The
    module's ``state_dict`` (saved in Lightning checkpoints) holds the sampler position, so a run
    resumed mid-epoch sees exactly the batches it would have seen.
    """

    def __init__(
        self,
        source: str = "synthetic",
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
        synthetic: dict[str, Any] | None = None,
        return_index: bool = False,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise DataError(f"FaceDataModule source={source!r}: expected one of {', '.join(SOURCES)}")
        if sampler not in SAMPLERS:
            raise DataError(f"FaceDataModule sampler={sampler!r}: expected one of {', '.join(SAMPLERS)}")
        for name, value in (("batch_size", batch_size), ("general", general), ("identities", identities),
                            ("images_per_identity", images_per_identity)):  # fmt: skip
            if not isinstance(value, int) or value < 1:
                raise DataError(f"FaceDataModule {name}={value!r}: expected a positive integer")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise DataError(f"FaceDataModule num_workers={num_workers!r}: expected an integer >= 0")
        self.synthetic_config: SyntheticConfig | None = None
        if source == "synthetic":
            try:
                self.synthetic_config = SyntheticConfig(**dict(synthetic or {}))
            except TypeError as err:
                known = ", ".join(SyntheticConfig.__dataclass_fields__)
                raise DataError(
                    f"FaceDataModule synthetic={synthetic!r}: {err}; known keys: {known}"
                ) from None
            self.synthetic_config.validate()
            if root is None:
                root = str(default_synthetic_root(self.synthetic_config))
        elif synthetic:
            raise DataError(f"FaceDataModule: synthetic={synthetic!r} given but source={source!r}")
        if root is None:
            raise DataError(f"FaceDataModule source={source!r} needs root (the data folder)")
        self.source = source
        self.root = Path(root)
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
        self._return_index = bool(return_index)
        self._dataset: FaceRecordDataset | FaceFolderDataset | None = None
        self._fingerprint: str | None = None
        self._sampler: RandomBatchSampler | EKDBatchSampler | PKBatchSampler | None = None
        self._pending_state: dict[str, Any] | None = None
        self._verification: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    # -- preparation --------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Generate the synthetic benchmark into ``root`` if it lacks train.rec (rank 0 under Lightning)."""
        if self.source != "synthetic":
            return
        assert self.synthetic_config is not None
        meta_path = self.root / "synthetic.json"
        if (self.root / "train.rec").is_file():
            if meta_path.is_file():
                meta = json.loads(meta_path.read_text())
                wanted = {"generator_version": GENERATOR_VERSION, **self.synthetic_config.__dict__}
                diff = {k: (meta.get(k), v) for k, v in wanted.items() if meta.get(k) != v}
                if diff:
                    raise DataError(
                        f"{meta_path}: the synthetic data in {self.root} was generated with other arguments "
                        f"(found vs requested: {diff}); use another root or delete that folder"
                    )
            return
        write_synthetic(self.root, self.synthetic_config)

    def setup(self, stage: str | None = None) -> None:
        self.dataset  # noqa: B018 - builds (and validates) the training set early

    @property
    def dataset(self) -> Dataset:
        """The training dataset (built on first use; generates synthetic data if needed)."""
        if self._dataset is None:
            if self.source == "synthetic" and not (self.root / "train.rec").is_file():
                self.prepare_data()
            kind = FaceFolderDataset if self.source == "folder" else FaceRecordDataset
            self._dataset = kind(self.root, flip=self.flip, return_index=self._return_index)
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
    def return_index(self) -> bool:
        """Whether training batches carry ``(indices, flipped)`` after ``(images, labels)``."""
        return self._return_index

    @return_index.setter
    def return_index(self, value: bool) -> None:
        # settable until the loader's workers start (they receive a copy of the dataset)
        self._return_index = bool(value)
        if self._dataset is not None:
            self._dataset.return_index = self._return_index

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
        """Batches of ``(float images N x 3 x 112 x 112, int64 labels)`` (+ ``(int64 indices, bool flipped)``
        with ``return_index``)."""
        sampler = self.build_sampler()
        if self._pending_state is not None:
            sampler.load_state_dict(self._pending_state)
            self._pending_state = None
        self._sampler = sampler
        workers = self.num_workers
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
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

    # -- verification sets ---------------------------------------------------------------------------

    def verification_paths(self) -> dict[str, Path]:
        """Name -> .bin path of each verification set."""
        specs = self.val_set_specs
        if specs is None:
            if self.source == "synthetic":
                specs = [f"synth_{kind}" for kind in VERIFICATION_SETS]
            else:
                specs = [name for name in KNOWN_BIN_SETS if (self.root / f"{name}.bin").is_file()]
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
            if self.source == "synthetic" and not (self.root / "train.rec").is_file():
                self.prepare_data()
            self._verification = {name: load_bin(path) for name, path in self.verification_paths().items()}
        return self._verification
