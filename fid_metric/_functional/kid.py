"""Kernel Inception Distance (Bińkowski et al., "Demystifying MMD GANs", ICLR 2018) on given features.

The squared MMD with the cubic polynomial kernel ``k(x, y) = (gamma x.y + coef)^degree``, ``gamma = 1 / d`` by
default, as torch-fidelity's ``kid_features_to_metric`` and torchmetrics' ``KernelInceptionDistance`` compute it:

* over random subsets (``subset_size`` features per side, ``subsets`` times): the unbiased estimate per subset,
  then the mean and the population standard deviation over subsets. The subsets are drawn as torch-fidelity's
  ``kid_features_to_metric`` draws them, numpy's ``RandomState(seed)``, per subset ``choice(len(x),
  subset_size, replace=False)`` then the same for ``y``, so the same seed gives torch-fidelity's KID when ``x``
  is its ``features_1`` (its ``input1``, the generated images); or they are passed in (``subset_indices``);
* over all pairs (``subset_size=None``): the unbiased estimate on the full sets, deterministic,
  ``sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1)) - 2 sum k(x_i, y_j) / (m n)``,
  the kernel sums taken block by block (``fid_metric._functional.pairwise.kernel_sum``: at most 2^24 kernel
  values, 128 MiB of float64, at a time), so no ``m x n`` matrix is held.

Features and kernel values are float64: a sum has no decision a float32 pass could leave exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from fid_metric._functional.pairwise import kernel_sum


def kernel_inception_distance(
    x: Tensor,
    y: Tensor,
    *,
    subsets: int = 100,
    subset_size: int | None = 1000,
    seed: int = 2020,
    subset_indices: Sequence[tuple[Tensor, Tensor]] | None = None,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """KID between features ``x`` ``(m, d)`` and ``y`` ``(n, d)``: ``(mean, std)``, 0-d float64 tensors.

    Args:
        x: ``(m, d)`` features of one set (torch-fidelity's ``features_1``: the generated images).
        y: ``(n, d)`` features of the other set (the estimate is symmetric in x and y).
        subsets: number of subsets (ignored with ``subset_indices`` or ``subset_size=None``).
        subset_size: features per side per subset; None: all pairs (``std`` is then 0).
        seed: seeds numpy's ``RandomState`` that draws the subsets (torch-fidelity's ``rng_seed``, default 2020).
        subset_indices: the subsets' indices ``(into x, into y)``, instead of drawing them.
        degree: the polynomial kernel's degree.
        gamma: its scale; None is ``1 / d``.
        coef: its constant term.

    Raises:
        ValueError: not two 2-d sets of one dimension, fewer than 2 features per side, or a subset larger than
            a set.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"KID needs (m, d) and (n, d) features, got {tuple(x.shape)} and {tuple(y.shape)}.")
    if min(len(x), len(y)) < 2:
        raise ValueError(f"KID needs at least 2 features per side, got {len(x)} and {len(y)}.")
    x, y = x.double(), y.double()
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    if subset_size is None and subset_indices is None:
        return _unbiased_mmd2(x, y, degree, gamma, coef), torch.zeros((), dtype=torch.float64, device=x.device)
    if subset_indices is None:
        assert subset_size is not None
        if subset_size < 2 or subset_size > min(len(x), len(y)):
            raise ValueError(
                f"`subset_size` must be in [2, {min(len(x), len(y))}] (the smaller set), got {subset_size}."
            )
        rng = np.random.RandomState(seed)
        subset_indices = [
            (
                torch.from_numpy(rng.choice(len(x), subset_size, replace=False)),
                torch.from_numpy(rng.choice(len(y), subset_size, replace=False)),
            )
            for _ in range(subsets)
        ]
    values = torch.stack(
        [
            _unbiased_mmd2(
                x[torch.as_tensor(i, device=x.device)], y[torch.as_tensor(j, device=y.device)], degree, gamma, coef
            )
            for i, j in subset_indices
        ]
    )
    return values.mean(), values.std(unbiased=False)


def _unbiased_mmd2(x: Tensor, y: Tensor, degree: int, gamma: float, coef: float) -> Tensor:
    def kernel(gram: Tensor) -> Tensor:
        return (gram * gamma + coef) ** degree

    m, n = len(x), len(y)
    xx = kernel_sum(x, x, kernel, drop_diagonal=True)
    yy = kernel_sum(y, y, kernel, drop_diagonal=True)
    xy = kernel_sum(x, y, kernel)
    return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2 * xy / (m * n)
