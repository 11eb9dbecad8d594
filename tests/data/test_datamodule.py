"""FaceDataModule with num_workers=0: sources (and the registry), samplers, FaceBatch batches, the teacher
cache served with the batch, verification sets, resume under Lightning."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from ekd.data.bins import write_bin
from ekd.data.datamodule import FaceDataModule
from ekd.data.errors import DataError

SYNTH = {"identities": 6, "images_per_identity": 4, "pairs": 4, "heldout_identities": 3, "seed": 1,
         "template_identities": 0}  # fmt: skip


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    FaceDataModule(source="synthetic", root=str(root), synthetic=SYNTH, num_workers=0).prepare_data()
    return root


def _host_path(dataset, index: int, flip: bool) -> torch.Tensor:
    """Sample ``index`` as the datasets used to return it, computed independently of ekd's transform:
    the record's JPEG decoded by the decoder, mirrored with numpy, (x - 127.5) / 127.5 in float32."""
    from ekd.data.images import decode_image
    from ekd.data.recordio import unpack_payload

    _, data = unpack_payload(dataset.reader.read(int(dataset.keys[index])))
    hwc = decode_image(data).permute(1, 2, 0).numpy()
    if flip:
        hwc = hwc[:, ::-1]
    out = (hwc.astype(np.float32) - np.float32(127.5)) / np.float32(127.5)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


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
    # the loader carries uint8; the datamodule's transform after the device transfer makes them float
    assert batches[0].images.dtype == torch.uint8
    batch = dm.on_after_batch_transfer(batches[0], 0)
    images, labels = batch.images, batch.labels
    assert images.shape == (5, 3, 112, 112) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and images.abs().max() <= 1.0


def test_ekd_sampler_layout(synth_root):
    dm = _dm(synth_root, sampler="ekd", general=4, identities=2, images_per_identity=3)
    assert dm.batch_layout == {"general": 4, "balanced": 6}
    batch = next(iter(dm.train_dataloader()))
    images, labels = batch.images, batch.labels
    assert images.shape[0] == 10
    balanced = labels[4:].view(2, 3)
    assert (balanced == balanced[:, :1]).all() and balanced[0, 0] != balanced[1, 0]


def test_pk_sampler(synth_root):
    dm = _dm(synth_root, sampler="pk", identities=3, images_per_identity=2)
    batch = next(iter(dm.train_dataloader()))
    images, labels = batch.images, batch.labels
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
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert message.startswith(f"{synth_root / 'synthetic.json'}: ")
    assert "other arguments (seed: 1 recorded, 2 given)" in message
    # both sets of values, then what to do
    recorded = "identities=6, images_per_identity=4, pairs=4, heldout_identities=3, seed=1, difficulty=1.0, "
    recorded += "quality=92, age_difficulty=1.0, pair_images=0, template_identities=0, "
    recorded += "templates_per_identity=5, images_per_template=3"
    assert f"Recorded: {recorded}." in message
    given = (
        "identities=6, images_per_identity=4, pairs=4, heldout_identities=3, seed=2, template_identities=0"
    )
    assert f"Given: {given}." in message
    assert "data.synthetic=null" in message and "choose another root" in message
    # building the dataset without prepare_data (no Trainer) is refused too, never silently other data
    with pytest.raises(DataError, match=r"seed: 1 recorded, 2 given"):
        dm.dataset  # noqa: B018


def _snapshot(folder) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_recorded_arguments_are_used_when_none_are_given(synth_root, caplog):
    before = _snapshot(synth_root)
    with caplog.at_level("INFO", logger="ekd.data"):
        dm = FaceDataModule(source="synthetic", root=str(synth_root), num_workers=0)
        dm.prepare_data()
        # SYNTH of the fixture: 6 identities x 4 images, seed 1; the defaults would be 200 x 24, seed 0
        assert dm.num_classes == 6 and len(dm.dataset) == 24
    assert dm.synthetic_config.identities == 6 and dm.synthetic_config.seed == 1
    assert dm.synthetic_config.quality == 92  # not in SYNTH: recorded as the default
    assert _snapshot(synth_root) == before and "generating" not in caplog.text
    # a config node with every field None (what SyntheticSettings gives) gives no argument either
    from omegaconf import OmegaConf

    from ekd.data.synthetic import SyntheticSettings

    node = OmegaConf.structured(SyntheticSettings)
    assert FaceDataModule(source="synthetic", root=str(synth_root), synthetic=node).num_classes == 6
    # the fields that are given and agree with the recorded ones are accepted
    node.seed, node.identities = 1, 6
    assert FaceDataModule(source="synthetic", root=str(synth_root), synthetic=node).num_classes == 6
    assert FaceDataModule(source="synthetic", root=str(synth_root), synthetic={"seed": 1}).num_classes == 6
    node.images_per_identity = 5
    with pytest.raises(DataError, match=r"\(images_per_identity: 4 recorded, 5 given\).*Given: identities=6, "
                       r"images_per_identity=5, seed=1\. "):  # fmt: skip
        FaceDataModule(source="synthetic", root=str(synth_root), synthetic=node).prepare_data()


def test_generation_into_a_new_folder_says_where_and_with_what(tmp_path, caplog):
    root = tmp_path / "new" / "synth"
    tiny = {"identities": 2, "images_per_identity": 2, "pairs": 2, "heldout_identities": 2, "seed": 4,
            "template_identities": 0}  # fmt: skip
    with caplog.at_level("INFO", logger="ekd.data.sources"):
        dm = FaceDataModule(source="synthetic", root=str(root), synthetic=tiny, num_workers=0)
        assert not root.exists()  # nothing happens before prepare_data
        dm.prepare_data()
    expected = (
        f"generating the synthetic benchmark into {root} (identities=2, images_per_identity=2, pairs=2, "
        "heldout_identities=2, seed=4, difficulty=1.0, quality=92, age_difficulty=1.0, pair_images=0, "
        "template_identities=0, templates_per_identity=5, images_per_template=3)"
    )
    assert expected in caplog.text
    assert dm.num_classes == 2 and len(dm.dataset) == 4
    import json

    recorded = json.loads((root / "synthetic.json").read_text())
    assert {k: recorded[k] for k in tiny} == tiny
    # an empty existing folder is generated into as well
    empty = tmp_path / "empty"
    empty.mkdir()
    FaceDataModule(source="synthetic", root=str(empty), synthetic=tiny).prepare_data()
    assert (empty / "synthetic.json").is_file()


def _prepare_in_child(root: str, calls: str, start) -> None:
    """A forked process preparing the synthetic source at ``root`` (tiny benchmark)."""
    import ekd.data.sources as sources

    real = sources.write_synthetic

    def counted(out, config):  # note each generation; a slow one widens the window for a race
        with open(calls, "a") as handle:
            handle.write(f"{out}\n")
        time.sleep(0.5)
        return real(out, config)

    sources.write_synthetic = counted
    start.wait()
    module = FaceDataModule(source="synthetic", root=root, synthetic=SYNTH, num_workers=0)
    module.prepare_data()
    module.setup("fit")
    assert len(module.dataset) == SYNTH["identities"] * SYNTH["images_per_identity"]


def test_two_processes_preparing_one_new_folder_generate_it_once(tmp_path):
    """A parallel sweep on a fresh data cache: both processes train on one benchmark, generated once
    (without the lock the second found the first's half-written folder and stopped with a DataError)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    root, calls = tmp_path / "cache" / "synthetic-new", tmp_path / "calls.txt"
    start = context.Barrier(2)
    children = [
        context.Process(target=_prepare_in_child, args=(str(root), str(calls), start)) for _ in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(120)
    assert [child.exitcode for child in children] == [0, 0]
    assert calls.read_text().splitlines() == [str(root)]
    assert (root / "synthetic.json").is_file() and (tmp_path / "cache" / ".synthetic-new.lock").is_file()


def test_a_folder_with_other_files_is_never_generated_into(tmp_path):
    mine = tmp_path / "mine"
    (mine / "photos").mkdir(parents=True)
    (mine / "notes.txt").write_text("my files")
    dm = FaceDataModule(source="synthetic", root=str(mine), synthetic=SYNTH, num_workers=0)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert f"{mine} is not empty and holds no generated synthetic benchmark" in message
    assert "it contains notes.txt, photos/." in message and "only into an empty or new folder" in message
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "photos"]  # nothing written
    with pytest.raises(DataError, match="notes.txt, photos/"):
        dm.dataset  # noqa: B018
    # real RecordIO data (or an interrupted generation): train.rec without synthetic.json
    real = tmp_path / "real"
    real.mkdir()
    (real / "train.rec").write_bytes(b"")
    with pytest.raises(DataError, match=r"it contains train\.rec \(train\.rec without synthetic\.json: real "
                       r"data -- use the data source 'rec'"):  # fmt: skip
        FaceDataModule(source="synthetic", root=str(real)).prepare_data()


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
    images = next(iter(fdm.train_dataloader())).images
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
        images, labels = batch.images, batch.labels
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


def test_training_batches_carry_indices_and_flips(synth_root):
    from ekd.data import FaceBatch, FaceRecordDataset

    dm = _dm(synth_root, batch_size=5, flip=True)
    batches = list(dm.train_dataloader())
    keys = list(dm.build_sampler())  # the same seed and epoch: the same keys
    dataset = FaceRecordDataset(synth_root, flip=False)
    assert len(batches) == len(keys)
    for batch, key in zip(batches, keys):
        assert isinstance(batch, FaceBatch) and batch.teacher_embedding is None
        assert batch.indices.dtype == torch.int64 and batch.flipped.dtype == torch.bool
        assert batch.indices.tolist() == [i for i, _ in key] and batch.flipped.tolist() == [f for _, f in key]
        torch.testing.assert_close(batch.labels, torch.as_tensor(dataset.labels[batch.indices]))
        # each row is the image of its index as stored (uint8); after the device transform it is the
        # former host path's float image (numpy mirror where flipped, float32 (x - 127.5) / 127.5)
        normalised = dm.on_after_batch_transfer(batch, 0).images
        for row, (i, f) in enumerate(key):
            assert torch.equal(batch.images[row], dataset[(i, f)][0])
            assert torch.equal(normalised[row], _host_path(dataset, i, f))
    assert any(f for key in keys for _, f in key) and not all(f for key in keys for _, f in key)
    # without flips every row is unflipped
    plain = next(iter(_dm(synth_root, batch_size=5, flip=False).train_dataloader()))
    assert plain.indices.shape == (5,) and not plain.flipped.any()


def test_synthetic_accepts_a_config_and_names_unknown_keys(synth_root):
    from ekd.data import SyntheticConfig

    dm = FaceDataModule(source="synthetic", root=str(synth_root), synthetic=SyntheticConfig(**SYNTH))
    assert dm.synthetic_config == SyntheticConfig(**SYNTH) and dm.num_classes == 6
    with pytest.raises(DataError, match=r"unknown key 'ids'; known keys: identities, images_per_identity"):
        FaceDataModule(synthetic={"ids": 3, "seed": 1})
    with pytest.raises(DataError, match="pairs=3: must be even"):
        FaceDataModule(synthetic={"pairs": 3})


def test_unknown_source_lists_the_registered_ones():
    with pytest.raises(DataError, match=r"source='lmdb'.*known: folder, rec, synthetic"):
        FaceDataModule(source="lmdb", root="x")


def test_a_data_source_registered_by_the_user(tmp_path):
    """A source registered from the user's own module: its dataset, options and default sets are used."""
    from torch.utils.data import Dataset

    from ekd.data import DATA_SOURCES, DataSource

    class TinyFaces(Dataset):
        def __init__(self, n: int, flip: bool) -> None:
            self.labels = np.arange(n) % 2
            self.num_classes = 2
            self.flip = flip

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, key):
            index, flipped = key if isinstance(key, tuple) else (key, False)
            image = torch.full((3, 112, 112), float(index) / 10)
            image[0, 0, 0] = 1.0  # so that the mirror differs
            return (image.flip(-1) if flipped else image), int(self.labels[index])

    class TinySource(DataSource):
        def __init__(self, root=None, images: int = 4) -> None:
            super().__init__(root)
            self.images = images

        def build_dataset(self, flip: bool):
            return TinyFaces(self.images, flip)

        def default_val_sets(self) -> list[str]:
            return ["tiny_pairs"]

    write_bin(tmp_path / "tiny_pairs.bin", torch.zeros(2, 3, 112, 112, dtype=torch.uint8), [True])
    with DATA_SOURCES.registered("tiny", TinySource):
        dm = FaceDataModule(
            source="tiny", root=str(tmp_path), source_options={"images": 6}, batch_size=3, num_workers=0
        )
        with pytest.raises(DataError, match=r"source='tiny'.*'colour'"):
            FaceDataModule(source="tiny", root=str(tmp_path), source_options={"colour": 1})
    assert dm.num_classes == 2 and len(dm.dataset) == 6
    batch = next(iter(dm.train_dataloader()))
    assert batch.images.shape == (3, 3, 112, 112) and batch.indices.shape == (3,)
    for row in range(3):
        index, flipped = int(batch.indices[row]), bool(batch.flipped[row])
        assert torch.equal(batch.images[row], dm.dataset[(index, flipped)][0])
        assert int(batch.labels[row]) == index % 2
    assert sorted(dm.verification_sets()) == ["tiny_pairs"]
    # no fingerprint: a teacher cache cannot be matched to this data (a log line, the teacher runs online)
    from ekd.data import cache_unusable_reason

    assert "needs a dataset fingerprint" in cache_unusable_reason(dm.dataset)
    assert "tiny" not in DATA_SOURCES
