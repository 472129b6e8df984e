"""The network's arithmetic contexts; CUDA flags are process-global, so they must be set and restored."""

from __future__ import annotations

import pytest
import torch
from test_metric import TinyFeatures

from fid_metric import FrechetInceptionDistance
from fid_metric.precision import cuda_fp32, cudnn_autotune, network_math


@pytest.mark.skipif(
    not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch < 2.9 has only allow_tf32 flags"
)
def test_cuda_fp32_sets_and_restores_the_global_flags() -> None:
    """TF32 off inside exact mode even if the user enabled it, and the user's setting back afterwards."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    try:
        matmul.fp32_precision = conv.fp32_precision = "tf32"
        with cuda_fp32("ieee"):
            assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
        with pytest.raises(RuntimeError, match="inside"), cuda_fp32("ieee"):
            raise RuntimeError("inside")
        assert matmul.fp32_precision == "tf32", "an exception must not leave the flags changed"
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def test_cuda_network_math_autotunes_cudnn_and_restores_the_flags() -> None:
    """cuDNN benchmark mode and IEEE float32 inside; the caller's flags afterwards (no GPU needed to check)."""
    saved = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        with network_math(torch.device("cuda"), "exact"):
            assert torch.backends.cudnn.benchmark
        assert not torch.backends.cudnn.benchmark
        with pytest.raises(RuntimeError, match="inside"), cudnn_autotune():
            raise RuntimeError("inside")
        assert not torch.backends.cudnn.benchmark, "an exception must not leave the flag changed"
        with network_math(torch.device("cpu"), "exact"):
            assert not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = saved


def test_network_math_disables_autocast_and_grad_unless_bf16() -> None:
    x = torch.ones(2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with network_math(torch.device("cpu"), "exact"):
            assert (x @ x).dtype == torch.float32 and torch.is_inference_mode_enabled()
        with network_math(torch.device("cpu"), "bf16"):
            assert (x @ x).dtype == torch.bfloat16


def test_states_stay_on_the_cpu_for_mps() -> None:
    """Apple's MPS has no float64: the network would run there, the float64 sums stay on the CPU."""
    metric = FrechetInceptionDistance(TinyFeatures())
    metric._device = torch.device("mps")
    assert metric._state_device == torch.device("cpu")
    metric._device = torch.device("cpu")
    assert metric._state_device == torch.device("cpu")
