"""``ekd-info``: size, cost and stage shapes of the registered face backbones.

    ekd-info                               # every registered backbone (timm/* family mentioned, not listed)
    ekd-info --backbone mbf                # one backbone
    ekd-info --backbone timm/resnet18      # any timm model
    ekd-info --backbone iresnet18 --option base_width=16 --option input_size=[56,56]

Models are built on PyTorch's ``meta`` device (shapes only, no memory, no arithmetic), so the full
table, iresnet200 included, takes a few seconds. MACs count convolutions and Linear layers at the
model's input size (112 x 112 by default); see ``ekd.models.complexity``.
"""

from __future__ import annotations

import argparse
import textwrap

import torch
from rich.console import Console
from rich.table import Table

from ekd.models import (
    count_macs,
    count_parameters,
    create_backbone,
    list_backbone_families,
    list_backbones,
    parse_backbone_options,
)
from ekd.models.features import STAGE_NAMES


def describe_backbone(name: str, **options) -> dict[str, object]:
    """Parameters, MACs, embedding size, input size and stage shapes of one backbone (built on meta)."""
    with torch.device("meta"):
        model = create_backbone(name, **options)
    return {
        "name": name,
        "params": count_parameters(model),
        "macs": count_macs(model),
        "embedding_size": model.embedding_size,
        "input_size": tuple(model.input_size),
        "stage_shapes": dict(model.stage_shapes),
    }


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else "x".join(str(v) for v in shape)


def _gmacs_text(macs: int) -> str:
    gmacs = macs / 1e9
    return f"{gmacs:.2f}" if gmacs >= 0.1 else f"{gmacs:.3g}"


def build_table(rows: list[dict[str, object]]) -> Table:
    table = Table(title="ekd backbones (MACs: convolutions + Linear layers, one image)")
    table.add_column("backbone", style="bold", no_wrap=True)
    table.add_column("params (M)", justify="right")
    table.add_column("GMACs", justify="right")
    table.add_column("input", justify="right")
    table.add_column("embedding", justify="right")
    for stage in STAGE_NAMES:
        table.add_column(stage, justify="right")
    for row in rows:
        shapes = row["stage_shapes"]
        table.add_row(
            str(row["name"]),
            f"{row['params'] / 1e6:.2f}",
            _gmacs_text(row["macs"]),
            _shape_text(row["input_size"]),
            str(row["embedding_size"]),
            *(_shape_text(shapes.get(stage)) for stage in STAGE_NAMES),
        )
    return table


EPILOG = textwrap.dedent(
    """\
    examples:
      ekd-info                              # every registered backbone
      ekd-info --backbone mobilefacenet     # one backbone
      ekd-info --backbone timm/resnet18 --embedding-size 256
      ekd-info --backbone iresnet18 --option base_width=16 --option input_size=[56,56]
    """
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ekd-info",
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backbone", help="only this backbone (a registered name or timm/<model_name>)")
    parser.add_argument("--embedding-size", type=int, default=512, help="embedding size D (default 512)")
    parser.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="backbone option, repeatable (e.g. width_mult=0.25, input_size=[56,56])",
    )
    args = parser.parse_args(argv)
    try:
        options = parse_backbone_options(args.option)
    except ValueError as error:
        parser.error(str(error))
    if options and not args.backbone:
        parser.error("--option needs --backbone (options differ between backbones)")

    names = [args.backbone] if args.backbone else list_backbones()
    rows = []
    for name in names:
        try:
            rows.append(describe_backbone(name, embedding_size=args.embedding_size, **options))
        except ValueError as error:
            parser.error(str(error))
    console = Console()
    if not console.is_terminal:
        # piped / captured output: rich would assume 80 columns and truncate the stage shapes
        console = Console(width=150)
    console.print(build_table(rows))
    if not args.backbone:
        for family in list_backbone_families():
            prefix = family[:-1]
            console.print(
                f"Also: {prefix}<model_name> for any timm model with the face-embedding neck, "
                f"e.g. ekd-info --backbone {prefix}resnet18"
                if prefix == "timm/"
                else f"Also: {family}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
