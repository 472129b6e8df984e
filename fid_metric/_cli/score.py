"""``fid-metric score A B``: the FID between two inputs, the ``--metrics`` table, or one JSON object.

Two statistics files give the FID from them alone (:func:`fid_metric.frechet_distance`), and its standard error
when one of them holds groups (``fid-metric stats --groups``: the generated side); otherwise the images
are fed to :class:`fid_metric.FrechetInceptionDistance`, or to :class:`fid_metric.InceptionMetrics` when
``--metrics`` asks for more than FID, with a statistics file as the metric's fixed real side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import NamedTuple, cast

from fid_metric._cli.feeding import Metric, Together, build_cmmd, build_metric, feed_sides, weights
from fid_metric._cli.inputs import Images, InputError, Side, count, found, is_folder, open_input, print_counts
from fid_metric._cli.parser import PROG, TABLE_ROWS
from fid_metric._features.preprocess import REPRODUCES
from fid_metric._files.stats import FeatureStats, StatsMismatchError
from fid_metric._functional.distance import frechet_distance
from fid_metric._functional.jackknife import jackknife_stderr
from fid_metric._metrics.cmmd import CMMD
from fid_metric._metrics.compare import grouped_fids

_KID_SUBSET_SIZE = 1000  # torch-fidelity's and clean-fid's default
_NEED_IMAGES = ("prc", "kid", "dc", "cmmd")  # numbers of features kept per image, which statistics cannot give


class _Score(NamedTuple):
    """What ``score`` prints: the numbers, the definition they follow, and the images used per side."""

    values: dict[str, float]
    compat: str
    extractor: str
    feature_dim: int
    n_a: int | None
    n_b: int | None


def score_command(args: argparse.Namespace) -> None:
    """Print the FID between ``args.a`` and ``args.b`` (a float), the ``--metrics`` table, or one JSON object."""
    start = time.perf_counter()
    for text in (args.a, args.b):
        is_folder(text)  # both paths are checked before either is read
    # an ADM reference batch is then read as its images
    needs_images = bool(set(_NEED_IMAGES) & set(args.metrics))
    a, b = open_input(args.a, args, needs_images), open_input(args.b, args, needs_images)
    if isinstance(a, FeatureStats) and isinstance(b, FeatureStats):
        score = _score_statistics(args, a, b)
    else:
        score = _score_images(args, a, b, needs_images)
    if args.processes.rank != 0:
        return
    if args.json:
        counts = {"n_a": score.n_a, "n_b": score.n_b, "found_a": found(a), "found_b": found(b)}
        about = {"compat": score.compat, "extractor": score.extractor or None, "feature_dim": score.feature_dim}
        about["processes"] = args.processes.world
        print(json.dumps({**score.values, **counts, **about, "seconds": round(time.perf_counter() - start, 3)}))
        return
    network = score.extractor or f"{score.feature_dim}-d features of an unrecorded network"
    pipeline = f"compat={score.compat} ({REPRODUCES[score.compat]}), " if score.compat else ""
    print(f"{PROG}: definition: {pipeline}{network}", file=sys.stderr)
    if args.metrics == ["fid"]:
        stderr = score.values.get("fid_stderr")
        print(score.values["fid"] if stderr is None else f"{score.values['fid']} +- {stderr:.3g}")
    else:
        print(_table(score.values, args.metrics))


def _score_statistics(args: argparse.Namespace, a: FeatureStats, b: FeatureStats) -> _Score:
    """FID from two statistics files alone."""
    if args.metrics != ["fid"] or args.groups:
        option = "--groups" if args.groups else f"--metrics {','.join(args.metrics)}"
        raise InputError(f"{option} needs images; {args.a} and {args.b} are statistics")
    try:
        a.check_compatible(b, args.a, args.b)
    except StatsMismatchError as err:
        raise InputError(err) from err
    try:
        fid = float(frechet_distance(a.mean, a.covariance, b.mean, b.covariance))
    except ValueError as err:  # e.g. a covariance that is not positive semi-definite: name the file, not the argument
        message = str(err).replace("sigma1", f"the sigma of {args.a}").replace("sigma2", f"the sigma of {args.b}")
        raise InputError(message) from err
    values = {"fid": fid}
    if (a.groups is None) != (b.groups is None):  # the side in groups is the generated one
        generated, reference = (a, b) if a.groups is not None else (b, a)
        try:
            values["fid_stderr"] = float(jackknife_stderr(grouped_fids(generated, reference)[1]))
        except ValueError as err:  # a group of fewer than 2 images
            raise InputError(err) from err
    if args.processes.rank == 0:
        print_counts(("A", args.a, a), ("B", args.b, b))
    extractor = a.extractor if a.extractor == b.extractor else ""
    return _Score(values, a.compat, extractor, a.feature_dim, a.n, b.n)


def _score_images(args: argparse.Namespace, a: Side, b: Side, needs_images: bool) -> _Score:
    """The metric's numbers on the images of A and B, or of one side against the other side's statistics."""
    # FID is symmetric: a statistics file on either side becomes the metric's fixed real side.
    swapped = isinstance(b, FeatureStats)
    (real_arg, real), (fake_arg, fake) = ((args.b, b), (args.a, a)) if swapped else ((args.a, a), (args.b, b))
    reference = real if isinstance(real, FeatureStats) else None
    if needs_images and reference is not None:
        wanted = ", ".join(name for name in args.metrics if name in _NEED_IMAGES)
        raise InputError(f"--metrics {wanted} need images on both sides; {real_arg} holds statistics only")
    if "is" in args.metrics and swapped:
        raise InputError(
            f"--metrics is scores the images of B, and B ({args.b}) holds statistics; to score the images of "
            f"{args.a}, pass it as B"
        )
    if "kid" in args.metrics:
        _set_kid_subset_size(args, cast(Images, a), cast(Images, b))
    args.generated_images = count(cast(Images, fake))
    metric = build_metric(args, weights(args), reference, real_arg) if args.metrics != ["cmmd"] else None
    cmmd = build_cmmd(args) if "cmmd" in args.metrics else None
    if args.processes.rank == 0:
        print_counts(("A", args.a, a), ("B", args.b, b))
    sides = [] if reference is not None else [(cast(Images, real), real_arg, True)]
    fed = Together(*(m for m in (metric, cmmd) if m is not None))
    used = feed_sides(fed, [*sides, (cast(Images, fake), fake_arg, False)], args)
    n_real = cast(FeatureStats, real).n if reference is not None else used[0]
    n_a, n_b = (used[-1], n_real) if swapped else (n_real, used[-1])
    values = _computed(metric) if metric is not None else {}
    if cmmd is not None:
        values["cmmd"] = float(cmmd.compute())
    described = metric if metric is not None else cast(CMMD, cmmd)
    compat = str(described.identity()["compat"])  # "" for another network than Inception's
    return _Score(values, compat, described.extractor_id, described.num_features, n_a, n_b)


def _set_kid_subset_size(args: argparse.Namespace, a: Images, b: Images) -> None:
    """``--kid-subset-size`` by default: 1000, or the smaller side's count with a note; larger than a side: an error."""
    smaller = min(count(a), count(b))
    if args.kid_subset_size is None:
        args.kid_subset_size = min(_KID_SUBSET_SIZE, smaller)
        if args.kid_subset_size < _KID_SUBSET_SIZE and args.processes.rank == 0:
            print(
                f"{PROG}: note: KID subsets of {args.kid_subset_size} images (the smaller side), not "
                f"{_KID_SUBSET_SIZE}; torch-fidelity would stop, clean-fid does the same",
                file=sys.stderr,
            )
    if args.kid_subset_size > smaller:
        raise InputError(f"--kid-subset-size {args.kid_subset_size} is larger than a side ({smaller} images)")


def _computed(metric: Metric) -> dict[str, float]:
    """The metric's numbers as floats (a collective call under many processes)."""
    try:
        result = metric.compute()
    except ValueError as err:  # e.g. a KID subset larger than a side
        raise InputError(err) from err
    return {k: float(v) for k, v in result.items()} if isinstance(result, dict) else {"fid": float(result)}


def _table(values: dict[str, float], metrics: list[str]) -> str:
    """The asked-for numbers, one per line, in ``TABLE_ROWS``' order; after "+-" the standard error (``--groups``)
    or else the standard deviation over splits or subsets."""
    lines = []
    for name, label, key in TABLE_ROWS:
        if name in metrics:
            # a std of 0 (one Inception Score split, KID over all pairs): no +- then
            std = values.get(f"{key}_stderr", values.get(f"{key}_std"))
            lines.append(f"{label:<16}{values[key]:.6g}" + (f" +- {std:.2g}" if std else ""))
    return "\n".join(lines)
