"""Class centres sharded across ranks: a Partial-FC-style model-parallel softmax (An et al. 2021).

With W ranks, rank r holds rows [start_r, start_r + C_r) of the centres (C_r = C // W, the first
C % W ranks one more). A training step:

1. all-gather the embeddings (``ekd.dist.gather_with_grad``) and the labels (``gather_nograd``);
2. every rank computes the head's logits of the global batch against its own rows, with the margin
   applied where the target class lives on this rank (``Head.compute_logits`` with local labels,
   -1 elsewhere);
3. the softmax normaliser of each row uses the all-reduced max and the all-reduced sum of
   exp(z - max); the target logit is all-reduced from the one rank that holds it; every rank gets
   the same loss, the mean cross-entropy over the global batch.

Optional sampling (``sample_rate < 1``, training only): each rank keeps all its positive classes
(those labelled in the global batch) and fills up to ``ceil(sample_rate * C_r)`` rows with random
negatives; the softmax then runs over the sampled classes only.

Gradients. With sampling off the loss and gradients equal those of the full single-process softmax
with the same head on the concatenated batch: each rank's centre rows receive exactly d loss / d W_r
(they are not replicated, so DDP must not average them: :meth:`ShardedClassifier.shard_` puts them
on DDP's ignore list), and the embedding gradient follows ``ekd.dist``'s convention (world size x the
exact gradient on the local rows before DDP averages the backbone gradients, i.e. exact after).

Lifecycle. The process group usually does not exist yet when a LightningModule is built, so the
module starts with all C rows (initialised identically on every rank from the shared seed) and
:meth:`shard_` keeps this rank's slice once the group is up (Lightning: in ``setup``/
``configure_model``, before optimisers are created and DDP wraps the model). It shards at once when
built inside an initialised group. ``state_dict`` stores the full C x D centres (an all-gather, so
every rank must call it, as Lightning does) and ``load_state_dict`` accepts full centres and keeps
the local slice: checkpoints do not depend on the world size.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as torch_dist
from torch import nn

from ekd import dist
from ekd.heads.base import Head, check_labels, create


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``factor`` (fixes the gradient scale across ranks)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, factor: float) -> torch.Tensor:  # type: ignore[override]
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.factor, None


def scale_grad(tensor: torch.Tensor, factor: float) -> torch.Tensor:
    """``tensor`` unchanged, with its gradient multiplied by ``factor`` on the way back."""
    return tensor if factor == 1 else _ScaleGrad.apply(tensor, factor)


def _all_reduce(tensor: torch.Tensor, op: torch_dist.ReduceOp) -> torch.Tensor:
    if dist.is_distributed():
        torch_dist.all_reduce(tensor, op=op)
    return tensor


class _DistributedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy over rows whose classes are spread over ranks (columns = this shard).

    The backward returns this shard's part of the exact gradient, (p - onehot) / N: no communication.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, local_labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        batch = logits.shape[0]
        row_max = logits.detach().max(dim=1).values
        _all_reduce(row_max, torch_dist.ReduceOp.MAX)
        exp = torch.exp(logits.detach() - row_max[:, None])
        row_sum = exp.sum(dim=1)
        _all_reduce(row_sum, torch_dist.ReduceOp.SUM)
        rows = (local_labels >= 0).nonzero().squeeze(1)
        cols = local_labels[rows]
        target = torch.zeros_like(row_max)
        target[rows] = logits.detach()[rows, cols]
        _all_reduce(target, torch_dist.ReduceOp.SUM)  # exactly one rank holds each row's target
        loss = (row_max + torch.log(row_sum) - target).mean()
        ctx.save_for_backward(exp, row_sum, rows, cols)
        ctx.batch = batch
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):  # type: ignore[override]
        exp, row_sum, rows, cols = ctx.saved_tensors
        grad = exp / row_sum[:, None]
        grad[rows, cols] -= 1.0
        return grad * (grad_loss / ctx.batch), None


class ShardedClassifier(nn.Module):
    """A recognition head whose centres are split over ranks; ``forward`` returns the CE loss."""

    def __init__(
        self, head: str, embedding_size: int, num_classes: int, sample_rate: float = 1.0, **head_hparams
    ) -> None:
        super().__init__()
        if not (isinstance(sample_rate, (int, float)) and 0.0 < sample_rate <= 1.0):
            raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate!r}")
        self.head: Head = create(head, embedding_size, num_classes, **head_hparams)
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.sample_rate = float(sample_rate)
        self.world_size = 1
        self.class_start, self.num_local = 0, num_classes
        # rows of the local shard used by the last training forward (all rows when not sampling)
        self.sampled_index: torch.Tensor | None = None
        self.register_state_dict_post_hook(_full_centres_state_dict_hook)
        self.register_load_state_dict_pre_hook(_local_slice_load_hook)
        if dist.is_distributed():
            self.shard_()

    @property
    def is_sharded(self) -> bool:
        return self.world_size > 1

    @property
    def weight(self) -> torch.Tensor:
        """This rank's rows of the centres."""
        return self.head.weight

    def shard_(self, root: nn.Module | None = None) -> ShardedClassifier:
        """Keep this rank's rows (no-op on one process or when already sharded).

        ``root``: the module DDP will wrap (the LightningModule); the shard's parameters are added to
        its ``_ddp_params_and_buffers_to_ignore`` so DDP neither broadcasts nor averages them. Call
        before creating optimisers.
        """
        world = dist.world_size()
        if world > 1 and not self.is_sharded:
            if self.num_classes < world:
                # an empty shard would leave a rank without a softmax normaliser term
                raise ValueError(
                    f"cannot shard {self.num_classes} classes over {world} ranks: need at least one per rank"
                )
            start, end = dist.shard_bounds(self.num_classes, world_size=world, rank=dist.rank())
            count = end - start
            head = self.head
            head.weight = nn.Parameter(head.weight.detach()[start : start + count].clone())
            if head.bias is not None:
                head.bias = nn.Parameter(head.bias.detach()[start : start + count].clone())
            head.num_classes = count
            self.world_size, self.class_start, self.num_local = world, start, count
        if root is not None and self.is_sharded:
            prefix = _qualified_name(root, self)
            names = [f"{prefix}{name}" for name, _ in self.named_parameters()]
            existing = list(getattr(root, "_ddp_params_and_buffers_to_ignore", []))
            torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                root, existing + [n for n in names if n not in existing]
            )
        return self

    def _check_ready(self) -> None:
        if dist.world_size() != self.world_size:
            raise RuntimeError(
                f"sharded class centres were split for world size {self.world_size} but the process group "
                f"has {dist.world_size()} ranks: call shard_() once the group is initialised (Lightning: in "
                "setup/configure_model), before the optimisers are created"
            )

    def _local_labels(self, labels: torch.Tensor) -> torch.Tensor:
        inside = (labels >= self.class_start) & (labels < self.class_start + self.num_local)
        return torch.where(inside, labels - self.class_start, torch.full_like(labels, -1)).long()

    def _sample(self, local_labels: torch.Tensor) -> torch.Tensor:
        """Sorted local row indices: every positive class plus random negatives up to the quota."""
        positives = torch.unique(local_labels[local_labels >= 0], sorted=True)
        quota = math.ceil(self.sample_rate * self.num_local)
        if positives.numel() >= quota:
            return positives
        priority = torch.rand(self.num_local, device=local_labels.device)
        priority[positives] = 2.0  # above any random draw: positives always survive the top-k
        return torch.topk(priority, quota).indices.sort().values

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the global batch (the same value on every rank)."""
        self._check_ready()
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"sharded head expects embeddings of shape N x {self.embedding_size}, "
                f"got {tuple(embeddings.shape)}"
            )
        check_labels(labels, embeddings.shape[0], self.num_classes, allow_missing=False)
        all_embeddings = dist.gather_with_grad(embeddings)
        local_labels = self._local_labels(dist.gather_nograd(labels))
        weight, bias = self.head.weight, self.head.bias
        if self.training and self.sample_rate < 1.0:
            index = self._sample(local_labels)
            weight = weight[index]
            bias = None if bias is None else bias[index]
            positive = local_labels >= 0
            local_labels = local_labels.clone()
            local_labels[positive] = torch.searchsorted(index, local_labels[positive])
            self.sampled_index = index
        else:
            self.sampled_index = None
        # every rank back-propagates only its shard's part of d loss / d embeddings; the gather's
        # backward sums those parts, and the world-size factor matches ekd.dist's convention.
        all_embeddings = scale_grad(all_embeddings, float(self.world_size))
        logits = self.head.compute_logits(all_embeddings, weight, local_labels, bias)
        return _DistributedCrossEntropy.apply(logits, local_labels)

    def full_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """All C centre rows (and bias) with gradients flowing back to this rank's shard.

        For losses each rank computes on its own local batch (e.g. KD): the shard receives the mean over
        ranks of their gradients, what DDP's averaging would give a replicated parameter.
        """
        self._check_ready()
        factor = 1.0 / self.world_size

        def gather(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else dist.gather_with_grad(scale_grad(tensor, factor))

        return gather(self.head.weight), gather(self.head.bias)

    def margin_free_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """N x C margin-free logits of the local embeddings against all centres."""
        weight, bias = self.full_weight()
        return self.head.compute_logits(embeddings, weight, None, bias)

    def centres(self) -> torch.Tensor:
        """All C x D centres (gathered, detached)."""
        self._check_ready()
        return dist.gather_nograd(self.head.weight.detach())

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, world_size={self.world_size}, class_start={self.class_start}, "
            f"num_local={self.num_local}, sample_rate={self.sample_rate}"
        )


def _qualified_name(root: nn.Module, target: nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return f"{name}." if name else ""
    raise ValueError("shard_(root=...): the sharded classifier is not a submodule of the given root module")


def _full_centres_state_dict_hook(
    module: ShardedClassifier, state_dict: dict, prefix: str, local_metadata
) -> None:
    # a collective: every rank must call state_dict() (Lightning's checkpointing does)
    if not module.is_sharded:
        return
    for name in ("weight", "bias"):
        key = f"{prefix}head.{name}"
        if key in state_dict:
            state_dict[key] = dist.gather_nograd(state_dict[key].detach())


def _local_slice_load_hook(
    module: ShardedClassifier,
    state_dict,
    prefix,
    local_metadata,
    strict,
    missing_keys,
    unexpected_keys,
    error_msgs,
) -> None:
    for name in ("weight", "bias"):
        key = f"{prefix}head.{name}"
        value = state_dict.get(key)
        if value is None:
            continue
        if value.shape[0] != module.num_classes:
            error_msgs.append(
                f"{key}: expected the full centres with {module.num_classes} rows, "
                f"got shape {tuple(value.shape)}"
            )
            continue
        state_dict[key] = value[module.class_start : module.class_start + module.num_local]
