"""The metric a command runs: its weights, its construction from the options, and this process's share of the
images fed to it (folders decoded in DataLoader workers, sample batches read a batch at a time).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Union

from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from fid_metric._cli.inputs import Folder, Images, InputError
from fid_metric._cli.parser import CLIP_FEATURE, PROG
from fid_metric._cli.processes import Processes
from fid_metric._features.clip import CLIPFeatures
from fid_metric._features.weights import INCEPTION, WeightsUnavailableError, resolve
from fid_metric._files.image_folder import BadImage, ImageFiles, collate, same_size_batches
from fid_metric._files.stats import FeatureStats, StatsMismatchError
from fid_metric._metrics.cmmd import CMMD
from fid_metric._metrics.fid import FrechetInceptionDistance
from fid_metric._metrics.inception_metrics import InceptionMetrics

Metric = Union[FrechetInceptionDistance, InceptionMetrics]


def weights(args: argparse.Namespace) -> Path | None:
    """The Inception weights file: ``--weights``, else the library's chain (which may download it); None for
    ``--feature clip`` (``CLIPFeatures`` finds its own)."""
    if args.feature == CLIP_FEATURE:
        return None
    try:
        return resolve(args.weights)
    except WeightsUnavailableError as err:
        # The library's message speaks of its keyword argument; this one speaks of the command's option.
        reason = f"downloading failed: {err.__cause__}" if err.__cause__ is not None else str(err).rstrip(".")
        raise WeightsUnavailableError(
            f"could not get the Inception weights ({reason}); pass --weights PATH to a copy of "
            f"{INCEPTION.name} ({INCEPTION.url}), or set {INCEPTION.env_path}=PATH"
        ) from err


def build_metric(
    args: argparse.Namespace, weights_path: Path | None, reference: FeatureStats | None, reference_arg: str | None
) -> Metric:
    """The metric for ``args`` (``InceptionMetrics`` when ``--metrics`` asks for more than FID, CMMD aside, or
    ``--groups`` for standard errors), with ``reference`` as its fixed real side when given."""
    settings = {
        "feature_extractor_weights_path": weights_path,
        "compat": args.compat,
        "real_stats": reference,
        "process_group": args.processes.group,
    }
    metrics, groups = [name for name in args.metrics if name != "cmmd"], getattr(args, "groups", None)
    feature = _clip_features("vit-b-32", args.weights, "--weights") if args.feature == CLIP_FEATURE else args.feature
    try:
        if metrics == ["fid"] and not groups:
            metric: Metric = FrechetInceptionDistance(feature, **settings)
        else:
            metric = InceptionMetrics(
                feature=feature,
                sfid="sfid" in metrics,
                inception_score="is" in metrics,
                precision_recall="prc" in metrics,
                density_coverage="dc" in metrics,
                dc_neighborhood=args.dc_neighborhood,
                kid="kid" in metrics,
                kid_subsets=args.kid_subsets,
                kid_subset_size=args.kid_subset_size,
                kid_seed=args.kid_seed,
                splits=-(-args.generated_images // args.is_split_size) if "is" in metrics else 1,
                split_size=args.is_split_size,
                fid_groups=groups or 0,
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


def build_cmmd(args: argparse.Namespace) -> CMMD:
    """CMMD on CMMD's CLIP ViT-L/14@336px embeddings (weights: ``--cmmd-weights``, else the library's chain)."""
    feature = _clip_features("vit-l-14-336", args.cmmd_weights, "--cmmd-weights")
    return CMMD(feature, process_group=args.processes.group).to(args.device)


def _clip_features(model: str, path: Path | None, option: str) -> CLIPFeatures:
    """``CLIPFeatures(model, path)``; a missing file names ``option``, a wrong one or a missing open_clip is bad
    input."""
    try:
        return CLIPFeatures(model, path)
    except WeightsUnavailableError as err:
        raise WeightsUnavailableError(f"{str(err).rstrip('.')}; or pass {option} PATH") from err
    except (RuntimeError, ImportError) as err:  # not that network's weights; open_clip missing
        raise InputError(err) from err


class Together:
    """Metrics fed the same images (e.g. ``InceptionMetrics`` and ``CMMD``): one decoding, each one's update."""

    def __init__(self, *metrics: Metric | CMMD) -> None:
        self.metrics = metrics

    def update(self, imgs: Tensor, real: bool) -> None:
        for metric in self.metrics:
            metric.update(imgs, real=real)


def feed_sides(
    metric: Metric | CMMD | Together, sides: list[tuple[Images, str, bool]], args: argparse.Namespace
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


def _feed_side(metric: Metric | CMMD | Together, side: Images, label: str, real: bool, args: argparse.Namespace) -> int:
    """Update ``metric`` with this process's share of a folder or a sample batch; return how many were used."""
    processes: Processes = args.processes
    if isinstance(side, Folder):
        return _feed_files(metric, processes.share(side.files), label, real, args)
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


def _feed_files(
    metric: Metric | CMMD | Together, files: list[Path], label: str, real: bool, args: argparse.Namespace
) -> int:
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
