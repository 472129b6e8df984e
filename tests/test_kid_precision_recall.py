"""KID and Precision/Recall on given features, against torch-fidelity and torchmetrics on identical features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyFeatures, smooth_images
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import calculate_precision_recall_full
from torchmetrics.image.kid import poly_mmd

from fid_metric import InceptionMetrics
from fid_metric._functional import pairwise
from fid_metric._functional.kid import kernel_inception_distance
from fid_metric._functional.precision_recall import precision_recall as prc


def _features(n: int, d: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale + shift


@pytest.fixture(scope="module")
def sets() -> tuple[torch.Tensor, torch.Tensor]:
    """Real and generated features that overlap in part: precision and recall strictly between 0 and 1."""
    return _features(300, 16, seed=1), _features(250, 16, seed=2, shift=0.5)


def test_precision_recall_equals_torch_fidelity(sets, monkeypatch) -> None:
    """Both numbers equal torch-fidelity's (its convention: features_1 generated, features_2 real), also when the
    distances are taken in blocks of a few rows."""
    real, fake = sets

    def counts(values) -> tuple[int, int]:  # torch-fidelity returns float32 shares: compare the counts
        return round(float(values[0]) * len(fake)), round(float(values[1]) * len(real))

    expected = calculate_precision_recall_full(fake, real, neighborhood=3)
    assert 0.05 < expected[0] < 0.95 and 0.05 < expected[1] < 0.95, expected  # the test can tell them apart
    assert counts(prc(real, fake)) == counts(expected)
    monkeypatch.setattr(pairwise, "_BLOCK_ELEMENTS", 1000)  # 3-4 rows per block
    assert counts(prc(real, fake)) == counts(expected)
    for k in (1, 5):
        assert counts(prc(real, fake, k=k)) == counts(calculate_precision_recall_full(fake, real, neighborhood=k))


@pytest.mark.parametrize("k", [1, 3])
def test_points_on_a_boundary_are_inside_as_torch_fidelitys(k) -> None:
    """Integer features (float64: torch-fidelity's cdist is then exact, and so is its ordering of the square roots)
    put many points exactly on a ball's boundary: the counts equal torch-fidelity's, which counts them inside (the
    guard: with a strict comparison precision and recall would differ)."""
    g = torch.Generator().manual_seed(k)
    real = torch.randint(0, 3, (120, 6), generator=g).double()
    fake = torch.randint(0, 3, (100, 6), generator=g).double() + (torch.rand(100, 1, generator=g) < 0.3)
    expected = calculate_precision_recall_full(fake, real, neighborhood=k)
    precision, recall = prc(real, fake, k=k)
    assert (round(float(precision) * 100), round(float(recall) * 120)) == (
        round(expected[0] * 100),
        round(expected[1] * 120),
    )
    distances = ((real[:, None] - fake[None]) ** 2).sum(-1)
    radii = ((real[:, None] - real[None]) ** 2).sum(-1).sort(dim=1).values[:, k]
    strict = (distances < radii[:, None]).any(0).double().mean()
    assert float(strict) < float(precision), (strict, precision)


def test_kid_subsets_equal_torch_fidelity_on_the_same_indices(sets) -> None:
    """Given the subsets numpy's RandomState(seed) draws in torch-fidelity, mean and std equal its values."""
    real, fake = sets
    expected = kid_features_to_metric(
        fake, real, kid_subsets=7, kid_subset_size=40, rng_seed=123, verbose=False, kid_kernel="poly",
        kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1,
    )  # fmt: skip
    rng = np.random.RandomState(123)
    indices = [(rng.choice(len(fake), 40, replace=False), rng.choice(len(real), 40, replace=False)) for _ in range(7)]
    mean, std = kernel_inception_distance(
        fake, real, subset_indices=[(torch.as_tensor(i), torch.as_tensor(j)) for i, j in indices]
    )
    assert abs(float(mean) - expected["kernel_inception_distance_mean"]) <= 1e-12 * abs(
        expected["kernel_inception_distance_mean"]
    )
    assert (
        abs(float(std) - expected["kernel_inception_distance_std"]) <= 1e-10 * expected["kernel_inception_distance_std"]
    )
    assert expected["kernel_inception_distance_mean"] > 0.1 and expected["kernel_inception_distance_std"] > 0.01


@pytest.mark.parametrize("seed", [None, 7])
def test_inception_metrics_kid_is_torch_fidelitys_for_the_same_seed(seed) -> None:
    """The metric's KID (generated features as torch-fidelity's features_1, its input1) equals torch-fidelity's
    kid_features_to_metric for the same rng_seed (and, with the defaults, torch-fidelity's defaults: seed 2020)
    to 1e-9, on the metric's own features."""
    real, fake = smooth_images(30, 16, seed=60), smooth_images(26, 16, seed=61) // 2 + 40
    settings = {"kid_subsets": 9, "kid_subset_size": 20} | ({} if seed is None else {"kid_seed": seed})
    metric = InceptionMetrics(sfid=False, inception_score=False, feature=TinyFeatures(), kid=True, **settings)
    for imgs, is_real in ((real, True), (fake, False)):
        metric.update(imgs, real=is_real)
    values = metric.compute()
    expected = kid_features_to_metric(
        TinyFeatures()(fake), TinyFeatures()(real), kid_subsets=9, kid_subset_size=20,
        rng_seed=2020 if seed is None else seed, verbose=False, kid_kernel="poly", kid_kernel_poly_degree=3,
        kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1,
    )  # fmt: skip
    assert abs(float(values["kid"]) - expected["kernel_inception_distance_mean"]) <= 1e-9 * abs(
        expected["kernel_inception_distance_mean"]
    )
    assert abs(float(values["kid_std"]) - expected["kernel_inception_distance_std"]) <= 1e-9 * abs(
        expected["kernel_inception_distance_std"]
    )


def test_kid_over_all_pairs(sets, monkeypatch) -> None:
    """subset_size=None: equal sizes give torchmetrics' poly_mmd of the whole sets; unequal sizes the unbiased
    estimate written out in numpy; blocked sums change nothing but round-off; std is 0."""
    real, fake = sets
    equal = kernel_inception_distance(real[:250], fake, subset_size=None)
    assert abs(float(equal[0]) - float(poly_mmd(real[:250], fake))) <= 1e-12 * abs(float(equal[0]))
    assert float(equal[1]) == 0.0

    x, y = real.numpy(), fake.numpy()
    kxx, kyy, kxy = ((a @ b.T / 16 + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    expected = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    expected -= 2 * kxy.sum() / (m * n)
    whole = float(kernel_inception_distance(real, fake, subset_size=None)[0])
    assert abs(whole - expected) <= 1e-10 * abs(expected)
    monkeypatch.setattr(pairwise, "_BLOCK_ELEMENTS", 1000)
    assert abs(float(kernel_inception_distance(real, fake, subset_size=None)[0]) - expected) <= 1e-10 * abs(expected)


def test_kid_seeded_subsets_are_reproducible_and_checked(sets) -> None:
    real, fake = sets
    first = kernel_inception_distance(real, fake, subsets=5, subset_size=30, seed=4)
    assert torch.equal(
        torch.stack(first), torch.stack(kernel_inception_distance(real, fake, subsets=5, subset_size=30, seed=4))
    )
    assert not torch.equal(first[0], kernel_inception_distance(real, fake, subsets=5, subset_size=30, seed=5)[0])
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(real, fake, subset_size=251)
    with pytest.raises(ValueError, match=r"\(m, d\) and \(n, d\)"):
        kernel_inception_distance(real, fake[:, :3])
    with pytest.raises(ValueError, match="k must be"):
        prc(real, fake[:3], k=3)
