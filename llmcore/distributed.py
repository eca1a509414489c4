"""Training on several processes with PyTorch's distributed engine, as launched by torchrun:

    torchrun --nproc_per_node 4 -m llmcore train --data chats.jsonl --models models --max-minutes 30

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; each process then trains a DistributedDataParallel replica
on its own share of the batches (NCCL on GPUs, one GPU per process; gloo on CPUs), all agree on when to
stop, and rank 0 alone evaluates and writes the version. Without those variables everything is a no-op:
one process, the model itself.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None  # this rank's device when distributed

    @classmethod
    def from_env(cls, device_setting: str = "auto") -> Distributed:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device_setting != "cpu"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return cls(rank, world_size, torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world_size == 1:
            return model
        ids = [self.device.index] if self.device is not None and self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def share(self, batches: Sequence[T]) -> Sequence[T]:
        """This rank's batches: every world_size-th, the same count on every rank (a rank with one more would wait
        forever for the others' gradients), and at least one (small data is repeated rather than left out)."""
        if self.world_size == 1 or not batches:
            return batches
        count = self.steps(len(batches))
        return [batches[(self.rank + i * self.world_size) % len(batches)] for i in range(count)]

    def steps(self, num_batches: int) -> int:
        """Steps per epoch on each rank."""
        return num_batches if self.world_size == 1 else max(1, num_batches // self.world_size)

    def agree(self, value: float) -> float:
        """The largest value across ranks (training progress: every rank stops at the same step)."""
        return self._reduce(value, torch_dist.ReduceOp.MAX)

    def total(self, value: float) -> float:
        return self._reduce(value, torch_dist.ReduceOp.SUM)

    def _reduce(self, value: float, op) -> float:
        if self.world_size == 1:
            return value
        tensor = torch.tensor([float(value)], device=self.device if self.device is not None and self.device.type == "cuda" else "cpu")
        torch_dist.all_reduce(tensor, op=op)
        return tensor.item()

    def close(self) -> None:
        if self.world_size > 1 and torch_dist.is_initialized():
            torch_dist.barrier()
            torch_dist.destroy_process_group()
