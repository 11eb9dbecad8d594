"""Synthetic identity benchmark: procedurally drawn face-like identities at 112 x 112, in the real formats.

Each identity is a fixed vector of parameters (face outline and jaw, skin tone, skin texture made of
a few oriented sinusoids, moles, hair colour / volume / hairline, eye spacing / height / size / iris
colour, eyebrow shape, nose, mouth shape and colour, base age). Each image of an identity re-renders
those parameters under nuisance factors drawn per image: a pose-like warp (in-plane rotation, scale,
shift, and a yaw that moves and foreshortens the inner features more than the outline), illumination
(gain, directional light, colour cast), background, blur, partial occlusion (a bar or a block),
sensor noise, and an "age" that greys the hair, adds wrinkles and dulls the skin.

Shapes are drawn with PIL polygons on a finer canvas and warped once into the output; texture, light
and noise are a few numpy operations (about 1-3 ms per image on one core). Everything is
deterministic from the seed: the parameters and the pixel noise come from numpy generators seeded
with ``[seed, split, identity]`` (training and held-out identities) or ``[seed, split, set]`` (pairs),
so the output depends only on the arguments, not on the number of threads or on what is generated
around it.

:func:`write_synthetic` writes ``train.rec/.idx/property`` (training identities) and verification
``.bin`` sets built from *held-out* identities, half same / half different pairs:

* ``synth_frontal.bin``: mild nuisance on both images;
* ``synth_pose.bin``: one near-frontal image, one with a strong yaw / rotation, in every pair;
* ``synth_age.bin``: one young and one old rendering in every pair: the young one aged U(0, 0.15), the
  old one U(0.15 + 0.5 a, 0.15 + 0.75 a) for ``age_difficulty`` a (:func:`age_pair_ranges`; the default
  a = 1 gives U(0.65, 0.9), the only gap before the argument existed).

By default every pair renders two fresh images. With ``pair_images`` K >= 2 each held-out identity is
rendered K times per side of a pair and the pairs are distinct combinations of those images
(:func:`pooled_verification_pairs`): each image is in several pairs, as in LFW, and the ``.bin`` repeats
its bytes, which the evaluation embeds once (``ekd.eval.extract_embeddings``, ``dedupe``).

and, unless ``template_identities`` is 0, an IJB-style 1:1 template set ``synth_ijb.npz``
(:data:`TEMPLATE_SET`; format ``ekd-templates/1``, :mod:`ekd.data.templates`) for TPR at low FPR
(``ekd.eval.templates``): ``template_identities`` identities of a third pool, disjoint from the
training identities and from the verification-pair identities (their own random stream,
``[seed, 3, identity]``), each seen in ``templates_per_identity`` templates of
``images_per_template`` images. Every image is near-frontal or, with probability 1/3, clearly turned
(the strong yaw of the second image of a pose pair), and has an age of its own, the identity's base
age + N(0, 0.2) clipped to [0, 1] (the jitter of the training images), so that each template mixes
pose and age as IJB's templates mix media. Scored all-vs-all, T = identities x
templates_per_identity templates give T (T - 1) / 2 comparisons, of which identities x
C(templates_per_identity, 2) are genuine. The defaults (300 x 5 x 3: 1,500 templates, 4,500 images)
give 3,000 genuine and 1,121,250 impostor comparisons: about 112 false accepts define the threshold
at FPR 1e-4, 11 at 1e-5.

It records the generator arguments in ``synthetic.json``, written last: a folder holding it (and
``train.rec``) is a complete generated benchmark (:func:`read_synthetic_metadata`). The benchmark is
generated only into a missing or empty folder, or over an earlier generated one; a folder with other
files is refused (:func:`foreign_folder_problem`).

The hard sets vary the nuisance inside negative pairs too, so that pose or age never tells a
positive from a negative. ``bench/calibrate_synthetic.py`` checks that the benchmark separates model
sizes and leaves room for distillation (results in ``BENCHMARKS.md``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ekd.data.bins import write_bin
from ekd.data.datasets import write_face_records
from ekd.data.errors import DataError
from ekd.data.images import IMAGE_SIZE, encode_jpeg
from ekd.data.templates import TEMPLATE_SUFFIX, pair_counts, write_template_set

GENERATOR_VERSION = 4  # bumped whenever the output for given arguments changes (4: the template set)
VERIFICATION_SETS = ("frontal", "pose", "age")
TEMPLATE_SET = "synth_ijb"  # the template set's name; its file is synth_ijb.npz
_TRAIN_SPLIT, _HELDOUT_SPLIT, _PAIR_SPLIT, _TEMPLATE_SPLIT = 0, 1, 2, 3
_TEMPLATE_FIELDS = ("template_identities", "templates_per_identity", "images_per_template")
_TEMPLATE_TURNED, _TEMPLATE_AGE_SPREAD = 1.0 / 3.0, 0.2  # template images: P(strong yaw), age jitter

# Palettes (RGB, 0..255): skin from light to dark, hair colours, iris colours.
_SKIN_LIGHT = np.array([236.0, 204.0, 178.0])
_SKIN_DARK = np.array([92.0, 62.0, 45.0])
_HAIR = np.array(
    [[25, 20, 18], [70, 45, 30], [120, 80, 45], [200, 165, 100], [150, 60, 30], [60, 60, 65]],
    dtype=np.float64,
)
_IRIS = np.array([[60, 40, 25], [90, 60, 30], [60, 90, 130], [70, 110, 70], [40, 40, 40]], dtype=np.float64)


@dataclass
class SyntheticConfig:
    """Arguments of the generator (stored next to the data as ``synthetic.json``)."""

    identities: int = 200
    images_per_identity: int = 24
    pairs: int = 600
    heldout_identities: int = 100
    seed: int = 0
    difficulty: float = 1.0
    quality: int = 92
    # the age gap of synth_age's pairs, 0..1 (age_pair_ranges); 1.0 reproduces the benchmark made before
    # this argument existed, byte for byte (so GENERATOR_VERSION stayed 4)
    age_difficulty: float = 1.0
    # images rendered per held-out identity and pair side, from which the pairs are drawn (each image in
    # several pairs, as in LFW: many pairs for few images to embed; pooled_verification_pairs); 0: two
    # fresh images for every pair, the benchmark made before this argument existed, byte for byte
    pair_images: int = 0
    # the template set (module docstring); template_identities=0: none
    template_identities: int = 300
    templates_per_identity: int = 5
    images_per_template: int = 3

    def validate(self) -> None:
        for name in ("identities", "images_per_identity", "pairs", "heldout_identities", *_TEMPLATE_FIELDS):
            value = getattr(self, name)
            low = 0 if name == "template_identities" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                expected = "an integer >= 0" if low == 0 else "a positive integer"
                raise DataError(f"synthetic config {name}={value!r}: expected {expected}")
        if self.template_identities == 1:
            raise DataError(
                "synthetic config template_identities=1: must be 0 (no template set) or >= 2 (impostor "
                "comparisons need two identities)"
            )
        if self.template_identities and self.templates_per_identity < 2:
            raise DataError(
                f"synthetic config templates_per_identity={self.templates_per_identity}: must be >= 2 "
                "(genuine comparisons need two templates of an identity)"
            )
        if self.pairs % 2:
            raise DataError(f"synthetic config pairs={self.pairs}: must be even (half same, half different)")
        if self.heldout_identities < 2:
            raise DataError(
                "synthetic config heldout_identities must be >= 2 to form different-identity pairs"
            )
        if not 0.0 <= self.difficulty <= 3.0:
            raise DataError(f"synthetic config difficulty={self.difficulty}: expected a value in [0, 3]")
        if not 0.0 <= self.age_difficulty <= 1.0:
            raise DataError(
                f"synthetic config age_difficulty={self.age_difficulty}: expected a value in [0, 1]"
            )
        if not 1 <= self.quality <= 100:
            raise DataError(f"synthetic config quality={self.quality}: expected 1..100")
        pair_images = self.pair_images
        if not isinstance(pair_images, int) or isinstance(pair_images, bool) or pair_images < 0:
            raise DataError(f"synthetic config pair_images={self.pair_images!r}: expected an integer >= 0")
        if self.pair_images == 1:
            raise DataError(
                "synthetic config pair_images=1: must be 0 (fresh images for every pair) or >= 2 (a "
                "synth_frontal genuine pair needs two images of its identity)"
            )
        if self.pair_images:
            genuine = self.heldout_identities * min(pooled_genuine_combinations(self.pair_images))
            if self.pairs // 2 > genuine:
                raise DataError(
                    f"synthetic config pairs={self.pairs}: {self.pairs // 2} genuine pairs asked, but "
                    f"{self.heldout_identities} held-out identities x pair_images={self.pair_images} give "
                    f"only {genuine} distinct synth_frontal genuine pairs; raise heldout_identities or "
                    "pair_images, or lower pairs"
                )


@dataclass
class SyntheticSettings:
    """The generator arguments a config gives: the fields of :class:`SyntheticConfig`, each None when not
    given (the typed ``data.synthetic`` node of a Hydra config).

    None marks what the user or experiment did not set: the arguments recorded with an existing
    benchmark, or the defaults of :class:`SyntheticConfig`, are used for those
    (:class:`ekd.data.sources.SyntheticSource`). Command-line overrides of single fields
    (``data.synthetic.seed=1``) work on this node, which exists with every field None.
    """

    identities: Optional[int] = None  # noqa: UP045 - OmegaConf reads these annotations at run time
    images_per_identity: Optional[int] = None  # noqa: UP045
    pairs: Optional[int] = None  # noqa: UP045
    heldout_identities: Optional[int] = None  # noqa: UP045
    seed: Optional[int] = None  # noqa: UP045
    difficulty: Optional[float] = None  # noqa: UP045
    quality: Optional[int] = None  # noqa: UP045
    age_difficulty: Optional[float] = None  # noqa: UP045
    pair_images: Optional[int] = None  # noqa: UP045
    template_identities: Optional[int] = None  # noqa: UP045
    templates_per_identity: Optional[int] = None  # noqa: UP045
    images_per_template: Optional[int] = None  # noqa: UP045


def given_synthetic_fields(value: SyntheticConfig | Mapping[str, Any] | None) -> tuple[str, ...]:
    """The generator arguments ``value`` gives: all fields of a SyntheticConfig, the keys of a mapping
    whose value is not None (:class:`SyntheticSettings`), none for None."""
    if value is None:
        return ()
    if isinstance(value, SyntheticConfig):
        return tuple(field.name for field in fields(SyntheticConfig))
    if isinstance(value, Mapping):
        return tuple(str(key) for key, item in value.items() if item is not None)
    return ()  # as_synthetic_config rejects anything else


def as_synthetic_config(value: SyntheticConfig | Mapping[str, Any] | None) -> SyntheticConfig:
    """A validated :class:`SyntheticConfig` from one, from a mapping of (some of) its fields, or the
    defaults (None). In a mapping a None value means "not given": that field keeps its default.

    Raises DataError naming an unknown key (and listing the fields) or a bad value.
    """
    if value is None:
        config = SyntheticConfig()
    elif isinstance(value, SyntheticConfig):
        config = value
    elif isinstance(value, Mapping):
        known = [field.name for field in fields(SyntheticConfig)]
        unknown = [str(key) for key in value if key not in known]
        if unknown:
            raise DataError(
                f"synthetic config: unknown key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}; known keys: {', '.join(known)}"
            )
        config = SyntheticConfig(**{str(key): item for key, item in value.items() if item is not None})
    else:
        raise DataError(
            f"synthetic config: expected a SyntheticConfig or a mapping of its fields, got "
            f"{type(value).__name__}: {value!r}"
        )
    config.validate()
    return config


# --------------------------------------------------------------------------------------------------
# Parameters


def sample_identity(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Parameters of one identity (float64 arrays)."""
    tone = rng.uniform(0.0, 1.0)
    skin = (1 - tone) * _SKIN_LIGHT + tone * _SKIN_DARK + rng.normal(0.0, 8.0, 3)
    hair = _HAIR[rng.integers(len(_HAIR))] + rng.normal(0.0, 12.0, 3)
    iris = _IRIS[rng.integers(len(_IRIS))] + rng.normal(0.0, 10.0, 3)
    lips = skin * np.array([0.85, 0.55, 0.55]) + rng.normal(0.0, 8.0, 3)
    p = {
        "face_w": rng.uniform(0.36, 0.47),
        "face_h": rng.uniform(0.50, 0.62),
        "face_cy": rng.uniform(0.02, 0.10),
        "jaw": rng.uniform(0.0, 0.45),
        "skin": skin,
        "hair": hair,
        "hair_volume": rng.uniform(0.02, 0.14),
        "hair_length": rng.uniform(-0.15, 0.55),
        "hairline": rng.uniform(-0.50, -0.28),
        "hair_wave": rng.uniform(0.0, 0.06),
        "hair_phase": rng.uniform(0.0, 2 * math.pi),
        "eye_dx": rng.uniform(0.13, 0.21),
        "eye_y": rng.uniform(-0.14, -0.02),
        "eye_rx": rng.uniform(0.05, 0.08),
        "eye_ry": rng.uniform(0.022, 0.04),
        "eye_tilt": rng.uniform(-0.25, 0.25),
        "iris": iris,
        "brow_gap": rng.uniform(0.05, 0.10),
        "brow_len": rng.uniform(0.06, 0.11),
        "brow_thick": rng.uniform(0.012, 0.03),
        "brow_angle": rng.uniform(-0.35, 0.35),
        "nose_len": rng.uniform(0.12, 0.22),
        "nose_w": rng.uniform(0.025, 0.055),
        "nose_dark": rng.uniform(0.12, 0.35),
        "mouth_y": rng.uniform(0.22, 0.34),
        "mouth_w": rng.uniform(0.08, 0.16),
        "mouth_h": rng.uniform(0.014, 0.035),
        "mouth_curve": rng.uniform(-0.04, 0.04),
        "lips": lips,
        "tex_freq": rng.uniform(5.0, 16.0, 3),
        "tex_angle": rng.uniform(0.0, math.pi, 3),
        "tex_phase": rng.uniform(0.0, 2 * math.pi, 3),
        "tex_amp": rng.uniform(0.01, 0.05, 3),
        "mole_x": rng.uniform(-0.3, 0.3, 3),
        "mole_y": rng.uniform(-0.2, 0.4, 3),
        "mole_on": (rng.uniform(size=3) < 0.4).astype(np.float64),
        "age": rng.uniform(0.0, 0.6),
    }
    return {k: np.asarray(v, dtype=np.float64) for k, v in p.items()}


# Per-image nuisance profiles: each entry is a (low, high) uniform range or a N(0, sigma) width.
_PROFILES: dict[str, dict[str, float]] = {
    "train": {"rot": 9.0, "yaw": 0.45, "scale": 0.06, "shift": 0.04, "light": 0.35, "blur": 0.8,
              "occlusion": 0.25, "noise": 8.0, "age_jitter": 0.2},
    "frontal": {"rot": 4.0, "yaw": 0.12, "scale": 0.03, "shift": 0.02, "light": 0.15, "blur": 0.3,
                "occlusion": 0.0, "noise": 3.0, "age_jitter": 0.05},
    "profile": {"rot": 16.0, "yaw": 0.9, "scale": 0.08, "shift": 0.05, "light": 0.45, "blur": 0.6,
                "occlusion": 0.15, "noise": 6.0, "age_jitter": 0.05},
}  # fmt: skip


def sample_nuisance(
    rng: np.random.Generator,
    profile: str,
    difficulty: float = 1.0,
    age: float | None = None,
    base_age: float = 0.3,
    strong_yaw: bool = False,
) -> dict[str, np.ndarray]:
    """Nuisance factors of one image; ``age`` forces the rendered age, else base_age + jitter."""
    q = _PROFILES[profile]
    d = difficulty
    yaw = rng.normal(0.0, q["yaw"] * d)
    if strong_yaw:  # a clearly turned head: |yaw| in [0.6, 1.0] * difficulty, random side
        yaw = rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.0) * min(d, 1.25)
    occlusion = rng.uniform() < q["occlusion"] * min(d, 2.0)
    n = {
        "rot": math.radians(rng.normal(0.0, q["rot"] * d)),
        "yaw": float(np.clip(yaw, -1.1, 1.1)),
        "scale": 1.0 + rng.normal(0.0, q["scale"] * d),
        "tx": rng.normal(0.0, q["shift"] * d),
        "ty": rng.normal(0.0, q["shift"] * d),
        "gain": rng.uniform(1.0 - 0.3 * q["light"] * d, 1.0 + 0.2 * q["light"] * d),
        "light_angle": rng.uniform(0.0, 2 * math.pi),
        "light": rng.uniform(0.0, q["light"] * d),
        "cast": rng.normal(1.0, 0.05 * d, 3),
        "bg": rng.uniform(20.0, 235.0, 3),
        "bg_grad": rng.normal(0.0, 30.0, 2),
        "blur": rng.uniform(0.0, q["blur"] * d),
        "occ_on": float(occlusion),
        "occ_kind": float(rng.integers(2)),  # 0 = horizontal bar (glasses / scarf), 1 = block (hand)
        "occ_x": rng.uniform(-0.5, 0.5),
        "occ_y": rng.uniform(-0.3, 0.5),
        "occ_w": rng.uniform(0.15, 0.35),
        "occ_h": rng.uniform(0.08, 0.2),
        "occ_color": rng.uniform(0.0, 255.0, 3),
        "noise": rng.uniform(0.0, q["noise"] * d),
        "age": float(np.clip(base_age + rng.normal(0.0, q["age_jitter"] * d), 0.0, 1.0))
        if age is None
        else age,
    }
    return {k: np.asarray(v, dtype=np.float64) for k, v in n.items()}


# --------------------------------------------------------------------------------------------------
# Rendering
#
# Shapes are drawn with PIL (C speed; drawn on a canvas finer than the output, which anti-aliases
# them) in "face coordinates" [-1, 1]^2, then the pose-like similarity warp maps the canvas into the
# 112 x 112 output with one bilinear affine transform. Skin texture and wrinkles are float maps warped
# the same way; light and noise are a few numpy operations at output size. This is ~10x faster than
# evaluating every shape at every pixel.

_CANVAS = 256  # canvas pixels spanning face coordinates [-1, 1]
_ZOOM = 1.45  # faces fill an aligned crop: output coordinate g shows face coordinate g / (scale * _ZOOM)
_ANGLES = {n: np.linspace(0.0, 2 * math.pi, n, endpoint=False) for n in (12, 16, 20, 28, 64)}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    t = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    return np.meshgrid(t, t, indexing="xy")


_CX, _CY = _grid(_CANVAS)
_GX, _GY = _grid(IMAGE_SIZE)


def _px(x: np.ndarray, y: np.ndarray) -> list[float]:
    """Face coordinates -> flat [x0, y0, x1, y1, ...] canvas pixel coordinates for ImageDraw.polygon."""
    return (np.stack([x, y], axis=-1).ravel() + 1.0).__mul__(0.5 * _CANVAS).tolist()


def _ellipse_points(
    cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 28
) -> list[float]:
    t = _ANGLES[n]
    u, v = rx * np.cos(t), ry * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    return _px(cx + ca * u - sa * v, cy + sa * u + ca * v)


def _color(rgb: np.ndarray, alpha: float | None = None) -> tuple[int, ...]:
    c = tuple(int(round(min(max(float(v), 0.0), 255.0))) for v in rgb)
    return c if alpha is None else (*c, int(round(min(max(alpha, 0.0), 1.0) * 255)))


def _wrinkle_pattern() -> np.ndarray:
    """Age texture in face coordinates: forehead lines plus crow's feet (shared by all identities)."""
    forehead = np.sin(38.0 * _CY) / (1.0 + np.exp((_CY + 0.25) / 0.05))
    crow = np.sin(45.0 * (np.abs(_CX) + _CY)) * np.exp(
        -(((np.abs(_CX) - 0.36) / 0.08) ** 2 + ((_CY + 0.05) / 0.12) ** 2)
    )
    return (0.09 * forehead + 0.07 * crow).astype(np.float32)


_WRINKLES = _wrinkle_pattern()


class _IdentityCanvas:
    """What stays fixed across one identity's images: the face outline and its skin texture maps."""

    def __init__(self, p: dict[str, np.ndarray]) -> None:

        fw, fh, fcy, jaw = float(p["face_w"]), float(p["face_h"]), float(p["face_cy"]), float(p["jaw"])
        t = _ANGLES[64]
        rx = fw * (1.0 - jaw * np.clip(np.sin(t), 0.0, None) ** 2)  # the jaw narrows the lower half
        self.outline_x, self.outline_y = rx * np.cos(t), fcy + fh * np.sin(t)
        yf = (_CY - fcy) / fh
        r = np.sqrt((_CX / (fw * (1.0 - jaw * np.clip(yf, 0.0, None) ** 2))) ** 2 + yf**2)
        texture = np.zeros_like(_CX)
        for i in range(3):
            ang = float(p["tex_angle"][i])
            proj = math.cos(ang) * _CX + math.sin(ang) * (_CY - fcy)
            texture += float(p["tex_amp"][i]) * np.sin(
                float(p["tex_freq"][i]) * math.pi * proj + float(p["tex_phase"][i])
            )
        inside = 1.0 / (1.0 + np.exp(np.clip((r - 1.0) / 0.01, -50.0, 50.0)))
        relief = 1.0 - 0.3 * np.clip(r, 0.0, 1.0) ** 4
        # Multiplicative maps (minus 1) restricted to the face; warped per image with the pose.
        self.skin = (inside * (relief * (1.0 + texture) - 1.0)).astype(np.float32)
        self.wrinkles = (inside * _WRINKLES).astype(np.float32)


def _pose_matrix(q: dict[str, np.ndarray]) -> tuple[float, ...]:
    """PIL affine coefficients mapping output pixels to canvas pixels for the pose of ``q``.

    Output coordinate g (pixel u: g = 2 (u + 0.5) / 112 - 1) shows face coordinate
    x = R(-rot) (g - t) / (scale * zoom); canvas pixel = (x + 1) * 256 / 2 - 0.5.
    """
    rot, scale = float(q["rot"]), float(q["scale"]) * _ZOOM
    ca, sa = math.cos(rot), math.sin(rot)
    k_out, k_in = 2.0 / IMAGE_SIZE, _CANVAS / 2.0
    ox, oy = 0.5 * k_out - 1.0 - float(q["tx"]), 0.5 * k_out - 1.0 - float(q["ty"])
    g = k_in * k_out / scale
    return (
        g * ca,
        g * sa,
        k_in * (ca * ox + sa * oy) / scale + k_in - 0.5,
        -g * sa,
        g * ca,
        k_in * (-sa * ox + ca * oy) / scale + k_in - 0.5,
    )


def render_image(
    p: dict[str, np.ndarray],
    q: dict[str, np.ndarray],
    rng: np.random.Generator,
    canvas: _IdentityCanvas | None = None,
) -> np.ndarray:
    """Render one image of identity ``p`` under nuisance ``q``; returns uint8 112 x 112 x 3 RGB.

    ``rng`` supplies the sensor noise; ``canvas`` caches the identity's fixed maps.
    """
    from PIL import Image, ImageDraw, ImageFilter

    canvas = canvas or _IdentityCanvas(p)
    yaw, age = float(q["yaw"]), float(np.clip(q["age"], 0.0, 1.0))
    fw, fh, fcy = float(p["face_w"]), float(p["face_h"]), float(p["face_cy"])
    bg = _color(q["bg"])
    hair = p["hair"] + (175.0 - p["hair"]) * 0.85 * age**1.5  # greys with age
    skin = p["skin"] * (1.0 - 0.12 * age) + 14.0 * age  # duller with age
    # Under yaw the inner features move more than the outline, the (protruding) nose most.
    shift_outline, shift_inner, shift_nose = -0.06 * yaw * fw, -0.20 * yaw * fw, -0.30 * yaw * fw

    im = Image.new("RGB", (_CANVAS, _CANVAS), bg)
    draw = ImageDraw.Draw(im, "RGBA")
    # Hair behind the head, cut at the hair length.
    vol = float(p["hair_volume"])
    hx, hy = (
        shift_outline + (fw + vol + 0.04) * np.cos(_ANGLES[64]),
        fcy - 0.06 + (fh + vol) * np.sin(_ANGLES[64]),
    )
    draw.polygon(_px(hx, hy), fill=_color(hair))
    draw.rectangle([0, (float(p["hair_length"]) + 1.0) * 0.5 * _CANVAS, _CANVAS, _CANVAS], fill=bg)
    draw.polygon(_px(canvas.outline_x + shift_outline, canvas.outline_y), fill=_color(skin))
    # Fringe: the part of the hair ellipse above a wavy hairline (it covers the top of the face).
    phase, wave = float(p["hair_phase"]), float(p["hair_wave"])
    line_at = float(p["hairline"]) * fh + fcy + wave * np.sin(9.0 * (hx - shift_outline) + phase)
    above = hy < line_at
    if above.any():
        order = np.argsort(-(hx[above]))  # arc from right to left
        arc_x, arc_y = hx[above][order], hy[above][order]
        line_x = np.linspace(arc_x[-1], arc_x[0], 24)
        line_y = float(p["hairline"]) * fh + fcy + wave * np.sin(9.0 * (line_x - shift_outline) + phase)
        draw.polygon(_px(np.concatenate([line_x, arc_x]), np.concatenate([line_y, arc_y])), fill=_color(hair))

    # Eyes (sclera, iris, pupil) foreshortened on the far side; eyebrows above.
    ey = float(p["eye_y"]) + fcy
    brow_color = _color(hair * 0.8, 0.9)
    for side in (-1.0, 1.0):
        cx = side * float(p["eye_dx"]) + shift_inner
        fore = min(max(1.0 - 0.35 * yaw * side, 0.4), 1.4)
        rx, ry = float(p["eye_rx"]) * fore, float(p["eye_ry"]) * (1.0 - 0.25 * age)
        draw.polygon(_ellipse_points(cx, ey, rx, ry, side * float(p["eye_tilt"])), fill=(235, 232, 228))
        ir, ix = float(p["eye_ry"]) * 0.95, cx + 0.15 * yaw * rx
        draw.polygon(_ellipse_points(ix, ey, ir * fore, min(ir, ry), 0.0, 20), fill=_color(p["iris"]))
        draw.polygon(
            _ellipse_points(ix, ey, 0.45 * ir * fore, 0.45 * min(ir, ry), 0.0, 16), fill=(15, 15, 15)
        )
        bx = cx + side * 0.2 * float(p["brow_len"])
        by = ey - float(p["brow_gap"]) - float(p["eye_ry"])
        brow_angle = side * float(p["brow_angle"])
        draw.polygon(
            _ellipse_points(bx, by, float(p["brow_len"]) * fore, float(p["brow_thick"]), brow_angle),
            fill=brow_color,
        )

    # Nose: a soft side shadow and two nostrils.
    nose_w, nose_len, dark = float(p["nose_w"]), float(p["nose_len"]), float(p["nose_dark"])
    draw.polygon(
        _ellipse_points(shift_nose + 0.5 * nose_w, ey + 0.55 * nose_len, 0.35 * nose_w, 0.5 * nose_len),
        fill=(40, 25, 20, int(255 * 0.6 * dark)),
    )
    for side in (-1.0, 1.0):
        draw.polygon(
            _ellipse_points(shift_nose + side * nose_w, ey + nose_len, 0.018, 0.011, 0.0, 16),
            fill=(30, 15, 10, int(255 * min(0.8, 1.6 * dark + 0.2))),
        )

    # Mouth: a curved band (smile or frown), lips coloured per identity.
    mw = float(p["mouth_w"]) * (1.0 - 0.2 * abs(yaw))
    mh, curve, my, mx = (
        float(p["mouth_h"]),
        float(p["mouth_curve"]),
        fcy + float(p["mouth_y"]),
        -0.22 * yaw * fw,
    )
    xs = np.linspace(-1.0, 1.0, 17)
    centre, half = my + curve * xs**2, mh * np.sqrt(np.clip(1.0 - xs**2, 0.0, None))
    draw.polygon(
        _px(mx + mw * np.concatenate([xs, xs[::-1]]), np.concatenate([centre - half, (centre + half)[::-1]])),
        fill=_color(p["lips"]),
    )
    # Moles at fixed face positions.
    for i in np.flatnonzero(p["mole_on"] > 0):
        mole_x, mole_y = float(p["mole_x"][i]) * fw + shift_inner, float(p["mole_y"][i]) * fh + fcy
        draw.polygon(_ellipse_points(mole_x, mole_y, 0.016, 0.016, 0.0, 12), fill=_color(p["skin"] * 0.45))

    # Pose warp of the drawing and of the skin maps (texture, relief, age wrinkles).
    matrix = _pose_matrix(q)
    size = (IMAGE_SIZE, IMAGE_SIZE)
    out = im.transform(size, Image.Transform.AFFINE, matrix, Image.Resampling.BILINEAR, fillcolor=bg)
    # One warp for both maps: combining them at canvas size is cheaper than a second transform.
    skin_map = canvas.skin + (age * age) * canvas.wrinkles if age > 0.05 else canvas.skin
    skin_map = Image.fromarray(skin_map, "F").transform(
        size, Image.Transform.AFFINE, matrix, Image.Resampling.BILINEAR
    )
    factor = 1.0 + np.asarray(skin_map, dtype=np.float32)

    # Partial occlusion: a horizontal bar (glasses / scarf) or a block (hand / object).
    occluder = None
    if q["occ_on"] > 0:
        half_w, cx = (0.9, 0.0) if q["occ_kind"] == 0 else (float(q["occ_w"]), float(q["occ_x"]))
        oy, oh = float(q["occ_y"]), float(q["occ_h"])
        occluder = [(v + 1.0) * IMAGE_SIZE / 2 for v in (cx - half_w, oy - oh, cx + half_w, oy + oh)]
        mask = Image.new("L", size, 0)
        ImageDraw.Draw(mask).rectangle(occluder, fill=255)
        factor = np.where(np.asarray(mask) > 0, 1.0, factor)  # no skin texture on the occluder
        ImageDraw.Draw(out).rectangle(occluder, fill=_color(q["occ_color"]))
    arr = np.asarray(out, dtype=np.float32) * factor[..., None]
    # Blur (it also hides the canvas sampling), then light, colour cast, gradient and sensor noise.
    out = Image.fromarray(np.clip(arr, 0.0, 255.0).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(0.4 + 1.6 * float(q["blur"]))
    )
    la = float(q["light_angle"])
    light = float(q["gain"]) * (1.0 + float(q["light"]) * (math.cos(la) * _GX + math.sin(la) * _GY))
    arr = np.asarray(out, dtype=np.float32) * light[..., None] * q["cast"].astype(np.float32)
    arr += (0.5 * (float(q["bg_grad"][0]) * _GX + float(q["bg_grad"][1]) * _GY))[..., None]
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * float(q["noise"])
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Datasets


def _identity_rng(seed: int, split: int, identity: int) -> np.random.Generator:
    return np.random.default_rng([seed, split, identity])


def identity_images(
    seed: int, identity: int, count: int, difficulty: float = 1.0, split: int = _TRAIN_SPLIT
) -> torch.Tensor:
    """``count`` training-style images of identity ``identity`` (uint8 count x 3 x 112 x 112)."""
    rng = _identity_rng(seed, split, identity)
    params = sample_identity(rng)
    canvas = _IdentityCanvas(params)
    images = [
        render_image(
            params, sample_nuisance(rng, "train", difficulty, base_age=float(params["age"])), rng, canvas
        )
        for _ in range(count)
    ]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def similar_identities(pool: list[dict[str, np.ndarray]], fraction: float = 0.1) -> np.ndarray:
    """For each identity, the ``max(1, fraction * len(pool))`` most similar others (rows of indices).

    Similarity is the distance between skin and hair colours, the most salient cues of these
    faces. Negative pairs are drawn from these neighbours, as real benchmarks pair look-alikes of
    the same gender / ethnicity: random negatives would make the sets too easy to leave room for KD.
    """
    colours = np.stack([np.concatenate([p["skin"], p["hair"]]) for p in pool]) / 255.0
    dist = ((colours[:, None, :] - colours[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    k = min(len(pool) - 1, max(1, int(round(fraction * len(pool)))))
    return np.argsort(dist, axis=1, kind="stable")[:, :k]


_YOUNG_AGES = (0.0, 0.15)  # the young image of an age pair
_OLD_AGE_OFFSETS = (0.5, 0.75)  # the old image: young end + these x age_difficulty


def age_pair_ranges(age_difficulty: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """The (low, high) uniform age ranges of the young and the old image of a ``synth_age`` pair.

    The young image is aged U(0, 0.15) and the old one U(0.15 + 0.5 a, 0.15 + 0.75 a): a = 1 gives
    U(0.65, 0.9), a gap of 0.5-0.9 (training identities are aged 0-0.6 with a jitter of 0.2 x
    difficulty, so such a gap is rarely seen in training); a = 0 gives two young images.
    """
    young_end = _YOUNG_AGES[1]
    old = (young_end + _OLD_AGE_OFFSETS[0] * age_difficulty, young_end + _OLD_AGE_OFFSETS[1] * age_difficulty)
    return _YOUNG_AGES, old


def verification_pairs(config: SyntheticConfig, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A held-out verification set: ``(uint8 images 2N x 3 x 112 x 112, bool issame of N)``.

    Pairs alternate same / different; identities come from the held-out pool, which never overlaps
    the training identities; the second identity of a different pair is one of the first one's
    look-alikes (:func:`similar_identities`). With ``config.pair_images`` the pairs come from image pools
    (:func:`pooled_verification_pairs`), returned here with one image per pair slot.
    """
    if kind not in VERIFICATION_SETS:
        raise DataError(f"unknown synthetic verification set {kind!r}; known: {', '.join(VERIFICATION_SETS)}")
    if config.pair_images:
        images, index, issame = pooled_verification_pairs(config, kind)
        return images[index], issame
    rng = np.random.default_rng([config.seed, _PAIR_SPLIT, VERIFICATION_SETS.index(kind)])
    pool = [
        sample_identity(_identity_rng(config.seed, _HELDOUT_SPLIT, i))
        for i in range(config.heldout_identities)
    ]
    neighbours = similar_identities(pool)
    age_ranges = age_pair_ranges(config.age_difficulty)
    canvases: dict[int, _IdentityCanvas] = {}
    images, issame = [], []
    for pair in range(config.pairs):
        same = pair % 2 == 0
        a = int(rng.integers(config.heldout_identities))
        b = a if same else int(neighbours[a, rng.integers(neighbours.shape[1])])
        for j, ident in enumerate((a, b)):
            base_age = float(pool[ident]["age"])
            if kind == "frontal":
                nuis = sample_nuisance(rng, "frontal", config.difficulty, base_age=base_age)
            elif kind == "pose":  # one near-frontal, one clearly turned image in every pair
                profile = "profile" if j else "frontal"
                nuis = sample_nuisance(rng, profile, config.difficulty, base_age=base_age, strong_yaw=j == 1)
            else:  # age: a young and an old rendering, whatever the identity's base age
                age = rng.uniform(*age_ranges[j])
                nuis = sample_nuisance(rng, "frontal", config.difficulty, age=age)
            if ident not in canvases:
                canvases[ident] = _IdentityCanvas(pool[ident])
            images.append(render_image(pool[ident], nuis, rng, canvases[ident]))
        issame.append(same)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(issame)


def pooled_genuine_combinations(pair_images: int) -> tuple[int, int, int]:
    """Distinct genuine pairs per identity of pooled ``synth_frontal``, ``synth_pose``, ``synth_age`` sets.

    ``synth_frontal`` pairs two different images of one pool (``K (K - 1) / 2`` for ``K`` pair_images);
    the others pair an image of each side's pool (``K * K``).
    """
    k = pair_images
    return k * (k - 1) // 2, k * k, k * k


def pooled_verification_pairs(
    config: SyntheticConfig, kind: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A held-out verification set drawn from a pool of images: ``(uint8 images U x 3 x 112 x 112, long
    index of 2N, bool issame of N)``; pair ``i`` shows ``images[index[2i]]`` and ``images[index[2i + 1]]``.

    For ``config.pair_images`` K, each held-out identity gets K renderings per side of a pair: one
    pool for ``frontal`` (both images mildly varied), near-frontal and clearly turned pools for ``pose``,
    young and old pools for ``age`` (the nuisance of :func:`verification_pairs`). Genuine pairs are
    distinct combinations of one identity's images drawn without replacement (``synth_frontal``: two
    different images of the pool; the others: one image of each side); impostor pairs are distinct
    combinations of an identity's image and an image of one of its look-alikes
    (:func:`similar_identities`), drawn without replacement. Same / different alternate. Each image
    appears in several pairs, as in LFW: far more pairs than images to embed, which lowers the
    pair-sampling noise of the accuracy at a given evaluation cost (BENCHMARKS.md, "Calibration of the
    study").
    """
    if kind not in VERIFICATION_SETS:
        raise DataError(f"unknown synthetic verification set {kind!r}; known: {', '.join(VERIFICATION_SETS)}")
    config.validate()
    if not config.pair_images:
        raise DataError("pooled_verification_pairs needs pair_images >= 2 (0 draws fresh images per pair)")
    k, identities = config.pair_images, config.heldout_identities
    set_index = VERIFICATION_SETS.index(kind)
    # the pools and the pair draw have streams of their own: [seed, pair split, set, 1 | 2]
    render_rng = np.random.default_rng([config.seed, _PAIR_SPLIT, set_index, 1])
    draw_rng = np.random.default_rng([config.seed, _PAIR_SPLIT, set_index, 2])
    pool = [sample_identity(_identity_rng(config.seed, _HELDOUT_SPLIT, i)) for i in range(identities)]
    neighbours = similar_identities(pool)
    age_ranges = age_pair_ranges(config.age_difficulty)
    sides = 1 if kind == "frontal" else 2
    images = []  # identity-major, then side, then image: slot (i, side, j) = (i * sides + side) * k + j
    for ident in range(identities):
        canvas = _IdentityCanvas(pool[ident])
        base_age = float(pool[ident]["age"])
        for side in range(sides):
            for _ in range(k):
                if kind == "frontal":
                    nuis = sample_nuisance(render_rng, "frontal", config.difficulty, base_age=base_age)
                elif kind == "pose":
                    profile = "profile" if side else "frontal"
                    nuis = sample_nuisance(
                        render_rng, profile, config.difficulty, base_age=base_age, strong_yaw=side == 1
                    )
                else:
                    age = render_rng.uniform(*age_ranges[side])
                    nuis = sample_nuisance(render_rng, "frontal", config.difficulty, age=age)
                images.append(render_image(pool[ident], nuis, render_rng, canvas))

    def slot(ident: np.ndarray, side: int, j: np.ndarray) -> np.ndarray:
        return (ident * sides + side) * k + j

    half = config.pairs // 2
    # genuine: distinct (identity, first image, second image) combinations
    if kind == "frontal":
        first, second = np.triu_indices(k, 1)
    else:
        first, second = (grid.ravel() for grid in np.meshgrid(np.arange(k), np.arange(k), indexing="ij"))
    per_identity = first.size
    chosen = draw_rng.choice(identities * per_identity, size=half, replace=False)
    ident, combo = np.divmod(chosen, per_identity)
    genuine = np.stack([slot(ident, 0, first[combo]), slot(ident, sides - 1, second[combo])], axis=1)
    # impostor: distinct (identity, look-alike, its image, the look-alike's image) combinations
    look_alikes = neighbours.shape[1]
    chosen = draw_rng.choice(identities * look_alikes * k * k, size=config.pairs - half, replace=False)
    ident, rest = np.divmod(chosen, look_alikes * k * k)
    neighbour, rest = np.divmod(rest, k * k)
    j_a, j_b = np.divmod(rest, k)
    impostor = np.stack([slot(ident, 0, j_a), slot(neighbours[ident, neighbour], sides - 1, j_b)], axis=1)
    index = np.empty((config.pairs, 2), dtype=np.int64)
    index[0::2], index[1::2] = genuine, impostor  # pairs alternate same / different
    issame = np.arange(config.pairs) % 2 == 0
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return stacked, torch.from_numpy(index.ravel()), torch.from_numpy(issame)


def template_identity_images(
    config: SyntheticConfig, identity: int
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The templates of template-set identity ``identity`` (module docstring): uint8 images
    ``templates_per_identity * images_per_template`` x 3 x 112 x 112, template after template, and the
    yaw and age each image was rendered with."""
    rng = _identity_rng(config.seed, _TEMPLATE_SPLIT, identity)
    params = sample_identity(rng)
    canvas = _IdentityCanvas(params)
    images, yaws, ages = [], [], []
    for _ in range(config.templates_per_identity):
        for _ in range(config.images_per_template):
            turned = bool(rng.uniform() < _TEMPLATE_TURNED)
            age = float(np.clip(float(params["age"]) + rng.normal(0.0, _TEMPLATE_AGE_SPREAD), 0.0, 1.0))
            nuis = sample_nuisance(
                rng, "profile" if turned else "frontal", config.difficulty, age=age, strong_yaw=turned
            )
            images.append(render_image(params, nuis, rng, canvas))
            yaws.append(float(nuis["yaw"]))
            ages.append(age)
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return tensor, np.asarray(yaws, dtype=np.float32), np.asarray(ages, dtype=np.float32)


def write_template_set_file(config: SyntheticConfig, path: str | os.PathLike) -> dict[str, int]:
    """Render the template set of ``config`` into ``path`` (``ekd-templates/1``); returns its counts.

    Template ``identity * templates_per_identity + k`` is the k-th template of identity ``identity``,
    whose subject id is ``identity``.
    """
    payloads: list[bytes] = []
    templates: list[int] = []
    subjects: list[int] = []
    yaws: list[np.ndarray] = []
    ages: list[np.ndarray] = []
    per_template = config.images_per_template
    for identity in range(config.template_identities):
        images, yaw, age = template_identity_images(config, identity)
        payloads.extend(encode_jpeg(img, quality=config.quality) for img in images)
        first = identity * config.templates_per_identity
        templates.extend(first + k // per_template for k in range(len(images)))
        subjects.extend([identity] * len(images))
        yaws.append(yaw)
        ages.append(age)
    write_template_set(
        path, payloads, templates, subjects, extras={"yaw": np.concatenate(yaws), "age": np.concatenate(ages)}
    )
    num_templates = config.template_identities * config.templates_per_identity
    genuine, impostors = pair_counts(
        np.repeat(np.arange(config.template_identities), config.templates_per_identity)
    )
    return {
        "identities": config.template_identities,
        "templates": num_templates,
        "images": len(payloads),
        "genuine": genuine,
        "impostors": impostors,
    }


METADATA_FILE = "synthetic.json"  # the generator arguments; written last, so it marks a complete benchmark


def read_synthetic_metadata(root: str | os.PathLike) -> tuple[SyntheticConfig, dict[str, Any]] | None:
    """The recorded arguments and the whole ``synthetic.json`` of the benchmark generated into ``root``.

    None when ``root`` holds no complete generated benchmark (no ``synthetic.json`` or no ``train.rec``).
    A ``synthetic.json`` that is not valid JSON or lacks an argument is a DataError naming the file.
    """
    root = Path(root)
    path = root / METADATA_FILE
    if not (path.is_file() and (root / "train.rec").is_file()):
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read the recorded generator arguments: {err}") from None
    names = [field.name for field in fields(SyntheticConfig)]
    if isinstance(meta, dict) and not any(name in meta for name in _TEMPLATE_FIELDS):
        version = meta.get("generator_version")
        if isinstance(version, int) and version < 4:  # made before the template set existed: none there
            meta = {**meta, "template_identities": 0, "templates_per_identity": 5, "images_per_template": 3}
    if isinstance(meta, dict) and "age_difficulty" not in meta:  # recorded before the argument existed
        meta = {**meta, "age_difficulty": 1.0}
    if isinstance(meta, dict) and "pair_images" not in meta:  # recorded before the argument existed
        meta = {**meta, "pair_images": 0}
    missing = [name for name in names if not isinstance(meta, dict) or name not in meta]
    if missing:
        raise DataError(
            f"{path}: the recorded generator arguments lack {', '.join(missing)}; regenerate the benchmark "
            "into an empty folder (`ekd-data synth`)"
        )
    try:
        config = as_synthetic_config({name: meta[name] for name in names})
    except DataError as err:
        raise DataError(f"{path}: {err}") from None
    return config, meta


def foreign_folder_problem(root: str | os.PathLike) -> str | None:
    """Why the benchmark may not be generated into ``root``, or None (missing, empty or a benchmark).

    Generating only into an empty or new folder keeps a mistyped path from writing next to (or over)
    a user's files.
    """
    root = Path(root)
    if not root.exists():
        return None
    if not root.is_dir():
        return f"{root} is a file, not a folder"
    if (root / METADATA_FILE).is_file() and (root / "train.rec").is_file():
        return None
    entries = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in root.iterdir())
    if not entries:
        return None
    shown = ", ".join(entries[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "")
    hint = ""
    if "train.rec" in entries:
        hint = (
            " (train.rec without synthetic.json: real data -- use the data source 'rec' -- or an "
            "interrupted generation -- delete the folder to generate again)"
        )
    return (
        f"{root} is not empty and holds no generated synthetic benchmark (no {METADATA_FILE}); it contains "
        f"{shown}{hint}. The synthetic benchmark is generated only into an empty or new folder: check the "
        "path or choose another folder"
    )


def describe_config(config: SyntheticConfig) -> str:
    """``identities=200, images_per_identity=24, ...``: the arguments for log lines and messages."""
    return ", ".join(f"{name}={value}" for name, value in asdict(config).items())


def write_synthetic(
    out: str | os.PathLike,
    config: SyntheticConfig | None = None,
    verification_sets: tuple[str, ...] = VERIFICATION_SETS,
) -> dict[str, object]:
    """Generate the benchmark into ``out``: train.rec/.idx/property, ``synth_<kind>.bin``, the template
    set ``synth_ijb.npz`` (unless ``config.template_identities`` is 0) and synthetic.json.

    ``out`` must be missing, empty or hold a generated benchmark (which is replaced); a folder with
    other files is a DataError naming it and what it contains. Returns a summary (paths and counts).
    """
    config = config or SyntheticConfig()
    config.validate()
    out = Path(out)
    problem = foreign_folder_problem(out)
    if problem is not None:
        raise DataError(problem)
    # Until the new synthetic.json is written the folder must not pass for a complete benchmark.
    (out / METADATA_FILE).unlink(missing_ok=True)
    template_path = out / f"{TEMPLATE_SET}{TEMPLATE_SUFFIX}"
    template_path.unlink(missing_ok=True)  # an earlier benchmark's set must not pass for this one's
    out.mkdir(parents=True, exist_ok=True)
    payloads: list[bytes] = []
    labels: list[int] = []
    for identity in range(config.identities):
        images = identity_images(config.seed, identity, config.images_per_identity, config.difficulty)
        payloads.extend(encode_jpeg(img, quality=config.quality) for img in images)
        labels.extend([identity] * config.images_per_identity)
    write_face_records(out, payloads, labels, num_classes=config.identities)
    bins = {}
    for kind in verification_sets:
        path = out / f"synth_{kind}.bin"
        if config.pair_images:
            images, index, issame = pooled_verification_pairs(config, kind)
            write_bin(path, images, issame, image_format="jpeg", quality=config.quality, index=index)
        else:
            images, issame = verification_pairs(config, kind)
            write_bin(path, images, issame, image_format="jpeg", quality=config.quality)
        bins[kind] = str(path)
    template_sets = {}
    if config.template_identities:
        template_sets[TEMPLATE_SET] = write_template_set_file(config, template_path)
    meta = {
        "generator_version": GENERATOR_VERSION,
        **asdict(config),
        "verification_sets": list(verification_sets),
        "template_sets": template_sets,  # name -> counts (identities, templates, images, genuine, impostors)
    }
    (out / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return {
        "root": str(out),
        "images": len(payloads),
        "identities": config.identities,
        "bins": bins,
        "templates": {name: str(out / f"{name}{TEMPLATE_SUFFIX}") for name in template_sets},
    }


def preview_grid(
    path: str | os.PathLike, identities: int = 6, images: int = 8, seed: int = 0, difficulty: float = 1.0
) -> None:
    """Save a PNG grid: one row per identity, ``images`` renderings each (for looking at the data)."""
    from PIL import Image

    rows = [identity_images(seed, i, images, difficulty) for i in range(identities)]
    grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)  # 3 x (rows*112) x (cols*112)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
