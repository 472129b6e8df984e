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
from fid_metric._functional.jackknife import group_deleted, jackknife_stderr
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
    """The generated features of ``output`` in G groups: ``fake_{name}_sum`` ``(G, d)``, ``fake_{name}_cov_sum``
    ``(G, d, d)`` float64 and ``fake_{name}_num_samples`` ``(G,)`` int64. Memory: ``G * d * d * 8`` bytes."""

    groups: int
    dim: int
    output: str
    name: str = "group"

    def _state(self, metric: Metric, part: str) -> Tensor:
        return state(metric, f"fake_{self.name}_{part}")

    def defaults(self) -> dict[str, State]:
        g, d = self.groups, self.dim
        return {
            f"fake_{self.name}_sum": torch.zeros(g, d, dtype=_F64),
            f"fake_{self.name}_cov_sum": torch.zeros(g, d, d, dtype=_F64),
            f"fake_{self.name}_num_samples": torch.zeros(g, dtype=torch.int64),
        }

    def symmetric_states(self) -> frozenset[str]:
        return frozenset({f"fake_{self.name}_cov_sum"})

    def add(self, metric: Metric, side: str, outputs: dict[str, Tensor], positions: range) -> None:
        if side != "fake":
            return
        features = as_float64(outputs[self.output], self._state(metric, "sum"))
        groups = [j % self.groups for j in positions]
        for g in sorted(set(groups)):
            rows = features.index_select(0, index_on([i for i, h in enumerate(groups) if h == g], features.device))
            add_outer_products(self._state(metric, "sum")[g], self._state(metric, "cov_sum")[g], rows)
            self._state(metric, "num_samples")[g].add_(rows.shape[0])

    def of(self, sums: GaussianSums) -> bool:
        """Whether these are the groups of the features that ``sums`` accumulate."""
        return self.output == sums.output

    def sums(self, metric: Metric) -> tuple[Tensor, Tensor, Tensor]:
        """``(counts (G,) int64, feature sums (G, d), outer-product sums (G, d, d))``, float64: the states."""
        return self._state(metric, "num_samples"), self._state(metric, "sum"), self._state(metric, "cov_sum")

    def _counts(self, metric: Metric) -> Tensor:
        """``(G,)`` float64 image counts; at least 2 per group, or a ``RuntimeError``."""
        n = self._state(metric, "num_samples").to(torch.float64)
        if bool((n < 2).any()):
            raise RuntimeError(f"The jackknife needs at least 2 generated images per group; got {n.tolist()}.")
        return n

    def leave_one_out(self, metric: Metric, fid_of: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Tensor:
        """The ``(G,)`` distances without each group: ``fid_of(count, feature sum, outer-product sum)`` of the
        other groups' union, against the real side.

        Raises:
            RuntimeError: a group has fewer than 2 images.
        """
        return group_deleted(self._counts(metric), self._state(metric, "sum"), self._state(metric, "cov_sum"), fid_of)

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
        n = self._counts(metric)
        sums, outers, sizes = (
            self._state(metric, "sum").cumsum(0),
            self._state(metric, "cov_sum").cumsum(0),
            n.cumsum(0),
        )
        by_size = torch.stack([*(fid_of(sizes[m], sums[m], outers[m]) for m in range(self.groups - 1)), fid_all])
        design = torch.stack([torch.ones_like(sizes), 1 / sizes], dim=1)
        intercept = torch.linalg.lstsq(design, by_size[:, None]).solution[0, 0].clamp_min(0)
        leave_one_out = self.leave_one_out(metric, fid_of)
        return intercept, jackknife_stderr(leave_one_out), leave_one_out, (sizes, by_size)
