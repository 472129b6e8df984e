"""The Fréchet distance against closed forms and scipy's matrix square root."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from fid_metric import frechet_distance
from fid_metric._functional.distance import _low_rank_factor, _lower_congruence, sqrt_factor, trace_sqrt_product


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


def _random_gaussian(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, 2 * d, generator=g, dtype=torch.float64)
    return torch.randn(d, generator=g, dtype=torch.float64), a @ a.T / (2 * d)


@pytest.mark.parametrize("d", [1, 16, 256, 600])
def test_commuting_covariances_closed_form(d: int) -> None:
    """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T: d^2 = |mu1 - mu2|^2 + sum(a + b - 2 sqrt(a b)), to 1e-9.

    d = 600 runs the triangular product pair's recursion at its default leaf size (256).
    """
    q = _orthogonal(d, seed=d)
    g = torch.Generator().manual_seed(d + 1)
    a = torch.rand(d, generator=g, dtype=torch.float64) * 3 + 0.01
    b = torch.rand(d, generator=g, dtype=torch.float64) * 3 + 0.01
    mu1, mu2 = torch.randn(2, d, generator=g, dtype=torch.float64)
    expected = (mu1 - mu2).square().sum() + (a + b - 2 * (a * b).sqrt()).sum()
    got = frechet_distance(mu1, q @ torch.diag(a) @ q.T, mu2, q @ torch.diag(b) @ q.T)
    assert got.dtype == torch.float64 and got.shape == ()
    assert abs(got - expected) / expected <= 1e-9


def test_strided_covariances_give_the_same_distance() -> None:
    """Transposed and sliced views (strides the recursion's GEMMs must respect) change nothing."""
    mu1, s1 = _random_gaussian(300, seed=3)
    mu2, s2 = _random_gaussian(300, seed=4)
    expected = frechet_distance(mu1, s1, mu2, s2)
    padded = torch.zeros(310, 320, dtype=torch.float64)
    padded[5:305, 7:307] = s2
    got = frechet_distance(mu1, s1.T.contiguous().T, mu2, padded[5:305, 7:307])
    assert abs(got - expected) <= 1e-12 * expected


def test_gradient_matches_the_closed_form() -> None:
    """Autograd goes through the plain products: dFID/dmu2 = 2 (mu2 - mu1), and for diagonal covariances
    dFID/dS2_ii = 1 - sqrt(a_i / b_i)."""
    g = torch.Generator().manual_seed(7)
    a = torch.rand(40, generator=g, dtype=torch.float64) + 0.5
    b = torch.rand(40, generator=g, dtype=torch.float64) * 2 + 0.1
    mu1, mu2 = torch.randn(2, 40, generator=g, dtype=torch.float64)
    mu2.requires_grad_(True)
    s2 = torch.diag(b).requires_grad_(True)
    value = frechet_distance(mu1, torch.diag(a), mu2, s2)
    value.backward()
    assert abs(value.item() - frechet_distance(mu1, torch.diag(a), mu2.detach(), torch.diag(b)).item()) <= 1e-12
    assert torch.allclose(mu2.grad, 2 * (mu2.detach() - mu1), rtol=1e-12)
    assert torch.allclose(s2.grad.diagonal(), 1 - (a / b).sqrt(), rtol=1e-8, atol=1e-10)


def test_matches_scipy_sqrtm_definition() -> None:
    """General covariances: tr sqrtm(S1 S2) from scipy in float64 agrees to 1e-9 relative."""
    mu1, s1 = _random_gaussian(64, seed=1)
    mu2, s2 = _random_gaussian(64, seed=2)
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = ((mu1 - mu2) ** 2).sum().item() + np.trace(s1.numpy() + s2.numpy() - 2 * covmean)
    assert abs(frechet_distance(mu1, s1, mu2, s2).item() - expected) / expected <= 1e-9


def test_symmetric_in_its_arguments() -> None:
    mu1, s1 = _random_gaussian(32, seed=3)
    mu2, s2 = _random_gaussian(32, seed=4)
    forward, backward = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert abs(forward - backward) / forward <= 1e-10


def test_identical_distributions_give_zero() -> None:
    mu, sigma = _random_gaussian(128, seed=5)
    assert abs(frechet_distance(mu, sigma, mu, sigma).item()) <= 1e-10 * sigma.trace().item()


def test_rank_deficient_covariances_are_finite_and_exact() -> None:
    """Covariances of n < d samples: the eigh fallback gives the closed form of commuting rank-r matrices."""
    d, r = 64, 10
    q = _orthogonal(d, seed=6)
    a = torch.cat([torch.linspace(0.5, 2, r, dtype=torch.float64), torch.zeros(d - r, dtype=torch.float64)])
    b = torch.cat([torch.linspace(1, 3, r, dtype=torch.float64), torch.zeros(d - r, dtype=torch.float64)])
    mu = torch.zeros(d, dtype=torch.float64)
    s1, s2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    assert int(torch.linalg.cholesky_ex(s1)[1]) != 0, "the test needs a singular covariance"
    factor = sqrt_factor(s1)
    assert not factor.lower_triangular and factor.matrix.shape == (d, r)
    got = frechet_distance(mu, s1, mu, s2)
    expected = (a + b - 2 * (a * b).sqrt()).sum()
    assert torch.isfinite(got) and abs(got - expected) / expected <= 1e-8


def _rank_deficient_pair(d: int, r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Commuting rank-r covariances ``Q diag(a) Q^T``, ``Q diag(b) Q^T`` and their closed-form
    ``tr sqrt(S1 S2) = sum sqrt(a b)``; the eigenvalues span 4 orders of magnitude."""
    q = _orthogonal(d, seed=seed)
    a = torch.cat([torch.logspace(-2, 2, r, dtype=torch.float64), torch.zeros(d - r, dtype=torch.float64)])
    b = torch.cat([torch.linspace(1, 3, r, dtype=torch.float64), torch.zeros(d - r, dtype=torch.float64)])
    return (q * a) @ q.T, (q * b) @ q.T, (a * b).sqrt().sum()


def test_rank_bound_gives_the_closed_form_without_eigh_of_sigma() -> None:
    """With ``rank_bound`` >= the rank (a covariance of n samples: n - 1), the factor comes from sigma restricted
    to its range: the closed form to 1e-12, the eigh factor's value to 1e-13, and no (d, d) eigendecomposition.
    Only the lower triangle is read, as LAPACK's eigh reads it."""
    d, r = 256, 12
    s1, s2, expected = _rank_deficient_pair(d, r, seed=21)
    eigh_calls = []
    real_eigh = torch.linalg.eigh
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.linalg, "eigh", lambda m: eigh_calls.append(m.shape[0]) or real_eigh(m))
        for bound in (r, r + 5, 3 * r):
            factor = sqrt_factor(s1, rank_bound=bound)
            assert factor.matrix.shape == (d, r) and not factor.lower_triangular
            assert abs(trace_sqrt_product(factor, s2) - expected) <= 1e-12 * expected
            garbage_above = s1.tril() + torch.full_like(s1, 7.0).triu(1)
            assert torch.equal(sqrt_factor(garbage_above, rank_bound=bound).matrix, factor.matrix)
    assert eigh_calls and max(eigh_calls) < d, "the (d, d) eigh ran"
    assert abs(trace_sqrt_product(sqrt_factor(s1), s2) - trace_sqrt_product(factor, s2)) <= 1e-13 * expected


def test_a_rank_bound_that_does_not_hold_falls_back_to_eigh() -> None:
    """A bound below the rank (beyond the 8 spare probe directions) is detected by the residual; the result is
    the eigh path's, exact."""
    d, r = 256, 40
    s1, s2, expected = _rank_deficient_pair(d, r, seed=22)
    assert _low_rank_factor(s1, rank_bound=r - 9) is None
    factor = sqrt_factor(s1, rank_bound=r - 9)
    assert factor.matrix.shape == (d, r)
    assert abs(trace_sqrt_product(factor, s2) - expected) <= 1e-12 * expected


def test_sqrt_factor_reuse_gives_the_same_value() -> None:
    mu1, s1 = _random_gaussian(48, seed=7)
    mu2, s2 = _random_gaussian(48, seed=8)
    factor = sqrt_factor(s1)
    assert factor.lower_triangular and torch.equal(factor.matrix, factor.matrix.tril())
    assert torch.allclose(factor.matrix @ factor.matrix.T, s1, rtol=0, atol=1e-12)
    assert frechet_distance(mu1, s1, mu2, s2, sigma1_factor=factor) == frechet_distance(mu1, s1, mu2, s2)


def test_float32_inputs_are_computed_in_float64() -> None:
    mu1, s1 = _random_gaussian(8, seed=9)
    mu2, s2 = _random_gaussian(8, seed=10)
    got = frechet_distance(mu1.float(), s1.float(), mu2.float(), s2.float())
    assert got.dtype == torch.float64


def test_rejects_mismatched_shapes() -> None:
    mu, sigma = _random_gaussian(4, seed=0)
    with pytest.raises(ValueError, match="shape \\(d,\\)"):
        frechet_distance(mu, sigma, mu[:3], sigma)
    with pytest.raises(ValueError, match="shape \\(d, d\\)"):
        frechet_distance(mu, sigma[:3], mu, sigma)


@pytest.mark.parametrize(("d", "block"), [(2, 256), (7, 2), (64, 256), (64, 8), (100, 7)])
def test_triangular_product_pair_equals_the_full_product(d: int, block: int) -> None:
    """The recursive L^T S L used for Cholesky factors has the lower triangle of the two plain products.

    Small ``block`` sizes make the recursion run several levels deep, with odd halves, on small matrices.
    """
    _, s1 = _random_gaussian(d, seed=11)
    _, s2 = _random_gaussian(d, seed=12)
    lower = torch.linalg.cholesky(s1)
    expected = (lower.T @ s2 @ lower).tril()
    got = _lower_congruence(lower, s2, block=block).tril()
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12 * expected.abs().max())


def test_never_negative_from_round_off() -> None:
    """Two equal Gaussians: the exact distance is 0, and round-off takes the unclamped sum below 0 for some of
    these matrices (checked, so the clamp is exercised); the result is clamped at 0."""
    below_zero = 0
    for seed in range(20):
        mu, sigma = _random_gaussian(64, seed)
        sigma = sigma * 1e3
        trace_term = 2 * sigma.trace() - 2 * trace_sqrt_product(sqrt_factor(sigma), sigma)
        below_zero += bool(trace_term < 0)
        assert frechet_distance(mu, sigma, mu, sigma).item() >= 0
    assert below_zero > 0, "no case went below zero: the clamp was not exercised"


def test_numpy_arrays_are_converted() -> None:
    mu1, s1 = _random_gaussian(16, 1)
    mu2, s2 = _random_gaussian(16, 2)
    from_numpy = frechet_distance(mu1.numpy(), s1.numpy(), mu2.numpy(), s2.numpy())
    assert from_numpy.dtype == torch.float64 and from_numpy.item() == frechet_distance(mu1, s1, mu2, s2).item()


@pytest.mark.parametrize("position", [0, 1, 2, 3])
def test_bad_inputs_are_refused_with_a_clear_error(position: int) -> None:
    mu1, s1 = _random_gaussian(8, 1)
    mu2, s2 = _random_gaussian(8, 2)
    args = [mu1, s1, mu2, s2]
    names = ["mu1", "sigma1", "mu2", "sigma2"]
    poisoned = list(args)
    poisoned[position] = args[position].clone()
    poisoned[position].view(-1)[3] = float("nan")
    with pytest.raises(ValueError, match=f"{names[position]} holds NaN or infinite values"):
        frechet_distance(*poisoned)
    if position in (1, 3):
        asymmetric = list(args)
        asymmetric[position] = args[position] + torch.triu(torch.ones(8, 8, dtype=torch.float64), 1)
        with pytest.raises(ValueError, match=f"{names[position]} is not symmetric"):
            frechet_distance(*asymmetric)
        indefinite = list(args)
        indefinite[position] = args[position] - 2 * torch.linalg.eigvalsh(args[position]).max() * torch.eye(8).double()
        indefinite[position][0, 0] += 10 * indefinite[position].abs().max()  # one large positive eigenvalue
        with pytest.raises(ValueError, match=f"{names[position]} is not a covariance"):
            frechet_distance(*indefinite)
