"""Calibrate the synthetic identity benchmark: does it separate model sizes and leave room for KD?

Trains a small and a larger backbone from scratch on the synthetic training identities with a
cosine classifier (CosFace-style margin) + cross-entropy written here, for the same number of
epochs, then runs the verification protocol (``ekd.eval``: flip-sum embeddings, 10 folds) on the
held-out ``synth_*.bin`` sets. Wanted: the larger model clearly ahead of the smaller one, and the
small model well above chance (50 %) and well below 100 %.

    ekd-data synth /tmp/synth --identities 200 --images-per-identity 24 --seed 0
    python bench/calibrate_synthetic.py --root /tmp/synth --epochs 2

Prints a markdown table and writes ``--output`` (JSON) when given.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from ekd.data.bins import load_bin
from ekd.data.datasets import FaceRecordDataset
from ekd.data.synthetic import VERIFICATION_SETS
from ekd.eval import extract_embeddings, verify
from ekd.models import create_backbone

MODELS = {
    "small": ("mobilefacenet", {"width_mult": 0.25}),
    "large": ("iresnet18", {"base_width": 16}),
}


class CosineClassifier(torch.nn.Module):
    """logits = s * (cos(f, W_j) - m [j == y]): NormFace with a CosFace margin on the target."""

    def __init__(self, dim: int, classes: int, scale: float = 30.0, margin: float = 0.2) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.scale, self.margin = scale, margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(embeddings), F.normalize(self.weight))
        return self.scale * (cos - self.margin * F.one_hot(labels, cos.shape[1]))


def _load_training_images(root: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    dataset = FaceRecordDataset(root, flip=False)
    images = torch.stack([dataset.read_uint8(i)[0] for i in range(len(dataset))])
    return images, torch.from_numpy(dataset.labels), dataset.num_classes


def train(name: str, options: dict, images, labels, classes, args) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(args.seed)
    model = create_backbone(name, embedding_size=args.embedding_size, **options)
    head = CosineClassifier(args.embedding_size, classes)
    params = [
        {"params": [p for p in model.parameters() if p.ndim > 1] + [head.weight], "weight_decay": 5e-4},
        {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9)
    steps_per_epoch = len(images) // args.batch_size
    total = steps_per_epoch * args.epochs
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    step = 0
    model.train()
    for epoch in range(args.epochs):
        order = torch.randperm(len(images), generator=generator)
        for b in range(steps_per_epoch):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            batch = images[idx].float().sub_(127.5).div_(127.5)
            flip = torch.rand(len(idx), generator=generator) < 0.5
            batch[flip] = batch[flip].flip(-1)
            lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / total)) * min(1.0, (step + 1) / 20)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = F.cross_entropy(head(model(batch), labels[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % 25 == 0 or step == total:
                print(f"  {name} epoch {epoch} step {step}/{total} loss {loss.item():.3f} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    return model.eval(), time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="output folder of `ekd-data synth`")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--embedding-size", type=int, default=128)
    parser.add_argument("--models", default="small,large", help=f"comma-separated from {sorted(MODELS)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    images, labels, classes = _load_training_images(args.root)
    sets = {kind: load_bin(f"{args.root}/synth_{kind}.bin") for kind in VERIFICATION_SETS}
    print(f"{len(images)} training images, {classes} identities; sets {', '.join(sets)}")
    results: dict[str, dict] = {}
    for key in args.models.split(","):
        name, options = MODELS[key]
        probe = create_backbone(name, embedding_size=args.embedding_size, **options)
        params = sum(p.numel() for p in probe.parameters()) / 1e6
        model, seconds = train(name, options, images, labels, classes, args)
        row = {"backbone": name, "options": options, "params_m": round(params, 3), "train_s": round(seconds)}
        with torch.no_grad():
            for kind, (pair_images, issame) in sets.items():
                emb = extract_embeddings(model, pair_images, batch_size=128)  # fp32 (the default)
                result = verify(emb.embeddings, issame)
                row[kind] = {"accuracy": result.accuracy, "std": result.accuracy_std, "auc": result.auc}
        results[key] = row
        print(json.dumps({key: row}), flush=True)

    print(
        f"\n{args.epochs} epochs, batch {args.batch_size}, {args.threads} thread(s); "
        "verification accuracy (%):"
    )
    print("| model | backbone | params (M) | train (s) | " + " | ".join(f"synth_{k}" for k in sets) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(sets))
    for key, row in results.items():
        cells = " | ".join(f"{100 * row[k]['accuracy']:.1f} ± {100 * row[k]['std']:.1f}" for k in sets)
        print(
            f"| {key} | {row['backbone']} {row['options']} | {row['params_m']} | {row['train_s']} | {cells} |"
        )
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
