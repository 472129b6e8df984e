"""The ``fid-metric`` command: FID between image folders and/or statistics files, and reference statistics.

``fid-metric score A B`` prints the FID; ``fid-metric stats FOLDER -o ref.npz`` saves the statistics of a
folder for later use as A or B. Images are decoded in DataLoader workers (``fid_metric.image_folder``) and
fed to :class:`fid_metric.FrechetInceptionDistance`; statistics files are read by
:meth:`fid_metric.FeatureStats.load`. Bad input ends the run with exit code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fid_metric.distance import frechet_distance
from fid_metric.image_folder import IMAGE_EXTENSIONS, BadImage, ImageFiles, collate, list_images, same_size_batches
from fid_metric.metric import FrechetInceptionDistance
from fid_metric.preprocess import COMPAT_MODES
from fid_metric.stats import FeatureStats, StatsMismatchError
from fid_metric.weights import WeightsUnavailableError

PROG = "fid-metric"

EPILOG = f"""\
examples:
  {PROG} score real/ generated/
  {PROG} stats real/ -o real.npz && {PROG} score real.npz generated/ --json

inputs:
  A folder is searched recursively for {", ".join(IMAGE_EXTENSIONS)} files (any case), read in sorted
  order and decoded with PIL's convert("RGB"); images may differ in size. A .npz file holds statistics:
  written by `{PROG} stats`, by pytorch-fid --save-stats, by clean-fid, or an ADM reference batch.
  It must match --feature, --compat and the weights; when A and B are both statistics files, the
  FID comes from them alone and those options are not used.

exit codes:
  0  success
  1  any other failure, e.g. the Inception weights can be neither found nor downloaded
     (pass --weights or set FID_METRIC_WEIGHTS)
  2  bad input, reported as one line "{PROG}: error: ...": a usage error, a missing path, a path
     that is neither a folder nor a .npz file, a folder with fewer than 2 images, an unreadable
     image (unless --skip-bad-images), a corrupt statistics file, or one made with another
     --feature, --compat or weights file
"""


class InputError(Exception):
    """Bad input: reported as one line on stderr, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fid-metric`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2), already reported
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        args.command(args)
    except InputError as err:
        print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except WeightsUnavailableError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: subcommands ``score`` and ``stats`` with the shared options."""
    formatter = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--feature", type=int, choices=(64, 192, 768, 2048), default=2048, help="Inception feature layer; default: 2048"
    )
    common.add_argument(
        "--compat", choices=COMPAT_MODES, default="tensorflow", help="preprocessing to reproduce; default: tensorflow"
    )
    common.add_argument("--weights", type=_existing_file, metavar="PATH", help="pt_inception-2015-12-05 weights")
    common.add_argument("--batch-size", type=_int_at_least(1), default=50, metavar="N", help="default: 50")
    common.add_argument(
        "--device",
        type=_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where Inception runs; default: cuda if available, else cpu",
    )
    common.add_argument(
        "--workers",
        type=_int_at_least(0),
        default=min(8, os.cpu_count() or 1),
        metavar="N",
        help="image decoding processes (0: in the main process); default: min(8, CPUs)",
    )
    common.add_argument(
        "--skip-bad-images", action="store_true", help="leave out files that cannot be decoded, with a warning"
    )
    common.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    parser = argparse.ArgumentParser(
        prog=PROG, description="Exact Fréchet Inception Distance.", epilog=EPILOG, formatter_class=formatter
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="{score,stats}")
    score = commands.add_parser(
        "score", parents=[common], epilog=EPILOG, formatter_class=formatter, help="print the FID between A and B"
    )
    score.add_argument("a", metavar="A", help="image folder or .npz statistics file")
    score.add_argument("b", metavar="B", help="image folder or .npz statistics file")
    score.add_argument(
        "--json", action="store_true", help='print {"fid", "n_a", "n_b", "compat", "feature_dim", "seconds"}'
    )
    score.set_defaults(command=score_command)
    stats = commands.add_parser(
        "stats", parents=[common], epilog=EPILOG, formatter_class=formatter, help="save a folder's statistics"
    )
    stats.add_argument("folder", metavar="FOLDER", help="image folder")
    stats.add_argument("-o", "--output", required=True, metavar="OUT.npz", help="statistics file to write")
    stats.set_defaults(command=stats_command)
    return parser


def score_command(args: argparse.Namespace) -> None:
    """Print the FID between ``args.a`` and ``args.b`` (a float, or a JSON object with ``--json``)."""
    start = time.perf_counter()
    a, b = _open_input(args.a), _open_input(args.b)
    if isinstance(a, FeatureStats) and isinstance(b, FeatureStats):
        try:
            a.check_compatible(b, f"{args.a} and {args.b}")
        except StatsMismatchError as err:
            raise InputError(err) from err
        fid = float(frechet_distance(a.mean, a.covariance, b.mean, b.covariance))
        compat, feature_dim, n_a, n_b = a.compat or b.compat or None, a.feature_dim, a.n, b.n
    else:
        # FID is symmetric: a statistics file on either side becomes the metric's fixed real side.
        swapped = isinstance(b, FeatureStats)
        (real_arg, real), (fake_arg, fake) = ((args.b, b), (args.a, a)) if swapped else ((args.a, a), (args.b, b))
        reference = real if isinstance(real, FeatureStats) else None
        metric = _build_metric(args, reference, real_arg)
        n_real = real.n if reference is not None else _feed(metric, real, real_arg, True, args)
        n_fake = _feed(metric, fake, fake_arg, False, args)
        n_a, n_b = (n_fake, n_real) if swapped else (n_real, n_fake)
        fid, compat, feature_dim = float(metric.compute()), metric.compat, metric.num_features
    if args.json:
        seconds = round(time.perf_counter() - start, 3)
        result = {"fid": fid, "n_a": n_a, "n_b": n_b, "compat": compat, "feature_dim": feature_dim}
        print(json.dumps({**result, "seconds": seconds}))
    else:
        print(fid)


def stats_command(args: argparse.Namespace) -> None:
    """Write the statistics of the images in ``args.folder`` to ``args.output`` (``.npz``)."""
    output = Path(args.output)
    if output.suffix.lower() != ".npz":
        raise InputError(f"the output file must end in .npz (as `{PROG} score` expects), got {output}")
    if not output.parent.is_dir():
        raise InputError(f"cannot write {output}: folder {output.parent} does not exist")
    files = _open_input(args.folder)
    if isinstance(files, FeatureStats):
        raise InputError(f"expected an image folder, got the statistics file {args.folder}")
    metric = _build_metric(args, None, None)
    n = _feed(metric, files, args.folder, True, args)
    metric.save_real_stats(output)
    print(f"{output}: {n} images, {metric.extractor_id}, compat={metric.compat}")


def _open_input(text: str) -> list[Path] | FeatureStats:
    """An image folder's sorted files (at least 2), or a loaded ``.npz`` statistics file."""
    path = Path(text)
    if path.is_dir():
        files = list_images(path)
        if len(files) < 2:
            raise InputError(
                f"{text} holds {len(files)} image file(s) ({', '.join(IMAGE_EXTENSIONS)}, searched recursively); "
                "FID needs at least 2"
            )
        return files
    if not path.exists():
        raise InputError(f"{text} does not exist (expected an image folder or a .npz statistics file)")
    if path.suffix.lower() != ".npz":
        raise InputError(f"{text} is neither a folder of images nor a .npz statistics file")
    try:
        return FeatureStats.load(path)
    except ValueError as err:
        raise InputError(err) from err


def _build_metric(
    args: argparse.Namespace, reference: FeatureStats | None, reference_arg: str | None
) -> FrechetInceptionDistance:
    """The metric for ``args``, with ``reference`` as its fixed real side when given."""
    try:
        metric = FrechetInceptionDistance(
            args.feature, feature_extractor_weights_path=args.weights, compat=args.compat, real_stats=reference
        )
    except StatsMismatchError as err:
        made_with = f"feature_dim={reference.feature_dim}, compat={reference.compat or 'unknown'}"
        raise InputError(
            f"{reference_arg} does not match the options ({err}); it was made with {made_with}: pass the same "
            "--feature, --compat and --weights"
        ) from err
    except WeightsUnavailableError:
        raise
    except RuntimeError as err:  # a weights file that is not the Inception state dict
        raise InputError(err) from err
    return metric.to(args.device)


def _feed(metric: FrechetInceptionDistance, files: list[Path], label: str, real: bool, args: argparse.Namespace) -> int:
    """Decode ``files`` in DataLoader workers and update ``metric`` with them; return how many were used.

    A run of consecutive images of one size is one ``update`` call, so folders of mixed sizes work and a
    folder of equal sizes is fed in batches of ``--batch-size``.
    """
    loader = DataLoader(ImageFiles(files), batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate)
    used = skipped = 0
    with tqdm(total=len(files), desc=label, unit="img", file=sys.stderr, disable=args.no_progress) as progress:
        for batch in loader:
            images = []
            for item in batch:
                if not isinstance(item, BadImage):
                    images.append(item)
                elif args.skip_bad_images:
                    tqdm.write(f"{PROG}: warning: skipping {item.path}: {item.error}", file=sys.stderr)
                    skipped += 1
                else:
                    raise InputError(
                        f"cannot read image {item.path}: {item.error} (pass --skip-bad-images to leave such files out)"
                    )
            for group in same_size_batches(images):
                metric.update(group, real=real)
            used += len(images)
            progress.update(len(batch))
    if skipped:
        print(f"{PROG}: warning: skipped {skipped} unreadable file(s) in {label}", file=sys.stderr)
    if used < 2:
        raise InputError(f"{label} holds {used} readable image(s); FID needs at least 2")
    return used


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
        torch.empty(0, device=device)
    except RuntimeError as err:
        raise argparse.ArgumentTypeError(f"cannot use device {text!r}: {str(err).split('. ')[0]}") from err
    return device


def _existing_file(text: str) -> Path:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    return Path(text)


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a decimal integer >= ``minimum`` (>= 0)."""

    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return int(text)

    return parse
