"""Run a function in 2 gloo processes on CPU and collect what each rank returns."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch_dist.destroy_process_group()


def run_gloo(fn: Callable[..., Any], *args: Any, world_size: int = 2) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes; return their results.

    ``fn`` must be importable (a module-level function) and return something ``torch.save`` can store.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _worker,
            args=(world_size, _free_port(), fn, args, out_dir),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        paths = [os.path.join(out_dir, f"rank{r}.pt") for r in range(world_size)]
        return [torch.load(path, weights_only=False) for path in paths]
