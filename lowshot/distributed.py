"""Data-parallel processes under `torchrun`: NCCL on GPUs, gloo on CPUs; one process is the plain case.

`setup` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK). Rank 0 writes every file.
Shutdown is a barrier and nothing else: on this machine `destroy_process_group()` with gloo aborts
at exit in 4 of 12 runs, while leaving the group to the interpreter's exit never did
(reference/environment.md §6); this module's barrier-only shutdown exited cleanly in 12 of 12
2-process torchrun runs (DDP backward, all_sum, barrier).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import List, Tuple

import numpy as np
import torch
import torch.distributed as dist

from lowshot.runtime import pick_device


@dataclass(frozen=True)
class Dist:
    """This process's place among `world` data-parallel processes."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Tuple[Dist, torch.device]:
    """Join torchrun's process group if there is one; returns (Dist, this process's device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = pick_device(device)
    if world == 1:
        return Dist(), dev
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return Dist(dist.get_rank(), dist.get_world_size()), dev


def wrap(model: torch.nn.Module, ctx: Dist, device: torch.device) -> torch.nn.Module:
    """`model` inside DistributedDataParallel when there are several processes."""
    if ctx.world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_sum(values: List[float], ctx: Dist, device: torch.device) -> List[float]:
    """Element-wise sum of `values` over all processes (float64)."""
    if ctx.world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers(model: torch.nn.Module, ctx: Dist) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every process, so all evaluate one model."""
    if ctx.world > 1:
        for b in model.buffers():
            dist.broadcast(b, 0)


def shard(num_rows: int, batch_size: int, ctx: Dist) -> np.ndarray:
    """This process's rows when `num_rows` rows are cut into batches and the batches into `world` contiguous runs.

    Every batch is one a single process would also form, so results equal the single-process ones.
    """
    batches = np.array_split(np.arange(-(-num_rows // batch_size)), ctx.world)[ctx.rank]
    return np.arange(num_rows)[batches[0] * batch_size:(batches[-1] + 1) * batch_size] if len(batches) else np.arange(0)


def barrier(ctx: Dist) -> None:
    if ctx.world > 1:
        dist.barrier()
