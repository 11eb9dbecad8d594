"""ekd-eval smoke tests: a state dict, an ONNX file and a Lightning-style checkpoint on tiny .bin sets."""

import json

import numpy as np
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
    argv += ["--sets", "lfw,cfp_fp,cplfw,agedb_30,calfw"]
    with pytest.raises(
        SystemExit,
        match=r"lacks cplfw.bin, agedb_30.bin, calfw.bin \(its sets: lfw, cfp_fp; .*--allow-missing",
    ):
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
    with pytest.raises(SystemExit, match=r"does not record which backbone it holds: give --backbone \(and"):
        main([str(root / "backbone.pth"), "--bins", str(data / "lfw.bin")])
    with pytest.raises(SystemExit, match="does not exist"):
        main([str(tmp_path / "nope.pth"), "--bins", str(data / "lfw.bin")])
    with pytest.raises(SystemExit, match="nothing to evaluate"):
        main([str(root / "backbone.pth"), *BACKBONE_ARGS])
    with pytest.raises(SystemExit, match="missing.bin does not exist"):
        main([str(root / "backbone.pth"), *BACKBONE_ARGS, "--bins", str(tmp_path / "missing.bin")])
    torch.save({"state_dict": {}, "hyper_parameters": {}}, tmp_path / "bare.ckpt")
    with pytest.raises(SystemExit, match="record no 'student' backbone.*give --backbone"):
        main([str(tmp_path / "bare.ckpt"), "--bins", str(data / "lfw.bin")])


# ------------------------------------------------------------- recorded backbones, discovered sets
@pytest.fixture(scope="module")
def ekd_checkpoint(setup, tmp_path_factory):
    """A real RecognitionModule checkpoint holding the setup's weights (its hparams record the network)."""
    import pytorch_lightning as pl

    from ekd.lit import RecognitionModule

    _, _, model = setup
    module = RecognitionModule(
        {"name": "iresnet18", "kwargs": {"base_width": 2}, "embedding_size": 8}, num_classes=3
    )
    module.student.load_state_dict(model.state_dict())
    trainer = pl.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu"
    )
    trainer.strategy.connect(module)
    path = tmp_path_factory.mktemp("eval_ckpt") / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def _fold_accuracies(argv: list[str], out) -> dict[str, list[float]]:
    assert main([*argv, "--output", str(out)]) == 0
    metrics = json.loads((out / "eval_results.json").read_text())["metrics"]
    return {name: record["fold_accuracies"] for name, record in metrics.items()}


def test_checkpoint_without_flags_equals_with_flags(setup, ekd_checkpoint, tmp_path):
    root, data, model = setup
    bins = ["--bins", str(data / "lfw.bin"), str(data / "cfp_fp.bin")]
    without = _fold_accuracies([str(ekd_checkpoint), *bins], tmp_path / "a")
    with_flags = _fold_accuracies([str(ekd_checkpoint), *BACKBONE_ARGS, *bins], tmp_path / "b")
    assert without == with_flags
    # and both are the accuracy of the network itself
    for name in ("lfw", "cfp_fp"):
        images, issame = load_bin(data / f"{name}.bin")
        expected = verify(extract_embeddings(model, images).embeddings, issame)
        assert without[name] == pytest.approx(list(expected.fold_accuracies), abs=1e-12)


def test_backbone_pth_with_its_record_needs_no_flags(setup, tmp_path):
    from ekd.models import write_backbone_record

    root, data, _ = setup
    pth = tmp_path / "backbone.pth"
    pth.write_bytes((root / "backbone.pth").read_bytes())
    write_backbone_record(pth, "iresnet18", 8, {"base_width": 2})
    bins = ["--bins", str(data / "lfw.bin")]
    assert _fold_accuracies([str(pth), *bins], tmp_path / "a") == _fold_accuracies(
        [str(root / "backbone.pth"), *BACKBONE_ARGS, *bins], tmp_path / "b"
    )


def test_a_flag_contradicting_the_checkpoint_is_refused(setup, ekd_checkpoint):
    _, data, _ = setup
    bins = ["--bins", str(data / "lfw.bin")]
    for flags, message in (
        (
            ["--backbone", "iresnet34"],
            r"--backbone 'iresnet34' contradicts 'iresnet18' recorded in .*last\.ckpt",
        ),
        (["--embedding-size", "512"], r"--embedding-size 512 contradicts 8 recorded in"),
        (
            ["--backbone-kwargs", '{"base_width": 64}'],
            r"--backbone-kwargs base_width=64 contradicts base_width=2",
        ),
    ):
        with pytest.raises(SystemExit, match=message):
            main([str(ekd_checkpoint), *flags, *bins])


def test_data_root_evaluates_every_bin_there_in_the_paper_order(setup, ekd_checkpoint, tmp_path):
    from ekd.cli.eval import discover_sets

    _, data, _ = setup
    folder = tmp_path / "sets"
    folder.mkdir()
    lfw = (data / "lfw.bin").read_bytes()
    for name in ("zz_custom", "calfw", "a_custom", "lfw", "vgg2_fp", "agedb_30"):
        (folder / f"{name}.bin").write_bytes(lfw)
    (folder / "notes.txt").write_text("not a set\n")
    (folder / "images").mkdir()
    order = ["lfw", "agedb_30", "calfw", "vgg2_fp", "a_custom", "zz_custom"]
    assert discover_sets(folder) == order
    out = tmp_path / "out"
    assert main([str(ekd_checkpoint), "--data-root", str(folder), "--output", str(out)]) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert list(results["metrics"]) == order and results["missing"] == []
    # every set holds the same pairs: the same accuracy
    assert len({record["accuracy"] for record in results["metrics"].values()}) == 1


def test_a_data_root_without_sets_lists_what_it_holds(ekd_checkpoint, tmp_path):
    (tmp_path / "train.rec").write_bytes(b"")
    (tmp_path / "meta").mkdir()
    with pytest.raises(
        SystemExit, match=r"holds no verification sets \(\*\.bin files\); it holds meta/, train\.rec"
    ):
        main([str(ekd_checkpoint), "--data-root", str(tmp_path)])
    empty = tmp_path / "meta"
    with pytest.raises(SystemExit, match=r"it holds nothing \(it is empty\)"):
        main([str(ekd_checkpoint), "--data-root", str(empty)])


def test_help_shows_an_example():
    from ekd.cli.eval import build_parser

    help_text = build_parser().format_help()
    assert "examples:" in help_text and "ekd-eval runs/ekd/checkpoints/last.ckpt --data-root" in help_text


def test_ijb_protocols_and_precision_through_the_cli(setup, tmp_path, capsys):
    """--protocol tface scores as TFace's scripts do (restated in tests/eval/test_ijb.py, here on the
    embeddings of the network run directly); each setting on its own; fp32 unless asked; unresolvable
    TPRs are '—' with a footnote and null in the file."""
    from ekd.eval.ijb import AlignedFaces, read_ijb_meta
    from tests.eval.test_ijb import MINI, PAIRS, _reference_scores, _write_miniature

    root, _, model = setup
    _write_miniature(tmp_path / "ijb", two_sided=True)
    argv = [str(root / "backbone.pth"), *BACKBONE_ARGS, "--ijb", str(tmp_path / "ijb"), "--ijb-name", "IJBC"]
    assert main([*argv, "--protocol", "tface", "--output", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "tface protocol" in printed and "32-true" in printed
    assert "—" in printed and "fewer than 1/FPR impostor pairs" in printed
    results = json.loads((tmp_path / "a" / "eval_results.json").read_text())
    assert results["eval_protocol"] == {
        "precision": "32-true",
        "pair_sets": {"flip": "sum", "n_folds": 10},
        "ijb": {
            "preset": "tface",
            "flip_mode": "plain",
            "norm_score": False,
            "detector_score": False,
            "label": "tface",
            "tpr_rule": "nearest",
        },
    }
    # 4 impostor pairs resolve none of 1e-1 ... 1e-6: all null (the scripts would print numbers)
    assert set(results["ijb"]["tpr_at_fpr"].values()) == {None}

    # the network run directly (fp32) on the aligned crops, then TFace's arithmetic and the full ROC
    meta = read_ijb_meta(tmp_path / "ijb", "IJBC")
    crops = torch.stack([AlignedFaces(meta)[i] for i in range(len(MINI))]).float()
    with torch.no_grad():
        plain = model((crops - 127.5) / 127.5).double().numpy()
        flipped = model((crops.flip(3) - 127.5) / 127.5).double().numpy()
    expected = _reference_scores(plain, flipped, "tface", False, False, False)
    labels = np.array([p[2] for p in PAIRS])
    order = np.argsort(-expected)
    assert np.diff(expected[order]).min() < -1e-4  # no near-ties: the ranking is that of the scores
    fps = np.r_[0, np.cumsum(labels[order] == 0)]
    tps = np.r_[0, np.cumsum(labels[order] == 1)]
    assert results["roc"]["IJBC"] == {"fpr": (fps / 4).tolist(), "tpr": (tps / 2).tolist()}
    assert results["ijb"]["auc"] == pytest.approx(_auc(labels, expected), abs=1e-12)

    overrides = ["--flip-mode", "concat_normalised", "--detector-score", "--precision", "bf16-mixed"]
    assert main([*argv, "--protocol", "tface", *overrides, "--output", str(tmp_path / "b")]) == 0
    record = json.loads((tmp_path / "b" / "eval_results.json").read_text())
    assert record["eval_protocol"]["precision"] == "bf16-mixed" and record["ijb"]["precision"] == "bf16-mixed"
    assert record["eval_protocol"]["ijb"]["label"] == "tface (flip_mode=concat_normalised, detector_score=on)"
    assert record["ijb"]["protocol"]["label"] == record["eval_protocol"]["ijb"]["label"]
    with pytest.raises(
        SystemExit, match="--no-flip embeds the image only, which contradicts --flip-mode sum"
    ):
        main([*argv, "--no-flip", "--flip-mode", "sum"])


def _auc(labels, scores):
    """P(genuine score > impostor score) + half the ties (Mann-Whitney), by counting pairs."""
    genuine, impostor = scores[labels == 1], scores[labels == 0]
    wins = sum((g > i) + 0.5 * (g == i) for g in genuine for i in impostor)
    return wins / (len(genuine) * len(impostor))
