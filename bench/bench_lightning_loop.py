"""The Lightning training loop vs a minimal hand-written PyTorch loop doing the same step, side by side.

Both train the same RecognitionModule (student + ArcFace head) on the same in-memory batches with SGD:
the raw loop calls ``training_step``, ``backward``, ``optimizer.step`` itself; the Lightning variant is
``Trainer.fit`` (no logger, no checkpointing, no progress bar: what remains is the loop, hooks and
``self.log``). Target: Lightning >= 0.95 x the raw loop's throughput. Rounds alternate (raw, Lightning,
raw, ...) and the median round of each is reported.

    python bench/bench_lightning_loop.py [--backbone mobilefacenet] [--batch 16] [--steps 10] [--rounds 3]
                                         [--quick] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time

import pytorch_lightning as pl
import torch
from perf_common import HEAD_KW, emit, markdown_table
from torch.utils.data import DataLoader, TensorDataset

from ekd.lit.recognition import RecognitionModule


def _module(args: argparse.Namespace) -> RecognitionModule:
    torch.manual_seed(0)
    return RecognitionModule(
        student={"name": args.backbone},
        num_classes=args.classes,
        head={"kwargs": HEAD_KW},
        optim={"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
        schedule={"name": "constant"},
    )


def _loader(args: argparse.Namespace) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch * args.steps, 3, 112, 112, generator=generator) * 2 - 1
    labels = torch.randint(0, args.classes, (args.batch * args.steps,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=args.batch, shuffle=False)


def raw_loop(args: argparse.Namespace, loader: DataLoader) -> float:
    module = _module(args)
    # the same SGD as the module's configure_optimizers (weight decay everywhere: a negligible difference)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    module.train()
    start = time.perf_counter()
    for batch_idx, batch in enumerate(loader):
        loss = module.training_step(batch, batch_idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


class _Clock(pl.Callback):
    """Times from the first batch's start to the end of fit (same span as the raw loop)."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.start


def lightning_loop(args: argparse.Namespace, loader: DataLoader) -> float:
    module = _module(args)
    clock = _Clock()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    trainer.fit(module, loader)
    return clock.seconds


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="mobilefacenet")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.rounds, args.classes = 2, 2, 1, 10
    torch.set_num_threads(args.threads)
    loader = _loader(args)
    raw_loop(args, loader)  # warm-up (allocator, oneDNN kernels)
    raw, lit = [], []
    for _ in range(args.rounds):
        raw.append(raw_loop(args, loader))
        lit.append(lightning_loop(args, loader))
    raw_s, lit_s = statistics.median(raw), statistics.median(lit)
    images = args.batch * args.steps
    rows = [
        ["raw PyTorch loop", f"{raw_s:.2f}", f"{images / raw_s:.1f}", "1.00x"],
        ["Lightning Trainer.fit", f"{lit_s:.2f}", f"{images / lit_s:.1f}", f"{raw_s / lit_s:.3f}x"],
    ]
    table = markdown_table(["loop", "s per epoch", "images / s", "throughput vs raw"], rows)
    text = (
        f"Training loop, {args.backbone}, batch {args.batch}, {args.steps} steps per epoch, "
        f"{args.classes} classes, "
        f"{args.threads} thread(s), median of {args.rounds} alternating rounds\n\n{table}\n"
    )
    return emit(text, args.markdown)


if __name__ == "__main__":
    main()
