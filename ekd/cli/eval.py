"""``ekd-eval``: verification accuracy of a trained model on .bin sets and IJB-B/C.

Models: one of our Lightning checkpoints (``.ckpt``; the ``student.`` weights unless ``--prefix``;
backbone name and options read from the hyper-parameters ``ekd.lit`` records),
an insightface ``backbone.pth`` / state dict (``--backbone NAME`` required), or an ONNX model
(``.onnx``, run by onnxruntime). Sets: ``.bin`` files given with ``--bins``, and/or the standard five
(lfw, cfp_fp, cplfw, agedb_30, calfw) under ``--data-root``; a missing one is an error unless
``--allow-missing`` (it is then reported as missing). ``--ijb ROOT --ijb-name IJBC`` adds IJB 1:1.

Prints a table; with ``--output DIR`` writes ``DIR/eval_results.json`` (format ``ekd-eval/1``, metrics
shaped like the ``metrics`` of ``results.json``) and ``DIR/roc.png``. Embedding and scoring are
``ekd.eval.evaluate.verify_sets``, as in ekd-train: a set whose embeddings are non-finite (a diverged
model) is reported (``{"accuracy": null, "error": "non-finite embeddings"}``, no mean accuracy) rather
than aborting the run.

Examples::

    ekd-eval backbone.pth --backbone iresnet50 --data-root faces_emore --output out/
    ekd-eval model.onnx --bins lfw.bin agedb_30.bin
    ekd-eval last.ckpt --ijb /data --ijb-name IJBC --output out/
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

STANDARD_SETS: tuple[str, ...] = ("lfw", "cfp_fp", "cplfw", "agedb_30", "calfw")
RESULTS_NAME = "eval_results.json"
ROC_NAME = "roc.png"
FORMAT = "ekd-eval/1"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ekd-eval",
        description="Verification accuracy (insightface protocol) and IJB-B/C TPR@FPR of a face model.",
    )
    parser.add_argument(
        "model", help="Lightning .ckpt, insightface backbone .pth/.pt (with --backbone), or .onnx"
    )
    parser.add_argument("--backbone", help="registry name of the backbone (required for a .pth state dict)")
    parser.add_argument("--embedding-size", type=int, default=None, help="embedding size (default 512)")
    parser.add_argument(
        "--backbone-kwargs",
        default=None,
        help="JSON options for create_backbone, e.g. '{\"base_width\": 32}'",
    )
    parser.add_argument("--prefix", default=None, help="state-dict key prefix in a .ckpt (default: student.)")
    parser.add_argument("--bins", nargs="+", default=[], metavar="BIN", help=".bin verification files")
    parser.add_argument("--data-root", default=None, help="folder holding the standard .bin sets")
    parser.add_argument(
        "--sets", default=",".join(STANDARD_SETS), help="comma-separated set names looked up in --data-root"
    )
    parser.add_argument("--allow-missing", action="store_true", help="report missing sets instead of failing")
    parser.add_argument(
        "--ijb", default=None, metavar="ROOT", help="IJB root (holding IJBC/meta ... or meta/)"
    )
    parser.add_argument("--ijb-name", default="IJBC", choices=("IJBB", "IJBC"))
    parser.add_argument(
        "--ijb-rule", default="nearest", choices=("nearest", "le"), help="TPR@FPR reading (IJB)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="image-loading workers for IJB")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--n-folds", type=int, default=10)
    parser.add_argument("--no-flip", action="store_true", help="embed the image only (no flip sum)")
    parser.add_argument(
        "--output", default=None, metavar="DIR", help="write eval_results.json and roc.png here"
    )
    return parser


def _checkpoint_backbone(path: Path, prefix: str | None) -> tuple[str, int | None, dict]:
    """(name, embedding_size, kwargs) of the network under ``prefix`` (``student.`` or ``teacher.``) as
    ekd.lit's modules record it in a checkpoint's hparams: a ``BackboneConfig`` section of that name."""
    hint = "pass --backbone NAME (and --embedding-size / --backbone-kwargs when not the defaults)"
    network = (prefix or "student.").rstrip(".")
    if network not in ("student", "teacher"):
        raise SystemExit(f"ekd-eval: the backbone under prefix {prefix!r} is not recorded by name; {hint}")
    from ekd.models import CheckpointError, read_checkpoint

    try:
        ckpt = read_checkpoint(path)
    except (CheckpointError, OSError) as error:  # e.g. untrusted pickled hyper-parameter types
        raise SystemExit(f"ekd-eval: cannot read the backbone name from {path} ({error}); {hint}") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, Mapping) else None
    section = hparams.get(network) if isinstance(hparams, Mapping) else None
    if not isinstance(section, Mapping) or not isinstance(section.get("name"), str):
        raise SystemExit(f"ekd-eval: {path} records no '{network}' backbone in its hyper_parameters; {hint}")
    return section["name"], section.get("embedding_size"), dict(section.get("kwargs") or {})


def load_model(args: argparse.Namespace, device: torch.device) -> tuple[Any, str]:
    """The model to evaluate (an nn.Module on ``device`` or an ONNX embedder) and a description."""
    from ekd.eval.embed import OnnxEmbedder

    path = Path(args.model)
    if not path.is_file():
        raise SystemExit(f"ekd-eval: model file {path} does not exist")
    if path.suffix.lower() == ".onnx":
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        return OnnxEmbedder(path, providers=providers), f"onnx:{path}"

    from ekd.models import load_backbone

    kwargs: dict = {}
    if args.backbone_kwargs:
        try:
            kwargs = json.loads(args.backbone_kwargs)
        except json.JSONDecodeError as error:
            raise SystemExit(f"ekd-eval: --backbone-kwargs is not valid JSON: {error}") from None
        if not isinstance(kwargs, dict):
            raise SystemExit(
                f"ekd-eval: --backbone-kwargs must be a JSON object, got {args.backbone_kwargs!r}"
            )
    name, embedding_size = args.backbone, args.embedding_size
    if name is None:
        if path.suffix.lower() != ".ckpt":
            raise SystemExit(f"ekd-eval: {path} is a plain state dict; pass --backbone NAME (e.g. iresnet50)")
        name, recorded_size, recorded_kwargs = _checkpoint_backbone(path, args.prefix)
        embedding_size = embedding_size or recorded_size
        kwargs = {**recorded_kwargs, **kwargs}
    model = load_backbone(name, path, prefix=args.prefix, embedding_size=embedding_size or 512, **kwargs)
    return model.to(device).eval(), f"{name}:{path}"


def collect_bins(args: argparse.Namespace) -> tuple[dict[str, Path], list[str]]:
    """Set name -> .bin path, and the names of requested sets that are missing."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for entry in args.bins:
        path = Path(entry)
        if not path.is_file():
            if not args.allow_missing:
                raise SystemExit(f"ekd-eval: .bin file {path} does not exist")
            missing.append(path.stem)
            continue
        found[path.stem] = path
    if args.data_root is not None:
        root = Path(args.data_root)
        if not root.is_dir():
            raise SystemExit(f"ekd-eval: --data-root {root} is not a directory")
        names = [n.strip() for n in args.sets.split(",") if n.strip()]
        absent = [n for n in names if not (root / f"{n}.bin").is_file()]
        if absent and not args.allow_missing:
            raise SystemExit(
                f"ekd-eval: {root} lacks {', '.join(f'{n}.bin' for n in absent)} "
                "(pass --allow-missing to evaluate the others)"
            )
        missing += absent
        found.update({n: root / f"{n}.bin" for n in names if n not in absent})
    return found, missing


class _BinSets(Mapping):
    """Set name -> (images, issame) read from its .bin file on access: one set in memory at a time."""

    def __init__(self, paths: Mapping[str, Path]) -> None:
        self.paths = dict(paths)

    def __getitem__(self, name: str) -> tuple[Any, Any]:
        from ekd.data.bins import load_bin

        return load_bin(self.paths[name])

    def __iter__(self):
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)


def _percent(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def print_table(results: Mapping[str, Any], missing: list[str], ijb: Mapping[str, Any] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from ekd.eval.metrics import fpr_key

    # a pipe or a log file gets a fixed, wide table instead of rich's 80-column default
    console = Console(width=None if sys.stdout.isatty() else 140)
    if results:
        table = Table(title="Verification (10-fold accuracy, flip sum)")
        for column in ("set", "pairs", "acc %", "± %", "XNorm", "TPR@1e-3 %", "TPR@1e-4 %", "AUC %", "EER %"):
            table.add_column(column, justify="left" if column == "set" else "right")
        for name, res in results.items():
            if res is None:
                table.add_row(name, "non-finite embeddings", *["-"] * 7)
                continue
            table.add_row(
                name,
                str(res.num_pairs),
                _percent(res.accuracy),
                _percent(res.accuracy_std),
                "-" if res.xnorm is None else f"{res.xnorm:.3f}",
                _percent(res.tpr_at_fpr.get(1e-3)),
                _percent(res.tpr_at_fpr.get(1e-4)),
                _percent(res.auc),
                _percent(res.eer),
            )
        for name in missing:
            table.add_row(name, "missing", *["-"] * 7)
        console.print(table)
    elif missing:
        console.print(f"missing sets: {', '.join(missing)}")
    if ijb is not None:
        table = Table(title=f"{ijb.name} 1:1 TPR (%) at FPR ({ijb.rule} rule)")
        anchors = sorted(ijb.tpr_at_fpr)
        for column in ["set", "pairs", *[fpr_key(a) for a in anchors], "AUC %"]:
            table.add_column(column, justify="left" if column == "set" else "right")
        table.add_row(
            ijb.name, str(ijb.num_pairs), *[_percent(ijb.tpr_at_fpr[a]) for a in anchors], _percent(ijb.auc)
        )
        console.print(table)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ekd.eval.evaluate import verification_records, verify_sets
    from ekd.eval.ijb import evaluate_ijb
    from ekd.eval.metrics import downsample_roc
    from ekd.eval.plot import plot_roc

    if args.batch_size < 1:
        raise SystemExit(f"ekd-eval: --batch-size must be >= 1, got {args.batch_size}")
    bins, missing = collect_bins(args)
    if not bins and args.ijb is None:
        raise SystemExit("ekd-eval: nothing to evaluate: give --bins, --data-root or --ijb")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, description = load_model(args, device)

    start = time.perf_counter()
    # a set with non-finite embeddings gives None (and a warning): reported, the others still evaluated
    results = verify_sets(model, _BinSets(bins), args.batch_size, flip=not args.no_flip, n_folds=args.n_folds)
    ijb = None
    if args.ijb is not None:
        ijb = evaluate_ijb(
            model,
            args.ijb,
            args.ijb_name,
            batch_size=args.batch_size,
            num_workers=args.workers,
            flip=not args.no_flip,
            rule=args.ijb_rule,
        )
    elapsed = time.perf_counter() - start
    print_table(results, missing, ijb)

    if args.output is not None:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        records, rocs = verification_records(results, roc_points=200)
        accuracies = [r.accuracy for r in results.values() if r is not None]
        # no mean over a subset: a failed set would silently raise or lower it
        complete = bool(accuracies) and len(accuracies) == len(results)
        data = {
            "format": FORMAT,
            "model": description,
            "flip": not args.no_flip,
            "metrics": records,
            "mean_accuracy": sum(accuracies) / len(accuracies) if complete else None,
            "missing": missing,
            "ijb": None if ijb is None else ijb.to_dict(),
            "roc": rocs,
            "wall_time_s": elapsed,
        }
        curves = {name: (r.roc_fpr, r.roc_tpr) for name, r in results.items() if r is not None}
        if ijb is not None:
            data["roc"][ijb.name] = downsample_roc(ijb.roc_fpr, ijb.roc_tpr, 200)
            curves[ijb.name] = (ijb.roc_fpr, ijb.roc_tpr)
        tmp = out / f".{RESULTS_NAME}.tmp"
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
        os.replace(tmp, out / RESULTS_NAME)
        plot_roc(curves, out / ROC_NAME, title=f"ROC: {description}")
        print(f"wrote {out / RESULTS_NAME} and {out / ROC_NAME}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
