"""``FrechetMetric``: what the metrics that compare generated with real images share (``FrechetInceptionDistance``,
``InceptionMetrics``): the FID's Gaussian sums, a real side that is accumulated or fixed (``real_stats=``), the
Fréchet distance between the two, and the statistics as ``FeatureStats``."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
from torch import Tensor, nn

from fid_metric._features.extractor import Extractor
from fid_metric._features.preprocess import resolve_compat
from fid_metric._files.stats import FeatureStats, StatsMismatchError
from fid_metric._functional.distance import CovarianceFactor, frechet_distance
from fid_metric._metrics.base import FeatureSumsMetric
from fid_metric._metrics.reference import FixedReference
from fid_metric._states.accumulator import SIDE_NAMES
from fid_metric._states.gaussian_sums import GaussianSums, GroupSums
from fid_metric._warnings import warn_caller


class FrechetMetric(FeatureSumsMetric):
    """The FID's states and real side; see ``FrechetInceptionDistance`` for the arguments."""

    higher_is_better = False

    def __init__(
        self,
        feature: int | nn.Module = 2048,
        reset_real_features: bool = True,
        normalize: bool = False,
        input_img_size: tuple[int, int, int] = (3, 299, 299),
        feature_extractor_weights_path: str | os.PathLike | None = None,
        antialias: bool | None = None,
        *,
        compat: str | None = None,
        real_stats: str | os.PathLike | FeatureStats | None = None,
        dataset_size: int | None = None,
        arithmetic: str = "exact",
        **kwargs: Any,
    ) -> None:
        compat = resolve_compat(compat, antialias)
        if isinstance(feature, nn.Module):
            extractor = Extractor.custom(feature, normalize, input_img_size)
        elif isinstance(feature, int) and not isinstance(feature, bool):
            extractor = Extractor.inception(feature, feature_extractor_weights_path, compat)
        else:
            raise TypeError(
                f"Got unknown input to argument `feature`: expected an int (an Inception layer) or an nn.Module, "
                f"got {type(feature)}."
            )
        super().__init__(
            extractor,
            normalize=normalize,
            reset_real_features=reset_real_features,
            dataset_size=dataset_size,
            arithmetic=arithmetic,
            **kwargs,
        )
        self.compat = compat
        self._reference = None if real_stats is None else self._fixed_reference(real_stats)
        self._fid_sums = GaussianSums("features", extractor.feature_output, extractor.num_features)
        self._register(self._fid_sums)

    def _fixed_reference(self, real_stats: str | os.PathLike | FeatureStats) -> FixedReference:
        """``real_stats`` as the fixed real side, checked to be of this metric's features and definition.

        Raises:
            StatsMismatchError: statistics of another feature dimension, extractor, weights, compat or arithmetic,
                or that do not say which definition they are where this metric's features have one.
        """
        stats = real_stats if isinstance(real_stats, FeatureStats) else FeatureStats.load(real_stats)
        what = "(a FeatureStats)" if real_stats is stats else f"({real_stats})"
        stats.check_compatible(self.identity(with_hash=bool(stats.weights_sha256)), "real_stats", "this metric")
        if not self._extractor.is_custom and not stats.compat:
            raise StatsMismatchError(_UNKNOWN_DEFINITION.format(what=what, compat=self.compat))
        if hasattr(self._extractor.module, "extractor_id") and not stats.extractor:  # e.g. DINOv2Features
            raise StatsMismatchError(
                f"real_stats {what} does not record which feature network made it, and this metric's is "
                f"{self.extractor_id!r} (another preprocessing of the same network is another number): say it with "
                f"FeatureStats.load(path, extractor={self.extractor_id!r}) if so."
            )
        return FixedReference(stats)

    def _keeps_real_states(self) -> bool:
        """A fixed reference is the real side: no real states are kept (nor saved) beside it."""
        return super()._keeps_real_states() and self.__dict__.get("_reference") is None

    def _update_fields(self) -> dict[str, object]:
        reference = self.__dict__.get("_reference")
        return {**super()._update_fields(), "real_stats": "" if reference is None else reference.fingerprint}

    @property
    def real_fingerprint(self) -> str:
        """SHA-256 of the real side this process holds: the fixed reference's, or the accumulated real sums'
        bytes. Two metrics compare generated images against the same reference exactly when theirs agree."""
        if self._reference is not None:
            return self._reference.fingerprint
        n, feature_sum, outer_sum = self._fid_sums.sums(self, "real")
        digest = hashlib.sha256()
        for tensor in (feature_sum, outer_sum):
            digest.update(tensor.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
        return f"{n}:{digest.hexdigest()}"

    def update(self, imgs: Tensor, real: bool) -> None:
        """Add a batch to the real or the generated statistics.

        Args:
            imgs: ``(N, 3, H, W)`` or ``(N, 1, H, W)`` images, uint8 in [0, 255] (``normalize=False``) or
                float in [0, 1] (``normalize=True``); any H, W; any device (moved to the metric's device).
            real: True for real images, False for generated ones.

        Raises:
            TypeError, ValueError: the batch is not what the metric expects (the message says what is), or the
                network gave NaN or infinite values for it; the states are then unchanged.
        """
        if real is True and self._reference is not None:
            raise ValueError(
                "This metric was built with fixed reference statistics (`real_stats=`), which are the real side; "
                "update(imgs, real=True) would be ignored. Feed only generated images (real=False)."
            )
        super().update(imgs, real)

    def _check_counts(self) -> None:
        """For each side the FID uses (generated only, with a fixed reference): raise below 2 images; warn below
        the feature dimension (the covariance is singular) or when not ``dataset_size``."""
        counts = {side: self._fid_sums.sums(self, side)[0] for side in ("real", "fake")}
        if self._reference is not None:
            del counts["real"]
        needed = " and ".join(f"2 {SIDE_NAMES[side]}" for side in counts)
        got = " and ".join(f"{n} {SIDE_NAMES[side]}" for side, n in counts.items())
        if min(counts.values()) < 2:
            both = "More than one sample is required for both the real and fake distributed to compute FID: "
            raise RuntimeError(
                f"{both if len(counts) == 2 else ''}FID needs at least {needed} images to estimate covariances; got "
                f"{got}. Call update(imgs, real=...) first."
            )
        if min(counts.values()) < self.num_features:
            warn_caller(
                f"FID from {got} images with {self.num_features}-dimensional features: fewer samples than "
                "dimensions makes the covariance singular, and FID is strongly biased. Use more images (FID is "
                "usually reported on 10k-50k) or a smaller `feature`."
            )
        self._quota.warn_if_not_covered(counts)

    def _real_side(self) -> tuple[Tensor, Tensor, CovarianceFactor]:
        """Real mean ``(d,)``, covariance ``(d, d)`` and its factor, float64: the fixed reference's (factor cached
        across epochs) or the accumulated statistics' (factored once per compute)."""
        if self._reference is not None:
            return self._reference.on(self._state_device)
        return self._fid_sums.factored(self, "real")

    def _fid(self, mu_real: Tensor, sigma_real: Tensor, factor: CovarianceFactor) -> Tensor:
        """FID of the accumulated generated statistics against the given real side."""
        mu_fake, sigma_fake = self._fid_sums.mean_and_covariance(self, "fake")
        return frechet_distance(mu_real, sigma_real, mu_fake, sigma_fake, sigma1_factor=factor)

    def statistics(self, real: bool) -> FeatureStats:
        """The accumulated real or generated statistics, over all processes under DDP, as ``FeatureStats``; the
        other Gaussian accumulators' mean and covariance ride along in ``extra`` (sFID's ``mu_s``, ``sigma_s``),
        and the generated side's ``fid_groups`` sums in ``groups`` (for ``fid_metric.compare`` on files).

        Under DDP this is a collective call: every process must make it.
        """
        side = "real" if real else "fake"
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self.sync_on_compute):
            n, feature_sum, outer_sum = self._fid_sums.sums(self, side)
            metadata = {**self._extractor.metadata(), "arithmetic": self.arithmetic}
            groups = [a.sums(self) for a in self._accumulators if isinstance(a, GroupSums) and a.of(self._fid_sums)]
            stats = FeatureStats.from_sums(
                n, feature_sum, outer_sum, **metadata, groups=None if real or not groups else groups[0]
            )
            for accumulator in self._accumulators:
                if isinstance(accumulator, GaussianSums) and accumulator.extra_names:
                    mean, covariance = accumulator.mean_and_covariance(self, side)
                    stats.extra.update(zip(accumulator.extra_names, (mean.cpu(), covariance.cpu())))
        return stats

    def save_real_stats(self, path: str | os.PathLike) -> None:
        """Write the accumulated real statistics to ``path`` (``.npz``, atomically), for ``real_stats=`` later.

        Under DDP every process must call it (the statistics are synced); rank 0 writes the file.
        """
        stats = self.statistics(real=True)
        if self._world_and_rank()[1] == 0:
            stats.save(path)


_UNKNOWN_DEFINITION = (
    "real_stats {what} does not record which definition of FID made it, and this metric is compat={compat!r}: "
    "statistics of another definition would give another number without a word. Say which it holds: "
    "FeatureStats.load(path, compat=...) with 'pytorch-fid' for pytorch-fid --save-stats files, 'clean-fid' or "
    "'tensorflow' for clean-fid's mode='clean' or 'legacy_tensorflow' files (named so, they say it themselves), "
    "or the compat= of FeatureStats.from_features / from_sums for statistics made in code; then pass that "
    "FeatureStats as real_stats."
)
