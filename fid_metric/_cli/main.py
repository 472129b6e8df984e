"""The ``fid-metric`` command: FID between image folders and/or statistics files, and reference statistics.

``fid-metric score A B`` prints the FID (``--metrics`` adds sFID, IS, precision/recall and KID, through
:class:`fid_metric.InceptionMetrics`); ``fid-metric stats FOLDER -o ref.npz`` saves the statistics of a folder
for later use as A or B. Under torchrun each process takes its share of the images (``fid_metric._cli.processes``).
Images are decoded in DataLoader workers (``fid_metric._files.image_folder``) and fed to the metric; statistics files
are read by :meth:`fid_metric.FeatureStats.load`.

Everything that can be checked without the network is checked before the first image is processed: the
options, both inputs (every image's header), the output file and the weights. Bad input ends the run with
exit code 2 and one line on stderr; warnings are single "fid-metric: warning:" lines too, and Ctrl-C exits
130 with one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, NamedTuple, NoReturn, TextIO, Union, cast

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fid_metric._cli.processes import JOIN_TIMEOUT, Processes, join_process_group, leave_process_group
from fid_metric._features.inception import POOL_FEATURES
from fid_metric._features.preprocess import COMPAT_MODES, REPRODUCES
from fid_metric._features.weights import INCEPTION, WeightsUnavailableError, resolve
from fid_metric._files.atomic_file import check_writable
from fid_metric._files.image_folder import (
    FORMATS,
    IMAGE_EXTENSIONS,
    BadImage,
    ImageFiles,
    check_header,
    collate,
    list_images,
    same_size_batches,
)
from fid_metric._files.sample_batch import SampleBatch, holds_images
from fid_metric._files.stats import FeatureStats, StatsMismatchError
from fid_metric._functional.distance import frechet_distance
from fid_metric._metrics.fid import FrechetInceptionDistance
from fid_metric._metrics.inception_metrics import InceptionMetrics

PROG = "fid-metric"
# The score table, in the order the papers print it: --metrics name, label, key of the value (its std: key + "_std")
_TABLE_ROWS = [
    ("fid", "FID", "fid"),
    ("sfid", "sFID", "sfid"),
    ("is", "Inception Score", "inception_score"),
    ("prc", "Precision", "precision"),
    ("prc", "Recall", "recall"),
    ("kid", "KID", "kid"),
]
METRICS = tuple(dict.fromkeys(name for name, _, _ in _TABLE_ROWS))  # --metrics names: fid, sfid, is, prc, kid
_KID_SUBSET_SIZE = 1000  # torch-fidelity's and clean-fid's default
# 65,536 images of 3 x 299 x 299 float32 are 70 GB of network input: a larger batch is a typo.
MAX_BATCH_SIZE = 65536

EPILOG = f"""\
examples:
  {PROG} score real/ generated/
  {PROG} stats real/ -o real.npz && {PROG} score real.npz generated/ --json
  {PROG} score ref.npz samples.npz --metrics fid,sfid,is,prc,kid
  torchrun --nproc_per_node=8 -m fid_metric score real/ generated/ --metrics fid,prc

processes:
  Started by torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set), each process scores every
  WORLD_SIZE-th image of each side on cuda:LOCAL_RANK (or the CPU), the statistics are combined
  once, and rank 0 prints; the numbers are those of one process. The launcher's variables are
  checked first (0 <= RANK < WORLD_SIZE), and a process whose peers have not all started within
  --join-timeout seconds stops with exit code 2.

inputs:
  A folder is searched recursively for {", ".join(IMAGE_EXTENSIONS)} files (any case), following
  links to folders (each real folder once), read in sorted order and decoded with PIL's
  convert("RGB"); images may differ in size. Only the {", ".join(FORMATS)} decoders are used,
  whatever a file holds. Every file's header, in A and in B, is read before the first image is
  processed, and the number of images of each side is printed on stderr. A .npz file holds
  statistics: written by `{PROG} stats`, by pytorch-fid --save-stats, by clean-fid, or an ADM
  reference batch; an EDM2 reference .pkl (its FID statistics, read without unpickling anything
  but numpy arrays). It must match --feature, --compat and the weights; when A and B are both
  statistics files, the FID comes from them alone. Ours record their definition of FID, an ADM
  reference batch is TensorFlow's, and clean-fid's files say theirs in their name
  (<name>_clean_<split>_<res>.npz: clean-fid; _legacy_tensorflow_: tensorflow); for any other
  (pytorch-fid --save-stats) --compat says what it holds, and without it the run stops. The
  definition used is printed on stderr (in --json: "compat", "extractor"). A .npz
  holding arr_0 and no mu is a sample batch (guided-diffusion, DiT, EDM): (N, H, W, 3) uint8
  images, read --batch-size at a time; `{PROG} stats` takes one too. An ADM reference batch holds
  both: its stored mu/sigma (and mu_s/sigma_s) serve FID and sFID, as in ADM's evaluator, unless
  --metrics asks for prc or kid, which need its images: then every number, FID included, comes
  from its images, and stderr says so. --metrics is scores B's images (B must hold images).

exit codes:
  0    success
  1    any other failure, e.g. the Inception weights can be neither found nor downloaded
       (pass --weights or set {INCEPTION.env_path})
  2    bad input, reported as one line "{PROG}: error: ..." before any image is processed: a usage
       error (e.g. --batch-size above {MAX_BATCH_SIZE}, a --device that cannot run), a missing path, a
       path that is neither a folder nor a .npz file, a folder that cannot be listed or holds fewer
       than 2 images, an unreadable image (unless --skip-bad-images), a corrupt statistics file, one
       made with another --feature, --compat or weights file, an -o file that cannot be written or
       that is the input, launcher variables that do not fit together, or peers that did not start
       within --join-timeout; an image whose pixel data is cut short is found only when it is decoded
  130  interrupted (Ctrl-C), reported as one line "{PROG}: interrupted"
"""


class InputError(Exception):
    """Bad input: reported as one line on stderr, exit code 2."""


class _Folder(NamedTuple):
    """An image folder: its files whose headers were read (sorted), and how many image files it holds."""

    files: list[Path]
    found: int


_Side = Union[_Folder, SampleBatch, FeatureStats]
_Metric = Union[FrechetInceptionDistance, InceptionMetrics]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fid-metric`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return _run(argv)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        leave_process_group()


def _run(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2), already reported
        return exit_.code if isinstance(exit_.code, int) else 2
    args.compat_stated = args.compat is not None  # a statement about unrecorded statistics files too
    args.compat = args.compat or "tensorflow"
    try:
        args.processes = _join_processes(args)
        args.command(args)
    except InputError as err:
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except WeightsUnavailableError as err:
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    return 0


def _join_processes(args: argparse.Namespace) -> Processes:
    """The launcher's processes (one without torchrun); ``args.device`` becomes this process's device, and only
    rank 0 shows progress."""
    try:
        processes = join_process_group(args.device, args.join_timeout)
    except ValueError as err:  # an incomplete launcher environment
        raise InputError(err) from err
    args.device = processes.device
    args.no_progress = args.no_progress or processes.rank != 0
    return processes


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like the command's other errors, instead of after the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: subcommands ``score`` and ``stats`` with the shared options."""
    formatter = argparse.RawDescriptionHelpFormatter
    common = _Parser(add_help=False)
    common.add_argument(
        "--feature", type=int, choices=POOL_FEATURES, default=2048, help="Inception feature layer; default: 2048"
    )
    common.add_argument(
        "--compat",
        choices=COMPAT_MODES,
        default=None,
        help="the definition of FID to reproduce (its preprocessing); also what a statistics file that does not "
        "record its own holds; default: tensorflow",
    )
    common.add_argument("--weights", type=_existing_file, metavar="PATH", help="pt_inception-2015-12-05 weights")
    common.add_argument("--batch-size", type=_int_in(1, MAX_BATCH_SIZE), default=50, metavar="N", help="default: 50")
    common.add_argument(
        "--device",
        type=_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where Inception runs; default: cuda if available, else cpu",
    )
    common.add_argument(
        "--workers",
        type=_int_in(0),
        default=min(8, os.cpu_count() or 1),
        metavar="N",
        help="image decoding processes (0: in the main process), and header-reading threads; default: min(8, CPUs)",
    )
    common.add_argument(
        "--skip-bad-images", action="store_true", help="leave out files that cannot be read, with a warning each"
    )
    common.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    common.add_argument(
        "--join-timeout",
        type=_seconds,
        default=JOIN_TIMEOUT,
        metavar="SECONDS",
        help=f"under torchrun, how long each process waits for the others to start; default: {JOIN_TIMEOUT:g}",
    )

    parser = _Parser(
        prog=PROG, description="Exact Fréchet Inception Distance.", epilog=EPILOG, formatter_class=formatter
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="{score,stats}")
    score = commands.add_parser(
        "score", parents=[common], epilog=EPILOG, formatter_class=formatter, help="print the FID between A and B"
    )
    score.add_argument("a", metavar="A", help="image folder, .npz statistics or .npz sample batch (arr_0)")
    score.add_argument("b", metavar="B", help="image folder, .npz statistics or .npz sample batch (arr_0)")
    score.add_argument(
        "--metrics",
        type=_metric_names,
        default=["fid"],
        metavar="LIST",
        help="comma-separated, of fid, sfid, is (Inception Score of B), prc (precision of B and recall of A), kid; "
        "default: fid (printed alone, as a number)",
    )
    score.add_argument("--kid-subsets", type=_int_in(1), default=100, metavar="N", help="KID subsets; default: 100")
    score.add_argument(
        "--kid-subset-size",
        type=_int_in(2),
        default=None,
        metavar="N",
        help="KID images per side per subset; default: 1000, or the smaller side's image count when that is "
        "smaller (as clean-fid does; a note says so)",
    )
    score.add_argument(
        "--is-split-size",
        type=_int_in(1),
        default=5000,
        metavar="N",
        help="Inception Score splits of N consecutive images of B, as ADM's evaluator (whose IS the diffusion papers "
        "print); with more than N images the std over splits follows +-; default: 5000",
    )
    score.add_argument(
        "--kid-seed",
        type=_int_in(0),
        default=2020,
        metavar="N",
        help="seed of KID's subsets (torch-fidelity's); default: 2020",
    )
    score.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: every number --metrics asks for (fid, sfid, inception_score, inception_score_std,"
        ' precision, recall, kid, kid_std), "n_a", "n_b" (images used; for a statistics file its count or null), '
        '"found_a", "found_b" (image files found; null for statistics), "compat", "feature_dim", "processes", '
        '"seconds"',
    )
    score.set_defaults(command=score_command)
    stats = commands.add_parser(
        "stats", parents=[common], epilog=EPILOG, formatter_class=formatter, help="save a folder's statistics"
    )
    stats.add_argument("folder", metavar="FOLDER", help="image folder or .npz sample batch (arr_0)")
    stats.add_argument("-o", "--output", required=True, metavar="OUT.npz", help="statistics file to write")
    stats.set_defaults(command=stats_command, metrics=["fid"])
    return parser


def score_command(args: argparse.Namespace) -> None:
    """Print the FID between ``args.a`` and ``args.b`` (a float), the ``--metrics`` table, or one JSON object."""
    start = time.perf_counter()
    for text in (args.a, args.b):
        _is_folder(text)  # both paths are checked before either is read
    needs_images = bool({"prc", "kid"} & set(args.metrics))  # an ADM reference batch is then read as its images
    a, b = _open_input(args.a, args, needs_images), _open_input(args.b, args, needs_images)
    if isinstance(a, FeatureStats) and isinstance(b, FeatureStats):
        values, compat, feature_dim, n_a, n_b = _score_statistics(args, a, b)
        extractor = a.extractor if a.extractor == b.extractor else ""
    else:
        # FID is symmetric: a statistics file on either side becomes the metric's fixed real side.
        swapped = isinstance(b, FeatureStats)
        (real_arg, real), (fake_arg, fake) = ((args.b, b), (args.a, a)) if swapped else ((args.a, a), (args.b, b))
        reference = real if isinstance(real, FeatureStats) else None
        if needs_images and reference is not None:
            raise InputError(f"--metrics prc and kid need images on both sides; {real_arg} holds statistics only")
        if "is" in args.metrics and swapped:
            raise InputError(
                f"--metrics is scores the images of B, and B ({args.b}) holds statistics; to score the images of "
                f"{args.a}, pass it as B"
            )
        if "kid" in args.metrics:
            smaller = min(_count(cast(_Images, side)) for side in (a, b))
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
        args.generated_images = _count(cast(_Images, fake))
        metric = _build_metric(args, _weights(args), reference, real_arg)
        if args.processes.rank == 0:
            _print_counts(("A", args.a, a), ("B", args.b, b))
        sides = [] if reference is not None else [(cast(_Images, real), real_arg, True)]
        used = _feed_sides(metric, [*sides, (cast(_Images, fake), fake_arg, False)], args)
        n_real = cast(FeatureStats, real).n if reference is not None else used[0]
        n_a, n_b = (used[-1], n_real) if swapped else (n_real, used[-1])
        values, compat, feature_dim = _computed(metric), metric.compat, metric.num_features
        extractor = metric.extractor_id
    if args.processes.rank != 0:
        return
    if args.json:
        found_a, found_b = (_found(side) for side in (a, b))
        counts = {"n_a": n_a, "n_b": n_b, "found_a": found_a, "found_b": found_b}
        about = {"compat": compat, "extractor": extractor or None, "feature_dim": feature_dim}
        about["processes"] = args.processes.world
        print(json.dumps({**values, **counts, **about, "seconds": round(time.perf_counter() - start, 3)}))
        return
    network = extractor or f"{feature_dim}-d features of an unrecorded network"
    print(f"{PROG}: definition: compat={compat} ({REPRODUCES[compat]}), {network}", file=sys.stderr)
    if args.metrics == ["fid"]:
        print(values["fid"])
    else:
        print(_table(values, args.metrics))


def _score_statistics(
    args: argparse.Namespace, a: FeatureStats, b: FeatureStats
) -> tuple[dict[str, float], str, int, int | None, int | None]:
    """FID from two statistics files alone: values, compat, feature dimension and both counts."""
    if args.metrics != ["fid"]:
        raise InputError(f"--metrics {','.join(args.metrics)} needs images; {args.a} and {args.b} are statistics")
    try:
        a.check_compatible(b, args.a, args.b)
    except StatsMismatchError as err:
        raise InputError(err) from err
    try:
        fid = float(frechet_distance(a.mean, a.covariance, b.mean, b.covariance))
    except ValueError as err:  # e.g. a covariance that is not positive semi-definite: name the file, not the argument
        message = str(err).replace("sigma1", f"the sigma of {args.a}").replace("sigma2", f"the sigma of {args.b}")
        raise InputError(message) from err
    if args.processes.rank == 0:
        _print_counts(("A", args.a, a), ("B", args.b, b))
    return {"fid": fid}, a.compat, a.feature_dim, a.n, b.n


def _computed(metric: _Metric) -> dict[str, float]:
    """The metric's numbers as floats (a collective call under many processes)."""
    try:
        result = metric.compute()
    except ValueError as err:  # e.g. a KID subset larger than a side
        raise InputError(err) from err
    return {k: float(v) for k, v in result.items()} if isinstance(result, dict) else {"fid": float(result)}


def _table(values: dict[str, float], metrics: list[str]) -> str:
    """The asked-for numbers, one per line, in ``_TABLE_ROWS``' order, a standard deviation after "+-"."""
    lines = []
    for name, label, key in _TABLE_ROWS:
        if name in metrics:
            std = values.get(f"{key}_std")  # 0 for one Inception Score split or KID over all pairs: no +- then
            lines.append(f"{label:<16}{values[key]:.6g}" + (f" +- {std:.2g}" if std else ""))
    return "\n".join(lines)


def _metric_names(text: str) -> list[str]:
    """An argparse type: comma-separated ``--metrics`` names, returned in the table's order."""
    names = {name.strip().lower() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(METRICS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected names from {', '.join(METRICS)}, got {text!r}")
    return [name for name in METRICS if name in names]


def stats_command(args: argparse.Namespace) -> None:
    """Write the statistics of the images in ``args.folder`` to ``args.output`` (``.npz``)."""
    output = Path(args.output)
    _check_writable(output)
    if not _is_folder(args.folder) and output.exists() and output.samefile(args.folder):
        raise InputError(f"the output file {output} is the input {args.folder}: writing it would destroy the input")
    images = _open_input(args.folder, args)
    if isinstance(images, FeatureStats):
        raise InputError(
            f"expected an image folder or a sample batch (.npz with arr_0), got the statistics file {args.folder}"
        )
    metric = _build_metric(args, _weights(args), None, None)
    if args.processes.rank == 0:
        _print_counts(("", args.folder, images))
    (n,) = _feed_sides(metric, [(images, args.folder, True)], args)
    try:
        metric.save_real_stats(output)  # under many processes: synced on all, written by rank 0
    except ValueError as err:  # the folder changed while the images were processed
        raise InputError(err) from err
    except OSError as err:  # e.g. the disk filled up
        raise InputError(f"cannot write {output}: {err.strerror or err}") from err
    if args.processes.rank == 0:
        print(f"{output}: {n} images, {metric.extractor_id}, compat={metric.compat}")


def _check_writable(output: Path) -> None:
    """Raise ``InputError`` unless ``output`` ends in .npz and ``FeatureStats.save`` could write it."""
    if output.suffix.lower() != ".npz":
        raise InputError(f"the output file must end in .npz (as `{PROG} score` expects), got {output}")
    try:
        check_writable(output)
    except ValueError as err:
        raise InputError(err) from err


def _is_folder(text: str) -> bool:
    """True for a folder, False for a ``.npz`` file or an EDM2 ``.pkl``; ``InputError`` for anything else."""
    path = Path(text)
    if path.is_dir():
        return True
    if not path.exists():
        raise InputError(f"{text} does not exist (expected an image folder, a .npz file or an EDM2 .pkl)")
    if path.suffix.lower() not in (".npz", ".pkl"):
        raise InputError(f"{text} is neither a folder of images, a .npz file nor an EDM2 .pkl")
    return False


def _open_input(text: str, args: argparse.Namespace, images: bool = False) -> _Side:
    """An image folder with every header read (see ``_open_folder``); an ``.npz`` sample batch (``arr_0``
    images and no ``mu``, see ``fid_metric._files.sample_batch``) with its header checked; or a loaded ``.npz``
    statistics file. An ADM reference batch, which holds both, is read as its statistics, as ADM's evaluator
    reads it for FID, unless ``images`` (precision/recall and KID need the features, which ADM's evaluator
    also computes from its ``arr_0``)."""
    if _is_folder(text):
        return _open_folder(text, args)
    try:
        if text.lower().endswith(".pkl"):  # EDM2's reference statistics: their FID entry
            stated = args.compat if args.compat_stated else None
            return FeatureStats.load(text, compat=stated, key="fid")
        if holds_images(text, also_statistics=images):
            batch = SampleBatch(text)
            if batch.n < 2:
                raise InputError(f"{text} holds {batch.n} image(s) in arr_0; FID needs at least 2")
            if not holds_images(text) and args.processes.rank == 0:  # an ADM reference batch: mu beside arr_0
                print(
                    f"{PROG}: note: {text} holds images and statistics (an ADM reference batch); --metrics prc/kid "
                    "need its images, so every number, FID included, comes from them, not from its stored mu/sigma",
                    file=sys.stderr,
                )
            return batch
        stats = FeatureStats.load(text, compat=args.compat if args.compat_stated else None)
    except ValueError as err:
        raise InputError(err) from err
    if not stats.compat:
        raise InputError(
            f"{text} does not record which definition of FID it holds (pytorch-fid --save-stats files and bare "
            "mu/sigma files do not): say it with --compat, e.g. --compat pytorch-fid for a pytorch-fid file"
        )
    return stats


def _open_folder(text: str, args: argparse.Namespace) -> _Folder:
    """The folder's image files whose headers can be read, at least 2; with ``--skip-bad-images`` the others
    are named in one warning each, else the first ends the run."""
    try:
        files = list_images(text)
    except OSError as err:
        raise InputError(f"cannot list folder {err.filename or text}: {err.strerror or err}") from err
    if len(files) < 2:
        raise InputError(
            f"{text} holds {len(files)} image file(s) ({', '.join(IMAGE_EXTENSIONS)}, searched recursively); "
            "FID needs at least 2"
        )
    bad = _bad_headers(files, text, args)
    if bad and not args.skip_bad_images:
        more = f" (and {len(bad) - 1:,} more in {text})" if len(bad) > 1 else ""
        raise InputError(
            f"cannot read image {bad[0].path}: {bad[0].error}{more}; pass --skip-bad-images to leave such files out"
        )
    for item in bad:
        print(f"{PROG}: warning: skipping {item.path}: {item.error}", file=sys.stderr)
    unreadable = {item.path for item in bad}
    readable = [path for path in files if str(path) not in unreadable]
    if len(readable) < 2:
        raise InputError(f"{text} holds {len(readable)} readable image(s); FID needs at least 2")
    return _Folder(readable, len(files))


def _bad_headers(files: list[Path], label: str, args: argparse.Namespace) -> list[BadImage]:
    """The files whose header cannot be read, in order; read by ``--workers`` threads (file reads release the
    GIL, and a network file system answers many requests at once), with a transient bar on a terminal."""
    progress = tqdm(
        total=len(files),
        desc=f"{label} (headers)",
        unit="img",
        file=sys.stderr,
        leave=False,
        disable=True if args.no_progress else None,
    )
    with ThreadPoolExecutor(max(1, args.workers)) as pool, progress:
        bad = []
        for item in pool.map(check_header, files):
            progress.update()
            if item is not None:
                bad.append(item)
    return bad


def _print_counts(*sides: tuple[str, str, _Side]) -> None:
    """One line per side on stderr, e.g. "A: 1,234 images in real/", once every check has passed."""
    for label, text, side in sides:
        if isinstance(side, FeatureStats) and side.n is None:
            line = f"statistics (mean and covariance only) in {text}"
        elif isinstance(side, FeatureStats):
            line = f"statistics of {side.n:,} images in {text}"
        elif isinstance(side, SampleBatch):
            line = f"{side.n:,} images of {side.height} x {side.width} in {text} (arr_0)"
        else:
            skipped = side.found - len(side.files)
            line = f"{len(side.files):,} images in {text}"
            line += f" ({skipped:,} unreadable file{'s' if skipped > 1 else ''} skipped)" if skipped else ""
        print(f"{label}: {line}" if label else line, file=sys.stderr)


def _weights(args: argparse.Namespace) -> Path:
    """The Inception weights file: ``--weights``, else the library's chain (which may download it)."""
    try:
        return resolve(args.weights)
    except WeightsUnavailableError as err:
        # The library's message speaks of its keyword argument; this one speaks of the command's option.
        reason = f"downloading failed: {err.__cause__}" if err.__cause__ is not None else str(err).rstrip(".")
        raise WeightsUnavailableError(
            f"could not get the Inception weights ({reason}); pass --weights PATH to a copy of "
            f"{INCEPTION.name} ({INCEPTION.url}), or set {INCEPTION.env_path}=PATH"
        ) from err


def _build_metric(
    args: argparse.Namespace, weights_path: Path, reference: FeatureStats | None, reference_arg: str | None
) -> _Metric:
    """The metric for ``args`` (``InceptionMetrics`` when ``--metrics`` asks for more than FID), with
    ``reference`` as its fixed real side when given."""
    settings = {
        "feature_extractor_weights_path": weights_path,
        "compat": args.compat,
        "real_stats": reference,
        "process_group": args.processes.group,
    }
    metrics = args.metrics
    try:
        if metrics == ["fid"]:
            metric: _Metric = FrechetInceptionDistance(args.feature, **settings)
        else:
            metric = InceptionMetrics(
                feature=args.feature,
                sfid="sfid" in metrics,
                inception_score="is" in metrics,
                precision_recall="prc" in metrics,
                kid="kid" in metrics,
                kid_subsets=args.kid_subsets,
                kid_subset_size=args.kid_subset_size,
                kid_seed=args.kid_seed,
                splits=-(-args.generated_images // args.is_split_size),
                split_size=args.is_split_size,
                **settings,
            )
    except StatsMismatchError as err:
        assert reference is not None  # only a reference can mismatch
        made_with = f"feature_dim={reference.feature_dim}, compat={reference.compat or 'unknown'}"
        raise InputError(
            f"{reference_arg} does not match the options ({err}); it was made with {made_with}: pass the same "
            "--feature, --compat and --weights"
        ) from err
    except RuntimeError as err:  # a weights file that is not the Inception state dict
        raise InputError(err) from err
    except ValueError as err:  # e.g. --metrics sfid with statistics that hold no mu_s
        raise InputError(f"{reference_arg}: {err}" if reference_arg else err) from err
    return metric.to(args.device)


_Images = Union[_Folder, SampleBatch]


def _count(side: _Images) -> int:
    """How many images a folder (readable ones) or a sample batch holds."""
    return len(side.files) if isinstance(side, _Folder) else side.n


def _found(side: _Side) -> int | None:
    """How many images a side offered (a folder: image files, readable or not); None for statistics."""
    return side.found if isinstance(side, _Folder) else side.n if isinstance(side, SampleBatch) else None


def _feed_sides(
    metric: _Metric,
    sides: list[tuple[_Images, str, bool]],
    args: argparse.Namespace,
) -> list[int]:
    """Update ``metric`` with this process's share of each ``(images, label, real)`` side; return how many images
    of each were used over all processes. A process that fails stops every process (``Processes.agree``).

    Raises:
        InputError: an image could not be decoded (this or another process), or a side has fewer than 2 images.
    """
    error, used = None, [0] * len(sides)
    try:
        used = [_feed_side(metric, side, label, real, args) for side, label, real in sides]
    except InputError as err:
        error = err
    failed, totals = args.processes.agree(error is not None, used)
    if error is not None:
        raise error
    if failed:
        raise InputError("another process stopped with an error (see its message above)")
    for total, (_, label, _) in zip(totals, sides):
        if total < 2:
            raise InputError(f"{label} holds {total} readable image(s); FID needs at least 2")
    return totals


def _feed_side(metric: _Metric, side: _Images, label: str, real: bool, args: argparse.Namespace) -> int:
    """Update ``metric`` with this process's share of a folder or a sample batch; return how many were used."""
    processes: Processes = args.processes
    if isinstance(side, _Folder):
        return _feed(metric, processes.share(side.files), label, real, args)
    used = 0
    mine = len(range(processes.rank, side.n, processes.world))
    with tqdm(total=mine, desc=label, unit="img", file=sys.stderr, disable=args.no_progress) as progress:
        try:
            for images in side.batches(args.batch_size, processes.world, processes.rank):
                metric.update(images, real=real)
                progress.update(len(images))
                used += len(images)
        except ValueError as err:  # the file was damaged or changed while it was read
            raise InputError(err) from err
    return used


def _feed(metric: _Metric, files: list[Path], label: str, real: bool, args: argparse.Namespace) -> int:
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
                        f"cannot read image {item.path}: {item.error}; pass --skip-bad-images to leave such files out"
                    )
            for group in same_size_batches(images):
                metric.update(group, real=real)
            used += len(images)
            progress.update(len(batch))
    if skipped:
        print(
            f"{PROG}: warning: skipped {skipped} file(s) in {label} whose pixel data failed to decode", file=sys.stderr
        )
    return used


def _device(text: str) -> torch.device:
    """An argparse type: a device on which a tensor can be made, computed on and copied back."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (expected e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"cannot use {text!r}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise argparse.ArgumentTypeError(
            f"cannot use {text!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    try:
        torch.ones(1, device=device).add_(1).cpu()
    except Exception as err:  # each backend fails its own way: RuntimeError, NotImplementedError (meta), ...
        raise argparse.ArgumentTypeError(f"cannot use {text!r}: {_one_line(err).split('. ')[0]}") from err
    return device


def _seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _existing_file(text: str) -> Path:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    return Path(text)


def _int_in(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a decimal integer from ``minimum`` (>= 0) to ``maximum`` (None: no bound)."""
    expected = f"an integer from {minimum} to {maximum}" if maximum is not None else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        value = int(text) if text.isascii() and text.isdigit() else -1
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def _one_line(err: BaseException | str) -> str:
    """A message with its whitespace, line breaks included, collapsed; an exception's type name if it has none."""
    return " ".join(str(err).split()) or type(err).__name__


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
    tqdm.write(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr)
