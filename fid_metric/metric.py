"""``FrechetInceptionDistance``: the torchmetrics Metric, its states, update, the one all_reduce, compute."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from fid_metric import weights
from fid_metric.checkpoint import EXTRA_STATE_KEY, check_same_identity, checked_state, identity_differences
from fid_metric.distance import CovarianceFactor, frechet_distance, sqrt_factor
from fid_metric.inception import FIDInceptionV3, fold_batch_norm
from fid_metric.precision import PRECISIONS, network_math, network_memory_format
from fid_metric.preprocess import check_images, inception_input, resolve_compat, to_uint8_rgb
from fid_metric.stats import FeatureStats, StatsMismatchError, mean_and_covariance
from fid_metric.sync import all_reduce_sum, check_same_configuration
from fid_metric.warn import warn_caller

_INCEPTION_FEATURES = (64, 192, 768, 2048)


class FrechetInceptionDistance(Metric):
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
            ``floor(255 x + 0.5)`` (``torchvision.utils.save_image``'s rounding).
        input_img_size: ``(C, H, W)`` of the dummy image used to find a custom module's feature dimension
            when it has no ``num_features`` attribute.
        feature_extractor_weights_path: a local ``pt_inception-2015-12-05`` weights file. Default: the
            ``FID_METRIC_WEIGHTS`` environment variable, else torch hub's cache, else a verified download.
        antialias: torchmetrics' flag: True is ``compat="torchmetrics"``, False is ``compat="tensorflow"``.
        compat: ``"tensorflow"`` (default; the original TF definition as torch-fidelity reproduces it),
            ``"pytorch-fid"`` or ``"torchmetrics"``; see ``fid_metric.preprocess``.
        real_stats: fixed reference statistics for the real side: a ``FeatureStats`` or a file that
            ``FeatureStats.load`` reads (ours, pytorch-fid, clean-fid, ADM). ``update(..., real=True)`` is
            then an error, and the reference's matrix factor is computed once and reused by every
            ``compute()``.
        dataset_size: the number N of validation samples per side per epoch, for exactly-once accounting
            under DDP: a ``DistributedSampler`` pads the last round by repeating samples when N is not
            divisible by the number of processes W, always at the tail of each rank's sequence, so rank r
            counts only its first ``ceil((N - r) / W)`` images per side and the rest (at most one) is
            dropped. ``fid_metric.lightning.ExactlyOnce`` sets it from the trainer's validation loader.
        precision: ``"exact"`` (default): the network in float32 with autocast off and TF32 off, whatever
            the host's settings. Fast modes for development loops, not for reported numbers: ``"bf16"``
            (autocast to bfloat16; CPUs with AMX/AVX512-BF16 and GPUs) and ``"tf32"`` (TF32 on CUDA). The
            states and the distance stay float64; the README states each mode's measured FID deviation.
        kwargs: torchmetrics ``Metric`` arguments (``sync_on_compute``, ``process_group``, ...).

    Raises:
        ValueError: ``feature`` is an int other than 64, 192, 768, 2048; ``compat`` is unknown or contradicts
            ``antialias``; ``normalize`` or ``reset_real_features`` is not a bool; ``real_stats`` is not
            readable; ``dataset_size`` is not a positive int; ``precision`` is unknown.
        fid_metric.StatsMismatchError: ``real_stats`` was made with another feature dimension, extractor,
            weights or compat mode.
        TypeError: ``feature`` is neither an int nor an ``nn.Module``.
        fid_metric.weights.WeightsUnavailableError: no weights file could be found or downloaded.

    Under DDP the six states are combined by one ``all_reduce`` of a single float64 buffer holding the
    sums, the upper triangles of the symmetric outer-product sums and the counts:
    ``2 * (d + d (d + 1) / 2 + 1) * 8`` bytes, 33.6 MB for d = 2048, whatever the number of images or
    processes (torchmetrics all_gathers ``world_size * 67 MB``). ``dist_sync_fn`` is not used.

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
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False
    plot_lower_bound = 0.0

    real_features_sum: Tensor
    real_features_cov_sum: Tensor
    real_features_num_samples: Tensor
    fake_features_sum: Tensor
    fake_features_cov_sum: Tensor
    fake_features_num_samples: Tensor

    def __init__(
        self,
        feature: int | nn.Module = 2048,
        reset_real_features: bool = True,
        normalize: bool = False,
        input_img_size: tuple[int, int, int] = (3, 299, 299),
        feature_extractor_weights_path: str | os.PathLike | None = None,
        antialias: bool | None = None,
        compat: str | None = None,
        real_stats: str | os.PathLike | FeatureStats | None = None,
        dataset_size: int | None = None,
        precision: str = "exact",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(normalize, bool):
            raise ValueError(f"`normalize` must be a bool, got {normalize!r}.")
        if not isinstance(reset_real_features, bool):
            raise ValueError(f"`reset_real_features` must be a bool, got {reset_real_features!r}.")
        if dataset_size is not None and (not isinstance(dataset_size, int) or dataset_size < 1):
            raise ValueError(f"`dataset_size` must be a positive int or None, got {dataset_size!r}.")
        self.dataset_size = dataset_size
        if precision not in PRECISIONS:
            raise ValueError(f"`precision` must be one of {PRECISIONS}, got {precision!r}.")
        self.precision = precision
        self._images_seen = {"real": 0, "fake": 0}  # this process, this epoch, before any dropping
        self.normalize = normalize
        self.reset_real_features = reset_real_features
        self.compat = resolve_compat(compat, antialias)

        if isinstance(feature, nn.Module):
            self.used_custom_model = True
            network, self._weights_path = feature, None
            num_features = _custom_feature_dim(feature, normalize, input_img_size)
            self.extractor_id = f"custom:{type(feature).__qualname__}/{num_features}"
        elif isinstance(feature, int) and not isinstance(feature, bool):
            if feature not in _INCEPTION_FEATURES:
                raise ValueError(f"`feature` must be one of {_INCEPTION_FEATURES} or an nn.Module, got {feature}.")
            self.used_custom_model = False
            self._weights_path = weights.resolve(feature_extractor_weights_path)
            network = _load_inception(self._weights_path)
            num_features = feature
            self.extractor_id = f"inception-2015-12-05/{feature}"
        else:
            raise TypeError(f"`feature` must be an int in {_INCEPTION_FEATURES} or an nn.Module, got {type(feature)}.")
        self.num_features = num_features
        # Outside the module tree: never in state_dict (no 92 MB checkpoints), never cast by Lightning's
        # bf16-true/16-true, never broadcast by DDP. update() moves it to the metric's device.
        self._extractor = _Unregistered(network, torch.channels_last if not self.used_custom_model else None)

        self._reference: FeatureStats | None = None
        self._reference_factor: CovarianceFactor | None = None
        if real_stats is not None:
            reference = real_stats if isinstance(real_stats, FeatureStats) else FeatureStats.load(real_stats)
            ours = {"feature_dim": num_features, **self._metadata(with_hash=bool(reference.weights_sha256))}
            reference.check_compatible(ours, "real_stats", "this metric")
            self._reference = _private_copy(reference)  # the caller may go on mutating theirs
            self._reference_fingerprint = _fingerprint(self._reference)

        d = num_features
        keep_real = not reset_real_features and real_stats is None
        # States whose values are symmetric matrices (only their upper triangles are all-reduced), and the
        # real-side states that reset_real_features=False keeps; subclasses add theirs.
        self._symmetric_states = {"real_features_cov_sum", "fake_features_cov_sum"}
        self._real_states = ["real_features_sum", "real_features_cov_sum", "real_features_num_samples"]
        self.add_state("real_features_sum", torch.zeros(d, dtype=torch.float64), "sum", persistent=keep_real)
        self.add_state("real_features_cov_sum", torch.zeros(d, d, dtype=torch.float64), "sum", persistent=keep_real)
        self.add_state("real_features_num_samples", torch.tensor(0, dtype=torch.int64), "sum", persistent=keep_real)
        self.add_state("fake_features_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("fake_features_cov_sum", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("fake_features_num_samples", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, imgs: Tensor, real: bool) -> None:
        """Add a batch to the real or the generated statistics.

        Args:
            imgs: ``(N, 3, H, W)`` or ``(N, 1, H, W)`` images, uint8 in [0, 255] (``normalize=False``) or
                float in [0, 1] (``normalize=True``); any H, W; any device (moved to the metric's device).
            real: True for real images, False for generated ones.

        Raises:
            TypeError, ValueError: the batch is not what the metric expects (the message says what is);
                the states are then unchanged.
        """
        if not isinstance(real, bool):
            raise TypeError(f"`real` must be a bool, got {type(real).__name__}.")
        if real and self._reference is not None:
            raise ValueError(
                "This metric was built with fixed reference statistics (`real_stats=`), which are the real side; "
                "update(imgs, real=True) would be ignored. Feed only generated images (real=False)."
            )
        side = "real" if real else "fake"
        self._check(imgs)
        keep = self._exactly_once_count(side, imgs.shape[0])
        if keep:
            outputs = self._outputs(imgs[:keep])
            self._check_finite(outputs)
            with torch.inference_mode():
                self._accumulate(side, outputs, first=self._images_seen[side])
        self._images_seen[side] += imgs.shape[0]

    def _accumulate(self, side: str, outputs: dict[str, Tensor], first: int) -> None:
        """Add a batch's network outputs to the states of ``side``.

        ``first`` is the index, among the images this process was given this epoch on that side, of the
        batch's first image (subclasses use it to assign images to groups).
        """
        features = self._as_state(outputs[self._feature_output])
        getattr(self, f"{side}_features_sum").add_(features.sum(0))
        getattr(self, f"{side}_features_cov_sum").addmm_(features.T, features)
        getattr(self, f"{side}_features_num_samples").add_(features.shape[0])

    def _check_finite(self, outputs: dict[str, Tensor]) -> None:
        """Raise before any state changes if the network gave NaN or infinite values.

        A custom extractor can; the Inception network, whose weights are checked finite when loaded, cannot on
        finite uint8 input, so on CUDA that case is not checked: the check reads a flag back from the GPU, a
        host synchronisation ``update()`` otherwise never makes. Float input already makes one (its range).
        """
        if self.device.type == "cuda" and not self.used_custom_model and not self.normalize:
            return
        for name, output in outputs.items():
            if not bool(torch.isfinite(output).all()):
                source = "The custom feature extractor" if self.used_custom_model else f"Inception output {name!r}"
                raise ValueError(
                    f"{source} returned NaN or infinite values for this batch; it was not added to the statistics. "
                    "Check the extractor's weights and its input."
                )

    def _as_state(self, output: Tensor) -> Tensor:
        """A network output as float64 on the state device."""
        return output.to(self._state_device, torch.float64)

    def _exactly_once_count(self, side: str, batch: int) -> int:
        """How many of this batch's images count, dropping a DistributedSampler's padding (see dataset_size)."""
        if self.dataset_size is None:
            return batch
        world, rank = self._world_and_rank()
        quota = (self.dataset_size - rank + world - 1) // world
        seen = self._images_seen[side]
        if seen + batch > quota + 1:
            raise ValueError(
                f"dataset_size={self.dataset_size} over {world} process(es) gives rank {rank} at most {quota} "
                f"{side} images per epoch (plus at most one padding repeat), but it has been given {seen + batch}. "
                "Is dataset_size the size of the validation set, is reset() called each epoch, and is each "
                "batch passed to update() once per side?"
            )
        return max(0, min(batch, quota - seen))

    def _world_and_rank(self) -> tuple[int, int]:
        """Size of the metric's process group and this process's rank in it; (1, 0) without DDP."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(self.process_group), torch.distributed.get_rank(self.process_group)
        return 1, 0

    def forward(self, imgs: Tensor, real: bool) -> None:
        """Same as ``update``; returns None.

        torchmetrics' ``forward`` computes a batch-local FID, which for FID means an eigendecomposition per
        batch, and with ``reset_real_features=False`` adds the real batch twice; here each image counts once.
        """
        if self._is_synced:
            raise RuntimeError("The metric is synced; call `unsync()` before `forward`.")
        self.update(imgs, real)

    def compute(self) -> Tensor:
        """FID over everything accumulated (on all processes under DDP), a 0-d float64 tensor.

        Raises:
            RuntimeError: fewer than 2 real or 2 generated images.
        """
        self._check_counts()
        return self._fid(*self._real_side())

    def _real_side(self) -> tuple[Tensor, Tensor, CovarianceFactor]:
        """Real mean ``(d,)``, covariance ``(d, d)`` and its factor, float64: the fixed reference's (factor cached
        across epochs) or the accumulated statistics' (factored once per compute)."""
        if self._reference is not None:
            return self._reference_on(self.fake_features_sum.device)
        n_real = int(self.real_features_num_samples)
        mu, sigma = mean_and_covariance(n_real, self.real_features_sum, self.real_features_cov_sum)
        return mu, sigma, sqrt_factor(sigma)

    def _fid(self, mu_real: Tensor, sigma_real: Tensor, factor: CovarianceFactor) -> Tensor:
        """FID of the accumulated generated statistics against the given real side."""
        n_fake = int(self.fake_features_num_samples)
        mu_fake, sigma_fake = mean_and_covariance(n_fake, self.fake_features_sum, self.fake_features_cov_sum)
        return frechet_distance(mu_real, sigma_real, mu_fake, sigma_fake, sigma1_factor=factor)

    def _check_counts(self) -> None:
        """For each side compute() uses (generated only, with a fixed reference): raise below 2 images; warn
        below the feature dimension (the covariance is singular) or when not ``dataset_size``."""
        counts = {"fake": int(self.fake_features_num_samples)}
        if self._reference is None:
            counts = {"real": int(self.real_features_num_samples), **counts}
        names = {"real": "real", "fake": "generated"}
        needed = " and ".join(f"2 {names[side]}" for side in counts)
        got = " and ".join(f"{n} {names[side]}" for side, n in counts.items())
        if min(counts.values()) < 2:
            raise RuntimeError(
                f"FID needs at least {needed} images to estimate covariances; got {got}. "
                "Call update(imgs, real=...) first."
            )
        if min(counts.values()) < self.num_features:
            warn_caller(
                f"FID from {got} images with {self.num_features}-dimensional features: fewer samples than "
                "dimensions makes the covariance singular, and FID is strongly biased. Use more images (FID is "
                "usually reported on 10k-50k) or a smaller `feature`."
            )
        self._warn_if_not_dataset_size(**counts)

    def _warn_if_not_dataset_size(self, **counted: int) -> None:
        if self.dataset_size is None:
            return
        for side, n in counted.items():
            if n != self.dataset_size:
                warn_caller(
                    f"dataset_size={self.dataset_size}, but {n} {side} images were counted over all processes: "
                    "the validation loop did not cover the set exactly once (limit_val_batches? a sampler with "
                    "drop_last=True?), so this FID is not over the whole set."
                )

    def _reference_on(self, device: torch.device) -> tuple[Tensor, Tensor, CovarianceFactor]:
        """The fixed reference's mean, covariance and covariance factor on ``device``; the factor is cached."""
        if self._reference_factor is None or self._reference_factor.device != device:
            self._reference_factor = sqrt_factor(self._reference.covariance.to(device))
        return self._reference.mean.to(device), self._reference.covariance.to(device), self._reference_factor

    def statistics(self, real: bool) -> FeatureStats:
        """The accumulated real or generated statistics, over all processes under DDP, as ``FeatureStats``.

        Under DDP this is a collective call: every process must make it.
        """
        prefix = "real" if real else "fake"
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync):
            return FeatureStats.from_sums(
                int(getattr(self, f"{prefix}_features_num_samples")),
                getattr(self, f"{prefix}_features_sum"),
                getattr(self, f"{prefix}_features_cov_sum"),
                **self._metadata(with_hash=True),
            )

    def save_real_stats(self, path: str | os.PathLike) -> None:
        """Write the accumulated real statistics to ``path`` (``.npz``), for use as ``real_stats=`` later.

        Under DDP every process must call it (the statistics are synced); rank 0 writes the file.
        """
        stats = self._real_stats_to_save()
        if self._world_and_rank()[1] == 0:
            stats.save(path)

    def _real_stats_to_save(self) -> FeatureStats:
        return self.statistics(real=True)

    def identity(self) -> dict[str, object]:
        """What makes two metrics' sums addable: feature dimension, extractor, compat, weights SHA-256 and
        precision. ``state_dict()`` records it; loading, ``merge_state`` and the DDP sync refuse another."""
        return {"feature_dim": self.num_features, **self._metadata(with_hash=True), "precision": self.precision}

    def _metadata(self, with_hash: bool) -> dict[str, str]:
        """What statistics files record about how their features were made (``FeatureStats`` fields)."""
        sha256 = weights.sha256_of(self._weights_path) if with_hash and self._weights_path else ""
        return {
            "extractor": self.extractor_id,
            "weights_sha256": sha256,
            "compat": "" if self.used_custom_model else self.compat,
        }

    def reset(self) -> None:
        """Zero the statistics; the real ones are kept when ``reset_real_features=False``."""
        kept = {} if self.reset_real_features else {name: getattr(self, name) for name in self._real_states}
        super().reset()
        for name, value in kept.items():
            setattr(self, name, value)
        self._images_seen = {"real": 0 if self.reset_real_features else self._images_seen["real"], "fake": 0}

    def set_dtype(self, dst_type: str | torch.dtype) -> FrechetInceptionDistance:
        """No-op: the states are always float64 (torchmetrics users call ``set_dtype(torch.float64)``)."""
        return self

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any | None = None) -> None:
        # One all_reduce of every state (fid_metric.sync) instead of torchmetrics' all_gather per state.
        group = process_group or self.process_group
        states = {name: getattr(self, name) for name in self._defaults}
        check_same_configuration(self._sync_fields(), next(iter(states.values())).device, group)
        for name, value in all_reduce_sum(states, self._symmetric_states, group).items():
            setattr(self, name, value)
        if not self.reset_real_features and self._cache is not None:
            # Fold the kept real sums onto rank 0: the local states that unsync() restores become the
            # global sums on rank 0 and zeros elsewhere. Their all_reduce is unchanged, and rank 0's
            # checkpoint now holds every process's real statistics.
            is_rank0 = torch.distributed.get_rank(group) == 0
            for name in self._real_states:
                self._cache[name] = getattr(self, name).clone() if is_rank0 else torch.zeros_like(getattr(self, name))

    def state_dict(self, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        """torchmetrics' state dict (the persistent states, copied) plus, when it holds any, this metric's
        ``identity()`` under torch's extra-state key, so that loading can refuse another configuration."""
        destination = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        if any(self._persistent[name] for name in self._defaults):
            destination[prefix + EXTRA_STATE_KEY] = self.identity()
        return destination

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Validate every state of the checkpoint before changing any, then load copies of them.

        The persistent states are one unit. A checkpoint with none of them reports them as missing keys, as torch
        does for parameters (an error under ``strict=True``); one with some but not all is refused with
        ``ValueError`` whatever ``strict`` says, since a part of the sums gives a wrong FID. A checkpoint
        recording another ``identity()`` is refused with ``StatsMismatchError`` (one without a record, as written
        by fid_metric 0.1, is checked by its shapes).
        """
        what = f"the checkpoint's {prefix.rstrip('.') or 'metric'}"
        record = state_dict.pop(prefix + EXTRA_STATE_KEY, None)
        if record is not None:
            check_same_identity(self.identity(), record, what)
        # Popped, so that torchmetrics' own loader, which would keep the caller's tensors, never sees them.
        incoming = {name: state_dict.pop(prefix + name) for name in self._defaults if prefix + name in state_dict}
        missing = [name for name in self._defaults if self._persistent[name] and name not in incoming]
        if missing and not incoming:  # torch passes strict=True here and drops these itself under strict=False
            missing_keys.extend(prefix + name for name in missing)
        elif missing:
            raise ValueError(
                f"{what} holds {sorted(incoming)} but not {missing}: loading part of the statistics would give "
                "a wrong FID, so nothing was loaded."
            )
        loaded = {
            name: checked_state(name, value, self._defaults[name], name in self._symmetric_states, what)
            for name, value in incoming.items()
        }
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for name, value in loaded.items():
            setattr(self, name, value.to(self._state_device))
        # A checkpoint holds the global real sums (see the class docstring); each process loads it, so
        # only rank 0 may keep them or the next all_reduce would count them world_size times.
        if self._real_states[0] in loaded and self._world_and_rank()[1] != 0:
            for name in self._real_states:
                setattr(self, name, torch.zeros_like(getattr(self, name)))

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Add another metric's states (or a dict of them) to this one's, as torchmetrics does.

        Raises:
            StatsMismatchError: the other metric is of another class or ``identity()``, or a state's shape differs.
            ValueError: a state of the dict is missing, not a tensor, non-finite, or a count that is not one.
        """
        if isinstance(incoming_state, Metric):
            if type(incoming_state) is not type(self):
                raise StatsMismatchError(
                    f"Cannot merge a {type(incoming_state).__name__} into a {type(self).__name__}: their states differ."
                )
            differences = identity_differences(self.identity(), incoming_state.identity())
            if differences:
                raise StatsMismatchError(
                    f"Cannot merge metrics of different configurations ({'; '.join(differences)}; this metric's "
                    "value first): their statistics cannot be added."
                )
            incoming_state = incoming_state.metric_state
        if isinstance(incoming_state, dict):
            missing = [name for name in self._defaults if name not in incoming_state]
            if missing:
                raise ValueError(f"merge_state's dict lacks the states {missing}.")
            incoming_state = {
                name: checked_state(name, incoming_state[name], getattr(self, name), symmetric, "merge_state's input")
                for name in self._defaults
                for symmetric in [name in self._symmetric_states]
            }
        super().merge_state(incoming_state)

    def _sync_fields(self) -> dict[str, str]:
        """What every process must share for its sums to be added: the identity, the states' shapes, the fixed
        reference, and ``dataset_size``."""
        shapes = ";".join(f"{name}{tuple(value.shape)}" for name, value in self._defaults.items())
        reference = "" if self._reference is None else self._reference_fingerprint
        fields = {"metric": type(self).__name__, **self.identity(), "states": shapes, "real_stats": reference}
        return {name: str(value) for name, value in {**fields, "dataset_size": self.dataset_size}.items()}

    def _apply(self, fn: Callable, exclude_state: Any = "") -> FrechetInceptionDistance:
        # Move the states with the module but never change their dtype: Lightning's precision="bf16-true"
        # calls module.to(torch.bfloat16), which torchmetrics would apply to the float64 sums.
        super()._apply(fn, exclude_state=tuple(self._defaults))
        device = self._state_device
        for name, default in self._defaults.items():
            self._defaults[name] = default.to(device)
            setattr(self, name, getattr(self, name).to(device))
        self._computed = None
        return self

    @property
    def _state_device(self) -> torch.device:
        # Apple's MPS has no float64: the network runs there, the float64 sums stay on the CPU.
        return torch.device("cpu") if self.device.type == "mps" else self.device

    def _check(self, imgs: Tensor) -> None:
        """Raise if ``imgs`` is not a batch this metric accepts (custom extractors: any tensor)."""
        if not self.used_custom_model:
            check_images(imgs, self.normalize)
        elif not isinstance(imgs, Tensor) or imgs.ndim == 0:
            raise TypeError(f"Expected a batch of images as a torch.Tensor, got {type(imgs).__name__}.")

    @property
    def _feature_output(self) -> str:
        """The name of the FID features among the network's outputs."""
        return "features" if self.used_custom_model else str(self.num_features)

    @property
    def _network_outputs(self) -> tuple[str, ...]:
        """The Inception outputs ``update`` asks for (see ``fid_metric.inception.OUTPUTS``)."""
        return (self._feature_output,)

    def _outputs(self, imgs: Tensor) -> dict[str, Tensor]:
        """Checked images -> the network's outputs, float32 on the network's device.

        A custom extractor's ``(N, d)`` output is returned as ``"features"``.
        """
        device = self.device
        if self.used_custom_model:
            network = self._extractor.on(device)
            with network_math(device, self.precision):
                features = network(imgs.to(device, non_blocking=True))
            if not isinstance(features, Tensor) or features.shape != (imgs.shape[0], self.num_features):
                shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
                raise ValueError(
                    f"The custom feature extractor must return (N, {self.num_features}) features for a batch of "
                    f"N = {imgs.shape[0]}, got {shape}."
                )
            return {"features": features}
        layout = network_memory_format(device, self.precision)
        network = self._extractor.on(device, layout)
        with network_math(device, "exact"):
            x = inception_input(to_uint8_rgb(imgs.to(device, non_blocking=True)), self.compat)
        with network_math(device, self.precision):
            return network(x.contiguous(memory_format=layout), self._network_outputs)


class _Unregistered:
    """Holds a network outside the metric's module tree; clones of the metric share it (it is frozen)."""

    def __init__(self, module: nn.Module, memory_format: torch.memory_format | None = None) -> None:
        self.module = module
        self.memory_format = memory_format  # of the 4-d weights, where known

    def on(self, device: torch.device, memory_format: torch.memory_format | None = None) -> nn.Module:
        """The network on ``device`` (and in ``memory_format``, if given), converted the first time it is needed so."""
        param = next(self.module.parameters(), None)
        if param is not None and param.device != device:
            self.module.to(device)
        if memory_format is not None and self.memory_format != memory_format:
            self.module.to(memory_format=memory_format)
            self.memory_format = memory_format
        return self.module

    def __deepcopy__(self, memo: dict) -> _Unregistered:
        return self


def _private_copy(stats: FeatureStats) -> FeatureStats:
    """``stats`` with its tensors copied, so that later changes to the caller's object cannot reach the metric."""
    tensors = {
        f.name: getattr(stats, f.name).clone()
        for f in dataclasses.fields(stats)
        if isinstance(getattr(stats, f.name), Tensor)
    }
    return dataclasses.replace(stats, **tensors, extra={k: v.clone() for k, v in stats.extra.items()})


def _fingerprint(stats: FeatureStats) -> str:
    """SHA-256 of the mean's and covariance's bytes: tells apart two references of one configuration."""
    digest = hashlib.sha256()
    for tensor in (stats.mean, stats.covariance):
        digest.update(tensor.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _load_inception(source: os.PathLike) -> FIDInceptionV3:
    # float32 whatever torch.set_default_dtype says: the weights file and the network's input are float32.
    network = FIDInceptionV3().to(torch.float32)
    try:
        network.load_state_dict(weights.load_state_dict(source), strict=True)
    except RuntimeError as err:
        raise RuntimeError(
            f"{source} is not a pt_inception-2015-12-05 state dict (as in pytorch-fid's "
            f"pt_inception-2015-12-05-6726825d.pth): {err}"
        ) from err
    if not all(bool(torch.isfinite(tensor).all()) for tensor in network.state_dict().values()):
        raise ValueError(f"{source} holds NaN or infinite weights.")
    return fold_batch_norm(network).to(memory_format=torch.channels_last)


def _custom_feature_dim(module: nn.Module, normalize: bool, input_img_size: tuple[int, int, int]) -> int:
    """Feature dimension of a custom extractor: its ``num_features``, else its output on a dummy image."""
    num_features = getattr(module, "num_features", None)
    if num_features is not None:
        if isinstance(num_features, Tensor):
            num_features = int(num_features.item())
        if not isinstance(num_features, int):
            raise TypeError(f"The custom extractor's `num_features` must be an int, got {num_features!r}.")
        return num_features
    if normalize:
        dummy = torch.rand(1, *input_img_size)
    else:
        dummy = torch.randint(0, 256, (1, *input_img_size), dtype=torch.uint8)
    device = next(module.parameters(), dummy).device
    with torch.inference_mode():
        return int(module(dummy.to(device)).shape[-1])
