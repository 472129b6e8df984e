"""The Fréchet distance between two Gaussians, in float64, with a symmetric matrix square root.

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)

The trace term is computed from a factor A of S1 (A A^T = S1): the eigenvalues of the symmetric positive
semi-definite matrix A^T S2 A are those of S1 S2, so tr sqrt(S1 S2) = sum_i sqrt(lambda_i(A^T S2 A)). One
Cholesky (or, for a singular S1, an eigendecomposition: of S1 restricted to its range where the number of
samples bounds its rank, else ``eigh``), a triangular product pair and one ``eigvalsh``: no iterative
``scipy.linalg.sqrtm`` (pytorch-fid) and no non-symmetric ``eigvals`` of S1 S2 (torchmetrics), both slower
and both able to return complex round-off that has to be thrown away. Round-off negatives among the
eigenvalues are clamped to zero. Tests hold it to a closed form (commuting covariances) at 1e-9 relative and
to pytorch-fid and torchmetrics at 1e-4 relative on Inception features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class CovarianceFactor:
    """``matrix`` A with ``A @ A.T == sigma``: a ``(d, d)`` lower-triangular Cholesky factor, or ``(d, r)``."""

    matrix: Tensor
    lower_triangular: bool

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def to(self, device: torch.device) -> CovarianceFactor:
        return CovarianceFactor(self.matrix.to(device), self.lower_triangular)


def sqrt_factor(sigma: Tensor, rank_bound: int | None = None) -> CovarianceFactor:
    """A float64 factor A of a symmetric PSD ``(d, d)`` ``sigma`` (``A @ A.T == sigma``).

    The ``(d, d)`` Cholesky factor when ``sigma`` is positive definite. Otherwise (fewer samples than
    dimensions) ``V_r diag(sqrt(w_r))`` of its eigendecomposition, keeping the r eigenvalues above
    ``d * eps * max(w)``: the dropped directions hold only round-off, whose square roots (~1e-8 each) would
    otherwise add up in the trace term. Like LAPACK, reads only the lower triangle of ``sigma``. Compute it
    once for a fixed reference and pass it to :func:`frechet_distance` as ``sigma1_factor``.

    ``rank_bound``: an upper bound on the rank, e.g. ``n - 1`` for the covariance of n samples. Where it is
    well below d, the eigendecomposition is of ``sigma`` restricted to its range (``_low_rank_factor``,
    O(d^2 r) instead of ``eigh``'s O(d^3)); a bound that does not hold is detected and ``eigh`` used
    instead.
    """
    sigma = sigma.to(torch.float64)
    factor, info = torch.linalg.cholesky_ex(sigma)
    if int(info) == 0:
        return CovarianceFactor(factor, lower_triangular=True)
    if rank_bound is not None and 4 * (max(rank_bound, 0) + _OVERSAMPLING) <= sigma.shape[0]:
        low_rank = _low_rank_factor(sigma, max(rank_bound, 0))  # n = 0 samples: bound 0
        if low_rank is not None:
            return CovarianceFactor(low_rank, lower_triangular=False)
    eigenvalues, eigenvectors = torch.linalg.eigh(sigma)
    return CovarianceFactor(_eigen_factor(eigenvalues, eigenvectors, sigma.shape[0]), lower_triangular=False)


_OVERSAMPLING = 8  # probe directions beyond the rank bound
_RESIDUAL_TOLERANCE = 16  # times d * eps * max(w): the round-off of a factor whose bound held is ~eps * max(w)


def _low_rank_factor(sigma: Tensor, rank_bound: int) -> Tensor | None:
    """``(d, r)`` A with ``A @ A.T == sigma`` for a PSD ``sigma`` of rank at most ``rank_bound``, or None if
    ``sigma`` is further from ``A @ A.T`` than round-off (the bound did not hold).

    ``Q``: an orthonormal basis of ``sigma @ P`` for ``rank_bound + 8`` fixed random probe directions P, which
    spans the range of ``sigma`` when the rank is within the bound. ``Q^T sigma Q = V diag(w) V^T`` (small), and
    ``A = Q V_r diag(sqrt(w_r))`` with the eigenvalue cut of ``eigh``'s path. The probes come from a seeded
    generator: the same factor on every run and device.
    """
    d = sigma.shape[0]
    lower = sigma.tril()
    symmetric = lower + lower.tril(-1).T  # the lower triangle, as LAPACK reads it
    probes = torch.randn(d, rank_bound + _OVERSAMPLING, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    basis, _ = torch.linalg.qr(symmetric @ probes.to(sigma.device))
    eigenvalues, eigenvectors = torch.linalg.eigh(basis.T @ symmetric @ basis)
    factor = basis @ _eigen_factor(eigenvalues, eigenvectors, d)
    residual = (symmetric - factor @ factor.T).abs().max()
    largest = eigenvalues.max().clamp_min(0)
    if not bool(residual <= _RESIDUAL_TOLERANCE * d * torch.finfo(torch.float64).eps * largest):
        return None  # also for NaN: the eigh path and the callers' checks handle what is not a covariance
    return factor


def _eigen_factor(eigenvalues: Tensor, eigenvectors: Tensor, d: int) -> Tensor:
    """``V_r diag(sqrt(w_r))`` from the eigendecomposition ``(w, V)`` of a PSD matrix, over the r eigenvalues above
    ``d * eps * max(w)`` (d: the covariance's dimension; the rest is round-off); raises if ``w`` is clearly
    negative."""
    _check_psd(eigenvalues, "sigma1")
    keep = eigenvalues > eigenvalues.max().clamp_min(0) * d * torch.finfo(torch.float64).eps
    return eigenvectors[:, keep] * eigenvalues[keep].sqrt()


def trace_sqrt_product(sigma1_factor: CovarianceFactor, sigma2: Tensor) -> Tensor:
    """``tr((S1 S2)^1/2)`` as a float64 scalar, from a factor of S1 and a ``(d, d)`` S2."""
    a = sigma1_factor.matrix
    sigma2 = sigma2.to(device=a.device, dtype=torch.float64)
    differentiable = torch.is_grad_enabled() and (a.requires_grad or sigma2.requires_grad)
    if sigma1_factor.lower_triangular and not differentiable:
        congruent = _lower_congruence(a, sigma2)  # only its lower triangle is meaningful: all eigvalsh reads
    else:
        # An eigh factor (d, r), or autograd, which cannot follow _lower_congruence's writes into out=.
        congruent = a.T @ sigma2 @ a
    # (d, 0) for a zero S1 (identical samples): no eigenvalue, trace 0. S2 is checked whole by the caller.
    eigenvalues = torch.linalg.eigvalsh(congruent)
    return eigenvalues.clamp_min(0).sqrt().sum()


_PSD_TOLERANCE = 1e-6  # relative to the largest eigenvalue; round-off negatives are ~d * eps ~ 1e-13 at d = 2048
_SYMMETRY_TOLERANCE = 1e-6  # relative to the largest entry; float64 round-off is ~1e-16, float32's ~1e-7


def _check_psd(eigenvalues: Tensor, name: str) -> None:
    """Raise if the eigenvalues of a covariance go clearly below zero, beyond round-off."""
    lowest, highest = eigenvalues.min(), eigenvalues.max().clamp_min(0)
    if bool(lowest < -_PSD_TOLERANCE * highest):
        raise ValueError(
            f"{name} is not a covariance: it has the eigenvalue {lowest.item():.3g} against a largest of "
            f"{highest.item():.3g} (positive semi-definite matrices have none below zero beyond round-off)."
        )


def check_covariance(sigma: Tensor, name: str) -> None:
    """Raise unless the symmetric ``(d, d)`` float64 ``sigma`` is positive semi-definite up to round-off (no
    eigenvalue below -1e-6 times the largest), seeing the whole matrix.

    One Cholesky of ``sigma + tau I``, ``tau = 1e-6 * max(diag(sigma))``: it succeeds when no eigenvalue is
    below -tau, and tau is at most 1e-6 times the largest eigenvalue (a PSD matrix's diagonal is below it)
    and above float64 round-off (d * eps * max eigenvalue, since the largest eigenvalue is at most d times
    the largest diagonal entry). Only where it fails are the eigenvalues computed, to decide and to say by
    how much.
    """
    shifted = sigma.clone()
    shifted.diagonal().add_(1e-6 * sigma.diagonal().max().clamp_min(0))
    if int(torch.linalg.cholesky_ex(shifted)[1]) != 0:
        _check_psd(torch.linalg.eigvalsh(sigma), name)


def _as_float64(value: object, name: str, device: torch.device | None) -> Tensor:
    """A tensor or array as a float64 tensor on ``device``; NaN and infinite values are refused."""
    tensor = torch.as_tensor(value)
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must hold real numbers, got dtype {tensor.dtype}.")
    tensor = tensor.to(device=device or tensor.device, dtype=torch.float64)
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} holds NaN or infinite values.")
    return tensor


def check_symmetric(sigma: Tensor, name: str) -> None:
    """Raise unless the ``(d, d)`` ``sigma`` is symmetric up to 1e-6 of its largest entry (float32 round-off)."""
    asymmetry = (sigma - sigma.T).abs().max()
    if bool(asymmetry > _SYMMETRY_TOLERANCE * sigma.abs().max()):
        raise ValueError(
            f"{name} is not symmetric: entries differ from their transposes by up to {asymmetry.item():.3g}, "
            f"beyond round-off of its largest entry {sigma.abs().max().item():.3g}."
        )


def frechet_distance(
    mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor, *, sigma1_factor: CovarianceFactor | None = None
) -> Tensor:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) as a 0-d float64 tensor, never below 0.

    Round-off can take the exact value of two (nearly) equal Gaussians a little below zero; the result is
    clamped at 0, as a distance is.

    Args:
        mu1: ``(d,)`` mean: a tensor or numpy array (converted), any real dtype; the computation is float64,
            on ``mu1``'s device.
        sigma1: ``(d, d)`` symmetric positive semi-definite covariance, likewise.
        mu2: ``(d,)`` mean, likewise.
        sigma2: ``(d, d)`` covariance, likewise.
        sigma1_factor: optional ``sqrt_factor(sigma1)``, to reuse the factor of a fixed reference.

    Raises:
        ValueError: the shapes are not ``(d,)``, ``(d, d)`` with one ``d``; a value is NaN or infinite; a
            covariance is not symmetric (beyond 1e-6 of its largest entry) or has an eigenvalue below
            -1e-6 times its largest (not positive semi-definite beyond round-off). Each covariance is checked
            whole, whichever is singular.

    Example:
        Closed forms: equal covariances leave ``|mu1 - mu2|^2``; equal means and ``S1 = 4 I``, ``S2 = I`` in
        3 dimensions give ``tr(4 I) + tr(I) - 2 tr(2 I) = 12 + 3 - 12``.

        >>> import torch
        >>> from fid_metric import frechet_distance
        >>> eye = torch.eye(3, dtype=torch.float64)
        >>> frechet_distance(torch.zeros(3), eye, torch.tensor([1.0, 2.0, 2.0]), eye)
        tensor(9., dtype=torch.float64)
        >>> frechet_distance(torch.zeros(3), 4 * eye, torch.zeros(3), eye)
        tensor(3., dtype=torch.float64)
    """
    mu1 = _as_float64(mu1, "mu1", None)
    device = mu1.device
    mu2, sigma1, sigma2 = (_as_float64(v, n, device) for v, n in ((mu2, "mu2"), (sigma1, "sigma1"), (sigma2, "sigma2")))
    d = mu1.shape[-1] if mu1.ndim == 1 else -1
    if d < 1 or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            "Expected mu1, mu2 of shape (d,) and sigma1, sigma2 of shape (d, d) with one d; got "
            f"{tuple(mu1.shape)}, {tuple(sigma1.shape)}, {tuple(mu2.shape)}, {tuple(sigma2.shape)}."
        )
    check_symmetric(sigma1, "sigma1")
    check_symmetric(sigma2, "sigma2")
    if sigma1_factor is None:
        sigma1_factor = sqrt_factor(sigma1)  # checks sigma1 whole: a Cholesky, or its eigenvalues, or a residual
    check_covariance(sigma2, "sigma2")
    mean_term = (mu1 - mu2).square().sum()
    trace_term = sigma1.trace() + sigma2.trace() - 2 * trace_sqrt_product(sigma1_factor.to(device), sigma2)
    return (mean_term + trace_term).clamp_min(0)


_BLOCK = 256


def _lower_congruence(lower: Tensor, sigma: Tensor, block: int = _BLOCK) -> Tensor:
    """``L^T S L`` for a lower-triangular ``(d, d)`` L and a symmetric ``(d, d)`` S, float64: lower triangle only.

    The returned ``(d, d)`` matrix is right on and below the diagonal; above it, it holds zeros and partial
    sums, which ``eigvalsh`` never reads. ``W = S L`` skips L's zero upper triangle and ``L^T W`` computes
    only the lower block triangle of the symmetric result, recursing on L's diagonal blocks down to
    ``block``-wide leaves done as plain GEMMs: about 1.7 d^3 flops at d = 2048 (1.5 d^3 for large d) instead
    of two GEMMs' 4 d^3. torch has no ``trmm``. Not differentiable (it writes into ``out=`` views).
    """
    w = torch.empty_like(sigma)
    _times_lower(sigma, lower, w, block)
    product = torch.zeros_like(sigma)
    _lower_part_of_lower_t_times(lower, w, product, block)
    return product


def _times_lower(m: Tensor, lower: Tensor, out: Tensor, block: int) -> None:
    """``out = m @ lower`` for an ``(r, n)`` m, a lower-triangular ``(n, n)`` lower and an ``(r, n)`` out.

    About half a GEMM's flops. With lower = [[A, 0], [B, C]] in h = n // 2 blocks and m = [M1, M2]:
    ``[M1 A + M2 B, M2 C]``, recursing on the triangular A and C down to ``block`` columns, below which a
    plain GEMM beats more recursion. ``out`` may be a strided view (the recursion writes into its blocks).
    """
    n = lower.shape[0]
    if n <= block:
        torch.mm(m, lower, out=out)
        return
    h = n // 2
    _times_lower(m[:, :h], lower[:h, :h], out[:, :h], block)
    out[:, :h].addmm_(m[:, h:], lower[h:, :h])
    _times_lower(m[:, h:], lower[h:, h:], out[:, h:], block)


def _lower_part_of_lower_t_times(lower: Tensor, w: Tensor, out: Tensor, block: int) -> None:
    """Writes ``lower.T @ w`` into the diagonal blocks of a zeroed ``(n, n)`` out and the blocks below them.

    ``lower`` is ``(n, n)`` lower-triangular and ``w`` ``(n, n)``; the blocks above the diagonal blocks of
    ``out`` are not touched. With lower = [[A, 0], [B, C]] and w = [[W11, W12], [W21, W22]]: the lower
    blocks of ``L^T W`` are ``A^T W11 + B^T W21`` (recursing on A), ``C^T W21 = (W21^T C)^T`` and
    ``C^T W22`` (recursing on C).
    """
    n = lower.shape[0]
    if n <= block:
        torch.mm(lower.T, w, out=out)
        return
    h = n // 2
    a, b, c = lower[:h, :h], lower[h:, :h], lower[h:, h:]
    _lower_part_of_lower_t_times(a, w[:h, :h], out[:h, :h], block)
    out[:h, :h].addmm_(b.T, w[h:, :h])
    _times_lower(w[h:, :h].T, c, out[h:, :h].T, block)
    _lower_part_of_lower_t_times(c, w[h:, h:], out[h:, h:], block)
