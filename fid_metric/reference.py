"""Fixed reference statistics (``real_stats=``): a private copy, its fingerprint, its factor cached per device."""

from __future__ import annotations

import dataclasses
import hashlib

import torch
from torch import Tensor

from fid_metric.distance import CovarianceFactor, sqrt_factor
from fid_metric.stats import FeatureStats


class FixedReference:
    """The real side of a metric built with ``real_stats=``.

    The statistics are copied, so that later changes to the caller's object cannot reach the metric; the
    covariance's factor (Cholesky, or ``eigh`` for a singular one) is computed once per device and reused by
    every ``compute()``.

    Attributes:
        stats: the private copy.
        fingerprint: SHA-256 of the mean's and covariance's bytes, which tells two references apart where
            their metadata agrees (processes under DDP must share one).
    """

    def __init__(self, stats: FeatureStats) -> None:
        tensors = {
            f.name: getattr(stats, f.name).clone()
            for f in dataclasses.fields(stats)
            if isinstance(getattr(stats, f.name), Tensor)
        }
        self.stats = dataclasses.replace(stats, **tensors, extra={k: v.clone() for k, v in stats.extra.items()})
        digest = hashlib.sha256()
        for tensor in (self.stats.mean, self.stats.covariance):
            digest.update(tensor.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
        self.fingerprint = digest.hexdigest()
        self._factor: CovarianceFactor | None = None

    def on(self, device: torch.device) -> tuple[Tensor, Tensor, CovarianceFactor]:
        """Mean ``(d,)``, covariance ``(d, d)`` and its factor on ``device``, float64."""
        if self._factor is None or self._factor.device != device:
            self._factor = sqrt_factor(self.stats.covariance.to(device), rank_bound=self.rank_bound)
        return self.stats.mean.to(device), self.stats.covariance.to(device), self._factor

    @property
    def rank_bound(self) -> int | None:
        """``n - 1``, which bounds the rank of the covariances of n samples; None for files without n."""
        n = self.stats.n
        return n - 1 if n is not None and n > 1 else None

    def extra_on(self, mean: str, covariance: str, device: torch.device) -> tuple[Tensor, Tensor]:
        """Another mean/covariance pair the file held (ADM's ``mu_s``, ``sigma_s``) on ``device``."""
        return self.stats.extra[mean].to(device), self.stats.extra[covariance].to(device)
