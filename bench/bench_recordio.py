"""RecordIO reader throughput against bare JPEG decoding of the same bytes (images/s on one core).

Measured side by side in one run, interleaved over several rounds (the median is reported) so that
load from other processes hits every variant alike. CPU time of this process is used (wall time is
printed too). Variants:

* decode/<decoder>: decode the JPEG bytes, already in memory, with PIL, torchvision, simplejpeg;
* reader: ``RecordReader.read`` (pread of the record span) + IRHeader unpack + decode (ekd's decoder);
* dataset: ``FaceRecordDataset[(i, flip)]`` with the sampler's keys: reader + decode to a uint8 tensor,
  what a DataLoader worker does (flip and normalisation run per batch on the device since the uint8 data
  path, ``ekd.data.batch.normalise_batch``);
* dataset + host float (before): the same item followed by the former host path, mirror + float32
  normalisation (``ekd.data.images.normalize``), for comparison.

The reader overhead is ``reader / decode(same decoder) - 1``; the target is <= 10 %. The item cost is
``dataset / decode(same decoder)``, per round (median, min-max over rounds); the target is <= 1.15.

    python bench/bench_recordio.py [--root DIR_WITH_train.rec] [--images 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ekd.data.datasets import FaceRecordDataset
from ekd.data.images import decode_image, decoder_name, normalize
from ekd.data.recordio import RecordReader, unpack_payload


def _decoders() -> dict:
    decoders = {"pil": lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))}
    try:
        from torchvision.io import decode_jpeg

        decoders["torchvision"] = lambda b: decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8))
    except ImportError:
        pass
    try:
        import simplejpeg

        decoders["simplejpeg"] = lambda b: simplejpeg.decode_jpeg(b, colorspace="RGB")
    except ImportError:
        pass
    return decoders


def _timed(fn, items) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for item in items:
        fn(item)
    return time.process_time() - cpu, time.perf_counter() - wall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", default=None, help="folder with train.rec/.idx (default: generate synthetic)"
    )
    parser.add_argument("--images", type=int, default=2000, help="records read per variant and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    tmp = None
    root = args.root
    if root is None:
        from ekd.data.synthetic import SyntheticConfig, write_synthetic

        tmp = tempfile.TemporaryDirectory()
        root = tmp.name
        ids = max(1, args.images // 20)
        config = SyntheticConfig(
            identities=ids, images_per_identity=20, pairs=2, heldout_identities=2, template_identities=0
        )
        write_synthetic(root, config, verification_sets=())
    reader = RecordReader(Path(root) / "train.rec")
    dataset = FaceRecordDataset(root, flip=True)
    order = np.random.default_rng(0).permutation(len(dataset))[: args.images]
    keys = [int(dataset.keys[i]) for i in order]
    jpegs = [unpack_payload(reader.read(k))[1] for k in keys]
    mean_bytes = statistics.mean(len(j) for j in jpegs)

    variants = {f"decode/{name}": (fn, jpegs) for name, fn in _decoders().items()}
    variants["decode/ekd"] = (decode_image, jpegs)
    variants["reader"] = (lambda k: decode_image(unpack_payload(reader.read(k))[1]), keys)
    variants["reader (bytes only)"] = (reader.read, keys)
    # the sampler's (index, flip) keys, half of them flipped
    sample_keys = [(int(i), bool(j % 2)) for j, i in enumerate(order)]
    variants["dataset"] = (dataset.__getitem__, sample_keys)

    def host_float(key: tuple[int, bool]) -> torch.Tensor:
        return normalize(dataset[key][0], flip=key[1])

    variants["dataset + host float (before)"] = (host_float, sample_keys)
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    for fn, items in variants.values():  # warm-up (page cache, lazy init)
        _timed(fn, items[:50])
    for _ in range(args.rounds):
        for name, (fn, items) in variants.items():
            c, w = _timed(fn, items)
            cpu[name].append(c)
            wall[name].append(w)

    n = len(keys)
    rate = {name: n / statistics.median(times) for name, times in cpu.items()}
    print(f"{n} records of {root} (mean JPEG {mean_bytes / 1024:.1f} KiB, 112x112), {args.rounds} rounds, "
          f"1 thread; ekd decoder: {decoder_name()}")  # fmt: skip
    print("| variant | images/s (CPU time) | images/s (wall) |")
    print("|---|---:|---:|")
    for name in variants:
        print(f"| {name} | {rate[name]:,.0f} | {n / statistics.median(wall[name]):,.0f} |")
    base = rate["decode/ekd"]
    print(f"\nreader overhead over bare decoding (same decoder): {base / rate['reader'] - 1:+.1%}")
    for name in ("dataset", "dataset + host float (before)"):
        ratios = sorted(c / d for c, d in zip(cpu[name], cpu["decode/ekd"]))
        print(
            f"{name} item cost / bare decode (same decoder, per round): "
            f"median {statistics.median(ratios):.3f}, min {ratios[0]:.3f}, max {ratios[-1]:.3f} "
            "(target for the dataset item: <= 1.15)"
        )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
