"""What every metric of this package shares: one extractor, a set of accumulators, and the states' boundaries.

    update(imgs): check -> exactly-once quota -> extractor outputs -> each accumulator adds to its states
    sync:         the processes' configurations compared, one all_reduce of the sums, a gather of kept rows
    compute():    the subclass turns the states into its numbers

``FeatureSumsMetric`` calls the accumulators (``fid_metric._states.accumulator``) the same way at every boundary:
the DDP sync, checkpoints, merges, resets and device moves. Derived results (torchmetrics' cached ``compute()``
value and ``_derived``, e.g. ``fid_by_size``) are dropped by ``_state_changed()``, which runs whenever a state is
assigned (load, merge, reset, device move, a DDP sync, ``MetricCollection``'s shared states, a user's
assignment) and at every ``update()`` (which adds in place); restoring the local states after a sync
(``unsync``) is not a change. The torchmetrics members used are checked by tests/test_torchmetrics_contract.py.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from fid_metric._checks import checked_bool, checked_choice
from fid_metric._features.arithmetic import ARITHMETICS
from fid_metric._features.extractor import Extractor
from fid_metric._states.accumulator import Accumulator, Accumulators, copy_state, empty_like
from fid_metric._states.checkpoint import EXTRA_STATE_KEY, StateLayout, check_mergeable, load_states, merged_states
from fid_metric._states.exactly_once import SamplerQuota, sampler_positions, world_and_rank
from fid_metric._states.sync import sync_accumulators

UPDATE_CONFIGURATION = "update_configuration"


class FeatureSumsMetric(Metric):
    """The shared core of this package's metrics; see ``FrechetInceptionDistance`` for the arguments."""

    is_differentiable = False
    full_state_update = False
    feature_network: str = "inception"  # what torchmetrics.wrappers.FeatureShare reads and replaces

    def __init__(
        self,
        extractor: Extractor,
        *,
        normalize: bool = False,
        reset_real_features: bool = True,
        dataset_size: int | None = None,
        arithmetic: str = "exact",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.normalize = checked_bool("normalize", normalize)
        self.reset_real_features = checked_bool("reset_real_features", reset_real_features)
        self.arithmetic = checked_choice("arithmetic", arithmetic, ARITHMETICS)
        self._quota = SamplerQuota(dataset_size)
        self._extractor = extractor
        self.used_custom_model = extractor.is_custom
        self.num_features, self.extractor_id = extractor.num_features, extractor.extractor_id
        self._shared_network: Callable[[Tensor], Tensor] | None = None
        self._derived: dict[str, Any] = {}  # results derived from the states; _state_changed() empties it
        self._accumulators = Accumulators()
        self.add_state(UPDATE_CONFIGURATION, _fingerprint({}), dist_reduce_fx=None)

    def _register(self, *accumulators: Accumulator) -> None:
        """Add the accumulators and their states; the real ones persist when ``reset()`` keeps them."""
        for accumulator in accumulators:
            self._accumulators.append(accumulator, self, keep_real=self._keeps_real_states())
        self._refresh_update_configuration()

    def _keeps_real_states(self) -> bool:
        """Whether ``reset()`` keeps the real states, which ``state_dict()`` then holds."""
        return not self.reset_real_features

    def _update_fields(self) -> dict[str, object]:
        """What decides how ``update()`` and ``reset()`` change the states (a subclass adds its own)."""
        return {
            "normalize": self.normalize,
            "reset_real_features": self.reset_real_features,
            "dataset_size": self.dataset_size,
            "accumulators": repr(self.__dict__.get("_accumulators", "")),
        }

    def _refresh_update_configuration(self) -> None:
        """Set the ``update_configuration`` state and its default to the fingerprint of the configuration."""
        fields = {**self.identity(with_hash=False), **self._update_fields(), **self._extractor.instance()}
        fingerprint = _fingerprint(fields).to(self._state_device)
        self._defaults[UPDATE_CONFIGURATION] = fingerprint
        setattr(self, UPDATE_CONFIGURATION, fingerprint.clone())

    @property
    def dataset_size(self) -> int | None:
        """N, the validation samples per side per epoch, for exactly-once counting under DDP; None: count all."""
        return self._quota.dataset_size

    @dataset_size.setter
    def dataset_size(self, value: int | None) -> None:
        self._quota.dataset_size = value
        self._refresh_update_configuration()

    def update(self, imgs: Tensor, real: bool) -> None:
        """Add a batch of ``(N, 3 or 1, H, W)`` images (uint8, or float in [0, 1] with ``normalize``) to a side.

        Raises:
            TypeError, ValueError: not a batch the metric expects, or NaN or infinite outputs (nothing added).
        """
        if not isinstance(real, bool):
            raise TypeError(f"`real` must be a bool, got {type(real).__name__}.")
        side = "real" if real else "fake"
        self._extractor.check(imgs, self.normalize)
        self._state_changed()  # the accumulators add in place
        world, rank = self._world_and_rank()
        keep = self._quota.counted(side, imgs.shape[0], world, rank)
        if keep:
            imgs = imgs if keep == imgs.shape[0] else imgs[:keep]
            names, shared = self._accumulators.outputs, self._shared_network
            outputs = self._extractor.outputs(imgs, names, self.device, self.arithmetic, shared=shared)
            self._extractor.check_finite(outputs, self.normalize)
            with torch.inference_mode():
                positions = sampler_positions(self._quota.seen[side], keep, world, rank)
                self._accumulators.add(self, side, outputs, positions)
        self._quota.advance(side, imgs.shape[0])

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """Same as ``update``; returns None (no batch-local value). In a MetricCollection compute group, whose
        members' states are one set of tensors, each adds to copies of its own, so the batch counts once."""
        if self._is_synced:
            raise RuntimeError("The metric is synced; call `unsync()` before `forward`.")
        for name, value in self.metric_state.items():
            setattr(self, name, copy_state(value))
        self.update(*args, **kwargs)

    @property
    def inception(self) -> nn.Module:
        """The feature network, as torchmetrics' ``metric.inception``: uint8 ``(N, 3, H, W)`` images -> ``(N, d)``
        features of this metric's compat pipeline and arithmetic; a custom module itself; or the network that
        ``torchmetrics.wrappers.FeatureShare`` set. Never in a ``state_dict``."""
        return self._extractor.network(self.arithmetic, shared=self._shared_network)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "inception":  # FeatureShare: features come from that network, kept out of state_dict()
            network = self._extractor.checked_shared(value, self._accumulators.outputs)
            return object.__setattr__(self, "_shared_network", network)
        super().__setattr__(name, value)
        if name in self.__dict__.get("_defaults", ()) and not self.__dict__.get("_is_synced", False):
            self._state_changed()

    def _state_changed(self) -> None:
        """Drop every result derived from the states: they no longer answer for the states as they are now."""
        self.__dict__["_computed"] = None
        self.__dict__.setdefault("_derived", {}).clear()

    def plot(self, val: Any = None, ax: Any = None) -> Any:
        """Plot ``compute()``'s value, or a list of them (e.g. one per epoch), as torchmetrics does: ``(fig, ax)``."""
        return self._plot(val, ax)

    def _world_and_rank(self) -> tuple[int, int]:
        """Size of the metric's process group and this process's rank in it; (1, 0) without DDP."""
        return world_and_rank(self.process_group)

    def identity(self, with_hash: bool = True) -> dict[str, object]:
        """What makes two metrics' sums addable: feature dimension, extractor, compat, weights SHA-256 (empty with
        ``with_hash=False``) and arithmetic. Checkpoints record it; loading, merging and the sync refuse another."""
        metadata = self._extractor.metadata(with_hash=with_hash)
        return {"feature_dim": self.num_features, **metadata, "arithmetic": self.arithmetic}

    def _sync_fields(self) -> dict[str, str]:
        """What every process must share for its states to be combined: the update configuration, every state's
        shape and what ``compute()`` does with them (``_compute_configuration``)."""
        shapes = ";".join(f"{name}{tuple(value.shape)}" for name, value in self._layout().templates.items())
        fields = {"metric": type(self).__name__, **self.identity(), **self._update_fields(), "states": shapes}
        return {name: str(value) for name, value in {**fields, **self._compute_configuration()}.items()}

    def _compute_configuration(self) -> dict[str, object]:
        """The arguments that change what ``compute()`` makes of the states (none here)."""
        return {}

    def set_dtype(self, dst_type: str | torch.dtype) -> FeatureSumsMetric:
        """No-op: the states are always float64 (torchmetrics users call ``set_dtype(torch.float64)``)."""
        return self

    def reset(self) -> None:
        """Zero the states; the real ones are kept when ``reset_real_features=False``."""
        real = self._accumulators.real_states if self._keeps_real_states() else ()
        kept = {name: copy_state(getattr(self, name)) for name in real}
        for name in [n for n, d in self._defaults.items() if isinstance(d, list)]:  # Metric.reset would clear
            setattr(self, name, [])  # them in place, which a metric sharing the lists would see
        super().reset()
        for name, value in kept.items():
            setattr(self, name, value)
        self._quota.reset(keep_real=self._keeps_real_states())
        self._state_changed()

    def _layout(self) -> StateLayout:
        """The states as loading, merging and the sync see them (``Accumulators.templates`` refuses others)."""
        templates = self._accumulators.templates(self, self._defaults, descriptive=(UPDATE_CONFIGURATION,))
        persistent = frozenset(name for name in templates if self._persistent[name])
        return StateLayout(self._accumulators, templates, persistent, (UPDATE_CONFIGURATION,))

    def _copy_state_dict(self) -> dict[str, Tensor | list[Tensor]]:
        # What unsync() restores: the states themselves, not clones (_sync_dist never changes one in place).
        return {name: list(value) if isinstance(value, list) else value for name, value in self.metric_state.items()}

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any | None = None) -> None:
        group = process_group or self.process_group
        for name, value in sync_accumulators(self._accumulators, self, self._sync_fields(), group).items():
            setattr(self, name, value)
        if self._keeps_real_states() and self._cache is not None:
            # Kept real states fold onto rank 0: the local states that unsync() restores become the global ones on
            # rank 0 and empty elsewhere, so rank 0's checkpoint holds every process's real statistics.
            is_rank0 = torch.distributed.get_rank(group) == 0
            for name in self._accumulators.real_states:
                value = getattr(self, name)
                self._cache[name] = copy_state(value) if is_rank0 else empty_like(value)

    def persistent(self, mode: bool = False) -> None:
        """torchmetrics' ``persistent``; states that describe the metric (``update_configuration``) never persist."""
        super().persistent(mode)
        self._persistent[UPDATE_CONFIGURATION] = False

    def state_dict(self, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        """torchmetrics' state dict (persistent states, copied) plus ``identity()`` under torch's extra-state key."""
        destination = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        if any(self._persistent[name] for name in self._accumulators.names):
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
        # Every state is checked before any changes, then copies are assigned.
        loaded = load_states(state_dict, prefix, self.identity, self._layout(), missing_keys)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for name, value in loaded.items():
            setattr(self, name, value)
        # A checkpoint holds the global real states (see _sync_dist); every process loads it, so only rank 0 may
        # keep them or the next all_reduce would count them world_size times.
        real = self._accumulators.real_states
        if real and real[0] in loaded and self._world_and_rank()[1] != 0:
            for name in real:
                setattr(self, name, empty_like(getattr(self, name)))

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Add another metric's states (or a dict of them) to this one's: sums add, kept features are appended.

        Raises:
            StatsMismatchError: another class or ``identity()``, or a state's shape differs.
            ValueError: a state of the dict is missing, not a tensor, non-finite, or a count that is not one.
        """
        states: Any = incoming_state
        if not isinstance(incoming_state, dict):
            theirs = incoming_state._merge_record() if isinstance(incoming_state, FeatureSumsMetric) else {}
            check_mergeable(self._merge_record(), {"metric": _qualified_name(incoming_state), **theirs})
            states = incoming_state.metric_state
        for name, value in merged_states(states, self.identity, self._layout()).items():
            setattr(self, name, getattr(self, name) + value)  # tensors add, lists concatenate: new objects

    def _merge_record(self) -> dict[str, object]:
        """What ``merge_state`` requires two metrics to share: class, identity, accumulators (but rows' home)."""
        accumulators = self._accumulators.description(rows=False)
        return {"metric": _qualified_name(self), **self.identity(), "accumulators": accumulators}

    def _apply(self, fn: Callable, exclude_state: Any = "") -> FeatureSumsMetric:
        # States move with the module, never changing dtype (Lightning's "bf16-true" calls module.to(bfloat16)).
        super()._apply(fn, exclude_state=tuple(self._defaults))
        device = self._state_device
        self._defaults.update({n: d.to(device) for n, d in self._defaults.items() if isinstance(d, Tensor)})
        for name, value in self._accumulators.placed(self, self.metric_state, device).items():
            setattr(self, name, value)
        return self

    @property
    def _state_device(self) -> torch.device:
        # Apple's MPS has no float64: the network runs there, the float64 sums stay on the CPU.
        return torch.device("cpu") if self.device.type == "mps" else self.device


def _qualified_name(metric: object) -> str:
    return f"{type(metric).__module__}.{type(metric).__qualname__}"


def _fingerprint(fields: dict[str, object]) -> Tensor:
    """The SHA-256 of ``fields`` as ``(32,)`` float64 byte values (0-255: ``allclose`` tells any two apart): the
    ``update_configuration`` state.

    torchmetrics' ``MetricCollection`` (``compute_groups=True``) lets metrics whose states are equal after the
    first batch share their states, updating only one of them; this state makes two metrics' states equal only
    where update() and reset() treat them alike.
    """
    text = {name: str(value) for name, value in fields.items()}
    digest = hashlib.sha256(json.dumps(text, sort_keys=True).encode()).digest()
    return torch.tensor(list(digest), dtype=torch.float64)
