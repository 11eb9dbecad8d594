"""Checkpoint loading: accepted formats, Lightning prefixes, and the error for every kind of failure."""

from __future__ import annotations

import json
import pickle
import re

import pytest
import torch
from omegaconf import OmegaConf

from ekd.models import (
    BackboneConflictError,
    BackboneRecordError,
    CheckpointError,
    CheckpointMismatchError,
    checkpoint_backbone,
    create_backbone,
    file_sha256,
    load_backbone,
    load_recorded_backbone,
    write_backbone_record,
)
from ekd.models.loading import allowed_checkpoint_classes, read_state_dict

TINY = dict(embedding_size=16, base_width=8, input_size=(32, 32))


@pytest.fixture
def source():
    """A tiny iresnet18 with non-default weights and BN statistics."""
    model = create_backbone("iresnet18", **TINY)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(4, 3, 32, 32))  # moves the running statistics away from their initial values
    return model.eval()


def _embedding(model: torch.nn.Module) -> torch.Tensor:
    x = torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)
    with torch.no_grad():
        return model.eval()(x)


def test_plain_state_dict_roundtrip_gives_the_same_embedding(tmp_path, source) -> None:
    torch.save(source.state_dict(), tmp_path / "backbone.pth")
    loaded = load_backbone("iresnet18", tmp_path / "backbone.pth", **TINY)
    assert not loaded.training
    torch.testing.assert_close(_embedding(loaded), _embedding(source), rtol=0, atol=0)


def test_ddp_module_prefix_is_stripped(tmp_path, source) -> None:
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "ddp.pth")
    torch.testing.assert_close(
        _embedding(load_backbone("iresnet18", tmp_path / "ddp.pth", **TINY)), _embedding(source)
    )


def _lightning_checkpoint(path, student, teacher) -> None:
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    state |= {f"teacher.{k}": v for k, v in teacher.state_dict().items()}
    state["head.weight"] = torch.randn(10, 16)
    torch.save(
        {
            "epoch": 3,
            "global_step": 120,
            "state_dict": state,
            # Lightning pickles the Hydra config: OmegaConf containers must not need trust_pickle
            "hyper_parameters": {"cfg": OmegaConf.create({"student": {"name": "iresnet18"}, "lr": 0.1})},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}],
        },
        path,
    )


def test_lightning_checkpoint_student_by_default_teacher_by_prefix(tmp_path, source) -> None:
    teacher = create_backbone("iresnet18", **TINY).eval()
    path = tmp_path / "last.ckpt"
    _lightning_checkpoint(path, source, teacher)
    torch.testing.assert_close(_embedding(load_backbone("iresnet18", path, **TINY)), _embedding(source))
    for prefix in ("teacher.", "teacher"):
        loaded = load_backbone("iresnet18", path, prefix=prefix, **TINY)
        torch.testing.assert_close(_embedding(loaded), _embedding(teacher))


def test_unknown_prefix_lists_the_prefixes_present(tmp_path, source) -> None:
    path = tmp_path / "last.ckpt"
    _lightning_checkpoint(path, source, source)
    with pytest.raises(
        CheckpointError, match=r"no keys with prefix 'backbone\.'.*student\. \(\d+ keys\).*teacher\."
    ):
        load_backbone("iresnet18", path, prefix="backbone.", **TINY)


def test_missing_keys_are_named_with_counts(tmp_path, source) -> None:
    state = source.state_dict()
    for key in ("fc.weight", "fc.bias", "layer4.1.conv2.weight"):
        del state[key]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointMismatchError) as info:
        load_backbone("iresnet18", tmp_path / "partial.pth", **TINY)
    message = str(info.value)
    assert str(tmp_path / "partial.pth") in message and "'iresnet18'" in message
    assert "3 missing keys: layer4.1.conv2.weight, fc.weight, fc.bias" in message
    assert "unexpected" not in message and "shape" not in message
    assert sorted(info.value.missing) == ["fc.bias", "fc.weight", "layer4.1.conv2.weight"]
    assert isinstance(info.value, ValueError)


def test_unexpected_keys_show_the_first_few_and_the_count(tmp_path, source) -> None:
    state = source.state_dict()
    for i in range(7):
        state[f"extra.{i}"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(
        CheckpointMismatchError, match=r"7 unexpected keys: extra.0, .*extra.4, \.\.\. and 2 more"
    ):
        load_backbone("iresnet18", tmp_path / "extra.pth", **TINY)


def test_shape_mismatch_names_both_shapes(tmp_path, source) -> None:
    torch.save(source.state_dict(), tmp_path / "d16.pth")
    with pytest.raises(CheckpointMismatchError) as info:
        load_backbone("iresnet18", tmp_path / "d16.pth", embedding_size=32, base_width=8, input_size=(32, 32))
    message = str(info.value)
    assert "fc.weight: checkpoint (16, 256) vs model (32, 256)" in message
    assert info.value.shape_mismatches["fc.bias"] == ((16,), (32,))
    assert "missing" not in message


def test_student_keys_against_the_wrong_architecture(tmp_path, source) -> None:
    path = tmp_path / "last.ckpt"
    _lightning_checkpoint(path, source, source)
    with pytest.raises(CheckpointMismatchError, match=r"prefix 'student\.' does not match backbone 'mbf'"):
        load_backbone("mbf", path, width_mult=0.25, input_size=(32, 32))


def test_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: .*nope.pth"):
        load_backbone("iresnet18", tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is not a file"):
        load_backbone("iresnet18", tmp_path)


def test_not_a_checkpoint(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes.txt is not a PyTorch checkpoint"):
        load_backbone("iresnet18", tmp_path / "notes.txt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a state_dict"):
        load_backbone("iresnet18", tmp_path / "list.pt")
    torch.save({"fc.weight": torch.zeros(2), "epoch": 3}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="'epoch' is a int"):
        load_backbone("iresnet18", tmp_path / "mixed.pt")


def test_pickled_code_is_refused_without_trust(tmp_path) -> None:
    torch.save({"state_dict": {"fc.weight": torch.zeros(1)}, "callback": print}, tmp_path / "code.ckpt")
    with pytest.raises(CheckpointError, match=r"builtins.print.*trust_pickle=True"):
        load_backbone("iresnet18", tmp_path / "code.ckpt")


def test_whole_pickled_module_needs_trust_pickle(tmp_path, source) -> None:
    torch.save(source, tmp_path / "model.pt")
    with pytest.raises(
        CheckpointError, match=r"ekd\.models\.iresnet\.IBasicBlock, .*and \d+ more.*trust_pickle=True"
    ):
        load_backbone("iresnet18", tmp_path / "model.pt", **TINY)
    loaded = load_backbone("iresnet18", tmp_path / "model.pt", trust_pickle=True, **TINY)
    torch.testing.assert_close(_embedding(loaded), _embedding(source))


def test_old_checkpoints_without_num_batches_tracked_load(tmp_path, source) -> None:
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth", _use_new_zipfile_serialization=False)  # legacy format too
    torch.testing.assert_close(
        _embedding(load_backbone("iresnet18", tmp_path / "old.pth", **TINY)), _embedding(source)
    )


def test_half_precision_checkpoint_loads_into_float32(tmp_path, source) -> None:
    torch.save(
        {k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()},
        tmp_path / "h.pth",
    )
    loaded = load_backbone("iresnet18", tmp_path / "h.pth", **TINY)
    assert loaded.fc.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.fc.weight, source.fc.weight.half().float())


def test_read_state_dict_describes_the_source(tmp_path, source) -> None:
    path = tmp_path / "last.ckpt"
    _lightning_checkpoint(path, source, source)
    state, description = read_state_dict(path)
    assert description == f"{path} (Lightning checkpoint) prefix 'student.'"
    assert set(state) == set(source.state_dict())


def test_file_sha256(tmp_path) -> None:
    (tmp_path / "abc").write_bytes(b"abc")
    # FIPS 180-2 test vector
    assert file_sha256(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    (tmp_path / "big").write_bytes(b"a" * 1_000_000)
    expected = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"  # one million 'a'
    assert file_sha256(tmp_path / "big", chunk_size=4096) == expected
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        file_sha256(tmp_path / "missing.bin")


# ------------------------------------------------------------------------- recorded backbones
TINY_SECTION = {
    "name": "iresnet18",
    "embedding_size": 16,
    "kwargs": {"base_width": 8, "input_size": [32, 32]},
}
MBF_SECTION = {"name": "mbf", "embedding_size": 8, "kwargs": {"width_mult": 0.25, "input_size": [32, 32]}}


def _save_module(module, path) -> None:
    """A real Lightning checkpoint of ``module`` (hyper-parameters, ``ekd`` metadata, state dict)."""
    import pytorch_lightning as pl

    trainer = pl.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu"
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)


@pytest.fixture(scope="module")
def recognition_checkpoint(tmp_path_factory):
    """(path, trained student) of a RecognitionModule checkpoint whose student is TINY_SECTION."""
    from ekd.lit import RecognitionModule

    torch.manual_seed(5)
    module = RecognitionModule(TINY_SECTION, num_classes=3)
    path = tmp_path_factory.mktemp("recorded") / "last.ckpt"
    _save_module(module, path)
    return path, module.student.eval()


@pytest.fixture(scope="module")
def distillation_checkpoint(tmp_path_factory):
    """(path, student, teacher) of a DistillationModule checkpoint (mbf teacher kept in the checkpoint)."""
    from ekd.lit import DistillationModule

    directory = tmp_path_factory.mktemp("distilled")
    torch.manual_seed(6)
    teacher = create_backbone("mbf", embedding_size=8, width_mult=0.25, input_size=(32, 32)).eval()
    torch.save(teacher.state_dict(), directory / "teacher.pth")
    module = DistillationModule(
        TINY_SECTION,
        num_classes=3,
        teacher={**MBF_SECTION, "checkpoint": str(directory / "teacher.pth")},
        distill={"objectives": {"rkd": {}}, "save_teacher": True},
    )
    _save_module(module, directory / "last.ckpt")
    return directory / "last.ckpt", module.student.eval(), teacher


def test_lightning_checkpoint_records_its_student(recognition_checkpoint) -> None:
    path, student = recognition_checkpoint
    spec = checkpoint_backbone(path)
    assert (spec.name, spec.embedding_size, spec.kwargs) == (
        "iresnet18",
        16,
        {"base_width": 8, "input_size": [32, 32]},
    )
    assert spec.source == f"{path} hyper_parameters['student']"
    loaded = load_backbone(None, path)  # no name, size or options: all from the record
    assert loaded.embedding_size == 16 and len(loaded.layer1) == 2 and loaded.conv1.out_channels == 8
    torch.testing.assert_close(_embedding(loaded), _embedding(student), rtol=0, atol=0)
    model, used = load_recorded_backbone(path)
    assert used == spec
    torch.testing.assert_close(_embedding(model), _embedding(student), rtol=0, atol=0)


def test_distillation_checkpoint_records_student_and_teacher(distillation_checkpoint) -> None:
    path, student, teacher = distillation_checkpoint
    assert checkpoint_backbone(path).name == "iresnet18"
    spec = checkpoint_backbone(path, prefix="teacher.")
    assert (spec.name, spec.embedding_size, spec.kwargs) == (
        "mbf",
        8,
        {"width_mult": 0.25, "input_size": [32, 32]},
    )
    torch.testing.assert_close(_embedding(load_backbone(None, path)), _embedding(student), rtol=0, atol=0)
    loaded_teacher = load_backbone(None, path, prefix="teacher")
    assert loaded_teacher.embedding_size == 8
    torch.testing.assert_close(_embedding(loaded_teacher), _embedding(teacher), rtol=0, atol=0)


def test_flags_that_agree_with_the_record_are_accepted(recognition_checkpoint) -> None:
    path, student = recognition_checkpoint
    # tuple vs the recorded list, an option the record lacks (dropout: no weights), an alias of the name
    from ekd.models.registry import BACKBONES

    with BACKBONES.registered("my_iresnet18", BACKBONES.get("iresnet18")):
        model, spec = load_recorded_backbone(
            path, name="my_iresnet18", embedding_size=16, kwargs={"input_size": (32, 32), "dropout": 0.0}
        )
    assert spec.kwargs == {"base_width": 8, "input_size": (32, 32), "dropout": 0.0}
    torch.testing.assert_close(_embedding(model), _embedding(student), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("arguments", "given", "recorded"),
    [
        ({"name": "mbf"}, "'mbf'", "'iresnet18'"),
        ({"embedding_size": 32}, "embedding_size 32", "16"),
        ({"kwargs": {"base_width": 16}}, "option base_width=16", "base_width=8"),
        ({"kwargs": {"embedding_size": 512}}, "embedding_size 512", "16"),
    ],
)
def test_a_contradiction_with_the_record_names_both_values(
    recognition_checkpoint, arguments, given, recorded
):
    path, _ = recognition_checkpoint
    with pytest.raises(BackboneConflictError) as info:
        load_recorded_backbone(path, **arguments)
    message = str(info.value)
    assert f"{given} contradicts {recorded} recorded in {path} hyper_parameters['student']" in message
    assert isinstance(info.value, CheckpointError)


def test_flag_names_appear_in_the_messages(recognition_checkpoint, tmp_path, source) -> None:
    path, _ = recognition_checkpoint
    flags = {"name": "--backbone", "embedding_size": "--embedding-size", "kwargs": "--option"}
    with pytest.raises(BackboneConflictError, match=r"^--option base_width=4 contradicts base_width=8"):
        load_recorded_backbone(path, kwargs={"base_width": 4}, argument_names=flags)
    torch.save(source.state_dict(), tmp_path / "backbone.pth")
    with pytest.raises(BackboneRecordError) as info:
        load_recorded_backbone(tmp_path / "backbone.pth", argument_names=flags)
    assert "no backbone record backbone.json beside it" in str(info.value)
    assert "give --backbone (and --embedding-size / --option unless the defaults)" in str(info.value)


def test_backbone_pth_with_its_record(tmp_path, source) -> None:
    torch.save(source.state_dict(), tmp_path / "backbone.pth")
    assert checkpoint_backbone(tmp_path / "backbone.pth") is None  # an insightface file records nothing
    record = write_backbone_record(
        tmp_path / "backbone.pth", "iresnet18", 16, {"base_width": 8, "input_size": (32, 32)}
    )
    assert record == tmp_path / "backbone.json"
    assert json.loads(record.read_text()) == {
        "format": "ekd-backbone/1",
        "name": "iresnet18",
        "embedding_size": 16,
        "kwargs": {"base_width": 8, "input_size": [32, 32]},
    }
    spec = checkpoint_backbone(tmp_path / "backbone.pth")
    assert (spec.name, spec.embedding_size, spec.kwargs, spec.source) == (
        "iresnet18",
        16,
        {"base_width": 8, "input_size": [32, 32]},
        str(record),
    )
    torch.testing.assert_close(
        _embedding(load_backbone(None, tmp_path / "backbone.pth")), _embedding(source), rtol=0, atol=0
    )
    with pytest.raises(
        BackboneConflictError, match=r"embedding_size 512 contradicts 16 recorded in .*backbone\.json"
    ):
        load_backbone("iresnet18", tmp_path / "backbone.pth", embedding_size=512)


def test_malformed_records_are_refused(tmp_path, source) -> None:
    torch.save(source.state_dict(), tmp_path / "backbone.pth")
    record = tmp_path / "backbone.json"
    cases = [
        ("{not json", "is not readable JSON"),
        ("[1, 2]", "holds a list, not a JSON object"),
        ('{"format": "ekd-backbone/9", "name": "mbf"}', "has format 'ekd-backbone/9'"),
        ('{"embedding_size": 16}', "names no backbone"),
        ('{"name": "mbf", "embedding_size": "16"}', "embedding_size must be a positive int, got '16'"),
        ('{"name": "mbf", "kwargs": [1]}', "kwargs must be a mapping"),
    ]
    for text, expected in cases:
        record.write_text(text)
        with pytest.raises(BackboneRecordError, match=re.escape(expected)):
            checkpoint_backbone(tmp_path / "backbone.pth")
    with pytest.raises(ValueError, match="positive int"):
        write_backbone_record(tmp_path / "backbone.pth", "mbf", 0)
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        write_backbone_record(tmp_path / "backbone.pth", "mbf", 8, {"width_mult": object()})


def test_lightning_checkpoint_without_the_section(tmp_path, source) -> None:
    path = tmp_path / "last.ckpt"
    _lightning_checkpoint(path, source, source)  # hyper_parameters hold only a 'cfg' entry
    with pytest.raises(BackboneRecordError, match=r"record no 'student' backbone.*give the backbone name"):
        load_backbone(None, path)
    with pytest.raises(BackboneRecordError, match=r"record no 'teacher' backbone"):
        checkpoint_backbone(path, prefix="teacher.")
    # a name given for a checkpoint that records nothing is all there is: it loads
    torch.testing.assert_close(_embedding(load_backbone("iresnet18", path, **TINY)), _embedding(source))


def test_hyper_parameters_kept_as_omegaconf_are_read(tmp_path, source) -> None:
    # older runs pickled the Hydra config; an unresolvable entry elsewhere must not get in the way
    hparams = OmegaConf.create({"student": {**TINY_SECTION}, "other": "${oc.env:EKD_TEST_UNSET_VARIABLE}"})
    state = {f"student.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": hparams}, tmp_path / "old.ckpt")
    spec = checkpoint_backbone(tmp_path / "old.ckpt")
    assert (spec.name, spec.embedding_size, spec.kwargs) == (
        "iresnet18",
        16,
        {"base_width": 8, "input_size": [32, 32]},
    )
    torch.testing.assert_close(_embedding(load_backbone(None, tmp_path / "old.ckpt")), _embedding(source))


def test_allowed_checkpoint_classes_lets_a_weights_only_load_read_omegaconf_hparams(tmp_path) -> None:
    # what Lightning's fit(ckpt_path=...) does: torch.load(weights_only=True) of the whole checkpoint
    hparams = {"student": OmegaConf.create({"name": "mobilefacenet"})}
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": hparams}, tmp_path / "old.ckpt")
    with pytest.raises(pickle.UnpicklingError, match="DictConfig"):
        torch.load(tmp_path / "old.ckpt", weights_only=True)
    with allowed_checkpoint_classes(tmp_path / "old.ckpt"):
        loaded = torch.load(tmp_path / "old.ckpt", weights_only=True)
    assert loaded["hyper_parameters"]["student"].name == "mobilefacenet"
    with pytest.raises(pickle.UnpicklingError):  # allowed inside the context only
        torch.load(tmp_path / "old.ckpt", weights_only=True)
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "plain.ckpt")
    with allowed_checkpoint_classes(tmp_path / "plain.ckpt"):  # nothing to allow
        plain = torch.load(tmp_path / "plain.ckpt", weights_only=True)
    assert torch.equal(plain["state_dict"]["w"], torch.ones(2))
    torch.save({"state_dict": {}, "callback": print}, tmp_path / "code.ckpt")
    refused = pytest.raises(CheckpointError, match=r"code.ckpt pickles .*builtins.print")
    with refused, allowed_checkpoint_classes(tmp_path / "code.ckpt"):
        pass
