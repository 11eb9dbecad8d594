"""FaceDataModule with num_workers=0: sources, samplers, verification sets, resume under Lightning."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from ekd.data.bins import write_bin
from ekd.data.datamodule import FaceDataModule
from ekd.data.errors import DataError

SYNTH = {"identities": 6, "images_per_identity": 4, "pairs": 4, "heldout_identities": 3, "seed": 1}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    FaceDataModule(source="synthetic", root=str(root), synthetic=SYNTH, num_workers=0).prepare_data()
    return root


def _dm(root, **kw) -> FaceDataModule:
    kw.setdefault("num_workers", 0)
    return FaceDataModule(source="synthetic", root=str(root), synthetic=SYNTH, **kw)


def test_random_sampler_batches(synth_root):
    dm = _dm(synth_root, batch_size=5)
    dm.setup("fit")
    assert dm.num_classes == 6 and dm.batch_layout is None
    loader = dm.train_dataloader()
    assert loader.num_workers == 0 and not loader.persistent_workers
    batches = list(loader)
    assert len(batches) == 24 // 5
    images, labels = batches[0]
    assert images.shape == (5, 3, 112, 112) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and images.abs().max() <= 1.0


def test_ekd_sampler_layout(synth_root):
    dm = _dm(synth_root, sampler="ekd", general=4, identities=2, images_per_identity=3)
    assert dm.batch_layout == {"general": 4, "balanced": 6}
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape[0] == 10
    balanced = labels[4:].view(2, 3)
    assert (balanced == balanced[:, :1]).all() and balanced[0, 0] != balanced[1, 0]


def test_pk_sampler(synth_root):
    dm = _dm(synth_root, sampler="pk", identities=3, images_per_identity=2)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape[0] == 6 and len(set(labels.tolist())) == 3


def test_verification_sets_are_cached(synth_root):
    dm = _dm(synth_root)
    sets = dm.verification_sets()
    assert sorted(sets) == ["synth_age", "synth_frontal", "synth_pose"]
    images, issame = sets["synth_pose"]
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 112, 112) and issame.dtype == torch.bool
    assert dm.verification_sets() is sets


def test_val_sets_by_name_and_path(synth_root, tmp_path):
    extra = tmp_path / "extra.bin"
    write_bin(extra, torch.zeros(2, 3, 112, 112, dtype=torch.uint8), [True], image_format="png")
    dm = _dm(synth_root, val_sets=["synth_age", str(extra)])
    assert sorted(dm.verification_sets()) == ["extra", "synth_age"]


def test_fingerprint_identifies_the_training_set(synth_root, tmp_path):
    from ekd.data import FaceRecordDataset, dataset_fingerprint

    dm = _dm(synth_root)
    first = dm.fingerprint()
    assert first == dataset_fingerprint(FaceRecordDataset(synth_root)) and dm.fingerprint() == first
    # stable: another datamodule (other sampler / batch size) on the same data, or a copy of it elsewhere
    assert _dm(synth_root, sampler="pk", flip=False).fingerprint() == first
    copy = shutil.copytree(synth_root, tmp_path / "copy")
    assert FaceDataModule(source="rec", root=str(copy), num_workers=0).fingerprint() == first
    # another synthetic training set: another fingerprint
    other = FaceDataModule(
        source="synthetic", root=str(tmp_path / "other"), synthetic={**SYNTH, "identities": 5}, num_workers=0
    )
    assert other.fingerprint() != first


def test_existing_data_with_other_arguments_is_refused(synth_root):
    dm = FaceDataModule(
        source="synthetic", root=str(synth_root), synthetic={**SYNTH, "seed": 2}, num_workers=0
    )
    with pytest.raises(DataError, match=r"synthetic\.json: .*other arguments.*'seed': \(1, 2\)"):
        dm.prepare_data()


def test_rec_and_folder_sources(synth_root, tmp_path):
    dm = FaceDataModule(source="rec", root=str(synth_root), num_workers=0, batch_size=4)
    assert dm.num_classes == 6 and dm.verification_paths() == {}  # no known public sets in that folder
    folder = tmp_path / "faces"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for i in range(2):
            from PIL import Image

            Image.fromarray(np.full((112, 112, 3), 40 * i + 10, np.uint8)).save(folder / name / f"{i}.png")
    fdm = FaceDataModule(source="folder", root=str(folder), num_workers=0, batch_size=2)
    images, labels = next(iter(fdm.train_dataloader()))
    assert images.shape == (2, 3, 112, 112) and fdm.num_classes == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "lmdb"}, "source='lmdb'"),
        ({"sampler": "weighted"}, "sampler='weighted'"),
        ({"source": "rec"}, "needs root"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"synthetic": {"ids": 3}}, "known keys: identities"),
        ({"source": "folder", "root": "x", "synthetic": {"identities": 2}}, "source='folder'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(DataError, match=message):
        FaceDataModule(**kwargs)


def test_workers_settings(synth_root):
    dm = _dm(synth_root, num_workers=1, persistent_workers=True)
    loader = dm.train_dataloader()
    assert loader.num_workers == 1 and loader.persistent_workers


class _Recorder(pl.LightningModule):
    """Records the labels of every training batch; one tiny parameter so the optimiser has work."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        images, labels = batch
        self.seen.append(labels.tolist() + [round(float(images.sum()), 1)])
        return (self.weight * images.mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path, **kw) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=str(tmp_path), accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False, **kw,
    )  # fmt: skip


def test_lightning_resume_mid_epoch_sees_the_same_batches(synth_root, tmp_path):
    full_model = _Recorder()
    _trainer(tmp_path / "full", max_epochs=2, enable_checkpointing=False).fit(
        full_model, datamodule=_dm(synth_root, batch_size=4, flip=True)
    )
    assert len(full_model.seen) == 2 * 6
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ck"), every_n_train_steps=2, save_top_k=-1)
    first = _Recorder()
    _trainer(tmp_path / "a", max_steps=8, callbacks=[ckpt]).fit(
        first, datamodule=_dm(synth_root, batch_size=4, flip=True)
    )
    resumed = _Recorder()
    _trainer(tmp_path / "b", max_epochs=2, enable_checkpointing=False).fit(
        resumed,
        datamodule=_dm(synth_root, batch_size=4, flip=True),
        ckpt_path=str(tmp_path / "ck" / "epoch=1-step=8.ckpt"),
    )
    # Step 8 is the 2nd batch of epoch 1: the resumed run must yield exactly batches 3..6 of that epoch,
    # with the same flips (the image sums are recorded too).
    assert resumed.seen == full_model.seen[8:]
