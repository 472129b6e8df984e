"""Density and Coverage (Naeem et al., "Reliable Fidelity and Diversity Metrics for Generative Models", ICML 2020)
on given features.

Around each real feature a ball reaching its k-th nearest real neighbour (itself the 0-th). **Density**: over the
generated features, the mean number of real balls holding each, divided by k, ``(1 / kM) sum_j sum_i
[D(real_i, fake_j) < R_i]`` (M generated features; 1 when generated and real features are alike, above 1 where
generated features crowd into dense real regions). **Coverage**: the share of real features whose nearest
generated feature lies inside their ball, ``(1 / N) sum_i [min_j D(real_i, fake_j) < R_i]``. As prdc's
``compute_prdc`` (k = 5 by default; a point on a ball's boundary is outside: strict ``<``).

The distances come from ``fid_metric._functional.pairwise``: every comparison is that of the float64 distances,
in one block of at most 2^24 pairs at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fid_metric._functional.pairwise import check_feature_sets, kth_neighbour_radii, points_per_ball


def density_coverage(real: Tensor, fake: Tensor, *, k: int = 5) -> tuple[Tensor, Tensor]:
    """``(density, coverage)`` of generated features ``fake`` ``(M, d)`` against ``real`` ``(N, d)``, 0-d float64.

    Equal to ``prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)``'s ``density`` and
    ``coverage``: the counts behind them exactly (tests/test_density_coverage.py, on float64 features), and the
    numbers bit for bit, computed in prdc's order (``(1 / k) * (count / M)`` and ``count / N``).

    Raises:
        ValueError: not two finite 2-d sets of one dimension, k real features or fewer (no k-th neighbour), or
            no generated feature.
    """
    return density_coverage_given_radii(real, fake, k=k)


def density_coverage_given_radii(
    real: Tensor, fake: Tensor, *, k: int, real_radii: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``density_coverage``, with ``real``'s ``(N,)`` ``kth_neighbour_radii(real, k)`` given when already known
    (a jackknife deletes generated groups only, so the real radii serve every deletion)."""
    check_feature_sets("Density/coverage", real, fake, k, fake_needs_k=False)
    real_radii = kth_neighbour_radii(real, k) if real_radii is None else real_radii
    per_ball = points_per_ball(real, real_radii, fake, strict=True)
    density = (1.0 / k) * (int(per_ball.sum()) / len(fake))
    covered = int((per_ball > 0).sum())
    return (
        torch.tensor(density, dtype=torch.float64, device=real.device),
        torch.tensor(covered / len(real), dtype=torch.float64, device=real.device),
    )
