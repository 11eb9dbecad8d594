"""Bad-input matrix: each bad input ends in a clear error naming the file / key / value and what was
expected, and nothing on disk is overwritten."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ekd.data.bins import load_bin, write_bin
from ekd.data.datasets import FaceRecordDataset
from ekd.data.errors import BinFormatError, DataError, RecordIOError
from ekd.distill import create as create_objective
from ekd.heads import create as create_head
from ekd.lit.distillation import DistillationModule
from ekd.lit.recognition import RecognitionModule
from ekd.models import CheckpointMismatchError, Features, create_backbone
from tests.reliability.common import module_options, teacher_file, trainer, write_records

LABELS = [0, 0, 1, 1, 2, 2]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _read_all(root: Path) -> None:
    dataset = FaceRecordDataset(root)
    for i in range(len(dataset)):
        dataset[i]


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    return write_records(tmp_path_factory.mktemp("bad") / "data", LABELS)


def _copy(records: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(records, tmp_path / "copy"))


def _offsets(root: Path) -> dict[int, int]:
    lines = (root / "train.idx").read_text().split("\n")
    return {int(k): int(v) for k, v in (line.split("\t") for line in lines if line)}


# ------------------------------------------------------------------------------------ data files
def test_truncated_rec_names_the_files_and_the_fix(records, tmp_path):
    root = _copy(records, tmp_path)
    with open(root / "train.rec", "r+b") as handle:
        handle.truncate((root / "train.rec").stat().st_size - 500)
    before = _snapshot(root)
    with pytest.raises(RecordIOError) as err:
        _read_all(root)
    message = str(err.value)
    assert "train.idx" in message and "train.rec" in message and "past the end" in message
    assert "ekd-data reindex" in message
    assert _snapshot(root) == before


def test_corrupt_record_frame_names_key_and_offset(records, tmp_path):
    root = _copy(records, tmp_path)
    offset = _offsets(root)[2]
    with open(root / "train.rec", "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\0\0\0\0")
    with pytest.raises(
        RecordIOError, match=rf"train.rec \(key 2\): wrong magic 0x[0-9A-F]+ at byte offset {offset}"
    ):
        _read_all(root)


def test_corrupt_image_bytes_name_the_record(records, tmp_path):
    root = _copy(records, tmp_path)
    with open(root / "train.rec", "r+b") as handle:
        handle.seek(_offsets(root)[3] + 8 + 24 + 10)  # frame, IRHeader, then into the PNG
        handle.write(b"\x13" * 200)
    with pytest.raises(DataError, match=r"train.rec record 3: cannot decode the image payload"):
        _read_all(root)


def test_truncated_or_garbage_idx_names_the_line(records, tmp_path):
    root = _copy(records, tmp_path)
    lines = (root / "train.idx").read_text().splitlines()
    cut = len(lines) // 2
    (root / "train.idx").write_text("\n".join(lines[:cut] + [lines[cut].split("\t")[0]]))  # cut inside a line
    with pytest.raises(
        RecordIOError, match=rf"train.idx: line {cut + 1} is '{cut}', expected 'key<TAB>offset'"
    ):
        _read_all(root)
    (root / "train.idx").write_text("\n".join(lines[:cut]) + "\n")  # cut at a line end: keys are missing
    with pytest.raises(RecordIOError, match=r"train.idx: no record with key \d+"):
        _read_all(root)
    (root / "train.idx").write_text("1\tabc\n")
    with pytest.raises(RecordIOError, match=r"train.idx: line 1 is '1\\tabc'"):
        _read_all(root)


def test_missing_rec_and_bad_property(records, tmp_path):
    with pytest.raises(RecordIOError, match=r"train.rec: record file not found"):
        FaceRecordDataset(tmp_path)
    root = _copy(records, tmp_path)
    (root / "property").write_text("three,112,112")
    with pytest.raises(
        DataError, match=r"property: content 'three,112,112' is not 'num_classes,height,width'"
    ):
        FaceRecordDataset(root)


def test_num_classes_smaller_than_the_labels(records, tmp_path):
    root = _copy(records, tmp_path)
    (root / "property").write_text("2,112,112")  # labels go up to 2
    with pytest.raises(DataError, match=r"label 2, expected 0 <= label < num_classes = 2"):
        FaceRecordDataset(root)
    # a module with fewer classes than the data: the head names the range at the first step
    module = RecognitionModule(**module_options(num_classes=2))
    images, labels = torch.rand(4, 3, 112, 112) * 2 - 1, torch.tensor([0, 1, 2, 2])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=4)
    with pytest.raises(
        ValueError, match=r"labels must lie in \[0, 1\] \(number of classes 2\), got \[0, 2\]"
    ):
        trainer(max_steps=1).fit(module, loader)


def test_identity_records_that_disagree_with_the_image_headers(records, tmp_path, caplog):
    from ekd.data.recordio import RecordWriter, pack_payload

    root = _copy(records, tmp_path)
    # rewrite the identity records (keys 7, 8, 9 after 6 images) with the ranges of identities 1 and 2
    # swapped; the image headers keep LABELS
    reader = FaceRecordDataset(root).reader
    payloads = {int(k): reader.read(int(k)) for k in reader.keys}
    reader.close()
    with RecordWriter(root / "train.rec", root / "train.idx") as writer:
        for key in range(7):
            writer.write(key, payloads[key])
        for key, (start, end) in zip((7, 8, 9), ((1, 3), (5, 7), (3, 5))):
            writer.write(key, pack_payload([start, end], b"", id=key))
    with caplog.at_level("WARNING", logger="ekd.data.datasets"):
        dataset = FaceRecordDataset(root)
    assert dataset.labels.tolist() == LABELS  # the image headers, never the ranges
    assert "unsorted ranges: identity record 9 has [3, 5) after [5, 7) of record 8" in caplog.text
    # a header label that is no class at all cannot be resolved: the file and the record are named
    payload = bytearray(payloads[4])
    payload[4:8] = np.float32(1.5).tobytes()  # the IRHeader label field (struct '<IfQQ')
    with RecordWriter(root / "train.rec", root / "train.idx") as writer:
        for key in range(10):
            writer.write(key, bytes(payload) if key == 4 else payloads[key])
    with pytest.raises(
        DataError, match=r"copy/train\.rec record 4: header label 1\.5 is not an integer class"
    ):
        FaceRecordDataset(root)


def test_mistyped_synthetic_root_is_refused_and_left_alone(records, tmp_path):
    from ekd.data.datamodule import FaceDataModule

    root = _copy(records, tmp_path)  # real RecordIO data: no synthetic.json
    before = _snapshot(root)
    module = FaceDataModule(source="synthetic", root=str(root), num_workers=0)
    with pytest.raises(DataError) as err:
        module.prepare_data()
    message = str(err.value)
    assert f"{root} is not empty and holds no generated synthetic benchmark" in message
    assert "it contains property, train.idx, train.rec" in message and "use the data source 'rec'" in message
    assert _snapshot(root) == before


def test_truncated_and_foreign_bin(tmp_path):
    images = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8)
    write_bin(tmp_path / "lfw.bin", images, [True, False])
    data = (tmp_path / "lfw.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(BinFormatError, match=r"cut.bin"):
        load_bin(tmp_path / "cut.bin")
    (tmp_path / "text.bin").write_bytes(b"hello world")
    with pytest.raises(BinFormatError, match=r"text.bin"):
        load_bin(tmp_path / "text.bin")
    with pytest.raises(BinFormatError, match=r"missing.bin: verification .bin file not found"):
        load_bin(tmp_path / "missing.bin")


# ---------------------------------------------------------------------------- teacher checkpoints
def test_missing_teacher_checkpoint_is_an_error_never_a_random_teacher(tmp_path):
    path = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        DistillationModule(**module_options(path, objectives={"mimic": {}}))


def test_mismatched_teacher_checkpoint_names_file_and_keys(tmp_path):
    path = teacher_file(tmp_path / "teacher.pth")
    options = module_options(path, objectives={"mimic": {}})
    options["teacher"].update(kwargs={"base_width": 16}, embedding_size=16)  # another architecture
    before = path.read_bytes()
    with pytest.raises(CheckpointMismatchError) as err:
        DistillationModule(**options)
    assert "teacher.pth" in str(err.value) and "conv1.weight" in str(err.value) and "shape" in str(err.value)
    assert path.read_bytes() == before
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage.pth is not a PyTorch checkpoint"):
        DistillationModule(**module_options(tmp_path / "garbage.pth", objectives={"mimic": {}}))


# --------------------------------------------------------------------------------- configuration
def test_unknown_objective_backbone_and_head_names_list_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown distillation objective 'kdd'; known: .*\bkd\b"):
        create_objective("kdd")
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet999'; known: .*iresnet50"):
        create_backbone("resnet999")
    with pytest.raises(ValueError, match=r"unknown recognition head 'arcfacex'; known: .*\barcface\b"):
        create_head("arcfacex", 16, 4)
    teacher = teacher_file(tmp_path / "teacher.pth")
    with pytest.raises(ValueError, match=r"unknown distillation objective 'nope'"):
        DistillationModule(**module_options(teacher, objectives={"nope": {}}))
    with pytest.raises(ValueError, match=r"unknown recognition head 'arcfacex'"):
        RecognitionModule(**module_options(head={"name": "arcfacex"}))


def test_stage_objective_with_a_backbone_without_stages():
    fitnet = create_objective(
        "fitnet", student_shapes={"stage4": (8, 7, 7)}, teacher_shapes={"stage4": (8, 7, 7)}
    )
    without_stages = Features(embedding=torch.zeros(0, 16), stages={})
    with pytest.raises(ValueError) as err:
        fitnet.check_features(without_stages, "student")
    message = str(err.value)
    assert (
        "'fitnet'" in message
        and "stages.stage4" in message
        and "student" in message
        and "stages=[]" in message
    )


def test_wrong_input_size_names_the_expected_shape():
    model = create_backbone("iresnet18", base_width=8, embedding_size=16)
    with pytest.raises(
        ValueError, match=r"expects input of shape N x 3 x 112 x 112 .* got \(1, 3, 128, 128\)"
    ):
        model(torch.zeros(1, 3, 128, 128))
    mobile = create_backbone("mobilefacenet")
    with pytest.raises(ValueError, match=r"112 x 112"):
        mobile(torch.zeros(1, 3, 96, 96))


# ---------------------------------------------------------------------------------- run outputs
def test_wandb_offline_without_network_completes(tmp_path, monkeypatch):
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    # an unreachable host: offline mode must never try it
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.chdir(tmp_path)
    logger = WandbLogger(project="ekd-test", save_dir=str(tmp_path), offline=True)
    module = RecognitionModule(**module_options())
    images, labels = torch.rand(8, 3, 112, 112) * 2 - 1, torch.tensor([0, 1, 2, 3] * 2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=4)
    fit = trainer(max_steps=2, logger=logger)
    fit.fit(module, loader)
    logger.experiment.finish()
    assert fit.global_step == 2
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs, f"no offline run folder under {tmp_path / 'wandb'}: {os.listdir(tmp_path)}"


def test_output_directory_with_a_finished_run_is_refused(tmp_path):
    from ekd.report.results import RESULTS_FILE, FinishedRunError
    from ekd.runs import prepare_run_folder

    (tmp_path / RESULTS_FILE).write_text('{"finished": true}')
    (tmp_path / "last.ckpt").write_bytes(b"weights")
    before = _snapshot(tmp_path)
    with pytest.raises(FinishedRunError) as err:
        prepare_run_folder(tmp_path, {}, resume=None, overwrite=False, fixed_folder=True)
    assert str(tmp_path / RESULTS_FILE) in str(err.value) and "overwrite=true" in str(err.value)
    assert _snapshot(tmp_path) == before
