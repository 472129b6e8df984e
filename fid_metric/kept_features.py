"""``KeptFeatures``: the accumulator of what needs the features themselves (Precision/Recall, KID), not their sums.

Registered only when such a number is asked for. Each side's features are kept in float32 (the network's own
dtype, so nothing is rounded), on the metric's device or, with ``on_cpu``, in host memory: ``N * d * 4`` bytes
per side (50,000 x 2048: 410 MB). They are not metric states: a checkpoint holds the sums, not the features
(``compute()`` then refuses, since the kept features no longer match the counts), and the one all_reduce of the
sums carries only how many each process holds. Under DDP ``fid_metric.sync.gather_rows`` gathers them at
``compute()`` in one all_gather per side, in the sampler's order, so that every process (and one process over
the same data) sees the same sequence: row i of rank r is sample ``r + i * W`` (``fid_metric.exactly_once``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fid_metric.accumulators import SIDES, Registered


@dataclass(frozen=True)
class KeptFeatures:
    """Per side, the ``(n, dim)`` float32 features of ``output``, in the order this process was given them
    (``metric._kept[side]``: a list of batches)."""

    output: str
    dim: int
    on_cpu: bool = False

    def register(self, metric: Any, keep_real: bool) -> Registered:
        metric._kept = {side: [] for side in SIDES}
        return Registered()

    def home(self, metric: Any) -> torch.device:
        """Where the features are kept: the CPU with ``on_cpu``, else the metric's device."""
        return torch.device("cpu") if self.on_cpu else metric.device

    def add(self, metric: Any, side: str, outputs: dict[str, Tensor], positions: range) -> None:
        # float64 from float32 features: exact both ways
        metric._kept[side].append(outputs[self.output].to(self.home(metric), torch.float32))

    def local(self, metric: Any, side: str) -> Tensor:
        """This process's ``(n, dim)`` float32 features of ``side``, concatenated once (the batches are then
        replaced by the one tensor, so repeated calls copy nothing)."""
        batches = metric._kept[side]
        if len(batches) != 1:
            joined = torch.cat(batches) if batches else torch.zeros(0, self.dim, device=self.home(metric))
            metric._kept[side] = batches = [joined]
        return batches[0]

    def features(self, metric: Any, side: str) -> Tensor:
        """The ``(N, dim)`` float32 features of ``side`` over all processes (gathered by the metric's last sync;
        this process's alone when it did not sync), in the sampler's order.

        Raises:
            RuntimeError: they are not as many as the metric's statistics count (sums loaded from a checkpoint
                or merged from a dict, which hold no features).
        """
        synced = metric._is_synced and side in metric._kept_synced
        rows = metric._kept_synced[side] if synced else self.local(metric, side)
        counted = metric._gaussian.sums(metric, side)[0]
        if len(rows) != counted:
            raise RuntimeError(
                f"{len(rows)} {'real' if side == 'real' else 'generated'} features are kept but the statistics "
                f"count {counted} images: checkpoints and merge_state dicts carry the sums, not the features "
                "that precision/recall and KID need. Feed those images to update() again."
            )
        return rows
