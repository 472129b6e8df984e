"""Improved Precision and Recall (Kynkäänniemi et al., NeurIPS 2019) on given features.

Each set's manifold is the union of balls around its features, each ball's radius the distance to that
feature's k-th nearest neighbour within its set (itself excluded). Precision: the share of generated features
inside some real ball; recall: the share of real features inside some generated ball. As guided-diffusion's
evaluator and torch-fidelity's ``prc`` define them (k = 3 by default; a point on a ball's boundary is inside).

The distances come from ``fid_metric._functional.pairwise``: a float32 pass decides what it provably can and
float64 the rest, so every decision is that of the float64 distances, and memory holds one block of at most
2^24 pairs (64 MiB of float32) besides float32 copies of the features, whatever the sets' sizes.
"""

from __future__ import annotations

from torch import Tensor

from fid_metric._functional.pairwise import check_feature_sets, in_balls, kth_neighbour_radii


def precision_recall(real: Tensor, fake: Tensor, *, k: int = 3) -> tuple[Tensor, Tensor]:
    """``(precision, recall)`` of generated features ``fake`` ``(n, d)`` against ``real`` ``(m, d)``, 0-d float64.

    The counts inside equal torch-fidelity's ``calculate_precision_recall_full(fake, real, neighborhood=k)``
    (tests/test_kid_precision_recall.py: exactly, on features without float ties).

    Raises:
        ValueError: not two finite 2-d sets of one dimension, or a set of k features or fewer (no k-th neighbour).
    """
    return precision_recall_given_radii(real, fake, k=k)


def precision_recall_given_radii(
    real: Tensor, fake: Tensor, *, k: int, real_radii: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``precision_recall``, with ``real``'s ``(m,)`` ``kth_neighbour_radii(real, k)`` given when already known
    (a jackknife deletes generated groups only, so the real radii serve every deletion)."""
    check_feature_sets("Precision/recall", real, fake, k)
    real_radii = kth_neighbour_radii(real, k) if real_radii is None else real_radii
    in_real_manifold, in_fake_manifold = in_balls(real, fake, real_radii, kth_neighbour_radii(fake, k))
    return in_real_manifold.double().mean(), in_fake_manifold.double().mean()
