"""Feature statistics: sums, merge, files (ours, pytorch-fid, clean-fid, ADM), fixed references in the metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import smooth_images
from PIL import Image
from pytorch_fid import fid_score
from test_metric import TinyFeatures

from fid_metric import FeatureStats, FrechetInceptionDistance, StatsMismatchError, frechet_distance
from fid_metric.stats import mean_and_covariance


def _features(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)


def test_sums_give_numpy_mean_and_covariance() -> None:
    f = _features(50, 6, seed=0)
    stats = FeatureStats.from_features(f)
    assert stats.n == 50 and stats.mergeable
    assert np.allclose(stats.mean.numpy(), f.numpy().mean(0), rtol=1e-12)
    assert np.allclose(stats.covariance.numpy(), np.cov(f.numpy(), rowvar=False), rtol=1e-10, atol=1e-12)


def test_covariance_needs_no_symmetrising_pass() -> None:
    """mean_and_covariance skips (C + C^T) / 2. X^T X from a BLAS is symmetric to round-off but not always to the
    bit (MKL summed the two triangles of a 300 x 257 product in different orders on one CI machine and not on
    another), so this checks what the shortcut rests on: the asymmetry is round-off, and the FID from the
    covariance equals the FID from its exactly symmetrised copy to 1e-12.
    """
    metric = FrechetInceptionDistance(TinyFeatures())
    for n in (1, 3, 16, 5):
        metric.update(smooth_images(n, 32, seed=n), real=True)
    outer = metric.real_features_cov_sum
    assert ((outer - outer.T).abs().max() / outer.abs().max()).item() <= 1e-15
    f = _features(300, 257, seed=5)
    _, covariance = mean_and_covariance(300, f.sum(0), f.T @ f)
    assert ((covariance - covariance.T).abs().max() / covariance.abs().max()).item() <= 1e-14
    other = _features(300, 257, seed=6)
    mu2, sigma2 = mean_and_covariance(300, other.sum(0), other.T @ other)
    mu1 = f.mean(0)
    as_is = frechet_distance(mu1, covariance, mu2, sigma2).item()
    symmetrised = frechet_distance(mu1, (covariance + covariance.T) / 2, mu2, (sigma2 + sigma2.T) / 2).item()
    assert abs(as_is - symmetrised) <= 1e-12 * symmetrised
    assert np.allclose(covariance.numpy(), np.cov(f.numpy(), rowvar=False), rtol=1e-10, atol=1e-10)


def test_loading_symmetrises_another_tools_covariance(tmp_path) -> None:
    """A file whose sigma is asymmetric at round-off level loads as its symmetric part, exactly."""
    f = _features(80, 9, seed=6).numpy()
    sigma = np.cov(f, rowvar=False)
    sigma[0, 1] += 1e-13
    np.savez(tmp_path / "other.npz", mu=f.mean(0), sigma=sigma)
    loaded = FeatureStats.load(tmp_path / "other.npz").covariance
    assert torch.equal(loaded, loaded.T)
    assert torch.allclose(loaded, torch.from_numpy((sigma + sigma.T) / 2), rtol=0, atol=1e-16)


def test_merging_shards_equals_one_pass() -> None:
    f = _features(40, 5, seed=1)
    merged = FeatureStats.from_features(f[:13]) + FeatureStats.from_features(f[13:])
    whole = FeatureStats.from_features(f)
    assert merged.n == 40
    assert torch.allclose(merged.outer_sum, whole.outer_sum, rtol=1e-14)
    assert torch.allclose(merged.covariance, whole.covariance, rtol=1e-12, atol=1e-13)


def test_round_trip_keeps_everything(tmp_path) -> None:
    stats = FeatureStats.from_features(
        _features(30, 4, seed=2), extractor="x/4", weights_sha256="ab", compat="tensorflow"
    )
    stats.save(tmp_path / "s.npz")
    loaded = FeatureStats.load(tmp_path / "s.npz")
    assert loaded.n == 30 and loaded.mergeable
    assert (loaded.extractor, loaded.weights_sha256, loaded.compat) == ("x/4", "ab", "tensorflow")
    assert torch.equal(loaded.outer_sum, stats.outer_sum) and torch.equal(loaded.covariance, stats.covariance)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as raw:
        assert str(raw["format"]) == "fid_metric.stats/1" and int(raw["feature_dim"]) == 4
        assert {"mu", "sigma", "n", "feature_sum", "outer_sum", "fid_metric_version"} <= set(raw.files)


def test_mean_covariance_files_are_references_but_not_mergeable(tmp_path) -> None:
    """clean-fid / pytorch-fid files hold mu and sigma only; ADM's also mu_s and sigma_s, kept for sFID."""
    f = _features(20, 3, seed=3)
    np.savez(
        tmp_path / "adm.npz",
        mu=f.mean(0).numpy(),
        sigma=np.cov(f.numpy(), rowvar=False),
        mu_s=np.ones(2),
        sigma_s=np.eye(2),
    )
    adm = FeatureStats.load(tmp_path / "adm.npz")
    assert adm.n is None and not adm.mergeable
    assert set(adm.extra) == {"mu_s", "sigma_s"} and torch.equal(
        adm.extra["sigma_s"], torch.eye(2, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="cannot be merged; they can still serve as a fixed reference"):
        adm.merge(FeatureStats.from_features(f))


def test_corrupt_truncated_and_wrong_files_fail_clearly(tmp_path) -> None:
    good = tmp_path / "good.npz"
    FeatureStats.from_features(_features(10, 3, seed=4)).save(good)
    data = good.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    np.savez(tmp_path / "nomu.npz", mean=np.zeros(3))
    np.savez(tmp_path / "shape.npz", mu=np.zeros(3), sigma=np.eye(4))
    np.savez(tmp_path / "nan.npz", mu=np.array([np.nan, 0.0]), sigma=np.eye(2))
    np.savez(tmp_path / "nosums.npz", mu=np.zeros(3), sigma=np.eye(3), n=np.array(5))
    np.savez(tmp_path / "pickle.npz", mu=np.array([object()], dtype=object), sigma=np.eye(1))
    cases = {
        "truncated.npz": "not a readable statistics file",
        "garbage.npz": "not a readable statistics file",
        "missing.npz": "does not exist",
        "nomu.npz": "needs at least 'mu' and 'sigma'",
        "shape.npz": "'mu' must be \\(d,\\) and 'sigma' \\(d, d\\)",
        "nan.npz": "NaN or infinite",
        "pickle.npz": "not a readable statistics file",
        "nosums.npz": "holds 'n' but not a scalar n with 'feature_sum' and 'outer_sum'",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message):
            FeatureStats.load(tmp_path / name)


def test_mismatches_are_errors() -> None:
    a = FeatureStats.from_features(_features(10, 3, seed=5), compat="tensorflow", extractor="inception-2015-12-05/3")
    with pytest.raises(
        StatsMismatchError, match="compat is 'tensorflow' in these statistics but 'pytorch-fid' in the others"
    ):
        a.merge(FeatureStats.from_features(_features(10, 3, seed=6), compat="pytorch-fid"))
    with pytest.raises(StatsMismatchError, match="feature_dim is 3 in these statistics but 4"):
        a.merge(FeatureStats.from_features(_features(10, 4, seed=7)))
    unknown = FeatureStats.from_features(_features(10, 3, seed=8))
    assert (a + unknown).compat == "tensorflow"


def test_fixed_reference_equals_two_sided_metric(tmp_path) -> None:
    real, fake = smooth_images(20, 16, seed=1), smooth_images(18, 16, seed=2)
    two_sided = FrechetInceptionDistance(TinyFeatures())
    two_sided.update(real, real=True)
    two_sided.update(fake, real=False)
    two_sided.save_real_stats(tmp_path / "ref.npz")
    metric = FrechetInceptionDistance(TinyFeatures(), real_stats=tmp_path / "ref.npz")
    metric.update(fake, real=False)
    first = metric.compute()
    factor = metric._reference_factor
    assert abs(first - two_sided.compute()) <= 1e-12 * first
    metric.reset()
    metric.update(fake[:9], real=False)
    metric.compute()
    assert metric._reference_factor is factor, "the reference factor must be computed once"
    with pytest.raises(ValueError, match="fixed reference statistics"):
        metric.update(real, real=True)
    assert int(metric.real_features_num_samples) == 0


def test_reference_with_other_settings_is_rejected(tmp_path, inception_weights) -> None:
    ref = FeatureStats.from_features(
        _features(10, 64, seed=9), compat="pytorch-fid", extractor="inception-2015-12-05/64"
    )
    with pytest.raises(StatsMismatchError, match="compat"):
        FrechetInceptionDistance(64, feature_extractor_weights_path=inception_weights, real_stats=ref)
    with pytest.raises(StatsMismatchError, match="feature_dim is 64 in real_stats but 2048 in this metric"):
        FrechetInceptionDistance(2048, feature_extractor_weights_path=inception_weights, real_stats=ref)
    wrong_weights = FeatureStats.from_features(_features(10, 64, seed=9), weights_sha256="0" * 64)
    with pytest.raises(StatsMismatchError, match="weights_sha256"):
        FrechetInceptionDistance(64, feature_extractor_weights_path=inception_weights, real_stats=wrong_weights)


def test_pytorch_fid_save_stats_file_is_a_reference(tmp_path, inception_weights, pytorch_fid_model) -> None:
    """A pytorch-fid --save-stats file gives the FID of the same images fed as real, to 1e-4."""
    real, fake = smooth_images(12, 48, seed=3), smooth_images(10, 48, seed=4)
    folder = tmp_path / "real"
    folder.mkdir()
    for i, img in enumerate(real):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:02d}.png")
    fid_score.save_fid_stats([str(folder), str(tmp_path / "pfid.npz")], 4, "cpu", 64, num_workers=0)
    in_memory = FrechetInceptionDistance(64, feature_extractor_weights_path=inception_weights, compat="pytorch-fid")
    in_memory.update(real, real=True)
    in_memory.update(fake, real=False)
    from_file = FrechetInceptionDistance(
        64, feature_extractor_weights_path=inception_weights, compat="pytorch-fid", real_stats=tmp_path / "pfid.npz"
    )
    from_file.update(fake, real=False)
    expected = in_memory.compute()
    assert abs(from_file.compute() - expected) / expected <= 1e-4


def test_statistics_carry_the_metric_metadata(inception_weights) -> None:
    metric = FrechetInceptionDistance(64, feature_extractor_weights_path=inception_weights, compat="pytorch-fid")
    metric.update(smooth_images(3, 32, seed=5), real=True)
    stats = metric.statistics(real=True)
    assert (stats.extractor, stats.compat, stats.n) == ("inception-2015-12-05/64", "pytorch-fid", 3)
    assert len(stats.weights_sha256) == 64
    value = frechet_distance(stats.mean, stats.covariance, stats.mean, stats.covariance)
    assert abs(value) < 1e-9
