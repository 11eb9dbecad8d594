"""ekd.eval.evaluate: embed-then-verify on sets whose embeddings are known by hand, the non-finite entry,
IJB sets, throughput."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ekd.eval import evaluate_backbone, evaluate_ijb_sets, measure_throughput, select_sets, verify_sets
from tests.eval.helpers import AutocastProbe, ColourNet, TinyConvNet
from tests.eval.test_ijb import BIAS, PAIRS, WEIGHT, _expected_scores, _write_miniature

RED, GREEN = (255, 0, 0), (0, 255, 0)


def _colour_net() -> ColourNet:
    """f(x) = mean colour + 1 per channel: red -> (2, 0, 0), green -> (0, 2, 0) (orthogonal, norm 2)."""
    return ColourNet(np.eye(3, dtype=np.float32), np.ones(3, dtype=np.float32))


def _uniform(colour: tuple[int, int, int], size: int = 8) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.uint8)[:, None, None].expand(3, size, size)


def _known_set() -> tuple[torch.Tensor, np.ndarray]:
    """20 pairs: 10 labelled same (8 red-red: distance 0; pairs 3 and 7 red-green: distance 2) and
    10 labelled different (red-green: distance 2)."""
    images, issame = [], []
    for pair in range(20):
        same = pair < 10
        second = RED if same and pair not in (3, 7) else GREEN
        images += [_uniform(RED), _uniform(second)]
        issame.append(same)
    return torch.stack(images), np.array(issame)


def test_evaluate_backbone_metrics_by_hand():
    metrics, rocs = evaluate_backbone(_colour_net(), {"known": _known_set()}, batch_size=7)
    known = metrics["known"]
    # any threshold in (0, 2] misclassifies exactly the two red-green "same" pairs: 18 / 20 correct;
    # folds of 2 pairs: folds 1 and 3 hold one of them (0.5), the other eight are right (1.0)
    assert known["accuracy"] == pytest.approx(0.9)
    assert known["fold_accuracies"] == pytest.approx([1, 0.5, 1, 0.5, 1, 1, 1, 1, 1, 1])
    assert known["accuracy_std"] == pytest.approx(math.sqrt((8 * 0.1**2 + 2 * 0.4**2) / 10))
    assert known["xnorm"] == pytest.approx(2.0)  # every view embeds to a vector of norm 2
    assert (known["num_pairs"], known["num_positives"], known["num_negatives"]) == (20, 10, 10)
    # similarities: 8 genuine at 1, 2 genuine and 10 impostors at 0; 10 negatives resolve FPR 1e-1 only
    assert known["tpr_at_fpr"] == {
        "1e-1": 0.8,
        "1e-2": None,
        "1e-3": None,
        "1e-4": None,
        "1e-5": None,
        "1e-6": None,
    }
    assert known["auc"] == pytest.approx((8 * 10 + 0.5 * 2 * 10) / 100)
    # ROC: (0, 0) at +inf, (0, 0.8) at similarity 1, (1, 1) at similarity 0 (fewer points than 200)
    assert rocs == {"known": {"fpr": [0.0, 0.0, 1.0], "tpr": [0.0, 0.8, 1.0]}}


def test_roc_points_down_samples_or_keeps_every_point():
    sets = {"known": _known_set()}
    _, full = evaluate_backbone(_colour_net(), sets, batch_size=64, roc_points=None)
    assert full["known"] == {"fpr": [0.0, 0.0, 1.0], "tpr": [0.0, 0.8, 1.0]}
    _, small = evaluate_backbone(_colour_net(), sets, batch_size=64, roc_points=2)
    assert len(small["known"]["fpr"]) <= 2 and len(small["known"]["tpr"]) == len(small["known"]["fpr"])


class NaNNet(nn.Module):
    """A diverged network: every embedding is NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3))) * float("nan")


def test_non_finite_embeddings_give_the_error_entry_not_an_exception():
    with pytest.warns(UserWarning, match="bad: the backbone produces non-finite embeddings"):
        metrics, rocs = evaluate_backbone(NaNNet(), {"bad": _known_set()}, batch_size=16)
    assert metrics == {"bad": {"accuracy": None, "error": "non-finite embeddings"}}
    assert rocs == {}
    with pytest.warns(UserWarning, match="non-finite"):
        results = verify_sets(NaNNet(), {"bad": _known_set()}, batch_size=16)
    assert results == {"bad": None}


def test_verify_sets_flip_folds_and_fprs():
    images, issame = _known_set()
    [result] = verify_sets(
        _colour_net(), {"known": (images, issame)}, batch_size=5, flip=False, n_folds=5, fprs=(0.1,)
    ).values()
    # folds of 4 pairs: the two red-green "same" pairs fall in folds 0 and 1
    assert result.fold_accuracies == pytest.approx([0.75, 0.75, 1, 1, 1])
    assert result.xnorm == pytest.approx(2.0) and list(result.tpr_at_fpr) == [0.1]


def test_evaluate_ijb_sets_by_hand(tmp_path):
    base = _write_miniature(tmp_path, name="IJBC")
    model = ColourNet(WEIGHT.astype(np.float32), BIAS.astype(np.float32))
    metrics, rocs = evaluate_ijb_sets(model, str(tmp_path), ["IJBC"], batch_size=3, roc_points=200)
    assert list(metrics) == ["ijbc"] and list(rocs) == ["ijbc"]
    assert (metrics["ijbc"]["num_pairs"], metrics["ijbc"]["num_positives"]) == (6, 2)
    scores, labels = _expected_scores(base), np.array([p[2] for p in PAIRS])
    # AUC = P(genuine score > impostor score), ties counting half (Mann-Whitney), from the scores by hand
    wins = [(g > i) + 0.5 * (g == i) for g in scores[labels == 1] for i in scores[labels == 0]]
    assert metrics["ijbc"]["auc"] == pytest.approx(np.mean(wins), abs=1e-6)
    assert rocs["ijbc"]["fpr"][0] == 0.0 and rocs["ijbc"]["fpr"][-1] == 1.0


class CountingNet(TinyConvNet):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return super().forward(x)


def test_measure_throughput_reports_and_restores_the_mode():
    net = CountingNet().train()
    out = measure_throughput(net, batch_size=3, warmup=2, iterations=4)
    assert set(out) == {"images_per_s", "batch_size", "iterations", "device", "threads"}
    assert (out["batch_size"], out["iterations"], out["device"]) == (3, 4, "cpu")
    assert out["images_per_s"] > 0 and out["threads"] == torch.get_num_threads()
    assert net.calls == [(3, 3, 16, 16)] * 6  # warmup + timed, at the backbone's input size
    assert net.training


def test_select_sets_keeps_the_requested_order_and_names_unknown_ones():
    available = {"lfw": 1, "cfp_fp": 2, "agedb_30": 3}
    assert select_sets(available, None, "eval.sets") == available
    assert list(select_sets(available, ["agedb_30", "lfw"], "eval.sets").items()) == [
        ("agedb_30", 3),
        ("lfw", 1),
    ]
    with pytest.raises(ValueError, match=r"eval\.sets: unknown verification sets \['ijbc'\]"):
        select_sets(available, ["lfw", "ijbc"], "eval.sets")


def test_precision_and_protocol_reach_both_kinds_of_sets(tmp_path):
    from ekd.eval import evaluate_trained, protocol_record
    from ekd.eval.ijb import ijb_protocol

    _write_miniature(tmp_path)
    probe = AutocastProbe()
    images, issame = _known_set()
    metrics, _, _ = evaluate_trained(
        probe, {"pairs": (images, issame)}, 8, ijb_root=str(tmp_path), ijb_sets=["IJBC"], ijb_protocol="tface"
    )
    assert probe.seen and set(probe.seen) == {None}  # fp32 unless asked
    assert metrics["ijbc"]["protocol"]["preset"] == "tface" and metrics["ijbc"]["precision"] == "32-true"
    probe.seen.clear()
    metrics, _, _ = evaluate_trained(
        probe,
        {"pairs": (images, issame)},
        8,
        ijb_root=str(tmp_path),
        ijb_sets=["IJBC"],
        precision="bf16-mixed",
    )
    assert probe.seen and set(probe.seen) == {torch.bfloat16}
    assert (
        metrics["ijbc"]["protocol"]["preset"] == "insightface"
        and metrics["ijbc"]["precision"] == "bf16-mixed"
    )
    assert protocol_record("32-true", ijb_protocol("tface", detector_score=True)) == {
        "precision": "32-true",
        "pair_sets": {"flip": "sum", "n_folds": 10},
        "ijb": {
            "preset": "tface",
            "flip_mode": "plain",
            "norm_score": False,
            "detector_score": True,
            "label": "tface (detector_score=on)",
            "tpr_rule": "nearest",
        },
    }
    assert protocol_record("16-mixed")["ijb"] is None
