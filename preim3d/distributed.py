"""Several processes on one host, started by `torchrun --nproc_per_node=N`: who am I, on which device.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE (and MASTER_ADDR / MASTER_PORT, where the processes
meet); without them there is one process and nothing is initialised. The process group runs NCCL
between GPUs and gloo between CPU processes. Python objects (checkpoint states, per-photo reports)
always travel over a gloo group: they live on the CPU, and gloo does not tie a waiting process to
NCCL's watchdog, so a process that finishes its share early can wait for the others.

    processes = start_processes(device)           # Processes(rank, world_size, local_rank, device)
    mine = processes.shard(items)                 # this process's share, the same whatever N
    everything = processes.gather(my_results)     # a list of every process's results on rank 0
    processes.close()
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Batch work waits at the end for the slowest process; training synchronises every step.
OBJECT_TIMEOUT = datetime.timedelta(hours=24)


def default_device() -> torch.device:
    """CUDA if available, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class Processes:
    """This process's place among those torchrun started (one process when it did not)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # whether `start_processes` created the process group (close() ends it)
    objects_group: object = None  # the gloo group Python objects travel over

    @property
    def main(self) -> bool:
        """The first process: the one that talks and writes shared files."""
        return self.rank == 0

    def shard(self, items: Sequence, chunk: int = 1) -> list:
        """This process's share of `items`: consecutive chunks of `chunk` items dealt round-robin.

        Chunk k (items k*chunk ... k*chunk + chunk - 1) goes to process k mod world_size, so the
        chunks themselves do not depend on how many processes there are.
        """
        return [item for k, item in enumerate(items) if (k // chunk) % self.world_size == self.rank]

    def gather(self, obj) -> list | None:
        """Every process's `obj`, in rank order, on the first process; None on the others."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size if self.main else None
        dist.gather_object(obj, out, dst=0, group=self.objects_group)
        return out

    def broadcast(self, obj):
        """The first process's `obj`, on every process."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.objects_group)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier(group=self.objects_group)

    def close(self) -> None:
        """Leave the process group if `start_processes` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def start_processes(device=None, timeout: datetime.timedelta | None = None) -> Processes:
    """Join the processes torchrun started (if any) and pick this one's device.

    device: None for the default (CUDA, one GPU per process under torchrun; MPS or CPU alone),
    "cuda" for cuda:LOCAL_RANK, or an explicit device. timeout: how long a collective operation may
    wait (default torch's: 10 minutes for NCCL, 30 for gloo).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = process_device(device, local_rank, world)
    if world <= 1:
        return Processes(device=device)
    created = not dist.is_initialized()
    if created:
        kwargs = {} if timeout is None else {"timeout": timeout}
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device, **kwargs)
        else:
            dist.init_process_group("gloo", **kwargs)
    objects = dist.new_group(backend="gloo", timeout=OBJECT_TIMEOUT) if dist.get_backend() != "gloo" else None
    return Processes(dist.get_rank(), dist.get_world_size(), local_rank, device, created, objects)


def process_device(device, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device of one process: as given, with "cuda" meaning this process's GPU under torchrun."""
    if device is None:
        device = default_device() if world_size == 1 else "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device
