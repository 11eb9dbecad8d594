"""Synthetic identity benchmark: procedurally drawn face-like identities at 112 x 112, in the real formats.

Each identity is a fixed vector of parameters (face outline and jaw, skin tone, skin texture made of
a few oriented sinusoids, moles, hair colour / volume / hairline, eye spacing / height / size / iris
colour, eyebrow shape, nose, mouth shape and colour, base age). Each image of an identity re-renders
those parameters under nuisance factors drawn per image: a pose-like warp (in-plane rotation, scale,
shift, and a yaw that moves and foreshortens the inner features more than the outline), illumination
(gain, directional light, colour cast), background, blur, partial occlusion (a bar or a block),
sensor noise, and an "age" that greys the hair, adds wrinkles and dulls the skin.

Everything is vectorised in torch over the images of a chunk and deterministic from the seed: the
parameters come from numpy generators seeded with ``[seed, split, identity, ...]`` and the pixel noise
from a torch generator seeded per chunk, so the output depends only on the arguments (not on the
number of threads or on how many identities are generated around it).

:func:`write_synthetic` writes ``train.rec/.idx/property`` (training identities) and verification
``.bin`` sets built from *held-out* identities, half same / half different pairs:

* ``synth_frontal.bin``: mild nuisance on both images;
* ``synth_pose.bin``: one near-frontal image, one with a strong yaw / rotation, in every pair;
* ``synth_age.bin``: one young and one old rendering in every pair.

The hard sets vary the nuisance inside negative pairs too, so that pose or age never tells a
positive from a negative. ``bench/calibrate_synthetic.py`` checks that the benchmark separates model
sizes and leaves room for distillation (results in ``bench/RESULTS_data.md``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ekd.data.bins import write_bin
from ekd.data.datasets import write_face_records
from ekd.data.errors import DataError
from ekd.data.images import IMAGE_SIZE, encode_jpeg

GENERATOR_VERSION = 1
VERIFICATION_SETS = ("frontal", "pose", "age")
_TRAIN_SPLIT, _HELDOUT_SPLIT, _PAIR_SPLIT = 0, 1, 2

# Palettes (RGB, 0..255): skin from light to dark, hair colours, iris colours.
_SKIN_LIGHT = np.array([236.0, 204.0, 178.0])
_SKIN_DARK = np.array([92.0, 62.0, 45.0])
_HAIR = np.array(
    [[25, 20, 18], [70, 45, 30], [120, 80, 45], [200, 165, 100], [150, 60, 30], [60, 60, 65]], dtype=np.float64
)
_IRIS = np.array([[60, 40, 25], [90, 60, 30], [60, 90, 130], [70, 110, 70], [40, 40, 40]], dtype=np.float64)


@dataclass(frozen=True)
class SyntheticConfig:
    """Arguments of the generator (stored next to the data as ``synthetic.json``)."""

    identities: int = 200
    images_per_identity: int = 24
    pairs: int = 600
    heldout_identities: int = 100
    seed: int = 0
    difficulty: float = 1.0
    quality: int = 92

    def validate(self) -> None:
        for name in ("identities", "images_per_identity", "pairs", "heldout_identities"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise DataError(f"synthetic config {name}={value!r}: expected a positive integer")
        if self.pairs % 2:
            raise DataError(f"synthetic config pairs={self.pairs}: must be even (half same, half different)")
        if self.heldout_identities < 2:
            raise DataError("synthetic config heldout_identities must be >= 2 to form different-identity pairs")
        if not 0.0 <= self.difficulty <= 3.0:
            raise DataError(f"synthetic config difficulty={self.difficulty}: expected a value in [0, 3]")
        if not 1 <= self.quality <= 100:
            raise DataError(f"synthetic config quality={self.quality}: expected 1..100")


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
        "tex_amp": rng.uniform(0.015, 0.07, 3),
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
    rng: np.random.Generator, profile: str, difficulty: float = 1.0, age: float | None = None,
    base_age: float = 0.3, strong_yaw: bool = False,
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
        "age": float(np.clip(base_age + rng.normal(0.0, q["age_jitter"] * d), 0.0, 1.0)) if age is None else age,
    }
    return {k: np.asarray(v, dtype=np.float64) for k, v in n.items()}


def _stack(rows: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """List of per-image dicts -> dict of float32 tensors (n, ...) shaped to broadcast over n x H x W."""
    out = {}
    for key in rows[0]:
        arr = np.stack([r[key] for r in rows]).astype(np.float32)
        out[key] = torch.from_numpy(arr)
    return out


# --------------------------------------------------------------------------------------------------
# Rendering


def _c(t: torch.Tensor) -> torch.Tensor:
    """(n,) -> (n, 1, 1) for broadcasting over the pixel grid."""
    return t.view(-1, 1, 1)


def _rgb(t: torch.Tensor) -> torch.Tensor:
    """(n, 3) -> (n, 3, 1, 1)."""
    return t.view(-1, 3, 1, 1)


def _soft(inside: torch.Tensor, edge: float = 0.012) -> torch.Tensor:
    """Anti-aliased mask from a signed distance-like value (positive inside), edge in grid units."""
    return torch.sigmoid(inside / edge)


def _ellipse(x, y, cx, cy, rx, ry, angle=None, edge: float = 0.012) -> torch.Tensor:
    rx, ry = torch.as_tensor(rx, dtype=x.dtype), torch.as_tensor(ry, dtype=x.dtype)
    dx, dy = x - cx, y - cy
    if angle is not None:
        ca, sa = torch.cos(angle), torch.sin(angle)
        dx, dy = ca * dx + sa * dy, -sa * dx + ca * dy
    r = torch.sqrt((dx / rx) ** 2 + (dy / ry) ** 2 + 1e-12)
    # (1 - r) * min radius approximates the distance to the border near it.
    return _soft((1.0 - r) * torch.minimum(rx, ry), edge)


def _blend(img: torch.Tensor, mask: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(1)
    return img * (1.0 - m) + color * m


_BLUR_TAPS = [math.exp(-(t**2) / (2 * 1.6**2)) for t in range(-3, 4)]
_BLUR_TAPS = [w / sum(_BLUR_TAPS) for w in _BLUR_TAPS]


def _blur(img: torch.Tensor) -> torch.Tensor:
    """Separable 7-tap Gaussian (sigma 1.6 px) with edge replication, as shifted sums (faster than conv2d
    with a single input channel on CPU)."""
    h, w = img.shape[-2:]
    padded = F.pad(img, (3, 3, 0, 0), mode="replicate")
    out = sum(wt * padded[..., :, i : i + w] for i, wt in enumerate(_BLUR_TAPS))
    padded = F.pad(out, (0, 0, 3, 3), mode="replicate")
    return sum(wt * padded[..., i : i + h, :] for i, wt in enumerate(_BLUR_TAPS))


def render(identity: dict[str, torch.Tensor], nuisance: dict[str, torch.Tensor], noise_seed: int) -> torch.Tensor:
    """Render n images; ``identity`` and ``nuisance`` hold one row per image. Returns uint8 n x 3 x 112 x 112."""
    p, q = identity, nuisance
    n = q["rot"].shape[0]
    s = IMAGE_SIZE
    grid = (torch.arange(s, dtype=torch.float32) + 0.5) / s * 2.0 - 1.0
    gy, gx = torch.meshgrid(grid, grid, indexing="ij")
    gx, gy = gx.expand(n, s, s), gy.expand(n, s, s)

    # Pose-like warp: inverse similarity transform of the sampling grid.
    cr, sr, sc = _c(torch.cos(q["rot"])), _c(torch.sin(q["rot"])), _c(q["scale"])
    ux, uy = gx - _c(q["tx"]), gy - _c(q["ty"])
    x = (cr * ux + sr * uy) / sc
    y = (-sr * ux + cr * uy) / sc
    yaw = _c(q["yaw"])
    age = _c(q["age"])

    # Background: colour plus a linear gradient.
    gradient = _c(q["bg_grad"][:, 0]) * gx + _c(q["bg_grad"][:, 1]) * gy
    img = _rgb(q["bg"]) + gradient.unsqueeze(1)

    # Hair colour greys with age.
    grey = torch.full_like(p["hair"], 175.0)
    hair = p["hair"] + (grey - p["hair"]) * (0.85 * q["age"].clamp(0, 1) ** 1.5).view(-1, 1)

    fw, fh, fcy = _c(p["face_w"]), _c(p["face_h"]), _c(p["face_cy"])
    x_outline = x - 0.06 * yaw * fw
    # Hair behind the face: a larger ellipse cut at the hair length.
    back = _ellipse(x_outline, y, 0, fcy - 0.06, fw + _c(p["hair_volume"]) + 0.04, fh + _c(p["hair_volume"]))
    back = back * _soft(_c(p["hair_length"]) - y, 0.03)
    img = _blend(img, back, _rgb(hair))

    # Face with a narrowing jaw; faint shading towards the border for relief.
    yf = y - fcy
    jaw = 1.0 - _c(p["jaw"]) * (yf / fh).clamp(min=0.0) ** 2
    rx_face = fw * jaw
    r_face = torch.sqrt((x_outline / rx_face) ** 2 + (yf / fh) ** 2 + 1e-12)
    face = _soft((1.0 - r_face) * fw, 0.012)
    xf = x - 0.20 * yaw * fw  # inner features move more than the outline under yaw
    texture = torch.zeros_like(x)
    for i in range(3):
        ang = _c(p["tex_angle"][:, i])
        proj = torch.cos(ang) * xf + torch.sin(ang) * yf
        texture = texture + _c(p["tex_amp"][:, i]) * torch.sin(_c(p["tex_freq"][:, i]) * proj * math.pi + _c(p["tex_phase"][:, i]))
    wrinkles = age**2 * 0.09 * torch.sin(38.0 * yf) * _soft(-(yf + 0.35 * fh), 0.05)
    wrinkles = wrinkles + age**2 * 0.07 * torch.sin(45.0 * (xf.abs() + yf)) * _soft((xf.abs() - 0.25) * (0.2 - yf.abs()), 0.004)
    shade = 1.0 - 0.3 * r_face.clamp(max=1.0) ** 4
    skin_tone = _rgb(p["skin"]) * (1.0 - 0.12 * age.unsqueeze(1)) + 14.0 * age.unsqueeze(1)  # duller, greyer
    face_color = skin_tone * (shade * (1.0 + texture + wrinkles)).unsqueeze(1)
    img = _blend(img, face, face_color)

    # Fringe: hair over the top of the face above a wavy hairline.
    hairline = _c(p["hairline"]) * fh + fcy + _c(p["hair_wave"]) * torch.sin(9.0 * xf + _c(p["hair_phase"]))
    img = _blend(img, face * _soft(hairline - y, 0.015), _rgb(hair))

    # Eyes (sclera, iris, pupil), foreshortened on the far side under yaw; eyebrows above them.
    ey = _c(p["eye_y"]) + fcy
    for side in (-1.0, 1.0):
        cx = side * _c(p["eye_dx"]) - 0.20 * yaw * fw
        foreshort = (1.0 - 0.35 * yaw * side).clamp(0.4, 1.4)
        rx, ry = _c(p["eye_rx"]) * foreshort, _c(p["eye_ry"]) * (1.0 - 0.25 * age)
        tilt = side * _c(p["eye_tilt"])
        sclera = _ellipse(x, y, cx, ey, rx, ry, tilt, 0.006) * face
        img = _blend(img, sclera, torch.tensor([235.0, 232.0, 228.0]).view(1, 3, 1, 1))
        iris_r = _c(p["eye_ry"]) * 0.95
        iris = _ellipse(x, y, cx + 0.15 * yaw * rx, ey, iris_r * foreshort, iris_r, None, 0.006) * sclera
        img = _blend(img, iris, _rgb(p["iris"]))
        pupil = _ellipse(x, y, cx + 0.15 * yaw * rx, ey, iris_r * 0.45 * foreshort, iris_r * 0.45, None, 0.005) * sclera
        img = _blend(img, pupil, torch.full((1, 3, 1, 1), 15.0))
        bx = cx + side * 0.2 * _c(p["brow_len"])
        by = ey - _c(p["brow_gap"]) - _c(p["eye_ry"])
        brow = _ellipse(x, y, bx, by, _c(p["brow_len"]) * foreshort, _c(p["brow_thick"]), side * _c(p["brow_angle"]), 0.008)
        img = _blend(img, brow * face * 0.9, _rgb(hair * 0.8))

    # Nose: a soft shadow along one side and two nostrils; it protrudes, so it moves most under yaw.
    nx = -0.30 * yaw * fw
    nose_tip = ey + _c(p["nose_len"])
    ridge = _ellipse(x, y, nx + 0.5 * _c(p["nose_w"]), ey + 0.55 * _c(p["nose_len"]), 0.35 * _c(p["nose_w"]), 0.5 * _c(p["nose_len"]), None, 0.02)
    img = img * (1.0 - (_c(p["nose_dark"]) * 0.6 * ridge * face).unsqueeze(1))
    for side in (-1.0, 1.0):
        nostril = _ellipse(x, y, nx + side * _c(p["nose_w"]), nose_tip, 0.018, 0.011, None, 0.006)
        img = img * (1.0 - (_c(p["nose_dark"]) * 1.6 * nostril * face).clamp(max=0.8).unsqueeze(1))

    # Mouth: a curved ellipse (smile or frown), lips coloured per identity.
    mx = -0.22 * yaw * fw
    my = fcy + _c(p["mouth_y"])
    xm = (x - mx) / (_c(p["mouth_w"]) * (1.0 - 0.2 * yaw.abs()))
    mouth = _ellipse(x, y - _c(p["mouth_curve"]) * (xm**2), mx, my, _c(p["mouth_w"]) * (1.0 - 0.2 * yaw.abs()), _c(p["mouth_h"]), None, 0.007)
    img = _blend(img, mouth * face, _rgb(p["lips"]))

    # Moles at fixed face positions.
    for i in range(3):
        mole = _ellipse(x, y, _c(p["mole_x"][:, i]) * fw - 0.2 * yaw * fw, _c(p["mole_y"][:, i]) * fh + fcy, 0.016, 0.016, None, 0.006)
        img = _blend(img, mole * face * _c(p["mole_on"][:, i]), _rgb(p["skin"] * 0.45))

    # Illumination: gain, directional light, colour cast.
    la = q["light_angle"]
    direction = _c(torch.cos(la)) * gx + _c(torch.sin(la)) * gy
    light = _c(q["gain"]) * (1.0 + _c(q["light"]) * direction)
    img = img * light.unsqueeze(1) * _rgb(q["cast"])

    # Partial occlusion: a horizontal bar (glasses / scarf) or a block (hand / object).
    bar_w = torch.where(q["occ_kind"] > 0, q["occ_w"], torch.full_like(q["occ_w"], 0.9))
    occ = _soft(_c(bar_w) - (gx - _c(q["occ_x"]) * (q["occ_kind"] > 0).float().view(-1, 1, 1)).abs(), 0.01)
    occ = occ * _soft(_c(q["occ_h"]) - (gy - _c(q["occ_y"])).abs(), 0.01) * _c(q["occ_on"])
    img = _blend(img, occ, _rgb(q["occ_color"]))

    # Blur: mix with a Gaussian-blurred copy (applied twice at full strength).
    blur = q["blur"].clamp(0.0, 2.0)
    once = _blur(img)
    twice = _blur(once)
    w1 = blur.clamp(max=1.0).view(-1, 1, 1, 1)
    w2 = (blur - 1.0).clamp(min=0.0).view(-1, 1, 1, 1)
    img = img * (1.0 - w1) + (once * (1.0 - w2) + twice * w2) * w1

    gen = torch.Generator().manual_seed(int(noise_seed))
    img = img + torch.randn(img.shape, generator=gen) * q["noise"].view(-1, 1, 1, 1)
    return img.round_().clamp_(0.0, 255.0).to(torch.uint8)


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
    rows = [sample_nuisance(rng, "train", difficulty, base_age=float(params["age"])) for _ in range(count)]
    ident = _stack([params] * count)
    return render(ident, _stack(rows), noise_seed=_noise_seed(seed, split, identity))


def _noise_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


def verification_pairs(config: SyntheticConfig, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A held-out verification set: ``(uint8 images 2N x 3 x 112 x 112, bool issame of N)``.

    Pairs alternate same / different; identities come from the held-out pool.
    """
    if kind not in VERIFICATION_SETS:
        raise DataError(f"unknown synthetic verification set {kind!r}; known: {', '.join(VERIFICATION_SETS)}")
    k = VERIFICATION_SETS.index(kind)
    rng = np.random.default_rng([config.seed, _PAIR_SPLIT, k])
    pool = [sample_identity(_identity_rng(config.seed, _HELDOUT_SPLIT, i)) for i in range(config.heldout_identities)]
    ident_rows, nuis_rows, issame = [], [], []
    for pair in range(config.pairs):
        same = pair % 2 == 0
        a = int(rng.integers(config.heldout_identities))
        b = a if same else int((a + rng.integers(1, config.heldout_identities)) % config.heldout_identities)
        for j, ident in enumerate((a, b)):
            base_age = float(pool[ident]["age"])
            if kind == "frontal":
                nuis = sample_nuisance(rng, "frontal", config.difficulty, base_age=base_age)
            elif kind == "pose":
                nuis = sample_nuisance(rng, "profile" if j else "frontal", config.difficulty, base_age=base_age, strong_yaw=j == 1)
            else:  # age: a young and an old rendering, whatever the identity's base age
                age = rng.uniform(0.0, 0.15) if j == 0 else rng.uniform(0.8, 1.0)
                nuis = sample_nuisance(rng, "frontal", config.difficulty, age=age)
            ident_rows.append(pool[ident])
            nuis_rows.append(nuis)
        issame.append(same)
    images = []
    chunk = 128
    for start in range(0, len(ident_rows), chunk):
        images.append(
            render(
                _stack(ident_rows[start : start + chunk]),
                _stack(nuis_rows[start : start + chunk]),
                noise_seed=_noise_seed(config.seed, _PAIR_SPLIT, k, start),
            )
        )
    return torch.cat(images), torch.tensor(issame)


def write_synthetic(
    out: str | os.PathLike, config: SyntheticConfig | None = None, verification_sets: tuple[str, ...] = VERIFICATION_SETS
) -> dict[str, object]:
    """Generate the benchmark into ``out``: train.rec/.idx/property, ``synth_<kind>.bin``, synthetic.json.

    Returns a summary (paths and counts).
    """
    config = config or SyntheticConfig()
    config.validate()
    out = Path(out)
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
        images, issame = verification_pairs(config, kind)
        path = out / f"synth_{kind}.bin"
        write_bin(path, images, issame, image_format="jpeg", quality=config.quality)
        bins[kind] = str(path)
    meta = {"generator_version": GENERATOR_VERSION, **asdict(config), "verification_sets": list(verification_sets)}
    (out / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {"root": str(out), "images": len(payloads), "identities": config.identities, "bins": bins}


def preview_grid(path: str | os.PathLike, identities: int = 6, images: int = 8, seed: int = 0, difficulty: float = 1.0) -> None:
    """Save a PNG grid: one row per identity, ``images`` renderings each (for looking at the data)."""
    from PIL import Image

    rows = [identity_images(seed, i, images, difficulty) for i in range(identities)]
    grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)  # 3 x (rows*112) x (cols*112)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
