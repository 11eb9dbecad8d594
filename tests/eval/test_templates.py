"""Template sets: the ekd-templates/1 file, the all-vs-all low-FPR protocol against a brute-force count,
and its wiring (evaluate_trained, protocol record, W&B summary, ekd-eval, ekd-train)."""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest
import torch

from ekd.data.errors import DataError
from ekd.data.images import encode_jpeg
from ekd.data.templates import (
    TemplateSetError,
    find_template_sets,
    pair_counts,
    read_template_set,
    write_template_set,
)
from ekd.eval import metrics
from ekd.eval.templates import (
    TemplateProtocol,
    all_vs_all_scores,
    evaluate_templates,
    image_features,
    score_templates,
    template_set_features,
)
from tests.eval.helpers import TinyConvNet

# ------------------------------------------------------------------------------------------------
# brute force: the full float64 score matrix, explicit thresholds, explicit counts


def _brute_scores(features: np.ndarray, subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor) cosine scores of every unordered pair, from the full T x T matrix."""
    full = features.astype(np.float64) @ features.astype(np.float64).T
    genuine, impostor = [], []
    for i in range(len(features)):
        for j in range(i + 1, len(features)):
            (genuine if subjects[i] == subjects[j] else impostor).append(full[i, j])
    return np.array(genuine), np.array(impostor)


def _brute_roc(genuine: np.ndarray, impostor: np.ndarray, prune: bool) -> list[tuple[int, int, float]]:
    """ROC points (false accepts, true accepts, threshold), threshold decreasing, by counting at every
    distinct score; ``prune``: scikit-learn's drop_intermediate (keep the ends and every corner)."""
    thresholds = np.unique(np.r_[genuine, impostor])[::-1]
    points = [(int(np.sum(impostor >= t)), int(np.sum(genuine >= t)), float(t)) for t in thresholds]
    if prune and len(points) > 2:
        kept = [points[0]]
        for prev, cur, nxt in zip(points, points[1:], points[2:]):
            if nxt[0] - 2 * cur[0] + prev[0] != 0 or nxt[1] - 2 * cur[1] + prev[1] != 0:
                kept.append(cur)
        points = [*kept, points[-1]]
    return [(0, 0, math.inf), *points]


def _brute_tpr(genuine, impostor, target, rule, min_false_accepts=10):
    """(TPR, false accepts) at ``target`` by the rule of ekd.eval.metrics, restated on counts."""
    n_imp, n_gen = impostor.size, genuine.size
    if n_gen == 0 or target * n_imp < min_false_accepts:
        return math.nan, None
    points = _brute_roc(genuine, impostor, prune=rule == "nearest")
    if rule == "le":
        allowed = math.floor(target * n_imp * (1 + 1e-12))
        # the lowest threshold that accepts at most `allowed` impostors (the largest TPR)
        fa, ta, _ = [p for p in points if p[0] <= allowed][-1]
        return ta / n_gen, fa
    # the point whose FPR is nearest the target; on a tie the one with the larger TPR
    fa, ta, _ = min(points, key=lambda p: (abs(p[0] / n_imp - target), -p[1]))
    return ta / n_gen, fa


def _random_templates(count: int, dim: int, seed: int, per_subject: int = 3):
    rng = np.random.default_rng(seed)
    subjects = np.repeat(np.arange(math.ceil(count / per_subject)), per_subject)[:count]
    centres = rng.standard_normal((subjects.max() + 1, dim))
    feats = centres[subjects] + 1.2 * rng.standard_normal((count, dim))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    perm = rng.permutation(count)  # subjects interleaved, not in blocks
    return feats[perm], subjects[perm]


FPRS = (1e-1, 1e-2, 1e-3, 1e-4)


@pytest.mark.parametrize("rule", ["nearest", "le"])
@pytest.mark.parametrize(("keep", "block_entries"), [(None, 1 << 20), (5, 97), (40, 1000)])
def test_low_fpr_protocol_equals_a_brute_force_count(rule, keep, block_entries):
    feats, subjects = _random_templates(160, 6, seed=1)
    genuine, impostor = _brute_scores(feats, subjects)
    assert impostor.size == 160 * 159 // 2 - genuine.size and impostor.size > 10_000  # 1e-3 reported
    protocol = TemplateProtocol(rule=rule, fprs=FPRS)
    result = score_templates(feats, subjects, protocol, keep=keep, block_entries=block_entries)
    assert (result.genuine, result.impostors) == (genuine.size, impostor.size)
    assert result.num_templates == 160 and result.num_subjects == 54
    for target in FPRS:
        tpr, fa = _brute_tpr(genuine, impostor, target, rule)
        if fa is None:  # 1e-4 x 12,508 impostors < 10 false accepts: not reported
            assert target == 1e-4 and math.isnan(result.tpr_at_fpr[target])
            assert result.false_accepts[target] is None and result.thresholds[target] is None
            continue
        assert result.tpr_at_fpr[target] == tpr, (target, rule)
        assert result.false_accepts[target] == fa
        # the threshold accepts exactly those impostors and that TPR (up to the last bit of the scores:
        # the blocks and the full matrix may round a product differently)
        t = result.thresholds[target] - 1e-12
        assert np.sum(impostor >= t) == fa and np.sum(genuine >= t) / genuine.size == tpr
    # the same as ekd's TPR@FPR reading of the full score list (what the IJB columns use)
    labels = np.r_[np.ones(genuine.size), np.zeros(impostor.size)]
    full = metrics.tpr_at_fpr(labels, np.r_[genuine, impostor], FPRS[:3], rule=rule)
    assert {k: result.tpr_at_fpr[k] for k in FPRS[:3]} == full


@pytest.mark.parametrize("rule", ["nearest", "le"])
def test_ties_at_the_kept_scores_are_rescored_until_exact(rule):
    # template features from 6 vectors with entries 0 / +-0.5: every score is a multiple of 1/4, exact
    # in float64, so most comparisons tie; a kept top of 3 scores ends inside a tie and must grow
    rng = np.random.default_rng(7)
    basis = np.array(
        [[0.5, 0.5, 0.5, 0.5, 0, 0], [0.5, -0.5, 0.5, 0, 0.5, 0], [0, 0.5, -0.5, 0.5, 0, 0.5],
         [0.5, 0, 0, -0.5, 0.5, 0.5], [0, 0, 0.5, 0.5, 0.5, -0.5], [-0.5, 0.5, 0, 0, 0.5, 0.5]]
    )  # fmt: skip
    subjects = rng.integers(0, 40, 150)
    feats = basis[(subjects + rng.integers(0, 2, 150)) % 6]  # a subject's templates share a vector mostly
    genuine, impostor = _brute_scores(feats, subjects)
    protocol = TemplateProtocol(rule=rule, fprs=(1e-1, 1e-2, 1e-3))
    result = score_templates(feats, subjects, protocol, keep=3, block_entries=200)
    assert result.kept_impostor_scores > 3
    for target in protocol.fprs:
        tpr, fa = _brute_tpr(genuine, impostor, target, rule)
        assert (result.tpr_at_fpr[target], result.false_accepts[target]) == (tpr, fa), target


def test_chunking_does_not_change_the_scores():
    feats, subjects = _random_templates(90, 5, seed=3)
    one = all_vs_all_scores(feats, subjects, keep=10**9)
    many = all_vs_all_scores(feats, subjects, keep=10**9, block_entries=50)
    genuine, impostor = _brute_scores(feats, subjects)
    for scores in (one, many):
        assert scores.exact and scores.impostors == impostor.size
        np.testing.assert_allclose(np.sort(scores.genuine), np.sort(genuine), rtol=0, atol=1e-14)
        np.testing.assert_allclose(np.sort(scores.top_impostors), np.sort(impostor), rtol=0, atol=1e-14)
    top = all_vs_all_scores(feats, subjects, keep=25, block_entries=50).top_impostors
    np.testing.assert_allclose(top, np.sort(impostor)[::-1][:25], rtol=0, atol=1e-14)


def test_the_reporting_rule_needs_ten_false_accepts():
    # 1,000 templates of 200 subjects x 5: 499,500 comparisons, 2,000 genuine, 497,500 impostors
    feats, subjects = _random_templates(1000, 4, seed=0, per_subject=5)
    result = score_templates(feats, subjects, TemplateProtocol(fprs=(1e-3, 1e-4, 1e-5), rule="le"))
    assert (result.genuine, result.impostors) == (2000, 497_500)
    assert pair_counts(subjects) == (2000, 497_500)
    # 1e-5 x 497,500 = 4.975 < 10: not reported; 1e-4: the threshold of the 49th false accept
    assert math.isnan(result.tpr_at_fpr[1e-5]) and result.false_accepts[1e-5] is None
    assert not math.isnan(result.tpr_at_fpr[1e-4]) and result.false_accepts[1e-4] == 49
    assert result.false_accepts[1e-3] == 497
    # the nearest-FPR reading (the IJB columns') reads corners of the pruned curve: near, not at, 49.75
    result = score_templates(feats, subjects, TemplateProtocol(fprs=(1e-3, 1e-4, 1e-5)))
    assert math.isnan(result.tpr_at_fpr[1e-5]) and not math.isnan(result.tpr_at_fpr[1e-4])
    record = result.to_dict()
    assert record["tpr_at_fpr"]["1e-5"] is None and set(record["tpr_at_fpr"]) == {"1e-3", "1e-4", "1e-5"}
    assert (record["impostors"], record["genuine"], record["num_pairs"]) == (497_500, 2000, 499_500)
    assert record["tpr_rule"] == "nearest" and record["min_false_accepts"] == 10
    json.dumps(record, allow_nan=False)  # JSON-ready
    # at most 2 x 497.5 + 64 impostor scores kept for the reading, not half a million
    assert result.kept_impostor_scores <= 2 * 498 + 64
    lenient = score_templates(feats, subjects, TemplateProtocol(fprs=(1e-5,), min_false_accepts=4))
    assert not math.isnan(lenient.tpr_at_fpr[1e-5])


def test_protocol_checks_its_settings():
    with pytest.raises(ValueError, match="rule must be 'le' or 'nearest'"):
        TemplateProtocol(rule="interp")
    with pytest.raises(ValueError, match="min_false_accepts"):
        TemplateProtocol(min_false_accepts=0)
    with pytest.raises(ValueError, match="target FPR must be in"):
        TemplateProtocol(fprs=(0.0,))
    assert TemplateProtocol(flip_mode="plain").to_dict()["flip_mode"] == "plain"


def test_partial_roc_is_the_top_of_the_full_curve():
    rng = np.random.default_rng(2)
    genuine, impostor = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 5000)
    labels = np.r_[np.ones(300), np.zeros(5000)]
    full = metrics.roc_curve(labels, np.r_[genuine, impostor])
    top = np.sort(impostor)[::-1][:200]
    part = metrics.partial_roc_curve(genuine, top, 5000)
    n = part.fps.size
    assert np.all(part.thresholds[1:] > top.min()) and part.num_negatives == 5000
    for name in ("fps", "tps", "thresholds", "fpr", "tpr"):
        np.testing.assert_array_equal(getattr(part, name), getattr(full, name)[:n])
    assert full.thresholds[n] <= top.min()  # the next point is beyond what the top can count
    whole = metrics.partial_roc_curve(genuine, impostor, 5000)
    np.testing.assert_array_equal(whole.fps, full.fps)


# ------------------------------------------------------------------------------------------------
# the file


def _tiny_images(n: int, seed: int = 0, size: int = 112) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (n, 3, 8, 8), generator=gen, dtype=torch.uint8)
    return torch.nn.functional.interpolate(base.float(), size=size, mode="nearest").to(torch.uint8)


def _write(path, n_subjects=6, per_subject=3, per_template=2, seed=0, **kwargs):
    n = n_subjects * per_subject * per_template
    images = _tiny_images(n, seed)
    payloads = [encode_jpeg(img, quality=95) for img in images]
    templates = np.arange(n) // per_template
    subjects = templates // per_subject
    write_template_set(path, payloads, templates, subjects, **kwargs)
    return images, templates, subjects


def test_template_file_round_trip(tmp_path):
    path = tmp_path / "set.npz"
    images, templates, subjects = _write(path, extras={"yaw": np.linspace(-1, 1, 36), "age": np.zeros(36)})
    tset = read_template_set(path)
    assert tset.name == "set" and len(tset) == 36 and tset.num_templates == 18 and tset.num_subjects == 6
    np.testing.assert_array_equal(tset.templates, templates)
    np.testing.assert_array_equal(tset.subjects, subjects)
    np.testing.assert_array_equal(tset.medias, np.arange(36))  # no media key: one media per image
    assert tset.pair_counts() == (6 * 3, 18 * 17 // 2 - 18)
    decoded = tset.images(3, 7)
    assert decoded.shape == (4, 3, 112, 112) and decoded.dtype == torch.uint8
    error = (decoded.float() - images[3:7].float()).abs().mean()
    assert error < 8.0 and error < 0.2 * (decoded.float() - images[10:14].float()).abs().mean()  # JPEG
    assert tset.extras["yaw"].dtype == np.float32 and tset.extras["yaw"][-1] == 1.0
    # plain numpy reads it, without pickle
    with np.load(path, allow_pickle=False) as raw:
        assert str(raw["format"]) == "ekd-templates/1" and raw["offsets"][-1] == raw["jpeg"].size


def test_template_file_errors_name_the_file_and_the_key(tmp_path):
    with pytest.raises(TemplateSetError, match=r"missing\.npz: template set file not found"):
        read_template_set(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not an archive")
    with pytest.raises(TemplateSetError, match=r"junk\.npz: not a template set"):
        read_template_set(tmp_path / "junk.npz")
    good = tmp_path / "good.npz"
    _write(good)
    with np.load(good) as archive:
        arrays = dict(archive)

    def broken(name, **changes):
        data = {k: v for k, v in {**arrays, **changes}.items() if v is not None}
        np.savez(tmp_path / name, **data)
        return tmp_path / name

    with pytest.raises(TemplateSetError, match=r"no_subject\.npz: template set lacks key subject"):
        read_template_set(broken("no_subject.npz", subject=None))
    with pytest.raises(TemplateSetError, match=r"fmt\.npz: key 'format' is .*expected 'ekd-templates/1'"):
        read_template_set(broken("fmt.npz", format=np.array("other/1")))
    with pytest.raises(TemplateSetError, match=r"key 'subject' is float64 .* expected integer"):
        read_template_set(broken("float.npz", subject=arrays["subject"].astype(np.float64)))
    with pytest.raises(TemplateSetError, match=r"key 'offsets' must rise from 0"):
        read_template_set(broken("offsets.npz", offsets=arrays["offsets"][::-1].copy()))
    mixed = arrays["subject"].copy()
    mixed[1] = 5  # image 1 is in template 0 with image 0 (subject 0)
    with pytest.raises(TemplateSetError, match=r"template 0 spans two subjects \(0 and 5, image 1\)"):
        read_template_set(broken("mixed.npz", subject=mixed))
    jpeg = arrays["jpeg"].copy()
    jpeg[arrays["offsets"][2] : arrays["offsets"][3]] = 0
    with pytest.raises(TemplateSetError, match=r"corrupt\.npz image 2"):
        read_template_set(broken("corrupt.npz", jpeg=jpeg)).images(0, 4)
    assert issubclass(TemplateSetError, DataError)
    # discovery lists only the template sets of a folder
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with zipfile.ZipFile(tmp_path / "zip.npz", "w") as handle:
        handle.writestr("a.txt", "x")
    # (malformed ones too, named by their format key: reading them then says what is wrong)
    found = ["corrupt", "float", "good", "mixed", "no_subject", "offsets"]
    assert list(find_template_sets(tmp_path)) == found


# ------------------------------------------------------------------------------------------------
# embedding and wiring


def test_evaluate_templates_embeds_the_image_and_averages_normalised_images(tmp_path):
    """Default (TFace's IJB evaluation): the image only, L2-normalised, averaged per template,
    normalised; ``flip_mode="sum"``: the flip sum of the pair sets (extract_embeddings' raw)."""
    from ekd.eval.embed import extract_embeddings
    from ekd.eval.ijb import template_features

    path = tmp_path / "tiny.npz"
    _write(path, n_subjects=8, per_subject=3, per_template=2)
    tset = read_template_set(path)
    torch.manual_seed(0)
    net = TinyConvNet(embedding_size=6, size=112).eval()
    for flip_mode, flip in (("plain", False), ("sum", True)):
        feats = image_features(net, tset, batch_size=7, flip_mode=flip_mode, chunk=10)
        expected = extract_embeddings(net, tset.images(), batch_size=5, flip=flip).raw.double().numpy()
        np.testing.assert_allclose(feats, expected, rtol=1e-6, atol=1e-6)
    feats = image_features(net, tset, batch_size=7, chunk=10)  # plain
    templates, subjects = template_set_features(tset, feats)
    # by hand: each image normalised, averaged per template, normalised
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    mean = unit.reshape(24, 2, 6).mean(axis=1)
    np.testing.assert_allclose(templates, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-12)
    np.testing.assert_array_equal(subjects, np.arange(24) // 3)
    _, same = template_features(unit, tset.templates, tset.medias)
    np.testing.assert_allclose(templates, same)
    protocol = TemplateProtocol(fprs=(1e-1, 1e-2))
    result = evaluate_templates(net, path, batch_size=8, protocol=protocol)
    direct = score_templates(templates, subjects, protocol, name="tiny")
    assert result.to_dict()["tpr_at_fpr"] == direct.to_dict()["tpr_at_fpr"]
    assert result.num_images == 48 and result.name == "tiny" and result.protocol.flip_mode.value == "plain"
    summed = evaluate_templates(net, tset, batch_size=8, protocol=TemplateProtocol(flip_mode="sum"))
    assert summed.protocol.flip_mode.value == "sum" and summed.to_dict()["protocol"]["flip_mode"] == "sum"


class _NaNNet(torch.nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 4), float("nan"))


def test_wiring_into_evaluate_trained_protocol_record_and_wandb(tmp_path, monkeypatch):
    import wandb

    from ekd.eval import evaluate_trained, protocol_record, select_eval_sets, template_protocol
    from ekd.report.results import RunResults
    from ekd.report.wandb_runs import log_run_summary
    from tests.eval.helpers import random_pair_images

    path = tmp_path / "synth_ijb.npz"
    _write(path, n_subjects=10, per_subject=3, per_template=1)
    net = TinyConvNet(embedding_size=6, size=112)
    pairs = {"pairs": random_pair_images(10, size=112)}
    protocol = TemplateProtocol(fprs=(1e-1, 1e-2, 1e-3))
    found, rocs, mean = evaluate_trained(
        net, pairs, 16, template_sets={"synth_ijb": path}, template_protocol=protocol
    )
    record = found["synth_ijb"]
    assert set(record["tpr_at_fpr"]) == {"1e-1", "1e-2", "1e-3"} and record["tpr_at_fpr"]["1e-3"] is None
    assert (record["genuine"], record["impostors"]) == (30, 435 - 30) and "accuracy" not in record
    assert mean == found["pairs"]["accuracy"] and "synth_ijb" not in rocs
    assert protocol_record("32-true", templates=template_protocol())["templates"] == {
        "flip_mode": "plain",
        "image_feature": "L2-normalised",
        "template_feature": "mean of the image features, L2-normalised",
        "comparisons": "all-vs-all template pairs (same subject: genuine)",
        "scoring": "cosine, chunked matrix products, top impostor scores kept",
        "tpr_rule": "nearest",
        "fprs": ["1e-3", "1e-4", "1e-5"],
        "min_false_accepts": 10,
    }
    assert "templates" not in protocol_record("32-true")  # records without template sets keep their shape
    # a diverged backbone: the error entry, the others still evaluated
    bad = TinyConvNet(embedding_size=6, size=112)
    with torch.no_grad():
        bad.fc.weight.fill_(float("nan"))
    with pytest.warns(UserWarning, match="template set synth_ijb: the backbone has non-finite weights"):
        found_bad, _, _ = evaluate_trained(bad, {}, 16, template_sets={"synth_ijb": path})
    assert found_bad["synth_ijb"] == {"accuracy": None, "error": "non-finite embeddings"}
    with pytest.warns(UserWarning, match="template set x: the backbone produces non-finite embeddings"):
        assert evaluate_templates(_NaNNet(), path, 8, name="x") is None
    # eval.sets picks both kinds by name
    assert select_eval_sets({"a": 1}, {"t": 2}, None, "eval.sets") == ({"a": 1}, {"t": 2})
    assert select_eval_sets({"a": 1, "b": 3}, {"t": 2}, ["t", "b"], "eval.sets") == ({"b": 3}, {"t": 2})
    with pytest.raises(ValueError, match=r"eval\.sets: unknown verification sets \['x'\]; .*\['a', 't'\]"):
        select_eval_sets({"a": 1}, {"t": 2}, ["x"], "eval.sets")

    class _Run:
        def __init__(self):
            self.summary, self.logged = {}, []

        def log(self, data):
            self.logged.append(data)

    run = _Run()
    monkeypatch.setattr(wandb, "run", run)
    log_run_summary(
        RunResults(method="kd", dataset="synthetic", student="s", seed=0, metrics=found, mean_accuracy=mean)
    )
    assert run.summary["final/synth_ijb/impostors"] == 405 and run.summary["final/synth_ijb/genuine"] == 30
    assert run.summary["final/synth_ijb/tpr@fpr=1e-1"] == record["tpr_at_fpr"]["1e-1"]
    assert "final/synth_ijb/tpr@fpr=1e-3" not in run.summary  # not reported: not logged


# ------------------------------------------------------------------------------------------------
# ekd-eval and ekd-train on a synthetic folder

# 110 identities x 2 templates of 1 image: 220 templates, 110 genuine and 23,980 impostor comparisons,
# enough for FPR 1e-3 (24 false accepts), not for 1e-4
SMALL_TEMPLATES = {"template_identities": 110, "templates_per_identity": 2, "images_per_template": 1}


@pytest.fixture(scope="module")
def synthetic_folder(tmp_path_factory):
    from ekd.data.synthetic import SyntheticConfig, write_synthetic

    root = tmp_path_factory.mktemp("synth_templates")
    config = SyntheticConfig(
        identities=4, images_per_identity=2, pairs=10, heldout_identities=3, **SMALL_TEMPLATES
    )
    write_synthetic(root, config)
    return root


def test_ekd_eval_scores_the_template_set_of_a_synthetic_folder(synthetic_folder, tmp_path, capsys):
    from ekd.cli.eval import main
    from ekd.models import create_backbone

    torch.manual_seed(0)
    model = create_backbone("iresnet18", embedding_size=8, base_width=2).eval()
    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    args = [str(tmp_path / "backbone.pth"), "--backbone", "iresnet18", "--embedding-size", "8"]
    args += ["--backbone-kwargs", '{"base_width": 2}', "--batch-size", "64"]
    assert main([*args, "--data-root", str(synthetic_folder), "--output", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "Template sets, all-vs-all" in printed and "23980" in printed and "10 false accepts" not in printed
    results = json.loads((tmp_path / "a" / "eval_results.json").read_text())
    assert list(results["metrics"]) == ["synth_age", "synth_frontal", "synth_pose", "synth_ijb"]
    record = results["metrics"]["synth_ijb"]
    assert (record["genuine"], record["impostors"], record["num_templates"]) == (110, 23_980, 220)
    assert record["tpr_at_fpr"]["1e-3"] is not None and record["tpr_at_fpr"]["1e-4"] is None
    assert record["false_accepts"]["1e-3"] is not None
    expected = evaluate_templates(model, synthetic_folder / "synth_ijb.npz", batch_size=16)
    assert record["tpr_at_fpr"]["1e-3"] == expected.tpr_at_fpr[1e-3]
    assert results["eval_protocol"]["templates"]["flip_mode"] == "plain"
    pairs = [results["metrics"][n]["accuracy"] for n in ("synth_age", "synth_frontal", "synth_pose")]
    assert results["mean_accuracy"] == pytest.approx(sum(pairs) / 3)
    assert "synth_ijb" not in results["roc"]
    # by name, and as a file; --flip-mode sum embeds the mirror too
    assert (
        main(
            [
                *args,
                "--data-root",
                str(synthetic_folder),
                "--sets",
                "synth_ijb",
                "--output",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    assert list(json.loads((tmp_path / "b" / "eval_results.json").read_text())["metrics"]) == ["synth_ijb"]
    bins = ["--bins", str(synthetic_folder / "synth_ijb.npz"), "--flip-mode", "sum"]
    assert main([*args, *bins, "--output", str(tmp_path / "c")]) == 0
    summed = json.loads((tmp_path / "c" / "eval_results.json").read_text())
    assert summed["eval_protocol"]["templates"]["flip_mode"] == "sum"
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(SystemExit, match=r"other\.npz is not a template set"):
        main([*args, "--bins", str(tmp_path / "other.npz")])


def test_ekd_train_records_synth_ijb_in_results_json(synthetic_folder, tmp_path):
    from hydra import compose, initialize_config_dir

    from ekd.cli.train import run
    from ekd.config import CONF_DIR
    from ekd.report import load_results

    overrides = [
        f"data.root={synthetic_folder}",
        "data.sampler=random",
        "data.batch_size=8",
        "optim.lr=0.01",
        "trainer.max_steps=1",
        "logger=none",
        "callbacks.progress_bar=null",
        "callbacks.verification=null",
        "benchmark.enabled=false",
        "eval.batch_size=64",
        "eval.roc_points=10",
        "student.kwargs.width_mult=0.25",
        "student.embedding_size=16",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    run(cfg, tmp_path / "run", experiment="tiny")
    results = load_results(tmp_path / "run")
    record = results.metrics["synth_ijb"]
    assert set(record["tpr_at_fpr"]) == {"1e-3", "1e-4", "1e-5"} and record["tpr_at_fpr"]["1e-5"] is None
    assert 0.0 <= record["tpr_at_fpr"]["1e-3"] <= 1.0 and (record["genuine"], record["impostors"]) == (
        110,
        23_980,
    )
    assert results.eval_protocol["templates"]["tpr_rule"] == "nearest"
    pairs = [results.metrics[n]["accuracy"] for n in ("synth_frontal", "synth_pose", "synth_age")]
    assert results.mean_accuracy == pytest.approx(sum(pairs) / 3)
    # eval.sets picks the sets to score, template sets included
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, "eval.sets=[synth_pose]"])
    run(cfg, tmp_path / "run2", experiment="tiny")
    only_pose = load_results(tmp_path / "run2")
    assert set(only_pose.metrics) == {"synth_pose"} and "templates" not in only_pose.eval_protocol


def test_bench_template_protocol_quick():
    """bench/bench_template_protocol.py --quick (tiny sizes) runs and prints its tables."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "bench" / "bench_template_protocol.py"
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--scale", "200"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| MobileFaceNet x0.25 (student) |" in result.stdout and "| 200 | 19900 |" in result.stdout
