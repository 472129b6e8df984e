"""Accumulators of Gaussian statistics: feature sums and outer-product sums, for means and covariances.

* ``GaussianSums``: per side, one output's count, sum and outer-product sum (FID; sFID on ``mixed_6/conv``);
* ``GroupSums``: the generated features' sums in G groups, for FID at G sample sizes (FID-infinity) and the
  jackknife standard error.

Every state is a sum over images, so the metric's one all_reduce combines them exactly. The image at position j
of the sampler's order belongs to group ``j % groups``; positions are counted as a ``DistributedSampler`` deals
them, so membership is the same on 1 or W processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics import Metric

from fid_metric._functional.covariance import mean_and_covariance
from fid_metric._functional.distance import CovarianceFactor, sqrt_factor
from fid_metric._states.accumulator import SIDES, Accumulator, State, add_outer_products, as_float64, index_on, state

_F64 = torch.float64


@dataclass(frozen=True)
class GaussianSums(Accumulator):
    """Per side, ``{side}_{name}_sum`` ``(d,)``, ``{side}_{name}_cov_sum`` ``(d, d)`` float64 and, unless another
    accumulator counts the same images (``count_of``), ``{side}_{name}_num_samples`` int64, of ``output``."""

    name: str
    output: str
    dim: int
    count_of: str | None = None  # the accumulator whose count states count these images too
    extra_names: tuple[str, str] | None = None  # the names of its mean and covariance in statistics files

    def defaults(self) -> dict[str, State]:
        states: dict[str, State] = {}
        for side in SIDES:
            states[f"{side}_{self.name}_sum"] = torch.zeros(self.dim, dtype=_F64)
            states[f"{side}_{self.name}_cov_sum"] = torch.zeros(self.dim, self.dim, dtype=_F64)
            if self.count_of is None:
                states[f"{side}_{self.name}_num_samples"] = torch.tensor(0, dtype=torch.int64)
        return states

    def real_states(self) -> tuple[str, ...]:
        names = (f"real_{self.name}_sum", f"real_{self.name}_cov_sum")
        return names if self.count_of is not None else (*names, f"real_{self.name}_num_samples")

    def symmetric_states(self) -> frozenset[str]:
        return frozenset(f"{side}_{self.name}_cov_sum" for side in SIDES)

    def add(self, metric: Metric, side: str, outputs: dict[str, Tensor], positions: range) -> None:
        total = state(metric, f"{side}_{self.name}_sum")
        x = as_float64(outputs[self.output], total)
        add_outer_products(total, state(metric, f"{side}_{self.name}_cov_sum"), x)
        if self.count_of is None:
            state(metric, f"{side}_{self.name}_num_samples").add_(x.shape[0])

    def sums(self, metric: Metric, side: str) -> tuple[int, Tensor, Tensor]:
        """``(n, feature sum (d,), outer-product sum (d, d))`` of ``side``."""
        count = state(metric, f"{side}_{self.count_of or self.name}_num_samples")
        return int(count), state(metric, f"{side}_{self.name}_sum"), state(metric, f"{side}_{self.name}_cov_sum")

    def mean_and_covariance(self, metric: Metric, side: str) -> tuple[Tensor, Tensor]:
        """``(d,)`` mean and ``(d, d)`` covariance of ``side``, float64."""
        return mean_and_covariance(*self.sums(metric, side))

    def factored(self, metric: Metric, side: str) -> tuple[Tensor, Tensor, CovarianceFactor]:
        """Mean, covariance and its ``sqrt_factor``, whose rank n samples bound by n - 1."""
        n, total, outer = self.sums(metric, side)
        mu, sigma = mean_and_covariance(n, total, outer)
        return mu, sigma, sqrt_factor(sigma, rank_bound=n - 1)


@dataclass(frozen=True)
class GroupSums(Accumulator):
    """The generated features of ``output`` in G groups: ``fake_group_sum`` ``(G, d)``, ``fake_group_cov_sum``
    ``(G, d, d)`` float64 and ``fake_group_num_samples`` ``(G,)`` int64. Memory: ``G * d * d * 8`` bytes."""

    groups: int
    dim: int
    output: str

    def defaults(self) -> dict[str, State]:
        g, d = self.groups, self.dim
        return {
            "fake_group_sum": torch.zeros(g, d, dtype=_F64),
            "fake_group_cov_sum": torch.zeros(g, d, d, dtype=_F64),
            "fake_group_num_samples": torch.zeros(g, dtype=torch.int64),
        }

    def symmetric_states(self) -> frozenset[str]:
        return frozenset({"fake_group_cov_sum"})

    def add(self, metric: Metric, side: str, outputs: dict[str, Tensor], positions: range) -> None:
        if side != "fake":
            return
        features = as_float64(outputs[self.output], state(metric, "fake_group_sum"))
        groups = [j % self.groups for j in positions]
        for g in sorted(set(groups)):
            rows = features.index_select(0, index_on([i for i, h in enumerate(groups) if h == g], features.device))
            add_outer_products(state(metric, "fake_group_sum")[g], state(metric, "fake_group_cov_sum")[g], rows)
            state(metric, "fake_group_num_samples")[g].add_(rows.shape[0])

    def extrapolate(
        self, metric: Metric, fid_of: Callable[[Tensor, Tensor, Tensor], Tensor], fid_all: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor]]:
        """FID-infinity, the jackknife standard error of FID, the ``(G,)`` FIDs without each group behind it, and
        the ``(sample sizes, FID)`` pairs behind FID-infinity.

        FID on the union of the first m groups, m = 1..G, gives FID at G sample sizes; the least-squares line
        ``FID = a + b / N`` through them extrapolates to FID-infinity = a (Chong & Forsyth, CVPR 2020), clamped
        at 0 (an extrapolation can land below 0 when FID is near 0; a distance cannot). The delete-a-group
        jackknife gives ``sqrt((G - 1) / G * sum_k (F_-k - mean F_-k)^2)``.

        Args:
            fid_of: ``(count, feature sum, outer-product sum) -> FID`` against the real side.
            fid_all: the FID of all G groups, i.e. of every generated image, already computed.

        Raises:
            RuntimeError: a group has fewer than 2 images.
        """
        n = state(metric, "fake_group_num_samples").to(torch.float64)
        if bool((n < 2).any()):
            raise RuntimeError(f"FID-infinity needs at least 2 generated images per group; got {n.tolist()}.")
        group_sums, group_outers = state(metric, "fake_group_sum"), state(metric, "fake_group_cov_sum")
        sums, outers, sizes = group_sums.cumsum(0), group_outers.cumsum(0), n.cumsum(0)
        by_size = torch.stack([*(fid_of(sizes[m], sums[m], outers[m]) for m in range(self.groups - 1)), fid_all])
        design = torch.stack([torch.ones_like(sizes), 1 / sizes], dim=1)
        intercept = torch.linalg.lstsq(design, by_size[:, None]).solution[0, 0].clamp_min(0)
        leave_one_out = torch.stack(
            [
                fid_of(sizes[-1] - n[k], sums[-1] - group_sums[k], outers[-1] - group_outers[k])
                for k in range(self.groups)
            ]
        )
        stderr = ((self.groups - 1) / self.groups * (leave_one_out - leave_one_out.mean()).square().sum()).sqrt()
        return intercept, stderr, leave_one_out, (sizes, by_size)
