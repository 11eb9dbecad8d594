"""ekd.dist helpers are identities on one process (the multi-process cases live with their users)."""

import torch

from ekd import dist


def test_single_process_helpers_are_identity():
    x = torch.randn(4, 3, requires_grad=True)
    assert dist.world_size() == 1 and dist.rank() == 0 and not dist.is_distributed()
    y = dist.gather_with_grad(x)
    assert y is x
    assert dist.gather_nograd(x) is x
    assert torch.equal(dist.all_reduce_mean(x), x.detach())


def _gather_worker(rank: int, world_size: int) -> dict:
    torch.manual_seed(rank)
    x = torch.randn(3 + rank, 2, dtype=torch.float64, requires_grad=True)
    gathered = dist.gather_with_grad(x)
    weights = torch.arange(gathered.numel(), dtype=torch.float64).reshape(gathered.shape)
    (gathered * weights).sum().backward()
    return {"x": x.detach(), "gathered": gathered.detach(), "grad": x.grad}


def test_gather_with_grad_two_processes():
    from tests.ddp_utils import run_gloo

    results = run_gloo(_gather_worker)
    full = torch.cat([r["x"] for r in results])
    weights = torch.arange(full.numel(), dtype=torch.float64).reshape(full.shape)
    for r, res in enumerate(results):
        assert torch.equal(res["gathered"], full)
        rows = slice(0, 3) if r == 0 else slice(3, 7)
        # every rank computed the same loss, so the all-reduced gradient is world_size x d loss / d x
        assert torch.allclose(res["grad"], 2 * weights[rows])
