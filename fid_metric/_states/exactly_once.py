"""Exactly-once counting under DDP: which images of a batch count, given the size of the validation set.

A ``DistributedSampler`` deals the N samples of a set to W processes round-robin, the i-th sample of rank r
being position ``r + i * W``, and pads the last round by repeating samples when W does not divide N, always at
the tail of each rank's sequence. So rank r counts its first ``ceil((N - r) / W)`` images per side and drops
the rest (at most one): 1 and W processes then count every sample once.
"""

from __future__ import annotations

from typing import Any

import torch

from fid_metric._checks import checked_int
from fid_metric._states.accumulator import SIDE_NAMES
from fid_metric._warnings import warn_caller


def world_and_rank(group: Any | None = None) -> tuple[int, int]:
    """Size of ``group`` and this process's rank in it; (1, 0) without ``torch.distributed``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
    return 1, 0


def sampler_positions(first: int, count: int, world: int, rank: int) -> range:
    """Positions in the sampler's order of this process's images ``first .. first + count - 1``."""
    return range(rank + first * world, rank + (first + count) * world, world)


class SamplerQuota:
    """The images this process was given per side this epoch, and how many of the next batch count.

    Args:
        dataset_size: N, the validation samples per side per epoch; None counts every image given.

    Raises:
        ValueError: ``dataset_size`` is not a positive int or None.
    """

    def __init__(self, dataset_size: int | None = None) -> None:
        self.dataset_size = dataset_size
        self.seen = {"real": 0, "fake": 0}  # this process, this epoch, before any dropping

    @property
    def dataset_size(self) -> int | None:
        return self._dataset_size

    @dataset_size.setter
    def dataset_size(self, value: int | None) -> None:
        self._dataset_size = checked_int("dataset_size", value, 1, none=True)

    def counted(self, side: str, batch: int, world: int, rank: int) -> int:
        """How many of the next ``batch`` images of ``side`` count on ``rank`` of ``world``.

        Raises:
            ValueError: the process was given more images than a ``DistributedSampler`` deals it for
                ``dataset_size`` (``ceil(N / W)``, the padding repeat included; on one process exactly N).
        """
        if self.dataset_size is None:
            return batch
        quota = (self.dataset_size - rank + world - 1) // world
        dealt = (self.dataset_size + world - 1) // world  # what the sampler gives every rank, padding included
        seen = self.seen[side]
        if seen + batch > dealt:
            padding = f" (of which {dealt - quota} padding repeat)" if dealt > quota else ""
            raise ValueError(
                f"dataset_size={self.dataset_size} over {world} process(es) gives rank {rank} {dealt} "
                f"{SIDE_NAMES[side]} images per epoch{padding}, but it has been given {seen + batch}. "
                "Is dataset_size the size of the validation set, is reset() called each epoch, and is each "
                "batch passed to update() once per side?"
            )
        return max(0, min(batch, quota - seen))

    def advance(self, side: str, batch: int) -> None:
        """Record that ``batch`` more images of ``side`` were given (counted or dropped)."""
        self.seen[side] += batch

    def reset(self, keep_real: bool) -> None:
        """A new epoch; the real count stays when the real statistics do."""
        self.seen = {"real": self.seen["real"] if keep_real else 0, "fake": 0}

    def warn_if_not_covered(self, counted: dict[str, int]) -> None:
        """Warn for each side whose count over all processes is not ``dataset_size``."""
        if self.dataset_size is None:
            return
        for side, n in counted.items():
            if n != self.dataset_size:
                warn_caller(
                    f"dataset_size={self.dataset_size}, but {n} {SIDE_NAMES[side]} images were counted over all "
                    "processes: the validation loop did not cover the set exactly once (limit_val_batches? a sampler "
                    "with drop_last=True?), so this metric is not over the whole set."
                )
