"""IJB-B/C: Umeyama alignment, bilinear warp, meta files and a miniature set end to end."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ekd.eval import ijb
from tests.eval.helpers import AutocastProbe, ColourNet, SideNet


def _similarity(scale, angle, tx, ty):
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty], [0, 0, 1.0]])


def test_umeyama_recovers_a_known_similarity():
    src = np.array([[10.0, 20.0], [40.0, 22.0], [25.0, 35.0], [14.0, 50.0], [38.0, 49.0]])
    truth = _similarity(1.7, 0.4, -12.0, 30.5)
    dst = (truth[:2, :2] @ src.T).T + truth[:2, 2]
    np.testing.assert_allclose(ijb.umeyama(src, dst), truth, atol=1e-10)


def test_umeyama_is_the_least_squares_similarity():
    # independent route: a 2-D similarity is linear in (a, b, tx, ty):
    # x' = a x - b y + tx, y' = b x + a y + ty
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, size=(5, 2))
    dst = rng.uniform(0, 100, size=(5, 2))
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    expected = np.array([[a, -b, tx], [b, a, ty], [0, 0, 1]])
    np.testing.assert_allclose(ijb.umeyama(src, dst), expected, atol=1e-9)


def test_umeyama_rejects_degenerate_landmarks():
    with pytest.raises(ValueError, match="degenerate"):
        ijb.umeyama(np.ones((5, 2)), ijb.ARCFACE_TEMPLATE)


def test_warp_affine_bilinear_by_hand():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(6, 7, 1), dtype=np.uint8)
    # out(x, y) = image(x - 0.5, y - 0.25)
    out = ijb.warp_affine(image, np.array([[1, 0, 0.5], [0, 1, 0.25]]), (7, 6))
    img = image[..., 0].astype(np.float64)
    for y, x in [(1, 1), (3, 4), (4, 2)]:
        sx, sy = x - 0.5, y - 0.25
        x0, y0 = int(math.floor(sx)), int(math.floor(sy))
        fx, fy = sx - x0, sy - y0
        value = (
            img[y0, x0] * (1 - fx) * (1 - fy)
            + img[y0, x0 + 1] * fx * (1 - fy)
            + img[y0 + 1, x0] * (1 - fx) * fy
            + img[y0 + 1, x0 + 1] * fx * fy
        )
        assert out[y, x, 0] == round(value)
    # pixel (0, 0) samples (-0.5, -0.25): three of its four neighbours are outside (border value 0)
    assert out[0, 0, 0] == round(img[0, 0] * 0.5 * 0.75)
    shifted = ijb.warp_affine(image, np.array([[1.0, 0, 2], [0, 1, 1]]), (7, 6))  # integer shift: exact
    np.testing.assert_array_equal(shifted[1:, 2:, 0], image[:-1, :-2, 0])
    assert shifted[0].max() == 0 and shifted[:, :2].max() == 0


def test_align_face_exact_on_a_scaled_template():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(240, 240, 3), dtype=np.uint8)
    landmarks = ijb.ARCFACE_TEMPLATE * 2 + 8  # the face at twice the crop size, offset by 8 pixels
    aligned = ijb.align_face(image, landmarks)
    assert aligned.shape == (112, 112, 3)
    # the warp maps output (x, y) to source (2x + 8, 2y + 8): integer positions, no interpolation
    np.testing.assert_array_equal(aligned, image[8 : 8 + 224 : 2, 8 : 8 + 224 : 2])


def test_template_features_by_hand():
    feats = np.array([[1.0, 0, 0], [3.0, 0, 0], [0, 2.0, 0], [0, 0, 5.0], [1.0, 1.0, 0]])
    templates = np.array([7, 7, 7, 3, 3])
    medias = np.array([1, 1, 2, 9, 4])
    ids, tf = ijb.template_features(feats, templates, medias)
    assert list(ids) == [3, 7]
    t7 = np.array([2.0, 2.0, 0])  # mean([1,0,0], [3,0,0]) + [0,2,0]
    t3 = np.array([1.0, 1.0, 5.0])
    np.testing.assert_allclose(tf[1], t7 / np.linalg.norm(t7))
    np.testing.assert_allclose(tf[0], t3 / np.linalg.norm(t3))
    scores = ijb.pair_scores(tf, ids, np.array([7, 3]), np.array([3, 7]), chunk=1)
    np.testing.assert_allclose(scores, [t7 @ t3 / np.linalg.norm(t7) / np.linalg.norm(t3)] * 2)


# -- the miniature ---------------------------------------------------------------------------

# image name, template, media, RGB colour, detection score
MINI = [
    ("1/a.jpg", 1, 10, (200, 30, 40), 0.9),
    ("1/b.jpg", 1, 10, (180, 60, 20), 0.5),
    ("1/c.jpg", 1, 11, (30, 200, 50), 1.0),
    ("2/d.jpg", 2, 12, (20, 40, 220), 0.8),
    ("3/e.jpg", 3, 13, (190, 50, 40), 0.7),
    ("3/f.jpg", 3, 14, (60, 60, 200), 0.95),
    ("4/g.jpg", 4, 15, (40, 190, 60), 0.6),
]
PAIRS = [(1, 3, 1), (1, 2, 0), (2, 3, 0), (3, 4, 0), (1, 4, 1), (2, 4, 0)]
WEIGHT = np.array([[1.0, -0.5, 0.2], [0.3, 1.2, -0.4], [-0.6, 0.1, 0.9], [0.2, 0.2, 0.2]])
BIAS = np.array([0.05, -0.1, 0.0, 0.3])


def _write_miniature(root, name="IJBC", shuffle_landmark_file=False, two_sided=False):
    """The miniature under ``root/name``. ``two_sided``: 240 x 240 images whose left and right halves
    differ (colour | inverse colour), landmarks at twice the ArcFace template + 8, so that the aligned
    crop is exactly ``image[8:232:2, 8:232:2]`` (integer sampling) and a mirror is another image."""
    base = root / name
    (base / "meta").mkdir(parents=True)
    prefix = name.lower()
    landmarks = (ijb.ARCFACE_TEMPLATE * 1.5 + 10).reshape(-1)  # the crop maps inside the 190 x 190 image
    if two_sided:
        landmarks = (ijb.ARCFACE_TEMPLATE * 2 + 8).reshape(-1)
    tid_lines, lmk_lines = [], []
    for image_name, template, media, colour, score in MINI:
        path = base / "loose_crop" / image_name
        path.parent.mkdir(parents=True, exist_ok=True)
        if two_sided:
            image = Image.new("RGB", (240, 240), colour)
            image.paste(tuple(255 - c for c in colour), (120, 0, 240, 240))
            image.save(path, quality=95)
        else:
            Image.new("RGB", (190, 190), colour).save(path, quality=95)
        tid_lines.append(f"{image_name} {template} {media}")
        lmk_lines.append(" ".join([image_name, *(f"{v:.4f}" for v in landmarks), f"{score}"]))
    if shuffle_landmark_file:
        lmk_lines = lmk_lines[::-1]
    (base / "meta" / f"{prefix}_face_tid_mid.txt").write_text("\n".join(tid_lines) + "\n")
    (base / "meta" / f"{prefix}_name_5pts_score.txt").write_text("\n".join(lmk_lines) + "\n")
    pair_text = "\n".join(f"{a} {b} {label}" for a, b, label in PAIRS)
    (base / "meta" / f"{prefix}_template_pair_label.txt").write_text(pair_text + "\n")
    return base


def _expected_scores(base, detector_score=True, norm_score=True):
    """The protocol by hand: decoded colour -> linear model -> flip sum -> weights -> media/template."""
    features = {}
    for image_name, template, media, _, score in MINI:
        colour = np.asarray(Image.open(base / "loose_crop" / image_name).convert("RGB"), dtype=np.float64)
        mean = colour.reshape(-1, 3).mean(axis=0)  # uniform image: the aligned crop has the same colour
        f = 2 * (WEIGHT @ ((mean - 127.5) / 127.5) + BIAS)  # image + mirror give the same output
        if not norm_score:
            f = f / np.linalg.norm(f)
        if detector_score:
            f = f * score
        features.setdefault(template, {}).setdefault(media, []).append(f)
    template_feats = {}
    for template, by_media in features.items():
        total = sum(np.mean(fs, axis=0) for fs in by_media.values())
        template_feats[template] = total / np.linalg.norm(total)
    return np.array([template_feats[a] @ template_feats[b] for a, b, _ in PAIRS])


@pytest.mark.parametrize("shuffle", [False, True])
def test_miniature_end_to_end(tmp_path, shuffle):
    base = _write_miniature(tmp_path, shuffle_landmark_file=shuffle)
    model = ColourNet(WEIGHT.astype(np.float32), BIAS.astype(np.float32))
    result = ijb.evaluate_ijb(model, tmp_path, "IJBC", batch_size=3, fprs=(0.5, 0.25, 0.1))
    expected = _expected_scores(base)
    np.testing.assert_allclose(result.scores, expected, atol=2e-5)
    assert result.num_images == 7 and result.num_templates == 4
    assert (result.num_pairs, result.num_positives, result.num_negatives) == (6, 2, 4)
    labels = np.array([p[2] for p in PAIRS])
    # TPR at FPR 1/4 (one impostor): the pairs ranked by expected score, read by hand
    order = np.argsort(-expected)
    accepted_impostors = np.cumsum(labels[order] == 0)
    genuine_before_second_impostor = labels[order][accepted_impostors <= 1].sum()
    le = ijb.evaluate_ijb(model, base, "IJBC", fprs=(0.25,), rule="le")
    assert le.tpr_at_fpr[0.25] == pytest.approx(genuine_before_second_impostor / 2)
    assert math.isnan(result.tpr_at_fpr[0.1])  # below 1 / 4 negatives
    assert 0.0 <= result.auc <= 1.0


def test_miniature_options(tmp_path):
    base = _write_miniature(tmp_path, name="IJBB")
    meta = ijb.read_ijb_meta(tmp_path, "IJBB")
    model = ColourNet(WEIGHT.astype(np.float32), BIAS.astype(np.float32))
    from ekd.eval.embed import extract_embeddings

    images = torch.stack([ijb.AlignedFaces(meta)[i] for i in range(len(MINI))])
    raw = extract_embeddings(model, images).raw.numpy()
    for detector_score in (False, True):
        for norm_score in (False, True):
            scores, _ = ijb.ijb_scores_from_features(
                meta, raw, norm_score=norm_score, detector_score=detector_score
            )
            np.testing.assert_allclose(scores, _expected_scores(base, detector_score, norm_score), atol=2e-5)


def test_meta_errors_name_the_file(tmp_path):
    base = _write_miniature(tmp_path)
    pair_file = base / "meta" / "ijbc_template_pair_label.txt"
    pair_file.write_text("1 99 1\n")
    with pytest.raises(ValueError, match=r"ijbc_template_pair_label.txt refers to templates .*99"):
        ijb.read_ijb_meta(tmp_path, "IJBC")
    pair_file.write_text("1 2\n")
    with pytest.raises(ValueError, match=r"ijbc_template_pair_label.txt:1: expected 3 fields"):
        ijb.read_ijb_meta(tmp_path, "IJBC")
    pair_file.write_text("1 2 3\n")
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        ijb.read_ijb_meta(tmp_path, "IJBC")
    with pytest.raises(FileNotFoundError, match="no IJB layout"):
        ijb.read_ijb_meta(tmp_path / "nowhere", "IJBC")
    with pytest.raises(ValueError, match="must be one of"):
        ijb.read_ijb_meta(tmp_path, "IJBA")
    lmk = base / "meta" / "ijbc_name_5pts_score.txt"
    lmk.write_text("\n".join(lmk.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(ValueError, match="list different images"):
        ijb.read_ijb_meta(tmp_path, "IJBC")


# -- the scoring protocols against the reference scripts --------------------------------------------
#
# The references, restated below in float64 (paths in the repositories of 2025-12: Tencent/TFace
# 171ec14, deepinsight/insightface 7fadd42):
#
# insightface recognition/arcface_torch/eval_ijbc.py: img_feats = [f(x), f(flip x)] (raw, fp32);
#   use_flip_test = use_norm_score = use_detector_score = True -> the two halves added (F2), the norm
#   kept (N1), times the detection score (D1).
# TFace recognition/test/extract_features.py (extract_features): feature.npy = [l2(f(x)), l2(f(flip x))];
#   TFace recognition/test/IJB_Evaluation.py: use_flip_test = use_norm_score = use_detector_score =
#   False -> the first half only, L2-normalised, unweighted. With use_flip_test = True the halves are
#   added; its commented-out F1 line scores the whole concatenation.
# Both: image2template_feature (media mean, sum over media, L2), verification (dot product), and the
#   TPR read at the point of sklearn's ROC nearest each FPR (min over (|fpr - x|, index) after flipud).

SIDE_LEFT = np.array([[1.0, -0.5, 0.2], [0.3, 1.2, -0.4], [-0.6, 0.1, 0.9], [0.2, 0.2, 0.2]])
SIDE_RIGHT = np.array([[0.4, 0.3, -1.1], [-0.8, 0.5, 0.6], [0.7, -0.9, 0.1], [-0.3, 0.6, 0.5]])
SIDE_BIAS = np.array([0.05, -0.1, 0.0, 0.3])
FPRS = (1.0, 0.5, 0.25, 0.1)  # 4 impostor pairs: 0.1 cannot be resolved


def _side_model():
    return SideNet(SIDE_LEFT.astype(np.float32), SIDE_RIGHT.astype(np.float32), SIDE_BIAS.astype(np.float32))


def _views_by_hand(base):
    """(f(x), f(flip x)) per image of a two-sided miniature, float64, from the decoded files."""
    plain, flipped = [], []
    for image_name, *_ in MINI:
        decoded = np.asarray(Image.open(base / "loose_crop" / image_name).convert("RGB"), dtype=np.float64)
        crop = (decoded[8:232:2, 8:232:2] - 127.5) / 127.5  # the aligned 112 x 112 crop, H x W x 3

        def side_net(x):
            left, right = x[:, :56].mean(axis=(0, 1)), x[:, 56:].mean(axis=(0, 1))
            return SIDE_LEFT @ left + SIDE_RIGHT @ right + SIDE_BIAS

        plain.append(side_net(crop))
        flipped.append(side_net(crop[:, ::-1]))
    return np.array(plain), np.array(flipped)


def _l2(x):
    return x / np.sqrt(np.sum(x**2, -1, keepdims=True))


def _reference_scores(plain, flipped, script, use_flip_test, use_norm_score, use_detector_score):
    """The reference scripts' image -> template -> pair arithmetic (header comment). ``use_flip_test``:
    True / False as the scripts spell it, or "F1" for their commented-out concatenation line."""
    if script == "insightface":  # img_feats: the raw views side by side
        stored = np.concatenate([plain, flipped], axis=1)
    else:  # TFace's feature.npy: the L2-normalised views side by side
        stored = np.concatenate([_l2(plain), _l2(flipped)], axis=1)
    half = stored.shape[1] // 2
    if use_flip_test == "F1":
        feats = stored
    elif use_flip_test:
        feats = stored[:, :half] + stored[:, half:]
    else:
        feats = stored[:, :half]
    if not use_norm_score:
        feats = _l2(feats)
    if use_detector_score:
        feats = feats * np.array([m[4] for m in MINI])[:, None]
    templates = np.array([m[1] for m in MINI])
    medias = np.array([m[2] for m in MINI])
    pooled = {}
    for t in np.unique(templates):
        in_t = templates == t
        media_feats = [feats[in_t & (medias == m)].mean(axis=0) for m in np.unique(medias[in_t])]
        total = np.sum(media_feats, axis=0)
        pooled[t] = total / np.sqrt(np.sum(total**2))
    return np.array([pooled[a] @ pooled[b] for a, b, _ in PAIRS])


def _reference_tpr(labels, scores, fpr_target):
    """TPR read as both scripts read it, on scikit-learn's ``roc_curve(label, score)`` (default
    ``drop_intermediate=True``): one point per distinct score; a point whose step from the previous one
    equals its step to the next (a straight run) is dropped, the end points kept; (0, 0) prepended. Then
    ``flipud`` and the first point of least ``|fpr - target|`` (ties: the larger FPR, then TPR)."""
    order = np.argsort(-scores)
    fps = list(np.cumsum(labels[order] == 0))
    tps = list(np.cumsum(labels[order] == 1))
    keep = [0]
    for i in range(1, len(fps) - 1):
        before = (fps[i] - fps[i - 1], tps[i] - tps[i - 1])
        after = (fps[i + 1] - fps[i], tps[i + 1] - tps[i])
        if before != after:
            keep.append(i)
    keep.append(len(fps) - 1)
    fpr = np.array([0.0] + [fps[i] / fps[-1] for i in keep])
    tpr = np.array([0.0] + [tps[i] / tps[-1] for i in keep])
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, index = min(zip(abs(fpr - fpr_target), range(len(fpr))))
    return tpr[index]


PRESETS = {  # name -> (script, use_flip_test, use_norm_score, use_detector_score) as the scripts set them
    "insightface": ("insightface", True, True, True),
    "tface": ("tface", False, False, False),
}
# ekd's flip modes as settings of the scripts: sum and plain are insightface's two branches on raw views
# (plain with norm_score off is also TFace's shipped setting), the normalised ones TFace's other two
FLIP_MODES = {
    "sum": ("insightface", True),
    "plain": ("insightface", False),
    "sum_normalised": ("tface", True),
    "concat_normalised": ("tface", "F1"),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_scores_as_its_reference_script(tmp_path, name):
    base = _write_miniature(tmp_path, two_sided=True)
    plain, flipped = _views_by_hand(base)
    assert np.abs(plain - flipped).min() > 0.05  # a mirror is another image here: flip modes differ
    expected = _reference_scores(plain, flipped, *PRESETS[name])
    assert np.unique(expected.round(6)).size == expected.size  # no ties: float noise cannot reorder

    result = ijb.evaluate_ijb(_side_model(), tmp_path, "IJBC", batch_size=4, protocol=name, fprs=FPRS)
    np.testing.assert_allclose(result.scores, expected, atol=2e-5)
    labels = np.array([p[2] for p in PAIRS])
    for target in FPRS[:3]:
        assert result.tpr_at_fpr[target] == _reference_tpr(labels, expected, target)
    # 0.1 x 4 impostors < 1: NaN here (null in JSON), where the scripts print the TPR at FPR 0
    assert math.isnan(result.tpr_at_fpr[0.1]) and result.unresolvable == [0.1]
    assert _reference_tpr(labels, expected, 0.1) == _reference_tpr(labels, expected, 0.0)
    record = result.to_dict()
    assert record["tpr_at_fpr"]["1e-1"] is None
    assert record["protocol"]["preset"] == name and record["protocol"]["label"] == name
    assert record["precision"] == "32-true"


def test_the_two_presets_score_differently(tmp_path):
    _write_miniature(tmp_path, two_sided=True)
    model = _side_model()
    scores = {n: ijb.evaluate_ijb(model, tmp_path, "IJBC", protocol=n).scores for n in PRESETS}
    assert np.abs(scores["insightface"] - scores["tface"]).max() > 1e-2


@pytest.mark.parametrize("flip", ["sum", "plain", "sum_normalised", "concat_normalised"])
def test_each_setting_on_its_own(tmp_path, flip):
    base = _write_miniature(tmp_path, two_sided=True)
    plain, flipped = _views_by_hand(base)
    model = _side_model()
    for norm_score in (False, True):
        for detector_score in (False, True):
            protocol = ijb.ijb_protocol(
                "tface", flip_mode=flip, norm_score=norm_score, detector_score=detector_score
            )
            result = ijb.evaluate_ijb(model, tmp_path, "IJBC", protocol=protocol, fprs=FPRS)
            expected = _reference_scores(plain, flipped, *FLIP_MODES[flip], norm_score, detector_score)
            np.testing.assert_allclose(result.scores, expected, atol=2e-5)
            if flip == "plain" and not norm_score:
                tface = _reference_scores(plain, flipped, "tface", False, False, detector_score)
                np.testing.assert_allclose(result.scores, tface, atol=2e-5)
            assert result.to_dict()["protocol"] == {
                "preset": "tface",
                "flip_mode": flip,
                "norm_score": norm_score,
                "detector_score": detector_score,
                "label": protocol.label,
            }


def test_protocol_names_labels_and_errors():
    assert ijb.IJB_PROTOCOLS["insightface"].to_dict() == {
        "preset": "insightface",
        "flip_mode": "sum",
        "norm_score": True,
        "detector_score": True,
        "label": "insightface",
    }
    tface = ijb.ijb_protocol("tface")
    assert (tface.flip_mode.value, tface.norm_score, tface.detector_score) == ("plain", False, False)
    assert ijb.ijb_protocol("tface", flip_mode="plain", norm_score=False).label == "tface"  # no change
    changed = ijb.ijb_protocol("tface", flip_mode="concat_normalised", detector_score=True)
    assert changed.label == "tface (flip_mode=concat_normalised, detector_score=on)"
    assert ijb.ijb_protocol("insightface", norm_score=False).label == "insightface (norm_score=off)"
    with pytest.raises(ValueError, match="unknown protocol 'arcface'; expected one of insightface, tface"):
        ijb.ijb_protocol("arcface")
    with pytest.raises(ValueError, match="unknown value 'concat'; expected one of sum, plain"):
        ijb.ijb_protocol("tface", flip_mode="concat")
    with pytest.raises(ValueError, match="needs the embeddings of the mirrored images"):
        ijb.fuse_views(np.ones((2, 3)), None, "sum")


def test_ijb_embeds_in_fp32_unless_asked(tmp_path):
    _write_miniature(tmp_path)
    probe = AutocastProbe()
    ijb.evaluate_ijb(probe, tmp_path, "IJBC", batch_size=4)
    assert probe.seen and set(probe.seen) == {None}
    probe.seen.clear()
    result = ijb.evaluate_ijb(probe, tmp_path, "IJBC", batch_size=4, precision="bf16-mixed")
    assert set(probe.seen) == {torch.bfloat16} and result.precision == "bf16-mixed"
    probe.seen.clear()
    ijb.evaluate_ijb(probe, tmp_path, "IJBC", batch_size=4, protocol="tface")
    assert len(probe.seen) == 2  # 7 images in batches of 4, the mirrors not embedded for "plain"
