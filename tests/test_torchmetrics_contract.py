"""The private torchmetrics members fid_metric relies on, each checked where it can change.

fid_metric overrides ``Metric._sync_dist`` (one all_reduce instead of an all_gather per state) and
``Metric._apply`` (float64 states under ``module.to(torch.bfloat16)``), reads ``_defaults`` (the states and
their templates), ``_persistent`` (which states ``state_dict`` writes), ``_cache`` (the local states that
``unsync()`` restores), ``_is_synced`` and ``_computed``, and calls ``_plot`` (the figure behind ``plot()``).
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
