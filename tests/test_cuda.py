"""The metric on a CUDA GPU: no host sync in update(), the same FID as on the CPU, exact whatever the host's
TF32/autocast settings, and the sync path on NCCL.

Every test here is marked ``cuda`` and skipped without a GPU (conftest.py); ``benchmarks/device_check.sh``
runs them on the GPU machine with ``pytest -m cuda``.
"""

from __future__ import annotations

import os
import re

import pytest
import torch
from helpers import SCRIPTS, relative, run_python, smooth_images

from fid_metric import FrechetInceptionDistance, InceptionMetrics

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("make", [FrechetInceptionDistance, InceptionMetrics], ids=["fid", "suite"])
def test_uint8_update_does_not_synchronise_the_gpu(inception_weights, make) -> None:
    """update() on uint8 CUDA images queues its work and returns: no .item(), no copy to the host."""
    kwargs = {"fid_groups": 2, "splits": 2} if make is InceptionMetrics else {}
    metric = make(feature=2048, feature_extractor_weights_path=inception_weights, **kwargs).cuda()
    imgs = smooth_images(4, 64, seed=4).cuda()
    metric.update(imgs, real=True)  # the first call moves the network and lets cuDNN pick its algorithms
    metric.update(imgs, real=False)
    torch.cuda.set_sync_debug_mode("error")
    try:
        metric.update(imgs, real=True)
        metric.update(imgs, real=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(metric.real_features_num_samples) == 8 and int(metric.fake_features_num_samples) == 8


@pytest.fixture
def all_cpu_threads():
    """The CPU side of a CPU-vs-GPU comparison on every core (conftest.py sets 2 for CI machines)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(saved)


def test_exact_fid_on_cuda_equals_cpu(inception_weights, all_cpu_threads) -> None:
    """Same images, same weights: the CUDA FID is the CPU FID to 1e-6 relative in exact mode.

    d = 64 with 70 images per side takes the full-rank (Cholesky) path that real evaluations take. The two
    differ only by float32 round-off in the convolutions (cuDNN's and oneDNN's algorithms sum in different
    orders); the states and the distance are float64 on both.
    """
    real, fake = smooth_images(70, 64, seed=11), smooth_images(70, 64, seed=12) // 2 + 40
    fids = {}
    for device in ("cpu", "cuda"):
        metric = FrechetInceptionDistance(64, feature_extractor_weights_path=inception_weights).to(device)
        for start in range(0, 70, 35):
            metric.update(real[start : start + 35].to(device), real=True)
            metric.update(fake[start : start + 35].to(device), real=False)
        fids[device] = metric.compute()
        assert fids[device].dtype == torch.float64 and fids[device].device.type == device
    print(f"FID cpu {fids['cpu'].item()!r} cuda {fids['cuda'].item()!r}")
    assert fids["cpu"] > 1.0, "FID near 0 would hide a relative error"
    assert abs(fids["cuda"].item() - fids["cpu"].item()) <= 1e-6 * fids["cpu"].item(), fids


@pytest.mark.parametrize("compat", ["tensorflow", "pytorch-fid", "torchmetrics"])
def test_exact_features_on_cuda_equal_cpu(inception_weights, compat, all_cpu_threads) -> None:
    """Each compat mode's preprocessing and the network give the CPU's 2048-d features on the GPU, to float32
    round-off (1e-4 relative, the bound the peer comparisons use)."""
    imgs = smooth_images(8, (48, 80), seed=13)
    metric = FrechetInceptionDistance(2048, feature_extractor_weights_path=inception_weights, compat=compat)
    features_cpu = metric.inception(imgs)
    features_cuda = metric.cuda().inception(imgs.cuda())
    print(f"{compat}: features cuda vs cpu {relative(features_cuda, features_cpu):.2e}")
    assert relative(features_cuda, features_cpu) < 1e-4


def test_exact_mode_ignores_host_tf32_and_autocast_on_cuda(inception_weights) -> None:
    """Host TF32 on and float16 autocast around update(): exact mode's sums are unchanged, and the result is
    float64. The guard: arithmetic="tf32" moves them by far more than the tolerance, so a leak would show."""
    imgs = smooth_images(16, 64, seed=5).cuda()

    def sums(arithmetic: str, host_tf32: bool, autocast: bool) -> torch.Tensor:
        metric = FrechetInceptionDistance(
            2048, feature_extractor_weights_path=inception_weights, arithmetic=arithmetic
        ).cuda()
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = host_tf32
        try:
            with torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
                metric.update(imgs, real=True)
                metric.update(imgs, real=False)
                fid = metric.compute()
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        assert fid.dtype == torch.float64
        assert metric.real_features_cov_sum.dtype == torch.float64
        return metric.real_features_sum

    exact = sums("exact", host_tf32=False, autocast=False)
    hosted = sums("exact", host_tf32=True, autocast=True)
    tf32 = sums("tf32", host_tf32=False, autocast=False)
    assert relative(hosted, exact) <= 1e-6
    assert relative(tf32, exact) > 1e-5, "TF32 did not change the features: the check above proves nothing"


@pytest.mark.skipif(not torch.distributed.is_nccl_available(), reason="this torch has no NCCL")
def test_sync_runs_on_nccl_with_one_process() -> None:
    """init_process_group("nccl", world_size=1): compute() syncs on the GPU with the configuration check (one
    int64 all_reduce) and one float64 all_reduce of the states, which leaves every state and the FID as an
    unsynced metric has them."""
    out = run_python(SCRIPTS / "nccl_sync.py", timeout=120).stdout
    calls = re.search(r"all_reduce calls in compute\(\): (\d+) (.*)", out)
    assert calls and calls.group(1) == "2", out
    assert "[('cuda', torch.int64, 18), ('cuda', torch.float64," in calls.group(2), out
    assert float(re.search(r"max relative difference: (\S+)", out).group(1)) <= 1e-12, out
