"""``fid-metric stats FOLDER -o OUT.npz [--groups G]``: the statistics of an image folder or a sample batch, saved
for later use as A or B of ``fid-metric score`` (by :meth:`fid_metric.FrechetInceptionDistance.save_real_stats`);
with ``--groups``, the images are the generated side of an ``InceptionMetrics(fid_groups=G)``, whose statistics
keep their G groups' sums for ``fid-metric compare`` and FID's standard error."""

from __future__ import annotations

import argparse
from pathlib import Path

from fid_metric._cli.feeding import build_metric, feed_sides, weights
from fid_metric._cli.inputs import InputError, is_folder, open_input, print_counts
from fid_metric._cli.parser import PROG
from fid_metric._files.atomic_file import check_writable
from fid_metric._files.stats import FeatureStats


def stats_command(args: argparse.Namespace) -> None:
    """Write the statistics of the images in ``args.folder`` to ``args.output`` (``.npz``)."""
    output = Path(args.output)
    _check_output(output)
    if not is_folder(args.folder) and output.exists() and output.samefile(args.folder):
        raise InputError(f"the output file {output} is the input {args.folder}: writing it would destroy the input")
    images = open_input(args.folder, args)
    if isinstance(images, FeatureStats):
        raise InputError(
            f"expected an image folder or a sample batch (.npz with arr_0), got the statistics file {args.folder}"
        )
    metric = build_metric(args, weights(args), None, None)
    if args.processes.rank == 0:
        print_counts(("", args.folder, images))
    real = not args.groups  # groups are kept of the generated side
    (n,) = feed_sides(metric, [(images, args.folder, real)], args)
    try:
        stats = metric.statistics(real=real)  # under many processes: synced on all, written by rank 0
        if args.processes.rank == 0:
            stats.save(output)
    except ValueError as err:  # the folder changed while the images were processed
        raise InputError(err) from err
    except OSError as err:  # e.g. the disk filled up
        raise InputError(f"cannot write {output}: {err.strerror or err}") from err
    if args.processes.rank == 0:
        groups = f" in {args.groups} groups" if args.groups else ""
        print(f"{output}: {n} images{groups}, {metric.extractor_id}, compat={metric.compat}")


def _check_output(output: Path) -> None:
    """Raise ``InputError`` unless ``output`` ends in .npz and ``FeatureStats.save`` could write it."""
    if output.suffix.lower() != ".npz":
        raise InputError(f"the output file must end in .npz (as `{PROG} score` expects), got {output}")
    try:
        check_writable(output)
    except ValueError as err:
        raise InputError(err) from err
