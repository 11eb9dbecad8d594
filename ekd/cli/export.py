"""``ekd-export``: write a backbone as an insightface-style ONNX model and verify it with onnxruntime.

    ekd-export --checkpoint runs/ekd/checkpoints/last.ckpt --output mbf_ekd.onnx
    ekd-export --backbone iresnet50 --checkpoint backbone.pth --output r50.onnx --opset 17

The ONNX input is ``data`` (N x 3 x 112 x 112 RGB, already normalised as (x - 127.5) / 127.5, dynamic
batch axis), the output ``embedding`` (N x D, not normalised). ``--checkpoint`` takes a Lightning
checkpoint of this project (``student.*`` unless ``--prefix`` says otherwise), an insightface
state_dict or, with ``--trust-pickle``, a whole pickled model (see ``ekd.models.loading``).

The architecture is read from the file where it is recorded: an ekd checkpoint's hyper-parameters, or
the ``backbone.json`` that ``ekd-train`` writes beside its ``backbone.pth``. An insightface
``backbone.pth`` records nothing and needs ``--backbone`` (plus ``--embedding-size`` / ``--option``
unless the defaults). Flags given with a recorded file must agree with the record (an error names
both values otherwise). Without ``--checkpoint`` the randomly initialised ``--backbone`` is exported,
with a warning (useful only to test a deployment path).
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from rich.console import Console

from ekd.models import (
    CheckpointError,
    create_backbone,
    export_onnx,
    file_sha256,
    load_recorded_backbone,
    parse_backbone_options,
)
from ekd.models.export import ExportVerificationError

EPILOG = textwrap.dedent(
    """\
    examples:
      ekd-export --checkpoint runs/ekd/checkpoints/last.ckpt --output mbf_ekd.onnx
      ekd-export --checkpoint runs/ekd/backbone.pth --output mbf_ekd.onnx    # with its backbone.json
      ekd-export --backbone iresnet50 --checkpoint insightface/backbone.pth --output r50.onnx

    An ekd checkpoint (or a backbone.pth with its backbone.json) records its architecture: no
    --backbone needed. An insightface backbone.pth needs --backbone (and --embedding-size /
    --option unless the defaults).
    """
)
# how the backbone arguments are spelled in ekd.models.loading's messages
ARGUMENT_NAMES = {"name": "--backbone", "embedding_size": "--embedding-size", "kwargs": "--option"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ekd-export",
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--backbone",
        help="registered backbone name or timm/<model_name> (default: the one the checkpoint records)",
    )
    parser.add_argument("--checkpoint", type=Path, help="weights to export (state_dict / Lightning .ckpt)")
    parser.add_argument("--output", required=True, type=Path, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument(
        "--embedding-size",
        type=int,
        default=None,
        help="embedding size D (default: the recorded one, else 512)",
    )
    parser.add_argument(
        "--prefix", help="key prefix inside a Lightning checkpoint (default: student. if present)"
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow arbitrary pickled objects (runs code from the file)",
    )
    parser.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="backbone option, repeatable (e.g. width_mult=0.5; default: the recorded ones)",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(stderr=True)

    try:
        options = parse_backbone_options(args.option)
        if args.checkpoint is None:
            if args.backbone is None:
                parser.error("give --checkpoint (and --backbone for an insightface state dict) or --backbone")
            embedding_size = 512 if args.embedding_size is None else args.embedding_size
            model = create_backbone(args.backbone, embedding_size=embedding_size, **options)
            console.print(
                "[bold yellow]warning:[/] no --checkpoint given: exporting randomly initialised weights"
            )
        else:
            model, spec = load_recorded_backbone(
                args.checkpoint,
                prefix=args.prefix,
                name=args.backbone,
                embedding_size=args.embedding_size,
                kwargs=options,
                trust_pickle=args.trust_pickle,
                argument_names=ARGUMENT_NAMES,
            )
            console.print(
                f"loaded {args.checkpoint} (sha256 {file_sha256(args.checkpoint)[:16]}...): {spec.name}, "
                f"{spec.embedding_size}-d embedding"
                + (f", options {spec.kwargs}" if spec.kwargs else "")
                + ("" if spec.source == "arguments" else f" (recorded in {spec.source})")
            )
        max_diff = export_onnx(model, args.output, opset=args.opset, verify=not args.no_verify)
    except FileNotFoundError as error:
        parser.exit(1, f"ekd-export: error: {error}\n")
    except (CheckpointError, ExportVerificationError, ValueError) as error:
        parser.exit(1, f"ekd-export: error: {error}\n")

    size_mb = args.output.stat().st_size / 2**20
    console.print(
        f"wrote {args.output} ({size_mb:.1f} MiB, opset {args.opset}, input 'data', output 'embedding')"
    )
    if max_diff is None:
        console.print("not verified (--no-verify)")
    else:
        console.print(f"verified with onnxruntime: max abs diff to torch {max_diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
