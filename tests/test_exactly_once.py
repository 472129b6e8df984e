"""Exactly-once accounting: DDP's padded validation sampler must not change FID."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_python, smooth_images
from test_metric import TinyFeatures

from fid_metric import FrechetInceptionDistance

SCRIPT = Path(__file__).parent / "scripts" / "exactly_once.py"


def _single_process_fid(n: int = 67) -> float:
    metric = FrechetInceptionDistance(TinyFeatures())
    metric.update(smooth_images(n, 16, seed=1), real=True)
    metric.update(255 - smooth_images(n, 16, seed=2) // 2, real=False)
    return float(metric.compute())


def _run(mode: str, tmp_path: Path) -> dict[str, float]:
    out = tmp_path / f"{mode}.json"
    run_python(SCRIPT, "2", mode, str(out))
    return json.loads(out.read_text())


@pytest.mark.parametrize("mode", ["callback", "argument"])
def test_two_process_ddp_over_67_images_equals_one_process(mode: str, tmp_path: Path) -> None:
    """67 images, batch 8, 2 processes: the sampler repeats image 0 on rank 1; it must count once."""
    expected = _single_process_fid()
    logged = _run(mode, tmp_path)
    assert abs(logged["val/fid"] - expected) <= 1e-9 * expected
    if mode == "argument":
        assert abs(logged["val/naive"] - expected) > 1e-6 * expected, "the padding must matter for this test"


def test_quota_errors_and_coverage_warning() -> None:
    metric = FrechetInceptionDistance(TinyFeatures(), dataset_size=10)
    metric.update(smooth_images(8, 16, seed=0), real=True)
    before = metric.real_features_cov_sum.clone()
    with pytest.raises(ValueError, match="at most 10 real images per epoch .* given 13"):
        metric.update(smooth_images(5, 16, seed=1), real=True)
    assert torch.equal(metric.real_features_cov_sum, before)
    metric.update(smooth_images(3, 16, seed=2), real=True)  # 11 = 10 + one padding repeat: the last is dropped
    assert int(metric.real_features_num_samples) == 10
    metric.update(smooth_images(7, 16, seed=3), real=False)
    with pytest.warns(UserWarning, match="dataset_size=10, but 7 fake images were counted"):
        metric.compute()
    metric.reset()
    assert metric._images_seen == {"real": 0, "fake": 0}


def test_rejects_bad_dataset_size() -> None:
    with pytest.raises(ValueError, match="positive int"):
        FrechetInceptionDistance(TinyFeatures(), dataset_size=0)
