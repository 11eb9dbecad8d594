"""The few distributed helpers shared by heads, distillation objectives and evaluation.

Gradient convention of :func:`gather_with_grad`: the backward pass sums the incoming gradient over
ranks (all-reduce) and returns this rank's rows. Every rank computes the same loss on the gathered
batch, so after DDP averages parameter gradients over ranks, each parameter receives exactly the
gradient of that loss as one process would compute it on the concatenated batch. No hidden
world-size factor: callers that want the official EKD behaviour multiply explicitly.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


def launch_rank() -> int:
    """This process's global rank as its launcher set it, before any process group exists: ``RANK``
    (torchrun), ``SLURM_PROCID`` in a SLURM job with several tasks, Lightning's DDP launcher's
    ``NODE_RANK`` / ``LOCAL_RANK`` (rank = node x ``LOCAL_WORLD_SIZE`` + local), else 0.

    Used for work that one process of a job must do before training starts (taking the run folder's
    lock, checking inputs); ranks > 0 skip it.
    """
    import os

    env = os.environ
    if env.get("RANK", "").isdigit():
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_PROCID", "").isdigit():
        return int(env["SLURM_PROCID"])
    local, node = int(env.get("LOCAL_RANK", "0") or 0), int(env.get("NODE_RANK", "0") or 0)
    return node * int(env.get("LOCAL_WORLD_SIZE", "1") or 1) + local


def shard_bounds(num_items: int, world_size: int, rank: int) -> tuple[int, int]:
    """``(start, end)``: the contiguous block ``[start, end)`` of ``num_items`` that rank ``rank`` owns.

    The blocks of ranks 0 .. world_size - 1 tile ``[0, num_items)`` in rank order; each holds
    ``num_items // world_size`` items and the first ``num_items % world_size`` ranks one more (e.g. 10
    over 3 ranks: 4, 3, 3). A rank may get an empty block when ``num_items < world_size``; callers that
    need at least one item per rank (sharded class centres) check that themselves. One convention for
    every sharded thing (class centres, teacher-cache building, evaluation embeddings), so a rank's
    slices always line up.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if num_items < 0:
        raise ValueError(f"cannot shard a negative number of items ({num_items})")
    base, extra = divmod(num_items, world_size)
    start = base * rank + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _all_gather_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """All-gather tensors whose first dimension may differ between ranks."""
    tensor = tensor.contiguous()
    local_size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(local_size) for _ in range(world_size())]
    torch_dist.all_gather(sizes, local_size)
    sizes_int = [int(s.item()) for s in sizes]
    max_size = max(sizes_int)
    padded = tensor
    if tensor.shape[0] < max_size:
        pad = tensor.new_zeros((max_size - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, pad], dim=0)
    buffers = [torch.empty_like(padded) for _ in range(world_size())]
    torch_dist.all_gather(buffers, padded)
    return [buf[:n] for buf, n in zip(buffers, sizes_int)]


def gather_nograd(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank in rank order (no gradient). Identity on one process."""
    if not is_distributed():
        return tensor
    with torch.no_grad():
        return torch.cat(_all_gather_tensors(tensor), dim=0)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = _all_gather_tensors(tensor)
        ctx.sizes = [p.shape[0] for p in parts]
        ctx.rank = rank()
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad_output.contiguous().clone()
        torch_dist.all_reduce(grad, op=torch_dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank (rank order); gradients flow back to the local rows.

    See the module docstring for the gradient scale. Identity on one process.
    """
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (no gradient); identity on one process."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
    return out / world_size()


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast from ``src``; no-op on one process."""
    if is_distributed():
        torch_dist.broadcast(tensor, src=src)
    return tensor
