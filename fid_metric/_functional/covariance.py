"""Mean and covariance from the float64 sums of n samples, and the check for digits lost in the subtraction.

``mean_and_covariance`` is the one place where the metric's sums (count n, feature sum, outer-product sum)
become the ``(d,)`` mean and ``(d, d)`` covariance a distance reads; it warns when the one-pass formula has
cancelled so many digits that FID loses its meaning.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fid_metric._warnings import warn_caller

_FLOAT64_DIGITS = -math.log10(2.0**-53)  # 15.95 significant digits: the unit round-off u = 2^-53
# _digits_lost is a lower bound: the sums' own round-off, which grows with the number of batches added, costs
# more. Above 13.95 lost, fewer than 2 digits remain before that round-off: the variance has no correct digit.
# That is still a warning, not an error: a feature that is constant over all samples (a collapsed generator's
# identical images) looks the same from the sums, and there the round-off is harmless to FID.
# Above 8 lost, FID's error from the covariance is no longer negligible next to the float32 network's own
# noise, and it grows tenfold per digit towards the 1e-4 promised against the peer libraries.
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

    Args:
        n: the number of samples, an int or a 0-d tensor, >= 2.
        feature_sum: ``(d,)`` sum of the samples (the mean is computed in float64).
        outer_sum: ``(d, d)`` float64 sum of their outer products ``x x^T``, on ``feature_sum``'s device.

    Raises:
        ValueError: the sums hold infinite or NaN values.

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
