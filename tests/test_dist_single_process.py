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
