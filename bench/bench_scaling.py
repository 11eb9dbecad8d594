"""How step time grows with the batch size for the relational distillation losses, and with the number
of identities for the margin head, side by side in one process.

Relational losses (rkd, darkrank, sp, cckd, ekd): forward + backward of the objective alone on random
512-d student / teacher embeddings (the backbones do not depend on which loss is used), B = 64 ... 512.
Head: ArcFace logits + cross-entropy forward + backward for B = 128 embeddings of 512 dimensions against
C = 1k, 10k, 100k class centres (the softmax over C dominates; PartialFC / sharding divide it).

    python bench/bench_scaling.py [--batches 64,128,256,512] [--classes 1000,10000,100000] [--repeats 3]
                                  [--quick] [--markdown FILE]
"""

from __future__ import annotations

import argparse

import torch
from perf_common import emit, markdown_table, time_interleaved

from ekd.distill import create as create_objective
from ekd.heads.loss import RecognitionLoss
from ekd.models.features import Features

RELATIONAL = ("rkd", "darkrank", "sp", "cckd", "ekd")


def _objective_step(name: str, batch: int, dim: int):
    objective = create_objective(name)
    generator = torch.Generator().manual_seed(batch)
    labels = torch.randint(0, max(2, batch // 4), (batch,), generator=generator)
    student = torch.randn(batch, dim, generator=generator, requires_grad=True)
    teacher = Features(embedding=torch.randn(batch, dim, generator=generator))

    def step() -> None:
        loss = objective(Features(embedding=student), teacher, labels)
        loss.backward()
        student.grad = None

    return step


def _head_step(classes: int, batch: int, dim: int):
    head = RecognitionLoss("arcface", dim, classes)
    generator = torch.Generator().manual_seed(classes)
    embeddings = torch.randn(batch, dim, generator=generator, requires_grad=True)
    labels = torch.randint(0, classes, (batch,), generator=generator)

    def step() -> None:
        loss, _ = head(embeddings, labels)
        loss.backward()
        embeddings.grad = None
        head.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="64,128,256,512")
    parser.add_argument("--classes", default="1000,10000,100000")
    parser.add_argument("--head-batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.classes, args.dim, args.repeats, args.head_batch = "8,16", "10,100", 16, 1, 8
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    classes = [int(c) for c in args.classes.split(",")]

    rows = []
    for name in RELATIONAL:
        seconds = time_interleaved(
            {str(b): _objective_step(name, b, args.dim) for b in batches}, args.repeats
        )
        base = seconds[str(batches[0])]
        rows.append(
            [name, *(f"{1000 * seconds[str(b)]:.1f} ({seconds[str(b)] / base:.1f}x)" for b in batches)]
        )
    table = markdown_table(["objective", *(f"B = {b}" for b in batches)], rows)
    head_seconds = time_interleaved(
        {str(c): _head_step(c, args.head_batch, args.dim) for c in classes}, args.repeats
    )
    base = head_seconds[str(classes[0])]
    head_table = markdown_table(
        ["classes", "ms / step", f"vs {classes[0]}"],
        [[c, f"{1000 * head_seconds[str(c)]:.1f}", f"{head_seconds[str(c)] / base:.1f}x"] for c in classes],
    )
    text = (
        f"Relational losses, forward + backward of the objective, D = {args.dim}, {args.threads} thread(s), "
        f"ms (ratio to B = {batches[0]}), median of {args.repeats}\n\n{table}\n\n"
        f"ArcFace head, forward + backward, B = {args.head_batch}, D = {args.dim}\n\n{head_table}\n"
    )
    return emit(text, args.markdown)


if __name__ == "__main__":
    main()
