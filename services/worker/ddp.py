"""Data parallelism: `devices > 1` → one process per device under DistributedDataParallel.

gloo on CPU, nccl on CUDA. Rank 0 emits the events and writes the artifacts; every rank
trains on its shard, and epoch metrics are summed across ranks so all of them take the same
best-epoch and early-stopping decisions.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

INIT_TIMEOUT = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class DistInfo:
    """Where this process sits among the job's processes."""

    rank: int = 0
    world_size: int = 1
    init_method: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def free_init_method() -> str:
    """A TCP rendezvous address on a free local port, chosen by the parent."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


@contextmanager
def process_group(info: DistInfo, device: torch.device) -> Iterator[None]:
    """Join the job's process group for the duration of the block (no-op for one process)."""
    if not info.enabled:
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        init_method=info.init_method,
        rank=info.rank,
        world_size=info.world_size,
        timeout=INIT_TIMEOUT,
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def all_sum(info: DistInfo, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Sums across ranks (in one collective) of same-device tensors; identity for one process."""
    if not info.enabled:
        return list(tensors)
    flat = torch.cat([t.reshape(-1).double() for t in tensors])
    dist.all_reduce(flat)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].reshape(t.shape).to(t.dtype))
        start += t.numel()
    return out


def all_max(info: DistInfo, tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum across ranks; identity for one process."""
    if not info.enabled:
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
