"""The one all_reduce: every metric state packed into a single float64 buffer, summed across processes.

Sums add exactly, so the buffer's size never grows with the data or the number of processes. Symmetric
``(..., d, d)`` states (outer-product sums) travel as their upper triangles, which halves the bytes; counts
travel as float64, exact below 2**53. Before it, ``check_same_configuration`` makes sure that every process
adds the same kind of sums: buffers of different sizes cannot be reduced at all (gloo aborts the process),
and equal sizes from different pipelines would silently average two definitions of FID.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from fid_metric._files.stats import StatsMismatchError
from fid_metric._states.accumulator import Accumulators, State

_ROW_COUNTS = "rows_per_process"  # not a state: the all_reduce's entry of the list states' row counts


def sync_accumulators(
    accumulators: Accumulators, metric: Metric, fields: dict[str, str], group: Any | None = None
) -> dict[str, State]:
    """Every state of ``accumulators`` over the processes of ``group``: the configuration check, one all_reduce of
    the tensor states (with each process's row counts riding along), then one all_gather per list state, its rows
    in the sampler's order, in float64 through ``metric.device`` (NCCL needs CUDA) and back where they live.

    Returns the new values (new tensors and lists; nothing of the metric is changed).

    Raises:
        StatsMismatchError: the processes' ``fields`` differ.
        RuntimeError: a collective failed; the message says what usually causes it.
    """
    sums = accumulators.sums(metric)
    rows = accumulators.rows(metric)
    if rows:
        world, rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
        device = next(iter(sums.values())).device
        counts = torch.zeros(len(rows), world, dtype=torch.float64, device=device)
        counts[:, rank] = torch.tensor([float(len(r)) for r in rows.values()], dtype=torch.float64)
        sums[_ROW_COUNTS] = counts
    summed = _collective(lambda: sync_states(sums, set(accumulators.symmetric_states), fields, group))
    row_counts = summed.pop(_ROW_COUNTS, None)
    synced: dict[str, State] = dict(summed)
    if row_counts is not None:
        for (name, local), counts_of_name in zip(rows.items(), row_counts.long().tolist()):
            gathered = _collective(
                lambda: gather_rows(local.to(metric.device, torch.float64), counts_of_name, group)  # noqa: B023
            )
            synced[name] = [gathered.to(local.device)]
    return synced


def sync_states(
    states: dict[str, Tensor], symmetric: set[str], fields: dict[str, str], group: Any | None = None
) -> dict[str, Tensor]:
    """``check_same_configuration(fields)``, then ``all_reduce_sum(states)``: a metric's whole sync."""
    check_same_configuration(fields, next(iter(states.values())).device, group)
    return all_reduce_sum(states, symmetric, group)


def check_same_configuration(fields: dict[str, str], device: torch.device, group: Any | None = None) -> None:
    """Raise ``StatsMismatchError`` on every process of ``group`` unless all hold the same ``fields``.

    One ``all_reduce`` (MAX) of ``2 * len(fields)`` int64: each field's 63-bit hash and its negation, which
    give the largest and the smallest hash over the processes; a field differs where those do. Every process
    sees the same result, so all raise together and none is left waiting in the next collective.

    Args:
        fields: name -> the value, as text, that every process must share (e.g. ``"compat": "tensorflow"``).
        device: where the collective's tensor lives (a CUDA device for NCCL).
        group: the process group; None for the default one.
    """
    hashes = [int.from_bytes(hashlib.sha256(value.encode()).digest()[:8], "big") >> 1 for value in fields.values()]
    extremes = torch.tensor(hashes + [-h for h in hashes], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(extremes, op=torch.distributed.ReduceOp.MAX, group=group)
    largest, smallest = extremes[: len(hashes)].tolist(), [-v for v in extremes[len(hashes) :].tolist()]
    differing = [name for name, hi, lo in zip(fields, largest, smallest) if hi != lo]
    if differing:
        rank = torch.distributed.get_rank(group)
        mine = "; ".join(f"{name}={fields[name]!r}" for name in differing)
        raise StatsMismatchError(
            f"The processes' metrics differ in {', '.join(differing)} (rank {rank} has {mine}), so their statistics "
            "cannot be added: build the metric with the same arguments, weights and data size on every process."
        )


def all_reduce_sum(states: dict[str, Tensor], symmetric: set[str], group: Any | None = None) -> dict[str, Tensor]:
    """Sum ``states`` over the processes of ``group`` with one ``torch.distributed.all_reduce``.

    Args:
        states: name -> tensor, any shapes and dtypes (returned with the same shapes and dtypes).
        symmetric: names of states that are symmetric in their last two dimensions.
        group: the process group; None for the default one.
    """
    flags = {name: name in symmetric for name in states}
    packed = torch.cat([_pack(state, flags[name]) for name, state in states.items()])
    torch.distributed.all_reduce(packed, group=group)
    summed, offset = {}, 0
    for name, template in states.items():
        size = _packed_size(template, flags[name])
        summed[name] = _unpack(packed[offset : offset + size], template, flags[name])
        offset += size
    return summed


def gather_rows(local: Tensor, counts: list[int], group: Any | None = None) -> Tensor:
    """Every process's rows, in one ``all_gather``, in the order a ``DistributedSampler`` deals samples.

    Row i of rank r is the sample at position ``r + i * W``; the result lists them by position, i.e. row 0 of
    every rank, then row 1, ... (a rank with fewer rows contributes none past its last).

    Args:
        local: this process's ``(n_r, ...)`` rows.
        counts: ``n_r`` of every rank, known to every process (e.g. summed in the all_reduce).
        group: the process group; None for the default one.
    """
    width = max(counts)
    if width == 0:
        return local
    padded = local.new_zeros((width, *local.shape[1:]))
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in counts]
    torch.distributed.all_gather(parts, padded, group=group)
    by_row = torch.stack(parts, dim=1)  # (width, W, ...): [i, r] = row i of rank r
    present = torch.arange(width, device=local.device)[:, None] < torch.tensor(counts, device=local.device)[None, :]
    return by_row[present]


def _packed_size(state: Tensor, symmetric: bool) -> int:
    if not symmetric:
        return state.numel()
    d = state.shape[-1]
    return state[..., 0, 0].numel() * d * (d + 1) // 2


def _pack(state: Tensor, symmetric: bool) -> Tensor:
    """A state as a flat float64 vector; a (..., d, d) symmetric state as its upper triangles."""
    if symmetric:
        rows, cols = torch.triu_indices(state.shape[-1], state.shape[-1], device=state.device)
        return state[..., rows, cols].reshape(-1).to(torch.float64)
    return state.reshape(-1).to(torch.float64)


def _unpack(flat: Tensor, template: Tensor, symmetric: bool) -> Tensor:
    """Inverse of ``_pack``: a state shaped and typed like ``template``."""
    if symmetric:
        d = template.shape[-1]
        rows, cols = torch.triu_indices(d, d, device=template.device)
        triangles = flat.reshape(*template.shape[:-2], -1)
        full = torch.empty_like(template)
        full[..., rows, cols] = triangles
        full[..., cols, rows] = triangles
        return full
    return flat.reshape(template.shape).to(template.dtype)


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
