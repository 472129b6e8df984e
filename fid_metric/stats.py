"""Feature statistics as sums: count n, float64 feature sum, float64 outer-product sum.

Sums add exactly across batches, processes and jobs, so they are what the metric keeps and what DDP
all-reduces; the mean and covariance follow from them only when a distance is computed.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mean_and_covariance(n: int | Tensor, feature_sum: Tensor, outer_sum: Tensor) -> tuple[Tensor, Tensor]:
    """``(d,)`` mean and ``(d, d)`` unbiased covariance (divisor n - 1), float64, from the sums of n samples.

    ``sigma = (sum_i x_i x_i^T - n mu mu^T) / (n - 1)``, as torchmetrics computes it; equal to
    ``numpy.cov(features, rowvar=False)`` (pytorch-fid, clean-fid) up to float64 round-off.
    """
    n = torch.as_tensor(n, dtype=torch.float64, device=feature_sum.device)
    mean = feature_sum.to(torch.float64) / n
    covariance = (outer_sum.to(torch.float64) - n * torch.outer(mean, mean)) / (n - 1)
    return mean, (covariance + covariance.T) / 2
