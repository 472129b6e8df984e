"""The delete-a-group jackknife and Student's t: standard errors, intervals and p-values from G group-deleted values.

With G groups of samples and ``values[g]`` the statistic computed without group g, the jackknife variance is
``(G - 1) / G * sum_g (values[g] - mean)^2`` (Efron & Stein 1981), and ``estimate / stderr`` is referred to
Student's t with G - 1 degrees of freedom (Welch-Satterthwaite's for a sum of two independent variances). The
t distribution is computed here (the regularised incomplete beta function by its continued fraction, as
Numerical Recipes' ``betacf``), so the package needs no scipy; tests/test_jackknife.py holds it to scipy's
``stats.t`` within 1e-10.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def jackknife_stderr(values: Tensor) -> Tensor:
    """The jackknife standard error, a 0-d float64 tensor on ``values``' device, from the ``(G,)`` group-deleted
    values of a statistic, G >= 2."""
    g, values = values.numel(), values.double()
    return ((g - 1) / g * (values - values.mean()).square().sum()).sqrt()


def group_deleted(
    counts: Tensor, sums: Tensor, outers: Tensor, statistic: Callable[[Tensor, Tensor, Tensor], Tensor]
) -> Tensor:
    """The ``(G,)`` values ``statistic(count, feature sum, outer-product sum)`` of the union of all groups but g,
    from each group's ``counts`` ``(G,)``, feature ``sums`` ``(G, d)`` and ``outers`` ``(G, d, d)``: the sums of
    all groups less group g's."""
    n, total_sum, total_outer = counts.sum(), sums.sum(0), outers.sum(0)
    return torch.stack(
        [statistic(n - counts[g], total_sum - sums[g], total_outer - outers[g]) for g in range(len(counts))]
    )


def welch_df(stderr_a: float, stderr_b: float, df_a: float, df_b: float) -> float:
    """Welch-Satterthwaite degrees of freedom of ``sqrt(stderr_a^2 + stderr_b^2)``."""
    va, vb = stderr_a**2, stderr_b**2
    if va + vb == 0:
        return min(df_a, df_b)
    return (va + vb) ** 2 / (va**2 / df_a + vb**2 / df_b)


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom."""
    tail = 0.5 * _regularized_beta(df / (df + t * t), t * t / (df + t * t), df / 2, 0.5)
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with ``t_cdf(t, df) == p``, 0 < p < 1, by bisection to 1e-12."""
    low, high = -1e6, 1e6
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
        if high - low < 1e-12 * max(1.0, abs(mid)):
            break
    return (low + high) / 2


def _regularized_beta(x: float, y: float, a: float, b: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for 0 <= x <= 1 given with ``y = 1 - x`` (each
    computed without cancellation by the caller)."""
    if x <= 0 or y <= 0:
        return 0.0 if x <= 0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1 - math.exp(log_front) * _beta_fraction(y, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return result
