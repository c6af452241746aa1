"""Process-group set-up and the collectives the trainers need; every function is a no-op in one process.

Launchers (torchrun, the deepspeed launcher) set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
without them we run as a single process and never touch torch.distributed.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group the launcher describes (gloo on CPU, nccl on CUDA) and pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_device = torch.device(f"cuda:{local_rank}" if device == "cuda" else device)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch_device.type == "cuda" else "gloo")
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def seed_everything(seed: int, rank_offset: int = 0) -> None:
    """Seed python, numpy and torch; ranks get distinct streams (dropout, masking) from one base seed."""
    seed = seed + rank_offset
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def all_reduce_sum(value: Tensor) -> Tensor:
    if world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(value: object, src: int = 0) -> object:
    """`value` of rank `src` on every rank (any picklable object; a no-op in one process)."""
    if world_size() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_with_grad(local: Tensor) -> Tensor:
    """Concatenate `local [N, ...]` from every rank along dim 0 (equal N on every rank), keeping the
    gradient of this rank's own slice: other ranks' slices are constants here, and each rank back-propagates
    its own part, so summing losses over ranks gives the full-batch gradient.
    """
    if world_size() == 1:
        return local
    gathered = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(gathered, local.detach().contiguous())
    gathered[rank()] = local
    return torch.cat(gathered, dim=0)


def all_gather_variable(local: Tensor) -> Tensor:
    """Like `all_gather_with_grad` for slices of different lengths (pads to the longest, then trims)."""
    if world_size() == 1:
        return local
    size = torch.tensor([local.shape[0]], device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    lengths = [int(s) for s in sizes]
    longest = max(lengths)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local.detach()
    gathered = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(gathered, padded)
    parts = [g[:n] for g, n in zip(gathered, lengths)]
    parts[rank()] = local
    return torch.cat(parts, dim=0)
