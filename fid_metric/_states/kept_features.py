"""``KeptFeatures``: the accumulator of what needs the features themselves (Precision/Recall, KID), not their sums.

Registered only when such a number is asked for. Its states are torchmetrics list states, ``real_features`` and
``fake_features`` (the names of torchmetrics' ``KernelInceptionDistance``): per side, the batches of features in
the order this process was given them. Being states, they follow the metric's life cycle like its sums:
``reset()`` clears them (the real ones stay with ``reset_real_features=False``), ``merge_state`` appends the
other metric's, ``load_state_dict`` replaces them (the real ones are in ``state_dict()`` exactly when the real
sums are), a compute group of torchmetrics' ``MetricCollection`` shares them. Each batch is kept in the dtype
that holds it exactly: float32 for the Inception network's float32 features (and half-precision or small-integer
outputs), float64 for a custom module's float64 or wide-integer outputs. Memory: ``N * d * 4`` bytes per side in
float32 (50,000 x 2048: 410 MB), on the metric's device or, with ``on_cpu``, in host memory.

Under DDP the metric's one all_reduce carries how many rows each process holds, then one all_gather per side
(``fid_metric._states.sync.gather_rows``, in float64) puts every process's rows in the sampler's order, so that every
process (and one process over the same data) sees the same sequence: row i of rank r is sample ``r + i * W``
(``fid_metric._states.exactly_once``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics import Metric

from fid_metric._states.accumulator import SIDE_NAMES, SIDES, Accumulator, State, state

# Output dtypes whose every value a float32 holds exactly; anything else (float64, int32, int64) is kept in float64.
_EXACT_IN_FLOAT32 = (torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.int8, torch.int16, torch.bool)


def kept_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype that keeps features of ``dtype`` exactly: float32 where that suffices, else float64."""
    return torch.float32 if dtype in _EXACT_IN_FLOAT32 else torch.float64


@dataclass(frozen=True)
class KeptFeatures(Accumulator):
    """Per side, the list state ``{side}_features`` of ``(n_i, dim)`` batches of ``output``, float32 or float64;
    ``count_of``: the ``GaussianSums`` whose ``{side}_{count_of}_num_samples`` counts the same images."""

    output: str
    dim: int
    on_cpu: bool = False
    count_of: str = "features"

    @staticmethod
    def state(side: str) -> str:
        return f"{side}_features"

    def defaults(self) -> dict[str, State]:
        return {self.state(side): [] for side in SIDES}

    def real_states(self) -> tuple[str, ...]:
        return (self.state("real"),)

    def home(self, metric: Metric) -> torch.device:
        """Where the features are kept: the CPU with ``on_cpu``, else the metric's device."""
        return torch.device("cpu") if self.on_cpu else metric.device

    def row_template(self, metric: Metric, name: str) -> Tensor:
        """An empty ``(0, dim)`` float32 tensor where the features live: what incoming rows are checked against."""
        return torch.zeros(0, self.dim, device=self.home(metric))

    def placed(self, metric: Metric, name: str, value: State, device: torch.device) -> State:
        return [rows.to(self.home(metric)) for rows in value]

    def add(self, metric: Metric, side: str, outputs: dict[str, Tensor], positions: range) -> None:
        x = outputs[self.output]
        getattr(metric, self.state(side)).append(x.to(self.home(metric), kept_dtype(x.dtype)))

    def rows(self, metric: Metric, name: str) -> Tensor:
        """The ``(n, dim)`` features the state ``name`` holds now (after a sync: every process's, gathered),
        concatenated once: the list is then that one tensor, changed in place so that nothing else changes."""
        batches: list[Tensor] = getattr(metric, name)
        if len(batches) != 1:
            joined = torch.cat(batches) if batches else self.row_template(metric, name)
            batches[:] = [joined]
        return batches[0]

    def features(self, metric: Metric, side: str) -> Tensor:
        """The ``(N, dim)`` features of ``side``, over all processes when the metric is synced, in the sampler's order.

        Raises:
            RuntimeError: they are not as many as the FID statistics count, which only a state assembled by hand
                (a ``merge_state`` dict or a checkpoint whose rows and counts disagree) can cause.
        """
        rows = self.rows(metric, self.state(side))
        counted = int(state(metric, f"{side}_{self.count_of}_num_samples"))
        if len(rows) != counted:
            raise RuntimeError(
                f"{len(rows)} {SIDE_NAMES[side]} features are kept but the statistics count {counted} images: the "
                "states were assembled from parts that do not belong together (a merge_state dict or a checkpoint "
                "whose features and sums differ). Feed the images to update() again."
            )
        return rows

    def check_incoming(self, states: Mapping[str, object], what: str) -> None:
        """Raise ``ValueError`` where a side's incoming rows are not as many as its incoming count says."""
        for side in SIDES:
            rows, count = states.get(self.state(side)), states.get(f"{side}_{self.count_of}_num_samples")
            if isinstance(rows, list) and isinstance(count, Tensor):
                n = sum(len(part) for part in rows)
                if n != int(count):
                    raise ValueError(
                        f"{what} holds {n} {side} feature rows but counts {int(count)} {side} images: its features "
                        "and its sums do not belong together, so nothing was loaded or merged."
                    )
