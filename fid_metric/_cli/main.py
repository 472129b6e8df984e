"""The ``fid-metric`` command: FID between image folders and/or statistics files, and reference statistics.

``fid-metric score A B`` prints the FID (``--metrics`` adds sFID, IS, precision/recall and KID, through
:class:`fid_metric.InceptionMetrics`); ``fid-metric stats FOLDER -o ref.npz`` saves the statistics of a folder
for later use as A or B; ``fid-metric compare REF A B`` prints A's FID minus B's with its uncertainty. The
command line, by concern:

    parser.py     the arguments, their help and their types (the standard library only)
    inputs.py     image folders, sample batches and statistics files, checked up front
    feeding.py    the metric: weights, construction, this process's share of the images fed to it
    score.py      the score command and its output
    stats.py      the stats command
    compare.py    the compare command (fid_metric.compare)
    processes.py  torchrun's processes: joining, sharing out the images, agreeing on failures

This module imports only the parser, so that ``--help`` answers before torch is imported; the command's
modules are imported once the arguments have been parsed.

Everything that can be checked without the network is checked before the first image is processed: the
options, both inputs (every image's header), the output file and the weights. Bad input ends the run with
exit code 2 and one line on stderr; warnings are single "fid-metric: warning:" lines too, and Ctrl-C exits
130 with one line.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import TextIO

from fid_metric._cli.parser import PROG, build_parser, one_line


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fid-metric`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                args = build_parser().parse_args(argv)
            except SystemExit as exit_:  # argparse: --help (0) or a usage error (2), already reported
                return exit_.code if isinstance(exit_.code, int) else 2
            return _run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command on the launcher's processes (one without torchrun); its exit code."""
    from fid_metric._cli.inputs import InputError
    from fid_metric._cli.processes import join_process_group, leave_process_group
    from fid_metric._features.weights import WeightsUnavailableError

    args.compat_stated = args.compat is not None  # a statement about unrecorded statistics files too
    args.compat = args.compat or "tensorflow"
    try:
        if args.compat_stated and args.feature == "clip":
            raise InputError("--compat sets the Inception network's preprocessing; --feature clip has its own")
        try:
            args.processes = join_process_group(args.device, args.join_timeout)
        except ValueError as err:  # an incomplete launcher environment
            raise InputError(err) from err
        args.device = args.processes.device
        args.no_progress = args.no_progress or args.processes.rank != 0  # only rank 0 shows progress
        _command(args.command)(args)
    except InputError as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except WeightsUnavailableError as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 1
    finally:
        leave_process_group()
    return 0


def _command(name: str) -> Callable[[argparse.Namespace], None]:
    """The function that runs the command ``name`` (``score``, ``stats`` or ``compare``)."""
    if name == "score":
        from fid_metric._cli.score import score_command

        return score_command
    if name == "compare":
        from fid_metric._cli.compare import compare_command

        return compare_command
    from fid_metric._cli.stats import stats_command

    return stats_command


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` for the command: one "fid-metric: warning:" line, not a source location that
    means nothing to someone who typed a command."""
    from tqdm import tqdm  # written above a progress bar, not through it

    tqdm.write(f"{PROG}: warning: {one_line(message)}", file=sys.stderr)
