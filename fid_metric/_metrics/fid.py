"""``FrechetInceptionDistance``: the torchmetrics Metric, drop-in for torchmetrics' FID, exact by default."""

from __future__ import annotations

from torch import Tensor

from fid_metric._metrics.frechet import FrechetMetric


class FrechetInceptionDistance(FrechetMetric):
    r"""Fréchet Inception Distance, exact by default, drop-in for ``torchmetrics.image.fid.FrechetInceptionDistance``.

    For real and generated images the metric keeps three states, all summed across batches and processes:
    ``*_features_sum`` ``(d,)`` float64, ``*_features_cov_sum`` (the outer-product sum) ``(d, d)`` float64 and
    ``*_features_num_samples`` int64. ``compute()`` turns them into means and covariances and returns the
    Fréchet distance as a 0-d float64 tensor.

    Args:
        feature: 64, 192, 768 or 2048 (the Inception feature layer), or an ``nn.Module`` mapping a batch of
            images to ``(N, d)`` features. A custom module receives the images exactly as given to ``update``
            (as in torchmetrics); ``compat`` and the image checks apply to the Inception network only.
        reset_real_features: if False, ``reset()`` keeps the real statistics, so the real images are fed once.
        normalize: False: images are uint8 in [0, 255]. True: floats in [0, 1], rounded to uint8 as
            ``floor(255 x + 0.5)`` (``torchvision.utils.save_image``'s rounding); with
            ``compat="torchmetrics"`` truncated as torchmetrics does, ``(x * 255).byte()``.
        input_img_size: ``(C, H, W)`` of the dummy image used to find a custom module's feature dimension
            when it has no ``num_features`` attribute.
        feature_extractor_weights_path: a local ``pt_inception-2015-12-05`` weights file. Default: the
            ``FID_METRIC_WEIGHTS`` environment variable, else torch hub's cache, else a verified download.
        antialias: torchmetrics' flag: True is ``compat="torchmetrics"``, False is ``compat="tensorflow"``.
        compat: ``"tensorflow"`` (default; the original TF definition as torch-fidelity reproduces it),
            ``"pytorch-fid"``, ``"torchmetrics"`` or ``"clean-fid"`` (clean-fid's default ``mode="clean"``); see
            ``fid_metric._features.preprocess``.
        real_stats: fixed reference statistics for the real side: a ``FeatureStats`` or a file that
            ``FeatureStats.load`` reads (ours, pytorch-fid, clean-fid, ADM). ``update(..., real=True)`` is
            then an error, and the reference's matrix factor is computed once and reused by every
            ``compute()``.
        dataset_size: the number N of validation samples per side per epoch, for exactly-once accounting
            under DDP: a ``DistributedSampler`` pads the last round by repeating samples when N is not
            divisible by the number of processes W, always at the tail of each rank's sequence, so rank r
            counts only its first ``ceil((N - r) / W)`` images per side and the rest (at most one) is
            dropped. ``fid_metric.lightning.ExactlyOnce`` sets it from the trainer's validation loader.
        arithmetic: ``"exact"`` (default): the network in float32 with autocast off and TF32 off, whatever
            the host's settings. Fast modes for development loops, not for reported numbers: ``"bf16"``
            (autocast to bfloat16; CPUs with AMX/AVX512-BF16 and GPUs) and ``"tf32"`` (TF32 on CUDA). The
            states and the distance stay float64; docs/performance.md states each mode's measured FID deviation.
        kwargs: torchmetrics ``Metric`` arguments (``sync_on_compute``, ``process_group``, ...).

    The first six arguments are torchmetrics' and keep its positions; ``compat`` and the rest are keyword-only.

    Raises:
        ValueError: ``feature`` is an int other than 64, 192, 768, 2048; ``compat`` is unknown or contradicts
            ``antialias``; ``normalize`` or ``reset_real_features`` is not a bool; ``real_stats`` is not
            readable; ``dataset_size`` is not a positive int; ``arithmetic`` is unknown.
        fid_metric.StatsMismatchError: ``real_stats`` was made with another feature dimension, extractor,
            weights or compat mode (and, later: a checkpoint, ``merge_state`` input or another process's
            metric of another configuration).
        TypeError: ``feature`` is neither an int nor an ``nn.Module``.
        fid_metric._features.weights.WeightsUnavailableError: no weights file could be found or downloaded.

    Under DDP the six states are combined by one ``all_reduce`` of a single float64 buffer holding the
    sums, the upper triangles of the symmetric outer-product sums and the counts:
    ``2 * (d + d (d + 1) / 2 + 1) * 8`` bytes, 33.6 MB for d = 2048, whatever the number of images or
    processes (torchmetrics all_gathers ``world_size * 67 MB``), after one of 16 bytes per configuration field
    that checks every process built the same metric. ``dist_sync_fn`` is not used. ``compute()`` is a
    collective: every process must call it. A seventh state, ``update_configuration`` (a fingerprint of the
    configuration, never synced or saved), keeps torchmetrics' ``MetricCollection`` from sharing states between
    metrics that update them differently.

    With ``reset_real_features=False`` the real statistics are part of ``state_dict()``, so they survive a
    checkpoint and resume (the Inception weights never enter it). Under DDP, each ``compute()`` leaves the
    global real sums on rank 0 and zeros elsewhere, so rank 0's checkpoint holds all of them; on loading,
    ranks other than 0 drop theirs.

    Example:
        >>> import torch
        >>> from fid_metric import FrechetInceptionDistance
        >>> fid = FrechetInceptionDistance(feature=64)  # doctest: +SKIP
        >>> real = torch.randint(0, 200, (16, 3, 299, 299), dtype=torch.uint8)
        >>> fake = torch.randint(100, 255, (16, 3, 299, 299), dtype=torch.uint8)
        >>> fid.update(real, real=True)  # doctest: +SKIP
        >>> fid.update(fake, real=False)  # doctest: +SKIP
        >>> fid.compute()  # doctest: +SKIP
        tensor(..., dtype=torch.float64)

        With a custom feature extractor (no weights needed): the images' mean colour, 3 features.

        >>> class MeanColour(torch.nn.Module):
        ...     num_features = 3
        ...
        ...     def forward(self, x: torch.Tensor) -> torch.Tensor:
        ...         return x.float().mean((2, 3))
        >>> fid = FrechetInceptionDistance(feature=MeanColour())
        >>> g = torch.Generator().manual_seed(0)
        >>> fid.update(torch.randint(0, 200, (20, 3, 8, 8), generator=g, dtype=torch.uint8), real=True)
        >>> fid.update(torch.randint(50, 250, (20, 3, 8, 8), generator=g, dtype=torch.uint8), real=False)
        >>> round(float(fid.compute()), 2)
        8091.12
    """

    plot_lower_bound = 0.0

    real_features_sum: Tensor
    real_features_cov_sum: Tensor
    real_features_num_samples: Tensor
    fake_features_sum: Tensor
    fake_features_cov_sum: Tensor
    fake_features_num_samples: Tensor

    def compute(self) -> Tensor:
        """FID over everything accumulated (on all processes under DDP), a 0-d float64 tensor, never below 0.

        Raises:
            RuntimeError: fewer than 2 real or 2 generated images.
        """
        self._check_counts()
        return self._fid(*self._real_side())
