"""What crosses a checkpoint, a merge or a process boundary: checked, converted, copied, and of one configuration.

A metric's *identity* is what makes two sets of its sums addable: the feature dimension, the extractor, the
compat pipeline, the weights' SHA-256 and the network arithmetic (``arithmetic``). ``state_dict()`` records it under
torch's extra-state key, and loading refuses a checkpoint of another identity (``StatsMismatchError``), as
statistics files are refused. Every state that enters a metric from outside goes through ``checked_state``:
the shape of this metric's state, float64 sums or int64 counts (other float dtypes converted, non-integral
counts refused), finite values, and a copy, so that two metrics loaded from one dict never share a tensor.
A list state (kept features) is checked as ``(n, d)`` rows of real numbers, kept in float32 or float64 (the
dtype that holds them exactly), and its rows must be as many as the side's count. States without a reduction
(``update_configuration``) describe the metric, not its data: never loaded or merged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fid_metric._features.inception import FIDInceptionV3
from fid_metric._files.stats import StatsMismatchError, identity_differences
from fid_metric._states.accumulator import Accumulators
from fid_metric._states.kept_features import kept_dtype


@dataclass(frozen=True)
class StateLayout:
    """What loading and merging need to know of a metric's states.

    Attributes:
        accumulators: the accumulators that own the data states (which are rows, which symmetric, what
            incoming states must satisfy together).
        templates: every data state's template (``Accumulators.templates``).
        persistent: the data states that ``state_dict()`` holds.
        descriptive: the states that describe the metric rather than its data (``update_configuration``):
            never loaded or merged.
    """

    accumulators: Accumulators
    templates: dict[str, Tensor]
    persistent: frozenset[str]
    descriptive: tuple[str, ...]


_log = logging.getLogger("fid_metric")

EXTRA_STATE_KEY = "_extra_state"  # torch's own name for a module's extra state in a state dict


def _described(differences: list[tuple[str, object, object]]) -> list[str]:
    return [f"{key}: {mine!r} vs {theirs!r}" for key, mine, theirs in differences]


def check_same_identity(mine: Mapping[str, object], theirs: object, what: str) -> None:
    """Raise ``StatsMismatchError`` unless ``theirs`` (a record from ``what``) matches this metric's identity."""
    if not isinstance(theirs, Mapping):
        raise StatsMismatchError(f"{what} records its configuration as {type(theirs).__name__}, not a dict.")
    differences = _described(identity_differences(mine, theirs))
    if differences:
        raise StatsMismatchError(
            f"{what} was made by a metric of another configuration ({'; '.join(differences)}; this metric's value "
            "first): its statistics cannot be combined with this metric's."
        )


def checked_state(name: str, value: object, template: Tensor, symmetric: bool, what: str) -> Tensor:
    """``value`` as a new tensor shaped, typed and placed like ``template``, or an error naming ``what`` and ``name``.

    Args:
        name: the state's name, for messages.
        value: the incoming state (a checkpoint's or another metric's tensor).
        template: this metric's state: ``float64`` sums or ``int64`` counts, on the state device.
        symmetric: the state is a stack of outer-product sums: symmetric with a non-negative diagonal.
        what: where the value comes from, for messages (e.g. ``"the checkpoint"``).

    Raises:
        StatsMismatchError: the shape is not the template's (another feature dimension or metric layout).
        ValueError: not a tensor, a non-numeric dtype, non-finite values, a negative or non-integral count,
            or a matrix that is not an outer-product sum.
    """
    where = f"{what}: state {name!r}"
    if not isinstance(value, Tensor):
        raise ValueError(f"{where} is a {type(value).__name__}, expected a tensor.")
    if value.shape != template.shape:
        raise StatsMismatchError(
            f"{where} has shape {tuple(value.shape)}, this metric's has {tuple(template.shape)}: it was made with "
            "another feature dimension or by another kind of metric."
        )
    if value.is_complex() or not (value.is_floating_point() or value.dtype in _INTEGER_DTYPES):
        raise ValueError(f"{where} has dtype {value.dtype}, expected a real number type ({template.dtype}).")
    value = value.detach()
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{where} holds NaN or infinite values.")
    if template.is_floating_point():
        checked = value.to(device=template.device, dtype=template.dtype, copy=True)
    else:
        if value.is_floating_point() and not bool((value == value.round()).all()):
            raise ValueError(f"{where} is a count, but holds non-integral values.")
        checked = value.to(device=template.device, dtype=template.dtype, copy=True)
        if bool((checked < 0).any()):
            raise ValueError(f"{where} is a count, but holds negative values.")
    if symmetric and not _is_outer_product_sum(checked):
        raise ValueError(f"{where} should be a sum of outer products x x^T: symmetric with a non-negative diagonal.")
    return checked


def checked_rows(name: str, value: object, template: Tensor, what: str) -> list[Tensor]:
    """A list state's incoming value (a list of ``(n_i, d)`` tensors, or one tensor) as one checked copy of its
    rows, in a list, on ``template``'s device and in the dtype that holds them exactly.

    Raises:
        StatsMismatchError: rows of another width than ``template``'s d.
        ValueError: not a list of tensors, not 2-d, a non-numeric dtype, or NaN or infinite values.
    """
    where = f"{what}: state {name!r}"
    parts = [value] if isinstance(value, Tensor) else value
    if not isinstance(parts, (list, tuple)) or not all(isinstance(part, Tensor) for part in parts):
        raise ValueError(f"{where} is a {type(value).__name__}, expected a list of (n, d) feature tensors.")
    d = template.shape[1]
    for part in parts:
        if part.ndim != 2 or part.shape[1] != d:
            raise StatsMismatchError(
                f"{where} holds features of shape {tuple(part.shape)}, this metric's are (n, {d}): they were made "
                "with another feature dimension."
            )
        if part.is_complex() or not (part.is_floating_point() or part.dtype in _INTEGER_DTYPES):
            raise ValueError(f"{where} has dtype {part.dtype}, expected real numbers.")
        if part.is_floating_point() and not bool(torch.isfinite(part).all()):
            raise ValueError(f"{where} holds NaN or infinite values.")
    if not parts:
        return []
    dtype = torch.float64 if any(kept_dtype(part.dtype) == torch.float64 for part in parts) else torch.float32
    return [torch.cat([part.detach().to(template.device, dtype) for part in parts])]


def _is_outer_product_sum(matrices: Tensor) -> bool:
    """Symmetric to round-off (1e-10 of the largest entry) with a non-negative diagonal, over the last two dims."""
    scale = matrices.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(matrices.dtype).tiny)
    asymmetry = ((matrices - matrices.transpose(-2, -1)).abs() / scale).amax()
    return bool(asymmetry <= 1e-10) and bool((matrices.diagonal(dim1=-2, dim2=-1) >= 0).all())


_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def load_states(
    state_dict: dict,
    prefix: str,
    identity: Callable[[], Mapping[str, object]],
    layout: StateLayout,
    missing_keys: list[str],
) -> dict[str, Any]:
    """Pop a metric's states (and its configuration record) from a state dict being loaded, check them all, and
    return checked copies to assign; nothing of the metric changes here.

    Each side's states (``real_*``; ``fake_*`` with the Inception Score's and FID-infinity's) are one unit: a
    state dict with some but not all of a side's is refused with ``ValueError`` whatever ``strict`` says, since
    a part of the sums gives a wrong FID. Persistent states of a side it does not hold at all are reported in
    ``missing_keys``, as torch does for parameters (an error under ``strict=True``). A record of another
    ``identity`` is refused with ``StatsMismatchError`` (a state dict without one is checked by its shapes). The
    states are popped so that torchmetrics' own loader, which would keep the caller's tensors, never sees them.
    """
    what = f"the checkpoint's {prefix.rstrip('.') or 'metric'}"
    record = state_dict.pop(prefix + EXTRA_STATE_KEY, None)
    if record is not None:
        check_same_identity(identity(), record, what)
    if _pop_torchmetrics_network(state_dict, prefix, what) and record is None:
        _check_torchmetrics_compatible(identity(), what)
    for name in layout.descriptive:
        state_dict.pop(prefix + name, None)
    names = list(layout.templates)
    incoming = {name: state_dict.pop(prefix + name) for name in names if prefix + name in state_dict}
    sides = {_side(name) for name in incoming}
    partial = [name for name in names if _side(name) in sides and name not in incoming]
    if partial:
        raise ValueError(
            f"{what} holds {sorted(incoming)} but not {partial}: a side's statistics load whole or not at all (a "
            "part of them gives a wrong FID), so nothing was loaded."
        )
    # torch passes strict=True to modules and drops these itself under strict=False
    missing_keys.extend(prefix + name for name in names if name in layout.persistent and name not in incoming)
    return _checked(layout, incoming, what)


def _side(name: str) -> str:
    """The side a state belongs to: ``real_*`` the real images', every other the generated images'."""
    return "real" if name.startswith("real_") else "fake"


def _checked(layout: StateLayout, states: Mapping[str, object], what: str) -> dict[str, Any]:
    """Checked copies of ``states`` (a subset of the data states), consistent as their accumulators require."""
    symmetric = layout.accumulators.symmetric_states
    checked: dict[str, Any] = {
        name: checked_rows(name, value, layout.templates[name], what)
        if layout.accumulators.is_rows(name)
        else checked_state(name, value, layout.templates[name], name in symmetric, what)
        for name, value in states.items()
    }
    layout.accumulators.check_incoming(checked, what)
    return checked


TORCHMETRICS_NETWORK_KEY = "inception."  # torchmetrics' FrechetInceptionDistance keeps its network's weights here
# torchmetrics' antialias=True resize is compat="torchmetrics", its antialias=False resize compat="tensorflow"
_TORCHMETRICS_COMPAT = ("torchmetrics", "tensorflow")


def _pop_torchmetrics_network(state_dict: dict, prefix: str, what: str) -> bool:
    """Remove the FID Inception weights that torchmetrics' ``FrechetInceptionDistance`` writes into its state dict
    (566 ``inception.*`` entries), after checking that they are that network; True if there were any.

    The metric loads its network from its weights file, never from a checkpoint; torchmetrics' entries are
    recognised so that a module migrated from torchmetrics loads its checkpoint with ``strict=True``.

    Raises:
        StatsMismatchError: ``inception.*`` entries of another network.
    """
    start = prefix + TORCHMETRICS_NETWORK_KEY
    entries = {key[len(start) :]: state_dict[key] for key in state_dict if key.startswith(start)}
    if not entries:
        return False
    with torch.device("meta"):  # names and shapes only: nothing allocated or initialised
        expected = {name: tensor.shape for name, tensor in FIDInceptionV3().state_dict().items()}
    got = {name: getattr(value, "shape", None) for name, value in entries.items()}
    if got != expected:
        raise StatsMismatchError(
            f"{what} holds {len(entries)} {start}* entries that are not the FID Inception network's {len(expected)} "
            "(as torchmetrics' FrechetInceptionDistance writes them): it was not written by an Inception FID."
        )
    for name in entries:
        del state_dict[start + name]
    _log.info("%s: skipped torchmetrics' %d %s* entries (fid_metric loads its own weights)", what, len(entries), start)
    return True


def _check_torchmetrics_compatible(identity: Mapping[str, object], what: str) -> None:
    """A torchmetrics checkpoint's sums are of the FID Inception with one of torchmetrics' two resizes."""
    extractor, compat = str(identity.get("extractor", "")), identity.get("compat")
    if not extractor.startswith("inception-") or compat not in _TORCHMETRICS_COMPAT:
        raise StatsMismatchError(
            f"{what} was written by torchmetrics' FrechetInceptionDistance (the FID Inception with "
            f"compat={' or '.join(map(repr, _TORCHMETRICS_COMPAT))}), this metric is {extractor} with "
            f"compat={compat!r}: its statistics cannot be combined with this metric's."
        )


def check_mergeable(mine: Mapping[str, object], theirs: Mapping[str, object]) -> None:
    """Raise ``StatsMismatchError`` unless two metrics' merge records (class, identity, accumulators) agree."""
    differences = _described(identity_differences(mine, theirs))
    if differences:
        raise StatsMismatchError(
            f"Cannot merge metrics of different configurations ({'; '.join(differences)}; this metric's value "
            "first): their statistics cannot be added."
        )


def merged_states(
    states: Mapping[str, object], identity: Callable[[], Mapping[str, object]], layout: StateLayout
) -> dict[str, Any]:
    """Checked copies of another metric's data states (its ``metric_state``, or a dict of states, e.g. a
    ``state_dict()``, whose configuration record must match ``identity``), for ``merge_state``.

    Raises:
        StatsMismatchError: another ``identity()``, or a state's shape differs.
        ValueError: a state is missing, not a tensor, non-finite, or a count that is not one.
    """
    if EXTRA_STATE_KEY in states:  # a state_dict(): its configuration record
        check_same_identity(identity(), states[EXTRA_STATE_KEY], "merge_state's dict")
    names = list(layout.templates)
    missing = [name for name in names if name not in states]
    if missing:
        raise ValueError(
            f"merge_state's input lacks the states {missing} that this metric keeps: it comes from a metric built "
            "otherwise (e.g. without precision_recall or kid), whose statistics cannot complete this one's."
        )
    return _checked(layout, {name: states[name] for name in names}, "merge_state's input")
