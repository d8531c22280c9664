"""Data-parallel training on PyTorch distributed: gloo on CPUs, NCCL on GPUs.

Run any dyve trainer under ``torchrun --nproc_per_node N -m dyve.cli.main ...`` (or the
``dyve`` script): each process reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the
environment, joins the process group, and takes every ``WORLD_SIZE``-th row of each global
batch (every process draws the same shuffled batch from the same seed), so a run with N
processes follows the same schedule as one process with the same ``--batch-size``.
Gradients are averaged by :class:`~torch.nn.parallel.DistributedDataParallel` (or, for a
step DDP cannot hook, by :meth:`Dist.average_gradients` after each backward); only rank 0
validates and writes files, the others wait at a barrier.

Every process leaves together: :meth:`Dist.close` waits at a barrier before tearing the
group down, and each job calls it last on rank 0 (after the run is written) and as soon
as their share is done on the others. A process that tore its group down and exited
while a peer was still working aborted now and then in CI (gloo, ``terminate called
without an active exception``; not reproduced on the development machine): leaving
together, and freeing the group while the interpreter is still whole, removes both
suspects.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from dyve.data.core import ImageSet
from dyve.errors import DyveError

T = TypeVar("T")

# How long a collective may wait for a peer. Rank 0 alone evaluates and measures the run
# at the end while the others wait in ``close()``; that takes minutes on a CPU, and the
# 30-minute default leaves too thin a margin on a slow or busy machine.
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True on the process that validates and writes files."""
        return self.rank == 0

    def shard(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This process's rows of a global batch."""
        if self.world == 1:
            return tensors
        return tuple(t[self.rank :: self.world] for t in tensors)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` wrapped in DistributedDataParallel when distributed."""
        if self.world == 1:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Average gradients over the processes, for a model trained without DDP.

        For a training step that calls methods other than ``forward`` (D2NN's routed
        execution), which DDP cannot hook. A parameter that got a gradient on any process
        gets the mean (a process without one counts zero, as its rows added nothing); one
        that got none anywhere stays ``None``, as in a one-process step over the whole batch.
        """
        if self.world == 1:
            return
        ps = [p for p in params if p.requires_grad]
        if not ps:
            return
        present = torch.tensor([float(p.grad is not None) for p in ps], device=ps[0].device)
        dist.all_reduce(present)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in ps]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, seen in zip(ps, present.tolist(), strict=True):
            if seen:
                p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def gather_rows(
        self, make: Callable[[ImageSet], dict[str, torch.Tensor]], data: ImageSet
    ) -> dict[str, torch.Tensor]:
        """``make(data)`` computed in shards: each process takes every ``world``-th image,
        and every process gets the whole result back in dataset order (evaluation and
        feature caching split across processes). ``make`` returns per-row tensors."""
        if self.world == 1:
            return make(data)
        mine = make(data.subset(slice(self.rank, None, self.world)))
        n, per = len(data), -(-len(data) // self.world)
        dev = torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else None
        out = {}
        for key in sorted(mine):
            v = mine[key]
            pad = v.new_zeros((per, *v.shape[1:]), device=dev)
            pad[: len(v)] = v
            parts = [torch.empty_like(pad) for _ in range(self.world)]
            dist.all_gather(parts, pad)
            full = v.new_empty((n, *v.shape[1:]))
            for r, part in enumerate(parts):
                full[r :: self.world] = part[: len(range(r, n, self.world))].to(v.device)
            out[key] = full
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every process (itself when not distributed)."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait for every process (no-op when not distributed)."""
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        """Wait for every process, then leave the process group (see the module docstring:
        rank 0 calls this after writing the run, so the others wait for it)."""
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
            # free the group's C++ side (worker threads, finished work holding tensors) now,
            # while the interpreter is whole, rather than during its shutdown
            gc.collect()


def init(batch_size: int | None = None) -> Dist:
    """Join the process group that ``torchrun`` describes (one process: no group).

    ``batch_size``, when given, must split evenly over the processes.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if batch_size is not None and batch_size % world:
        raise DyveError(f"--batch-size {batch_size} must be a multiple of the {world} processes")
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return Dist(rank, world, local)
