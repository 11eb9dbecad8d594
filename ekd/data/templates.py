"""Template sets for IJB-style 1:1 verification: the ``ekd-templates/1`` file format (``<name>.npz``).

A template set is a list of face images (aligned 112 x 112 RGB, JPEG encoded), each belonging to one
*template*, each template to one *subject* (identity), as in IJB-B/C. There is no pair list: a
template set is scored all-vs-all (every unordered pair of templates; same subject = genuine, other
subject = impostor; ``ekd.eval.templates``), so ``T`` templates give ``T (T - 1) / 2`` comparisons.

No public format fits that (IJB's meta files need loose crops, landmarks and an explicit pair list,
insightface's ``.bin`` holds pairs), so the file is a plain numpy ``.npz`` archive, readable without
ekd and without pickle (``np.load(path, allow_pickle=False)``), with these keys:

===========  =========================  ============================================================
key          dtype, shape               meaning
===========  =========================  ============================================================
format       str, ()                    ``"ekd-templates/1"``
jpeg         uint8, (B,)                the encoded images, concatenated (JPEG, as in insightface's
                                        ``.bin`` files; any format PIL reads is accepted)
offsets      int64, (N + 1,)            image i is ``jpeg[offsets[i]:offsets[i + 1]]``; offsets[0] = 0,
                                        non-decreasing, offsets[N] = B
template     int64, (N,)                template id of each image (any integers)
subject      int64, (N,)                subject id of each image; every image of a template has the
                                        template's subject
media        int64, (N,), optional      media id of each image (IJB: the video or photo it came from);
                                        absent: every image is its own media
yaw, age     float32, (N,), optional    nuisance of each rendered image (synthetic sets; informational)
===========  =========================  ============================================================

:func:`write_template_set` writes one (atomically: temporary file + rename) and
:func:`read_template_set` reads and checks one: a missing file, an archive that is not an ``.npz``, a
missing key or one of the wrong dtype / shape, inconsistent offsets or a template spanning two subjects
is a :class:`TemplateSetError` naming the file and the key. Images are decoded on demand
(:meth:`TemplateSet.images`), a range at a time, so that the decoded set never has to fit in memory.
:func:`find_template_sets` lists the template sets of a folder (``*.npz`` files of this format).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ekd.data.errors import DataError
from ekd.data.images import IMAGE_SIZE, decode_image, fit_to_size

TEMPLATE_FORMAT = "ekd-templates/1"
TEMPLATE_SUFFIX = ".npz"
_REQUIRED = ("format", "jpeg", "offsets", "template", "subject")
_OPTIONAL_INT = ("media",)
_OPTIONAL_FLOAT = ("yaw", "age")


class TemplateSetError(DataError):
    """A missing or malformed template set file (``ekd-templates/1``)."""


@dataclass
class TemplateSet:
    """A template set read by :func:`read_template_set` (module docstring); images decoded on demand."""

    path: Path
    jpeg: np.ndarray = field(repr=False)
    offsets: np.ndarray = field(repr=False)
    templates: np.ndarray = field(repr=False)
    subjects: np.ndarray = field(repr=False)
    medias: np.ndarray = field(repr=False)
    extras: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        """The set's name: the file name without ``.npz`` (``synth_ijb``)."""
        return (
            self.path.name[: -len(TEMPLATE_SUFFIX)]
            if self.path.name.endswith(TEMPLATE_SUFFIX)
            else self.path.name
        )

    def __len__(self) -> int:
        return int(self.templates.size)

    @property
    def num_templates(self) -> int:
        return int(np.unique(self.templates).size)

    @property
    def num_subjects(self) -> int:
        return int(np.unique(self.subjects).size)

    def template_subjects(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted unique template ids, the subject of each): the order of
        ``ekd.eval.ijb.template_features``."""
        unique, first = np.unique(self.templates, return_index=True)
        return unique, self.subjects[first]

    def pair_counts(self) -> tuple[int, int]:
        """(genuine, impostor) template comparisons of the all-vs-all protocol."""
        _, subjects = self.template_subjects()
        return pair_counts(subjects)

    def images(self, start: int = 0, stop: int | None = None, image_size: int = IMAGE_SIZE) -> torch.Tensor:
        """Images ``start:stop`` decoded: uint8 n x 3 x S x S RGB (other sizes resized and centre-cropped)."""
        stop = len(self) if stop is None else min(stop, len(self))
        out = torch.empty((max(stop - start, 0), 3, image_size, image_size), dtype=torch.uint8)
        for row, i in enumerate(range(start, stop)):
            data = self.jpeg[self.offsets[i] : self.offsets[i + 1]].tobytes()
            try:
                image = decode_image(data, f"{self.path} image {i}")
            except DataError as err:
                raise TemplateSetError(str(err)) from None
            out[row] = fit_to_size(image, image_size)
        return out


def pair_counts(template_subjects: np.ndarray) -> tuple[int, int]:
    """(genuine, impostor) unordered template pairs given the subject of each template."""
    _, per_subject = np.unique(np.asarray(template_subjects), return_counts=True)
    total = int(template_subjects.size) * (int(template_subjects.size) - 1) // 2
    genuine = int(sum(int(c) * (int(c) - 1) // 2 for c in per_subject))
    return genuine, total - genuine


def write_template_set(
    path: str | os.PathLike,
    payloads: Sequence[bytes],
    templates: Sequence[int] | np.ndarray,
    subjects: Sequence[int] | np.ndarray,
    medias: Sequence[int] | np.ndarray | None = None,
    extras: dict[str, Sequence[float] | np.ndarray] | None = None,
) -> Path:
    """Write encoded images ``payloads`` with their template and subject ids as ``path`` (``.npz``).

    ``extras``: optional float per-image arrays (``yaw``, ``age``). ValueError for inconsistent lengths,
    unknown extras or a template spanning two subjects.
    """
    path = Path(path)
    if not path.name.endswith(TEMPLATE_SUFFIX):
        raise ValueError(f"write_template_set: {path} must end in {TEMPLATE_SUFFIX}")
    n = len(payloads)
    arrays: dict[str, np.ndarray] = {
        "format": np.array(TEMPLATE_FORMAT),
        "jpeg": np.frombuffer(b"".join(bytes(p) for p in payloads), dtype=np.uint8),
        "offsets": np.concatenate([[0], np.cumsum([len(p) for p in payloads])]).astype(np.int64),
        "template": np.asarray(templates, dtype=np.int64),
        "subject": np.asarray(subjects, dtype=np.int64),
    }
    if medias is not None:
        arrays["media"] = np.asarray(medias, dtype=np.int64)
    for key, values in (extras or {}).items():
        if key not in _OPTIONAL_FLOAT:
            raise ValueError(
                f"write_template_set: unknown extra {key!r}; known: {', '.join(_OPTIONAL_FLOAT)}"
            )
        arrays[key] = np.asarray(values, dtype=np.float32)
    for key in ("template", "subject", *_OPTIONAL_INT, *_OPTIONAL_FLOAT):
        if key in arrays and arrays[key].shape != (n,):
            raise ValueError(f"write_template_set: {key} has shape {arrays[key].shape}, expected ({n},)")
    _check_subjects(arrays["template"], arrays["subject"], f"write_template_set({path})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, path)
    return path


def _check_subjects(templates: np.ndarray, subjects: np.ndarray, where: str) -> None:
    unique, inverse = np.unique(templates, return_inverse=True)
    first = np.full(unique.size, -1, dtype=np.int64)
    first[inverse[::-1]] = np.arange(templates.size)[::-1]  # first image of each template
    bad = np.flatnonzero(subjects != subjects[first[inverse]])
    if bad.size:
        i = int(bad[0])
        other = int(subjects[first[inverse[i]]])
        raise TemplateSetError(
            f"{where}: template {int(templates[i])} spans two subjects ({other} and {int(subjects[i])}, "
            f"image {i}); every image of a template must have its subject"
        )


def read_template_set(path: str | os.PathLike) -> TemplateSet:
    """Read and check a template set file (module docstring); TemplateSetError naming file and key."""
    path = Path(path)
    if not path.is_file():
        raise TemplateSetError(f"{path}: template set file not found")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise TemplateSetError(
            f"{path}: not a template set (.npz archive of {TEMPLATE_FORMAT}): {err}"
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise TemplateSetError(f"{path}: not a template set: a single .npy array, expected an .npz archive")
    with archive:
        keys = set(archive.files)
        missing = [key for key in _REQUIRED if key not in keys]
        if missing:
            raise TemplateSetError(
                f"{path}: template set lacks key{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"(format {TEMPLATE_FORMAT} has {', '.join(_REQUIRED)}; it holds "
                f"{', '.join(sorted(keys)) or 'no key'})"
            )

        def load(key: str) -> np.ndarray:
            try:
                return archive[key]
            except (OSError, ValueError, zipfile.BadZipFile) as err:
                raise TemplateSetError(f"{path}: key {key!r} cannot be read: {err}") from None

        fmt = load("format")
        if fmt.shape != () or str(fmt) != TEMPLATE_FORMAT:
            raise TemplateSetError(f"{path}: key 'format' is {fmt!r}, expected {TEMPLATE_FORMAT!r}")
        arrays = {key: load(key) for key in (*_REQUIRED[1:], *_OPTIONAL_INT, *_OPTIONAL_FLOAT) if key in keys}

    def check(key: str, kinds: str, shape: tuple[int, ...]) -> np.ndarray:
        value = arrays[key]
        if value.dtype.kind not in kinds or value.shape != shape:
            want = {"u": "uint8", "iu": "integer", "f": "float"}[kinds]
            raise TemplateSetError(
                f"{path}: key {key!r} is {value.dtype} of shape {value.shape}, expected {want} of shape "
                f"{shape}"
            )
        return value

    jpeg = arrays["jpeg"]
    if jpeg.dtype != np.uint8 or jpeg.ndim != 1:
        raise TemplateSetError(
            f"{path}: key 'jpeg' is {jpeg.dtype} of shape {jpeg.shape}, expected 1-D uint8"
        )
    templates = arrays["template"]
    if templates.ndim != 1 or templates.dtype.kind not in "iu":
        raise TemplateSetError(
            f"{path}: key 'template' is {templates.dtype} of shape {templates.shape}, expected 1-D integer"
        )
    n = templates.size
    if n == 0:
        raise TemplateSetError(f"{path}: key 'template' is empty: the set holds no image")
    offsets = check("offsets", "iu", (n + 1,)).astype(np.int64)
    if offsets[0] != 0 or offsets[-1] != jpeg.size or np.any(np.diff(offsets) < 0):
        raise TemplateSetError(
            f"{path}: key 'offsets' must rise from 0 to the length of 'jpeg' ({jpeg.size}); got "
            f"{offsets[0]} ... {offsets[-1]}" + (" and a decrease" if np.any(np.diff(offsets) < 0) else "")
        )
    subjects = check("subject", "iu", (n,)).astype(np.int64)
    medias = (
        check("media", "iu", (n,)).astype(np.int64) if "media" in arrays else np.arange(n, dtype=np.int64)
    )
    extras = {key: check(key, "f", (n,)) for key in _OPTIONAL_FLOAT if key in arrays}
    templates = templates.astype(np.int64)
    _check_subjects(templates, subjects, str(path))
    return TemplateSet(path, jpeg, offsets, templates, subjects, medias, extras)


def is_template_set(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ``.npz`` file whose ``format`` key names this format (nothing else is read)."""
    path = Path(path)
    if not (path.is_file() and path.name.endswith(TEMPLATE_SUFFIX)):
        return False
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile):
        return False
    if not isinstance(archive, np.lib.npyio.NpzFile):
        return False
    with archive:
        try:
            return "format" in archive.files and str(archive["format"]).startswith("ekd-templates/")
        except (OSError, ValueError, zipfile.BadZipFile):
            return False


def find_template_sets(root: str | os.PathLike | None) -> dict[str, Path]:
    """Name -> path of the template sets in folder ``root`` (``*.npz`` files of this format), by name."""
    if root is None or not Path(root).is_dir():
        return {}
    found = sorted(p for p in Path(root).iterdir() if p.name.endswith(TEMPLATE_SUFFIX) and is_template_set(p))
    return {p.name[: -len(TEMPLATE_SUFFIX)]: p for p in found}
