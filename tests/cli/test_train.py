"""ekd-train end to end on a tiny synthetic benchmark: results.json, checkpoints, refusal to overwrite,
distillation from a trained teacher, config errors, a multirun through the real CLI, W&B offline and
2-process DDP (ddp_spawn on CPU)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ekd.cli.train import ConfigError, run
from ekd.config import CONF_DIR
from ekd.report import FinishedRunError, load_results

TINY_DATA = [
    "data.synthetic.identities=8",
    "data.synthetic.images_per_identity=4",
    "data.synthetic.pairs=20",
    "data.synthetic.heldout_identities=4",
    "data.synthetic.template_identities=0",  # no template set (tests/eval/test_templates.py scores one)
    "data.sampler=random",
    "data.batch_size=8",
]
TINY_RUN = [
    "optim.lr=0.01",
    "trainer.max_steps=2",
    "logger=none",
    "callbacks.progress_bar=null",
    "callbacks.verification=null",
    "benchmark.batch_size=2",
    "benchmark.iterations=1",
    "benchmark.warmup=0",
    "eval.batch_size=40",
    "eval.roc_points=10",
]


STUDENT = ["student.kwargs.width_mult=0.25", "student.embedding_size=32"]  # quarter-width MobileFaceNet
TEACHER_NET = ["student=tiny_teacher", "student.embedding_size=32"]  # iresnet18 at 1/8 width


def _teacher(checkpoint: Path) -> list[str]:
    return ["teacher=tiny", "teacher.embedding_size=32", f"teacher.checkpoint={checkpoint}"]


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


def _tiny(data_root: Path, *extra: str):
    return _compose(f"data.root={data_root}", *TINY_DATA, *TINY_RUN, *extra)


@pytest.fixture(scope="module")
def teacher_run(data_root, tmp_path_factory) -> tuple[Path, dict]:
    """A no-KD run whose checkpoint then serves as a teacher."""
    out = tmp_path_factory.mktemp("teacher")
    results = run(_tiny(data_root, *TEACHER_NET, "seed=3"), out, experiment="tiny")
    return out, results


def test_recognition_run_writes_results_checkpoint_and_config(teacher_run):
    out, results = teacher_run
    on_disk = load_results(out)
    assert on_disk.method == "none" and on_disk.seed == 3 and on_disk.experiment == "tiny"
    assert on_disk.student == "iresnet18" and on_disk.teacher is None
    assert set(on_disk.metrics) == {"synth_frontal", "synth_pose", "synth_age"}
    for values in on_disk.metrics.values():
        assert 0.0 <= values["accuracy"] <= 1.0 and values["num_pairs"] == 20
    assert on_disk.global_step == 2
    # cost: 2 steps of 8 images in the fit; the rate is those images over the fit's duration
    assert on_disk.train_batch_size == 8
    assert on_disk.train_images_per_s == pytest.approx(16 / on_disk.fit_time_s, rel=1e-9)
    assert on_disk.peak_memory_mib is None or on_disk.peak_memory_mib > 10
    # the data: the synthetic benchmark's recorded generator version and arguments
    assert on_disk.data_record["generator_version"] == 4
    assert on_disk.data_record["identities"] == 8 and on_disk.data_record["template_identities"] == 0
    # fp32 embeddings, the flip-sum 10-fold protocol, no IJB root: no IJB protocol
    assert on_disk.eval_protocol == {
        "precision": "32-true",
        "pair_sets": {"flip": "sum", "n_folds": 10},
        "ijb": None,
    }
    assert len(on_disk.roc["synth_pose"]["fpr"]) <= 10
    assert on_disk.throughput["images_per_s"] > 0 and on_disk.wall_time_s > 0
    # where it ran and with what: the libraries that make the images and the kernels torch chose
    import numpy
    import PIL

    assert on_disk.versions["numpy"] == numpy.__version__ and on_disk.versions["pillow"] == PIL.__version__
    assert on_disk.machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    assert on_disk.machine["cpus"] == os.cpu_count() and on_disk.machine["accelerator"] == cuda
    # parameters of a freshly built student, counted here independently
    from ekd.models import create_backbone

    fresh = create_backbone("iresnet18", embedding_size=32, base_width=8)
    assert on_disk.params == sum(p.numel() for p in fresh.parameters())
    assert on_disk.macs > 0
    # the exported backbone loads into that network; the Lightning checkpoint exists
    fresh.load_state_dict(torch.load(out / "backbone.pth", weights_only=True))
    assert Path(on_disk.checkpoint) == out / "checkpoints" / "last.ckpt"
    assert (out / "checkpoints" / "last.ckpt").is_file()
    resolved = (out / "config.yaml").read_text()
    assert "${" not in resolved and "recognition_rows: null" in resolved
    assert results.mean_accuracy == pytest.approx(sum(v["accuracy"] for v in on_disk.metrics.values()) / 3)


def test_ijb_protocol_and_precision_reach_results_json(data_root, tmp_path):
    from tests.eval.test_ijb import _write_miniature

    _write_miniature(tmp_path / "ijb")
    overrides = [f"eval.ijb_root={tmp_path / 'ijb'}", "eval.ijb_sets=[IJBC]", "eval.ijb_protocol=tface"]
    overrides += ["eval.ijb_detector_score=true", "eval.precision=bf16-mixed", "benchmark.enabled=false"]
    run(_tiny(data_root, *STUDENT, *overrides), tmp_path / "run")
    on_disk = load_results(tmp_path / "run")
    assert on_disk.eval_protocol["precision"] == "bf16-mixed"
    assert on_disk.eval_protocol["ijb"] == {
        "preset": "tface",
        "flip_mode": "plain",
        "norm_score": False,
        "detector_score": True,
        "label": "tface (detector_score=on)",
        "tpr_rule": "nearest",
    }
    ijbc = on_disk.metrics["ijbc"]
    assert ijbc["protocol"]["label"] == "tface (detector_score=on)" and ijbc["precision"] == "bf16-mixed"
    assert ijbc["num_pairs"] == 6 and ijbc["tpr_at_fpr"]["1e-6"] is None


def test_a_finished_run_directory_is_never_overwritten(teacher_run, data_root):
    out, _ = teacher_run
    before = (out / "results.json").read_bytes()
    with pytest.raises(FinishedRunError, match="holds a finished run"):
        run(_tiny(data_root), out)
    assert (out / "results.json").read_bytes() == before


def test_a_run_frees_its_objects_before_returning(data_root, tmp_path, monkeypatch):
    """The Trainer, module and datamodule hold each other, so only the cycle collector frees them.
    With its automatic passes off (as rare as they are in a long-lived process), a run still leaves
    neither its datamodule nor the verification sets it holds behind."""
    import gc
    import weakref

    import ekd.run

    built = []
    original = ekd.run.build_datamodule

    def tracked(cfg):
        datamodule = original(cfg)
        built.append(weakref.ref(datamodule))
        return datamodule

    monkeypatch.setattr(ekd.run, "build_datamodule", tracked)
    gc.collect()
    gc.disable()
    try:
        run(_tiny(data_root, *STUDENT, "seed=5"), tmp_path)
        assert len(built) == 1 and built[0]() is None
    finally:
        gc.enable()


def test_data_seed_sets_the_data_order_apart_from_the_initialisation(data_root):
    """data_seed (null: seed) seeds the datamodule, i.e. the batch order and flips; a config saved
    before the key existed gives the run's seed."""
    from ekd.run import build_datamodule

    assert build_datamodule(_tiny(data_root, "seed=3")).seed == 3
    assert build_datamodule(_tiny(data_root, "seed=3", "data_seed=5")).seed == 5
    older = _tiny(data_root, "seed=3")
    older = OmegaConf.create({k: v for k, v in OmegaConf.to_container(older).items() if k != "data_seed"})
    assert "data_seed" not in older and build_datamodule(older).seed == 3


def test_distillation_run_records_the_teacher(teacher_run, data_root, tmp_path):
    teacher_dir, _ = teacher_run
    checkpoint = teacher_dir / "checkpoints" / "last.ckpt"
    results = run(_tiny(data_root, *STUDENT, "distill=mimic", *_teacher(checkpoint)), tmp_path)
    assert results.method == "mimic" and results.teacher == "iresnet18"
    assert results.student == "mobilefacenet"
    assert results.teacher_sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert results.objectives == {"mimic": {"weight": 1.0}}


def test_config_errors_name_the_key(data_root, tmp_path):
    with pytest.raises(ConfigError, match=r"teacher\.checkpoint is not set"):
        run(_tiny(data_root, *STUDENT, "distill=kd", "teacher=iresnet50"), tmp_path / "a")
    with pytest.raises(ConfigError, match="no teacher is configured"):
        run(_tiny(data_root, "distill=kd"), tmp_path / "b")
    with pytest.raises(ConfigError, match=r"data\.root is not set: data=ms1mv2"):
        run(_compose("data=ms1mv2"), tmp_path / "c")
    with pytest.raises(ConfigError, match=r"trainer\.max_epoch \(not a key of TrainerConfig"):
        run(_tiny(data_root, "+trainer.max_epoch=3"), tmp_path / "d")
    with pytest.raises(ConfigError, match=r"eval\.precision: unknown precision '16'"):
        run(_tiny(data_root, "eval.precision=16"), tmp_path / "e")
    assert not (tmp_path / "a" / "results.json").exists()


def _cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    env["EKD_DATA_DIR"] = str(tmp_path / "cache")
    return env


def test_multirun_through_the_cli_gives_one_results_dir_per_job(teacher_run, data_root, tmp_path):
    teacher_dir, _ = teacher_run
    sweep = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "ekd.cli.train",
        "-m",
        f"data.root={data_root}",
        *TINY_DATA,
        *TINY_RUN,
        *STUDENT,
        "trainer.fast_dev_run=true",
        "distill=none,shrinkteanet",
        *_teacher(teacher_dir / "backbone.pth"),
        f"hydra.sweep.dir={sweep}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=_cli_env(tmp_path), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = sorted(sweep.glob("*/results.json"))
    assert [p.parent.name for p in results] == ["0", "1"]
    methods = [json.loads(p.read_text())["method"] for p in results]
    assert methods == ["none", "shrinkteanet"]
    assert all(json.loads(p.read_text())["sweep"] == "sweep" for p in results)


def test_wandb_offline_run_directory_is_created_and_syncable(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    results = run(_tiny(data_root, *STUDENT, "logger=wandb", "trainer.max_steps=1"), tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(tmp_path.rglob("*"))[:20]
    wandb_files = list(runs[0].glob("run-*.wandb"))
    assert len(wandb_files) == 1 and wandb_files[0].stat().st_size > 0  # what `wandb sync` uploads
    assert results.method == "none"
    import wandb

    assert wandb.run is None  # finished, so the next job of a multirun starts its own run


@pytest.mark.ddp
def test_ddp_spawn_on_two_cpu_processes(data_root, tmp_path):
    results = run(_tiny(data_root, *STUDENT, "trainer=ddp_spawn_cpu", "trainer.max_steps=2"), tmp_path)
    assert results.global_step == 2
    assert load_results(tmp_path).metrics.keys() == {"synth_frontal", "synth_pose", "synth_age"}


# ------------------------------------------------------------------------------- teacher embedding cache
TINY_TEACHER_KW = {"base_width": 8, "dropout": 0.0, "embedding_size": 32}  # teacher=tiny at 32-d


@pytest.fixture(scope="module")
def cached_teacher(data_root, tmp_path_factory) -> dict[str, Path]:
    """A plain teacher file (iresnet18/8) and its ekd-cache of the tiny synthetic training set."""
    from ekd.cli.cache import main as cache_main
    from ekd.models import create_backbone
    from ekd.run import build_datamodule

    build_datamodule(_tiny(data_root)).prepare_data()  # generate the training set before caching it
    base = tmp_path_factory.mktemp("teacher_cache")
    torch.manual_seed(7)
    teacher = base / "backbone.pth"
    torch.save(create_backbone("iresnet18", **TINY_TEACHER_KW).state_dict(), teacher)
    cache = base / "cache"
    args = ["build", "--teacher", "iresnet18", "--teacher-kwargs", json.dumps(TINY_TEACHER_KW)]
    args += ["--checkpoint", str(teacher), "--data", str(data_root), "--output", str(cache)]
    assert cache_main([*args, "--num-workers", "0", "--batch-size", "16", "--device", "cpu"]) == 0
    return {"teacher": teacher, "cache": cache, "base": base}


def test_distillation_reads_the_teacher_cache(cached_teacher, data_root, tmp_path, monkeypatch, caplog):
    from ekd.distill.cache import TeacherEmbeddingCache
    from ekd.models.iresnet import IResNet

    lookups: list[int] = []
    original = TeacherEmbeddingCache.lookup

    def counted(self, indices, flipped):
        lookups.append(len(indices))
        return original(self, indices, flipped)

    teacher_passes: list[int] = []
    online = IResNet.forward_features
    monkeypatch.setattr(TeacherEmbeddingCache, "lookup", counted)
    # the student is a MobileFaceNet: every IResNet forward would be the teacher's
    monkeypatch.setattr(
        IResNet, "forward_features", lambda self, x: teacher_passes.append(1) or online(self, x)
    )
    cache = cached_teacher["cache"]
    cfg = _tiny(
        data_root,
        *STUDENT,
        "distill=mimic",
        *_teacher(cached_teacher["teacher"]),
        f"distill.teacher_cache={cache}",
    )
    with caplog.at_level("INFO", logger="ekd"):
        results = run(cfg, tmp_path)
    assert lookups == [8, 8] and not teacher_passes  # two steps of 8 rows, all from the cache
    assert f"teacher cache {cache}: teacher embeddings are read from the cache" in caplog.text
    assert results.global_step == 2
    assert load_results(tmp_path).teacher_cache == {"path": str(cache.resolve()), "used": True}


def test_teacher_cache_is_reported_unused_for_stage_objectives(cached_teacher, data_root, tmp_path, caplog):
    cache = cached_teacher["cache"]
    overrides = [*STUDENT, "distill=fitnet", "trainer.max_steps=1", f"distill.teacher_cache={cache}"]
    with caplog.at_level("WARNING", logger="ekd"):
        results = run(_tiny(data_root, *overrides, *_teacher(cached_teacher["teacher"])), tmp_path)
    assert "read the teacher's stage feature maps; the teacher runs online" in caplog.text
    assert results.teacher_cache == {"path": str(cache.resolve()), "used": False}


def test_cache_of_another_teacher_or_dataset_is_refused_by_ekd_train(cached_teacher, data_root, tmp_path):
    from ekd.cli.cache import main as cache_main
    from ekd.data import FaceRecordDataset, dataset_fingerprint, write_synthetic
    from ekd.data.synthetic import SyntheticConfig
    from ekd.distill.cache import TeacherCacheMismatchError
    from ekd.models import create_backbone

    cache = cached_teacher["cache"]
    # another teacher file: refused when the module is built, before any training
    torch.manual_seed(8)
    other_teacher = tmp_path / "other_teacher.pth"
    torch.save(create_backbone("iresnet18", **TINY_TEACHER_KW).state_dict(), other_teacher)
    overrides = [*STUDENT, "distill=mimic", *_teacher(other_teacher), f"distill.teacher_cache={cache}"]
    with pytest.raises(TeacherCacheMismatchError) as err:
        run(_tiny(data_root, *overrides), tmp_path / "a")
    expected = [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (cached_teacher["teacher"], other_teacher)
    ]
    assert all(sha in str(err.value) for sha in expected)
    assert not (tmp_path / "a" / "results.json").exists()

    # a cache of another training set (same teacher), through the ekd-train command line
    other_data = tmp_path / "other_data"
    write_synthetic(
        other_data,
        SyntheticConfig(
            identities=6, images_per_identity=3, pairs=4, heldout_identities=2, template_identities=0
        ),
    )
    other_cache = tmp_path / "other_cache"
    args = [
        "build",
        "--teacher",
        "iresnet18",
        "--teacher-kwargs",
        json.dumps(TINY_TEACHER_KW),
        "--device",
        "cpu",
    ]
    args += [
        "--checkpoint",
        str(cached_teacher["teacher"]),
        "--data",
        str(other_data),
        "--output",
        str(other_cache),
    ]
    assert cache_main([*args, "--num-workers", "0"]) == 0
    command = [
        sys.executable,
        "-m",
        "ekd.cli.train",
        f"data.root={data_root}",
        *TINY_DATA,
        *TINY_RUN,
        *STUDENT,
    ]
    command += ["distill=mimic", *_teacher(cached_teacher["teacher"]), f"distill.teacher_cache={other_cache}"]
    command += [f"hydra.run.dir={tmp_path / 'b'}"]
    done = subprocess.run(command, capture_output=True, text=True, env=_cli_env(tmp_path), timeout=600)
    assert done.returncode != 0
    fingerprints = [dataset_fingerprint(FaceRecordDataset(root)) for root in (other_data, data_root)]
    message = f"was built for dataset fingerprint {fingerprints[0]}"
    assert "TeacherCacheMismatchError" in done.stderr and message in done.stderr, done.stderr[-3000:]
    assert f"has fingerprint {fingerprints[1]}" in done.stderr
    assert not (tmp_path / "b" / "results.json").exists()


def test_the_config_sections_reach_the_module_whole(monkeypatch):
    """build_module hands each section to the constructor argument of the same name: a new option of a
    section needs no code between the config and the module."""
    import dataclasses
    import functools

    from ekd.lit import DistillationModule, DistillConfig, build_module

    received: dict = {}

    class Built(Exception):
        pass

    @functools.wraps(DistillationModule.__init__)  # keeps the signature build_module reads
    def record(self, **kwargs) -> None:
        received.update(kwargs)
        raise Built

    monkeypatch.setattr(DistillationModule, "__init__", record)
    given = {
        "teacher_centres": "prototypes",
        "prototype_cache": "/p/protos.pt",
        "teacher_logit_scale": 32.0,
        "student_head_init": "teacher_centres",
        "save_teacher": True,
        "teacher_cache": "/c/cache",
    }
    cfg = _compose("distill=kd", *_teacher(Path("t.pth")), *(f"distill.{k}={v}" for k, v in given.items()))
    with pytest.raises(Built):
        build_module(cfg, num_classes=4, batch_layout=[8])
    distill = DistillConfig(**OmegaConf.to_container(received["distill"], resolve=True))
    assert {key: getattr(distill, key) for key in given} == given
    assert distill.objectives == {"kd": {"weight": 1.0, "temperature": 4.0}}
    assert received["teacher"] is cfg.teacher and received["student"] is cfg.student
    assert received["head"] is cfg.head and received["optim"] is cfg.optim
    assert (received["num_classes"], received["batch_layout"]) == (4, [8])
    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    assert fields >= set(given)
