"""Feature statistics: count n, float64 feature sum, float64 outer-product sum; merge; mean/covariance; files.

Sums add exactly across batches, processes and jobs, so they are what the metric keeps, what DDP
all-reduces and what our statistics files store; the mean and covariance follow from them only when a
distance is computed. Files written by other tools hold only the mean and covariance: they serve as a fixed
reference but cannot be merged.

File formats read by :meth:`FeatureStats.load` (all with ``numpy.load(allow_pickle=False)``):

* ours (``.npz``, ``format = "fid_metric.stats/1"``): ``n``, ``feature_sum``, ``outer_sum``, ``mu``,
  ``sigma``, ``feature_dim``, ``extractor``, ``weights_sha256``, ``compat``, ``fid_metric_version``;
* pytorch-fid ``--save-stats`` and clean-fid reference files: ``mu``, ``sigma``;
* ADM (guided-diffusion evaluator) reference batches: ``mu``, ``sigma`` and the sFID statistics
  ``mu_s``, ``sigma_s``, kept in ``extra``.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fid_metric._version import __version__

FORMAT = "fid_metric.stats/1"
_METADATA = ("extractor", "weights_sha256", "compat")


def mean_and_covariance(n: int | Tensor, feature_sum: Tensor, outer_sum: Tensor) -> tuple[Tensor, Tensor]:
    """``(d,)`` mean and ``(d, d)`` unbiased covariance (divisor n - 1), float64, from the sums of n samples.

    ``sigma = (sum_i x_i x_i^T - n mu mu^T) / (n - 1)``, as torchmetrics computes it; equal to
    ``numpy.cov(features, rowvar=False)`` (pytorch-fid, clean-fid) up to float64 round-off. ``outer_sum``
    must be symmetric up to round-off; there is no ``(C + C^T) / 2`` pass, because the distance reads the lower
    triangle (Cholesky, ``eigvalsh``) and a round-off asymmetry moves it by round-off (a test holds it to
    1e-12). The metric's sums are X^T X products (a BLAS may sum the two triangles in different orders) and,
    after a DDP sync, rebuilt from their upper triangles (symmetric to the bit).
    """
    n = torch.as_tensor(n, dtype=torch.float64, device=feature_sum.device)
    mean = feature_sum.to(torch.float64) / n
    covariance = torch.outer(mean, mean).mul_(-n).add_(outer_sum).div_(n - 1)
    return mean, covariance


class StatsMismatchError(ValueError):
    """Two statistics (or statistics and a metric) were made by different extractors or pipelines."""


@dataclass(frozen=True)
class FeatureStats:
    """Statistics of ``n`` feature vectors of dimension d.

    Attributes:
        mean: ``(d,)`` float64.
        covariance: ``(d, d)`` float64, unbiased.
        n: number of samples, or None when a file held only the mean and covariance.
        feature_sum, outer_sum: ``(d,)`` and ``(d, d)`` float64 sums, or None (then not mergeable).
        extractor: e.g. ``"inception-2015-12-05/2048"``, or "" if unknown.
        weights_sha256: hex SHA-256 of the network weights file, or "" if unknown.
        compat: the preprocessing pipeline (``"tensorflow"``, ...), or "" if unknown.
        extra: other arrays a file held (ADM's ``mu_s``, ``sigma_s``), float64 tensors.
    """

    mean: Tensor
    covariance: Tensor
    n: int | None = None
    feature_sum: Tensor | None = None
    outer_sum: Tensor | None = None
    extractor: str = ""
    weights_sha256: str = ""
    compat: str = ""
    extra: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def from_sums(cls, n: int, feature_sum: Tensor, outer_sum: Tensor, **metadata: str) -> FeatureStats:
        """From the sums of ``n >= 2`` samples (the metric's states)."""
        if n < 2:
            raise ValueError(f"Statistics need at least 2 samples to estimate a covariance, got {n}.")
        feature_sum = feature_sum.detach().to("cpu", torch.float64)
        outer_sum = outer_sum.detach().to("cpu", torch.float64)
        mean, covariance = mean_and_covariance(n, feature_sum, outer_sum)
        return cls(mean, covariance, int(n), feature_sum, outer_sum, **metadata)

    @classmethod
    def from_features(cls, features: Tensor, **metadata: str) -> FeatureStats:
        """From ``(n, d)`` features."""
        f = features.detach().to("cpu", torch.float64)
        return cls.from_sums(f.shape[0], f.sum(0), f.T @ f, **metadata)

    @property
    def feature_dim(self) -> int:
        return self.mean.shape[0]

    @property
    def mergeable(self) -> bool:
        """True when the sums are known, so other statistics can be added to these exactly."""
        return self.n is not None and self.feature_sum is not None and self.outer_sum is not None

    def check_compatible(
        self, other: FeatureStats | dict[str, object], name: str = "these statistics", other_name: str = "the others"
    ) -> None:
        """Raise ``StatsMismatchError`` if feature dimension, extractor, weights or compat mode differ.

        Fields that one side does not know (empty strings, e.g. from a pytorch-fid file) are not compared.
        """
        theirs = other if isinstance(other, dict) else {"feature_dim": other.feature_dim, **_metadata_of(other)}
        mine = {"feature_dim": self.feature_dim, **_metadata_of(self)}
        for key, value in mine.items():
            other_value = theirs.get(key, "")
            if value not in ("", None) and other_value not in ("", None) and value != other_value:
                raise StatsMismatchError(
                    f"Cannot combine {name} with {other_name}: {key} is {value!r} in {name} but {other_value!r} "
                    f"in {other_name}."
                )

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Statistics of the union of both sample sets (exact: the sums add)."""
        for stats in (self, other):
            if not stats.mergeable:
                raise ValueError(
                    "These statistics hold only a mean and covariance (e.g. a pytorch-fid, clean-fid or ADM "
                    "file), so they cannot be merged; they can still serve as a fixed reference."
                )
        self.check_compatible(other)
        merged = FeatureStats.from_sums(
            self.n + other.n, self.feature_sum + other.feature_sum, self.outer_sum + other.outer_sum
        )
        return replace(merged, **{k: v or getattr(other, k) for k, v in _metadata_of(self).items()})

    __add__ = merge

    def save(self, path: str | os.PathLike) -> None:
        """Write a self-describing ``.npz`` (see the module docstring); mean/covariance-only stats too."""
        arrays: dict[str, np.ndarray] = {
            "format": np.array(FORMAT),
            "mu": self.mean.numpy(),
            "sigma": self.covariance.numpy(),
            "feature_dim": np.array(self.feature_dim),
            "fid_metric_version": np.array(__version__),
            **{key: np.array(value) for key, value in _metadata_of(self).items()},
            **{key: value.numpy() for key, value in self.extra.items()},
        }
        if self.mergeable:
            arrays.update(n=np.array(self.n), feature_sum=self.feature_sum.numpy(), outer_sum=self.outer_sum.numpy())
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        """Read our ``.npz``, a pytorch-fid / clean-fid ``.npz`` or an ADM reference batch.

        Raises:
            ValueError: the file is missing, truncated, corrupt, or holds inconsistent arrays.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except FileNotFoundError:
            raise ValueError(f"Statistics file {path} does not exist.") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
            raise ValueError(f"{path} is not a readable statistics file (truncated or corrupt?): {err}") from err
        if "mu" not in arrays or "sigma" not in arrays:
            raise ValueError(
                f"{path} holds {sorted(arrays)}; a statistics file needs at least 'mu' and 'sigma' "
                "(pytorch-fid, clean-fid, ADM) or is written by fid_metric."
            )
        mean = torch.from_numpy(np.asarray(arrays.pop("mu"), dtype=np.float64))
        covariance = torch.from_numpy(np.asarray(arrays.pop("sigma"), dtype=np.float64))
        d = mean.shape[0] if mean.ndim == 1 else -1
        if d < 1 or covariance.shape != (d, d):
            raise ValueError(
                f"{path}: 'mu' must be (d,) and 'sigma' (d, d), got {mean.shape} and {tuple(covariance.shape)}."
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(covariance).all()):
            raise ValueError(f"{path}: 'mu' or 'sigma' holds NaN or infinite values.")
        # Symmetrised once, here: the distance reads one triangle of one covariance and all of the other, so
        # another tool's round-off asymmetry would otherwise make FID(a, b) differ from FID(b, a).
        covariance = (covariance + covariance.T) / 2
        metadata = {key: str(arrays.pop(key)) for key in _METADATA if key in arrays}
        n = feature_sum = outer_sum = None
        if "n" in arrays:
            missing = [key for key in ("feature_sum", "outer_sum") if key not in arrays]
            if missing or arrays["n"].ndim != 0:
                raise ValueError(
                    f"{path} holds 'n' but not a scalar n with 'feature_sum' and 'outer_sum' (missing: {missing}); "
                    "fid_metric statistics files store the three together."
                )
            n = int(arrays.pop("n"))
            feature_sum = torch.from_numpy(np.asarray(arrays.pop("feature_sum"), dtype=np.float64))
            outer_sum = torch.from_numpy(np.asarray(arrays.pop("outer_sum"), dtype=np.float64))
            if feature_sum.shape != (d,) or outer_sum.shape != (d, d):
                raise ValueError(f"{path}: sums of shapes {feature_sum.shape}, {outer_sum.shape} do not match d={d}.")
            outer_sum = (outer_sum + outer_sum.T) / 2
            if not torch.allclose(mean, feature_sum / n, rtol=1e-9, atol=1e-12):
                raise ValueError(f"{path}: 'mu' is not 'feature_sum' / 'n'; the file is inconsistent.")
        for key in ("format", "feature_dim", "fid_metric_version"):
            arrays.pop(key, None)
        extra = {
            key: torch.from_numpy(np.asarray(value, dtype=np.float64))
            for key, value in arrays.items()
            if np.issubdtype(value.dtype, np.number)
        }
        return cls(mean, covariance, n, feature_sum, outer_sum, extra=extra, **metadata)


def _metadata_of(stats: FeatureStats) -> dict[str, str]:
    return {key: getattr(stats, key) for key in _METADATA}
