"""``ekd-eval``: verification accuracy of a trained model on .bin sets and IJB-B/C.

Models: one of our Lightning checkpoints (``.ckpt``; the ``student.`` weights unless ``--prefix``), a
``backbone.pth`` written by ``ekd-train`` (with its ``backbone.json``), an insightface ``backbone.pth``
/ state dict (``--backbone NAME`` required: it records no architecture), or an ONNX model (``.onnx``,
run by onnxruntime). The first two record their backbone (name, embedding size, options;
``ekd.models.loading``): ``--backbone`` / ``--embedding-size`` / ``--backbone-kwargs`` are then not
needed, and given ones must agree with the record (an error names both values otherwise).

Sets: ``.bin`` files given with ``--bins``, and/or the sets under ``--data-root``: by default every
``*.bin`` there (the paper's sets lfw, cfp_fp, cplfw, agedb_30, calfw first, in that order, then the
other known insightface sets, then the rest by name); a folder without any is an error listing what
it holds. ``--sets a,b`` picks sets by name instead; a missing one is an error unless
``--allow-missing`` (it is then reported as missing). Template sets (``ekd-templates/1`` ``.npz``
files, ``ekd.data.templates``; the synthetic benchmark's ``synth_ijb.npz``) are found in
``--data-root`` too (or named by ``--sets``, or given to ``--bins``) and scored all-vs-all at FPR
1e-3 / 1e-4 / 1e-5 (``ekd.eval.templates``: the image only, as TFace, unless ``--flip-mode`` says
otherwise; read by ``--ijb-rule``; a TPR only where at least 10 false accepts define its threshold).
``--ijb ROOT --ijb-name IJBC`` adds IJB 1:1, scored by ``--protocol insightface`` (default) or
``--protocol tface`` (docs/methods.md); each setting of the protocol can be changed on its own
(``--flip-mode``, ``--[no-]norm-score``, ``--[no-]detector-score``). Embeddings are fp32 unless
``--precision 16-mixed|bf16-mixed``.

Prints a table; with ``--output DIR`` writes ``DIR/eval_results.json`` (format ``ekd-eval/1``, metrics
shaped like the ``metrics`` of ``results.json``, with its ``eval_protocol`` record) and ``DIR/roc.png``
(the ROC curves of the pair and IJB sets; template sets have none).
A TPR at an FPR the pairs cannot resolve (FPR x impostor pairs < 1) is printed as ``—`` with a
footnote and stored as null (NaN), where insightface's and TFace's scripts print a number. Embedding
and scoring are ``ekd.eval.evaluate.verify_sets``, as in ekd-train: a set whose embeddings are
non-finite (a diverged model) is reported (``{"accuracy": null, "error": "non-finite embeddings"}``, no
mean accuracy) rather than aborting the run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ekd.choices import EvalPrecision, FlipMode, IJBProtocolName

RESULTS_NAME = "eval_results.json"
ROC_NAME = "roc.png"
FORMAT = "ekd-eval/1"
EPILOG = textwrap.dedent(
    """\
    examples:
      ekd-eval runs/ekd/checkpoints/last.ckpt --data-root faces_emore --output out/
      ekd-eval runs/ekd/backbone.pth --data-root faces_emore          # with its backbone.json
      ekd-eval insightface/backbone.pth --backbone iresnet50 --data-root faces_emore --sets lfw,agedb_30
      ekd-eval model.onnx --bins lfw.bin agedb_30.bin
      ekd-eval last.ckpt --ijb /data --ijb-name IJBC --output out/
      ekd-eval backbone.pth --ijb /data --ijb-name IJBB --protocol tface   # the EKD paper's IJB columns

    --data-root evaluates every *.bin and template set (*.npz) in the folder unless --sets names some.
    """
)
# how the backbone arguments are spelled in ekd.models.loading's messages
ARGUMENT_NAMES = {"name": "--backbone", "embedding_size": "--embedding-size", "kwargs": "--backbone-kwargs"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ekd-eval",
        description="Verification accuracy (insightface protocol) and IJB-B/C TPR@FPR of a face model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model",
        help="ekd .ckpt, backbone.pth (with its backbone.json, or --backbone for an insightface one), .onnx",
    )
    parser.add_argument(
        "--backbone", help="registry name of the backbone (default: the recorded one; needed for insightface)"
    )
    parser.add_argument(
        "--embedding-size",
        type=int,
        default=None,
        help="embedding size (default: the recorded one, else 512)",
    )
    parser.add_argument(
        "--backbone-kwargs",
        default=None,
        help="JSON options for create_backbone, e.g. '{\"base_width\": 32}'",
    )
    parser.add_argument("--prefix", default=None, help="state-dict key prefix in a .ckpt (default: student.)")
    parser.add_argument(
        "--bins", nargs="+", default=[], metavar="BIN", help=".bin verification files or .npz template sets"
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="folder of .bin sets and template sets (default: every *.bin and template .npz there)",
    )
    parser.add_argument(
        "--sets", default=None, help="comma-separated set names looked up in --data-root (default: all there)"
    )
    parser.add_argument("--allow-missing", action="store_true", help="report missing sets instead of failing")
    parser.add_argument(
        "--ijb", default=None, metavar="ROOT", help="IJB root (holding IJBC/meta ... or meta/)"
    )
    parser.add_argument("--ijb-name", default="IJBC", choices=("IJBB", "IJBC"))
    parser.add_argument(
        "--ijb-rule",
        default="nearest",
        choices=("nearest", "le"),
        help="TPR@FPR reading (IJB and template sets)",
    )
    parser.add_argument(
        "--protocol",
        default="insightface",
        choices=[p.value for p in IJBProtocolName],
        help="IJB scoring protocol: insightface (flip sum, norm + detector weighting) or tface (plain "
        "view, no weighting); docs/methods.md",
    )
    parser.add_argument(
        "--flip-mode",
        default=None,
        choices=[m.value for m in FlipMode],
        help="IJB and template-set image feature from the image and its mirror (default: the IJB "
        "protocol's; plain for template sets)",
    )
    parser.add_argument(
        "--norm-score",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="IJB: keep the feature norm as a weight (default: the protocol's)",
    )
    parser.add_argument(
        "--detector-score",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="IJB: weight features by the detection score (default: the protocol's)",
    )
    parser.add_argument(
        "--precision",
        default=EvalPrecision.fp32.value,
        choices=[p.value for p in EvalPrecision],
        help="embedding arithmetic of a torch model (default fp32; half precision only when asked)",
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

    from ekd.models import CheckpointError, load_recorded_backbone

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
    try:
        model, spec = load_recorded_backbone(
            path,
            prefix=args.prefix,
            name=args.backbone,
            embedding_size=args.embedding_size,
            kwargs=kwargs,
            argument_names=ARGUMENT_NAMES,
        )
    except (CheckpointError, ValueError) as error:  # no / contradicting record, unknown backbone, ...
        raise SystemExit(f"ekd-eval: {error}") from None
    return model.to(device).eval(), f"{spec.name}:{path}"


def discover_sets(root: Path) -> list[str]:
    """Names of the verification sets in ``root``: every ``*.bin`` file, the paper's sets first in the
    paper's column order, then the other known insightface sets, then the rest by name."""
    from ekd.data.bins import KNOWN_BIN_SETS
    from ekd.registry import natural_key
    from ekd.report.table import PAPER_SETS

    present = {p.stem for p in root.iterdir() if p.suffix.lower() == ".bin" and p.is_file()}
    known = [name for name in (*PAPER_SETS, *KNOWN_BIN_SETS) if name in present]
    known = list(dict.fromkeys(known))  # PAPER_SETS and KNOWN_BIN_SETS share names
    return known + sorted(present - set(known), key=natural_key)


def _folder_listing(root: Path, shown: int = 12) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    if not entries:
        return "nothing (it is empty)"
    more = f", ... and {len(entries) - shown} more" if len(entries) > shown else ""
    return ", ".join(entries[:shown]) + more


def collect_bins(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, Path], list[str]]:
    """Set name -> .bin path, template set name -> .npz path, and the names of requested sets that are
    missing."""
    from ekd.data.templates import TEMPLATE_SUFFIX, find_template_sets, is_template_set

    found: dict[str, Path] = {}
    templates: dict[str, Path] = {}
    missing: list[str] = []
    for entry in args.bins:
        path = Path(entry)
        if not path.is_file():
            if not args.allow_missing:
                raise SystemExit(f"ekd-eval: .bin file {path} does not exist")
            missing.append(
                path.name[: -len(TEMPLATE_SUFFIX)] if path.name.endswith(TEMPLATE_SUFFIX) else path.stem
            )
            continue
        if path.name.endswith(TEMPLATE_SUFFIX):
            if not is_template_set(path):
                raise SystemExit(
                    f"ekd-eval: {path} is not a template set (an .npz file of format ekd-templates/1)"
                )
            templates[path.name[: -len(TEMPLATE_SUFFIX)]] = path
            continue
        found[path.stem] = path
    if args.data_root is not None:
        root = Path(args.data_root)
        if not root.is_dir():
            raise SystemExit(f"ekd-eval: --data-root {root} is not a directory")
        template_sets = find_template_sets(root)
        if args.sets is None:
            names = discover_sets(root)
            if not names and not template_sets:
                raise SystemExit(
                    f"ekd-eval: --data-root {root} holds no verification sets (*.bin files); it holds "
                    f"{_folder_listing(root)}"
                )
            templates.update(template_sets)
        else:
            names = [n.strip() for n in args.sets.split(",") if n.strip()]
            if not names:
                raise SystemExit(f"ekd-eval: --sets {args.sets!r} names no set")
            templates.update({n: template_sets[n] for n in names if n in template_sets})
            names = [n for n in names if n not in template_sets or (root / f"{n}.bin").is_file()]
        absent = [n for n in names if not (root / f"{n}.bin").is_file()]
        if absent and not args.allow_missing:
            present = ", ".join([*discover_sets(root), *template_sets]) or "none"
            raise SystemExit(
                f"ekd-eval: {root} lacks {', '.join(f'{n}.bin' for n in absent)} (its sets: {present}; "
                "pass --allow-missing to evaluate the others)"
            )
        missing += absent
        found.update({n: root / f"{n}.bin" for n in names if n not in absent})
    return found, templates, missing


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


UNRESOLVED = "—"
UNRESOLVED_NOTE = (
    f"{UNRESOLVED} : fewer than 1/FPR impostor pairs (FPR x impostors < 1): the TPR is not resolvable and "
    "is stored as NaN (null in JSON); insightface's and TFace's scripts print the TPR of the nearest "
    "ROC point (FPR 0) there"
)


def _tpr(value: float | None) -> str:
    """A TPR cell: NaN (a target FPR the pairs cannot resolve) is ``—``, explained by UNRESOLVED_NOTE."""
    if value is not None and math.isnan(value):
        return UNRESOLVED
    return _percent(value)


def print_table(
    results: Mapping[str, Any], missing: list[str], ijb: Any | None, precision: str = EvalPrecision.fp32.value
) -> None:
    """The verification and IJB tables (rich), each with a footnote where a TPR is not resolvable."""
    from rich.console import Console
    from rich.table import Table

    from ekd.eval.metrics import fpr_key

    # a pipe or a log file gets a fixed, wide table instead of rich's 80-column default
    console = Console(width=None if sys.stdout.isatty() else 140)
    if results:
        table = Table(title=f"Verification (10-fold accuracy, flip sum, {precision})")
        for column in ("set", "pairs", "acc %", "± %", "XNorm", "TPR@1e-3 %", "TPR@1e-4 %", "AUC %", "EER %"):
            table.add_column(column, justify="left" if column == "set" else "right")
        unresolved = False
        for name, res in results.items():
            if res is None:
                table.add_row(name, "non-finite embeddings", *["-"] * 7)
                continue
            tprs = [res.tpr_at_fpr.get(1e-3), res.tpr_at_fpr.get(1e-4)]
            unresolved |= any(v is not None and math.isnan(v) for v in tprs)
            table.add_row(
                name,
                str(res.num_pairs),
                _percent(res.accuracy),
                _percent(res.accuracy_std),
                "-" if res.xnorm is None else f"{res.xnorm:.3f}",
                *[_tpr(v) for v in tprs],
                _percent(res.auc),
                _percent(res.eer),
            )
        for name in missing:
            table.add_row(name, "missing", *["-"] * 7)
        if unresolved:
            table.caption = UNRESOLVED_NOTE
        console.print(table)
    elif missing:
        console.print(f"missing sets: {', '.join(missing)}")
    if ijb is not None:
        title = (
            f"{ijb.name} 1:1 TPR (%) at FPR ({ijb.protocol.label} protocol, {ijb.rule} rule, {ijb.precision})"
        )
        table = Table(title=title)
        anchors = sorted(ijb.tpr_at_fpr)
        for column in ["set", "pairs", *[fpr_key(a) for a in anchors], "AUC %"]:
            table.add_column(column, justify="left" if column == "set" else "right")
        table.add_row(
            ijb.name, str(ijb.num_pairs), *[_tpr(ijb.tpr_at_fpr[a]) for a in anchors], _percent(ijb.auc)
        )
        if ijb.unresolvable:
            table.caption = f"{UNRESOLVED_NOTE} ({ijb.num_negatives} impostor pairs here)"
        console.print(table)


TEMPLATE_NOTE = (
    f"{UNRESOLVED} : FPR x impostors < {{min_false_accepts}}: too few false accepts would define the "
    "threshold; the TPR is not reported (null in JSON)"
)


def print_template_table(results: Mapping[str, Any], precision: str = EvalPrecision.fp32.value) -> None:
    """The template-set table (rich): counts and TPR@FPR per set, a footnote where a TPR is not reported."""
    from rich.console import Console
    from rich.table import Table

    from ekd.eval.metrics import fpr_key

    console = Console(width=None if sys.stdout.isatty() else 140)
    done = [r for r in results.values() if r is not None]
    anchors = sorted({a for r in done for a in r.tpr_at_fpr}, reverse=True)
    protocol = done[0].protocol if done else None
    title = "Template sets, all-vs-all 1:1 TPR (%) at FPR"
    if protocol is not None:
        title += f" (image feature {protocol.flip_mode.value}, {protocol.rule} rule, {precision})"
    table = Table(title=title)
    for column in ["set", "templates", "genuine", "impostors", *[fpr_key(a) for a in anchors]]:
        table.add_column(column, justify="left" if column == "set" else "right")
    unresolved = False
    for name, res in results.items():
        if res is None:
            table.add_row(name, "non-finite embeddings", *["-"] * (2 + len(anchors)))
            continue
        tprs = [res.tpr_at_fpr.get(a, float("nan")) for a in anchors]
        unresolved |= any(math.isnan(v) for v in tprs)
        table.add_row(
            name, str(res.num_templates), str(res.genuine), str(res.impostors), *[_tpr(v) for v in tprs]
        )
    if unresolved and protocol is not None:
        table.caption = TEMPLATE_NOTE.format(min_false_accepts=protocol.min_false_accepts)
    console.print(table)


def resolve_ijb_protocol(args: argparse.Namespace) -> Any:
    """The IJB protocol of the command line: ``--protocol`` with the settings given on their own."""
    from ekd.eval.ijb import ijb_protocol

    flip_mode = args.flip_mode
    if args.no_flip:
        if flip_mode not in (None, FlipMode.plain.value):
            raise SystemExit(
                f"ekd-eval: --no-flip embeds the image only, which contradicts --flip-mode {flip_mode} "
                "(give --flip-mode plain, or leave one of them out)"
            )
        flip_mode = FlipMode.plain.value
    return ijb_protocol(
        args.protocol, flip_mode=flip_mode, norm_score=args.norm_score, detector_score=args.detector_score
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ekd.eval.evaluate import protocol_record, result_record, verification_records, verify_sets
    from ekd.eval.ijb import evaluate_ijb
    from ekd.eval.metrics import downsample_roc
    from ekd.eval.plot import plot_roc
    from ekd.eval.templates import evaluate_template_files, template_protocol

    if args.batch_size < 1:
        raise SystemExit(f"ekd-eval: --batch-size must be >= 1, got {args.batch_size}")
    protocol = resolve_ijb_protocol(args)
    bins, template_paths, missing = collect_bins(args)
    if not bins and not template_paths and args.ijb is None:
        raise SystemExit("ekd-eval: nothing to evaluate: give --bins, --data-root or --ijb")
    templates_protocol = None
    if template_paths:  # the image only (TFace's IJB evaluation) unless --flip-mode asks for another
        templates_protocol = template_protocol(args.flip_mode, rule=args.ijb_rule)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, description = load_model(args, device)

    start = time.perf_counter()
    # a set with non-finite embeddings gives None (and a warning): reported, the others still evaluated
    results = verify_sets(
        model,
        _BinSets(bins),
        args.batch_size,
        flip=not args.no_flip,
        n_folds=args.n_folds,
        precision=args.precision,
    )
    # a set with non-finite embeddings gives None (and a warning), as the pair sets do
    template_results = evaluate_template_files(
        model, template_paths.items(), args.batch_size, templates_protocol, args.precision
    )
    ijb = None
    if args.ijb is not None:
        ijb = evaluate_ijb(
            model,
            args.ijb,
            args.ijb_name,
            batch_size=args.batch_size,
            num_workers=args.workers,
            protocol=protocol,
            rule=args.ijb_rule,
            precision=args.precision,
        )
    elapsed = time.perf_counter() - start
    print_table(results, missing, ijb, args.precision)
    if template_results:
        print_template_table(template_results, args.precision)

    if args.output is not None:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        records, rocs = verification_records(results, roc_points=200)
        records.update({name: result_record(res) for name, res in template_results.items()})
        accuracies = [r.accuracy for r in results.values() if r is not None]
        # no mean over a subset: a failed set would silently raise or lower it
        complete = bool(accuracies) and len(accuracies) == len(results)
        data = {
            "format": FORMAT,
            "model": description,
            "flip": not args.no_flip,
            "eval_protocol": protocol_record(
                args.precision,
                None if ijb is None else protocol,
                flip=not args.no_flip,
                n_folds=args.n_folds,
                rule=args.ijb_rule,
                templates=templates_protocol,
            ),
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
        if curves:  # template sets have no ROC curve (only its low-FPR end is scored)
            plot_roc(curves, out / ROC_NAME, title=f"ROC: {description}")
            print(f"wrote {out / RESULTS_NAME} and {out / ROC_NAME}", file=sys.stderr)
        else:
            print(f"wrote {out / RESULTS_NAME}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
