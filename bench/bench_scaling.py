"""How step time grows with the batch size for the relational distillation losses, and with the number
of identities for the margin head, side by side in one process.

Relational losses (rkd, darkrank, sp, cckd, ekd): forward + backward of the objective alone on random
512-d student / teacher embeddings (the backbones do not depend on which loss is used), B = 64 ... 512.
Head: ArcFace logits + cross-entropy forward + backward for B = 128 embeddings of 512 dimensions against
C = 1k, 10k, 100k class centres (the softmax over C dominates; PartialFC / sharding divide it).

``--all-objectives``: instead, forward + backward of every registered objective
(``ekd.distill.list_objectives()``, recipe hyper-parameters = the defaults of conf/distill/*.yaml) at
the given batches, with its ratio to EKD's time at the same B, rounds interleaved over the objectives
(median and min-max): 512-d embeddings, 10,000-class logits (kd), 10,000 teacher class centres
(margin), 512 x 7 x 7 stage-4 maps (fitnet; shrinkteanet both as in the recipe, embeddings only, and
with ``stages=[stage4]``). Labels: B / 4 identities, so that label-based objectives see positives.

    python bench/bench_scaling.py [--batches 64,128,256,512] [--classes 1000,10000,100000] [--repeats 3]
                                  [--quick] [--markdown FILE]
    python bench/bench_scaling.py --all-objectives --batches 512,2048 [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from perf_common import emit, markdown_table, time_interleaved

from ekd.distill import create as create_objective
from ekd.distill import list_objectives
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


def _any_objective_step(
    name: str, batch: int, dim: int, classes: int, stage: tuple[int, int, int], **hparams
):
    """Forward + backward of objective ``name`` on random inputs of the recipe's shapes."""
    objective = create_objective(name, **hparams)
    generator = torch.Generator().manual_seed(batch)
    labels = torch.randint(0, max(2, batch // 4), (batch,), generator=generator)
    if objective.needs_teacher_centres:
        objective.set_teacher_centres(torch.randn(classes, dim, generator=generator))
    leaves = {"embedding": torch.randn(batch, dim, generator=generator, requires_grad=True)}
    teacher = Features(embedding=torch.randn(batch, dim, generator=generator))
    if "logits" in objective.requires:
        leaves["logits"] = torch.randn(batch, classes, generator=generator, requires_grad=True)
        teacher.logits = torch.randn(batch, classes, generator=generator)
    for stage_name in objective.required_stages():
        leaves[stage_name] = torch.randn(batch, *stage, generator=generator, requires_grad=True)
        teacher.stages[stage_name] = torch.randn(batch, *stage, generator=generator)
    student = Features(
        embedding=leaves["embedding"],
        logits=leaves.get("logits"),
        stages={k: v for k, v in leaves.items() if k not in ("embedding", "logits")},
    )
    parameters = [*leaves.values(), *objective.parameters()]

    def step() -> None:
        objective(student, teacher, labels).backward()
        for tensor in parameters:
            tensor.grad = None

    return step


def all_objectives(args: argparse.Namespace, batches: list[int]) -> str:
    """Every registered objective at each batch size: ms (median, min-max) and the ratio to EKD."""
    stage = (args.stage_channels, args.stage_size, args.stage_size)
    variants = {name: (name, {}) for name in list_objectives()}
    variants["shrinkteanet + stage4"] = ("shrinkteanet", {"stages": ["stage4"]})
    order = sorted(variants)
    columns: dict[int, dict[str, list[float]]] = {}
    for batch in batches:
        steps = {
            label: _any_objective_step(name, batch, args.dim, args.logit_classes, stage, **hparams)
            for label, (name, hparams) in variants.items()
        }
        for step in steps.values():  # warm-up (compiles RKD's kernel for B >= 256)
            step()
        times: dict[str, list[float]] = {label: [] for label in steps}
        for _ in range(args.repeats):
            for label, step in steps.items():
                start = time.perf_counter()
                step()
                times[label].append(time.perf_counter() - start)
        columns[batch] = times
    rows = []
    for label in order:
        row = [label]
        for batch in batches:
            times, ekd = columns[batch][label], columns[batch]["ekd"]
            median = statistics.median(times)
            per_round = [t / e for t, e in zip(times, ekd)]
            row += [
                f"{1000 * median:.1f} ({1000 * min(times):.1f}-{1000 * max(times):.1f})",
                f"{median / statistics.median(ekd):.2f}x ({min(per_round):.2f}-{max(per_round):.2f})",
            ]
        rows.append(row)
    header = ["objective"]
    for batch in batches:
        header += [f"B = {batch}: ms", f"B = {batch}: vs EKD"]
    return (
        f"Every objective, forward + backward, embeddings {args.dim}-d, logits / centres "
        f"{args.logit_classes} classes, stage maps {stage[0]} x {stage[1]} x {stage[2]}, {args.threads} "
        f"thread(s); ms: median (min-max) of {args.repeats} interleaved rounds; vs EKD: ratio of the "
        f"medians (min-max of the per-round ratios)\n\n{markdown_table(header, rows)}\n"
    )


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
    parser.add_argument("--all-objectives", action="store_true", help="every objective vs EKD (see above)")
    parser.add_argument("--logit-classes", type=int, default=10000)
    parser.add_argument("--stage-channels", type=int, default=512)
    parser.add_argument("--stage-size", type=int, default=7)
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.classes, args.dim, args.repeats, args.head_batch = "8,16", "10,100", 16, 1, 8
        args.logit_classes, args.stage_channels, args.stage_size = 20, 8, 2
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    if args.all_objectives:
        return emit(all_objectives(args, batches), args.markdown)
    # --quick is a smoke test of the script: both modes
    quick_all = all_objectives(args, batches) + "\n" if args.quick else ""
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
        f"{quick_all}"
    )
    return emit(text, args.markdown)


if __name__ == "__main__":
    main()
