"""Feature statistics: sums, merge, files (ours, pytorch-fid, clean-fid, ADM), fixed references in the metric."""

from __future__ import annotations

import io
import pickle
import re
import signal
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PythonProcess, TinyFeatures, smooth_images
from PIL import Image
from pytorch_fid import fid_score

from fid_metric import FeatureStats, FrechetInceptionDistance, StatsMismatchError, frechet_distance
from fid_metric._functional.covariance import mean_and_covariance

# Tests that feed fewer images than feature dimensions on purpose (bookkeeping, not the Cholesky path).
pytestmark = pytest.mark.filterwarnings("ignore:FID from .* fewer samples than dimensions:UserWarning")


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
        assert str(raw["format"]) == "fid_metric._files.stats/1" and int(raw["feature_dim"]) == 4
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
    assert (a + unknown).compat == "" and (a + unknown).extractor == ""  # unknown is not a wildcard
    assert (a + a).compat == "tensorflow" and (a + a).extractor == "inception-2015-12-05/3"


def test_fixed_reference_equals_two_sided_metric(tmp_path) -> None:
    real, fake = smooth_images(20, 16, seed=1), smooth_images(18, 16, seed=2)
    two_sided = FrechetInceptionDistance(TinyFeatures())
    two_sided.update(real, real=True)
    two_sided.update(fake, real=False)
    two_sided.save_real_stats(tmp_path / "ref.npz")
    metric = FrechetInceptionDistance(TinyFeatures(), real_stats=tmp_path / "ref.npz")
    metric.update(fake, real=False)
    first = metric.compute()
    factor = metric._reference._factors[""]
    assert abs(first - two_sided.compute()) <= 1e-12 * first
    metric.reset()
    metric.update(fake[:9], real=False)
    metric.compute()
    assert metric._reference._factors[""] is factor, "the reference factor must be computed once"
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


def test_pytorch_fid_save_stats_file_is_a_reference(
    tmp_path, inception_weights, inception_fid, pytorch_fid_random_weights
) -> None:
    """A pytorch-fid --save-stats file gives the FID of the same images fed as real, to 1e-4."""
    real, fake = smooth_images(12, 48, seed=3), smooth_images(10, 48, seed=4)
    folder = tmp_path / "real"
    folder.mkdir()
    for i, img in enumerate(real):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:02d}.png")
    fid_score.save_fid_stats([str(folder), str(tmp_path / "pfid.npz")], 4, "cpu", 64, num_workers=0)
    in_memory = inception_fid(64, compat="pytorch-fid")
    in_memory.update(real, real=True)
    in_memory.update(fake, real=False)
    with pytest.raises(StatsMismatchError, match="does not record which definition of FID made it"):
        FrechetInceptionDistance(
            64, feature_extractor_weights_path=inception_weights, compat="pytorch-fid", real_stats=tmp_path / "pfid.npz"
        )
    stated = FeatureStats.load(tmp_path / "pfid.npz", compat="pytorch-fid")  # the caller says what the file holds
    assert (stated.compat, stated.extractor) == ("pytorch-fid", "inception-2015-12-05/64")
    from_file = FrechetInceptionDistance(
        64, feature_extractor_weights_path=inception_weights, compat="pytorch-fid", real_stats=stated
    )
    from_file.update(fake, real=False)
    expected = in_memory.compute()
    assert abs(from_file.compute() - expected) / expected <= 1e-4


def test_statistics_carry_the_metric_metadata(inception_fid) -> None:
    metric = inception_fid(64, compat="pytorch-fid")
    metric.update(smooth_images(3, 32, seed=5), real=True)
    stats = metric.statistics(real=True)
    assert (stats.extractor, stats.compat, stats.n) == ("inception-2015-12-05/64", "pytorch-fid", 3)
    assert len(stats.weights_sha256) == 64
    value = frechet_distance(stats.mean, stats.covariance, stats.mean, stats.covariance)
    assert abs(value) < 1e-9


# --- Files are written atomically (issue #10, part 3) ---

_SLOW_SAVE = """
import io, sys, time
import numpy as np
import torch
from fid_metric import FeatureStats

real_savez = np.savez


def half_then_hang(file, **arrays):
    buffer = io.BytesIO()
    real_savez(buffer, **arrays)
    data = buffer.getvalue()
    file.write(data[: len(data) // 2])
    file.flush()
    print("half written", flush=True)
    time.sleep(120)


np.savez = half_then_hang
FeatureStats.from_features(torch.randn(40, 6, dtype=torch.float64)).save(sys.argv[1])
"""


def _same_stats(loaded: FeatureStats, saved: FeatureStats) -> bool:
    """``loaded`` is ``saved`` as a file holds it (loading symmetrises ``outer_sum`` exactly)."""
    symmetric = (saved.outer_sum + saved.outer_sum.T) / 2
    return loaded.n == saved.n and torch.equal(loaded.mean, saved.mean) and torch.equal(loaded.outer_sum, symmetric)


@pytest.mark.slow
def test_a_writer_killed_mid_save_leaves_the_old_file(tmp_path) -> None:
    """SIGKILL while half of the new file is written: the old file is intact, no partial .npz appears."""
    path = tmp_path / "ref.npz"
    old = FeatureStats.from_features(_features(30, 6, seed=20))
    old.save(path)
    child = PythonProcess("-c", _SLOW_SAVE, str(path))
    try:
        stop = time.monotonic() + 60
        while "half written\n" not in child.stdout() and child.returncode is None and time.monotonic() < stop:
            time.sleep(0.02)
        assert child.stdout() == "half written\n", child.wait(0).stderr
    finally:
        child.send_signal(signal.SIGKILL)
        assert child.wait(60).returncode == -signal.SIGKILL
    assert _same_stats(FeatureStats.load(path), old)
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".npz"] == ["ref.npz"]


def test_concurrent_saves_leave_one_complete_file(tmp_path, monkeypatch) -> None:
    """Two threads save different statistics to one path, their writes interleaved (a: first half; b: all;
    a: second half). The result is one of the two files, complete, and no temporary file is left."""
    path = tmp_path / "ref.npz"
    stats = {
        "a": FeatureStats.from_features(_features(30, 5, seed=21)),
        "b": FeatureStats.from_features(_features(30, 5, seed=22)),
    }
    real_savez = np.savez
    both_started, a_wrote_half, b_finished = threading.Barrier(2, timeout=30), threading.Event(), threading.Event()

    def interleaved_savez(file, **arrays) -> None:
        buffer = io.BytesIO()
        real_savez(buffer, **arrays)
        data = buffer.getvalue()
        both_started.wait()
        if threading.current_thread().name == "a":
            file.write(data[: len(data) // 2])
            file.flush()
            a_wrote_half.set()
            assert b_finished.wait(timeout=30)
            file.write(data[len(data) // 2 :])
        else:
            assert a_wrote_half.wait(timeout=30)
            file.write(data)
            file.flush()
            b_finished.set()

    monkeypatch.setattr(np, "savez", interleaved_savez)
    errors = []

    def save(name: str) -> None:
        try:
            stats[name].save(path)
        except Exception as err:  # reported by the main thread, after join
            errors.append(err)
            b_finished.set()
            a_wrote_half.set()

    threads = [threading.Thread(target=save, args=(name,), name=name) for name in stats]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    loaded = FeatureStats.load(path)
    assert _same_stats(loaded, stats["a"]) or _same_stats(loaded, stats["b"])
    assert list(tmp_path.iterdir()) == [path]


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch) -> None:
    path = tmp_path / "ref.npz"
    old = FeatureStats.from_features(_features(30, 4, seed=23))
    old.save(path)

    def disk_full(file, **arrays) -> None:
        file.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        FeatureStats.from_features(_features(30, 4, seed=24)).save(path)
    assert _same_stats(FeatureStats.load(path), old)
    assert list(tmp_path.iterdir()) == [path]


def test_save_to_a_bad_path_says_what_is_wrong(tmp_path) -> None:
    stats = FeatureStats.from_features(_features(10, 3, seed=25))
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(ValueError, match=r"cannot write .*missing.*: folder .*missing does not exist"):
        stats.save(tmp_path / "missing" / "ref.npz")
    with pytest.raises(ValueError, match=r"cannot write .*folder\.npz: it is a directory"):
        stats.save(tmp_path / "folder.npz")


# --- Reading files: only the keys used, headers checked first, consistency (issue #10, part 4) ---


def _npy(shape: tuple[int, ...], dtype: str, data: bytes = b"", fortran: bool = False) -> bytes:
    """A .npy member: a version 1.0 header claiming ``shape`` and ``dtype``, followed by ``data`` as is."""
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": fortran, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + data


def _array_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _zip(path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_reads_other_tools_files_without_touching_unused_keys(tmp_path) -> None:
    """clean-fid (compressed, float32 mu), ADM (mu, sigma, mu_s, sigma_s and a 10 GB ``arr_0`` of images that
    must not be read: here only its header exists), big-endian and Fortran-ordered arrays."""
    f = _features(40, 4, seed=26).numpy()
    mu, sigma = f.mean(0), np.cov(f, rowvar=False)
    np.savez_compressed(tmp_path / "cleanfid.npz", mu=mu.astype(np.float32), sigma=sigma)
    cleanfid = FeatureStats.load(tmp_path / "cleanfid.npz")
    assert torch.equal(cleanfid.mean, torch.from_numpy(mu.astype(np.float32).astype(np.float64)))
    adm = {
        "arr_0.npy": _npy((50000, 256, 256, 3), "uint8"),
        "mu.npy": _array_npy(mu.astype(">f8")),
        "sigma.npy": _array_npy(np.asfortranarray(sigma)),
        "mu_s.npy": _array_npy(np.arange(3.0)),
        "sigma_s.npy": _array_npy(np.eye(3)),
    }
    _zip(tmp_path / "adm.npz", adm, zipfile.ZIP_DEFLATED)
    loaded = FeatureStats.load(tmp_path / "adm.npz")
    assert torch.equal(loaded.mean, torch.from_numpy(mu)) and torch.equal(loaded.covariance, torch.from_numpy(sigma))
    assert set(loaded.extra) == {"mu_s", "sigma_s"} and torch.equal(loaded.extra["sigma_s"], torch.eye(3).double())


def test_bad_headers_and_non_npz_files_are_refused_before_reading(tmp_path) -> None:
    """Each file fails with a ValueError naming it and saying what is wrong, having allocated < 16 MB (numpy's
    arrays are traced by tracemalloc): a header's claim is refused before memory is set aside for it."""
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(tmp_path / "renamed.npz")
    (tmp_path / "folder.npz").mkdir()
    cases = {
        "renamed.npz": (None, r"is a \.npy file \(one array, numpy\.save\), not an \.npz"),
        "huge_mu.npz": ({"mu.npy": _npy((10**9,), "<f8"), "sigma.npy": _npy((2, 2), "<f8")}, r"'mu'.*at most"),
        "huge_sigma.npz": ({"mu.npy": _npy((70000,), "<f8"), "sigma.npy": _npy((70000, 70000), "<f8")}, "at most"),
        "short.npz": ({"mu.npy": _npy((3,), "<f8", b"\0" * 8), "sigma.npy": _array_npy(np.eye(3))}, "'mu'.*24"),
        "complex.npz": ({"mu.npy": _array_npy(np.zeros(2)), "sigma.npy": _array_npy(np.eye(2) + 0j)}, "'sigma'.*dtype"),
        "text.npz": ({"mu.npy": b"0.1 0.2", "sigma.npy": _array_npy(np.eye(2))}, "'mu'.*not a .npy array"),
        "object.npz": ({"mu.npy": _npy((2,), "O"), "sigma.npy": _array_npy(np.eye(2))}, "'mu'.*dtype object"),
        "folder.npz": (None, "is a directory"),
    }
    for name, (members, message) in cases.items():
        if members is not None:
            _zip(tmp_path / name, members, zipfile.ZIP_DEFLATED)
        tracemalloc.start()
        try:
            with pytest.raises(ValueError, match=message) as caught:
                FeatureStats.load(tmp_path / name)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert name in str(caught.value), name
        assert peak < 2**24, (name, peak)


def test_our_files_are_checked_for_internal_consistency(tmp_path) -> None:
    """A file of ours whose fields disagree says which field is wrong."""
    f = _features(20, 3, seed=27).numpy()
    good = {"n": np.array(20), "feature_sum": f.sum(0), "outer_sum": f.T @ f, "mu": f.mean(0)}
    good["sigma"] = (good["outer_sum"] - 20 * np.outer(good["mu"], good["mu"])) / 19
    np.savez(tmp_path / "good.npz", **good)
    assert FeatureStats.load(tmp_path / "good.npz").n == 20
    bad_sigma = good["sigma"].copy()
    bad_sigma[0, 0] *= 1.5
    cases = {
        "sigma": ({"sigma": bad_sigma}, "'sigma' is not the covariance of 'outer_sum'"),
        "n1": ({"n": np.array(1), "feature_sum": f[:1].sum(0), "mu": f[0]}, "'n' must be an integer >= 2"),
        "nfrac": ({"n": np.array(20.5)}, "'n' must be an integer >= 2, got 20.5"),
        "sum_inf": ({"feature_sum": np.array([np.inf, 0, 0])}, "'feature_sum' holds NaN or infinite"),
        "outer_nan": ({"outer_sum": np.full((3, 3), np.nan)}, "'outer_sum' holds NaN or infinite"),
        "sigma_s": ({"mu_s": np.zeros(2), "sigma_s": np.eye(3)}, "'mu_s' must be \\(k,\\) and 'sigma_s' \\(k, k\\)"),
    }
    for name, (changes, message) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **{**good, **changes})
        with pytest.raises(ValueError, match=message) as caught:
            FeatureStats.load(tmp_path / f"{name}.npz")
        assert f"{name}.npz" in str(caught.value), name


# --- Cancellation in the one-pass covariance (issue #10, part 8) ---


def _batched_sums(x: torch.Tensor, batch: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """The metric's accumulation: a float64 sum and X^T X added batch by batch."""
    total, outer = (
        torch.zeros(x.shape[1], dtype=torch.float64),
        torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64),
    )
    for start in range(0, len(x), batch):
        total.add_(x[start : start + batch].sum(0))
        outer.addmm_(x[start : start + batch].T, x[start : start + batch])
    return total, outer


def _inception_like(n: int, d: int, seed: int) -> torch.Tensor:
    """Non-negative, correlated features with mean ~0.3 and spreads 0.03 to 0.3, float32 values (pool3-like)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    spread = torch.linspace(0.3, 0.03, d, dtype=torch.float64)
    return torch.relu(0.3 + spread * z / d**0.5).float().double()


def test_cancellation_warns_with_the_digits_lost(recwarn) -> None:
    """Inception-like features (and an all-zero one) lose at most ~2 digits: no warning. Shifted by 1e4 they lose ~11
    of float64's 15.95 digits: a warning names the worst feature and the digits, and numpy.cov (two-pass, the
    independent reference) shows that many digits lost, within 3 (the accumulation's own growth)."""
    x = _inception_like(2000, 16, seed=28)
    with_dead_feature = x.clone()
    with_dead_feature[:, 5] = 0
    mean_and_covariance(2000, *_batched_sums(x))
    mean_and_covariance(2000, *_batched_sums(with_dead_feature))
    assert not [w for w in recwarn if "digits" in str(w.message)]
    shifted = x + 1e4
    reference = np.cov(shifted.numpy(), rowvar=False)
    with pytest.warns(UserWarning, match=r"feature (\d+) lost (\d+\.\d) of float64's 15\.9") as caught:
        _, covariance = mean_and_covariance(2000, *_batched_sums(shifted))
    message = next(str(w.message) for w in caught if "digits" in str(w.message))
    feature, digits = re.search(r"feature (\d+) lost (\d+\.\d)", message).groups()
    variance = np.diag(reference)
    expected = np.log10(1 + shifted.numpy().mean(0) ** 2 / variance)
    assert int(feature) == int(np.argmax(expected)) and abs(float(digits) - expected.max()) < 0.1
    observed = 15.95 + np.log10(np.max(np.abs(np.diag(covariance.numpy()) - variance) / variance))
    assert float(digits) - 0.5 <= observed <= float(digits) + 3, (observed, digits)


def test_cancellation_beyond_float64_warns_that_no_digit_is_left() -> None:
    """The issue's example: mean 1e8, unit spread. (outer_sum - n mean mean^T) / (n - 1) keeps no correct digit
    (checked against numpy.cov, so that the test proves something), and mean_and_covariance says so. A warning,
    not an error: a collapsed generator's constant features look the same from the sums and are harmless."""
    g = torch.Generator().manual_seed(29)
    x = 1e8 + torch.randn(2000, 16, generator=g, dtype=torch.float64)
    total, outer = _batched_sums(x)
    mean = total.numpy() / 2000
    one_pass = (outer.numpy() - 2000 * np.outer(mean, mean)) / 1999
    reference = np.cov(x.numpy(), rowvar=False)
    assert np.max(np.abs(np.diag(one_pass) - np.diag(reference)) / np.diag(reference)) > 0.5
    with pytest.warns(UserWarning, match=r"feature \d+ .*no correct digit left"):
        mean_and_covariance(2000, total, outer)
    with pytest.warns(UserWarning, match=r"feature \d+ .*no correct digit left"):
        FeatureStats.from_features(x)


# --- which definition of FID statistics hold ----------------------------------------------------------------------


def _bare(path, d: int = 64) -> Path:
    """A file of mu and sigma only, as pytorch-fid's --save-stats and clean-fid write them."""
    np.savez(path, mu=np.zeros(d), sigma=np.eye(d))
    return path


@pytest.mark.parametrize(
    ("name", "compat"),
    [
        ("cifar10_clean_train_32.npz", "clean-fid"),
        ("FFHQ_legacy_tensorflow_trainval_1024.npz", "tensorflow"),
        ("lsun_church_legacy_pytorch_train_256.npz", "pytorch-fid"),
        ("cifar10_clean_clip_vit_b_32_train_32.npz", ""),  # CLIP features: no compat mode applies
        ("ffhq_clean_trainval70k_1024.npz", "clean-fid"),
        ("pfid.npz", ""),
        ("gan_clean_ema_256.npz", ""),  # not clean-fid's split names
        ("run_clean_0_1.npz", ""),
    ],
)
def test_a_clean_fid_file_name_says_its_definition(tmp_path, name: str, compat: str) -> None:
    stats = FeatureStats.load(_bare(tmp_path / name))
    assert stats.compat == compat
    assert stats.extractor == ("inception-2015-12-05/64" if compat else "")


def test_an_adm_reference_batch_is_tensorflows(tmp_path) -> None:
    path = tmp_path / "VIRTUAL_imagenet64_labeled.npz"
    np.savez(path, arr_0=np.zeros((2, 8, 8, 3), np.uint8), mu=np.zeros(2048), sigma=np.eye(2048))
    stats = FeatureStats.load(path)
    assert (stats.compat, stats.extractor) == ("tensorflow", "inception-2015-12-05/2048")
    with pytest.raises(StatsMismatchError, match="is an ADM reference batch, which holds compat='tensorflow'"):
        FeatureStats.load(path, compat="pytorch-fid")


def test_a_stated_definition_must_agree_with_the_recorded_one(tmp_path) -> None:
    FeatureStats.from_features(torch.randn(8, 4, dtype=torch.float64), compat="torchmetrics").save(tmp_path / "a.npz")
    assert FeatureStats.load(tmp_path / "a.npz", compat="torchmetrics").compat == "torchmetrics"
    with pytest.raises(
        StatsMismatchError, match="records compat='torchmetrics' statistics, not the compat='clean-fid'"
    ):
        FeatureStats.load(tmp_path / "a.npz", compat="clean-fid")
    with pytest.raises(StatsMismatchError, match="named as clean-fid's mode='clean' files"):
        FeatureStats.load(_bare(tmp_path / "cifar10_clean_train_32.npz"), compat="tensorflow")
    with pytest.raises(ValueError, match="`compat` must be one of"):
        FeatureStats.load(tmp_path / "a.npz", compat="clean")


def test_a_metric_refuses_statistics_of_another_or_an_unknown_definition(tmp_path, inception_weights) -> None:
    """A clean-fid 'clean' file in a compat='tensorflow' metric, and a bare file in any Inception metric, were used
    without a word; a custom extractor, to which no compat mode applies, takes a bare file."""
    clean = _bare(tmp_path / "cifar10_clean_train_32.npz")
    with pytest.raises(StatsMismatchError, match="compat is 'clean-fid' in real_stats but 'tensorflow' in this metric"):
        FrechetInceptionDistance(64, feature_extractor_weights_path=inception_weights, real_stats=clean)
    metric = FrechetInceptionDistance(
        64, compat="clean-fid", feature_extractor_weights_path=inception_weights, real_stats=clean
    )
    assert metric._reference is not None
    with pytest.raises(StatsMismatchError, match=r"\(.*pfid\.npz\) does not record which definition of FID made it"):
        FrechetInceptionDistance(
            64, feature_extractor_weights_path=inception_weights, real_stats=_bare(tmp_path / "pfid.npz")
        )
    custom = FrechetInceptionDistance(TinyFeatures(), real_stats=_bare(tmp_path / "custom.npz", d=12))
    assert custom._reference is not None


def _edm2_pickle(path: Path, d_fid: int = 6, d_dino: int = 4) -> Path:
    """What NVlabs/edm2's calculate_metrics.py save_stats writes: pickle.dump of numpy arrays in a dict."""
    g = np.random.default_rng(0)
    entries = {}
    for key, d in (("fid", d_fid), ("fd_dinov2", d_dino)):
        x = g.standard_normal((50, d))
        entries[key] = {"mu": x.mean(0), "sigma": np.cov(x, rowvar=False)}
    with path.open("wb") as file:
        pickle.dump({"num_images": 50, **entries}, file)
    return path


def test_an_edm2_reference_pickle_is_read_with_its_definitions(tmp_path) -> None:
    path = _edm2_pickle(tmp_path / "img512.pkl")
    fid = FeatureStats.load(path, key="fid")
    assert (fid.compat, fid.extractor, fid.n, fid.feature_dim) == ("tensorflow", "inception-2015-12-05/6", 50, 6)
    with path.open("rb") as file:
        raw = pickle.load(file)  # the test's own trusted file
    assert np.array_equal(fid.covariance.numpy(), raw["fid"]["sigma"])
    dino = FeatureStats.load(path, key="fd_dinov2")
    assert (dino.compat, dino.extractor) == ("", "dinov2-vitl14-edm2/4")
    with pytest.raises(ValueError, match="say which with key="):
        FeatureStats.load(path)
    with pytest.raises(StatsMismatchError, match="records compat='tensorflow' statistics, not the compat='clean-fid'"):
        FeatureStats.load(path, key="fid", compat="clean-fid")


class _RunsCode:
    """Unpickling this calls ``open(path, "w")``: a file appears if the loader ran it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("where", ["entry", "array"])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, where: str) -> None:
    marker = tmp_path / "ran"
    payload = (
        {"fid": {"mu": np.zeros(3), "sigma": _RunsCode(marker)}} if where == "array" else {"fid": _RunsCode(marker)}
    )
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"num_images": 5, **payload}))
    with pytest.raises(ValueError, match=r"evil\.pkl is not a readable EDM2 statistics pickle: it refers to io\.open"):
        FeatureStats.load(path, key="fid")
    assert not marker.exists()
    pickle.loads(path.read_bytes()).get("fid")  # what an unrestricted load does: the file appears
    assert marker.exists()


def test_features_of_another_network_take_no_compat(tmp_path) -> None:
    """A compat mode is a pipeline into the Inception network: stating one for DINOv2 features, or for a file
    clean-fid names as CLIP features, is refused instead of labelling them Inception FID."""
    dino = FeatureStats.from_features(torch.randn(8, 4, dtype=torch.float64), extractor="dinov2-vitl14-edm2/4")
    dino.save(tmp_path / "dino.npz")
    with pytest.raises(StatsMismatchError, match="holds features of dinov2-vitl14-edm2/4, to which no compat mode"):
        FeatureStats.load(tmp_path / "dino.npz", compat="tensorflow")
    assert FeatureStats.load(tmp_path / "dino.npz").extractor == "dinov2-vitl14-edm2/4"
    clip = _bare(tmp_path / "cifar10_clean_clip_vit_b_32_train_32.npz", d=8)
    with pytest.raises(StatsMismatchError, match="CLIP ViT-B/32"):
        FeatureStats.load(clip, compat="clean-fid")


def test_a_compat_outside_the_modes_is_refused() -> None:
    with pytest.raises(ValueError, match="`compat` must be one of"):
        FeatureStats.from_features(torch.randn(8, 4, dtype=torch.float64), compat="clean_fid")


def test_the_networks_arithmetic_is_recorded_and_checked(tmp_path) -> None:
    """Statistics of a fast mode (arithmetic="bf16") are not the definition: an exact metric refuses them."""
    fast = FeatureStats.from_features(torch.randn(30, 12, dtype=torch.float64), arithmetic="bf16")
    fast.save(tmp_path / "fast.npz")
    assert FeatureStats.load(tmp_path / "fast.npz").arithmetic == "bf16"
    with pytest.raises(StatsMismatchError, match="arithmetic is 'bf16' in real_stats but 'exact' in this metric"):
        FrechetInceptionDistance(TinyFeatures(), real_stats=tmp_path / "fast.npz")
    metric = FrechetInceptionDistance(TinyFeatures())
    metric.update(smooth_images(4, 16, seed=1), real=True)
    assert metric.statistics(real=True).arithmetic == "exact"


def test_the_unpicklers_stand_ins_do_only_what_numpys_pickles_ask(tmp_path) -> None:
    """numpy's own pickles of arrays load at every protocol; a _reconstruct that would allocate (a tiny file asking
    for a 16,384-d array, or one left unfilled with process memory) and an object dtype are refused."""
    mu, sigma = np.arange(4.0), np.eye(4)
    for protocol in (0, 2, 4, 5):
        (tmp_path / "p.pkl").write_bytes(pickle.dumps({"fid": {"mu": mu, "sigma": sigma}}, protocol=protocol))
        assert np.array_equal(FeatureStats.load(tmp_path / "p.pkl").mean.numpy(), mu), protocol
    unfilled = pickle.dumps({"fid": {"mu": mu, "sigma": sigma}}, protocol=2).replace(b"K\x00\x85", b"K\x40\x85", 1)
    (tmp_path / "unfilled.pkl").write_bytes(unfilled)
    with pytest.raises(ValueError, match="asks numpy.s _reconstruct for something numpy.s own pickles never do"):
        FeatureStats.load(tmp_path / "unfilled.pkl")
    objects = np.array([1.0, "x"], dtype=object)
    (tmp_path / "objects.pkl").write_bytes(pickle.dumps({"fid": {"mu": objects, "sigma": sigma}}))
    with pytest.raises(ValueError, match="not of numbers"):
        FeatureStats.load(tmp_path / "objects.pkl")
