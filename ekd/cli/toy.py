"""``ekd-toy``: the angular-margin toy experiment (SphereFace, Fig. 2, on synthetic data).

A small MLP maps Gaussian blobs in 20-D (one blob per class) to 2-D features and is trained with
softmax, modified softmax (NormFace with scale ||x||), A-Softmax (SphereFace, m = 4) and ArcFace
from ``ekd.heads``. The features are drawn side by side: raw (top row) and projected on the unit
circle (bottom row), with each class centre's direction. Softmax separates classes by half-planes
through biases (features cannot be classified by angle alone), the normalised heads by angle, and
the margin heads leave empty angular gaps between classes.

    ekd-toy --output toy.png [--steps 400 --classes 8 --seed 0]

The toy shortens SphereFace's lambda annealing to the run's length (lambda reaches lambda_min after
60 % of the steps) and uses s = 16 for ArcFace, which suits 2-D features. Everything is CPU-only.
"""

from __future__ import annotations

import argparse
import math
import textwrap
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from ekd import heads

TOY_HEADS = ("softmax", "normface", "sphereface", "arcface")
TITLES = {
    "softmax": "softmax\nW x + b",
    "normface": "modified softmax (NormFace)\n||x|| cos θ",
    "sphereface": "A-Softmax (SphereFace, m=4)\n||x|| ψ(θ)",
    "arcface": "ArcFace (m=0.5)\ns cos(θ + m)",
    "cosface": "CosFace (m=0.35)\ns (cos θ - m)",
    "combined": "combined margin\ns (cos(m1 θ + m2) - m3)",
}


@dataclass
class ToyResult:
    """2-D features of the toy data after training with one head."""

    head: str
    features: np.ndarray  # N x 2
    labels: np.ndarray  # N
    centres: np.ndarray  # C x 2 (the head's weight)
    accuracy: float  # training accuracy of the margin-free logits
    min_angular_gap: float  # degrees: smallest angle between the feature sectors of neighbouring classes


def make_blobs(
    num_classes: int, per_class: int = 100, dim: int = 20, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs in ``dim``-D: class means N(0, 0.7^2 I), unit noise (classes overlap a little,
    so the network has to spread them out)."""
    generator = torch.Generator().manual_seed(seed)
    means = 0.7 * torch.randn(num_classes, dim, generator=generator)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    points = means[labels] + torch.randn(len(labels), dim, generator=generator)
    return points, labels


def toy_network(dim: int = 20, hidden: int = 64) -> nn.Module:
    """A small MLP ending in the 2-D feature layer (no activation after it, as FC1 in the paper)."""
    return nn.Sequential(
        nn.Linear(dim, hidden),
        nn.PReLU(hidden),
        nn.Linear(hidden, hidden),
        nn.PReLU(hidden),
        nn.Linear(hidden, 2),
    )


def toy_head_hparams(head: str, steps: int) -> dict:
    """Hyper-parameters of ``head`` for the toy (module docstring)."""
    if head == "sphereface":
        # lambda = base / (1 + gamma it) hits lambda_min = 5 after 60 % of the run
        return {"gamma": (1000.0 / 5.0 - 1.0) / max(1.0, 0.6 * steps)}
    if head in ("arcface", "cosface", "combined"):
        return {"s": 16.0}
    return {}


def _min_angular_gap(features: np.ndarray, labels: np.ndarray) -> float:
    """Smallest empty angle between consecutive classes around the circle (0 when sectors overlap)."""
    angles = np.arctan2(features[:, 1], features[:, 0])
    order = np.argsort(angles)
    sorted_angles, sorted_labels = angles[order], labels[order]
    gaps = np.diff(np.concatenate([sorted_angles, sorted_angles[:1] + 2 * math.pi]))
    changes = sorted_labels != np.roll(sorted_labels, -1)
    if changes.sum() != len(np.unique(labels)):  # one sector per class, or some class is split
        return 0.0
    return float(np.degrees(gaps[changes].min()))


def train_toy(head: str, steps: int = 400, classes: int = 8, seed: int = 0, lr: float = 0.01) -> ToyResult:
    """Train the toy network with ``head`` (full batch, Adam) and return its 2-D training features."""
    if steps < 1 or classes < 2:
        raise ValueError(f"the toy needs steps >= 1 and classes >= 2, got steps={steps}, classes={classes}")
    points, labels = make_blobs(classes, seed=seed)
    torch.manual_seed(seed)
    network = toy_network(points.shape[1])
    loss_fn = heads.RecognitionLoss(head, 2, classes, **toy_head_hparams(head, steps))
    optimiser = torch.optim.Adam([*network.parameters(), *loss_fn.parameters()], lr=lr)
    for _ in range(steps):
        loss, _ = loss_fn(network(points), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        features = network(points)
        accuracy = (loss_fn.margin_free_logits(features).argmax(1) == labels).float().mean().item()
    features_np, labels_np = features.numpy(), labels.numpy()
    return ToyResult(
        head=head,
        features=features_np,
        labels=labels_np,
        centres=loss_fn.centres().numpy(),
        accuracy=accuracy,
        min_angular_gap=_min_angular_gap(features_np, labels_np),
    )


def run_toy(
    heads_to_train: tuple[str, ...] = TOY_HEADS, steps: int = 400, classes: int = 8, seed: int = 0
) -> list[ToyResult]:
    """Train one toy model per head (same data and initialisation)."""
    return [train_toy(name, steps=steps, classes=classes, seed=seed) for name in heads_to_train]


def plot_toy(results: list[ToyResult]) -> Figure:
    """Raw 2-D features (top) and their directions on the unit circle (bottom), one column per head."""
    figure = Figure(figsize=(4.0 * len(results), 8.4), dpi=110, layout="constrained")
    axes = figure.subplots(2, len(results), squeeze=False)
    colours = _palette(int(results[0].labels.max()) + 1)
    for column, result in enumerate(results):
        top, bottom = axes[0, column], axes[1, column]
        radius = np.linalg.norm(result.features, axis=1)
        limit = float(np.percentile(radius, 99.5)) * 1.1
        unit = result.features / np.maximum(radius[:, None], 1e-12)
        directions = result.centres / np.maximum(np.linalg.norm(result.centres, axis=1, keepdims=True), 1e-12)
        for label, colour in enumerate(colours):
            mine = result.labels == label
            top.scatter(*result.features[mine].T, s=5, color=colour, alpha=0.6, linewidths=0)
            # jitter the radius per class so overlapping sectors stay visible
            ring = 1.0 + 0.035 * (label - len(colours) / 2) / len(colours)
            bottom.scatter(*(unit[mine] * ring).T, s=5, color=colour, alpha=0.6, linewidths=0)
            top.plot(
                [0, directions[label, 0] * limit], [0, directions[label, 1] * limit], color=colour, lw=1.2
            )
            bottom.plot(
                [0, directions[label, 0] * 1.15], [0, directions[label, 1] * 1.15], color=colour, lw=1.2
            )
        circle = np.linspace(0, 2 * math.pi, 200)
        bottom.plot(np.cos(circle), np.sin(circle), color="0.8", lw=0.8, zorder=0)
        top.set_xlim(-limit, limit)
        top.set_ylim(-limit, limit)
        bottom.set_xlim(-1.25, 1.25)
        bottom.set_ylim(-1.25, 1.25)
        top.set_title(TITLES.get(result.head, result.head), fontsize=11)
        bottom.set_title(
            f"accuracy {100 * result.accuracy:.1f} %, smallest angular gap {result.min_angular_gap:.1f}°",
            fontsize=9,
        )
        for ax in (top, bottom):
            ax.set_aspect("equal")
            ax.tick_params(labelsize=7)
            ax.axhline(0, color="0.9", lw=0.6, zorder=0)
            ax.axvline(0, color="0.9", lw=0.6, zorder=0)
    axes[0, 0].set_ylabel("2-D features (lines: class centre directions)", fontsize=9)
    axes[1, 0].set_ylabel("features projected on the unit circle", fontsize=9)
    figure.suptitle(
        "What the margin does: 2-D features of the same toy network trained with four losses", fontsize=12
    )
    return figure


def _palette(count: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def target_curves(
    theta: np.ndarray, head_names: tuple[str, ...] = ("normface", "sphereface", "cosface", "arcface")
) -> dict:
    """Target logit / scale as a function of theta for each head, computed by the heads themselves.

    Unit embeddings at angle theta from the target centre are fed to each head (SphereFace with
    lambda = 0, i.e. the pure psi(theta)); the target logit is divided by the head's scale.
    """
    centres = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    x = torch.tensor(np.stack([np.cos(theta), np.sin(theta)], 1), dtype=torch.float64)
    labels = torch.zeros(len(theta), dtype=torch.long)
    curves = {}
    for name in head_names:
        hparams = {"base": 0.0, "lambda_min": 0.0} if name == "sphereface" else {}
        head = heads.create(name, 2, 2, **hparams).double().eval()
        with torch.no_grad():
            head.weight.copy_(centres)
            logits = head(x, labels)[:, 0]
        scale = head.scale if getattr(head, "scale", None) else 1.0
        curves[name] = (logits / scale).numpy()
    return curves


EPILOG = textwrap.dedent(
    """\
    examples:
      ekd-toy --output toy.png
      ekd-toy --output toy.png --steps 800 --classes 10 --seed 1
      ekd-toy --output margins.png --heads normface cosface arcface
    """
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="ekd-toy",
        description="The angular-margin toy: 2-D features of one small network trained with softmax, "
        "modified softmax (NormFace), A-Softmax (SphereFace) and ArcFace, drawn side by side.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", default="toy.png", help="PNG file to write (default: toy.png)")
    parser.add_argument("--steps", type=int, default=400, help="training steps per head (default: 400)")
    parser.add_argument("--classes", type=int, default=8, help="number of classes (default: 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heads", nargs="+", default=list(TOY_HEADS), choices=heads.list_heads())
    args = parser.parse_args(argv)
    if args.steps < 1 or args.classes < 2:
        parser.error(f"--steps must be >= 1 and --classes >= 2, got {args.steps} and {args.classes}")
    results = run_toy(tuple(args.heads), steps=args.steps, classes=args.classes, seed=args.seed)
    plot_toy(results).savefig(args.output)
    for result in results:
        print(
            f"{result.head:>10}: accuracy {100 * result.accuracy:5.1f} %, "
            f"smallest angular gap {result.min_angular_gap:5.1f} deg"
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
