"""Feature statistics: count n, float64 feature sum, float64 outer-product sum; merge; mean/covariance; files.

Sums add exactly across batches, processes and jobs, so they are what the metric keeps, what DDP
all-reduces and what our statistics files store; the mean and covariance follow from them only when a
distance is computed. Files written by other tools hold only the mean and covariance: they serve as a fixed
reference but cannot be merged.

File formats read by :meth:`FeatureStats.load` (through :class:`fid_metric._files.npz.NpzArchive`: only the arrays
named here are read, each one's header checked before its data):

* ours (``.npz``, ``format = "fid_metric._files.stats/1"``): ``n``, ``feature_sum``, ``outer_sum``, ``mu``,
  ``sigma``, ``feature_dim``, ``extractor``, ``weights_sha256``, ``compat``, ``fid_metric_version``;
* pytorch-fid ``--save-stats`` and clean-fid reference files: ``mu``, ``sigma``;
* ADM (guided-diffusion evaluator) reference batches: ``mu``, ``sigma`` and the sFID statistics
  ``mu_s``, ``sigma_s``, kept in ``extra`` (their ``arr_0`` of images is never read).

Every ``FeatureStats`` says which definition of FID made it (``compat``, ``extractor``, ``weights_sha256``),
where that can be known. Our files record it. Of the others, the format says it for two: an ADM reference
batch is TensorFlow's FID (``compat="tensorflow"``, the 2048-d Inception pool), and a clean-fid statistics
file named as clean-fid names them (``<name>_<mode>_<split>_<res>.npz``) says its mode: ``clean`` is
``"clean-fid"``, ``legacy_tensorflow`` ``"tensorflow"``, ``legacy_pytorch`` ``"pytorch-fid"``. A pytorch-fid
file, or any bare ``mu``/``sigma``, does not: the caller says what it holds (``load(path, compat=...)``), and
a metric refuses statistics of an unknown definition.

:meth:`FeatureStats.save` writes atomically (:func:`fid_metric._files.atomic_file.atomic_write`): a reader, a
crash or a concurrent writer never leaves a partial file under the target name.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fid_metric._features.inception import INCEPTION_ID, POOL_FEATURES
from fid_metric._features.preprocess import COMPAT_MODES
from fid_metric._files.atomic_file import atomic_write
from fid_metric._files.edm2_reference import read_edm2_pickle
from fid_metric._files.npz import ArrayHeader, NpzArchive
from fid_metric._functional.distance import check_symmetric
from fid_metric._version import __version__
from fid_metric._warnings import warn_caller

FORMAT = "fid_metric._files.stats/1"
_METADATA = ("extractor", "weights_sha256", "compat", "arithmetic")
_SUMS = ("n", "feature_sum", "outer_sum")
_ADM_SFID = ("mu_s", "sigma_s")
_KEYS = ("mu", "sigma", *_SUMS, *_ADM_SFID, *_METADATA)  # all that load() reads
# Files with more features are refused before anything is read: the covariance alone would take 2 GiB, the
# sums' outer product as much again. Inception has 2048, DINOv2 ViT-L 1024, ADM's sFID statistics 2023.
MAX_FEATURE_DIM = 16384
_MAX_METADATA_CHARS = 1024

_FLOAT64_DIGITS = -math.log10(2.0**-53)  # 15.95 significant digits: the unit round-off u = 2^-53
# _digits_lost is a lower bound: the sums' own round-off, which grows with the number of batches added, cost
# 1-1.6 digits more in measurements against numpy.cov (2000-5000 samples in 40-100 batches, d = 16 to 256).
# Above 13.95 lost, fewer than 2 digits remain before that round-off: the variance has no correct digit.
# That is still a warning, not an error: a feature that is constant over all samples (a collapsed generator's
# identical images) looks the same from the sums, and there the round-off is harmless to FID.
# Above 8 lost, the covariance may be off by ~1e-6 relative after it; FID was then off by ~1e-7 (7e-7 at 9.3
# lost): still below the float32 network's own noise (~1e-6), but no longer negligible, and it grows
# tenfold per digit towards the 1e-4 promised against the peer libraries.
_NO_DIGIT_LEFT = _FLOAT64_DIGITS - 2
_WARN_DIGITS_LOST = 8.0


def mean_and_covariance(n: int | Tensor, feature_sum: Tensor, outer_sum: Tensor) -> tuple[Tensor, Tensor]:
    """``(d,)`` mean and ``(d, d)`` unbiased covariance (divisor n - 1), float64, from the sums of n samples.

    ``sigma = (sum_i x_i x_i^T - n mu mu^T) / (n - 1)``, as torchmetrics computes it; equal to
    ``numpy.cov(features, rowvar=False)`` (pytorch-fid, clean-fid) up to float64 round-off. ``outer_sum``
    must be symmetric up to round-off; there is no ``(C + C^T) / 2`` pass, because the distance reads the lower
    triangle (Cholesky, ``eigvalsh``) and a round-off asymmetry moves it by round-off (a test holds it to
    1e-12). The metric's sums are X^T X products (a BLAS may sum the two triangles in different orders) and,
    after a DDP sync, rebuilt from their upper triangles (symmetric to the bit).

    The one-pass formula cancels digits when a feature's mean is large against its spread: about
    ``2 log10(|mean| / std)`` of float64's 15.95 (see :func:`_digits_lost`). Inception features (mean ~ std)
    lose less than one; features with mean 1e8 and unit spread lose all of them. A feature with no correct digit
    left (more than 13.95 lost) has a variance indistinguishable from 0, and what the formula gives for its row
    and column is round-off, which can make the matrix look indefinite: they are set to 0. For a feature that is
    constant over the samples (identical images) that is exact; otherwise the warning says that FID has lost
    its meaning.

    Warns:
        UserWarning: some feature lost more than 8 digits; the message names the worst one and says when no
            correct digit is left (more than 13.95 lost).
    """
    if not (bool(torch.isfinite(feature_sum).all()) and bool(torch.isfinite(outer_sum).all())):
        largest = outer_sum.diagonal().abs().max().item() if outer_sum.numel() else 0.0
        raise ValueError(
            f"The feature sums hold infinite or NaN values (largest sum of squares {largest:.3g}): features whose "
            "squares, summed over the images, exceed float64's 1.8e308 (|x| around 1e154 or more) cannot give a "
            "covariance. Scale the features down in the extractor, for real and generated images alike."
        )
    n = torch.as_tensor(n, dtype=torch.float64, device=feature_sum.device)
    mean = feature_sum.to(torch.float64) / n
    covariance = torch.outer(mean, mean).mul_(-n).add_(outer_sum).div_(n - 1)
    lost = _digits_lost(n, outer_sum, covariance)
    _check_cancellation(n, mean, covariance, outer_sum, lost)
    no_digit = lost > _NO_DIGIT_LEFT
    if bool(no_digit.any()):
        covariance[no_digit, :] = 0
        covariance[:, no_digit] = 0
    return mean, covariance


def _digits_lost(n: Tensor, outer_sum: Tensor, covariance: Tensor) -> Tensor:
    """Significant digits of each variance lost to cancellation, ``(d,)`` float64 (inf: all of them).

    ``outer_sum_ii`` carries a relative rounding error of at least u = 2^-53 (more after many additions), as
    does ``n mean_i^2``, which is at most ``outer_sum_ii``. Their difference is ``(n - 1) sigma_ii``, so
    ``sigma_ii``'s relative error is about ``u outer_sum_ii / ((n - 1) sigma_ii)``: it has lost
    ``log10(outer_sum_ii / ((n - 1) sigma_ii)) = log10(1 + n mean_i^2 / ((n - 1) sigma_ii))`` of the sums'
    digits. An off-diagonal entry, relative to ``sqrt(sigma_ii sigma_jj)``, loses the mean of its features'
    digits, so the worst variance bounds the whole matrix. A variance that came out <= 0 from a positive
    ``outer_sum_ii`` lost everything; an all-zero feature (or NaN sums, not this check's business) nothing.
    """
    mean_square = outer_sum.diagonal().to(torch.float64) / (n - 1)
    variance = covariance.diagonal()
    lost = torch.where(variance > 0, (mean_square / variance).log10().clamp_min(0), math.inf)
    return torch.where(mean_square > 0, lost, 0.0)


_CANCELLATION_REMEDY = (
    "Subtract a fixed offset (e.g. the real features' approximate mean) from the features in the extractor, "
    "for real and generated images alike: FID does not change, and the sums keep their digits. (A feature "
    "that is constant over all samples, e.g. identical images, looks the same from the sums.)"
)


def _check_cancellation(n: Tensor, mean: Tensor, covariance: Tensor, outer_sum: Tensor, lost: Tensor) -> None:
    """Warn when a variance lost more than 8 of float64's 15.95 digits, naming the worst feature.

    A feature that is constant across all samples (e.g. every generated image the same) reads as lost too:
    its variance is 0, what the formula returns is round-off, and from the sums alone it cannot be told from
    a large mean with a small spread.
    """
    largest = lost.max(0)
    worst_lost, worst = float(largest.values), int(largest.indices)
    if not worst_lost > _WARN_DIGITS_LOST:  # also false for NaN
        return
    affected = int((lost > _WARN_DIGITS_LOST).sum())
    detail = (
        f"(mean {mean[worst].item():.3g}, mean square {(outer_sum[worst, worst] / (n - 1)).item():.3g}, "
        f"computed variance {covariance[worst, worst].item():.3g}; {affected} of {len(lost)} features lost more "
        f"than {_WARN_DIGITS_LOST:.0f} digits) in the one-pass covariance (outer_sum - n mean mean^T) / (n - 1)"
    )
    if worst_lost > _NO_DIGIT_LEFT:
        lost_text = "all" if math.isinf(worst_lost) else f"{worst_lost:.1f}"
        consequence = (
            "with the sums' own round-off, the covariance has no correct digit left, and FID is meaningless unless "
            "that feature is constant over the samples"
        )
    else:
        lost_text = f"{worst_lost:.1f}"
        consequence = f"the covariance keeps at most {_FLOAT64_DIGITS - worst_lost:.1f} correct digits, and FID fewer"
    warn_caller(
        f"Covariance cancellation: feature {worst} lost {lost_text} of float64's {_FLOAT64_DIGITS:.2f} significant "
        f"digits {detail}; {consequence}. {_CANCELLATION_REMEDY}"
    )


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
        arithmetic: the network's arithmetic (``"exact"``, or a fast mode, which is not the definition), or "".
        extra: ADM's sFID statistics ``mu_s`` ``(k,)`` and ``sigma_s`` ``(k, k)``, float64, when a file held them.
    """

    mean: Tensor
    covariance: Tensor
    n: int | None = None
    feature_sum: Tensor | None = None
    outer_sum: Tensor | None = None
    extractor: str = ""
    weights_sha256: str = ""
    compat: str = ""
    arithmetic: str = ""
    extra: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.compat not in ("", *COMPAT_MODES):
            raise ValueError(f"`compat` must be one of {COMPAT_MODES} (or '' if unknown), got {self.compat!r}.")

    @classmethod
    def from_sums(
        cls,
        n: int,
        feature_sum: Tensor,
        outer_sum: Tensor,
        extractor: str = "",
        weights_sha256: str = "",
        compat: str = "",
        arithmetic: str = "",
    ) -> FeatureStats:
        """From the sums of ``n >= 2`` samples (the metric's states), with what made their features."""
        if n < 2:
            raise ValueError(f"Statistics need at least 2 samples to estimate a covariance, got {n}.")
        feature_sum = feature_sum.detach().to("cpu", torch.float64)
        outer_sum = outer_sum.detach().to("cpu", torch.float64)
        mean, covariance = mean_and_covariance(n, feature_sum, outer_sum)
        return cls(mean, covariance, int(n), feature_sum, outer_sum, extractor, weights_sha256, compat, arithmetic)

    @classmethod
    def from_features(
        cls, features: Tensor, extractor: str = "", weights_sha256: str = "", compat: str = "", arithmetic: str = ""
    ) -> FeatureStats:
        """From ``(n, d)`` features."""
        f = features.detach().to("cpu", torch.float64)
        return cls.from_sums(f.shape[0], f.sum(0), f.T @ f, extractor, weights_sha256, compat, arithmetic)

    @property
    def feature_dim(self) -> int:
        return self.mean.shape[0]

    def sums(self) -> tuple[int, Tensor, Tensor]:
        """``(n, feature sum (d,), outer-product sum (d, d))``.

        Raises:
            ValueError: these statistics hold only a mean and covariance.
        """
        if self.n is None or self.feature_sum is None or self.outer_sum is None:
            raise ValueError(
                "These statistics hold only a mean and covariance (e.g. a pytorch-fid, clean-fid or ADM "
                "file), so they cannot be merged; they can still serve as a fixed reference."
            )
        return self.n, self.feature_sum, self.outer_sum

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
        """Statistics of the union of both sample sets (exact: the sums add); also ``a + b``.

        Example:
            >>> import torch
            >>> from fid_metric import FeatureStats
            >>> a = FeatureStats.from_features(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
            >>> b = FeatureStats.from_features(torch.tensor([[4.0, 5.0], [6.0, 7.0]]))
            >>> (a + b).n, (a + b).mean
            (4, tensor([3., 4.], dtype=torch.float64))
            >>> torch.equal((a + b).covariance, FeatureStats.from_features(torch.arange(8.0).view(4, 2)).covariance)
            True
        """
        (n1, sum1, outer1), (n2, sum2, outer2) = self.sums(), other.sums()
        self.check_compatible(other)
        return FeatureStats.from_sums(
            n1 + n2,
            sum1 + sum2,
            outer1 + outer2,
            # known for the union only where both say it (an unknown field is not the other's)
            extractor=self.extractor if self.extractor == other.extractor else "",
            weights_sha256=self.weights_sha256 if self.weights_sha256 == other.weights_sha256 else "",
            compat=self.compat if self.compat == other.compat else "",
            arithmetic=self.arithmetic if self.arithmetic == other.arithmetic else "",
        )

    __add__ = merge

    def save(self, path: str | os.PathLike) -> None:
        """Write a self-describing ``.npz`` (see the module docstring) atomically; mean/covariance-only stats too.

        Raises:
            ValueError: ``path`` cannot be written (:func:`fid_metric._files.atomic_file.check_writable` says why).
        """
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
            n, feature_sum, outer_sum = self.sums()
            arrays.update(n=np.array(n), feature_sum=feature_sum.numpy(), outer_sum=outer_sum.numpy())
        atomic_write(path, lambda file: np.savez(file, **arrays))  # type: ignore[arg-type]  # numpy's stub

    @classmethod
    def load(
        cls, path: str | os.PathLike, compat: str | None = None, key: str | None = None, extractor: str | None = None
    ) -> FeatureStats:
        """Read our ``.npz``, a pytorch-fid / clean-fid ``.npz``, an ADM reference batch or an EDM2 ``.pkl``.

        Reads only the arrays the module docstring names, each after its header (shape, dtype) was checked
        against the others and against :data:`MAX_FEATURE_DIM`.

        Args:
            path: the file.
            compat: which definition of FID the file holds, for a file that does not record it (a pytorch-fid
                ``--save-stats`` file: ``"pytorch-fid"``); for one that does, or whose format says it, it must
                agree. Statistics of a compat mode are of the FID Inception network's pool features.
            key: which statistics of an EDM2 ``.pkl`` (``"fid"`` or ``"fd_dinov2"``), which holds both
                (``fid_metric._files.edm2_reference``: read without unpickling anything but numpy arrays).
            extractor: the feature network, for a file of another network's features that does not record it
                (e.g. ``DINOv2Features(resize="edm2").extractor_id``); it must agree likewise.

        Raises:
            StatsMismatchError: ``compat`` contradicts what the file records or its format says.
            ValueError: naming the file and the field: the file is missing, not an ``.npz``, truncated or
                corrupt; an array is not plain numbers (text, for the metadata), does not fit the others'
                shapes, is too large, or holds NaN or infinite values; or, in our files, ``mu`` is not
                ``feature_sum / n``, ``sigma`` is not the covariance from the sums, or ``n`` is not an integer
                >= 2.
        """
        path = Path(path)
        if path.suffix.lower() == ".pkl":
            arrays, n, recorded = read_edm2_pickle(path, key)
            _check_mean_and_covariance(path, {k: v.shape for k, v in arrays.items()}, "mu", "sigma", "d")
            stats = dataclasses.replace(
                _from_arrays(path, arrays), n=n, compat=recorded["compat"], extractor=recorded["extractor"]
            )
            return _with_definition(path, stats, compat, False, extractor)
        with NpzArchive(path) as archive:
            headers = {key: archive.header(key) for key in _KEYS if key in archive.keys}
            _check_headers(path, headers, archive.keys)
            arrays = {key: archive.read(key, header) for key, header in headers.items()}
            adm = "arr_0" in archive.keys or "mu_s" in headers  # ADM's reference batches: images and statistics
        return _with_definition(path, _from_arrays(path, arrays), compat, adm, extractor)


# clean-fid's get_reference_statistics names its files f"{name}_{mode}{model_modifier}_{split}_{res}.npz", lower case
_CLEAN_FID_NAME = re.compile(
    r"_(clean|legacy_tensorflow|legacy_pytorch)(_clip_vit_b_32)?_(train[a-z0-9]*|test|custom)_([0-9]+|na)\.npz$"
)
_CLEAN_FID_MODES = {"clean": "clean-fid", "legacy_tensorflow": "tensorflow", "legacy_pytorch": "pytorch-fid"}


def _with_definition(
    path: Path, stats: FeatureStats, stated: str | None, adm: bool, stated_extractor: str | None = None
) -> FeatureStats:
    """``stats`` with the definition the file records, its format says, or the caller states; all must agree."""
    if stated is not None and stated not in COMPAT_MODES:
        raise ValueError(f"`compat` must be one of {COMPAT_MODES}, got {stated!r}.")
    if stated_extractor is not None:
        if stats.extractor and stats.extractor != stated_extractor:
            raise StatsMismatchError(
                f"{path} holds statistics of extractor={stats.extractor!r}, not the {stated_extractor!r} the caller "
                "states."
            )
        stats = dataclasses.replace(stats, extractor=stated_extractor)
    known, source = stats.compat, "records"
    match = _CLEAN_FID_NAME.search(path.name.lower())
    other_network = (stats.extractor and not stats.extractor.startswith(INCEPTION_ID)) or (match and match.group(2))
    if other_network:  # compat modes are pipelines into the Inception network: none applies to these features
        if stated is not None:
            network = stats.extractor or "CLIP ViT-B/32 (by its clean-fid name)"
            raise StatsMismatchError(
                f"{path} holds features of {network}, to which no compat mode applies (they are pipelines into the "
                f"FID Inception network), not compat={stated!r} statistics."
            )
        return stats
    if not known and adm:
        known, source = "tensorflow", "is an ADM reference batch, which holds"
    if not known and match:
        known = _CLEAN_FID_MODES[match.group(1)]
        source = f"is named as clean-fid's mode={match.group(1)!r} files, which hold"
    if known and stated is not None and stated != known:
        raise StatsMismatchError(
            f"{path} {source} compat={known!r} statistics, not the compat={stated!r} the caller states."
        )
    compat = known or stated or ""
    if not compat or stats.compat:
        return stats
    # a compat mode is a pipeline into the FID Inception network, so the features are one of its pool layers
    extractor = stats.extractor or (f"{INCEPTION_ID}/{stats.feature_dim}" if stats.feature_dim in POOL_FEATURES else "")
    return dataclasses.replace(stats, compat=compat, extractor=extractor)


def _metadata_of(stats: FeatureStats) -> dict[str, str]:
    return {key: getattr(stats, key) for key in _METADATA}


def _check_headers(path: Path, headers: dict[str, ArrayHeader], keys: frozenset[str]) -> None:
    """Raise ``ValueError`` unless the headers describe statistics this module reads, within its limits."""
    if "mu" not in headers or "sigma" not in headers:
        raise ValueError(
            f"{path} holds {sorted(keys)}; a statistics file needs at least 'mu' and 'sigma' "
            "(pytorch-fid, clean-fid, ADM) or is written by fid_metric."
        )
    for key, header in headers.items():
        if key in _METADATA:
            if header.dtype.kind != "U" or header.shape != () or not 0 < header.nbytes <= 4 * _MAX_METADATA_CHARS:
                raise ValueError(
                    f"{path}: '{key}' must be a string of at most {_MAX_METADATA_CHARS} characters, got "
                    f"{header.dtype} of shape {header.shape}."
                )
        elif header.dtype.kind not in "fiu":
            raise ValueError(
                f"{path} is not a readable statistics file: '{key}' has dtype {header.dtype}; expected plain "
                "numbers, float or int (pickled objects are never loaded)."
            )
    shapes = {key: header.shape for key, header in headers.items()}
    d = _check_mean_and_covariance(path, shapes, "mu", "sigma", "d")
    if any(key in headers for key in _ADM_SFID):
        _check_mean_and_covariance(path, shapes, *_ADM_SFID, "k")
    present = [key for key in _SUMS if key in headers]
    missing = [key for key in _SUMS if key not in headers]
    if present and (missing or headers["n"].shape != ()):
        raise ValueError(
            f"{path} holds {' and '.join(repr(key) for key in present)} but not a scalar n with 'feature_sum' and "
            f"'outer_sum' (missing: {missing}); fid_metric statistics files store the three together."
        )
    if present and (headers["feature_sum"].shape != (d,) or headers["outer_sum"].shape != (d, d)):
        raise ValueError(
            f"{path}: sums of shapes {headers['feature_sum'].shape}, {headers['outer_sum'].shape} do not match d={d}."
        )


def _check_mean_and_covariance(path: Path, shapes: dict[str, tuple[int, ...]], mean: str, cov: str, d: str) -> int:
    """The dimension of a ``(d,)`` mean and ``(d, d)`` covariance pair (``shapes`` of the arrays present), or
    ``ValueError`` naming both."""
    mean_shape = shapes.get(mean)
    size = mean_shape[0] if mean_shape is not None and len(mean_shape) == 1 else 0
    if size > MAX_FEATURE_DIM:
        raise ValueError(
            f"{path}: '{mean}' has {size} features; statistics of at most {MAX_FEATURE_DIM} are read (a {size} x "
            f"{size} float64 covariance would take {size * size * 8 / 2**30:.0f} GiB)."
        )
    if size < 1 or shapes.get(cov) != (size, size):
        raise ValueError(
            f"{path}: '{mean}' must be ({d},) and '{cov}' ({d}, {d}), got {mean_shape} and {shapes.get(cov)}."
        )
    return size


def _from_arrays(path: Path, arrays: dict[str, np.ndarray]) -> FeatureStats:
    """``FeatureStats`` from the arrays ``_check_headers`` passed, after checking their values."""
    tensors = {}
    for key, array in arrays.items():
        if key in _METADATA or key == "n":
            continue
        tensors[key] = torch.from_numpy(np.asarray(array, dtype=np.float64))
        if not torch.isfinite(tensors[key]).all():
            raise ValueError(f"{path}: '{key}' holds NaN or infinite values.")
    # Symmetric beyond round-off, or refused: a file holding one triangle is not a covariance. Then symmetrised
    # once, here: the distance reads one triangle of one covariance and all of the other, so another tool's
    # round-off asymmetry would otherwise make FID(a, b) differ from FID(b, a).
    for key in ("sigma", "outer_sum", "sigma_s"):
        if key in tensors:
            try:
                check_symmetric(tensors[key], f"'{key}'")
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
    mean, covariance = tensors["mu"], (tensors["sigma"] + tensors["sigma"].T) / 2
    metadata = {key: str(arrays[key][()]) for key in _METADATA if key in arrays}
    n = feature_sum = outer_sum = None
    if "n" in arrays:
        n = _count(path, arrays["n"])
        feature_sum, outer_sum = tensors["feature_sum"], (tensors["outer_sum"] + tensors["outer_sum"].T) / 2
        _check_sums(path, n, feature_sum, outer_sum, mean, covariance)
    extra = {key: tensors[key] for key in _ADM_SFID if key in tensors}
    return FeatureStats(mean, covariance, n, feature_sum, outer_sum, extra=extra, **metadata)


def _count(path: Path, array: np.ndarray) -> int:
    value = array.item()
    if not (float(value).is_integer() and value >= 2):
        raise ValueError(f"{path}: 'n' must be an integer >= 2, got {value}.")
    return int(value)


def _check_sums(path: Path, n: int, feature_sum: Tensor, outer_sum: Tensor, mean: Tensor, covariance: Tensor) -> None:
    """Raise ``ValueError`` unless ``mu`` and ``sigma`` are what ``mean_and_covariance`` makes of the sums."""
    try:
        expected_mean, expected_covariance = mean_and_covariance(n, feature_sum, outer_sum)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if (mean - expected_mean).abs().max() > 1e-9 * expected_mean.abs().max():
        raise ValueError(f"{path}: 'mu' is not 'feature_sum' / 'n'; the file is inconsistent.")
    # Relative to the mean squares, the scale of the sums' own round-off: where cancellation lost digits, the
    # covariance recomputed after symmetrising outer_sum differs from the saved one by that much.
    difference = (covariance - expected_covariance).abs()
    scale = outer_sum.diagonal().max() / (n - 1)
    if difference.max() > 1e-9 * scale:
        i, j = divmod(int(difference.argmax()), len(mean))
        raise ValueError(
            f"{path}: 'sigma' is not the covariance of 'outer_sum', 'feature_sum' and 'n': it differs by "
            f"{difference[i, j].item():.3g} at [{i}, {j}] (mean squares up to {scale.item():.3g}); the file is "
            "inconsistent."
        )
