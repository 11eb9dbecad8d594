"""IJB-B / IJB-C 1:1 template verification under a named scoring protocol (insightface's or TFace's).

Layout under ``<root>/<NAME>`` (NAME = IJBC or IJBB, file prefix ``ijbc_`` / ``ijbb_``)::

    meta/ijbc_face_tid_mid.txt        "<image name> <template id> <media id>" per image
    meta/ijbc_template_pair_label.txt "<template 1> <template 2> <label 0|1>" per pair
    meta/ijbc_name_5pts_score.txt     "<image name> x1 y1 ... x5 y5 <detection score>" per image
    loose_crop/<image name>           the loosely cropped images (JPEG)

Pipeline (an :class:`IJBProtocol` sets steps 2 and 3; docs/methods.md has the references):

1. Alignment: the similarity transform (Umeyama 1991, least squares, no reflection) mapping the five
   landmarks onto the ArcFace 112 x 112 template ``ARCFACE_TEMPLATE``; bilinear warp with black
   border (cv2.warpAffine semantics: integer pixel coordinates are pixel centres). Both reference
   scripts align this way (TFace: ``recognition/test/datasets.py``, ``crop_transform``).
2. Embedding (fp32 unless ``precision`` says otherwise) of the image, a = f(x), and of its mirror,
   b = f(flip x); the image feature by ``flip_mode`` (:func:`fuse_views`):
   ``sum`` a + b (insightface's F2), ``plain`` a only (the mirror is not embedded; with
   ``norm_score`` off this is TFace's a/|a|), ``sum_normalised`` a/|a| + b/|b|, ``concat_normalised``
   [a/|a|, b/|b|].
3. ``norm_score``: keep the feature's norm (N1; False L2-normalises each image feature first);
   ``detector_score``: multiply by the detection score (D1).
4. Images of the same media (video) inside a template are averaged; the template feature is the sum
   of its media features, then L2-normalised.
5. Score of a template pair = cosine similarity; TPR at FPR 1e-6 ... 1e-1 from the ROC over all
   pairs (default ``rule="nearest"``, as both reference scripts read their tables; see
   ``ekd.eval.metrics``). A target FPR below 1 / impostor pairs is NaN (null in JSON), where the
   reference scripts print the TPR of the nearest ROC point (FPR 0).

Presets (:data:`IJB_PROTOCOLS`):

============  =================  ==========  ==============  ==============================================
protocol      flip_mode          norm_score  detector_score  reference
============  =================  ==========  ==============  ==============================================
insightface   sum                True        True            insightface ``recognition/arcface_torch/
                                                             eval_ijbc.py`` (F2 + N1 + D1)
tface         plain              False       False           TFace ``recognition/test/extract_features.py``
                                                             + ``recognition/test/IJB_Evaluation.py``
============  =================  ==========  ==============  ==============================================

TFace's ``extract_features.py`` stores [a/|a|, b/|b|] per image, but ``IJB_Evaluation.py`` ships with
``use_flip_test = False`` and scores only the first half, a/|a|: the mirror is embedded and then not
used, hence ``plain``. Its other branches are ``sum_normalised`` (``use_flip_test = True``) and
``concat_normalised`` (its commented-out F1 line).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ekd.choices import EvalPrecision, FlipMode, IJBProtocolName, parse_choice
from ekd.eval import metrics
from ekd.eval.embed import BatchEmbedder, as_embedder, extract_embeddings, parse_precision

#: Five landmarks (left eye, right eye, nose tip, left and right mouth corners) of the ArcFace crop.
ARCFACE_TEMPLATE: np.ndarray = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
IJB_NAMES: tuple[str, ...] = ("IJBB", "IJBC")


# ----------------------------------------------------------------------------------------------
# alignment


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3 x 3 similarity transform T (rotation, uniform scale, translation) minimising
    sum_i ||dst_i - T(src_i)||^2 (Umeyama, PAMI 1991), as skimage's ``SimilarityTransform.estimate``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(
            f"umeyama needs two K x 2 point sets (K >= 2) of equal shape, got {src.shape}, {dst.shape}"
        )
    n, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = np.sum(src_c**2) / n
    if not src_var > 0:
        raise ValueError(f"landmarks are degenerate (all points equal): {src.tolist()}")
    cov = dst_c.T @ src_c / n
    d = np.ones(dim)
    if np.linalg.det(cov) < 0:
        d[-1] = -1.0  # the best orthogonal matrix would be a reflection; take the best rotation
    u, s, vt = np.linalg.svd(cov)
    if np.linalg.matrix_rank(cov) == dim - 1:
        # collinear landmarks: the sign of the last singular direction is free; keep a proper rotation
        d_rank = d.copy()
        d_rank[-1] = 1.0 if np.linalg.det(u) * np.linalg.det(vt) > 0 else -1.0
        rotation = u @ np.diag(d_rank) @ vt
    else:
        rotation = u @ np.diag(d) @ vt
    scale = float(s @ d) / src_var
    transform = np.eye(dim + 1)
    transform[:dim, :dim] = scale * rotation
    transform[:dim, dim] = dst_mean - scale * rotation @ src_mean
    return transform


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear warp of an H x W x C uint8 image: out(x, y) = image(M^-1 (x, y)); outside = 0.

    ``matrix`` (2 x 3) maps source to destination pixel coordinates, as for cv2.warpAffine;
    ``size`` is (width, height) of the output.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be H x W x C, got shape {image.shape}")
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (2, 3):
        raise ValueError(f"affine matrix must be 2 x 3, got shape {m.shape}")
    width, height = size
    inverse = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    sx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    sy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    wx, wy = (sx - x0)[..., None], (sy - y0)[..., None]
    h, w = image.shape[:2]
    src = image.astype(np.float64)

    def tap(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        # a neighbour outside the image contributes the border value 0 (BORDER_CONSTANT)
        inside = ((yy >= 0) & (yy < h) & (xx >= 0) & (xx < w))[..., None]
        return np.where(inside, src[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)], 0.0)

    out = (
        tap(y0, x0) * (1 - wx) * (1 - wy)
        + tap(y0, x0 + 1) * wx * (1 - wy)
        + tap(y0 + 1, x0) * (1 - wx) * wy
        + tap(y0 + 1, x0 + 1) * wx * wy
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp an H x W x 3 uint8 RGB image so its 5 landmarks land on the ArcFace template (size x size)."""
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if landmarks.shape != (5, 2):
        raise ValueError(f"align_face needs 5 landmarks (x, y), got {landmarks.shape[0]}")
    template = ARCFACE_TEMPLATE * (size / 112.0)
    matrix = umeyama(landmarks, template)[:2]
    return warp_affine(image, matrix, (size, size))


# ----------------------------------------------------------------------------------------------
# meta files


@dataclass
class IJBMeta:
    """The per-image and per-pair tables of one IJB set, rows of the image tables aligned."""

    root: Path
    name: str
    image_names: list[str]
    templates: np.ndarray
    medias: np.ndarray
    landmarks: np.ndarray  # N x 5 x 2
    scores: np.ndarray  # N detection scores
    pair_t1: np.ndarray
    pair_t2: np.ndarray
    pair_labels: np.ndarray

    @property
    def image_dir(self) -> Path:
        return self.root / "loose_crop"


def _read_rows(path: Path, min_fields: int, what: str) -> list[list[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"IJB meta file {path} does not exist (expected {what})")
    rows = []
    with open(path) as handle:
        for line_no, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != min_fields:
                raise ValueError(
                    f"{path}:{line_no}: expected {min_fields} fields ({what}), got {len(fields)}: {line!r}"
                )
            rows.append(fields)
    if not rows:
        raise ValueError(f"IJB meta file {path} is empty (expected {what})")
    return rows


def _ints(rows: list[list[str]], column: int, path: Path) -> np.ndarray:
    try:
        return np.array([int(r[column]) for r in rows], dtype=np.int64)
    except ValueError as error:
        raise ValueError(f"{path}: column {column + 1} must hold integers ({error})") from None


def resolve_ijb_root(root: str | os.PathLike, name: str) -> Path:
    """``root`` may be the set folder itself (holding ``meta/``) or its parent (holding ``<name>/meta``)."""
    if name not in IJB_NAMES:
        raise ValueError(f"IJB set name must be one of {IJB_NAMES}, got {name!r}")
    root = Path(root)
    for candidate in (root / name, root):
        if (candidate / "meta").is_dir():
            return candidate
    raise FileNotFoundError(f"no IJB layout under {root}: expected {root / name / 'meta'} or {root / 'meta'}")


def read_ijb_meta(root: str | os.PathLike, name: str = "IJBC") -> IJBMeta:
    """Read and cross-check the three meta files of ``name`` under ``root`` (module docstring)."""
    base = resolve_ijb_root(root, name)
    prefix = name.lower()
    tid_path = base / "meta" / f"{prefix}_face_tid_mid.txt"
    pair_path = base / "meta" / f"{prefix}_template_pair_label.txt"
    lmk_path = base / "meta" / f"{prefix}_name_5pts_score.txt"

    tid_rows = _read_rows(tid_path, 3, "image name, template id, media id")
    pair_rows = _read_rows(pair_path, 3, "template 1, template 2, label")
    lmk_rows = _read_rows(lmk_path, 12, "image name, 10 landmark coordinates, detection score")

    names = [r[0] for r in tid_rows]
    lmk_names = [r[0] for r in lmk_rows]
    if names != lmk_names:
        if sorted(names) != sorted(lmk_names):
            missing = sorted(set(names) ^ set(lmk_names))[:5]
            raise ValueError(f"{tid_path} and {lmk_path} list different images (e.g. {missing})")
        by_name = {r[0]: r for r in lmk_rows}
        if len(by_name) != len(lmk_rows):
            raise ValueError(f"{lmk_path} lists an image twice and is ordered unlike {tid_path}")
        lmk_rows = [by_name[n] for n in names]
    try:
        values = np.array([[float(v) for v in r[1:]] for r in lmk_rows], dtype=np.float64)
    except ValueError as error:
        raise ValueError(f"{lmk_path}: landmarks and score must be numbers ({error})") from None
    labels = _ints(pair_rows, 2, pair_path)
    if not np.all(np.isin(labels, [0, 1])):
        raise ValueError(f"{pair_path}: labels must be 0 or 1, got {np.unique(labels)[:10].tolist()}")
    templates = _ints(tid_rows, 1, tid_path)
    t1, t2 = _ints(pair_rows, 0, pair_path), _ints(pair_rows, 1, pair_path)
    unknown = np.setdiff1d(np.union1d(t1, t2), templates)
    if unknown.size:
        raise ValueError(
            f"{pair_path} refers to templates with no image in {tid_path}: {unknown[:10].tolist()}"
        )
    return IJBMeta(
        root=base,
        name=name,
        image_names=names,
        templates=templates,
        medias=_ints(tid_rows, 2, tid_path),
        landmarks=values[:, :10].reshape(-1, 5, 2),
        scores=values[:, 10],
        pair_t1=t1,
        pair_t2=t2,
        pair_labels=labels,
    )


class AlignedFaces(Dataset):
    """Loads ``loose_crop`` images and returns them aligned: 3 x size x size uint8 RGB tensors."""

    def __init__(self, meta: IJBMeta, size: int = 112) -> None:
        self.meta = meta
        self.size = size

    def __len__(self) -> int:
        return len(self.meta.image_names)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.meta.image_dir / self.meta.image_names[index]
        try:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"))
        except (OSError, ValueError) as error:
            raise OSError(f"cannot read IJB image {path}: {error}") from None
        aligned = align_face(rgb, self.meta.landmarks[index], self.size)
        return torch.from_numpy(np.ascontiguousarray(aligned.transpose(2, 0, 1)))


# ----------------------------------------------------------------------------------------------
# scoring protocols


@dataclass(frozen=True)
class IJBProtocol:
    """How per-view embeddings become pair scores (module docstring, steps 2 and 3).

    ``preset`` names the protocol of :data:`IJB_PROTOCOLS` it starts from; the three settings may
    depart from it, and :attr:`label` says which did.
    """

    preset: str
    flip_mode: FlipMode
    norm_score: bool
    detector_score: bool

    @property
    def label(self) -> str:
        """``tface``, or ``tface (detector_score=on)`` when settings depart from the preset."""
        base = IJB_PROTOCOLS.get(self.preset)
        changes = []
        for key in ("flip_mode", "norm_score", "detector_score"):
            value = getattr(self, key)
            if base is None or value != getattr(base, key):
                shown = ("on" if value else "off") if isinstance(value, bool) else FlipMode(value).value
                changes.append(f"{key}={shown}")
        return f"{self.preset} ({', '.join(changes)})" if changes else self.preset

    def to_dict(self) -> dict[str, object]:
        """JSON-ready record: preset, the three settings and the label."""
        return {
            "preset": self.preset,
            "flip_mode": FlipMode(self.flip_mode).value,
            "norm_score": bool(self.norm_score),
            "detector_score": bool(self.detector_score),
            "label": self.label,
        }


#: The named protocols: insightface's ``eval_ijbc.py`` and TFace's ``recognition/test`` scripts.
IJB_PROTOCOLS: dict[str, IJBProtocol] = {
    "insightface": IJBProtocol("insightface", FlipMode.sum, norm_score=True, detector_score=True),
    "tface": IJBProtocol("tface", FlipMode.plain, norm_score=False, detector_score=False),
}


def ijb_protocol(
    protocol: str | IJBProtocolName | IJBProtocol = "insightface",
    *,
    flip_mode: str | FlipMode | None = None,
    norm_score: bool | None = None,
    detector_score: bool | None = None,
) -> IJBProtocol:
    """The named protocol (or a given one) with the settings that are not None replacing its own."""
    if isinstance(protocol, IJBProtocol):
        base = protocol
    else:
        base = IJB_PROTOCOLS[parse_choice(IJBProtocolName, protocol, "IJB protocol", "protocol").value]
    return IJBProtocol(
        preset=base.preset,
        flip_mode=base.flip_mode if flip_mode is None else parse_choice(FlipMode, flip_mode, "flip_mode"),
        norm_score=base.norm_score if norm_score is None else bool(norm_score),
        detector_score=base.detector_score if detector_score is None else bool(detector_score),
    )


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


def fuse_views(plain: np.ndarray, flipped: np.ndarray | None, flip_mode: str | FlipMode) -> np.ndarray:
    """Per-image features (float64) from the raw embeddings of the images and of their mirrors."""
    mode = parse_choice(FlipMode, flip_mode, "flip_mode")
    if mode == FlipMode.plain:
        return np.asarray(plain, dtype=np.float64)
    if flipped is None:
        raise ValueError(f"flip_mode={mode.value} needs the embeddings of the mirrored images")
    if mode == FlipMode.sum:
        # added in float32 before widening, as insightface adds its float32 feature halves
        total = np.asarray(plain, dtype=np.float32) + np.asarray(flipped, dtype=np.float32)
        return total.astype(np.float64)
    a = _unit_rows(np.asarray(plain, dtype=np.float64))
    b = _unit_rows(np.asarray(flipped, dtype=np.float64))
    return a + b if mode == FlipMode.sum_normalised else np.concatenate([a, b], axis=1)


# ----------------------------------------------------------------------------------------------
# templates and scores


def template_features(
    features: np.ndarray, templates: np.ndarray, medias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(unique template ids, L2-normalised template features): mean within each media, sum of media."""
    features = np.asarray(features, dtype=np.float64)
    unique_templates, template_idx = np.unique(templates, return_inverse=True)
    # one group per (template, media) pair; averaging within it, then summing into the template
    keys = np.stack([template_idx, np.asarray(medias)], axis=1)
    unique_keys, group_idx, group_counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    group_idx = group_idx.reshape(-1)
    media_sum = np.zeros((unique_keys.shape[0], features.shape[1]))
    np.add.at(media_sum, group_idx, features)
    media_mean = media_sum / group_counts[:, None]
    template_sum = np.zeros((unique_templates.size, features.shape[1]))
    np.add.at(template_sum, unique_keys[:, 0], media_mean)
    norms = np.linalg.norm(template_sum, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return unique_templates, template_sum / norms


def pair_scores(
    template_feats: np.ndarray,
    unique_templates: np.ndarray,
    t1: np.ndarray,
    t2: np.ndarray,
    chunk: int = 100_000,
) -> np.ndarray:
    """Cosine similarity of each template pair (features already normalised), in memory-bounded chunks."""
    idx1 = np.searchsorted(unique_templates, t1)
    idx2 = np.searchsorted(unique_templates, t2)
    scores = np.empty(len(t1), dtype=np.float64)
    for start in range(0, len(t1), chunk):
        a = template_feats[idx1[start : start + chunk]]
        b = template_feats[idx2[start : start + chunk]]
        scores[start : start + chunk] = np.einsum("ij,ij->i", a, b)
    return scores


@dataclass
class IJBResult:
    """Outcome of :func:`evaluate_ijb`; rates are fractions."""

    name: str
    tpr_at_fpr: dict[float, float]
    auc: float
    eer: float
    num_images: int
    num_templates: int
    num_pairs: int
    num_positives: int
    num_negatives: int
    rule: str
    protocol: IJBProtocol = field(default_factory=lambda: IJB_PROTOCOLS["insightface"])
    precision: str = EvalPrecision.fp32.value
    scores: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    roc_fpr: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    roc_tpr: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def to_dict(self) -> dict:
        """JSON-ready summary (no per-pair scores); NaN becomes None."""
        return {
            "name": self.name,
            "tpr_at_fpr": {
                metrics.fpr_key(k): (None if math.isnan(v) else v) for k, v in self.tpr_at_fpr.items()
            },
            "auc": None if math.isnan(self.auc) else self.auc,
            "eer": None if math.isnan(self.eer) else self.eer,
            "num_images": self.num_images,
            "num_templates": self.num_templates,
            "num_pairs": self.num_pairs,
            "num_positives": self.num_positives,
            "num_negatives": self.num_negatives,
            "tpr_rule": self.rule,
            "protocol": self.protocol.to_dict(),
            "precision": self.precision,
        }

    @property
    def unresolvable(self) -> list[float]:
        """Target FPRs the pairs cannot resolve (target x impostor pairs < 1): NaN in ``tpr_at_fpr``."""
        return [fpr for fpr, tpr in self.tpr_at_fpr.items() if math.isnan(tpr)]


def ijb_scores_from_features(
    meta: IJBMeta, raw_features: np.ndarray, norm_score: bool = True, detector_score: bool = True
) -> tuple[np.ndarray, int]:
    """Pair scores from per-image features (after :func:`fuse_views`), weighted as ``norm_score`` /
    ``detector_score`` say (module docstring, step 3); also returns the template count."""
    feats = np.asarray(raw_features, dtype=np.float64)
    if feats.shape[0] != len(meta.image_names):
        raise ValueError(f"{feats.shape[0]} image features for {len(meta.image_names)} images of {meta.name}")
    if not norm_score:
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        feats = feats / norms
    if detector_score:
        feats = feats * meta.scores[:, None]
    unique_templates, template_feats = template_features(feats, meta.templates, meta.medias)
    return pair_scores(template_feats, unique_templates, meta.pair_t1, meta.pair_t2), unique_templates.size


def evaluate_ijb(
    model: torch.nn.Module | BatchEmbedder | str | os.PathLike,
    root: str | os.PathLike,
    name: str = "IJBC",
    batch_size: int = 256,
    num_workers: int = 0,
    protocol: str | IJBProtocolName | IJBProtocol = "insightface",
    fprs: Iterable[float] = metrics.FPR_TARGETS,
    rule: str = "nearest",
    precision: str | EvalPrecision = EvalPrecision.fp32,
) -> IJBResult:
    """Run the IJB-B/C 1:1 protocol (module docstring) with ``model`` on the set under ``root``.

    ``protocol``: a preset name (``"insightface"``, ``"tface"``) or an :class:`IJBProtocol`
    (:func:`ijb_protocol` builds one with settings of its own); ``precision``: that of
    :func:`ekd.eval.extract_embeddings` (fp32 by default).
    """
    protocol = ijb_protocol(protocol)
    precision = parse_precision(precision)
    meta = read_ijb_meta(root, name)
    loader = DataLoader(AlignedFaces(meta), batch_size=batch_size, num_workers=num_workers, shuffle=False)
    # build an ONNX session once, not per batch; a torch module stays a module (eval-mode handling)
    runner = model if isinstance(model, torch.nn.Module) else as_embedder(model)
    mirrored = protocol.flip_mode != FlipMode.plain  # "plain" never looks at the mirror: not embedded

    def embed(images: torch.Tensor) -> torch.Tensor:
        return extract_embeddings(runner, images, batch_size=batch_size, flip=False, precision=precision).raw

    plain_parts, flip_parts = [], []
    for images in loader:
        plain_parts.append(embed(images))
        if mirrored:
            flip_parts.append(embed(torch.flip(images, dims=[3])))
    plain = torch.cat(plain_parts).numpy()
    flipped_raw = torch.cat(flip_parts).numpy() if mirrored else None
    features = fuse_views(plain, flipped_raw, protocol.flip_mode)
    scores, num_templates = ijb_scores_from_features(
        meta, features, norm_score=protocol.norm_score, detector_score=protocol.detector_score
    )
    labels = meta.pair_labels
    roc = metrics.roc_curve(labels, scores)
    return IJBResult(
        name=name,
        tpr_at_fpr=metrics.tpr_at_fpr(labels, scores, fprs, rule=rule),
        auc=metrics.auc(labels, scores),
        eer=metrics.eer(labels, scores),
        num_images=len(meta.image_names),
        num_templates=num_templates,
        num_pairs=int(labels.size),
        num_positives=int(labels.sum()),
        num_negatives=int(labels.size - labels.sum()),
        rule=rule,
        protocol=protocol,
        precision=precision.value,
        scores=scores,
        roc_fpr=roc.fpr,
        roc_tpr=roc.tpr,
    )
