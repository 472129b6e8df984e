"""``fid-metric compare REF A B``: model A's FID minus model B's against one reference, with its uncertainty
(as :func:`fid_metric.compare`: a delete-a-group jackknife, paired when A and B hold as many images per group).

Every input becomes statistics: REF's (a statistics file, or its images fed as the real side), and A's and B's
with their groups' sums (files saved by ``fid-metric stats --groups G``, or their images fed as the generated
side of an ``InceptionMetrics(fid_groups=G)``), so that images and files give the same numbers.
"""

from __future__ import annotations

import argparse
import json

from fid_metric._cli.feeding import Metric, build_metric, feed_sides, weights
from fid_metric._cli.inputs import InputError, Side, is_folder, open_input, print_counts
from fid_metric._files.stats import FeatureStats
from fid_metric._metrics.compare import comparison, of_statistics

_GROUPS = 10  # --groups' default for images


def compare_command(args: argparse.Namespace) -> None:
    """Print A's FID minus B's, its standard error, 95% interval and p-value (or one JSON object)."""
    for text in (args.ref, args.a, args.b):
        is_folder(text)  # every path is checked before any is read
    ref, a, b = (open_input(text, args) for text in (args.ref, args.a, args.b))
    args.groups = _groups(args, a, b)
    metric = None
    if not all(isinstance(side, FeatureStats) for side in (ref, a, b)):
        metric = build_metric(args, weights(args), None, None)
    if args.processes.rank == 0:
        print_counts(("REF", args.ref, ref), ("A", args.a, a), ("B", args.b, b))
    reference = _statistics(metric, ref, args.ref, True, args)
    first = _statistics(metric, a, args.a, False, args)
    second = _statistics(metric, b, args.b, False, args)
    try:
        models = of_statistics(first, second, reference)
    except ValueError as err:  # another definition, or a group with fewer than 2 images
        raise InputError(err) from err
    result = comparison(*models, paired=None)
    fid_a, fid_b = models[0][0], models[1][0]
    if args.processes.rank != 0:
        return
    if args.json:
        values = {"fid_a": fid_a, "fid_b": fid_b, **result.__dict__, "ci95": list(result.ci95)}
        print(json.dumps({**values, "n_ref": reference.n, "n_a": first.n, "n_b": second.n}))
        return
    low, high = result.ci95
    print(
        f"FID(A) - FID(B) = {result.difference:.6g} +- {result.stderr:.3g} (95% CI {low:.6g} .. {high:.6g}, "
        f"p = {result.p_value:.3g}, {'paired' if result.paired else 'unpaired'}; FID(A) {fid_a:.6g}, FID(B) "
        f"{fid_b:.6g})"
    )


def _groups(args: argparse.Namespace, a: Side, b: Side) -> int:
    """G: ``--groups``, else the statistics files' (which must agree with it and with each other), else 10."""
    recorded = {}
    for label, text, side in (("A", args.a, a), ("B", args.b, b)):
        if isinstance(side, FeatureStats):
            if side.groups is None:
                raise InputError(
                    f"{label} ({text}) holds statistics without groups; compare needs them in groups: write them "
                    "with `fid-metric stats --groups G`"
                )
            recorded[text] = len(side.groups[0])
    wanted = {args.groups} if args.groups else set()
    if len(set(recorded.values()) | wanted) > 1:
        stated = f" and --groups {args.groups}" if args.groups else ""
        raise InputError(f"A and B must be in as many groups; got {recorded}{stated}")
    return args.groups or next(iter(recorded.values()), _GROUPS)


def _statistics(metric: Metric | None, side: Side, text: str, real: bool, args: argparse.Namespace) -> FeatureStats:
    """``side`` as statistics: a file as it is; images fed to ``metric`` (reset first) as the real or generated
    side, whose statistics are taken (a collective call under many processes)."""
    if isinstance(side, FeatureStats):
        return side
    assert metric is not None  # built whenever a side holds images
    metric.reset()
    feed_sides(metric, [(side, text, real)], args)
    try:
        return metric.statistics(real=real)
    except ValueError as err:  # the images changed while they were read
        raise InputError(err) from err
