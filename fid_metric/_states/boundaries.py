"""Where a metric's states cross a boundary: the DDP sync, checkpoints, merges and device moves, and what any
change of them invalidates.

``StatesAcrossBoundaries`` overrides the torchmetrics and torch hooks involved, each a few lines over
``fid_metric._states.sync`` (the configuration check, the one all_reduce, the gathers of list states) and
``fid_metric._states.checkpoint`` (states checked and copied, configurations refused). Two kinds of state: float64 sums
and int64 counts (tensors, summed by the all_reduce) and lists of ``(n_i, d)`` feature rows (the kept features,
gathered in the sampler's order).

Derived results (torchmetrics' cached ``compute()`` value and this package's ``_derived``, e.g.
``fid_by_size``) are dropped by ``_state_changed()``, which runs whenever a state is assigned (load, merge,
reset, device move, a DDP sync, ``MetricCollection``'s shared states, a user's assignment) and at every
``update()`` (which adds in place). Restoring the local states after a sync (``unsync``) is not a change.

What it reads of the metric above it (``fid_metric._metrics.base.FeatureSumsMetric``): ``identity()``,
``_sync_fields()``, ``_symmetric_states``, ``_real_states``, ``reset_real_features``, ``_world_and_rank()``,
``_templates`` and ``_row_states``. The torchmetrics members it overrides or reads are checked by
tests/test_torchmetrics_contract.py.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torchmetrics import Metric

from fid_metric._files.stats import StatsMismatchError
from fid_metric._states.checkpoint import EXTRA_STATE_KEY, load_states, merged_states
from fid_metric._states.sync import gather_rows, sync_states

_ROW_COUNTS = "rows_per_process"  # not a state: the all_reduce's entry of the list states' row counts


class StatesAcrossBoundaries(Metric):
    """The sync, checkpoint, merge and device-move hooks of a metric whose states are float64 sums and rows."""

    reset_real_features: bool
    _symmetric_states: set[str]
    _real_states: list[str]

    def identity(self, with_hash: bool = True) -> dict[str, object]:
        """What makes two metrics' sums addable (see ``FeatureSumsMetric.identity``)."""
        raise NotImplementedError

    def _sync_fields(self) -> dict[str, str]:
        """What every process must share for its sums to be added."""
        raise NotImplementedError

    def _accumulation(self) -> str:
        """What the states hold beyond the identity (see ``FeatureSumsMetric._accumulation``)."""
        raise NotImplementedError

    def _world_and_rank(self) -> tuple[int, int]:
        """Size of the metric's process group and this process's rank in it."""
        raise NotImplementedError

    @property
    def _templates(self) -> dict[str, Tensor]:
        """Every state's template: its default tensor, or for a list state an empty ``(0, d)`` tensor where its rows
        live."""
        raise NotImplementedError

    @property
    def _row_states(self) -> dict[str, Tensor]:
        """Each list state's rows, concatenated: ``(n, d)``."""
        raise NotImplementedError

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in self.__dict__.get("_defaults", ()) and not self.__dict__.get("_is_synced", False):
            self._state_changed()

    def _state_changed(self) -> None:
        """Drop every result derived from the states: they no longer answer for the states as they are now."""
        self.__dict__["_computed"] = None
        self.__dict__.setdefault("_derived", {}).clear()

    def _copy_state_dict(self) -> dict[str, Tensor | list[Tensor]]:
        # What unsync() restores: the states themselves, not clones. _sync_dist assigns new tensors and lists and
        # never changes a state in place, so the local ones stay intact without copying (a list state of 50,000
        # features would be 410 MB more on the device for the length of a compute()).
        return {name: list(value) if isinstance(value, list) else value for name, value in self.metric_state.items()}

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any | None = None) -> None:
        # The configuration check and one all_reduce of every sum instead of torchmetrics' all_gather per state;
        # list states follow in one all_gather each. dist_sync_fn is not used.
        group = process_group or self.process_group
        sums = {  # states without a reduction describe the metric (equal on every process: the check makes sure)
            name: getattr(self, name)
            for name, default in self._defaults.items()
            if isinstance(default, Tensor) and self._reductions[name] is not None
        }
        rows = self._row_states
        if rows:  # how many rows each process holds per list state rides along in the all_reduce of the sums
            world, rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
            counts = torch.zeros(len(rows), world, dtype=torch.float64, device=self._state_device)
            counts[:, rank] = torch.tensor([float(len(r)) for r in rows.values()], dtype=torch.float64)
            sums[_ROW_COUNTS] = counts
        summed = _collective(lambda: sync_states(sums, self._symmetric_states, self._sync_fields(), group))
        row_counts = summed.pop(_ROW_COUNTS, None)
        for name, value in summed.items():
            setattr(self, name, value)
        if row_counts is not None:  # float64 through the metric's device (NCCL needs CUDA), back where they live
            for (name, local), counts_of_name in zip(rows.items(), row_counts.long().tolist()):
                gathered = _collective(
                    lambda: gather_rows(local.to(self.device, torch.float64), counts_of_name, group)  # noqa: B023
                )
                setattr(self, name, [gathered.to(local.device)])
        if not self.reset_real_features and self._cache is not None:
            # Fold the kept real states onto rank 0: the local states that unsync() restores become the global
            # ones on rank 0 and empty elsewhere, so rank 0's checkpoint holds every process's real statistics.
            is_rank0 = torch.distributed.get_rank(group) == 0
            for name in self._real_states:
                value = getattr(self, name)
                self._cache[name] = copy_state(value) if is_rank0 else _empty_like(value)

    def persistent(self, mode: bool = False) -> None:
        """torchmetrics' ``persistent``: whether the states enter ``state_dict()``; those without a reduction
        (``update_configuration``, which describes the metric, not its data) never do."""
        super().persistent(mode)
        for name in self._defaults:
            self._persistent[name] = mode and self._reductions[name] is not None

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
        # Every state checked before any changes (fid_metric._states.checkpoint.load_states), then copies assigned.
        loaded = load_states(self, state_dict, prefix, missing_keys)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for name, value in loaded.items():
            setattr(self, name, value)
        # A checkpoint holds the global real states (see _sync_dist); each process loads it, so only rank 0 may
        # keep them or the next all_reduce would count them world_size times.
        if self._real_states and self._real_states[0] in loaded and self._world_and_rank()[1] != 0:
            for name in self._real_states:
                setattr(self, name, _empty_like(getattr(self, name)))

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Add another metric's states (or a dict of them) to this one's, as torchmetrics does: sums add, kept
        features are appended after this metric's.

        Raises:
            StatsMismatchError: the other metric is of another class or ``identity()``, or a state's shape differs.
            ValueError: a state of the dict is missing, not a tensor, non-finite, or a count that is not one.
        """
        for name, value in merged_states(self, incoming_state).items():
            setattr(self, name, getattr(self, name) + value)  # tensors add, lists concatenate: new objects

    def _apply(self, fn: Callable, exclude_state: Any = "") -> StatesAcrossBoundaries:
        # Move the states with the module but never change their dtype: Lightning's precision="bf16-true"
        # calls module.to(torch.bfloat16), which torchmetrics would apply to the float64 sums.
        super()._apply(fn, exclude_state=tuple(self._defaults))
        device = self._state_device
        templates = self._templates
        for name, default in self._defaults.items():
            value = getattr(self, name)
            if isinstance(default, Tensor):
                self._defaults[name] = default.to(device)
                setattr(self, name, value.to(device))
            else:
                setattr(self, name, [rows.to(templates[name].device) for rows in value])
        return self

    @property
    def _state_device(self) -> torch.device:
        # Apple's MPS has no float64: the network runs there, the float64 sums stay on the CPU.
        return torch.device("cpu") if self.device.type == "mps" else self.device


def copy_state(value: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
    """A copy of a state's value that no in-place change of the original reaches: a tensor cloned, a list of
    rows copied (its tensors are never changed in place)."""
    return list(value) if isinstance(value, list) else value.clone()


def _empty_like(value: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
    """A state with nothing added: zeros of a tensor state, an empty list."""
    return [] if isinstance(value, list) else torch.zeros_like(value)


_COLLECTIVE_HINT = (
    "compute() (and statistics(), save_real_stats()) is a collective under DDP: every process of the group must "
    "call it, in the same order as its other collectives. A process that skipped it (e.g. `if rank == 0: "
    "metric.compute()`), or that failed, leaves the others waiting or mismatched."
)


def _collective(run: Callable[[], Any]) -> Any:
    """``run()``, one of the sync's collectives; a failure of the collective itself says what usually causes it."""
    try:
        return run()
    except StatsMismatchError:
        raise
    except RuntimeError as err:  # gloo: "Connection closed by peer", timeouts, size mismatches; NCCL: its errors
        raise RuntimeError(f"The metric's sync failed: {err}. {_COLLECTIVE_HINT}") from err
