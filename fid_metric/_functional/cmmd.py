"""CMMD (Jayasumana et al., "Rethinking FID: Towards a Better Evaluation Metric for Image Generation", CVPR 2024):
the squared MMD of CLIP embeddings with a Gaussian RBF kernel, as google-research's ``cmmd/distance.py`` defines it.

``distance.mmd(x, y)`` there is the minimum-variance (biased, V-statistic) estimate of Gretton et al. (JMLR 2012,
eq. 5), scaled by ``_SCALE = 1000``::

    CMMD = 1000 * (mean_{i,i'} k(x_i, x_i') + mean_{j,j'} k(y_j, y_j') - 2 mean_{i,j} k(x_i, y_j)),
    k(a, b) = exp(-||a - b||^2 / (2 sigma^2)),  sigma = _SIGMA = 10,

every mean over all pairs, the diagonal (i = i', j = j') included, with the squared distance evaluated as the
reference does, ``||a||^2 + ||b||^2 - 2 a.b``. The reference runs in JAX's default float32; this is float64, and
the kernel sums are taken block by block by the package's pairwise engine
(``fid_metric._functional.pairwise.kernel_sum``: at most 2^24 pairs, 128 MiB of float64, at a time).
tests/test_cmmd.py holds it to a numpy transcription of the reference in float64 (1e-12) and to the reference's
own JAX code.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fid_metric._functional.pairwise import kernel_sum

SIGMA = 10.0  # the Gaussian kernel's bandwidth, cmmd/distance.py's _SIGMA
SCALE = 1000.0  # cmmd/distance.py's _SCALE, "to make the metric more human readable"


def cmmd(x: Tensor, y: Tensor) -> Tensor:
    """CMMD between embeddings ``x`` ``(n, d)`` and ``y`` ``(m, d)``: a 0-d float64 tensor, symmetric in x and y
    (to float64 round-off: the cross sums are added in another order).

    ``x`` and ``y`` are used in float64 as given: CMMD's embeddings are CLIP's, L2-normalised
    (``fid_metric.CLIPFeatures("vit-l-14-336")``). The reference's ``mmd(ref_embs, eval_embs)``.

    Raises:
        ValueError: not two 2-d sets of one dimension with at least one row each.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"CMMD needs (n, d) and (m, d) embeddings, got {tuple(x.shape)} and {tuple(y.shape)}.")
    if min(len(x), len(y)) < 1:
        raise ValueError(f"CMMD needs at least 1 embedding per side, got {len(x)} and {len(y)}.")
    x, y = x.double(), y.double()
    k_xx = kernel_sum(x, x, _gaussian, on="squared_distances") / (len(x) * len(x))
    k_yy = kernel_sum(y, y, _gaussian, on="squared_distances") / (len(y) * len(y))
    k_xy = kernel_sum(x, y, _gaussian, on="squared_distances") / (len(x) * len(y))
    return SCALE * (k_xx + k_yy - 2 * k_xy)


def _gaussian(squared_distances: Tensor) -> Tensor:
    """``exp(-gamma D)``, ``gamma = 1 / (2 SIGMA^2)``: cmmd/distance.py's kernel of the squared distances D."""
    return torch.exp(-squared_distances / (2 * SIGMA**2))
