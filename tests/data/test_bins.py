"""insightface .bin verification sets: round trips, Python 2 pickles, known-set counts, bad input."""

from __future__ import annotations

import pickle
import struct
import warnings

import numpy as np
import pytest
import torch

from ekd.data.bins import KNOWN_BIN_SETS, load_bin, write_bin
from ekd.data.errors import BinFormatError
from ekd.data.images import encode_png


def _pairs(n_pairs: int = 3, size: int = 112, seed: int = 0) -> tuple[torch.Tensor, list[bool]]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2 * n_pairs, 3, size, size), generator=g, dtype=torch.uint8)
    return images, [i % 2 == 0 for i in range(n_pairs)]


def test_known_sets_registry():
    assert KNOWN_BIN_SETS == {
        "lfw": 6000, "cfp_fp": 7000, "cfp_ff": 7000, "agedb_30": 6000,
        "calfw": 6000, "cplfw": 6000, "vgg2_fp": 5000,
    }  # fmt: skip


@pytest.mark.parametrize("buffer_kind", ["bytes", "array"])
def test_png_round_trip_is_exact(tmp_path, buffer_kind):
    images, issame = _pairs()
    path = tmp_path / "set.bin"
    write_bin(path, images, issame, image_format="png", buffer_kind=buffer_kind)
    with open(path, "rb") as f:
        bins, flags = pickle.load(f)
    assert len(bins) == 6 and flags == issame
    assert all(isinstance(b, bytes if buffer_kind == "bytes" else np.ndarray) for b in bins)
    loaded, loaded_same = load_bin(path)
    assert loaded.dtype == torch.uint8 and loaded.shape == (6, 3, 112, 112)
    assert torch.equal(loaded, images)
    assert loaded_same.dtype == torch.bool and loaded_same.tolist() == issame


def test_jpeg_round_trip_is_close(tmp_path):
    images = torch.full((4, 3, 112, 112), 90, dtype=torch.uint8)
    images[:, 0] = 200  # flat colours survive JPEG almost exactly
    write_bin(tmp_path / "j.bin", images, [True, False])
    loaded, _ = load_bin(tmp_path / "j.bin")
    assert (loaded.int() - images.int()).abs().max() <= 3


def test_resized_when_not_112(tmp_path):
    images, issame = _pairs(2, size=128)
    write_bin(tmp_path / "big.bin", images, issame, image_format="png")
    loaded, _ = load_bin(tmp_path / "big.bin")
    assert loaded.shape == (4, 3, 112, 112)


def _py2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """A protocol-2 pickle as Python 2 writes it: images as BINSTRING (py2 str), not bytes."""
    out = [b"\x80\x02", b"]", b"("]
    for data in bins:
        out.append(b"T" + struct.pack("<I", len(data)) + data)
    out += [b"e", b"]", b"("]
    out += [b"\x88" if s else b"\x89" for s in issame]
    out += [b"e", b"\x86", b"."]
    return b"".join(out)


def test_python2_pickle_needs_bytes_encoding(tmp_path):
    images, issame = _pairs(2)
    payloads = [encode_png(im) for im in images]
    path = tmp_path / "py2.bin"
    path.write_bytes(_py2_pickle(payloads, issame))
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(path.read_bytes())  # what a naive reader hits
    loaded, loaded_same = load_bin(path)
    assert torch.equal(loaded, images) and loaded_same.tolist() == issame


def test_decoded_arrays_are_accepted(tmp_path):
    images, issame = _pairs(1)
    bins = [im.permute(1, 2, 0).numpy().copy() for im in images]  # H x W x 3 uint8
    path = tmp_path / "decoded.bin"
    path.write_bytes(pickle.dumps((bins, issame)))
    assert torch.equal(load_bin(path)[0], images)


def test_known_name_with_other_count_warns(tmp_path):
    images, issame = _pairs(2)
    write_bin(tmp_path / "lfw.bin", images, issame, image_format="png")
    with pytest.warns(UserWarning, match=r"lfw verification set has 6000 pairs, this file has 2"):
        load_bin(tmp_path / "lfw.bin")
    write_bin(tmp_path / "mine.bin", images, issame, image_format="png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_bin(tmp_path / "mine.bin")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"definitely not a pickle", r"bad\.bin: not a pickled \(bins, issame_list\)"),
        (pickle.dumps({"bins": []}), r"bad\.bin: expected a pickled pair \(bins, issame_list\), got dict"),
        (pickle.dumps(([b"a"] * 3, [True, False])), r"bad\.bin: 3 images for 2 pairs"),
        (pickle.dumps(([b"\xff\xd8junk", b"x"], [True])), r"bad\.bin image 0: cannot decode"),
        (pickle.dumps(([7, 8], [True])), r"bad\.bin image 0: unsupported entry int"),
        (pickle.dumps(([b"", b""], ["yes"])), r"issame_list must be a flat list of booleans"),
    ],
)
def test_malformed_bin(tmp_path, content, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    with pytest.raises(BinFormatError, match=message):
        load_bin(path)


def test_missing_bin_and_bad_write_arguments(tmp_path):
    with pytest.raises(BinFormatError, match="not found"):
        load_bin(tmp_path / "none.bin")
    images, issame = _pairs(1)
    with pytest.raises(ValueError, match="2 images for 2 pairs"):
        write_bin(tmp_path / "w.bin", images, [True, False])
    with pytest.raises(ValueError, match="image_format 'gif'"):
        write_bin(tmp_path / "w.bin", images, issame, image_format="gif")


def test_an_image_in_several_pairs_is_stored_once_per_slot_and_decoded_once(tmp_path, monkeypatch):
    distinct, _ = _pairs(2)  # 4 distinct images
    slots = [0, 1, 2, 0, 3, 1]  # 3 pairs reusing images 0 and 1
    path = tmp_path / "pooled.bin"
    write_bin(path, distinct, [True, False, True], image_format="png", index=slots)
    bins, issame = pickle.loads(path.read_bytes())
    assert len(bins) == 6 and issame == [True, False, True]
    assert bins[0] == bins[3] and bins[1] == bins[5] and bins[0] != bins[1]

    from ekd.data import bins as bins_module

    decoded = []
    real_decode = bins_module._decode_entry
    monkeypatch.setattr(bins_module, "_decode_entry", lambda *a: decoded.append(a[2]) or real_decode(*a))
    images, _ = load_bin(path)
    assert decoded == [0, 1, 2, 4]  # the repeated bytes were not decoded again
    assert torch.equal(images, distinct[slots])  # PNG: exact


def test_write_bin_refuses_a_bad_index(tmp_path):
    distinct, _ = _pairs(1)
    with pytest.raises(ValueError, match=r"index must hold integer positions in \[0, 2\)"):
        write_bin(tmp_path / "x.bin", distinct, [True], index=[0, 2])
    with pytest.raises(ValueError, match="3 images for 1 pairs"):
        write_bin(tmp_path / "x.bin", distinct, [True], index=[0, 1, 1])
