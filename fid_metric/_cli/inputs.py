"""The command's inputs: image folders (every header read up front), ``.npz`` sample batches, statistics files.

Everything here runs before the first image reaches the network, so that bad input ends the run early with
one line (:class:`InputError`, exit code 2): a missing path, a folder with fewer than 2 readable images, an
unreadable image unless ``--skip-bad-images``, a corrupt or unrecorded statistics file.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, Union

from tqdm import tqdm

from fid_metric._cli.parser import PROG
from fid_metric._features.inception import INCEPTION_ID
from fid_metric._files.image_folder import IMAGE_EXTENSIONS, BadImage, check_header, list_images
from fid_metric._files.sample_batch import SampleBatch, holds_images
from fid_metric._files.stats import FeatureStats


class InputError(Exception):
    """Bad input: reported as one line on stderr, exit code 2."""


class Folder(NamedTuple):
    """An image folder: its files whose headers were read (sorted), and how many image files it holds."""

    files: list[Path]
    found: int


Images = Union[Folder, SampleBatch]
Side = Union[Folder, SampleBatch, FeatureStats]


def is_folder(text: str) -> bool:
    """True for a folder, False for a ``.npz`` file or an EDM2 ``.pkl``; ``InputError`` for anything else."""
    path = Path(text)
    if path.is_dir():
        return True
    if not path.exists():
        raise InputError(f"{text} does not exist (expected an image folder, a .npz file or an EDM2 .pkl)")
    if path.suffix.lower() not in (".npz", ".pkl"):
        raise InputError(f"{text} is neither a folder of images, a .npz file nor an EDM2 .pkl")
    return False


def open_input(text: str, args: argparse.Namespace, images: bool = False) -> Side:
    """An image folder with every header read (see ``open_folder``); an ``.npz`` sample batch (``arr_0``
    images and no ``mu``, see ``fid_metric._files.sample_batch``) with its header checked; or a loaded ``.npz``
    statistics file. An ADM reference batch, which holds both, is read as its statistics, as ADM's evaluator
    reads it for FID, unless ``images`` (precision/recall and KID need the features, which ADM's evaluator
    also computes from its ``arr_0``)."""
    if is_folder(text):
        return open_folder(text, args)
    try:
        if text.lower().endswith(".pkl"):  # EDM2's reference statistics: their FID entry
            stated = args.compat if args.compat_stated else None
            return FeatureStats.load(text, compat=stated, key="fid")
        if holds_images(text, also_statistics=images):
            return _open_sample_batch(text, args)
        stats = FeatureStats.load(text, compat=args.compat if args.compat_stated else None)
    except ValueError as err:
        raise InputError(err) from err
    if not stats.compat and (not stats.extractor or stats.extractor.startswith(INCEPTION_ID)):
        raise InputError(
            f"{text} does not record which definition of FID it holds (pytorch-fid --save-stats files and bare "
            "mu/sigma files do not): say it with --compat, e.g. --compat pytorch-fid for a pytorch-fid file"
        )
    return stats


def _open_sample_batch(text: str, args: argparse.Namespace) -> SampleBatch:
    """A sample batch of at least 2 images; a note on stderr when it is an ADM reference batch read for its images.

    Raises:
        ValueError: the file is not a readable ``(N, H, W, 3)`` uint8 ``arr_0``.
    """
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


def open_folder(text: str, args: argparse.Namespace) -> Folder:
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
    return Folder(readable, len(files))


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


def print_counts(*sides: tuple[str, str, Side]) -> None:
    """One line per side on stderr, e.g. "A: 1,234 images in real/", once every check has passed."""
    for label, text, side in sides:
        if isinstance(side, FeatureStats) and side.n is None:
            line = f"statistics (mean and covariance only) in {text}"
        elif isinstance(side, FeatureStats):
            groups = f" in {len(side.groups[0])} groups" if side.groups is not None else ""
            line = f"statistics of {side.n:,} images{groups} in {text}"
        elif isinstance(side, SampleBatch):
            line = f"{side.n:,} images of {side.height} x {side.width} in {text} (arr_0)"
        else:
            skipped = side.found - len(side.files)
            line = f"{len(side.files):,} images in {text}"
            line += f" ({skipped:,} unreadable file{'s' if skipped > 1 else ''} skipped)" if skipped else ""
        print(f"{label}: {line}" if label else line, file=sys.stderr)


def count(side: Images) -> int:
    """How many images a folder (readable ones) or a sample batch holds."""
    return len(side.files) if isinstance(side, Folder) else side.n


def found(side: Side) -> int | None:
    """How many images a side offered (a folder: image files, readable or not); None for statistics."""
    return side.found if isinstance(side, Folder) else side.n if isinstance(side, SampleBatch) else None
