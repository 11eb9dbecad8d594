"""Smoke tests of ekd-info and ekd-export through their ``main(argv)`` (and the --help of ekd-toy)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from ekd.cli import export as export_cli
from ekd.cli import info as info_cli
from ekd.cli import toy as toy_cli
from ekd.models import create_backbone, list_backbones, write_backbone_record

TINY = ["--option", "base_width=8", "--option", "input_size=[32,32]", "--embedding-size", "16"]


def test_info_lists_every_backbone_with_insightface_figures(capsys) -> None:
    assert info_cli.main([]) == 0
    out = capsys.readouterr().out
    for name in list_backbones():
        assert name in out
    for figure in ("24.03", "2.61", "43.59", "6.31", "65.16", "12.09", "2.06", "0.44", "512x7x7", "64x56x56"):
        assert figure in out
    assert "timm/<model_name>" in out


def test_info_one_backbone_with_options(capsys) -> None:
    assert (
        info_cli.main(
            ["--backbone", "iresnet18", "--option", "base_width=16", "--option", "input_size=[64,64]"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "iresnet18" in out and "16x32x32" in out and "128x4x4" in out and "iresnet50" not in out


def test_info_timm_backbone(capsys) -> None:
    assert info_cli.main(["--backbone", "timm/mobilenetv3_small_050", "--embedding-size", "128"]) == 0
    out = capsys.readouterr().out
    assert "timm/mobilenetv3_small_050" in out and "128" in out


def test_info_errors(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        info_cli.main(["--backbone", "iresnet51"])
    assert info.value.code == 2
    assert "unknown backbone 'iresnet51'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        info_cli.main(["--option", "width_mult=0.5"])
    assert "--option needs --backbone" in capsys.readouterr().err


def test_export_from_a_lightning_checkpoint(tmp_path, capsys) -> None:
    student = create_backbone("iresnet18", embedding_size=16, base_width=8, input_size=(32, 32))
    torch.save(
        {"state_dict": {f"student.{k}": v for k, v in student.state_dict().items()}}, tmp_path / "last.ckpt"
    )
    output = tmp_path / "student.onnx"
    code = export_cli.main(
        [
            "--backbone",
            "iresnet18",
            "--checkpoint",
            str(tmp_path / "last.ckpt"),
            "--output",
            str(output),
            *TINY,
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "verified with onnxruntime: max abs diff" in err and "sha256" in err
    assert [o.name for o in onnx.load(str(output)).graph.output] == ["embedding"]


def test_export_without_checkpoint_warns(tmp_path, capsys) -> None:
    output = tmp_path / "random.onnx"
    assert export_cli.main(["--backbone", "iresnet18", "--output", str(output), "--opset", "13", *TINY]) == 0
    assert "randomly initialised" in capsys.readouterr().err
    assert onnx.load(str(output)).opset_import[0].version == 13


def test_export_errors_exit_with_a_message(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        export_cli.main(
            ["--backbone", "iresnet18", "--checkpoint", str(tmp_path / "no.ckpt"), "--output", "x.onnx"]
        )
    assert info.value.code == 1
    assert "checkpoint file not found" in capsys.readouterr().err
    torch.save(
        create_backbone("iresnet18", embedding_size=16, base_width=8, input_size=(32, 32)).state_dict(),
        tmp_path / "b.pth",
    )
    with pytest.raises(SystemExit):
        export_cli.main(
            [
                "--backbone",
                "iresnet18",
                "--checkpoint",
                str(tmp_path / "b.pth"),
                "--output",
                str(tmp_path / "o.onnx"),
            ]
        )
    assert "shape mismatches" in capsys.readouterr().err


# ------------------------------------------------------------------ export of recorded backbones
STUDENT_SECTION = {
    "name": "iresnet18",
    "embedding_size": 16,
    "kwargs": {"base_width": 8, "input_size": [32, 32]},
}


@pytest.fixture(scope="module")
def ekd_checkpoint(tmp_path_factory):
    """(path, student) of a real RecognitionModule checkpoint: the architecture is in its hparams."""
    import pytorch_lightning as pl

    from ekd.lit import RecognitionModule

    torch.manual_seed(11)
    module = RecognitionModule(STUDENT_SECTION, num_classes=3)
    trainer = pl.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu"
    )
    trainer.strategy.connect(module)
    path = tmp_path_factory.mktemp("export") / "last.ckpt"
    trainer.save_checkpoint(path)
    return path, module.student.eval()


def _onnx_embedding(path, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["embedding"], {"data": images})[0]


def _images(count: int = 3) -> np.ndarray:
    return np.random.default_rng(4).uniform(-1, 1, (count, 3, 32, 32)).astype(np.float32)


def test_export_needs_no_architecture_flags_for_an_ekd_checkpoint(ekd_checkpoint, tmp_path, capsys) -> None:
    path, student = ekd_checkpoint
    assert export_cli.main(["--checkpoint", str(path), "--output", str(tmp_path / "m.onnx")]) == 0
    err = capsys.readouterr().err
    assert "iresnet18, 16-d embedding" in err and "hyper_parameters['student']" in err
    images = _images()
    with torch.no_grad():
        expected = student(torch.from_numpy(images)).numpy()
    actual = _onnx_embedding(tmp_path / "m.onnx", images)
    assert actual.shape == (3, 16)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
    # explicit flags that agree with the record give the same network
    argv = ["--checkpoint", str(path), "--output", str(tmp_path / "f.onnx"), "--backbone", "iresnet18", *TINY]
    assert export_cli.main(argv) == 0
    np.testing.assert_allclose(_onnx_embedding(tmp_path / "f.onnx", images), actual, rtol=1e-5, atol=1e-6)


def test_export_of_a_backbone_pth_with_its_record(ekd_checkpoint, tmp_path) -> None:
    _, student = ekd_checkpoint
    torch.save(student.state_dict(), tmp_path / "backbone.pth")
    argv = ["--checkpoint", str(tmp_path / "backbone.pth"), "--output", str(tmp_path / "m.onnx")]
    with pytest.raises(SystemExit) as info:  # an insightface-style file: --backbone is needed
        export_cli.main(argv)
    assert info.value.code == 1
    write_backbone_record(
        tmp_path / "backbone.pth", "iresnet18", 16, {"base_width": 8, "input_size": (32, 32)}
    )
    assert export_cli.main(argv) == 0
    images = _images(2)
    with torch.no_grad():
        expected = student(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(_onnx_embedding(tmp_path / "m.onnx", images), expected, rtol=1e-4, atol=1e-5)


def test_export_refuses_a_flag_that_contradicts_the_record(ekd_checkpoint, tmp_path, capsys) -> None:
    path, _ = ekd_checkpoint
    base = ["--checkpoint", str(path), "--output", str(tmp_path / "x.onnx")]
    for flags, message in (
        (["--backbone", "mbf"], "--backbone 'mbf' contradicts 'iresnet18' recorded in"),
        (["--embedding-size", "512"], "--embedding-size 512 contradicts 16 recorded in"),
        (["--option", "base_width=64"], "--option base_width=64 contradicts base_width=8 recorded in"),
    ):
        with pytest.raises(SystemExit) as info:
            export_cli.main([*base, *flags])
        assert info.value.code == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_insightface_state_dict_without_backbone_is_a_clear_error(tmp_path, capsys) -> None:
    torch.save(create_backbone("iresnet18", embedding_size=16, base_width=8).state_dict(), tmp_path / "b.pth")
    with pytest.raises(SystemExit) as info:
        export_cli.main(["--checkpoint", str(tmp_path / "b.pth"), "--output", str(tmp_path / "o.onnx")])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "does not record which backbone it holds" in err and "give --backbone" in err
    with pytest.raises(SystemExit) as info:
        export_cli.main(["--output", str(tmp_path / "o.onnx")])
    assert info.value.code == 2 and "give --checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("main", "example"),
    [
        (export_cli.main, "ekd-export --checkpoint runs/ekd/checkpoints/last.ckpt --output"),
        (info_cli.main, "ekd-info --backbone mobilefacenet"),
        (toy_cli.main, "ekd-toy --output toy.png"),
    ],
)
def test_help_shows_an_example(main, example, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and example in out
