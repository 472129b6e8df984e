"""The arithmetic the network runs in: exact float32 whatever the host's autocast/TF32 settings, or a fast mode."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

ARITHMETICS = ("exact", "bf16", "tf32")


@contextlib.contextmanager
def network_math(device: torch.device, arithmetic: str) -> Iterator[None]:
    """Inference mode and the network's arithmetic, whatever autocast or TF32 setting the caller has.

    "exact": float32 with autocast off and, on CUDA, IEEE float32 instead of TF32. "tf32": float32 with
    TF32 convolutions and matmuls on CUDA (the same as "exact" elsewhere). "bf16": autocast to bfloat16.
    cuDNN picks its convolution algorithms by its heuristics, as PyTorch's default: autotuning
    (``cudnn.benchmark``) would let the choice, and so the float32 round-off, change from run to run (and is
    no faster: docs/performance.md). Global CUDA flags are restored afterwards.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        if torch.amp.is_autocast_available(device.type):
            stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16, enabled=arithmetic == "bf16"))
        if device.type == "cuda":
            stack.enter_context(cuda_fp32("tf32" if arithmetic == "tf32" else "ieee"))
        yield


def network_memory_format(device: torch.device, arithmetic: str) -> torch.memory_format:
    """The layout the Inception network and its input run in: the faster one for the device and arithmetic.

    NCHW for IEEE float32 on CUDA (exact mode), where cuDNN's NCHW float32 kernels are the faster ones;
    channels-last elsewhere (TF32 and bf16 on CUDA, oneDNN on the CPU). benchmarks/bench.py measures both
    layouts (its ``network`` rows; the figures are in docs/performance.md).
    """
    if device.type == "cuda" and arithmetic == "exact":
        return torch.contiguous_format
    return torch.channels_last


@contextlib.contextmanager
def cuda_fp32(mode: str) -> Iterator[None]:
    """Set CUDA's float32 convolution and matmul precision to ``"ieee"`` or ``"tf32"``, then restore it."""
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        saved = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
        torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = mode
        try:
            yield
        finally:
            torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved
    else:
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
