"""The arithmetic the network runs in: exact float32 whatever the host's autocast/TF32 settings, or a fast mode."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("exact", "bf16", "tf32")


@contextlib.contextmanager
def network_math(device: torch.device, precision: str) -> Iterator[None]:
    """Inference mode and the network's arithmetic, whatever autocast or TF32 setting the caller has.

    "exact": float32 with autocast off and, on CUDA, IEEE float32 instead of TF32. "tf32": float32 with
    TF32 convolutions and matmuls on CUDA (the same as "exact" elsewhere). "bf16": autocast to bfloat16.
    On CUDA, cuDNN autotunes its convolution algorithms in every mode (the first batch of each shape pays for
    the search; see ``cudnn_autotune``). Global CUDA flags are restored afterwards.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        if torch.amp.is_autocast_available(device.type):
            stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"))
        if device.type == "cuda":
            stack.enter_context(cuda_fp32("tf32" if precision == "tf32" else "ieee"))
            stack.enter_context(cudnn_autotune())
        yield


@contextlib.contextmanager
def cudnn_autotune() -> Iterator[None]:
    """Turn on ``torch.backends.cudnn.benchmark`` (fastest convolution algorithm per shape), then restore it.

    The choice is made by timing, so it can differ between runs, and the candidates (direct, implicit GEMM,
    FFT, Winograd) round differently: features move at float32 round-off level (~1e-6 relative), as they do
    between two GPU models, far inside the 1e-4 the reference tests hold FID to.
    """
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


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
