"""The command line on many processes: started by ``torchrun`` (or any launcher that sets its variables), each
process scores its share of the images and the metric's one sync combines them.

``torchrun --nproc_per_node=N -m fid_metric score A B`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; ``join_process_group`` joins the group they describe (NCCL for CUDA
devices, gloo otherwise). Process r of W takes the images at positions r, r + W, r + 2W, ... of each side,
exactly the positions a ``DistributedSampler`` would deal it, so every image counts once and the Inception
Score's splits, FID-infinity's groups and KID's subsets (all fixed by position) are the ones a single process
uses: the numbers equal the 1-process run's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")
_LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Processes:
    """This process's place: ``world`` processes, this one ``rank`` (0 prints), its ``device``."""

    world: int = 1
    rank: int = 0
    device: torch.device = torch.device("cpu")

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's items: positions ``rank, rank + world, ...``."""
        return list(items[self.rank :: self.world])

    def agree(self, failed: bool, counts: list[int]) -> tuple[bool, list[int]]:
        """Whether any process failed, and ``counts`` summed over the processes; one all_reduce, after which every
        process knows both (so all stop together instead of the others waiting in the metric's sync)."""
        if self.world == 1:
            return failed, counts
        summed = torch.tensor([float(failed), *map(float, counts)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(summed)
        return summed[0].item() > 0, [int(v) for v in summed[1:].tolist()]


def join_process_group(device: torch.device) -> Processes:
    """The launcher's process group, joined, with this process's device (``cuda:LOCAL_RANK`` for a CUDA
    ``device`` without an index); one process, not distributed, without a launcher.

    Raises:
        ValueError: the launcher's variables are incomplete or not numbers.
    """
    if "WORLD_SIZE" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Processes(device=device)
    missing = [name for name in _LAUNCHER_VARIABLES if name not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start the processes with torchrun.")
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, rank=rank, world_size=world)
    return Processes(world, rank, device)


def leave_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
