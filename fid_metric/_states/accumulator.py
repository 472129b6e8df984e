"""What an accumulator is, and the set of them a metric holds.

An accumulator owns some of a metric's states: it declares them (name, default, side), adds a batch's network
outputs to them, and says how each behaves at every boundary: which ones the DDP all_reduce sums (tensors) and
which it gathers (rows), which are symmetric matrices, which belong to the real side (kept by
``reset_real_features=False``, and then saved in checkpoints), where a state lives after a device move, and
what incoming states (a checkpoint's, a merge's) must satisfy together. The metric calls these the same way for
every accumulator, through ``Accumulators``.

The states are torchmetrics states (``Metric.add_state``), so they are attributes of the metric under their
names; an accumulator reads and writes them there, and holds nothing itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, TypeVar, cast

import torch
from torch import Tensor
from torchmetrics import Metric

SIDES = ("real", "fake")
SIDE_NAMES = {"real": "real", "fake": "generated"}  # a state's side prefix -> the word messages use

State = Tensor | list[Tensor]
A = TypeVar("A", bound="Accumulator")


class Accumulator:
    """The base of every accumulator; subclasses define ``defaults`` and ``add``, and override the boundary
    behaviour where theirs differs from a tensor summed across processes."""

    def defaults(self) -> dict[str, State]:
        """Each state's name and initial value: a float64 or int64 tensor (summed), or ``[]`` (rows, gathered)."""
        raise NotImplementedError

    def add(self, metric: Metric, side: str, outputs: dict[str, Tensor], positions: range) -> None:
        """Add a batch's outputs (``name -> (N, ...)``, as the extractor gave them) of ``side``; ``positions``:
        the images' positions in the sampler's order (``fid_metric._states.exactly_once.sampler_positions``)."""
        raise NotImplementedError

    def real_states(self) -> tuple[str, ...]:
        """The states of the real side: ``reset()`` keeps them with ``reset_real_features=False``, and they are
        then in ``state_dict()``."""
        return ()

    def symmetric_states(self) -> frozenset[str]:
        """States that are stacks of symmetric matrices (outer-product sums): the all_reduce carries only their
        upper triangles, and incoming ones must be symmetric with a non-negative diagonal."""
        return frozenset()

    def register(self, metric: Metric, keep_real: bool) -> dict[str, bool]:
        """``Metric.add_state`` for each state (tensors summed, lists concatenated); returns each state's name and
        whether it is a list state."""
        real = self.real_states()
        registered = {}
        for name, default in self.defaults().items():
            registered[name] = isinstance(default, list)
            metric.add_state(name, default, "cat" if registered[name] else "sum", persistent=keep_real and name in real)
        return registered

    def rows(self, metric: Metric, name: str) -> Tensor:
        """The list state ``name``'s rows, ``(n, d)``, as the sync gathers them (a tensor-only accumulator has
        none)."""
        raise KeyError(name)

    def row_template(self, metric: Metric, name: str) -> Tensor:
        """An empty ``(0, d)`` tensor where the list state ``name``'s rows live."""
        raise KeyError(name)

    def placed(self, metric: Metric, name: str, value: State, device: torch.device) -> State:
        """Where a state goes when the metric moves to ``device``."""
        if isinstance(value, list):
            return [rows.to(device) for rows in value]
        return value.to(device)

    def check_incoming(self, states: Mapping[str, object], what: str) -> None:
        """Raise ``ValueError`` where checked incoming states of this accumulator do not belong together (a
        checkpoint's, a merge's); each alone has been checked against its template."""


class Accumulators:
    """The accumulators of one metric, in registration order, and their states as one whole."""

    def __init__(self) -> None:
        self._members: list[Accumulator] = []
        self._owner: dict[str, Accumulator] = {}
        self._listed: set[str] = set()  # the list states (rows), the others being tensors

    def __iter__(self) -> Iterator[Accumulator]:
        return iter(self._members)

    def __repr__(self) -> str:
        return ";".join(map(repr, self._members))

    def description(self, rows: bool = True) -> str:
        """The accumulators' configurations; ``rows=False`` leaves out those that keep only rows (where kept
        features live does not matter to a merge)."""
        summing = {id(owner) for name, owner in self._owner.items() if name not in self._listed}
        return ";".join(repr(a) for a in self._members if rows or id(a) in summing)

    def append(self, accumulator: Accumulator, metric: Metric, keep_real: bool) -> None:
        """Register ``accumulator``'s states with ``metric`` and add it to the set."""
        for name, listed in accumulator.register(metric, keep_real).items():
            self._owner[name] = accumulator
            if listed:
                self._listed.add(name)
        self._members.append(accumulator)

    def get(self, kind: type[A]) -> A | None:
        """The accumulator of class ``kind``, if one was registered."""
        return next((cast(A, a) for a in self._members if isinstance(a, kind)), None)

    @property
    def names(self) -> tuple[str, ...]:
        """Every state the accumulators hold, in registration order."""
        return tuple(self._owner)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The extractor outputs the accumulators read, each once."""
        return tuple(dict.fromkeys(cast(Any, a).output for a in self._members))

    @property
    def real_states(self) -> tuple[str, ...]:
        return tuple(name for a in self._members for name in a.real_states())

    @property
    def symmetric_states(self) -> frozenset[str]:
        return frozenset().union(*(a.symmetric_states() for a in self._members))

    def is_rows(self, name: str) -> bool:
        """Whether ``name`` is a list state (rows, gathered) rather than a tensor (summed)."""
        return name in self._listed

    def add(self, metric: Metric, side: str, outputs: dict[str, Tensor], positions: range) -> None:
        for accumulator in self._members:
            accumulator.add(metric, side, outputs, positions)

    def sums(self, metric: Metric) -> dict[str, Tensor]:
        """The tensor states, as the all_reduce sums them."""
        return {name: state(metric, name) for name in self._owner if name not in self._listed}

    def rows(self, metric: Metric) -> dict[str, Tensor]:
        """Each list state's rows, ``(n, d)``, as the sync gathers them."""
        return {name: self._owner[name].rows(metric, name) for name in self._owner if name in self._listed}

    def templates(
        self, metric: Metric, defaults: Mapping[str, State], descriptive: tuple[str, ...] = ()
    ) -> dict[str, Tensor]:
        """Every data state's template, which incoming values are checked against: its default tensor, or for a
        list state an empty ``(0, d)`` tensor where its rows live. ``descriptive``: the metric's states that
        describe it rather than its data.

        Raises:
            TypeError: a state that neither an accumulator owns nor ``descriptive`` names (a subclass's
                ``add_state``), which no boundary would handle.
        """
        unowned = set(defaults) - set(descriptive) - set(self._owner)
        if unowned:
            raise TypeError(
                f"{type(metric).__name__} syncs, saves and merges its accumulators' states only, not "
                f"{sorted(unowned)}: keep other states in a metric of their own (e.g. in a MetricCollection)."
            )
        return {
            name: self._owner[name].row_template(metric, name) if name in self._listed else cast(Tensor, default)
            for name, default in defaults.items()
            if name in self._owner
        }

    def placed(self, metric: Metric, states: Mapping[str, State], device: torch.device) -> dict[str, State]:
        """Each state as its accumulator places it on ``device``; a state no accumulator owns goes there as is."""
        return {
            name: (self._owner[name] if name in self._owner else _UNOWNED).placed(metric, name, value, device)
            for name, value in states.items()
        }

    def check_incoming(self, states: Mapping[str, object], what: str) -> None:
        for accumulator in self._members:
            accumulator.check_incoming(states, what)


_UNOWNED = Accumulator()  # places a state no accumulator owns (the metric's update_configuration)


def state(metric: Metric, name: str) -> Tensor:
    """The metric's tensor state ``name`` (``Metric.add_state`` makes it an attribute)."""
    return cast(Tensor, getattr(metric, name))


def as_float64(x: Tensor, like: Tensor) -> Tensor:
    """A network output as float64 on the device of the state ``like`` (exact from every real dtype up to 53 bits)."""
    return x.to(like.device, torch.float64)


def add_outer_products(total: Tensor, outer: Tensor, x: Tensor) -> None:
    """``total += sum_i x_i`` and ``outer += sum_i x_i x_i^T`` for ``(N, d)`` float64 ``x``: the one place where
    feature sums accumulate."""
    total.add_(x.sum(0))
    outer.addmm_(x.T, x)


def index_on(values: list[int], device: torch.device) -> Tensor:
    """An int64 index tensor on ``device``, copied from pinned memory so that it does not wait for the GPU."""
    index = torch.tensor(values, dtype=torch.int64)
    return index if device.type == "cpu" else index.pin_memory().to(device, non_blocking=True)


def copy_state(value: State) -> State:
    """A copy of a state's value that no in-place change of the original reaches: a tensor cloned, a list of
    rows copied (its tensors are never changed in place)."""
    return list(value) if isinstance(value, list) else value.clone()


def empty_like(value: State) -> State:
    """A state with nothing added: zeros of a tensor state, an empty list."""
    return [] if isinstance(value, list) else torch.zeros_like(value)
