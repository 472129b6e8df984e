"""What every metric of this package shares: one extractor, a list of accumulators, one sync.

    update(imgs): check -> exactly-once quota -> extractor outputs -> each accumulator adds to its float64 sums
    sync:         the processes' configurations compared, then one all_reduce of every state (fid_metric._states.sync)
    compute():    the metric turns the sums into its numbers (FrechetInceptionDistance, InceptionMetrics)

``FeatureSumsMetric`` holds that machinery and the boundaries around it (checkpoints, merges, statistics
files); ``FrechetInceptionDistance`` and ``InceptionMetrics`` are siblings on top, each with its own ``compute()``.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, cast

import torch
from torch import Tensor, nn

from fid_metric._features.arithmetic import ARITHMETICS
from fid_metric._features.extractor import Extractor, FeatureNetwork
from fid_metric._features.preprocess import resolve_compat, to_uint8_rgb
from fid_metric._files.stats import FeatureStats, StatsMismatchError
from fid_metric._functional.distance import CovarianceFactor, frechet_distance
from fid_metric._metrics.reference import FixedReference
from fid_metric._states.accumulators import SIDES, GaussianSums, Registered
from fid_metric._states.boundaries import StatesAcrossBoundaries, copy_state
from fid_metric._states.exactly_once import SamplerQuota, sampler_positions
from fid_metric._states.kept_features import KeptFeatures
from fid_metric._warnings import warn_caller


class FeatureSumsMetric(StatesAcrossBoundaries):
    """The shared core of ``FrechetInceptionDistance`` and ``InceptionMetrics``; see those for the arguments.

    It registers the FID's ``GaussianSums`` (``"features"``, the first accumulator) unless ``fid_sums=False``; a
    subclass registers any others with ``_register`` and implements ``compute()``.
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False
    # The attribute that torchmetrics.wrappers.FeatureShare reads, and replaces by the network it shares.
    feature_network: str = "inception"

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
        arithmetic: str = "exact",
        fid_sums: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(normalize, bool):
            raise ValueError(f"`normalize` must be a bool, got {normalize!r}.")
        if not isinstance(reset_real_features, bool):
            raise ValueError(f"`reset_real_features` must be a bool, got {reset_real_features!r}.")
        if arithmetic not in ARITHMETICS:
            raise ValueError(f"`arithmetic` must be one of {ARITHMETICS}, got {arithmetic!r}.")
        self._quota = SamplerQuota(dataset_size)
        self.arithmetic, self.normalize, self.reset_real_features = arithmetic, normalize, reset_real_features
        self.compat = resolve_compat(compat, antialias)
        if isinstance(feature, nn.Module):
            self._extractor = Extractor.custom(feature, normalize, input_img_size)
        elif isinstance(feature, int) and not isinstance(feature, bool):
            self._extractor = Extractor.inception(feature, feature_extractor_weights_path, self.compat)
        else:
            raise TypeError(
                f"Got unknown input to argument `feature`: expected an int (an Inception layer) or an nn.Module, "
                f"got {type(feature)}."
            )
        self.used_custom_model = self._extractor.is_custom
        self.num_features = self._extractor.num_features
        self.extractor_id = self._extractor.extractor_id
        self._reference: FixedReference | None = None
        if real_stats is not None:
            stats = real_stats if isinstance(real_stats, FeatureStats) else FeatureStats.load(real_stats)
            ours = {"feature_dim": self.num_features, **self._extractor.metadata(with_hash=bool(stats.weights_sha256))}
            ours["arithmetic"] = self.arithmetic
            stats.check_compatible(ours, "real_stats", "this metric")
            self._check_definition_known(stats, "(a FeatureStats)" if real_stats is stats else f"({real_stats})")
            self._reference = FixedReference(stats)
        self._shared_network: nn.Module | None = None
        self._derived: dict[str, Any] = {}  # results derived from the states; _state_changed() empties it
        self._accumulators: list[Any] = []
        self._symmetric_states: set[str] = set()
        self._real_states: list[str] = []
        self.add_state(UPDATE_CONFIGURATION, _fingerprint({}), dist_reduce_fx=None)
        if fid_sums:  # off only for the Inception Score alone, which compares nothing with real images
            self._register(GaussianSums("features", self._extractor.feature_output, self.num_features))
        self._refresh_update_configuration()

    def _check_definition_known(self, stats: FeatureStats, what: str) -> None:
        """Raise ``StatsMismatchError`` where this metric's features have a known definition (a compat mode of
        the Inception network, or a module's ``extractor_id``) and ``stats`` do not say theirs."""
        if not self._extractor.is_custom and not stats.compat:
            raise StatsMismatchError(_UNKNOWN_DEFINITION.format(what=what, compat=self.compat))
        if hasattr(self._extractor.module, "extractor_id") and not stats.extractor:  # e.g. DINOv2Features
            raise StatsMismatchError(
                f"real_stats {what} does not record which feature network made it, and this metric's is "
                f"{self.extractor_id!r} (another preprocessing of the same network is another number): say it with "
                f"FeatureStats.load(path, extractor={self.extractor_id!r}) if so."
            )

    def _register(self, *accumulators: Any) -> None:
        """Add the accumulators' states (``Metric.add_state``) and remember which are symmetric and real."""
        keep_real = not self.reset_real_features and self._reference is None
        for accumulator in accumulators:
            registered: Registered = accumulator.register(self, keep_real)
            self._symmetric_states |= registered.symmetric
            self._real_states += registered.real
        self._accumulators += accumulators
        self._refresh_update_configuration()

    def _update_configuration(self, with_hash: bool = True) -> dict[str, str]:
        """What decides how ``update()`` and ``reset()`` change the states: the identity, the input convention, the
        real side's life and reference, ``dataset_size`` and the accumulators (their dimensions, splits, groups)."""
        reference = "" if self._reference is None else self._reference.fingerprint
        fields = {
            **self.identity(with_hash),
            "normalize": self.normalize,
            "reset_real_features": self.reset_real_features,
            "real_stats": reference,
            "dataset_size": self.dataset_size,
            "accumulators": ";".join(map(repr, self.__dict__.get("_accumulators", []))),
        }
        return {name: str(value) for name, value in fields.items()}

    def _refresh_update_configuration(self) -> None:
        """Set the ``update_configuration`` state (and its default) to the fingerprint of the configuration.

        torchmetrics' ``MetricCollection`` (``compute_groups=True``, its default) lets metrics whose states are
        equal after the first batch share their states, updating only one of them. This state makes two of our
        metrics' states equal only where sharing is right: where update() and reset() treat them alike.
        """
        # Within one process the weights file's path tells two Inception networks apart, without hashing 92 MB at
        # every construction; a custom module is known by class and width only, so its instance is added.
        fields = self._update_configuration(with_hash=False)
        fields["weights_path"] = str(self._extractor.weights_path)
        if self._extractor.is_custom:
            fields["extractor_instance"] = str(id(self._extractor.module))
        fingerprint = _fingerprint(fields).to(self._state_device)
        self._defaults[UPDATE_CONFIGURATION] = fingerprint
        setattr(self, UPDATE_CONFIGURATION, fingerprint.clone())

    @property
    def _gaussian(self) -> GaussianSums:
        """The FID's features: the first accumulator.

        Raises:
            RuntimeError: the metric keeps no FID sums (the Inception Score alone).
        """
        first = self._accumulators[0] if self._accumulators else None
        if not isinstance(first, GaussianSums) or first.name != "features":
            raise RuntimeError(f"{type(self).__name__} keeps no FID statistics: it scores generated images alone.")
        return first

    @property
    def dataset_size(self) -> int | None:
        """N, the validation samples per side per epoch, for exactly-once counting under DDP; None: count all."""
        return self._quota.dataset_size

    @dataset_size.setter
    def dataset_size(self, value: int | None) -> None:
        self._quota.dataset_size = value
        self._refresh_update_configuration()

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
        if not isinstance(real, bool):
            raise TypeError(f"`real` must be a bool, got {type(real).__name__}.")
        if real and self._reference is not None:
            raise ValueError(
                "This metric was built with fixed reference statistics (`real_stats=`), which are the real side; "
                "update(imgs, real=True) would be ignored. Feed only generated images (real=False)."
            )
        side = "real" if real else "fake"
        self._extractor.check(imgs, self.normalize)
        self._state_changed()  # the accumulators add in place
        world, rank = self._world_and_rank()
        keep = self._quota.counted(side, imgs.shape[0], world, rank)
        if keep:
            outputs = self._outputs(imgs if keep == imgs.shape[0] else imgs[:keep])
            self._extractor.check_finite(outputs, self.normalize)
            with torch.inference_mode():
                self._accumulate(side, outputs, sampler_positions(self._quota.seen[side], keep, world, rank))
        self._quota.advance(side, imgs.shape[0])

    @property
    def _network_outputs(self) -> tuple[str, ...]:
        """The extractor outputs the accumulators read, each once."""
        return tuple(dict.fromkeys(accumulator.output for accumulator in self._accumulators))

    def _outputs(self, imgs: Tensor) -> dict[str, Tensor]:
        """Checked images -> the extractor's outputs on the metric's device: float32 from the Inception network, a
        custom or shared module's in their own dtype."""
        if self._shared_network is not None:
            return {self._extractor.feature_output: self._shared_features(imgs)}
        return self._extractor.outputs(imgs, self._network_outputs, self.device, self.arithmetic)

    @property
    def inception(self) -> nn.Module:
        """The feature network, as torchmetrics' ``metric.inception``: a module mapping a batch of images, as
        torchmetrics' network takes them (uint8 ``(N, 3, H, W)``), to the ``(N, d)`` float32 FID features of
        this metric's compat pipeline and arithmetic; a custom ``feature`` module itself; or the network
        ``torchmetrics.wrappers.FeatureShare`` set. Holds no parameters of the Inception network (it never
        enters a ``state_dict``).
        """
        if self._shared_network is not None:
            return self._shared_network
        if self._extractor.is_custom:
            return self._extractor.module
        return FeatureNetwork(self._extractor, self.arithmetic)

    def __setattr__(self, name: str, value: Any) -> None:
        # ``metric.inception = network`` (torchmetrics.wrappers.FeatureShare does it): features come from that
        # network from now on; it is not registered as a submodule, so its weights stay out of state_dict().
        if name == "inception":
            self._share_network(value)
        else:
            super().__setattr__(name, value)

    def _share_network(self, network: nn.Module) -> None:
        if not callable(network):
            raise TypeError(f"`inception` must be a module mapping images to features, got {type(network).__name__}.")
        if len(self._network_outputs) > 1:
            raise ValueError(
                f"{type(self).__name__} takes {len(self._network_outputs)} outputs of one Inception pass "
                f"({', '.join(self._network_outputs)}); a shared network gives one. Share the network between "
                "metrics that need only the FID features."
            )
        object.__setattr__(self, "_shared_network", network)

    def _shared_features(self, imgs: Tensor) -> Tensor:
        """The shared network's features of checked images: given as they came for a custom extractor and for
        uint8 RGB (the very tensor, so that FeatureShare's cache recognises it), else as uint8 RGB."""
        assert self._shared_network is not None
        plain = self._extractor.is_custom or (imgs.dtype == torch.uint8 and imgs.shape[1] == 3)
        features = self._shared_network(imgs if plain else to_uint8_rgb(imgs, self.compat))
        if not isinstance(features, Tensor) or features.shape != (imgs.shape[0], self.num_features):
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"The shared feature network must return (N, {self.num_features}) features for a batch of "
                f"N = {imgs.shape[0]}, got {shape}."
            )
        return features.to(self.device)  # in its own dtype: the accumulators take what holds it exactly

    def plot(self, val: Any = None, ax: Any = None) -> Any:
        """Plot a value of the metric, or a sequence of them, as torchmetrics' metrics do (needs matplotlib).

        Args:
            val: ``compute()``'s result, or a list of them (e.g. one per epoch); None: ``compute()`` now.
            ax: a matplotlib axis to draw into; None: a new figure.

        Returns:
            ``(figure, axis)``.
        """
        return self._plot(val, ax)

    def _accumulate(self, side: str, outputs: dict[str, Tensor], positions: range) -> None:
        """Add a batch's outputs (as the extractor gave them) to the accumulators of ``side``, each of which takes
        them in its own dtype; ``positions``: the images' positions in the sampler's order (``sampler_positions``),
        which fix split and group."""
        for accumulator in self._accumulators:
            accumulator.add(self, side, outputs, positions)

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
        # MetricCollection calls forward on every member of a compute group, whose states are then one set of
        # tensors: each member adds to copies of its own (as torchmetrics' forward does), so the batch counts once.
        for name, value in self.metric_state.items():
            setattr(self, name, copy_state(value))
        self.update(imgs, real)

    def _check_counts(self) -> None:
        """For each side the FID uses (generated only, with a fixed reference): raise below 2 images; warn below
        the feature dimension (the covariance is singular) or when not ``dataset_size``."""
        counts = {side: self._gaussian.sums(self, side)[0] for side in ("real", "fake")}
        if self._reference is not None:
            del counts["real"]
        names = {"real": "real", "fake": "generated"}
        needed = " and ".join(f"2 {names[side]}" for side in counts)
        got = " and ".join(f"{n} {names[side]}" for side, n in counts.items())
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
        return self._gaussian.factored(self, "real")

    def _fid(self, mu_real: Tensor, sigma_real: Tensor, factor: CovarianceFactor) -> Tensor:
        """FID of the accumulated generated statistics against the given real side."""
        mu_fake, sigma_fake = self._gaussian.mean_and_covariance(self, "fake")
        return frechet_distance(mu_real, sigma_real, mu_fake, sigma_fake, sigma1_factor=factor)

    def statistics(self, real: bool) -> FeatureStats:
        """The accumulated real or generated statistics, over all processes under DDP, as ``FeatureStats``; the
        other Gaussian accumulators' mean and covariance ride along in ``extra`` (sFID's ``mu_s``, ``sigma_s``).

        Under DDP this is a collective call: every process must make it.
        """
        side = "real" if real else "fake"
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self.sync_on_compute):
            n, feature_sum, outer_sum = self._gaussian.sums(self, side)
            stats = FeatureStats.from_sums(
                n, feature_sum, outer_sum, **self._extractor.metadata(), arithmetic=self.arithmetic
            )
            for accumulator in self._accumulators[1:]:
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

    def _accumulation(self) -> str:
        """What the states hold beyond the identity, which two metrics must share for one's states to be added to
        the other's: the accumulators but the kept features (where those live does not matter to a merge)."""
        return ";".join(repr(a) for a in self._accumulators if not isinstance(a, KeptFeatures))

    def identity(self, with_hash: bool = True) -> dict[str, object]:
        """What makes two metrics' sums addable: feature dimension, extractor, compat, weights SHA-256 and
        arithmetic. ``state_dict()`` records it; loading, ``merge_state`` and the DDP sync refuse another.
        ``with_hash=False`` leaves the SHA-256 empty (the file is read once, when first needed)."""
        metadata = self._extractor.metadata(with_hash=with_hash)
        return {"feature_dim": self.num_features, **metadata, "arithmetic": self.arithmetic}

    def reset(self) -> None:
        """Zero the statistics; the real ones are kept when ``reset_real_features=False``."""
        kept = {} if self.reset_real_features else {name: copy_state(getattr(self, name)) for name in self._real_states}
        for name, default in self._defaults.items():
            if isinstance(default, list):  # Metric.reset clears lists in place: a list another metric shares
                setattr(self, name, [])
        super().reset()
        for name, value in kept.items():
            setattr(self, name, value)
        self._quota.reset(keep_real=not self.reset_real_features)
        self._state_changed()

    @property
    def _kept_accumulator(self) -> KeptFeatures | None:
        """The ``KeptFeatures`` accumulator, if precision/recall or KID asked for one."""
        return next((a for a in self._accumulators if isinstance(a, KeptFeatures)), None)

    @property
    def _templates(self) -> dict[str, Tensor]:
        kept = self._kept_accumulator
        return {
            name: default if isinstance(default, Tensor) else cast(KeptFeatures, kept).template(self)
            for name, default in self._defaults.items()
        }

    @property
    def _row_states(self) -> dict[str, Tensor]:
        kept = self._kept_accumulator
        return {} if kept is None else {kept.state(side): kept.local(self, side) for side in SIDES}

    def set_dtype(self, dst_type: str | torch.dtype) -> FeatureSumsMetric:
        """No-op: the states are always float64 (torchmetrics users call ``set_dtype(torch.float64)``)."""
        return self

    def _sync_fields(self) -> dict[str, str]:
        """What every process must share for its states to be combined: the update configuration (which includes
        the identity, the fixed reference and ``dataset_size``), every state's shape and what ``compute()`` does
        with the states (``_compute_configuration``)."""
        shapes = ";".join(
            f"{name}{tuple(value.shape)}" for name, value in self._templates.items() if name != UPDATE_CONFIGURATION
        )
        fields = {"metric": type(self).__name__, **self._update_configuration(), "states": shapes}
        return {**fields, **{name: str(value) for name, value in self._compute_configuration().items()}}

    def _compute_configuration(self) -> dict[str, object]:
        """The arguments that change what ``compute()`` makes of the states (none here; see ``InceptionMetrics``)."""
        return {}


UPDATE_CONFIGURATION = "update_configuration"

_UNKNOWN_DEFINITION = (
    "real_stats {what} does not record which definition of FID made it, and this metric is compat={compat!r}: "
    "statistics of another definition would give another number without a word. Say which it holds: "
    "FeatureStats.load(path, compat=...) with 'pytorch-fid' for pytorch-fid --save-stats files, 'clean-fid' or "
    "'tensorflow' for clean-fid's mode='clean' or 'legacy_tensorflow' files (named so, they say it themselves), "
    "or the compat= of FeatureStats.from_features / from_sums for statistics made in code; then pass that "
    "FeatureStats as real_stats."
)


def _fingerprint(fields: dict[str, str]) -> Tensor:
    """The SHA-256 of ``fields`` as ``(32,)`` float64 byte values (0-255: ``allclose`` tells any two apart)."""
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).digest()
    return torch.tensor(list(digest), dtype=torch.float64)
