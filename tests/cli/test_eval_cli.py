"""ekd-eval smoke tests: a state dict, an ONNX file and a Lightning-style checkpoint on tiny .bin sets."""

import json

import pytest
import torch

from ekd.cli.eval import main
from ekd.data.bins import load_bin, write_bin
from ekd.eval.embed import extract_embeddings
from ekd.eval.verification import verify
from ekd.models import create_backbone, export_onnx
from tests.eval.helpers import random_pair_images

# the tiny sets are named like the real ones (lfw.bin ...), so load_bin warns about their pair count
pytestmark = pytest.mark.filterwarnings("ignore:.*verification set has.*:UserWarning")

BACKBONE_ARGS = ["--backbone", "iresnet18", "--embedding-size", "8", "--backbone-kwargs", '{"base_width": 2}']


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    data = root / "data"
    data.mkdir()
    for name, seed in (("lfw", 1), ("cfp_fp", 2)):
        images, issame = random_pair_images(20, size=112, seed=seed)
        write_bin(data / f"{name}.bin", images, issame, image_format="png")
    torch.manual_seed(0)
    model = create_backbone("iresnet18", embedding_size=8, base_width=2).eval()
    torch.save(model.state_dict(), root / "backbone.pth")
    return root, data, model


def test_state_dict_on_data_root_with_missing_sets(setup, tmp_path, capsys):
    root, data, model = setup
    out = tmp_path / "out"
    argv = [str(root / "backbone.pth"), *BACKBONE_ARGS, "--data-root", str(data), "--batch-size", "16"]
    with pytest.raises(SystemExit, match=r"lacks cplfw.bin, agedb_30.bin, calfw.bin .*--allow-missing"):
        main(argv)
    assert main([*argv, "--allow-missing", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "lfw" in printed and "missing" in printed

    results = json.loads((out / "eval_results.json").read_text())
    assert results["format"] == "ekd-eval/1"
    assert results["missing"] == ["cplfw", "agedb_30", "calfw"]
    assert set(results["metrics"]) == {"lfw", "cfp_fp"}
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("lfw", "cfp_fp"):
        images, issame = load_bin(data / f"{name}.bin")
        expected = verify(extract_embeddings(model, images).embeddings, issame)
        assert results["metrics"][name]["accuracy"] == pytest.approx(expected.accuracy, abs=1e-12)
        assert results["metrics"][name]["num_pairs"] == 20
    assert results["mean_accuracy"] == pytest.approx(
        (results["metrics"]["lfw"]["accuracy"] + results["metrics"]["cfp_fp"]["accuracy"]) / 2
    )


def test_onnx_and_checkpoint_give_the_same_accuracy(setup, tmp_path):
    root, data, model = setup
    export_onnx(model, tmp_path / "model.onnx")
    # a real Lightning checkpoint of ekd.lit's RecognitionModule holding the same weights
    import pytorch_lightning as pl

    from ekd.lit import RecognitionModule

    module = RecognitionModule(
        {"name": "iresnet18", "kwargs": {"base_width": 2}, "embedding_size": 8}, num_classes=3
    )
    module.student.load_state_dict(model.state_dict())
    trainer = pl.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu"
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    accuracies = []
    for argv in (
        [str(tmp_path / "model.onnx")],
        [str(tmp_path / "last.ckpt")],
        [str(root / "backbone.pth"), *BACKBONE_ARGS],
    ):
        out = tmp_path / f"out{len(accuracies)}"
        assert main([*argv, "--bins", str(data / "lfw.bin"), "--output", str(out)]) == 0
        accuracies.append(
            json.loads((out / "eval_results.json").read_text())["metrics"]["lfw"]["fold_accuracies"]
        )
    assert accuracies[0] == accuracies[1] == accuracies[2]


def test_ijb_through_the_cli(setup, tmp_path):
    from tests.eval.test_ijb import _write_miniature

    root, _, _ = setup
    _write_miniature(tmp_path / "ijb")
    out = tmp_path / "out"
    argv = [str(root / "backbone.pth"), *BACKBONE_ARGS, "--ijb", str(tmp_path / "ijb"), "--ijb-name", "IJBC"]
    assert main([*argv, "--output", str(out)]) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert results["ijb"]["num_pairs"] == 6 and results["ijb"]["num_templates"] == 4
    assert results["ijb"]["tpr_at_fpr"]["1e-6"] is None  # 4 impostor pairs cannot resolve 1e-6


def test_bad_arguments_are_reported(setup, tmp_path):
    root, data, _ = setup
    with pytest.raises(SystemExit, match="pass --backbone NAME"):
        main([str(root / "backbone.pth"), "--bins", str(data / "lfw.bin")])
    with pytest.raises(SystemExit, match="does not exist"):
        main([str(tmp_path / "nope.pth"), "--bins", str(data / "lfw.bin")])
    with pytest.raises(SystemExit, match="nothing to evaluate"):
        main([str(root / "backbone.pth"), *BACKBONE_ARGS])
    with pytest.raises(SystemExit, match="missing.bin does not exist"):
        main([str(root / "backbone.pth"), *BACKBONE_ARGS, "--bins", str(tmp_path / "missing.bin")])
    torch.save({"state_dict": {}, "hyper_parameters": {}}, tmp_path / "bare.ckpt")
    with pytest.raises(SystemExit, match="records no 'student' backbone"):
        main([str(tmp_path / "bare.ckpt"), "--bins", str(data / "lfw.bin")])
