"""``compare``: is model A's FID really lower than model B's? A paired (or unpaired) jackknife over image groups.

Two ``InceptionMetrics`` with ``fid_groups=G``, fed the same real images (or built with the same ``real_stats``)
and each its model's generated images, give G FIDs without each group (``fid_leave_one_out``); so do two
models' statistics saved with their G groups' sums, against one reference's statistics. Paired, when
the groups hold equally many images (as when both models drew from the same latents in the same order): the
difference without group g is taken from both models at once, so that noise the two samples share cancels, and
``difference / stderr`` is referred to Student's t with G - 1 degrees of freedom. Unpaired: the two jackknife
variances add, with Welch-Satterthwaite's degrees of freedom. Each standard error covers the generated samples'
noise with the reference fixed; not FID's bias at finite N (``fid_infinity`` addresses that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from fid_metric._files.stats import FeatureStats, StatsMismatchError, identity_differences
from fid_metric._functional.covariance import mean_and_covariance
from fid_metric._functional.distance import frechet_distance
from fid_metric._functional.jackknife import group_deleted, jackknife_stderr, t_cdf, t_quantile, welch_df
from fid_metric._metrics.inception_metrics import InceptionMetrics
from fid_metric._metrics.reference import FixedReference

Model = tuple[float, Tensor, Tensor]  # FID, the (G,) FIDs without each group, the (G,) group counts; on the CPU


@dataclass(frozen=True)
class Comparison:
    """The FID of model A minus model B's, with its uncertainty.

    Attributes:
        difference: ``fid(a) - fid(b)``.
        stderr: the jackknife standard error of ``difference``.
        ci95: the 95% interval ``(low, high)``, ``difference -+ t(0.975, df) * stderr``.
        p_value: two-sided, for "the two models' expected FIDs are equal".
        paired: whether the groups were deleted from both models at once.
        df: the degrees of freedom of the t distribution used.
    """

    difference: float
    stderr: float
    ci95: tuple[float, float]
    p_value: float
    paired: bool
    df: float


def compare(
    a: InceptionMetrics | FeatureStats,
    b: InceptionMetrics | FeatureStats,
    *,
    reference: FeatureStats | None = None,
    paired: bool | None = None,
) -> Comparison:
    """Compare two models' FIDs against one reference (see the module docstring).

    Either two metrics, each with its real side, or two saved statistics with groups (``groups``: written by
    ``fid-metric stats --groups G``, or ``metric.statistics(real=False)`` of an ``InceptionMetrics`` with
    ``fid_groups=G``) and the ``reference`` statistics. Under DDP every process must call it with metrics (it
    calls both metrics' ``compute()``).

    Args:
        a: model A's metric, with ``fid_groups`` >= 2, or its statistics with groups.
        b: model B's, of the same definition, reference and number of groups.
        reference: the real statistics, with statistics; None with metrics (each holds its real side).
        paired: None: paired when every group holds as many images in both; True: paired, an error if the
            groups' counts differ; False: unpaired.

    Raises:
        TypeError: not two ``InceptionMetrics`` (without ``reference``) or two ``FeatureStats`` (with it).
        StatsMismatchError: another definition (identity), another real side, or another number of groups.
        ValueError: ``paired=True`` with groups of different counts, fewer than 2 groups, statistics without
            groups, or a group of fewer than 2 images.
    """
    if isinstance(a, InceptionMetrics) and isinstance(b, InceptionMetrics) and reference is None:
        models = _of_metrics(a, b)
    elif isinstance(a, FeatureStats) and isinstance(b, FeatureStats) and isinstance(reference, FeatureStats):
        models = of_statistics(a, b, reference)
    else:
        raise TypeError(
            "compare takes two InceptionMetrics, or two FeatureStats with reference=FeatureStats; got "
            f"{type(a).__name__}, {type(b).__name__} and reference={type(reference).__name__}."
        )
    return comparison(*models, paired=paired)


def comparison(model_a: Model, model_b: Model, *, paired: bool | None) -> Comparison:
    """The ``Comparison`` of two models' FIDs, FIDs without each group and group counts (``compare``'s ``paired``)."""
    (fid_a, out_a, counts_a), (fid_b, out_b, counts_b) = model_a, model_b
    same_counts = torch.equal(counts_a, counts_b)
    if paired and not same_counts:
        raise ValueError("paired=True needs as many generated images in each group of both models.")
    paired = same_counts if paired is None else paired
    g = len(out_a)
    if paired:
        stderr, df = float(jackknife_stderr(out_a - out_b)), float(g - 1)
    else:
        se_a, se_b = float(jackknife_stderr(out_a)), float(jackknife_stderr(out_b))
        stderr, df = math.hypot(se_a, se_b), welch_df(se_a, se_b, g - 1, g - 1)
    difference = fid_a - fid_b
    half = t_quantile(0.975, df) * stderr
    p_value = 1.0 if stderr == 0 and difference == 0 else 2 * t_cdf(-abs(difference) / max(stderr, 1e-300), df)
    return Comparison(difference, stderr, (difference - half, difference + half), p_value, paired, df)


def _of_metrics(a: InceptionMetrics, b: InceptionMetrics) -> tuple[Model, Model]:
    """Each metric's FID, FIDs without each group and group counts, after checking they can be compared."""
    if a.fid_groups < 2 or a.fid_groups != b.fid_groups:
        raise StatsMismatchError(
            f"compare needs both metrics built with one fid_groups >= 2, got {a.fid_groups} and {b.fid_groups}."
        )
    differences = identity_differences(a.identity(), b.identity())
    if differences:
        raise StatsMismatchError(f"compare needs one definition of FID; the metrics differ in {differences}.")
    if a.real_fingerprint != b.real_fingerprint:
        raise StatsMismatchError(
            "compare needs both metrics to hold the same real side (the same real images fed, or the same "
            "real_stats); theirs differ."
        )
    models = []
    for metric in (a, b):
        fid = float(metric.compute()["fid"])
        leave_one_out = metric.fid_leave_one_out
        assert leave_one_out is not None  # compute() with fid_groups sets it
        models.append((fid, leave_one_out.cpu(), cast(Tensor, metric.fake_group_num_samples).cpu()))
    return models[0], models[1]


def of_statistics(a: FeatureStats, b: FeatureStats, reference: FeatureStats) -> tuple[Model, Model]:
    """Each model's FID against ``reference``, FIDs without each group and group counts, from its statistics, after
    checking they can be compared; the reference's factor is computed once for both."""
    if a.groups is None or b.groups is None:
        raise ValueError(
            "compare needs the statistics of both models in groups (fid-metric stats --groups G, or the "
            "statistics(real=False) of an InceptionMetrics with fid_groups=G); "
            f"{'a' if a.groups is None else 'b'} has none."
        )
    if len(a.groups[0]) != len(b.groups[0]):
        raise StatsMismatchError(f"compare needs one number of groups, got {len(a.groups[0])} and {len(b.groups[0])}.")
    a.check_compatible(b, "a", "b")
    a.check_compatible(reference, "a", "the reference")
    b.check_compatible(reference, "b", "the reference")
    real = FixedReference(reference)
    return grouped_fids(a, real), grouped_fids(b, real)


def grouped_fids(stats: FeatureStats, reference: FeatureStats | FixedReference) -> Model:
    """The FID of ``stats`` against ``reference``, the ``(G,)`` FIDs without each of its groups (float64) and
    the ``(G,)`` group counts (int64), on the CPU, computed as ``InceptionMetrics`` computes them (a
    ``FixedReference`` brings its cached factor).

    Raises:
        ValueError: ``stats`` holds no groups, or a group holds fewer than 2 images.
    """
    if stats.groups is None:
        raise ValueError("these statistics hold no groups (fid-metric stats --groups G writes them).")
    counts, sums, outers = stats.groups
    if bool((counts < 2).any()):
        raise ValueError(f"The jackknife needs at least 2 generated images per group; got {counts.tolist()}.")
    real = reference if isinstance(reference, FixedReference) else FixedReference(reference)
    mu_real, sigma_real, factor = real.on(torch.device("cpu"))

    def fid_of(count: Tensor, total: Tensor, outer: Tensor) -> Tensor:
        mu, sigma = mean_and_covariance(count, total, outer)
        return frechet_distance(mu_real, sigma_real, mu, sigma, sigma1_factor=factor)

    fid = float(frechet_distance(mu_real, sigma_real, stats.mean, stats.covariance, sigma1_factor=factor))
    return fid, group_deleted(counts.double(), sums, outers, fid_of), counts
