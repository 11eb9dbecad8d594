"""``ekd-data``: build and repair face data files.

Sub-commands::

    ekd-data pack FOLDER OUT        # identity image folder -> insightface train.rec/.idx/property
    ekd-data synth OUT --identities 200 --images-per-identity 24 --seed 0
                                    # synthetic benchmark: train.rec/.idx/property + synth_*.bin
    ekd-data reindex PATH.rec       # rebuild a missing or broken .idx by scanning the records
    ekd-data info PATH              # summary of a RecordIO folder / .rec or a verification .bin

Bad input ends with a one-line ``error: ...`` naming the file and record, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ekd.data.errors import DataError

# Usage examples shown at the end of each --help (RawDescriptionHelpFormatter keeps their lines).
_EXAMPLES = {
    "ekd-data": """examples:
  ekd-data pack faces/ data/mydata        # identity image folder -> insightface train.rec/.idx/property
  ekd-data synth data/synth --identities 20 --images-per-identity 8
  ekd-data reindex data/mydata/train.rec  # rebuild a missing or broken train.idx
  ekd-data info data/mydata               # images, classes, images per class

Run `ekd-data COMMAND --help` for the options of a command.""",
    "pack": """example:
  ekd-data pack faces/ data/mydata
  ekd-train data=folder data.source=rec data.root=data/mydata ...   # train on the packed folder

faces/ holds one sub-folder of images per identity (alice/001.jpg, alice/002.jpg, bob/001.jpg, ...);
the sorted folder names give the labels 0, 1, ...""",
    "synth": """example:
  ekd-data synth data/synth --identities 20 --images-per-identity 8 --pairs 100 --seed 1
  ekd-train experiment=synthetic/teacher data.root=data/synth data.synthetic=null

OUT must be missing, empty or hold an earlier generated benchmark (which is replaced). The arguments are
recorded in OUT/synthetic.json; a synthetic data source pointed at OUT (data.source=synthetic
data.root=OUT) uses them, and refuses a data.synthetic config that differs from them.""",
    "reindex": """example:
  ekd-data reindex data/mydata/train.rec                    # writes data/mydata/train.idx
  ekd-data reindex data/mydata/train.rec --idx /tmp/train.idx""",
    "info": """examples:
  ekd-data info data/mydata            # a folder with train.rec/.idx/property (or data/mydata/train.rec)
  ekd-data info data/synth/synth_pose.bin""",
}


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="ekd-data",
        description="Build and repair face data files.",
        epilog=_EXAMPLES["ekd-data"],
        formatter_class=formatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=summary, description=summary[0].upper() + summary[1:] + ".", epilog=_EXAMPLES[name],
            formatter_class=formatter,
        )  # fmt: skip

    pack = add("pack", "pack an identity image folder into insightface train.rec/.idx/property")
    pack.add_argument(
        "folder", help="folder with one sub-folder of images per identity (sorted names -> labels)"
    )
    pack.add_argument("out", help="output folder")
    pack.add_argument(
        "--quality", type=int, default=95, help="JPEG quality for re-encoded images (default 95)"
    )

    synth = add("synth", "generate the synthetic identity benchmark")
    synth.add_argument("out", help="output folder (missing, empty, or an earlier generated benchmark)")
    synth.add_argument("--identities", type=int, default=200, help="training identities (default 200)")
    synth.add_argument("--images-per-identity", type=int, default=24, help="images per identity (default 24)")
    synth.add_argument("--pairs", type=int, default=600, help="pairs per verification set (default 600)")
    synth.add_argument(
        "--heldout-identities", type=int, default=100, help="identities of the pairs (default 100)"
    )
    synth.add_argument("--difficulty", type=float, default=1.0, help="nuisance strength, 0..3 (default 1)")
    synth.add_argument(
        "--age-difficulty",
        type=float,
        default=1.0,
        help="age gap of synth_age's pairs, 0..1 (default 1: young 0-0.15 vs old 0.65-0.9)",
    )
    synth.add_argument("--quality", type=int, default=92, help="JPEG quality (default 92)")
    synth.add_argument(
        "--pair-images",
        type=int,
        default=0,
        help="images per held-out identity and pair side, from which the pairs are drawn (each image in "
        "several pairs, as in LFW; default 0: two fresh images for every pair)",
    )
    synth.add_argument(
        "--template-identities",
        type=int,
        default=300,
        help="identities of the synth_ijb template set (default 300; 0: no template set)",
    )
    synth.add_argument(
        "--templates-per-identity", type=int, default=5, help="templates per identity (default 5)"
    )
    synth.add_argument("--images-per-template", type=int, default=3, help="images per template (default 3)")
    synth.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    synth.add_argument("--preview", default=None, help="also save a PNG grid of a few identities here")

    reindex = add("reindex", "rebuild the .idx of a .rec file by scanning it")
    reindex.add_argument("rec", help="path of the .rec file")
    reindex.add_argument("--idx", default=None, help="output .idx (default: next to the .rec)")

    info = add("info", "summarise a RecordIO folder / .rec file or a .bin verification set")
    info.add_argument("path")
    return parser


def _pack(args: argparse.Namespace) -> None:
    from ekd.data.datasets import pack_folder

    start = time.perf_counter()
    images, classes = pack_folder(args.folder, args.out, quality=args.quality)
    print(
        f"packed {images} images of {classes} identities into {args.out} "
        f"({time.perf_counter() - start:.1f} s)"
    )


def _synth(args: argparse.Namespace) -> None:
    from ekd.data.synthetic import SyntheticConfig, preview_grid, write_synthetic

    config = SyntheticConfig(
        identities=args.identities,
        images_per_identity=args.images_per_identity,
        pairs=args.pairs,
        heldout_identities=args.heldout_identities,
        seed=args.seed,
        difficulty=args.difficulty,
        age_difficulty=args.age_difficulty,
        pair_images=args.pair_images,
        quality=args.quality,
        template_identities=args.template_identities,
        templates_per_identity=args.templates_per_identity,
        images_per_template=args.images_per_template,
    )
    start = time.perf_counter()
    summary = write_synthetic(args.out, config)
    elapsed = time.perf_counter() - start
    sets = ", ".join(Path(p).name for p in summary["bins"].values())  # type: ignore[union-attr]
    print(
        f"wrote {summary['images']} images of {config.identities} identities and {sets} "
        f"({config.pairs} pairs each) to {args.out} in {elapsed:.1f} s"
    )
    print(
        f"arguments recorded in {Path(args.out) / 'synthetic.json'}; train on this data with "
        f"ekd-train data.source=synthetic data.root={args.out}"
    )
    if args.preview:
        preview_grid(args.preview, seed=args.seed, difficulty=args.difficulty)
        print(f"preview grid: {args.preview}")


def _reindex(args: argparse.Namespace) -> None:
    from ekd.data.recordio import reindex

    rec = Path(args.rec)
    idx = Path(args.idx) if args.idx else rec.with_suffix(".idx")
    count = reindex(rec, idx)
    print(f"indexed {count} records of {rec} into {idx}")


def _info(args: argparse.Namespace) -> None:
    path = Path(args.path)
    if path.suffix == ".bin":
        from ekd.data.bins import load_bin

        images, issame = load_bin(path)
        print(f"{path}: {len(issame)} pairs ({int(issame.sum())} same), images {tuple(images.shape)}")
        return
    import numpy as np

    from ekd.data.datasets import FaceRecordDataset

    root = path.parent if path.suffix == ".rec" else path
    dataset = FaceRecordDataset(root)
    counts = np.bincount(dataset.labels, minlength=max(dataset.num_classes, 1))
    print(
        f"{root}: {len(dataset)} images, {dataset.num_classes} classes, images per class "
        f"min {counts.min()} / mean {counts.mean():.1f} / max {counts.max()}"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"pack": _pack, "synth": _synth, "reindex": _reindex, "info": _info}
    try:
        handlers[args.command](args)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
