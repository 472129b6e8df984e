"""Error bars and paired comparisons: Student's t against scipy, and the intervals' coverage against a closed form.

The calibration runs the metric itself on Gaussian features (an identity feature module, so the features are
the samples) against a fixed reference with zero covariance, where FID = |mu_hat - mu_r|^2 + tr(Sigma_hat) has
the expectation ``|mu_g - mu_r|^2 + tr(Sigma_g) (1 + 1/N)`` at sample size N: the truth each interval should
cover in 95% of repetitions.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn

from fid_metric import (
    FeatureStats,
    InceptionMetrics,
    StatsMismatchError,
    compare,
    kernel_inception_distance,
    precision_recall,
)
from fid_metric._functional.jackknife import t_cdf, t_quantile

D, GROUPS, PER_GROUP = 4, 10, 40
N = GROUPS * PER_GROUP
MU_REF = torch.zeros(D, dtype=torch.float64)


class _Samples(nn.Module):
    """The identity: the 'images' given to update() are the ``(N, D)`` features."""

    num_features = D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _reference() -> FeatureStats:
    """The fixed reference: mean MU_REF, covariance exactly 0 (two identical samples)."""
    return FeatureStats.from_sums(2, 2 * MU_REF, 2 * torch.outer(MU_REF, MU_REF))


def _metric(reference: FeatureStats) -> InceptionMetrics:
    return InceptionMetrics(
        sfid=False, inception_score=False, feature=_Samples(), fid_groups=GROUPS, real_stats=reference
    )


def _expected_fid(mu: torch.Tensor, scale: torch.Tensor) -> float:
    """E[FID_N] for samples ``z * scale + mu``, z standard normal, against the zero-covariance reference."""
    return float((mu - MU_REF).square().sum() + scale.square().sum() * (1 + 1 / N))


def test_student_t_equals_scipy() -> None:
    for df in (1, 2, 5, 9, 9.7, 30, 200):
        for t in (-40.0, -3.0, -1e-3, 0.0, 0.4, 2.262, 9.0):
            assert abs(t_cdf(t, df) - stats.t.cdf(t, df)) <= 1e-10
    for t in (-1e-9, 1e-6, 3.0):  # df = 1 is Cauchy's, in closed form (scipy rounds -1e-9's to 0.5)
        assert abs(t_cdf(t, 1) - (0.5 + math.atan(t) / math.pi)) <= 1e-15
        for p in (0.001, 0.025, 0.5, 0.975, 0.999):
            assert abs(t_quantile(p, df) - stats.t.ppf(p, df)) <= 1e-8 * max(1.0, abs(stats.t.ppf(p, df)))


def test_intervals_cover_the_expected_fid_and_difference_in_95_percent_of_400_repetitions() -> None:
    """One model's FID -+ t(0.975, G - 1) * fid_stderr, and compare()'s paired interval for two models drawn from
    the same latents, each cover their truth in 93-97% of 400 seeded repetitions; the paired interval is narrower
    than the unpaired one on such correlated samples."""
    reference = _reference()
    mu_a, scale_a = torch.full((D,), 0.5, dtype=torch.float64), torch.ones(D, dtype=torch.float64)
    mu_b, scale_b = torch.full((D,), 0.45, dtype=torch.float64), torch.full((D,), 1.05, dtype=torch.float64)
    truth_a, truth_difference = (
        _expected_fid(mu_a, scale_a),
        _expected_fid(mu_a, scale_a) - _expected_fid(mu_b, scale_b),
    )
    t = t_quantile(0.975, GROUPS - 1)
    generator = torch.Generator().manual_seed(2024)
    single, pair, width_ratios = 0, 0, []
    repetitions = 400
    for _ in range(repetitions):
        z = torch.randn(N, D, generator=generator, dtype=torch.float64)
        a, b = _metric(reference), _metric(reference)
        a.update(z * scale_a + mu_a, real=False)
        b.update(z * scale_b + mu_b, real=False)
        values = a.compute()
        single += abs(float(values["fid"]) - truth_a) <= t * float(values["fid_stderr"])
        paired = compare(a, b)
        pair += paired.ci95[0] <= truth_difference <= paired.ci95[1]
        width_ratios.append(paired.stderr / compare(a, b, paired=False).stderr)
    assert 0.93 <= single / repetitions <= 0.97, single
    assert 0.93 <= pair / repetitions <= 0.97, pair
    assert paired.paired and torch.tensor(width_ratios).median() < 0.2, torch.tensor(width_ratios).median()


def test_compare_refuses_what_cannot_be_compared() -> None:
    reference = _reference()
    z = torch.randn(N, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a, b = _metric(reference), _metric(reference)
    a.update(z, real=False)
    b.update(z[: N - 3], real=False)
    with pytest.raises(ValueError, match="paired=True needs as many generated images in each group"):
        compare(a, b, paired=True)
    assert not compare(a, b).paired  # groups of other counts: unpaired by default
    other_reference = FeatureStats(MU_REF + 1, torch.zeros(D, D, dtype=torch.float64))
    with pytest.raises(StatsMismatchError, match="same real side"):
        compare(a, _metric(other_reference))
    fewer = InceptionMetrics(sfid=False, inception_score=False, feature=_Samples(), fid_groups=4, real_stats=reference)
    with pytest.raises(StatsMismatchError, match="one fid_groups"):
        compare(a, fewer)
    identical = compare(a, a)
    assert identical.difference == 0 and identical.stderr == 0 and identical.p_value == 1.0


def test_kept_feature_metrics_get_the_same_jackknife_over_generated_groups() -> None:
    """precision_stderr, recall_stderr, kid_stderr: the jackknife of the public functions on the generated
    features without each group (row j in group j % G), against the same real features."""
    generator = torch.Generator().manual_seed(5)
    real, fake = (torch.randn(60, D, generator=generator, dtype=torch.float64) + shift for shift in (0.0, 0.3))
    metric = InceptionMetrics(
        sfid=False,
        inception_score=False,
        feature=_Samples(),
        fid_groups=4,
        precision_recall=True,
        kid=True,
        kid_subset_size=None,
    )
    metric.update(real, real=True)
    metric.update(fake[:25], real=False)
    metric.update(fake[25:], real=False)
    values = metric.compute()
    group = torch.arange(len(fake)) % 4
    dropped = [
        (
            *precision_recall(real, fake[group != g]),
            kernel_inception_distance(fake[group != g], real, subset_size=None)[0],
        )
        for g in range(4)
    ]
    for i, name in enumerate(("precision", "recall", "kid")):
        leave_one_out = torch.tensor([float(d[i]) for d in dropped], dtype=torch.float64)
        expected = math.sqrt(3 / 4 * float((leave_one_out - leave_one_out.mean()).square().sum()))
        assert abs(float(values[f"{name}_stderr"]) - expected) <= 1e-12 * max(expected, 1e-12)
    assert float(values["kid_stderr"]) > 0 and float(values["precision_stderr"]) > 0
