"""``fid-metric compare REF A B``: model A's FID minus model B's against one reference, with its uncertainty
(:func:`fid_metric.compare`: a delete-a-group jackknife, paired when A and B hold as many images)."""

from __future__ import annotations

import argparse
import json
from typing import cast

from fid_metric._cli.feeding import build_metric, feed_sides, weights
from fid_metric._cli.inputs import Images, InputError, is_folder, open_input, print_counts
from fid_metric._files.stats import FeatureStats
from fid_metric._metrics.compare import compare
from fid_metric._metrics.inception_metrics import InceptionMetrics


def compare_command(args: argparse.Namespace) -> None:
    """Print A's FID minus B's, its standard error, 95% interval and p-value (or one JSON object)."""
    for text in (args.ref, args.a, args.b):
        is_folder(text)  # every path is checked before any is read
    ref, a, b = (open_input(text, args) for text in (args.ref, args.a, args.b))
    for label, side in (("A", a), ("B", b)):
        if isinstance(side, FeatureStats):
            raise InputError(f"{label} must hold images (a folder or a sample batch); compare needs them in groups")
    reference = ref if isinstance(ref, FeatureStats) else None
    path = weights(args)
    first = cast(InceptionMetrics, build_metric(args, path, reference, args.ref))
    second = cast(InceptionMetrics, build_metric(args, path, reference, args.ref))
    if args.processes.rank == 0:
        print_counts(("REF", args.ref, ref), ("A", args.a, a), ("B", args.b, b))
    n_ref = reference.n if reference is not None else feed_sides(first, [(cast(Images, ref), args.ref, True)], args)[0]
    if reference is None:
        second.merge_state(first)  # the same real sums, fed once
    (n_a,) = feed_sides(first, [(cast(Images, a), args.a, False)], args)
    (n_b,) = feed_sides(second, [(cast(Images, b), args.b, False)], args)
    try:
        result = compare(first, second)
    except (ValueError, RuntimeError) as err:  # e.g. a group with fewer than 2 images
        raise InputError(err) from err
    fid_a, fid_b = float(first.compute()["fid"]), float(second.compute()["fid"])  # compare() computed them
    if args.processes.rank != 0:
        return
    if args.json:
        values = {"fid_a": fid_a, "fid_b": fid_b, **result.__dict__, "ci95": list(result.ci95)}
        print(json.dumps({**values, "n_ref": n_ref, "n_a": n_a, "n_b": n_b}))
        return
    low, high = result.ci95
    print(
        f"FID(A) - FID(B) = {result.difference:.6g} +- {result.stderr:.3g} (95% CI {low:.6g} .. {high:.6g}, "
        f"p = {result.p_value:.3g}, {'paired' if result.paired else 'unpaired'}; FID(A) {fid_a:.6g}, FID(B) "
        f"{fid_b:.6g})"
    )
