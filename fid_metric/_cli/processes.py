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

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from fid_metric._cli.parser import JOIN_TIMEOUT

T = TypeVar("T")
_LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Processes:
    """This process's place: ``world`` processes, this one ``rank`` (0 prints), its ``device``, and ``group``, the
    process group of the data's collectives (None for one process)."""

    world: int = 1
    rank: int = 0
    device: torch.device = torch.device("cpu")
    group: Any = None

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's items: positions ``rank, rank + world, ...``."""
        return list(items[self.rank :: self.world])

    def agree(self, failed: bool, counts: list[int]) -> tuple[bool, list[int]]:
        """Whether any process failed, and ``counts`` summed over the processes; one all_reduce, after which every
        process knows both (so all stop together instead of the others waiting in the metric's sync)."""
        if self.world == 1:
            return failed, counts
        summed = torch.tensor([float(failed), *map(float, counts)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(summed, group=self.group)
        return summed[0].item() > 0, [int(v) for v in summed[1:].tolist()]


def join_process_group(device: torch.device, join_timeout: float = JOIN_TIMEOUT) -> Processes:
    """The launcher's processes, joined, with this process's device (``cuda:LOCAL_RANK`` for a CUDA ``device``
    without an index); one process, not distributed, without a launcher (no ``WORLD_SIZE``, or 1).

    Every launcher variable is checked before anything waits on it. The processes then meet in a gloo group
    whose rendezvous gives up after ``join_timeout`` seconds (a missing peer, a wrong ``MASTER_ADDR``), and the
    data's collectives run in a group of their own (NCCL for CUDA devices, gloo otherwise) with torch's default
    timeout, which a long run needs.

    Raises:
        ValueError: a launcher variable is missing, not a number, or out of range (``0 <= RANK < WORLD_SIZE``), or
            the processes did not all join within ``join_timeout`` seconds; the message says which and what to do.
    """
    if "WORLD_SIZE" not in os.environ:
        return Processes(device=device)
    world = _launcher_int("WORLD_SIZE", 1)
    if world == 1:
        if "RANK" in os.environ:
            _launcher_int("RANK", 0, 0)
        return Processes(device=device)
    missing = [name for name in _LAUNCHER_VARIABLES if name not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start the processes with torchrun.")
    rank = _launcher_int("RANK", 0, world - 1)
    local_rank = _launcher_int("LOCAL_RANK", 0) if "LOCAL_RANK" in os.environ else rank
    _launcher_int("MASTER_PORT", 1, 65535)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        timeout = datetime.timedelta(seconds=join_timeout)
        try:
            torch.distributed.init_process_group("gloo", rank=rank, world_size=world, timeout=timeout)
        except RuntimeError as err:  # torch's DistStoreError and DistNetworkError are RuntimeErrors
            where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
            raise ValueError(
                f"process {rank} of {world} could not join the others at {where} within {join_timeout:g} s "
                f"({' '.join(str(err).split())[:300]}): start all {world} processes with one torchrun command, "
                "with the same MASTER_ADDR and MASTER_PORT, or raise --join-timeout"
            ) from err
    group = torch.distributed.new_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Processes(world, rank, device, group)


def _launcher_int(name: str, minimum: int, maximum: int | None = None) -> int:
    """The launcher variable ``name`` as an int in ``[minimum, maximum]``, or ``ValueError`` naming it."""
    text = os.environ[name]
    value = int(text) if text.strip().lstrip("-").isdigit() else None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name}={text!r} is not an integer {bounds}: start the processes with torchrun.")
    return value


def leave_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
