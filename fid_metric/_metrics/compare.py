"""``compare``: is model A's FID really lower than model B's? A paired (or unpaired) jackknife over image groups.

Two ``InceptionMetrics`` with ``fid_groups=G``, fed the same real images (or built with the same ``real_stats``)
and each its model's generated images, give G FIDs without each group (``fid_leave_one_out``). Paired, when
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

from fid_metric._files.stats import StatsMismatchError, identity_differences
from fid_metric._functional.jackknife import jackknife_stderr, t_cdf, t_quantile, welch_df
from fid_metric._metrics.inception_metrics import InceptionMetrics


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


def compare(a: InceptionMetrics, b: InceptionMetrics, *, paired: bool | None = None) -> Comparison:
    """Compare two models' FIDs against one reference (see the module docstring).

    Under DDP every process must call it (it calls both metrics' ``compute()``).

    Args:
        a: model A's metric, with ``fid_groups`` >= 2.
        b: model B's, of the same definition, reference and ``fid_groups``.
        paired: None: paired when every group holds as many images in both; True: paired, an error if the
            groups' counts differ; False: unpaired.

    Raises:
        TypeError: not two ``InceptionMetrics``.
        StatsMismatchError: another definition (identity), another real side, or another ``fid_groups``.
        ValueError: ``paired=True`` with groups of different counts, or fewer than 2 groups.
    """
    if not isinstance(a, InceptionMetrics) or not isinstance(b, InceptionMetrics):
        raise TypeError(f"compare takes two InceptionMetrics, got {type(a).__name__} and {type(b).__name__}.")
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
    fid_a, fid_b = float(a.compute()["fid"]), float(b.compute()["fid"])
    out_a, out_b = a.fid_leave_one_out, b.fid_leave_one_out
    assert out_a is not None and out_b is not None  # compute() with fid_groups sets them
    counts_a, counts_b = cast(Tensor, a.fake_group_num_samples), cast(Tensor, b.fake_group_num_samples)
    same_counts = torch.equal(counts_a.cpu(), counts_b.cpu())
    if paired and not same_counts:
        raise ValueError("paired=True needs as many generated images in each group of both metrics.")
    paired = same_counts if paired is None else paired
    g = a.fid_groups
    if paired:
        stderr, df = float(jackknife_stderr(out_a.cpu() - out_b.cpu())), float(g - 1)
    else:
        se_a, se_b = float(jackknife_stderr(out_a.cpu())), float(jackknife_stderr(out_b.cpu()))
        stderr, df = math.hypot(se_a, se_b), welch_df(se_a, se_b, g - 1, g - 1)
    difference = fid_a - fid_b
    half = t_quantile(0.975, df) * stderr
    p_value = 1.0 if stderr == 0 and difference == 0 else 2 * t_cdf(-abs(difference) / max(stderr, 1e-300), df)
    return Comparison(difference, stderr, (difference - half, difference + half), p_value, paired, df)
