"""``ekd-export``: write a backbone as an insightface-style ONNX model and verify it with onnxruntime.

    ekd-export --backbone mbf --checkpoint runs/ekd/last.ckpt --output mbf_ekd.onnx
    ekd-export --backbone iresnet50 --checkpoint backbone.pth --output r50.onnx --opset 17

The ONNX input is ``data`` (N x 3 x 112 x 112 RGB, already normalised as (x - 127.5) / 127.5, dynamic
batch axis), the output ``embedding`` (N x D, not normalised). ``--checkpoint`` takes an insightface
state_dict, a Lightning checkpoint of this project (``student.*`` unless ``--prefix`` says otherwise) or,
with ``--trust-pickle``, a whole pickled model (see ``ekd.models.loading``). Without ``--checkpoint`` the
randomly initialised network is exported, with a warning (useful only to test a deployment path).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from ekd.models import (
    CheckpointError,
    create_backbone,
    export_onnx,
    file_sha256,
    load_backbone,
    parse_backbone_options,
)
from ekd.models.export import ExportVerificationError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ekd-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", required=True, help="registered backbone name or timm/<model_name>")
    parser.add_argument("--checkpoint", type=Path, help="weights to export (state_dict / Lightning .ckpt)")
    parser.add_argument("--output", required=True, type=Path, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--embedding-size", type=int, default=512, help="embedding size D (default 512)")
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
        help="backbone option, repeatable (e.g. width_mult=0.5)",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")
    args = parser.parse_args(argv)
    console = Console(stderr=True)

    try:
        options = parse_backbone_options(args.option)
        options["embedding_size"] = args.embedding_size
        if args.checkpoint is None:
            model = create_backbone(args.backbone, **options)
            console.print(
                "[bold yellow]warning:[/] no --checkpoint given: exporting randomly initialised weights"
            )
        else:
            model = load_backbone(
                args.backbone, args.checkpoint, prefix=args.prefix, trust_pickle=args.trust_pickle, **options
            )
            console.print(f"loaded {args.checkpoint} (sha256 {file_sha256(args.checkpoint)[:16]}...)")
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
