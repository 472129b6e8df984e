"""``InceptionScore``: torchmetrics' ``InceptionScore`` signature over this package's exact Inception Score.

For code written for ``torchmetrics.image.inception.InceptionScore``: ``InceptionScore(feature="logits_unbiased",
splits=10, normalize=False)``, ``update(imgs)`` with generated images only, ``compute()`` returning the tuple
``(mean, std)``. The score is ``InceptionMetrics``' (``fid_metric._states.split_scores``): per-split sums of
``p log p`` and ``p`` from the 1008 logits without bias, in float64, one all_reduce under DDP, no features kept.
Two things differ from torchmetrics on purpose: the image at sampler position j belongs to split ``j % splits``
(torchmetrics shuffles with the global RNG, so its value changes from run to run and with the number of
processes; ``split_size`` and ``split_seed`` give ADM's and torch-fidelity's reproducible splits instead), and
``std`` is the population standard deviation over splits (``np.std``, as torch-fidelity; torchmetrics' is
``torch.std``, with Bessel's correction). With ``splits=1`` the mean equals torch-fidelity's ISC.
"""

from __future__ import annotations

import os
from typing import Any, cast

from torch import Tensor, nn

from fid_metric._features.extractor import Extractor
from fid_metric._features.preprocess import resolve_compat
from fid_metric._metrics.base import FeatureSumsMetric
from fid_metric._states.split_scores import split_scores

_TORCHMETRICS_FEATURES = ("logits_unbiased", 64, 192, 768, 2048)


class InceptionScore(FeatureSumsMetric):
    """The Inception Score of generated images, with torchmetrics' ``InceptionScore`` interface.

    Args:
        feature: ``"logits_unbiased"``, the only one the Inception Score is defined on (torchmetrics also
            accepts a pool layer or a module, whose outputs it treats as logits; that is refused here).
        splits: number of splits (10, as torchmetrics). By default the image at sampler position j is in split
            ``j % splits``; ``split_size`` and ``split_seed`` give ADM's and torch-fidelity's splits, as in
            ``InceptionMetrics``.
        normalize: images are floats in [0, 1] when True, uint8 in [0, 255] when False.
        split_size: ADM's consecutive splits of this many images, as in ``InceptionMetrics``.
        split_seed: torch-fidelity's shuffled splits with this seed, as in ``InceptionMetrics``.
        compat: the preprocessing, as for ``FrechetInceptionDistance``.
        feature_extractor_weights_path: as for ``FrechetInceptionDistance``.
        dataset_size: as for ``FrechetInceptionDistance``.
        arithmetic: as for ``FrechetInceptionDistance``.
        kwargs: torchmetrics' ``Metric`` arguments (``sync_on_compute``, ``process_group``, ...).

    The first three arguments are torchmetrics' and keep its positions; the others are keyword-only.

    Raises:
        ValueError: ``feature`` is another value that torchmetrics accepts, or one it does not; ``splits`` is not
            a positive int; ``real_stats`` or ``reset_real_features`` is given (there is no real side).
        TypeError: ``feature`` is not a string, an int or a module.
    """

    higher_is_better = True
    plot_lower_bound = 1.0

    def __init__(
        self,
        feature: str | int | nn.Module = "logits_unbiased",
        splits: int = 10,
        normalize: bool = False,
        *,
        split_size: int | None = None,
        split_seed: int | None = None,
        compat: str | None = None,
        feature_extractor_weights_path: str | os.PathLike | None = None,
        dataset_size: int | None = None,
        arithmetic: str = "exact",
        **kwargs: Any,
    ) -> None:
        if not isinstance(feature, (str, int, nn.Module)):
            raise TypeError(f"Got unknown input to argument `feature`: expected 'logits_unbiased', got {feature!r}.")
        if feature not in _TORCHMETRICS_FEATURES:
            raise ValueError(
                f"Integer input to argument `feature` must be one of {_TORCHMETRICS_FEATURES}, but got {feature!r}."
            )
        if feature != "logits_unbiased":
            raise ValueError(
                f"fid_metric's InceptionScore is computed from the Inception logits (feature='logits_unbiased'), "
                f"got feature={feature!r}: the score of pool features or another network's outputs is not the "
                "Inception Score."
            )
        scores = split_scores(splits, split_size, split_seed)
        real_side = sorted(set(kwargs) & {"real_stats", "reset_real_features"})
        if real_side:
            raise ValueError(
                f"The Inception Score uses generated images only: {', '.join(real_side)} would be ignored. Use "
                "FrechetInceptionDistance or InceptionMetrics for a comparison with real images."
            )
        compat = resolve_compat(compat, None)
        extractor = Extractor.inception("logits_unbiased", feature_extractor_weights_path, compat)
        super().__init__(extractor, normalize=normalize, dataset_size=dataset_size, arithmetic=arithmetic, **kwargs)
        self.compat, self.splits = compat, splits
        self._scores = scores
        self._register(self._scores)

    def update(self, imgs: Tensor, real: bool = False) -> None:
        """Add generated images (``(N, 3 or 1, H, W)``, as ``FrechetInceptionDistance.update`` takes them)."""
        if real is not False:
            raise ValueError("The Inception Score uses generated images only: call update(imgs).")
        super().update(imgs, real=False)

    def compute(self) -> tuple[Tensor, Tensor]:
        """``(mean, std)`` over the splits, 0-d float64 tensors (all processes under DDP).

        Raises:
            RuntimeError: a split has no image.
        """
        self._quota.warn_if_not_covered({"fake": int(cast(Tensor, self.is_num_samples).sum())})
        return self._scores.score(self)
