"""Shared by the DDP / Lightning tests and their subprocess scripts: a tiny feature extractor and fixed data.

The Inception forward is far too slow on a CPU for the distributed and Lightning bookkeeping tests, and the
bookkeeping does not depend on the network, so those tests use ``TinyFeatures`` (a fixed random conv layer,
32 features). Everything here is deterministic: the same call gives the same tensors in every process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NUM_FEATURES = 32


class TinyFeatures(nn.Module):
    """uint8 ``(N, 3, H, W)`` -> ``(N, 32)`` float32: x / 255, a fixed random 3x3 conv 3->8, ReLU, 2x2 avg pool."""

    num_features = NUM_FEATURES

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv(x.float() / 255))
        return F.adaptive_avg_pool2d(x, 2).flatten(1)


def images(n: int, seed: int, size: int = 16) -> Tensor:
    """``(n, 3, size, size)`` uint8: random 4x4 colour fields upsampled, with a per-image brightness and noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 255
    brightness = torch.rand(n, 1, 1, 1, generator=g) * 0.8 + 0.4
    x = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) * brightness
    x = x + torch.randn(n, 3, size, size, generator=g) * 8
    return x.round().clamp(0, 255).to(torch.uint8)


def fid_of(real: Tensor, fake: Tensor, batch_size: int = 7) -> float:
    """FID of ``real`` vs ``fake`` with a fresh single-process metric and ``TinyFeatures``, fed in batches."""
    from fid_metric import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=TinyFeatures())
    for start in range(0, len(real), batch_size):
        metric.update(real[start : start + batch_size], real=True)
    for start in range(0, len(fake), batch_size):
        metric.update(fake[start : start + batch_size], real=False)
    return float(metric.compute())
