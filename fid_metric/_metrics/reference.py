"""Fixed reference statistics (``real_stats=``): a private copy, its fingerprint, its factor cached per device."""

from __future__ import annotations

import dataclasses
import hashlib

import torch
from torch import Tensor

from fid_metric._files.stats import FeatureStats
from fid_metric._functional.distance import CovarianceFactor, sqrt_factor


class FixedReference:
    """The real side of a metric built with ``real_stats=``.

    The statistics are copied, so that later changes to the caller's object cannot reach the metric; each
    covariance's factor (Cholesky, or an eigendecomposition for a singular one) is computed once per device and
    reused by every ``compute()``.

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
        extra = {k: v.clone() for k, v in stats.extra.items()}
        # groups serve comparisons of generated samples (fid_metric.compare), not a reference: not kept
        self.stats = dataclasses.replace(stats, **tensors, extra=extra, groups=None)
        digest = hashlib.sha256()
        for tensor in (self.stats.mean, self.stats.covariance):
            digest.update(tensor.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
        self.fingerprint = digest.hexdigest()
        self._factors: dict[str, CovarianceFactor] = {}  # covariance name -> its factor, on the last device asked

    def on(self, device: torch.device) -> tuple[Tensor, Tensor, CovarianceFactor]:
        """Mean ``(d,)``, covariance ``(d, d)`` and its factor on ``device``, float64."""
        return (
            self.stats.mean.to(device),
            self.stats.covariance.to(device),
            self._factor("", self.stats.covariance, device),
        )

    def extra_on(self, mean: str, covariance: str, device: torch.device) -> tuple[Tensor, Tensor, CovarianceFactor]:
        """Another mean/covariance pair the file held (ADM's ``mu_s``, ``sigma_s``) and the covariance's factor,
        on ``device``; the factor is cached as the main pair's is."""
        sigma = self.stats.extra[covariance]
        return self.stats.extra[mean].to(device), sigma.to(device), self._factor(covariance, sigma, device)

    def _factor(self, name: str, sigma: Tensor, device: torch.device) -> CovarianceFactor:
        """The factor of the covariance ``name`` (``""``: the main one) on ``device``, computed there once; n - 1
        bounds the rank of the covariance of n samples (files without n: no bound)."""
        cached = self._factors.get(name)
        if cached is None or cached.device != device:
            n = self.stats.n
            cached = sqrt_factor(sigma.to(device), rank_bound=n - 1 if n is not None and n > 1 else None)
            self._factors[name] = cached
        return cached
