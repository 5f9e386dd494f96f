"""This process's place in a torchrun job, and the few collective calls training needs.

World size 1 is plain single-process training; every helper here is then a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pneumo.errors import ConfigError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        """Read the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE)."""
        try:
            return cls(
                rank=int(os.environ.get("RANK", "0")),
                world_size=int(os.environ.get("WORLD_SIZE", "1")),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
            )
        except ValueError as exc:
            raise ConfigError(
                f"RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers ({exc}): "
                "start distributed training with torchrun"
            ) from None

    def device(self, device: str) -> str:
        """One GPU per process on a node: cuda -> cuda:LOCAL_RANK."""
        if self.enabled and device == "cuda":
            return f"cuda:{self.local_rank}"
        return device


@contextmanager
def process_group(ddp: Distributed, device_type: str) -> Iterator[None]:
    """Join torchrun's process group (nccl for CUDA training, gloo otherwise) for the training."""
    if not ddp.enabled or dist.is_initialized():
        yield
        return
    if device_type == "cuda":
        torch.cuda.set_device(ddp.local_rank)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def broadcast_from_main(value: Any, ddp: Distributed) -> Any:
    """Rank 0's ``value`` on every rank (early stop, the final result)."""
    if not ddp.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def global_mean_and_sum(loss: torch.Tensor, count: torch.Tensor, ddp: Distributed) -> tuple:
    """The global batch's mean loss and summed count, so all ranks judge divergence alike."""
    if not ddp.enabled:
        return loss, count
    totals = torch.stack([loss.float(), count.float()])
    dist.all_reduce(totals)
    return totals[0] / ddp.world_size, totals[1]


def barrier(ddp: Distributed) -> None:
    if ddp.enabled:
        dist.barrier()
