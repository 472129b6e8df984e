"""Improved Precision and Recall (Kynkäänniemi et al., NeurIPS 2019) on given features.

Each set's manifold is the union of balls around its features, each ball's radius the distance to that
feature's k-th nearest neighbour within its set (itself excluded). Precision: the share of generated features
inside some real ball; recall: the share of real features inside some generated ball. As guided-diffusion's
evaluator and torch-fidelity's ``prc`` define them (k = 3 by default; a point on a ball's boundary is inside).

Distances are float64, from ``|a|^2 + |b|^2 - 2 a.b``, ``rows`` rows at a time, so memory holds one
``rows x N`` block: at most ``2^24`` entries (128 MiB) whatever the sets' sizes (10k real and 50k generated
features included), plus the features themselves.
"""

from __future__ import annotations

import torch
from torch import Tensor

_BLOCK_ELEMENTS = 1 << 24  # distances per block: 128 MiB of float64


def precision_recall(real: Tensor, fake: Tensor, *, k: int = 3) -> tuple[Tensor, Tensor]:
    """``(precision, recall)`` of generated features ``fake`` ``(n, d)`` against ``real`` ``(m, d)``, 0-d float64.

    Raises:
        ValueError: not two 2-d sets of one dimension, or a set of k features or fewer (no k-th neighbour).
    """
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"Precision/recall needs (m, d) and (n, d) features, got {tuple(real.shape)}, {tuple(fake.shape)}."
        )
    if not isinstance(k, int) or k < 1 or min(len(real), len(fake)) <= k:
        raise ValueError(
            f"k must be a positive int below each set's size; got k={k!r} for {len(real)} and {len(fake)}."
        )
    real, fake = real.double(), fake.double()
    real_radii, fake_radii = _kth_neighbour_distances(real, k), _kth_neighbour_distances(fake, k)
    precision = _share_inside(fake, real, real_radii)
    recall = _share_inside(real, fake, fake_radii)
    return precision, recall


def _squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """``(len(a), len(b))`` squared Euclidean distances, float64, clamped at 0 (round-off)."""
    return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T).clamp_min_(0)


def _rows(columns: int) -> int:
    return max(1, _BLOCK_ELEMENTS // columns)


def _kth_neighbour_distances(points: Tensor, k: int) -> Tensor:
    """Each point's squared distance to its k-th nearest other point: the (k + 1)-th smallest, itself (0) first."""
    rows = _rows(len(points))
    return torch.cat(
        [
            _squared_distances(points[start : start + rows], points).kthvalue(k + 1, dim=1).values
            for start in range(0, len(points), rows)
        ]
    )


def _share_inside(points: Tensor, centres: Tensor, radii: Tensor) -> Tensor:
    """The share of ``points`` within ``radii`` (squared) of some centre."""
    rows = _rows(len(centres))
    inside = [
        (_squared_distances(points[start : start + rows], centres) <= radii[None, :]).any(dim=1)
        for start in range(0, len(points), rows)
    ]
    return torch.cat(inside).double().mean()
