"""``CMMD``: CMMD (Jayasumana et al., CVPR 2024) as a torchmetrics Metric, exactly google-research's ``cmmd``.

    update(imgs): CLIP ViT-L/14@336px embeddings (``CLIPFeatures``) -> kept per side (``KeptFeatures``)
    sync:         one all_reduce of the counts, one all_gather of the embeddings per side
    compute():    the reference's MMD (``fid_metric._functional.cmmd``)

docs/metrics/cmmd.md gives the reference's pipeline step by step and what the tests hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from fid_metric._checks import checked_bool
from fid_metric._features.extractor import Extractor
from fid_metric._functional.cmmd import cmmd
from fid_metric._metrics.base import FeatureSumsMetric
from fid_metric._states.accumulator import SIDES, Accumulator, State, state
from fid_metric._states.kept_features import KeptFeatures


@dataclass(frozen=True)
class _ImageCounts(Accumulator):
    """Per side, ``{side}_features_num_samples`` int64: the images whose ``output`` a ``KeptFeatures`` keeps
    (what it checks its rows against), summed across processes."""

    output: str

    def defaults(self) -> dict[str, State]:
        return {f"{side}_features_num_samples": torch.tensor(0, dtype=torch.int64) for side in SIDES}

    def real_states(self) -> tuple[str, ...]:
        return ("real_features_num_samples",)

    def add(self, metric: Metric, side: str, outputs: dict[str, Tensor], positions: range) -> None:
        state(metric, f"{side}_features_num_samples").add_(outputs[self.output].shape[0])


class CMMD(FeatureSumsMetric):
    r"""CMMD: the squared MMD between the CLIP embeddings of real and generated images, exactly google-research's.

    The metric keeps each image's embedding (``real_features`` and ``fake_features``, list states, with their
    counts ``*_features_num_samples``); ``compute()`` returns google-research's ``distance.mmd`` of the two sets:
    ``1000 (mean k(x, x') + mean k(y, y') - 2 mean k(x, y))`` with the Gaussian kernel of bandwidth 10, over all
    pairs, in float64 (``fid_metric._functional.cmmd.cmmd``). Lower is better.

    Args:
        feature: the embedding network; default ``CLIPFeatures("vit-l-14-336")``, CMMD's CLIP ViT-L/14@336px
            embedding of the images as its ``compute_cmmd`` reads image files (weights: see ``CLIPFeatures``).
            Any ``nn.Module`` mapping a batch of images to ``(N, d)`` embeddings, which receives the images
            exactly as given to ``update``.
        normalize: False: images are uint8 in [0, 255]. True: floats in [0, 1] (``CLIPFeatures`` rounds them to
            uint8 as ``floor(255 x + 0.5)``, the 8-bit image a file would hold).
        reset_real_features: if False, ``reset()`` keeps the real embeddings, so the real images are fed once.
        input_img_size: ``(C, H, W)`` of the dummy image used to find a custom module's embedding dimension when
            it has no ``num_features`` attribute.
        dataset_size: N, the validation samples per side per epoch, for exactly-once counting under DDP (see
            ``FrechetInceptionDistance``).
        arithmetic: ``"exact"`` (default, float32 with autocast and TF32 off), ``"bf16"`` or ``"tf32"``, as for
            ``FrechetInceptionDistance``.
        features_on_cpu: keep the embeddings in host memory rather than on the metric's device
            (``N * d * 4`` bytes per side: 154 MB for 50,000 x 768).
        kwargs: torchmetrics ``Metric`` arguments (``sync_on_compute``, ``process_group``, ...).

    All arguments but ``feature`` are keyword-only.

    Raises:
        TypeError: ``feature`` is not an ``nn.Module``.
        ValueError: an argument is not of the expected kind (the message says which).
        ImportError, fid_metric.WeightsUnavailableError: the default feature's open_clip or weights are missing.

    Under DDP each process keeps its own images' embeddings; ``compute()`` sums the counts in the one all_reduce
    and gathers the embeddings with one all_gather per side, in the sampler's order, so every process returns the
    number one process computes from all the images. ``compute()`` is a collective: every process must call it.

    Example:
        With a custom embedding (no weights needed): the images' mean colour, 3 values.

        >>> import torch
        >>> from fid_metric import CMMD
        >>> class MeanColour(torch.nn.Module):
        ...     num_features = 3
        ...
        ...     def forward(self, x: torch.Tensor) -> torch.Tensor:
        ...         return x.float().mean((2, 3))
        >>> metric = CMMD(MeanColour())
        >>> g = torch.Generator().manual_seed(0)
        >>> real = torch.randint(0, 200, (20, 3, 8, 8), generator=g, dtype=torch.uint8)
        >>> fake = torch.randint(50, 250, (20, 3, 8, 8), generator=g, dtype=torch.uint8)
        >>> metric.update(real, real=True)
        >>> metric.update(fake, real=False)
        >>> from fid_metric._functional.cmmd import cmmd  # the distance of the kept embeddings
        >>> bool(metric.compute() == cmmd(MeanColour()(real).double(), MeanColour()(fake).double()))
        True
    """

    higher_is_better = False
    plot_lower_bound = 0.0

    def __init__(
        self,
        feature: nn.Module | None = None,
        *,
        normalize: bool = False,
        reset_real_features: bool = True,
        input_img_size: tuple[int, int, int] = (3, 336, 336),
        dataset_size: int | None = None,
        arithmetic: str = "exact",
        features_on_cpu: bool = False,
        **kwargs: Any,
    ) -> None:
        if feature is None:
            from fid_metric._features.clip import CLIPFeatures

            feature = CLIPFeatures("vit-l-14-336")
        elif not isinstance(feature, nn.Module):
            raise TypeError(f"`feature` must be an nn.Module mapping images to (N, d) embeddings, got {type(feature)}.")
        on_cpu = checked_bool("features_on_cpu", features_on_cpu)
        extractor = Extractor.custom(feature, checked_bool("normalize", normalize), input_img_size)
        super().__init__(
            extractor,
            normalize=normalize,
            reset_real_features=reset_real_features,
            dataset_size=dataset_size,
            arithmetic=arithmetic,
            **kwargs,
        )
        self._kept = KeptFeatures(extractor.feature_output, extractor.num_features, on_cpu=on_cpu)
        self._register(_ImageCounts(extractor.feature_output), self._kept)

    def compute(self) -> Tensor:
        """CMMD of the generated images' embeddings against the real ones' (all processes under DDP), a 0-d float64
        tensor.

        Raises:
            RuntimeError: no real or no generated image.
        """
        counts = {side: int(state(self, f"{side}_features_num_samples")) for side in SIDES}
        if min(counts.values()) < 1:
            raise RuntimeError(
                f"CMMD needs at least one real and one generated image; got {counts['real']} real and "
                f"{counts['fake']} generated. Call update(imgs, real=...) first."
            )
        self._quota.warn_if_not_covered(counts)
        return cmmd(self._kept.features(self, "real"), self._kept.features(self, "fake"))
