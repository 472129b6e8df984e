"""Accumulators: each owns some of a metric's states, adds a batch's network outputs to them, and turns them into
numbers.

Every state is a sum over images, so the metric's one all_reduce (``fid_metric._states.sync``) combines them across
processes exactly. A metric is a list of accumulators over one extractor's outputs:

* ``GaussianSums``: per side, the sum, the outer-product sum and the count of one output's features, hence
  their mean and covariance (FID; sFID on ``mixed_6/conv``);
* ``SplitScores``: the Inception Score's per-split sums of ``p log p``, of ``p`` and the counts (generated side);
* ``GroupSums``: the generated features' sums in G groups, for FID at G sample sizes (FID-infinity) and the
  jackknife standard error.

Split and group membership are deterministic: the image at position j of the sampler's order belongs to
group ``j % groups`` and to a split fixed by its position (``SplitScores``); positions are counted as a
``DistributedSampler`` deals them (``fid_metric._states.exactly_once.sampler_positions``), so membership is the same on
1 or W processes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from fid_metric._checks import checked_int
from fid_metric._features.inception import FEATURE_DIMS
from fid_metric._files.stats import mean_and_covariance
from fid_metric._functional.distance import CovarianceFactor, sqrt_factor

SIDES = ("real", "fake")
_F64 = torch.float64


def add_outer_products(total: Tensor, outer: Tensor, x: Tensor) -> None:
    """``total += sum_i x_i`` and ``outer += sum_i x_i x_i^T`` for ``(N, d)`` float64 ``x``: the one place where
    feature sums accumulate."""
    total.add_(x.sum(0))
    outer.addmm_(x.T, x)


def as_float64(x: Tensor, like: Tensor) -> Tensor:
    """A network output as float64 on the device of the state ``like`` (exact from every real dtype up to 53 bits)."""
    return x.to(like.device, _F64)


def state(metric: Metric, name: str) -> Tensor:
    """The metric's state ``name`` (``Metric.add_state`` makes it an attribute)."""
    return cast(Tensor, getattr(metric, name))


@dataclass(frozen=True)
class Registered:
    """What an accumulator told its metric: states whose values are symmetric matrices (only their upper
    triangles travel in the all_reduce), and the real-side states that ``reset_real_features=False`` keeps."""

    symmetric: frozenset[str] = frozenset()
    real: tuple[str, ...] = ()


@dataclass(frozen=True)
class GaussianSums:
    """Per side, ``{side}_{name}_sum`` ``(d,)``, ``{side}_{name}_cov_sum`` ``(d, d)`` float64 and, unless another
    accumulator counts the same images (``count_of``), ``{side}_{name}_num_samples`` int64, of ``output``."""

    name: str
    output: str
    dim: int
    count_of: str | None = None  # the accumulator whose count states count these images too
    extra_names: tuple[str, str] | None = None  # the names of its mean and covariance in statistics files

    def register(self, metric: Metric, keep_real: bool) -> Registered:
        for side in SIDES:
            persistent = keep_real and side == "real"
            metric.add_state(f"{side}_{self.name}_sum", torch.zeros(self.dim, dtype=_F64), "sum", persistent=persistent)
            metric.add_state(
                f"{side}_{self.name}_cov_sum", torch.zeros(self.dim, self.dim, dtype=_F64), "sum", persistent=persistent
            )
            if self.count_of is None:
                count = torch.tensor(0, dtype=torch.int64)
                metric.add_state(f"{side}_{self.name}_num_samples", count, "sum", persistent=persistent)
        real = [f"real_{self.name}_sum", f"real_{self.name}_cov_sum"]
        if self.count_of is None:
            real.append(f"real_{self.name}_num_samples")
        return Registered(frozenset(f"{side}_{self.name}_cov_sum" for side in SIDES), tuple(real))

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
class SplitScores:
    """The Inception Score of the generated images, per split k: the count ``is_num_samples[k]``, the sum over
    images of ``sum_c p_c log p_c`` (``is_plogp_sum[k]``) and of the class probabilities ``p`` (``is_p_sum[k]``,
    softmax of the 1008 logits without bias, in float64).

    Which split the image at sampler position j belongs to, one of three conventions:

    * default: ``j % splits`` (interleaved);
    * ``split_size=S``: ``j // S``, consecutive chunks of S images in sample order, the last one possibly
      smaller, as ADM's evaluator (``compute_inception_score(activations, split_size=5000)``) whose Inception
      Score the diffusion papers print; ``splits`` is then the most there may be;
    * ``seed=s``: torch-fidelity's ``isc_features_to_metric``: the N = ``metric.dataset_size`` samples shuffled
      by numpy's ``RandomState(s).permutation(N)``, then ``splits`` chunks ``[k N // splits, (k + 1) N //
      splits)`` of the shuffled order.

    All are fixed by position, so 1 and W processes put every image in the same split.
    """

    splits: int
    classes: int
    output: str = "logits_unbiased"
    split_size: int | None = None
    seed: int | None = None

    def register(self, metric: Metric, keep_real: bool) -> Registered:
        metric.add_state("is_plogp_sum", torch.zeros(self.splits, dtype=_F64), "sum")
        metric.add_state("is_p_sum", torch.zeros(self.splits, self.classes, dtype=_F64), "sum")
        metric.add_state("is_num_samples", torch.zeros(self.splits, dtype=torch.int64), "sum")
        return Registered()

    def split_of(self, positions: range, dataset_size: int | None) -> list[int]:
        """The split of each sampler position.

        Raises:
            ValueError: a position beyond ``splits * split_size`` or, with ``seed``, beyond ``dataset_size`` (or
                no ``dataset_size``).
        """
        if self.seed is not None:
            if dataset_size is None or (len(positions) > 0 and positions[-1] >= dataset_size):
                raise ValueError(
                    f"torch-fidelity's Inception Score splits (seed={self.seed}) shuffle the whole set: they need "
                    f"`dataset_size`, the number of generated images, and got {dataset_size} for an image at "
                    f"position {positions[-1] if len(positions) else 0}."
                )
            table = _shuffled_splits(dataset_size, self.splits, self.seed)
            return [int(table[j]) for j in positions]
        if self.split_size is not None:
            splits = [j // self.split_size for j in positions]
            beyond = next((j for j, k in zip(positions, splits) if k >= self.splits), None)
            if beyond is not None:
                raise ValueError(
                    f"The Inception Score has {self.splits} splits of {self.split_size} images; the image at position "
                    f"{beyond} would be in split {beyond // self.split_size + 1}. Raise `splits` to at least "
                    f"ceil(N / {self.split_size}) for N generated images."
                )
            return splits
        return [j % self.splits for j in positions]

    def add(self, metric: Metric, side: str, outputs: dict[str, Tensor], positions: range) -> None:
        if side != "fake":
            return
        log_p = as_float64(outputs[self.output], state(metric, "is_p_sum")).log_softmax(dim=1)
        p = log_p.exp()
        split = _index(self.split_of(positions, getattr(metric, "dataset_size", None)), p.device)
        state(metric, "is_plogp_sum").index_add_(0, split, (p * log_p).sum(1))
        state(metric, "is_p_sum").index_add_(0, split, p)
        state(metric, "is_num_samples").index_add_(0, split, torch.ones_like(split))

    def score(self, metric: Metric) -> tuple[Tensor, Tensor]:
        """The mean of the splits' ``IS_k = exp(S_plogp / n_k - sum_c q_c log q_c)``, ``q = S_p / n_k`` (torch-
        fidelity's and ADM's per-split formula), and their population standard deviation (``np.std``). With
        ``split_size``, the splits that no image reached are left out, as ADM's loop never makes them.

        Raises:
            RuntimeError: a split (one that should have images) has none.
        """
        n = state(metric, "is_num_samples").to(torch.float64)
        used = n > 0 if self.split_size is not None else torch.ones_like(n, dtype=torch.bool)
        if not bool(used.any()) or bool((n[used] < 1).any()):
            raise RuntimeError(
                f"The Inception Score needs at least one generated image per split; got {n.tolist()} over "
                f"{self.splits} splits."
            )
        n = n[used]
        q = state(metric, "is_p_sum")[used] / n[:, None]
        scores = (state(metric, "is_plogp_sum")[used] / n - torch.special.xlogy(q, q).sum(1)).exp()
        return scores.mean(), scores.std(unbiased=False)


def split_scores(splits: object, split_size: object = None, split_seed: object = None) -> SplitScores:
    """The Inception Score's accumulator for these arguments, checked.

    Raises:
        ValueError: ``splits`` or ``split_size`` is not a positive int, ``split_seed`` not a non-negative int, or
            both ``split_size`` and ``split_seed`` are given.
    """
    splits = checked_int("splits", splits, 1)
    split_size = checked_int("split_size", split_size, 1, none=True)
    split_seed = checked_int("split_seed", split_seed, 0, none=True)
    if split_size is not None and split_seed is not None:
        raise ValueError("Give `split_size` (ADM's consecutive splits) or `split_seed` (torch-fidelity's), not both.")
    return SplitScores(cast(int, splits), FEATURE_DIMS["logits_unbiased"], split_size=split_size, seed=split_seed)


@functools.lru_cache(maxsize=4)
def _shuffled_splits(n: int, splits: int, seed: int) -> np.ndarray:
    """``(n,)`` the split of each position under torch-fidelity's shuffle: position j lands at t = inverse
    permutation[j], in chunk ``ceil((t + 1) splits / n) - 1`` of ``[k n // splits, (k + 1) n // splits)``."""
    shuffled_position = np.empty(n, dtype=np.int64)
    shuffled_position[np.random.RandomState(seed).permutation(n)] = np.arange(n)
    return ((shuffled_position + 1) * splits + n - 1) // n - 1


@dataclass(frozen=True)
class GroupSums:
    """The generated features of ``output`` in G groups: ``fake_group_sum`` ``(G, d)``, ``fake_group_cov_sum``
    ``(G, d, d)`` float64 and ``fake_group_num_samples`` ``(G,)`` int64. Memory: ``G * d * d * 8`` bytes (G = 10,
    d = 2048: 336 MB)."""

    groups: int
    dim: int
    output: str

    def register(self, metric: Metric, keep_real: bool) -> Registered:
        g, d = self.groups, self.dim
        metric.add_state("fake_group_sum", torch.zeros(g, d, dtype=_F64), "sum")
        metric.add_state("fake_group_cov_sum", torch.zeros(g, d, d, dtype=_F64), "sum")
        metric.add_state("fake_group_num_samples", torch.zeros(g, dtype=torch.int64), "sum")
        return Registered(frozenset({"fake_group_cov_sum"}))

    def add(self, metric: Metric, side: str, outputs: dict[str, Tensor], positions: range) -> None:
        if side != "fake":
            return
        features = as_float64(outputs[self.output], state(metric, "fake_group_sum"))
        groups = [j % self.groups for j in positions]
        for g in sorted(set(groups)):
            rows = features.index_select(0, _index([i for i, h in enumerate(groups) if h == g], features.device))
            add_outer_products(state(metric, "fake_group_sum")[g], state(metric, "fake_group_cov_sum")[g], rows)
            state(metric, "fake_group_num_samples")[g].add_(rows.shape[0])

    def extrapolate(
        self, metric: Metric, fid_of: Callable[[Tensor, Tensor, Tensor], Tensor], fid_all: Tensor
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """FID-infinity, the jackknife standard error of FID, and the ``(sample sizes, FID)`` pairs behind them.

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
        sums, outers, sizes = (
            state(metric, "fake_group_sum").cumsum(0),
            state(metric, "fake_group_cov_sum").cumsum(0),
            n.cumsum(0),
        )
        by_size = torch.stack([*(fid_of(sizes[m], sums[m], outers[m]) for m in range(self.groups - 1)), fid_all])
        design = torch.stack([torch.ones_like(sizes), 1 / sizes], dim=1)
        intercept = torch.linalg.lstsq(design, by_size[:, None]).solution[0, 0].clamp_min(0)
        leave_one_out = torch.stack(
            [
                fid_of(
                    sizes[-1] - n[k],
                    sums[-1] - state(metric, "fake_group_sum")[k],
                    outers[-1] - state(metric, "fake_group_cov_sum")[k],
                )
                for k in range(self.groups)
            ]
        )
        stderr = ((self.groups - 1) / self.groups * (leave_one_out - leave_one_out.mean()).square().sum()).sqrt()
        return intercept, stderr, (sizes, by_size)


def _index(values: list[int], device: torch.device) -> Tensor:
    """An int64 index tensor on ``device``, copied from pinned memory so that it does not wait for the GPU."""
    index = torch.tensor(values, dtype=torch.int64)
    return index if device.type == "cpu" else index.pin_memory().to(device, non_blocking=True)
