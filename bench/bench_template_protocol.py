"""Cost of the synthetic template set (``synth_ijb``) in a run's final evaluation, side by side with the
pair sets, for the tiny synthetic networks.

Per network (random weights: the cost does not depend on them), in one process, interleaved round by
round on the same data:

* ``pair sets``: what every synthetic run already evaluates: embed (flip sum) and verify the three
  ``synth_*.bin`` sets (``ekd.eval.evaluate_backbone``; demo size: 300 pairs each, 1,800 images);
* ``template set``: embed and score ``synth_ijb.npz`` (``ekd.eval.templates.evaluate_templates``, its
  default protocol: the image only, one forward pass per image, as TFace; default size: 1,500
  templates of 4,500 images, 1,121,250 impostor comparisons);
* ``scoring only``: the same set's scoring from ready image features (embedding excluded): template
  pooling, the chunked all-vs-all products, top-k impostor scores, ROC top and the TPR readings.

    python bench/bench_template_protocol.py [--root SYNTH] [--rounds 3] [--threads 1] [--quick]
                                            [--scale 1500,6000,15000]

``--root`` takes a generated benchmark (``ekd-data synth``) holding ``synth_*.bin`` and ``synth_ijb.npz``;
without it the demo-size pair sets (``experiments/synthetic/_recipe.yaml``: 300 pairs from 60 held-out
identities) and the default template set are generated into a temporary folder first (not timed).
``--quick``: tiny sizes, one round (a check that the script runs). ``--scale T1,T2,...``: also time the
scoring alone of T random 128-d template features (5 per subject), with the peak of the process's
resident memory, to show that it grows with T x block, not T x T.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ekd.data.bins import load_bin, write_bin
from ekd.data.synthetic import (
    TEMPLATE_SET,
    VERIFICATION_SETS,
    SyntheticConfig,
    verification_pairs,
    write_template_set_file,
)
from ekd.data.templates import read_template_set
from ekd.eval import evaluate_backbone
from ekd.eval.templates import (
    TemplateProtocol,
    evaluate_templates,
    image_features,
    score_templates,
    template_set_features,
)
from ekd.models import create_backbone

# the synthetic networks: (label, registry name, options), as conf/student/tiny_*.yaml build them (the
# ResNet18 student and the teacher are the same network: insightface's iresnet18 at 1/8 width)
NETWORKS = [
    ("MobileFaceNet x0.25 (student)", "mobilefacenet", {"width_mult": 0.25}),
    ("IResNet18 /8 (ResNet18 student, teacher)", "iresnet18", {"base_width": 8, "dropout": 0.0}),
]


def generate(root: Path, quick: bool) -> None:
    if quick:
        config = SyntheticConfig(
            pairs=20,
            heldout_identities=6,
            template_identities=20,
            templates_per_identity=3,
            images_per_template=2,
        )
    else:  # the demo's pair sets, the default template set
        config = SyntheticConfig(pairs=300, heldout_identities=60)
    for kind in VERIFICATION_SETS:
        images, issame = verification_pairs(config, kind)
        write_bin(root / f"synth_{kind}.bin", images, issame, quality=config.quality)
    write_template_set_file(config, root / f"{TEMPLATE_SET}.npz")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--root", default=None, help="a generated synthetic benchmark (default: generate one)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128, help="eval.batch_size of the runs (128)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--scale", default=None, help="comma-separated template counts to score (random)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rounds = 1 if args.quick else args.rounds
    networks = NETWORKS[:1] if args.quick else NETWORKS

    with tempfile.TemporaryDirectory(prefix="ekd-bench-templates-") as tmp:
        root = Path(args.root) if args.root else Path(tmp)
        if not args.root:
            seconds, _ = timed(lambda: generate(root, args.quick))
            print(f"generated pair sets and template set into {root} in {seconds:.1f} s")
        pair_sets = {f"synth_{kind}": load_bin(root / f"synth_{kind}.bin") for kind in VERIFICATION_SETS}
        tset = read_template_set(root / f"{TEMPLATE_SET}.npz")
        genuine, impostors = tset.pair_counts()
        images = sum(int(images.shape[0]) for images, _ in pair_sets.values())
        print(
            f"pair sets: {images} images; template set: {len(tset)} images, {tset.num_templates} templates, "
            f"{genuine} genuine, {impostors} impostor comparisons"
        )
        protocol = TemplateProtocol()
        models = {}
        features = {}
        for label, name, options in networks:
            torch.manual_seed(0)
            models[label] = create_backbone(name, embedding_size=128, **options).eval()
            features[label] = image_features(models[label], tset, args.batch_size, protocol.flip_mode)
        times: dict[str, dict[str, list[float]]] = {label: {} for label, _, _ in networks}
        tprs: dict[str, dict] = {}
        for _ in range(rounds):
            for label, model in models.items():
                row = times[label]
                seconds, _ = timed(
                    lambda model=model: evaluate_backbone(model, pair_sets, args.batch_size, 200)
                )
                row.setdefault("pairs", []).append(seconds)
                seconds, result = timed(
                    lambda model=model: evaluate_templates(model, tset, args.batch_size, protocol)
                )
                row.setdefault("templates", []).append(seconds)
                tprs[label] = result.to_dict()

                def score(label=label):
                    pooled, subjects = template_set_features(tset, features[label])
                    return score_templates(pooled, subjects, protocol)

                seconds, _ = timed(score)
                row.setdefault("scoring", []).append(seconds)

    print(
        f"\nMedian of {rounds} round(s), {args.threads} thread(s), eval batch {args.batch_size}, "
        f"{platform.machine()}, torch {torch.__version__}, numpy {np.__version__}\n"
    )
    print("| network | pair sets: embed + verify (s) | template set: embed + score (s) | ratio | "
          "template set: scoring only (s) |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, row in times.items():
        pairs, templates, scoring = (statistics.median(row[k]) for k in ("pairs", "templates", "scoring"))
        print(f"| {label} | {pairs:.2f} | {templates:.2f} | {templates / pairs:.2f}x | {scoring:.3f} |")
    print()
    for label, record in tprs.items():
        cells = ", ".join(
            f"{k}: {'-' if v is None else f'{100 * v:.2f} %'} ({record['false_accepts'][k]} FA)"
            for k, v in record["tpr_at_fpr"].items()
        )
        print(f"{label} (random weights): TPR {cells}")
    if args.scale:
        scale([int(t) for t in args.scale.split(",")], rounds)
    return 0


def scale(counts: list[int], rounds: int) -> None:
    import tracemalloc

    print("\n| templates | comparisons | impostor scores kept | scoring (s) | scoring peak memory (MiB) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for count in counts:
        rng = np.random.default_rng(0)
        subjects = np.arange(count) // 5
        feats = rng.standard_normal((count // 5 + 1, 128))[subjects] + rng.standard_normal((count, 128))
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        seconds = []
        for _ in range(rounds):
            took, result = timed(lambda feats=feats, subjects=subjects: score_templates(feats, subjects))
            seconds.append(took)
        tracemalloc.start()  # numpy reports its allocations to tracemalloc
        score_templates(feats, subjects)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        pairs = count * (count - 1) // 2
        kept, median = result.kept_impostor_scores, statistics.median(seconds)
        print(f"| {count} | {pairs} | {kept} | {median:.2f} | {peak:.0f} |")


if __name__ == "__main__":
    raise SystemExit(main())
