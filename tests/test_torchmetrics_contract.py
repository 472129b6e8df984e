"""The private torchmetrics members fid_metric relies on, each checked where it can change.

fid_metric overrides ``Metric._sync_dist`` (one all_reduce instead of an all_gather per state),
``Metric._apply`` (float64 states under ``module.to(torch.bfloat16)``) and ``Metric._copy_state_dict`` (what
``sync()`` caches for ``unsync()``), reads ``_defaults`` (the states and their templates), ``_reductions``
(None: a state that describes the metric), ``_persistent`` (which states ``state_dict`` writes), ``_cache``
(the local states that ``unsync()`` restores), ``_is_synced`` (True while ``unsync()`` restores the states:
not a change of them) and ``_computed``, and calls ``_plot`` (the figure behind ``plot()``). It also relies on
``MetricCollection`` sharing states only between metrics whose states compare equal.
torchmetrics does not promise these, so ``pyproject.toml`` bounds it below 2 and each is checked here: a
torchmetrics release that changes one fails this module, not a user's FID.
"""

from __future__ import annotations

import inspect

import torch
from torchmetrics import Metric


class _Sum(Metric):
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(3, dtype=torch.float64), "sum", persistent=True)
        self.add_state("count", torch.tensor(0), "sum")
        self.synced_with: list[object] = []

    def update(self, x: torch.Tensor) -> None:
        self.total += x
        self.count += 1

    def compute(self) -> torch.Tensor:
        return self.total / self.count

    def _sync_dist(self, dist_sync_fn=None, process_group=None) -> None:
        self.synced_with.append(process_group)
        self.total = self.total * 10  # what a sync would do: replace the states by their global values


def test_state_bookkeeping_attributes() -> None:
    metric = _Sum()
    assert set(metric._defaults) == {"total", "count"} and torch.equal(
        metric._defaults["total"], torch.zeros(3).double()
    )
    assert metric._persistent == {"total": True, "count": False}
    assert metric._is_synced is False and metric._cache is None and metric._computed is None
    assert set(metric.state_dict()) == {"total"}  # state_dict() writes the _persistent states


def test_sync_calls_sync_dist_and_unsync_restores_the_cache() -> None:
    metric = _Sum()
    metric.update(torch.ones(3, dtype=torch.float64))
    metric.sync(process_group="group", distributed_available=lambda: True)
    assert metric.synced_with == ["group"] and metric._is_synced
    assert torch.equal(metric.total, torch.full((3,), 10.0).double())
    assert torch.equal(metric._cache["total"], torch.ones(3).double())  # the local states, before the sync
    metric._cache["total"] = torch.full((3,), 7.0).double()  # fid_metric folds the real sums onto rank 0 here
    metric.unsync()
    assert not metric._is_synced and torch.equal(metric.total, torch.full((3,), 7.0).double())


def test_compute_caches_in_computed_and_apply_takes_exclude_state() -> None:
    metric = _Sum()
    metric.update(torch.ones(3, dtype=torch.float64))
    metric.compute()
    assert metric._computed is not None
    assert "exclude_state" in inspect.signature(Metric._apply).parameters
    metric._apply(lambda t: t.float(), exclude_state=("total",))
    assert metric.total.dtype == torch.float64  # excluded states keep their dtype


def test_plot_draws_through_underscore_plot() -> None:
    """``Metric._plot(val, ax)`` draws ``val`` (or ``compute()``) and returns ``(figure, axis)``."""
    import matplotlib

    matplotlib.use("Agg")
    metric = _Sum()
    metric.update(torch.ones(3, dtype=torch.float64))
    assert list(inspect.signature(Metric._plot).parameters)[1:] == ["val", "ax"]
    figure, axis = metric._plot(torch.tensor(1.5), None)
    assert figure is axis.figure


class _Rows(_Sum):
    """_Sum plus a list state and a state without a reduction; records ``_is_synced`` at every state assignment."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("rows", [], "cat")
        self.add_state("tag", torch.zeros(2), dist_reduce_fx=None)
        self.assigned: list[tuple[str, bool]] = []

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if name in self.__dict__.get("_defaults", ()):
            self.__dict__.setdefault("assigned", []).append((name, self._is_synced))

    def _copy_state_dict(self) -> dict:
        self.assigned.append(("_copy_state_dict", self._is_synced))
        return super()._copy_state_dict()


def test_reductions_and_list_states_on_reset() -> None:
    metric = _Rows()
    assert metric._reductions["tag"] is None and metric._reductions["total"] is not None
    rows = metric.rows
    rows.append(torch.ones(2, 3))
    metric.reset()
    assert metric.rows is rows and rows == []  # reset() clears a list state in place: keep a copy to restore


def test_sync_caches_through_copy_state_dict_and_unsync_assigns_while_synced() -> None:
    """fid_metric's state-change hook counts assignments made while ``_is_synced`` is False (a sync's global
    states) and ignores those made while it is True (unsync restoring the local ones)."""
    metric = _Rows()
    metric.update(torch.ones(3, dtype=torch.float64))
    metric.assigned.clear()
    metric.sync(distributed_available=lambda: True)
    assert metric.assigned == [("_copy_state_dict", False), ("total", False)]
    metric.assigned.clear()
    metric.unsync()
    assert metric.assigned and all(synced for _, synced in metric.assigned)


def test_compute_caches_after_unsync() -> None:
    """The compute wrapper stores ``_computed`` after ``unsync()``: assignments during unsync cannot drop it."""
    metric = _Rows()
    metric.update(torch.ones(3, dtype=torch.float64))
    metric.distributed_available_fn = lambda: True
    value = metric.compute()
    assert metric._computed is not None and torch.equal(metric._computed, value)


def test_metric_collection_shares_states_only_between_metrics_whose_states_are_equal() -> None:
    from torchmetrics import MetricCollection

    first, second = _Rows(), _Rows()
    second.tag = torch.ones(2)
    second._defaults["tag"] = torch.ones(2)
    collection = MetricCollection({"a": first, "b": second})
    collection.update(torch.ones(3, dtype=torch.float64))
    assert collection.compute_groups == {0: ["a"], 1: ["b"]}
    same = MetricCollection({"a": _Rows(), "b": _Rows()})
    same.update(torch.ones(3, dtype=torch.float64))
    assert same.compute_groups == {0: ["a", "b"]}
