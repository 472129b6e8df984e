"""Density and Coverage: equal to prdc's ``compute_prdc`` on the same features, and inside ``InceptionMetrics`` on
one and two processes, with their jackknife standard errors.

prdc computes its distances with scikit-learn in float64 here (the features are float64): on Gaussian features no
comparison is within round-off of a tie, and on integer features every distance is exact in both, so the counts
(density x k x M, coverage x N) must be equal, and the numbers bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyFeatures, ddp_features, feed, sampler_shard, smooth_images
from prdc import compute_prdc

from fid_metric import InceptionMetrics
from fid_metric._functional.density_coverage import density_coverage

N_IMAGES = 23  # odd: a DistributedSampler over 2 processes repeats one sample

pytestmark = pytest.mark.filterwarnings("ignore:FID from .* fewer samples than dimensions")


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int) -> dict[str, float]:
    values = compute_prdc(real_features=real.double().numpy(), fake_features=fake.double().numpy(), nearest_k=k)
    return {name: float(value) for name, value in values.items()}


def assert_equal_to_prdc(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[float, float]:
    expected = prdc(real, fake, k)
    density, coverage = density_coverage(real, fake, k=k)
    assert density.dtype == coverage.dtype == torch.float64 and density.ndim == coverage.ndim == 0
    assert round(float(density) * k * len(fake)) == round(expected["density"] * k * len(fake))
    assert round(float(coverage) * len(real)) == round(expected["coverage"] * len(real))
    assert (float(density), float(coverage)) == (expected["density"], expected["coverage"])
    return float(density), float(coverage)


def gaussian(n: int, d: int, generator: torch.Generator, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(n, d, generator=generator, dtype=torch.float64) * scale + shift


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("sizes", [(200, 200), (250, 170), (140, 260)])
def test_equal_to_prdc(seed: int, k: int, sizes: tuple[int, int]) -> None:
    """Overlapping Gaussian sets of equal and unequal sizes: density and coverage strictly between their bounds."""
    g = torch.Generator().manual_seed(seed)
    real, fake = gaussian(sizes[0], 16, g), gaussian(sizes[1], 16, g, shift=0.5, scale=0.9)
    density, coverage = assert_equal_to_prdc(real, fake, k)
    assert 0.1 < density < 2 and 0.1 < coverage < 0.99, (density, coverage)


@pytest.mark.parametrize("k", [2, 5])
def test_points_on_a_boundary_are_outside_as_prdcs(k: int) -> None:
    """Integer features: many generated points exactly on a real ball's boundary (and duplicates, radii of 0),
    which prdc's strict comparison counts outside (the guard: with <= the density would be larger)."""
    g = torch.Generator().manual_seed(10 + k)
    real = torch.randint(0, 3, (150, 6), generator=g).double()
    fake = torch.randint(0, 3, (120, 6), generator=g).double() + (torch.rand(120, 1, generator=g) < 0.3)
    density, _ = assert_equal_to_prdc(real, fake, k)
    distances = ((real[:, None] - fake[None]) ** 2).sum(-1)
    radii = ((real[:, None] - real[None]) ** 2).sum(-1).sort(dim=1).values[:, k]
    assert float((distances <= radii[:, None]).sum()) / (k * len(fake)) > density


def test_duplicated_points() -> None:
    """Real points repeated up to k times (their neighbours at distance 0) and generated points that are copies of
    real ones."""
    g = torch.Generator().manual_seed(20)
    base = gaussian(60, 12, g)
    real = base.repeat_interleave(torch.randint(1, 4, (60,), generator=g), dim=0)
    fake = torch.cat([base[:25], gaussian(50, 12, g, shift=0.2)])
    density, coverage = assert_equal_to_prdc(real, fake, 3)
    assert 0 < coverage < 1 and density > 0


def test_argument_checks() -> None:
    real, fake = torch.randn(10, 4), torch.randn(8, 4)
    with pytest.raises(ValueError, match=r"Density/coverage needs \(m, d\) and \(n, d\)"):
        density_coverage(real, fake[:, :3])
    with pytest.raises(ValueError, match="k must be a positive int below the real set's size"):
        density_coverage(real, fake, k=10)
    with pytest.raises(ValueError, match="k must be"):
        density_coverage(real, fake[:0], k=2)
    with pytest.raises(ValueError, match="finite"):
        density_coverage(real, torch.full((8, 4), float("nan")))
    assert density_coverage(real, fake[:2], k=9)[0].ndim == 0  # fewer generated features than k is allowed


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    return smooth_images(N_IMAGES, 16, seed=51), smooth_images(N_IMAGES, 16, seed=52) // 2 + 30


def _metric(feature: torch.nn.Module, **kwargs) -> InceptionMetrics:
    return InceptionMetrics(sfid=False, inception_score=False, feature=feature, density_coverage=True, **kwargs)


def test_inception_metrics_gives_prdcs_numbers_on_its_features() -> None:
    """The metric's density and coverage are prdc's on the extractor's features (k = 5 by default, or
    ``dc_neighborhood``); the arguments are checked and are part of the compute configuration."""
    real, fake = _images()
    network = TinyFeatures()
    for k in (5, 2):
        settings = {} if k == 5 else {"dc_neighborhood": k}
        values = feed(_metric(TinyFeatures(), **settings), real, fake, batch=5).compute()
        assert set(values) == {"fid", "density", "coverage"}
        expected = prdc(network(real), network(fake), k)
        assert (float(values["density"]), float(values["coverage"])) == (expected["density"], expected["coverage"])
    configuration = _metric(TinyFeatures(), dc_neighborhood=4)._compute_configuration()
    assert configuration["density_coverage"] is True and configuration["dc_neighborhood"] == 4
    for kwargs, match in [({"dc_neighborhood": 0}, "dc_neighborhood"), ({"density_coverage": 1}, "density_coverage")]:
        with pytest.raises(ValueError, match=match):
            InceptionMetrics(sfid=False, inception_score=False, feature=TinyFeatures(), **kwargs)


def test_jackknife_errors_are_those_of_recomputation_without_each_group() -> None:
    """With fid_groups=3, density_stderr and coverage_stderr are the delete-a-group jackknife (written out here in
    numpy) of prdc's numbers on the generated images without group g (sample j is in group j % 3)."""
    real, fake = _images()
    values = feed(_metric(TinyFeatures(), fid_groups=3), real, fake, batch=4).compute()
    network = TinyFeatures()
    x, y = network(real), network(fake)
    for name in ("density", "coverage"):
        dropped = np.array([prdc(x, y[torch.arange(N_IMAGES) % 3 != g], 5)[name] for g in range(3)])
        expected = np.sqrt(2 / 3 * ((dropped - dropped.mean()) ** 2).sum())
        assert expected > 0.01
        assert abs(float(values[f"{name}_stderr"]) - expected) <= 1e-12 * expected


def _shard_worker(rank: int, world: int) -> dict:
    """rank's DistributedSampler shard (samples rank, rank + W, ..., the last round padded with sample 0),
    exactly-once, with fid_groups=3."""
    real, fake = _images()
    mine = sampler_shard(N_IMAGES, world, rank)
    metric = _metric(ddp_features(), fid_groups=3, dataset_size=N_IMAGES)
    for start in range(0, len(mine), 4):
        metric.update(real[mine[start : start + 4]], real=True)
        metric.update(fake[mine[start : start + 4]], real=False)
    return {name: float(value) for name, value in metric.compute().items()}


@pytest.mark.slow
def test_two_processes_equal_one(ddp) -> None:
    """2 gloo processes (the gathered features arrive in float64, one process keeps float32: the same values)
    give one process's density, coverage and their standard errors bit for bit."""
    single = feed(_metric(ddp_features(), fid_groups=3), *_images()).compute()
    expected = {name: float(single[name]) for name in ("density", "coverage", "density_stderr", "coverage_stderr")}
    assert expected["density_stderr"] > 0 and expected["coverage_stderr"] > 0
    for values in ddp.run(_shard_worker):
        assert {name: values[name] for name in expected} == expected
