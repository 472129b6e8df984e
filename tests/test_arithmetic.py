"""The network's arithmetic contexts; CUDA flags are process-global, so they must be set and restored."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyFeatures

from fid_metric import FrechetInceptionDistance
from fid_metric._features.arithmetic import cuda_fp32, network_math, network_memory_format


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


def test_network_math_leaves_cudnn_algorithm_choice_to_its_heuristics() -> None:
    """cuDNN autotuning stays as the caller set it (off by default): it would make the algorithm, and so the
    round-off, vary from run to run (and is no faster: docs/performance.md)."""
    saved = torch.backends.cudnn.benchmark
    try:
        for flag in (False, True):
            torch.backends.cudnn.benchmark = flag
            with network_math(torch.device("cuda"), "exact"):
                assert torch.backends.cudnn.benchmark is flag
    finally:
        torch.backends.cudnn.benchmark = saved


def test_network_layout_is_nchw_only_for_exact_float32_on_cuda() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert network_memory_format(cuda, "exact") == torch.contiguous_format
    for device, precision in ((cuda, "tf32"), (cuda, "bf16"), (cpu, "exact"), (cpu, "tf32"), (cpu, "bf16")):
        assert network_memory_format(device, precision) == torch.channels_last


def test_the_network_is_converted_to_the_layout_it_runs_in(inception_weights) -> None:
    """The metric's network and its input share a layout; asking for the other layout converts the weights."""
    metric = FrechetInceptionDistance(64, feature_extractor_weights_path=inception_weights)
    conv = metric._extractor.module.Conv2d_1a_3x3.conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    network = metric._extractor.on(torch.device("cpu"), torch.contiguous_format)
    assert network.Conv2d_1a_3x3.conv.weight.is_contiguous()
    assert metric._extractor.memory_format == torch.contiguous_format


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
