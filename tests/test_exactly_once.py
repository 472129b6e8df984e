"""Exactly-once accounting: DDP's padded validation sampler must not change FID."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import SCRIPTS, TinyFeatures, kept_features_metric, smooth_images

from fid_metric import FrechetInceptionDistance
from fid_metric._states.exactly_once import SamplerQuota

# Tests that feed fewer images than feature dimensions on purpose (bookkeeping, not the Cholesky path).
pytestmark = pytest.mark.filterwarnings("ignore:FID from .* fewer samples than dimensions:UserWarning")


def _single_process_fid(n: int = 67) -> float:
    metric = FrechetInceptionDistance(TinyFeatures())
    metric.update(smooth_images(n, 16, seed=1), real=True)
    metric.update(255 - smooth_images(n, 16, seed=2) // 2, real=False)
    return float(metric.compute())


def _single_process_kept_features(n: int = 67) -> dict[str, float]:
    metric = kept_features_metric()
    metric.update(smooth_images(n, 16, seed=1), real=True)
    metric.update(255 - smooth_images(n, 16, seed=2) // 2, real=False)
    return {k: float(v) for k, v in metric.compute().items() if k != "fid"}


@pytest.mark.slow
def test_two_process_ddp_over_67_images_equals_one_process(ddp, tmp_path: Path) -> None:
    """67 images, batch 8, 2 processes: the sampler repeats image 0 on rank 1; it must count once, whether the
    metric learns the set's size from the ExactlyOnce callback or from its dataset_size argument. Precision,
    recall and KID (kept features, gathered in the sampler's order) equal one process's exactly."""
    expected = _single_process_fid()
    kept_expected = _single_process_kept_features()
    for rank, logged in enumerate(ddp.run_script(SCRIPTS / "exactly_once.py", tmp_path)):
        assert set(logged) == {"callback", "argument"}
        for mode, values in logged.items():
            assert abs(values["val/fid"] - expected) <= 1e-9 * expected, (rank, mode, values)
            assert {k: values[f"val/{k}"] for k in kept_expected} == kept_expected, (rank, mode, values)
        naive = logged["argument"]["val/naive"]
        assert abs(naive - expected) > 1e-6 * expected, "the padding must matter for this test"
        assert "val/naive" not in logged["callback"]


def test_quota_errors_and_coverage_warning() -> None:
    metric = FrechetInceptionDistance(TinyFeatures(), dataset_size=10)
    metric.update(smooth_images(8, 16, seed=0), real=True)
    before = metric.real_features_cov_sum.clone()
    with pytest.raises(ValueError, match="gives rank 0 10 real images per epoch, but it has been given 13"):
        metric.update(smooth_images(5, 16, seed=1), real=True)
    assert torch.equal(metric.real_features_cov_sum, before)
    metric.update(smooth_images(2, 16, seed=2), real=True)
    # One process: a sampler pads nothing, so an 11th image is a mistake, not a repeat to drop silently.
    with pytest.raises(ValueError, match="given 11"):
        metric.update(smooth_images(1, 16, seed=4), real=True)
    assert int(metric.real_features_num_samples) == 10
    metric.update(smooth_images(7, 16, seed=3), real=False)
    with pytest.warns(UserWarning, match="dataset_size=10, but 7 generated images were counted"):
        metric.compute()
    metric.reset()
    assert metric._quota.seen == {"real": 0, "fake": 0}


def test_rejects_bad_dataset_size() -> None:
    with pytest.raises(ValueError, match="positive int"):
        FrechetInceptionDistance(TinyFeatures(), dataset_size=0)


def test_a_rank_counts_its_quota_and_takes_exactly_its_padding_repeat() -> None:
    """N = 5 over W = 2: a DistributedSampler deals each rank 3 positions; rank 0's are 0, 2, 4 (all counted),
    rank 1's are 1, 3 and a repeat of 0 (dropped). A fourth image on either rank is an error."""
    quota = SamplerQuota(5)
    assert [quota.counted("real", 3, 2, rank) for rank in (0, 1)] == [3, 2]
    for rank in (0, 1):
        with pytest.raises(ValueError, match=f"gives rank {rank} 3 real images per epoch"):
            quota.counted("real", 4, 2, rank)
