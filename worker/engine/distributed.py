"""Data-parallel training over several processes (GPUs with NCCL, or CPUs with gloo), via torchrun.

Each rank trains on its own share of the B parallel streams (rows rank*B/W .. (rank+1)*B/W of every
batch) and DistributedDataParallel averages the gradients, so W ranks with B/W rows each take the same
step as one process with B rows. Checkpoints hold the hidden state of all B rows, gathered to rank 0,
so a run can resume with any number of ranks. Only rank 0 reports progress and writes files.

The ranks are started by torchrun (`python -m worker.engine.training_run SPEC.json`), or by the
training child through `launch()`; either way each builds its Trainer with training_run.build_trainer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> DistContext:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a (B, T) batch."""
        if not self.enabled:
            return batch
        rows = batch.shape[0] // self.world_size
        return batch[self.rank * rows : (self.rank + 1) * rows]

    def gather_rows(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Concatenate every rank's (layers, rows, H) state along rows, in rank order."""
        if not self.enabled:
            return tensors
        gathered = []
        for t in tensors:
            parts = [torch.empty_like(t) for _ in range(self.world_size)]
            dist.all_gather(parts, t.contiguous())
            gathered.append(torch.cat(parts, dim=1))
        return gathered

    def shard_rows(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        if not self.enabled:
            return tensors
        rows = tensors[0].shape[1] // self.world_size
        return [t[:, self.rank * rows : (self.rank + 1) * rows].contiguous() for t in tensors]

    def mean(self, value: float, device: torch.device) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.item() / self.world_size

    def from_main(self, value):
        """Rank 0's value on every rank (so that all ranks stop, evaluate and save together)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def setup_process_group(training: dict) -> dict:
    """Join the group torchrun set up (NCCL on GPUs, gloo on CPUs); returns `training` for this rank."""
    cuda = torch.cuda.is_available() and training.get("device", "auto") != "cpu"
    training = dict(training)
    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        training["device"] = f"cuda:{local_rank}"
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return training


def is_main_rank() -> bool:
    return dist.get_rank() == 0


def leave_process_group(finished: bool) -> None:
    """Leave together: a rank that tears down gloo while another still talks to it can abort
    ("terminate called without an active exception"), so finished ranks wait for each other first."""
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def launch(nprocs: int, entrypoint, *args):
    """Run `entrypoint(*args)` in `nprocs` ranks on this machine with torchrun's own launcher (the API
    behind the `torchrun` command), and return rank 0's return value. Arguments reach the ranks through
    spawn, so multiprocessing queues and events may be among them."""
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nprocs, run_id=uuid.uuid4().hex,
        rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,  # a failed rank fails the attempt; the job queue decides about retries
        start_method="spawn",
    )
    return elastic_launch(config, entrypoint)(*args)[0]
