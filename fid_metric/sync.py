"""The one all_reduce: every metric state packed into a single float64 buffer, summed across processes.

Sums add exactly, so the buffer's size never grows with the data or the number of processes. Symmetric
``(..., d, d)`` states (outer-product sums) travel as their upper triangles, which halves the bytes; counts
travel as float64, exact below 2**53.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


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
