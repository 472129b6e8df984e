"""Where a metric's states cross a boundary: the DDP sync, checkpoints, merges and device moves.

``StatesAcrossBoundaries`` overrides the torchmetrics and torch hooks involved, each a few lines over
``fid_metric.sync`` (the configuration check, the one all_reduce, the gathers of kept features) and
``fid_metric.checkpoint`` (states checked and copied, configurations refused). What it reads of the metric above
it (``fid_metric.core.FeatureSumsMetric``): ``identity()``, ``_sync_fields()``, ``_symmetric_states``,
``_real_states``, ``reset_real_features``, ``_world_and_rank()`` and the kept features, ``_local_kept()``,
``_kept_home()`` and ``_kept``. The torchmetrics members it overrides or reads are checked by
tests/test_torchmetrics_contract.py.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torchmetrics import Metric

from fid_metric.checkpoint import EXTRA_STATE_KEY, load_states, merged_states
from fid_metric.sync import gather_rows, sync_states

_KEPT_COUNTS = "kept_features_per_process"  # not a state: the all_reduce's entry of the kept-feature counts


class StatesAcrossBoundaries(Metric):
    """The sync, checkpoint, merge and device-move hooks of a metric whose states are float64 sums."""

    reset_real_features: bool
    _symmetric_states: set[str]
    _real_states: list[str]
    _kept: dict[str, list[Tensor]]  # kept features per side, batches (fid_metric.kept_features); empty if none
    _kept_synced: dict[str, Tensor]  # every process's kept features, gathered by the last sync

    def identity(self) -> dict[str, object]:
        """What makes two metrics' sums addable (see ``FeatureSumsMetric.identity``)."""
        raise NotImplementedError

    def _sync_fields(self) -> dict[str, str]:
        """What every process must share for its sums to be added."""
        raise NotImplementedError

    def _world_and_rank(self) -> tuple[int, int]:
        """Size of the metric's process group and this process's rank in it."""
        raise NotImplementedError

    def _local_kept(self) -> dict[str, Tensor]:
        """This process's kept features per side (``fid_metric.kept_features``); empty if none are kept."""
        raise NotImplementedError

    def _kept_home(self) -> torch.device:
        """Where the kept features live (``KeptFeatures.home``)."""
        raise NotImplementedError

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any | None = None) -> None:
        # The configuration check and one all_reduce of every state (fid_metric.sync) instead of torchmetrics'
        # all_gather per state; dist_sync_fn is not used.
        group = process_group or self.process_group
        states = {name: getattr(self, name) for name in self._defaults}
        kept = self._local_kept()
        if kept:  # how many features each process keeps per side rides along in the all_reduce of the sums
            world, rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
            counts = torch.zeros(len(kept), world, dtype=torch.float64, device=self._state_device)
            counts[:, rank] = torch.tensor([float(len(rows)) for rows in kept.values()], dtype=torch.float64)
            states[_KEPT_COUNTS] = counts
        summed = sync_states(states, self._symmetric_states, self._sync_fields(), group)
        kept_counts = summed.pop(_KEPT_COUNTS, None)
        for name, value in summed.items():
            setattr(self, name, value)
        if kept_counts is not None:  # one all_gather per side, through the metric's device (NCCL needs CUDA)
            counts_by_side = kept_counts.long().tolist()
            self._kept_synced = {
                side: gather_rows(rows.to(self.device), counts, group).to(rows.device)
                for (side, rows), counts in zip(kept.items(), counts_by_side)
            }
        if not self.reset_real_features and self._cache is not None:
            # Fold the kept real sums onto rank 0: the local states that unsync() restores become the global
            # sums on rank 0 and zeros elsewhere, so rank 0's checkpoint holds every process's real statistics.
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
        # Every state checked before any changes (fid_metric.checkpoint.load_states), then copies assigned.
        loaded = load_states(self, state_dict, prefix, missing_keys)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for name, value in loaded.items():
            setattr(self, name, value.to(self._state_device))
        # A checkpoint holds the global real sums (see _sync_dist); each process loads it, so only rank 0 may
        # keep them or the next all_reduce would count them world_size times.
        if self._real_states[0] in loaded and self._world_and_rank()[1] != 0:
            for name in self._real_states:
                setattr(self, name, torch.zeros_like(getattr(self, name)))

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Add another metric's states (or a dict of them) to this one's, as torchmetrics does.

        Raises:
            StatsMismatchError: the other metric is of another class or ``identity()``, or a state's shape differs.
            ValueError: a state of the dict is missing, not a tensor, non-finite, or a count that is not one.
        """
        super().merge_state(merged_states(self, incoming_state))
        if isinstance(incoming_state, StatesAcrossBoundaries):  # its kept features follow ours
            for side, rows in incoming_state._local_kept().items():
                self._kept[side].append(rows.to(self._kept_home()))

    def _apply(self, fn: Callable, exclude_state: Any = "") -> StatesAcrossBoundaries:
        # Move the states with the module but never change their dtype: Lightning's precision="bf16-true"
        # calls module.to(torch.bfloat16), which torchmetrics would apply to the float64 sums.
        super()._apply(fn, exclude_state=tuple(self._defaults))
        device = self._state_device
        for name, default in self._defaults.items():
            self._defaults[name] = default.to(device)  # type: ignore[union-attr]  # tensor states only
            setattr(self, name, getattr(self, name).to(device))
        if self._kept:
            home = self._kept_home()
            self._kept = {side: [rows.to(home) for rows in batches] for side, batches in self._kept.items()}
        self._computed = None
        return self

    @property
    def _state_device(self) -> torch.device:
        # Apple's MPS has no float64: the network runs there, the float64 sums stay on the CPU.
        return torch.device("cpu") if self.device.type == "mps" else self.device
