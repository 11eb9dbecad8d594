"""What does a pair-set evaluation cost with fresh pairs and with pooled pairs? The study's three
synthetic verification sets in both designs, read (``load_bin``) and scored (``verify_sets``: embedding
with the flip sum, then the 10-fold protocol) by the study's tiny MobileFaceNet, interleaved round by
round on one thread so that both see the same machine.

    python bench/bench_pair_sets.py                 # the study's sets: 1,000 fresh pairs vs 5,000 pooled
    python bench/bench_pair_sets.py --quick         # tiny sets (a smoke test)
    python bench/bench_pair_sets.py --fresh-root A --pooled-root B --backbone runs/x/backbone.pth

The sets are generated into temporary folders unless given (``ekd-data synth``; the fresh design is
the study's benchmark before pooled pairs, the pooled one its current benchmark). The backbone is
randomly initialised unless given: the cost does not depend on the weights. What the pooled design
buys in precision (the pair-sampling noise of the accuracy) is measured on trained students, not here:
BENCHMARKS.md, "Calibration of the study".
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from perf_common import markdown_table, time_interleaved

from ekd.data.bins import load_bin
from ekd.data.synthetic import SyntheticConfig, write_synthetic
from ekd.eval.embed import distinct_images
from ekd.eval.evaluate import verify_sets
from ekd.models import create_backbone
from ekd.models.loading import load_backbone

SETS = ("frontal", "pose", "age")
STUDY = dict(identities=2, images_per_identity=2, difficulty=0.6, age_difficulty=0.4, template_identities=0)
DESIGNS = {
    "fresh (1,000 pairs, 150 identities)": dict(pairs=1000, heldout_identities=150),
    "pooled (5,000 pairs, 250 identities x 5 images)": dict(
        pairs=5000, heldout_identities=250, pair_images=5
    ),
}
QUICK = {
    "fresh (40 pairs)": dict(pairs=40, heldout_identities=10),
    "pooled (60 pairs, 10 identities x 3 images)": dict(pairs=60, heldout_identities=10, pair_images=3),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fresh-root", type=Path, help="a generated benchmark with fresh pairs")
    parser.add_argument("--pooled-root", type=Path, help="a generated benchmark with pooled pairs")
    parser.add_argument(
        "--backbone", type=Path, help="an ekd backbone.pth (default: random tiny MobileFaceNet)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    designs = QUICK if args.quick else DESIGNS
    repeats = 1 if args.quick else args.repeats
    tmp = Path(tempfile.mkdtemp(prefix="ekd-bench-pairs-"))
    roots = {}
    for (name, size), given in zip(designs.items(), (args.fresh_root, args.pooled_root)):
        root = given or tmp / name.split()[0]
        if given is None:
            write_synthetic(root, SyntheticConfig(**STUDY, **size))
        roots[name] = root
    if args.backbone:
        backbone = load_backbone(None, args.backbone)
    else:
        backbone = create_backbone("mobilefacenet", embedding_size=128, width_mult=0.25).eval()

    loaded = {name: {} for name in roots}

    def load(name: str) -> None:
        loaded[name] = {f"synth_{kind}": load_bin(roots[name] / f"synth_{kind}.bin") for kind in SETS}

    def score(name: str) -> None:
        verify_sets(backbone, loaded[name], batch_size=args.batch_size)

    load_times = time_interleaved({name: (lambda n=name: load(n)) for name in roots}, repeats, warmup=0)
    score_times = time_interleaved({name: (lambda n=name: score(n)) for name in roots}, repeats, warmup=1)
    rows = []
    for name in roots:
        sets = loaded[name]
        pairs = sum(int(issame.numel()) for _, issame in sets.values())
        distinct = sum(int(distinct_images(images)[0].numel()) for images, _ in sets.values())
        rows.append([name, pairs, distinct, f"{load_times[name]:.2f}", f"{score_times[name]:.2f}"])
    header = ["design (3 sets)", "pairs", "distinct images embedded", "load_bin (s)", "verify_sets (s)"]
    print(markdown_table(header, rows))
    first, second = list(roots)
    print(
        f"\npooled / fresh: load {load_times[second] / load_times[first]:.2f}x, "
        f"scoring {score_times[second] / score_times[first]:.2f}x the time "
        f"(median of {repeats} interleaved rounds, 1 thread, batch {args.batch_size})"
    )


if __name__ == "__main__":
    main()
