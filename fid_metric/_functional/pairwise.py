"""The pairwise engine: blocked squared distances and Gram products between ``(n, d)`` and ``(m, d)`` feature sets.

Precision/recall and density/coverage use its k-th nearest neighbour radii (``kth_neighbour_radii``), its tests of
points against balls (``in_balls``: is a point inside some ball; ``points_per_ball``: how many points each ball
holds); KID (and CMMD) its kernel sums (``kernel_sum``).

**Memory.** One block of at most ``_BLOCK_ELEMENTS`` = 2^24 pairs at a time: 64 MiB of float32 distances and, for
the tests against the radii, at most as much again of masks and their counts; a kernel sum's block is 128 MiB of
float64 (plus what its kernel allocates). Besides: float32 shifted copies of the sets, ``(n + m) d 4`` bytes
(10k + 10k features of d = 2048: 164 MB; 50k + 50k: 820 MB), and 0.4 MiB of float64 re-check buffers.

**Exactness.** Every decision (a k-th nearest neighbour's distance, whether a point lies inside a ball) is that of
the *reference squared distance* ``D(a, b) = sum_i (a_i - b_i)^2`` of the features as given, evaluated in float64
(torch's sum of the d squared differences): exact whenever the differences and their squares add up without
rounding (a duplicated point is at 0, points of an integer grid at integers), else within ``(d + 2) 2^-53 D`` of
the exact value. A float32 pass decides the pairs it provably can; ``D`` is computed for the others only.

*The float32 pass.* Both sets are shifted by a common centre ``c`` (their mean: no distance changes) and scaled
by a power of two ``2^-e`` so that no component reaches 1: ``x = fl32((a - c) 2^-e)``, likewise ``y``, and
``nu_x = ||x||`` (float64). Then ``s = fl32(nu_x^2) + fl32(nu_y^2) - 2 x.y``, the products from one float32
matmul in IEEE float32 (TF32 and bfloat16 matmuls are switched off for it). With ``u = 2^-24`` and
``S = (nu_x + nu_y)^2``, for d < 2^20 and features whose float64 squared distances neither overflow nor underflow
(the public functions refuse features of magnitude 2^500 or more):

    |s - 2^-2e D(a, b)| <= 1.07 (d + 5) u S,

because (i) rounding the shifted features to float32 (relative error at most 1.01 u per component) moves
``||x - y||^2`` by at most ``2.06 u S`` from ``2^-2e ||a - b||^2``; (ii) a sum of d products and one more term,
in any order (the matmul's blocking, with FMA or without), errs by at most ``gamma_(d+1)`` times the sum of
their magnitudes (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5),
``gamma_n = n u / (1 - n u) <= 1.067 n u``, and ``2 nu_x nu_y + nu_y^2 <= S``; rounding the two norms and the last
addition add ``2 u S``; (iii) ``D``'s own rounding is below ``(d + 2) 2^-53 S``. The margin is
``mu = 2 (d + 8) u S + 2^-100``, with S taken with the largest norm of the other set, so that there is one margin
per row (or column): the factor 2 covers the float64 rounding of the norms and of mu, 2^-100 every float32
underflow (each error below ``d 2^-149``). Thresholds are rounded outwards, in float64 and then to float32. So:

* a ball of squared radius R (scaled by ``2^-2e``): a pair with ``s < R - mu`` is inside (``D <= s + mu < R``),
  one with ``s > R + mu`` outside; ``D`` decides the pairs in between, against R with ``<`` or ``<=``;
* the k-th neighbour radius R of a point: with t the (k + 1)-th smallest s of its row, k + 1 pairs have
  ``D <= t + mu``, so ``R <= t + mu``; a pair with ``D < t - mu`` has ``s < t``, which at most k pairs have, so
  ``R >= t - mu``.
  The q pairs with ``s < t - 2 mu`` have ``D < t - mu <= R``: they are among the k nearest, whatever their D.
  Every other pair with ``D <= R`` has ``s <= t + 2 mu``: R is the (k + 1 - q)-th smallest D of the pairs with
  ``t - 2 mu <= s <= t + 2 mu``, usually one or two per row.

Hence the radii equal the float64 reference radii, and the tests its tests, exactly. Data that defeats the
float32 pass (many exact ties, tight clusters far from the centre, one feature of huge norm) costs float64
re-checks, at worst of every pair, never exactness. tests/test_pairwise.py holds the engine to a plain float64
implementation with ``==``, on random and adversarial features.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

_BLOCK_ELEMENTS = 1 << 24  # pairs per block: 64 MiB of float32 distances, 128 MiB of float64 kernel values
# Feature values per chunk of float64 work (copies, norms, re-checks): 128 KiB, below torch's grain for splitting
# an operation across threads, so that these many small operations run inline: threads woken for each of them
# stall whenever another process holds a core.
_CHUNK_ELEMENTS = 1 << 14
_SPARE = 8  # smallest distances beyond the (k + 1)-th that each row keeps: the candidate radii, usually all


def check_feature_sets(what: str, real: Tensor, fake: Tensor, k: int, *, fake_needs_k: bool = True) -> None:
    """Raise ``ValueError`` unless ``real`` ``(m, d)`` and ``fake`` ``(n, d)`` are finite 2-d sets of one dimension,
    k is a positive int and each set (only ``real`` if not ``fake_needs_k``) holds more than k features."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"{what} needs (m, d) and (n, d) features, got {tuple(real.shape)}, {tuple(fake.shape)}.")
    sizes = (len(real), len(fake)) if fake_needs_k else (len(real),)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1 or min(sizes) <= k or len(fake) < 1:
        which = "each set's size" if fake_needs_k else "the real set's size (and at least 1 generated feature)"
        raise ValueError(f"k must be a positive int below {which}; got k={k!r} for {len(real)} and {len(fake)}.")
    if not all(torch.stack(torch.aminmax(x)).abs().double().lt(2.0**500).all() for x in (real, fake)):  # NaN: False
        raise ValueError(f"{what} needs finite features below 2^500 in magnitude; got NaN, infinite or larger values.")


def kth_neighbour_radii(points: Tensor, k: int) -> Tensor:
    """``(n,)`` float64: each point's reference squared distance to its k-th nearest neighbour in ``points``
    ``(n, d)``, the point itself being the 0-th (the (k + 1)-th smallest of its row, its own 0 included; a
    duplicate is a neighbour at 0), as torch-fidelity's ``kthvalue(k + 1)`` and prdc's
    ``compute_nearest_neighbour_distances`` (squared). Needs n > k."""
    radii = torch.empty(len(points), dtype=torch.float64, device=points.device)
    for block, s, x, _, _ in _blocks(points, points):
        nearest, columns = s.topk(min(len(points), k + 1 + _SPARE), dim=1, largest=False)
        t = nearest[:, k].double()
        margins = _margins(x.norms[block], x.norms.max(), x.dim)
        low, high = _float32_below(t - 2 * margins)[:, None], _float32_above(t + 2 * margins)[:, None]
        nearer = (nearest < low).sum(1)  # D < t - mu <= R: among the k nearest, whatever their D
        i, j = _window(s, nearest, columns, low, high)
        exact = _reference_distances(points, points, i + block.start, j)
        radii[block] = _kth_smallest_per_row(i, exact, k + 1 - nearer, len(s))
    return radii


def in_balls(a: Tensor, b: Tensor, a_radii: Tensor, b_radii: Tensor, *, strict: bool = False) -> tuple[Tensor, Tensor]:
    """Whether each point of ``b`` ``(m, d)`` lies inside some ball around ``a`` ``(n, d)`` of squared radii
    ``a_radii`` ``(n,)`` float64, ``(m,)`` bool, and each point of a inside some ball around b (``b_radii``
    ``(m,)``), ``(n,)`` bool: one pass over the ``n x m`` reference squared distances D (inside: ``D < radius`` if
    ``strict``, else ``D <= radius``, as precision and recall count)."""
    in_a_balls = torch.zeros(len(b), dtype=torch.bool, device=a.device)
    in_b_balls = torch.zeros(len(a), dtype=torch.bool, device=a.device)
    for block, s, x, y, square_scale in _blocks(a, b):
        margins = _margins(x.norms[block], y.norms.max(), x.dim)
        offsets = (block.start, 0)
        in_a_balls |= _inside(s, a_radii[block] * square_scale, margins, (a, b, a_radii), offsets, strict, count=False)
        margins = _margins(x.norms[block].max(), y.norms, x.dim)
        offsets = (0, block.start)
        in_b_balls[block] |= _inside(
            s.T, b_radii * square_scale, margins, (b, a, b_radii), offsets, strict, count=False
        )
    return in_a_balls, in_b_balls


def points_per_ball(centres: Tensor, radii: Tensor, points: Tensor, *, strict: bool = False) -> Tensor:
    """``(n,)`` int64: how many of ``points`` ``(m, d)`` lie inside each ball around ``centres`` ``(n, d)`` of
    squared radii ``radii`` ``(n,)`` float64 (inside: ``D < radius`` if ``strict``, else ``D <= radius``, D the
    reference squared distance). Their sum is density's count; a count > 0 says that the centre's nearest neighbour
    among the points is within its radius (coverage)."""
    counts = torch.empty(len(centres), dtype=torch.int64, device=centres.device)
    for block, s, x, y, square_scale in _blocks(centres, points):
        margins = _margins(x.norms[block], y.norms.max(), x.dim)
        sets, offsets = (centres, points, radii), (block.start, 0)
        counts[block] = _inside(s, radii[block] * square_scale, margins, sets, offsets, strict, count=True)
    return counts


def kernel_sum(
    a: Tensor,
    b: Tensor,
    kernel: Callable[[Tensor], Tensor],
    *,
    on: Literal["gram", "squared_distances"] = "gram",
    drop_diagonal: bool = False,
) -> Tensor:
    """``sum_{i, j} kernel(block)[i, j]`` over all pairs of ``a`` ``(n, d)`` and ``b`` ``(m, d)``, a 0-d tensor in
    their dtype (callers pass float64), block by block, so no ``n x m`` matrix is held.

    Args:
        a, b: the two sets, of one dtype and device (``a`` and ``b`` the same tensor for within-set sums).
        kernel: maps a ``(rows, m)`` block to the kernel values of its pairs, elementwise: of the Gram products
            ``a_i . b_j`` (``on="gram"``; KID's ``(gamma g + coef)^degree``) or of the squared distances
            ``|a_i|^2 + |b_j|^2 - 2 a_i . b_j``, clamped at 0 (``on="squared_distances"``; an RBF kernel
            ``exp(-D / (2 sigma^2))``). Callers shift the features beforehand where their norms are large
            beside their distances (the squared distances' round-off is relative to the norms).
        drop_diagonal: leave out the pairs ``i == j`` (``a is b``: the unbiased within-set sums).
    """
    rows = _rows(len(b))
    if on == "squared_distances":
        a_norms, b_norms = (a * a).sum(1), (b * b).sum(1)
    total = torch.zeros((), dtype=a.dtype, device=a.device)
    for start in range(0, len(a), rows):
        block = a[start : start + rows] @ b.T
        if on == "squared_distances":
            block = (a_norms[start : start + rows, None] + b_norms[None, :] - 2 * block).clamp_min_(0)
        values = kernel(block)
        total += values.sum()
        if drop_diagonal:
            total -= values.diagonal(offset=start).sum()
    return total


class _Float32Copy(NamedTuple):
    x: Tensor  # (n, d) float32: (features - centre) * scale, rounded
    squares: Tensor  # (n,) float32: ||x||^2, rounded
    norms: Tensor  # (n,) float64: ||x||
    dim: int


def _float32_copies(*sets: Tensor) -> tuple[tuple[_Float32Copy, ...], float]:
    """Each set shifted by the sets' common mean and scaled by the power of two ``scale`` that brings the largest
    component below 1, in float32, with its norms; and ``scale^2``, which turns reference squared distances into
    those of the copies. float32 sets are shifted in float32 by their mean rounded to float32 (any common centre
    will do, and the subtraction is then one rounding), others in float64 by the float64 mean."""
    centre = torch.stack([_mean(points) * len(points) for points in sets]).sum(0) / sum(map(len, sets))
    in_float32 = all(points.dtype == torch.float32 for points in sets)
    centre = centre.float().double() if in_float32 else centre
    if not torch.isfinite(centre).all():  # a float32 mean that overflowed: no shift is a centre too
        centre = torch.zeros_like(centre)
    largest = max(
        torch.maximum(points.amax(0).double() - centre, centre - points.amin(0).double()).max() for points in sets
    )
    exponent = min(max(int(torch.frexp(largest).exponent), -500), 500) if largest > 0 else 0
    scale = 2.0**-exponent
    copies = []
    for points in sets:
        if in_float32 and 2.0**-100 < largest < 2.0**100:  # the shift and the scaling stay in float32's range
            x = (points - centre.float()).mul_(scale)
        else:
            x = torch.empty(points.shape, dtype=torch.float32, device=points.device)
            for rows in _chunks(points):
                x[rows] = ((points[rows].double() - centre) * scale).float()
        norms = _squared_norms(x).sqrt()
        copies.append(_Float32Copy(x, norms.square().float(), norms, points.shape[1]))
    return tuple(copies), scale * scale


def _squared_norms(x: Tensor) -> Tensor:
    """``(n,)`` float64 ``||x_i||^2`` of float32 rows: exact squares, summed in float64, through one buffer."""
    out = torch.empty(len(x), dtype=torch.float64, device=x.device)
    buffer = torch.empty(min(len(x), _chunk_rows(x)), x.shape[1], dtype=torch.float64, device=x.device)
    for rows in _chunks(x):
        chunk = buffer[: len(x[rows])].copy_(x[rows])
        torch.sum(chunk.mul_(chunk), 1, out=out[rows])
    return out


def _mean(points: Tensor) -> Tensor:
    if points.dtype == torch.float32:
        return points.mean(0).double()
    return points.sum(0, dtype=torch.float64) / len(points)


def _chunk_rows(points: Tensor) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, points.shape[1]))


def _chunks(points: Tensor) -> list[slice]:
    rows = _chunk_rows(points)
    return [slice(start, start + rows) for start in range(0, len(points), rows)]


def _rows(columns: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(1, columns))


def _blocks(a: Tensor, b: Tensor) -> Iterator[tuple[slice, Tensor, _Float32Copy, _Float32Copy, float]]:
    """The float32 pass over ``a`` x ``b`` (``b is a``: within one set), block by block of rows of a: the block's
    rows, its ``(rows, m)`` float32 ``s``, the float32 copies of a and b, and the square of their scale."""
    with _ieee_float32_matmul(a.device):
        copies, square_scale = _float32_copies(a) if b is a else _float32_copies(a, b)
        x, y = copies[0], copies[-1]
        rows = _rows(len(b))
        for start in range(0, len(a), rows):
            block = slice(start, min(start + rows, len(a)))
            yield block, _distances32(x, y, block), x, y, square_scale


def _distances32(x: _Float32Copy, y: _Float32Copy, block: slice) -> Tensor:
    """``(rows, m)`` float32 ``s = fl32(nu_x^2) + fl32(nu_y^2) - 2 x.y`` of the block's rows of x and all of y."""
    s = torch.addmm(y.squares[None, :], x.x[block], y.x.T, alpha=-2)
    return s.add_(x.squares[block, None])


def _margins(row_norms: Tensor, column_norms: Tensor, dim: int) -> Tensor:
    """float64 ``mu = 2 (d + 8) 2^-24 (nu_row + nu_column)^2 + 2^-100``, broadcast over the norms given."""
    return 2 * (dim + 8) * 2.0**-24 * (row_norms + column_norms).square() + 2.0**-100


def _window(s: Tensor, nearest: Tensor, columns: Tensor, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """The (row, column) pairs of ``s`` with ``low <= s <= high`` (per row), from its smallest values ``nearest``
    at ``columns`` (ascending) where the window ends before the last of them, else from the row itself."""
    inside = (nearest >= low) & (nearest <= high)
    rows, place = inside.nonzero(as_tuple=True)
    i, j = [rows], [columns[rows, place]]
    if nearest.shape[1] < s.shape[1]:  # rows whose window reaches beyond the smallest values: all their columns
        wide = (nearest[:, -1:] <= high).flatten().nonzero().flatten()
        kept = ~torch.isin(rows, wide)
        i[0], j[0] = i[0][kept], j[0][kept]
        r, c = ((s[wide] >= low[wide]) & (s[wide] <= high[wide])).nonzero(as_tuple=True)
        i.append(wide[r])
        j.append(c)
    return torch.cat(i), torch.cat(j)


def _inside(
    s: Tensor,
    radii: Tensor,
    margins: Tensor,
    sets: tuple[Tensor, Tensor, Tensor],
    offsets: tuple[int, int],
    strict: bool,
    *,
    count: bool,
) -> Tensor:
    """For the block ``s`` ``(balls, points)`` (rows: balls of scaled squared radii ``radii``, with their
    ``margins``): with ``count``, how many points each ball holds, int64 ``(balls,)``; else whether some ball
    holds each point, bool ``(points,)``. ``D`` decides the pairs within the margins, of the rows (or columns)
    where the float32 pass leaves the answer open. ``sets``: the centres, the points and the reference squared
    radii; ``offsets``: the block's first ball and first point in them."""
    low, high = _float32_below(radii - margins)[:, None], _float32_above(radii + margins)[:, None]
    if count:
        found: Tensor = (s < low).view(torch.uint8).sum(1, dtype=torch.int32).long()
        open_lines = ((s <= high).view(torch.uint8).sum(1, dtype=torch.int32) != found).nonzero().flatten()
        part, bounds = s[open_lines], (low[open_lines], high[open_lines])
    else:
        found = (s < low).any(0)
        open_lines = ((s <= high).any(0) & ~found).nonzero().flatten()
        part, bounds = s[:, open_lines], (low, high)
    i, j = ((part >= bounds[0]) & (part <= bounds[1])).nonzero(as_tuple=True)
    i, j = (open_lines[i], j) if count else (i, open_lines[j])
    centres, points, reference_radii = sets
    exact = _reference_distances(centres, points, i + offsets[0], j + offsets[1])
    limit = reference_radii[i + offsets[0]]
    inside = exact < limit if strict else exact <= limit
    if count:
        return found.index_add_(0, i[inside], torch.ones_like(i[inside]))
    return found.index_fill_(0, j[inside], True)


def _reference_distances(a: Tensor, b: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """``(p,)`` float64 reference squared distances ``sum((a[i] - b[j])^2)`` of the p pairs, in chunks, through
    buffers allocated once (fresh half-megabyte allocations cost more than the arithmetic)."""
    out = torch.empty(len(i), dtype=torch.float64, device=a.device)
    step = _chunk_rows(a)
    rows_a, rows_b = (torch.empty(min(step, len(i)), a.shape[1], dtype=x.dtype, device=a.device) for x in (a, b))
    differences = torch.empty(rows_a.shape, dtype=torch.float64, device=a.device)
    for start in range(0, len(i), step):
        pairs = slice(start, start + step)
        n = len(i[pairs])
        torch.index_select(a, 0, i[pairs], out=rows_a[:n])
        torch.index_select(b, 0, j[pairs], out=rows_b[:n])
        chunk = differences[:n].copy_(rows_a[:n]).sub_(rows_b[:n])
        torch.sum(chunk.mul_(chunk), 1, out=out[pairs])
    return out


def _kth_smallest_per_row(rows: Tensor, values: Tensor, kth: Tensor, n_rows: int) -> Tensor:
    """``(n_rows,)``: per row r, the ``kth[r]``-th smallest of the ``values`` whose entry of ``rows`` is r; every
    row has at least ``kth[r]`` >= 1 of them."""
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]
    counts = torch.bincount(rows, minlength=n_rows)
    starts = torch.cumsum(counts, 0) - counts
    return values[order][starts + kth - 1]


def _float32_below(t: Tensor) -> Tensor:
    """The float32 values at most ``t`` (float64) everywhere, and at most one float64 and one float32 step below."""
    t = torch.nextafter(t, torch.tensor(-torch.inf, dtype=t.dtype, device=t.device))
    low = t.float()
    return torch.where(low.double() > t, torch.nextafter(low, torch.tensor(-torch.inf, device=t.device)), low)


def _float32_above(t: Tensor) -> Tensor:
    """The float32 values at least ``t`` (float64) everywhere, and at most one float64 and one float32 step above."""
    return -_float32_below(-t)


@contextlib.contextmanager
def _ieee_float32_matmul(device: torch.device) -> Iterator[None]:
    """float32 matmuls in IEEE float32 on ``device``'s backend (not TF32, not bfloat16), whatever the caller's
    setting, restored afterwards: the float32 pass's error bound assumes float32 products and sums."""
    backend: Any = (
        torch.backends.cuda.matmul if device.type == "cuda" else getattr(torch.backends.mkldnn, "matmul", None)
    )
    if hasattr(backend, "fp32_precision"):
        saved = backend.fp32_precision
        backend.fp32_precision = "ieee"
        try:
            yield
        finally:
            backend.fp32_precision = saved
    else:
        precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(precision)
