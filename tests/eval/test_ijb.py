"""IJB-B/C: Umeyama alignment, bilinear warp, meta files and a miniature set end to end."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ekd.eval import ijb
from tests.eval.helpers import ColourNet


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


def _write_miniature(root, name="IJBC", shuffle_landmark_file=False):
    base = root / name
    (base / "meta").mkdir(parents=True)
    prefix = name.lower()
    landmarks = (ijb.ARCFACE_TEMPLATE * 1.5 + 10).reshape(-1)  # the crop maps inside the 190 x 190 image
    tid_lines, lmk_lines = [], []
    for image_name, template, media, colour, score in MINI:
        path = base / "loose_crop" / image_name
        path.parent.mkdir(parents=True, exist_ok=True)
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
