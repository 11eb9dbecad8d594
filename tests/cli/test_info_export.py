"""Smoke tests of ekd-info and ekd-export through their ``main(argv)``."""

from __future__ import annotations

import onnx
import pytest
import torch

from ekd.cli import export as export_cli
from ekd.cli import info as info_cli
from ekd.models import create_backbone, list_backbones

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
