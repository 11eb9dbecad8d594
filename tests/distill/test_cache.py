"""Teacher embedding cache: values against the online teacher, sharding, keys, refusals, ekd-cache CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ekd.cli.cache import main as cache_main
from ekd.data.datasets import FaceRecordDataset, write_face_records
from ekd.data.images import encode_png
from ekd.dist import shard_bounds
from ekd.distill import create as create_objective
from ekd.distill.cache import (
    BUILDING_MARKER,
    EMBEDDINGS_FILE,
    FLIPPED_FILE,
    INDEX_FILE,
    TeacherCacheError,
    TeacherCacheMismatchError,
    TeacherEmbeddingCache,
    build_teacher_cache,
    cache_unusable_reason,
    dataset_fingerprint,
    fill_cache_shard,
    finalize_cache,
    make_index,
    prepare_cache,
    stage_feature_users,
)
from ekd.models import create_backbone, file_sha256
from tests.ddp_utils import run_gloo

TEACHER = "iresnet18"
TEACHER_KW = {"base_width": 8, "embedding_size": 16}
LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3]


def _source_images(labels=LABELS, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in labels]


def _write_records(root: Path, labels=LABELS, seed: int = 0) -> Path:
    write_face_records(root, [encode_png(im) for im in _source_images(labels, seed)], labels)
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("cache")
    data = _write_records(base / "data")
    torch.manual_seed(3)
    teacher = create_backbone(TEACHER, **TEACHER_KW).eval()
    checkpoint = base / "teacher.pth"
    torch.save(teacher.state_dict(), checkpoint)
    sha = file_sha256(checkpoint)
    dataset = FaceRecordDataset(data, flip=False)
    out = base / "cache"
    build_teacher_cache(teacher, dataset, out, TEACHER, sha, TEACHER_KW, checkpoint, batch_size=4)
    return {
        "base": base,
        "data": data,
        "teacher": teacher,
        "checkpoint": checkpoint,
        "sha": sha,
        "cache": out,
    }


def _online(teacher: nn.Module, dataset: FaceRecordDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's float64 embeddings of every image and of its mirror image.

    The images are the written ones (PNG: lossless), mirrored with numpy and normalised here as the
    datasets used to do on the host, float32 (x - 127.5) / 127.5, independently of ekd's device transform.
    """
    teacher64 = create_backbone(TEACHER, **TEACHER_KW).double().eval()
    teacher64.load_state_dict(teacher.state_dict())
    source = np.stack(_source_images())
    assert len(source) == len(dataset)

    def normalised(hwc: np.ndarray) -> torch.Tensor:
        out = (hwc.astype(np.float32) - np.float32(127.5)) / np.float32(127.5)
        return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2))).double()

    with torch.no_grad():
        return teacher64(normalised(source)), teacher64(normalised(source[:, :, ::-1]))


def _within_float16(cached: torch.Tensor, exact: torch.Tensor) -> None:
    # rounding to float16: relative error <= 2^-11; the float32 forward before it: an absolute error of
    # ~1e-6 of the row's largest value (cancellation makes it large relative to near-zero entries)
    bound = exact.abs() * 2.0**-11 + 1e-5 * exact.abs().amax(dim=1, keepdim=True)
    assert bool(((cached.double() - exact).abs() <= bound).all())


def test_cached_embeddings_are_the_teacher_embeddings_of_image_and_mirror(setup):
    dataset = FaceRecordDataset(setup["data"], flip=False)
    plain, mirrored = _online(setup["teacher"], dataset)
    cache = TeacherEmbeddingCache(setup["cache"])
    n = len(LABELS)
    assert cache.num_images == n and cache.embedding_size == 16
    everything = torch.arange(n)
    _within_float16(cache.lookup(everything, torch.zeros(n, dtype=torch.bool)), plain)
    _within_float16(cache.lookup(everything, torch.ones(n, dtype=torch.bool)), mirrored)
    # mixed flags pick row by row
    flags = torch.tensor([i % 3 == 0 for i in range(n)])
    mixed = cache.lookup(everything, flags)
    expected = torch.where(flags[:, None], mirrored, plain)
    _within_float16(mixed, expected)
    assert mixed.dtype == torch.float32
    # the mirror embedding really differs (the cache does not store the same thing twice)
    assert not torch.allclose(plain, mirrored, rtol=1e-2)
    np.testing.assert_array_equal(cache.labels, LABELS)
    assert np.load(setup["cache"] / EMBEDDINGS_FILE, mmap_mode="r").dtype == np.float16


def test_index_is_keyed_by_dataset_fingerprint_and_teacher_sha(setup):
    index = json.loads((setup["cache"] / INDEX_FILE).read_text())
    dataset = FaceRecordDataset(setup["data"])
    assert index["teacher_sha256"] == setup["sha"]
    assert index["dataset_fingerprint"] == dataset_fingerprint(dataset)
    import ekd.data

    assert dataset_fingerprint is ekd.data.dataset_fingerprint  # one implementation, in ekd.data
    assert index["teacher"]["name"] == TEACHER and index["teacher"]["kwargs"] == TEACHER_KW
    assert index["num_images"] == len(LABELS) and index["dataset"]["num_classes"] == 4
    assert not (setup["cache"] / BUILDING_MARKER).exists()


def test_shard_ranges_tile_the_dataset():
    for n in (1, 7, 11, 64):
        for world in (1, 2, 3, 5):
            ranges = [shard_bounds(n, world_size=world, rank=r) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert max(e - s for s, e in ranges) - min(e - s for s, e in ranges) <= 1
    with pytest.raises(ValueError, match="rank 2"):
        shard_bounds(10, world_size=2, rank=2)


def test_sharded_build_equals_the_single_build(setup, tmp_path):
    dataset = FaceRecordDataset(setup["data"], flip=False)
    out = prepare_cache(tmp_path / "sharded", len(dataset), 16, dataset.labels)
    written = [fill_cache_shard(setup["teacher"], dataset, out, rank, 3, batch_size=2) for rank in range(3)]
    # ekd.dist.shard_bounds: the first 11 % 3 ranks take one more (the old floor split gave 3, 4, 4;
    # the comparison with the single build below shows the split does not change the cache)
    assert written == [4, 4, 3]
    finalize_cache(out, make_index(dataset, TEACHER, setup["sha"], 16, shards=3))
    single, sharded = TeacherEmbeddingCache(setup["cache"]), TeacherEmbeddingCache(out)
    everything = torch.arange(len(LABELS))
    for flag in (False, True):
        flags = torch.full((len(LABELS),), flag)
        torch.testing.assert_close(
            sharded.lookup(everything, flags), single.lookup(everything, flags), rtol=2e-3, atol=1e-4
        )


def _gloo_build(rank: int, world_size: int, data: str, checkpoint: str, out: str) -> int:
    torch.manual_seed(0)
    teacher = create_backbone(TEACHER, **TEACHER_KW)
    teacher.load_state_dict(torch.load(checkpoint, weights_only=True))
    dataset = FaceRecordDataset(data, flip=False)
    build_teacher_cache(
        teacher, dataset, out, TEACHER, file_sha256(checkpoint), TEACHER_KW, checkpoint, batch_size=3
    )
    return rank


@pytest.mark.ddp
def test_two_process_build_under_torch_distributed(setup, tmp_path):
    out = tmp_path / "ddp"
    assert run_gloo(_gloo_build, str(setup["data"]), str(setup["checkpoint"]), str(out)) == [0, 1]
    index = json.loads((out / INDEX_FILE).read_text())
    assert index["shards"] == 2
    single, ddp = TeacherEmbeddingCache(setup["cache"]), TeacherEmbeddingCache(out)
    everything = torch.arange(len(LABELS))
    for flag in (False, True):
        flags = torch.full((len(LABELS),), flag)
        torch.testing.assert_close(
            ddp.lookup(everything, flags), single.lookup(everything, flags), rtol=2e-3, atol=1e-4
        )


def test_another_teacher_or_dataset_is_refused_naming_both_fingerprints(setup, tmp_path):
    cache = TeacherEmbeddingCache(setup["cache"])
    cache.verify_teacher(setup["sha"], TEACHER)
    cache.verify_dataset(FaceRecordDataset(setup["data"]))
    other_sha = "0" * 64
    with pytest.raises(TeacherCacheMismatchError) as err:
        cache.verify_teacher(other_sha, checkpoint="other.pth")
    assert setup["sha"] in str(err.value) and other_sha in str(err.value) and "other.pth" in str(err.value)
    with pytest.raises(TeacherCacheMismatchError, match="'iresnet50'"):
        cache.verify_teacher(setup["sha"], "iresnet50")
    other = FaceRecordDataset(_write_records(tmp_path / "other", labels=[0, 1, 2, 3]))
    with pytest.raises(TeacherCacheMismatchError) as err:
        cache.verify_dataset(other)
    assert cache.dataset_fingerprint in str(err.value) and dataset_fingerprint(other) in str(err.value)


def test_lookup_and_label_checks(setup):
    cache = TeacherEmbeddingCache(setup["cache"])
    with pytest.raises(TeacherCacheError, match="sample index 11 is outside"):
        cache.lookup(torch.tensor([0, 11]), torch.tensor([False, False]))
    with pytest.raises(ValueError, match="2 indices but 1 flip"):
        cache.lookup(torch.tensor([0, 1]), torch.tensor([False]))
    cache.check_labels(torch.tensor([0, 3, 10]), torch.tensor([0, 1, 3]))
    with pytest.raises(TeacherCacheMismatchError, match="sample 3 has label 2 in the batch but 1"):
        cache.check_labels(torch.tensor([0, 3]), torch.tensor([0, 2]))


def test_unfinished_malformed_and_missing_caches_are_refused(setup, tmp_path):
    with pytest.raises(TeacherCacheError, match="no such folder"):
        TeacherEmbeddingCache(tmp_path / "nothing")
    unfinished = prepare_cache(tmp_path / "unfinished", 3, 4, np.zeros(3, dtype=np.int64))
    with pytest.raises(TeacherCacheError, match="unfinished"):
        TeacherEmbeddingCache(unfinished)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherCacheError, match="index.json: not found"):
        TeacherEmbeddingCache(tmp_path / "empty")
    broken = shutil.copytree(setup["cache"], tmp_path / "broken")
    (broken / INDEX_FILE).write_text("{not json")
    with pytest.raises(TeacherCacheError, match="index.json: not readable JSON"):
        TeacherEmbeddingCache(broken)
    (broken / INDEX_FILE).write_text(json.dumps({"format": "something/1"}))
    with pytest.raises(TeacherCacheError, match="format 'something/1'"):
        TeacherEmbeddingCache(broken)
    shape = shutil.copytree(setup["cache"], tmp_path / "shape")
    np.save(shape / EMBEDDINGS_FILE, np.zeros((3, 16), dtype=np.float16))
    with pytest.raises(TeacherCacheError, match=r"teacher_embeddings.npy: float16 array of shape \(3, 16\)"):
        TeacherEmbeddingCache(shape)


def test_finished_cache_is_not_overwritten(setup, tmp_path):
    out = shutil.copytree(setup["cache"], tmp_path / "done")
    before = (out / EMBEDDINGS_FILE).read_bytes()
    with pytest.raises(TeacherCacheError, match="already holds a finished teacher cache"):
        prepare_cache(out, 3, 4, np.zeros(3, dtype=np.int64))
    assert (out / EMBEDDINGS_FILE).read_bytes() == before and (out / INDEX_FILE).exists()


def test_values_outside_float16_are_refused(setup, tmp_path):
    class Huge(nn.Module):
        embedding_size = 2

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.new_full((x.shape[0], 2), 1e6)

    dataset = FaceRecordDataset(setup["data"], flip=False)
    with pytest.raises(TeacherCacheError, match="sample 0 is non-finite or beyond the float16 range"):
        build_teacher_cache(Huge(), dataset, tmp_path / "huge", "huge", "x" * 64)
    assert not (tmp_path / "huge" / INDEX_FILE).exists()


def test_augmentation_and_stage_objectives_keep_the_online_teacher(setup):
    dataset = FaceRecordDataset(setup["data"], transform=lambda x: x * 0.5)
    assert "transform" in cache_unusable_reason(dataset)
    assert cache_unusable_reason(FaceRecordDataset(setup["data"])) is None
    no_fingerprint = torch.utils.data.TensorDataset(torch.zeros(1))
    assert "needs a dataset fingerprint" in cache_unusable_reason(no_fingerprint)
    objectives = {
        "kd": create_objective("kd"),
        "ekd": create_objective("ekd"),
        "hint": create_objective(
            "fitnet", student_shapes={"stage4": (8, 2, 2)}, teacher_shapes={"stage4": (8, 2, 2)}
        ),
    }
    assert stage_feature_users(objectives) == ["hint"]
    with pytest.raises(TeacherCacheError, match="transform"):
        build_teacher_cache(setup["teacher"], dataset, setup["base"] / "aug", TEACHER, setup["sha"])


def test_cli_build_info_and_errors(setup, tmp_path, capsys):
    args = [
        "build",
        "--teacher",
        TEACHER,
        "--teacher-kwargs",
        json.dumps(TEACHER_KW),
        "--checkpoint",
        str(setup["checkpoint"]),
        "--data",
        str(setup["data"]),
        "--output",
        str(tmp_path / "c"),
        "--num-workers",
        "0",
        "--batch-size",
        "5",
        "--device",
        "cpu",
    ]
    assert cache_main(args) == 0
    assert f"of {len(LABELS)} images" in capsys.readouterr().out
    built, reference = TeacherEmbeddingCache(tmp_path / "c"), TeacherEmbeddingCache(setup["cache"])
    assert built.teacher_sha256 == setup["sha"] and built.dataset_fingerprint == reference.dataset_fingerprint
    everything = torch.arange(len(LABELS))
    torch.testing.assert_close(
        built.lookup(everything, everything % 2 == 0),
        reference.lookup(everything, everything % 2 == 0),
        rtol=2e-3,
        atol=1e-4,
    )

    assert cache_main(["info", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert setup["sha"] in out and built.dataset_fingerprint in out and f"{len(LABELS)} (4 classes)" in out
    assert cache_main(["info", str(tmp_path / "c"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["teacher_sha256"] == setup["sha"]

    # a second build into the finished cache is refused and leaves it alone
    before = (tmp_path / "c" / EMBEDDINGS_FILE).read_bytes()
    assert cache_main(args) == 2
    assert "already holds a finished teacher cache" in capsys.readouterr().err
    assert (tmp_path / "c" / EMBEDDINGS_FILE).read_bytes() == before

    missing = [*args[:6], str(tmp_path / "nope.pth"), *args[7:]]
    assert cache_main(missing) == 2
    assert "nope.pth" in capsys.readouterr().err
    assert cache_main(["info", str(tmp_path)]) == 2
    assert "not a teacher cache" in capsys.readouterr().err
    assert cache_main([*args[:-2], "--teacher-kwargs", "[1]", "--device", "cpu"]) == 2
    assert "expected a JSON object" in capsys.readouterr().err


def _lightning_teacher(setup, directory: Path, distilled: bool) -> Path:
    """A real ekd checkpoint whose *student* is the setup's teacher: a RecognitionModule run, or a
    DistillationModule run (its own teacher, an mbf, must not be taken for the cache's teacher)."""
    import pytorch_lightning as pl

    from ekd.lit import DistillationModule, RecognitionModule

    student = {"name": TEACHER, "embedding_size": 16, "kwargs": {"base_width": 8}}
    if distilled:
        torch.manual_seed(9)
        own_teacher = create_backbone("mbf", embedding_size=16, width_mult=0.25)
        torch.save(own_teacher.state_dict(), directory / "mbf.pth")
        section = {"name": "mbf", "embedding_size": 16, "kwargs": {"width_mult": 0.25}}
        module = DistillationModule(
            student,
            num_classes=4,
            teacher={**section, "checkpoint": str(directory / "mbf.pth")},
            distill={"objectives": {"mimic": {}}},
        )
    else:
        module = RecognitionModule(student, num_classes=4)
    module.student.load_state_dict(setup["teacher"].state_dict())
    trainer = pl.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu"
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(directory / "last.ckpt")
    return directory / "last.ckpt"


@pytest.mark.parametrize("distilled", [False, True], ids=["recognition_ckpt", "distillation_ckpt"])
def test_cli_build_from_an_ekd_checkpoint_needs_no_teacher_flags(setup, tmp_path, capsys, distilled):
    checkpoint = _lightning_teacher(setup, tmp_path, distilled)
    common = ["--data", str(setup["data"]), "--num-workers", "0", "--batch-size", "5", "--device", "cpu"]
    bare = ["build", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "bare"), *common]
    assert cache_main(bare) == 0
    assert f"teacher: {TEACHER}, 16-d (recorded in {checkpoint} hyper_parameters['student'])" in (
        capsys.readouterr().err
    )
    flagged = ["build", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "flagged"), *common]
    flagged += ["--teacher", TEACHER, "--teacher-kwargs", json.dumps(TEACHER_KW)]
    assert cache_main(flagged) == 0

    bare_cache, flagged_cache = (
        TeacherEmbeddingCache(tmp_path / "bare"),
        TeacherEmbeddingCache(tmp_path / "flagged"),
    )
    everything = torch.arange(len(LABELS))
    for flipped in (everything % 2 == 0, everything % 2 == 1):
        assert torch.equal(bare_cache.lookup(everything, flipped), flagged_cache.lookup(everything, flipped))
    # the student the checkpoint holds is the setup's teacher: the reference cache built from that model
    torch.testing.assert_close(
        bare_cache.lookup(everything, everything % 2 == 0),
        TeacherEmbeddingCache(setup["cache"]).lookup(everything, everything % 2 == 0),
        rtol=2e-3,
        atol=1e-4,
    )
    teacher = json.loads((tmp_path / "bare" / INDEX_FILE).read_text())["teacher"]
    assert (teacher["name"], teacher["embedding_size"]) == (TEACHER, 16)
    assert teacher["kwargs"] == {"embedding_size": 16, "base_width": 8}
    assert teacher["sha256"] == file_sha256(checkpoint)


def test_cli_build_refuses_contradicting_or_missing_teacher_flags(setup, tmp_path, capsys):
    checkpoint = _lightning_teacher(setup, tmp_path, distilled=False)
    common = [
        "--data",
        str(setup["data"]),
        "--output",
        str(tmp_path / "c"),
        "--num-workers",
        "0",
        "--device",
        "cpu",
    ]
    assert cache_main(["build", "--checkpoint", str(checkpoint), "--teacher", "mbf", *common]) == 2
    assert f"--teacher 'mbf' contradicts '{TEACHER}' recorded in {checkpoint}" in capsys.readouterr().err
    kwargs = ["--teacher-kwargs", '{"embedding_size": 32}']
    assert cache_main(["build", "--checkpoint", str(checkpoint), *kwargs, *common]) == 2
    assert "--teacher-kwargs embedding_size 32 contradicts 16 recorded in" in capsys.readouterr().err
    # an insightface-style teacher file records nothing: --teacher is required
    assert cache_main(["build", "--checkpoint", str(setup["checkpoint"]), *common]) == 2
    err = capsys.readouterr().err
    assert "does not record which backbone it holds" in err and "give --teacher" in err
    assert not (tmp_path / "c" / INDEX_FILE).exists()


@pytest.mark.parametrize(
    ("argv", "example"),
    [
        (["--help"], "ekd-cache info cache/r50"),
        (["build", "--help"], "ekd-cache build --checkpoint runs/teacher/checkpoints/last.ckpt --data"),
        (["info", "--help"], "ekd-cache info cache/r50 --json"),
    ],
)
def test_cli_help_shows_an_example(argv, example, capsys):
    with pytest.raises(SystemExit) as info:
        cache_main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and example in out


# ------------------------------------------------------------------------------ DistillationModule hook
def _module(setup, objectives, **kwargs):
    from ekd.lit.distillation import DistillationModule

    teacher_options = dict(TEACHER_KW)
    teacher = {
        "name": TEACHER,
        "embedding_size": teacher_options.pop("embedding_size"),
        "kwargs": teacher_options,
    }
    distill = {"objectives": objectives, "teacher_cache": str(setup["cache"])}
    distill.update({key: kwargs.pop(key) for key in ("teacher_cache", "teacher_centres") if key in kwargs})
    return DistillationModule(
        student={"name": TEACHER, "embedding_size": 16, "kwargs": {"base_width": 8}},
        num_classes=4,
        teacher={**teacher, "checkpoint": kwargs.pop("teacher_checkpoint", str(setup["checkpoint"]))},
        distill=distill,
        head={"name": "arcface", "kwargs": {"s": 16.0, "m": 0.3}},
        optim={"lr": 0.01},
        schedule={"name": "constant"},
        **kwargs,
    )


def _fit(module, root, steps=2, data=None):
    import pytorch_lightning as pl

    from ekd.data.datamodule import FaceDataModule

    data = data or FaceDataModule(
        source="rec",
        root=str(root),
        sampler="ekd",
        general=4,
        identities=2,
        images_per_identity=2,
        flip=True,
        num_workers=0,
        val_sets=[],
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=data)
    return data


def test_distillation_reads_the_cache_instead_of_running_the_teacher(setup):
    from tests.lit.common import CaptureObjectiveInputs

    module = _module(setup, {"ekd": {"weight": 1.0}, "kd": {"weight": 1.0}}, teacher_centres="prototypes")
    captured = CaptureObjectiveInputs(module.objectives["kd"])
    module.teacher.forward_features = lambda x: pytest.fail("the teacher ran although the cache is active")
    data = _fit(module, setup["data"])
    # the data side served the cache, and still says so after the fit (results.json's teacher_cache.used)
    assert data.teacher_cache_active
    # what the objective received: the teacher embedding of each row's image as the student saw it
    dataset = FaceRecordDataset(setup["data"], flip=False)
    plain, mirrored = _online(setup["teacher"], dataset)
    sampler = data.build_sampler()
    for (_student, teacher, labels), batch in zip(captured.calls, sampler):
        indices = torch.tensor([i for i, _ in batch])
        flips = torch.tensor([f for _, f in batch])
        torch.testing.assert_close(labels, torch.as_tensor(dataset.labels[indices]))
        _within_float16(teacher.embedding, torch.where(flips[:, None], mirrored[indices], plain[indices]))
        # teacher logits from the cached embedding: s cos(f^_t, W^_t), prototypes from the cache
        centres = torch.nn.functional.normalize(module.teacher_class_centres.double(), dim=1)
        expected = 64.0 * torch.nn.functional.normalize(teacher.embedding.double(), dim=1) @ centres.T
        torch.testing.assert_close(teacher.logits.double(), expected, rtol=1e-5, atol=1e-4)
    assert len(captured.calls) == 2 and bool(sampler.flip)
    # prototypes from the cache: mean of the normalised embeddings of every image and its mirror
    unit = torch.cat(
        [torch.nn.functional.normalize(plain, dim=1), torch.nn.functional.normalize(mirrored, dim=1)]
    )
    labels = torch.as_tensor(np.concatenate([dataset.labels, dataset.labels]))
    means = torch.stack([unit[labels == c].mean(0) for c in range(4)])
    torch.testing.assert_close(
        module.teacher_class_centres.double(), torch.nn.functional.normalize(means, dim=1), rtol=0, atol=2e-3
    )


def test_stage_objectives_and_augmentation_keep_the_online_teacher(setup, caplog):
    module = _module(setup, {"fitnet": {"weight": 1.0}})
    assert module.teacher_cache is None
    assert "objectives ['fitnet'] read the teacher's stage feature maps" in caplog.text
    assert "the teacher runs online" in caplog.text
    caplog.clear()
    module = _module(setup, {"mimic": {"weight": 1.0}})
    teacher_calls = []
    online = module.teacher.forward_features
    module.teacher.forward_features = lambda x: teacher_calls.append(x.shape[0]) or online(x)
    import pytorch_lightning as pl

    # a plain loader (no datamodule): nothing tells the module which image each row is
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    images = torch.rand(4, 3, 112, 112) * 2 - 1
    trainer.fit(
        module,
        torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.arange(4)), batch_size=4),
    )
    assert teacher_calls == [4] and "does not come from a datamodule" in caplog.text


def test_cache_of_another_teacher_or_dataset_is_refused(setup, tmp_path):
    other_teacher = create_backbone(TEACHER, **TEACHER_KW)
    path = tmp_path / "other.pth"
    torch.save(other_teacher.state_dict(), path)
    with pytest.raises(TeacherCacheMismatchError) as err:
        _module(setup, {"mimic": {"weight": 1.0}}, teacher_checkpoint=str(path))
    assert setup["sha"] in str(err.value) and file_sha256(path) in str(err.value)
    other = _write_records(tmp_path / "data", labels=[0, 0, 1, 1, 2, 2, 3, 3])
    with pytest.raises(TeacherCacheMismatchError) as err:
        _fit(_module(setup, {"mimic": {"weight": 1.0}}), other)
    expected = dataset_fingerprint(FaceRecordDataset(other))
    assert TeacherEmbeddingCache(setup["cache"]).dataset_fingerprint in str(err.value) and expected in str(
        err.value
    )


def _datamodule(root, **kwargs):
    from ekd.data.datamodule import FaceDataModule

    options = dict(source="rec", root=str(root), batch_size=4, flip=True, num_workers=0, val_sets=[])
    return FaceDataModule(**{**options, **kwargs})


def test_the_datamodule_serves_the_cached_embedding_of_each_row(setup, caplog):
    from ekd.data import FaceBatch

    caplog.set_level("INFO")
    data = _datamodule(setup["data"])
    cache = TeacherEmbeddingCache(setup["cache"])
    assert data.attach_teacher_cache(cache) and data.teacher_cache_active and data.teacher_cache is cache
    assert "teacher embeddings are read from the cache" in caplog.text
    # independent of TeacherEmbeddingCache.lookup: the arrays as written, row by row
    plain = np.load(setup["cache"] / EMBEDDINGS_FILE).astype(np.float32)
    mirrored = np.load(setup["cache"] / FLIPPED_FILE).astype(np.float32)
    flips = []
    for batch in data.train_dataloader():
        assert batch.teacher_embedding is None  # added in the main process, before the device transfer
        served = data.on_before_batch_transfer(batch, 0)
        rows = zip(batch.indices.tolist(), batch.flipped.tolist())
        expected = [mirrored[i] if f else plain[i] for i, f in rows]
        assert served.teacher_embedding.dtype == torch.float32
        np.testing.assert_array_equal(served.teacher_embedding.numpy(), np.stack(expected))
        flips += batch.flipped.tolist()
    assert any(flips) and not all(flips)
    # rows whose labels differ from the cached ones do not refer to the cached dataset: refused
    wrong = FaceBatch(batch.images, (batch.labels + 1) % 4, batch.indices, batch.flipped)
    with pytest.raises(TeacherCacheMismatchError, match="in the batch but"):
        data.add_teacher_embeddings(wrong)
    data.detach_teacher_cache()
    assert not data.teacher_cache_active
    assert data.on_before_batch_transfer(next(iter(data.train_dataloader())), 0).teacher_embedding is None
    # a transform beyond the flip: not used, with the same log line as before; another dataset: refused
    caplog.clear()
    augmented = _datamodule(setup["data"])
    augmented.dataset.transform = lambda x: x * 0.5
    assert not augmented.attach_teacher_cache(cache) and not augmented.teacher_cache_active
    assert "transform" in caplog.text and "the teacher runs online" in caplog.text
    other = _write_records(setup["base"] / "other_data", labels=[0, 0, 1, 1, 2, 2, 3, 3])
    with pytest.raises(TeacherCacheMismatchError, match="fingerprint"):
        _datamodule(other).attach_teacher_cache(cache)


def test_the_module_uses_the_batch_teacher_embedding_of_its_own_cache_only(setup):
    from ekd.data import FaceBatch
    from tests.lit.common import CaptureObjectiveInputs

    images = torch.rand(4, 3, 112, 112) * 2 - 1
    labels = torch.tensor([0, 1, 2, 3])
    given = torch.randn(4, 16)
    cached = _module(setup, {"mimic": {"weight": 1.0}})
    capture = CaptureObjectiveInputs(cached.objectives["mimic"])
    cached.teacher.forward_features = lambda x: pytest.fail("the teacher ran despite the batch's embeddings")
    cached.training_step(FaceBatch(images, labels, teacher_embedding=given), 0)
    assert torch.equal(capture.calls[-1][1].embedding, given)
    # a module without a cache never takes another teacher's embeddings: its own teacher runs
    online = _module(setup, {"mimic": {"weight": 1.0}}, teacher_cache=None)
    capture = CaptureObjectiveInputs(online.objectives["mimic"])
    online.training_step(FaceBatch(images, labels, teacher_embedding=given), 0)
    with torch.no_grad():
        expected = online.teacher.forward_features(images).embedding
    torch.testing.assert_close(capture.calls[-1][1].embedding, expected)
    with pytest.raises(ValueError, match=r"teacher_embedding has shape \(4, 3\), expected \(4, 16\)"):
        cached.training_step(FaceBatch(images, labels, teacher_embedding=torch.zeros(4, 3)), 0)


def test_a_later_fit_on_the_same_datamodule_starts_without_the_cache(setup):
    cached = _module(setup, {"mimic": {"weight": 1.0}})
    data = _fit(cached, setup["data"], steps=1)
    assert data.teacher_cache_active
    online = _module(setup, {"mimic": {"weight": 1.0}}, teacher_cache=None)
    calls = []
    forward = online.teacher.forward_features
    online.teacher.forward_features = lambda x: calls.append(x.shape[0]) or forward(x)
    _fit(online, setup["data"], steps=1, data=data)
    assert calls == [8] and not data.teacher_cache_active
