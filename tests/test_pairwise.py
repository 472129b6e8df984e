"""The pairwise engine against a plain float64 implementation written here: radii and counts equal with ``==``.

The reference computes every squared distance as ``sum((a_i - b_i)^2)`` over all pairs at once, in float64, and
takes k-th values and counts from the full matrix. The engine's float32 pass, its margins and its float64
re-checks must reproduce it exactly, on random features and on features built to defeat float32: exact ties at
the radii (integer grids), duplicated points, large offsets (float32 cancellation), tight clusters far apart,
an outlier of huge norm, a caller's bfloat16 matmul setting. Guards check that the cases are what they claim (ties
exist, naive float32 decides wrongly, the float64 re-checks ran), so that none can pass by proving nothing.
"""

from __future__ import annotations

import pytest
import torch
from helpers import script_module

from fid_metric._functional import pairwise
from fid_metric._functional.pairwise import in_balls, kernel_sum, kth_neighbour_radii, points_per_ball


def reference_squared(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a[:, None, :].double() - b[None, :, :].double()) ** 2).sum(-1)


def reference_radii(points: torch.Tensor, k: int) -> torch.Tensor:
    return reference_squared(points, points).sort(dim=1).values[:, k]


def assert_exact(a: torch.Tensor, b: torch.Tensor, k: int) -> dict[str, int]:
    """The engine's radii of both sets and its counts (both comparisons) equal the reference's; returns how many
    pairs lie exactly on a radius and how many the engine re-checked in float64."""
    rechecked = 0
    original = pairwise._reference_distances

    def counting(*args: torch.Tensor) -> torch.Tensor:
        nonlocal rechecked
        rechecked += len(args[2])
        return original(*args)

    pairwise._reference_distances = counting
    try:
        a_radii, b_radii = kth_neighbour_radii(a, k), kth_neighbour_radii(b, k)
        counts = {
            strict: (
                in_balls(a, b, a_radii, b_radii, strict=strict),
                points_per_ball(a, a_radii, b, strict=strict),
                points_per_ball(b, b_radii, a, strict=strict),
            )
            for strict in (False, True)
        }
    finally:
        pairwise._reference_distances = original
    assert torch.equal(a_radii, reference_radii(a, k)) and torch.equal(b_radii, reference_radii(b, k))
    distances = reference_squared(a, b)
    for strict, ((b_in_a_balls, a_in_b_balls), per_a_ball, per_b_ball) in counts.items():
        in_a = distances < a_radii[:, None] if strict else distances <= a_radii[:, None]
        in_b = distances < b_radii[None, :] if strict else distances <= b_radii[None, :]
        assert torch.equal(b_in_a_balls, in_a.any(0)) and torch.equal(a_in_b_balls, in_b.any(1))
        assert torch.equal(per_a_ball, in_a.sum(1)) and torch.equal(per_b_ball, in_b.sum(0))
    on_radius = int((distances == a_radii[:, None]).sum() + (distances == b_radii[None, :]).sum())
    return {"on_radius": on_radius, "rechecked": rechecked}


def gaussian(n: int, d: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def grid(n: int, d: int, seed: int, levels: int = 3) -> torch.Tensor:
    """Integer points: many pairs at exactly equal distances, so points lie exactly on radii."""
    return torch.randint(0, levels, (n, d), generator=torch.Generator().manual_seed(seed)).float()


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of a few rows and re-checks of a few pairs, so that every boundary between them is crossed."""
    monkeypatch.setattr(pairwise, "_BLOCK_ELEMENTS", 1000)
    monkeypatch.setattr(pairwise, "_CHUNK_ELEMENTS", 100)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_features(k: int, dtype: torch.dtype) -> None:
    """Gaussian sets of different sizes and means: exact, and the float32 pass decides almost every pair."""
    a, b = gaussian(300, 64, seed=k, dtype=dtype), gaussian(250, 64, seed=10 + k, dtype=dtype) * 1.1 + 0.2
    outcome = assert_exact(a, b, k)
    assert outcome["rechecked"] < 0.02 * (300 * 300 + 250 * 250 + 2 * 300 * 250), outcome


def test_blocks_and_chunks_change_nothing(small_blocks: None) -> None:
    a, b = gaussian(120, 40, seed=1), gaussian(90, 40, seed=2) + 0.3
    assert_exact(a, b, 3)
    assert_exact(grid(60, 5, seed=3), grid(70, 5, seed=4), 2)


@pytest.mark.parametrize("k", [1, 3, 4])
def test_ties_on_the_radii(k: int) -> None:
    """Integer grids: many points exactly on a ball's boundary (inside with <=, outside with <), k-th neighbours
    tied, duplicated points at distance 0 (radii of 0 where k duplicates exist)."""
    a, b = grid(200, 6, seed=k), grid(150, 6, seed=20 + k)
    outcome = assert_exact(a, b, k)
    assert outcome["on_radius"] > 100, outcome


def test_near_ties_below_float32_resolution() -> None:
    """float64 grid points moved by 2^-30: distances that differ from a radius by far less than float32 resolves;
    the float32 decision of such a pair would be a coin toss (the guard counts them), the engine's is float64's."""
    g = torch.Generator().manual_seed(22)
    a = grid(150, 6, seed=23).double() + torch.randint(-1, 2, (150, 6), generator=g) * 2.0**-30
    b = grid(130, 6, seed=24).double() + torch.randint(-1, 2, (130, 6), generator=g) * 2.0**-30
    distances, radii = reference_squared(a, b), reference_radii(a, 3)
    near = ((distances - radii[:, None]).abs() < 1e-6) & (distances != radii[:, None])
    assert near.sum() > 50
    assert_exact(a, b, 3)


def test_duplicated_points(small_blocks: None) -> None:
    """Each point repeated 1-6 times in its set and shared with the other: radii of exactly 0 for some, and points
    of the other set at distance 0 from a centre of radius 0 (outside with <, inside with <=)."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(40, 16, generator=g)
    a = base.repeat_interleave(torch.randint(1, 7, (40,), generator=g), dim=0)
    b = torch.cat([base[:20], torch.randn(30, 16, generator=g)])
    outcome = assert_exact(a, b, 3)
    assert (kth_neighbour_radii(a, 3) == 0).any() and outcome["on_radius"] > 0


@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_large_offsets(offset: float) -> None:
    """Grids far from the origin (exact in float32): float32 distances from ``|a|^2 + |b|^2 - 2 a.b`` without a
    shift are noise there (the guard), the engine's are exact."""
    a, b = grid(150, 8, seed=6, levels=4) * 3 + offset, grid(120, 8, seed=7, levels=4) * 3 + offset
    naive = ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T).double()
    assert (naive - reference_squared(a, b)).abs().max() > 10  # cancellation: the float32 pass must shift
    outcome = assert_exact(a, b, 3)
    assert outcome["on_radius"] > 0


def test_large_offset_between_the_sets() -> None:
    """One set far from the other: the common shift leaves large norms; within-set radii are still exact."""
    a, b = gaussian(100, 32, seed=8), gaussian(90, 32, seed=9) + 1e3
    assert_exact(a, b, 3)
    assert_exact(grid(80, 6, seed=10) * 1024, grid(70, 6, seed=11) * 1024 + 2**30, 2)


def test_tight_clusters_far_apart_and_an_outlier(small_blocks: None) -> None:
    """Clusters of spread 1e-3 at distance 1e3 (margins, relative to the norms, exceed the within-cluster
    distances: most pairs are re-checked) and one point of norm 1e8: exact all the same."""
    g = torch.Generator().manual_seed(12)
    centres = torch.randn(4, 24, generator=g, dtype=torch.float64) * 1e3
    a = centres.repeat(30, 1) + torch.randn(120, 24, generator=g, dtype=torch.float64) * 1e-3
    b = centres.repeat(25, 1) + torch.randn(100, 24, generator=g, dtype=torch.float64) * 1e-3
    b[0] = 1e8
    outcome = assert_exact(a, b, 3)
    assert outcome["rechecked"] > 120 * 100  # the float32 pass could not decide: the float64 one did


@pytest.mark.parametrize(
    ("scale", "dtype"),
    [(2.0**-140, torch.float64), (2.0**120, torch.float64), (2.0**-90, torch.float32), (2.0**-118, torch.float32)],
)
def test_tiny_and_huge_features(scale: float, dtype: torch.dtype) -> None:
    """Features whose float32 copies would underflow or overflow without the power-of-two scaling."""
    a = (gaussian(60, 12, seed=13, dtype=torch.float64) * scale).to(dtype)
    b = (gaussian(50, 12, seed=14, dtype=torch.float64) * scale).to(dtype)
    assert_exact(a, b, 2)


def test_a_callers_bfloat16_matmul_setting_is_overridden_and_restored() -> None:
    """With oneDNN's float32 matmuls in bfloat16 (``fp32_precision = "bf16"``, on CPUs that have it) a float32
    product errs far beyond the engine's margin (the guard); the engine switches to IEEE float32 for its pass,
    stays exact, and leaves the caller's setting as it was."""
    backend = getattr(torch.backends.mkldnn, "matmul", None)
    if not hasattr(backend, "fp32_precision"):
        pytest.skip("this torch has no per-backend fp32_precision")
    a, b = gaussian(200, 64, seed=15), gaussian(150, 64, seed=16) + 0.1
    saved = backend.fp32_precision
    backend.fp32_precision = "bf16"
    try:
        error = float((a @ b.T - (a.double() @ b.double().T).float()).abs().max())
        if error < 1e-5:
            pytest.skip("this CPU runs float32 matmuls in float32 even in bf16 mode")
        assert_exact(a, b, 3)
        assert backend.fp32_precision == "bf16"
    finally:
        backend.fp32_precision = saved


def test_one_dimension_and_the_smallest_sets() -> None:
    assert_exact(torch.tensor([[0.0], [1.0], [3.0]]), torch.tensor([[1.0], [2.0]]), 1)
    assert_exact(gaussian(2, 3, seed=17), gaussian(2, 3, seed=18), 1)
    same = torch.ones(5, 4)
    assert torch.equal(kth_neighbour_radii(same, 2), torch.zeros(5, dtype=torch.float64))


def test_thresholds_round_outwards() -> None:
    """The float32 thresholds lie on the safe side of their float64 values, and within two steps of them."""
    t = torch.randn(10_000, dtype=torch.float64, generator=torch.Generator().manual_seed(19)) * 1e3
    below, above = pairwise._float32_below(t), pairwise._float32_above(t)
    assert below.dtype == above.dtype == torch.float32
    assert (below.double() <= t).all() and (above.double() >= t).all()
    assert ((t - below.double()) <= 2 * t.abs() * 2.0**-23).all() and (
        (above.double() - t) <= 2 * t.abs() * 2.0**-23
    ).all()


@pytest.mark.parametrize("on", ["gram", "squared_distances"])
@pytest.mark.parametrize("drop_diagonal", [False, True])
def test_kernel_sum_equals_the_full_matrix(on: str, drop_diagonal: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocked sum of a kernel of the Gram products or of the squared distances equals the sum over the full
    float64 matrix written out here to 1e-12, in one block and in blocks of a few rows."""
    a = gaussian(70, 10, seed=20, dtype=torch.float64)
    b = a if drop_diagonal else gaussian(50, 10, seed=21, dtype=torch.float64) + 0.5

    def kernel(values: torch.Tensor) -> torch.Tensor:
        return (values / 10 + 1) ** 3 if on == "gram" else torch.exp(-values / 20)

    full = kernel(a @ b.T if on == "gram" else reference_squared(a, b))
    expected = float(full.sum() - (full.diagonal().sum() if drop_diagonal else 0))
    for block in (1 << 24, 200):
        monkeypatch.setattr(pairwise, "_BLOCK_ELEMENTS", block)
        total = kernel_sum(a, b, kernel, on=on, drop_diagonal=drop_diagonal)  # type: ignore[arg-type]
        assert total.dtype == torch.float64 and total.ndim == 0
        assert abs(float(total) - expected) <= 1e-12 * abs(expected)


def test_the_benchmark_runs_and_agrees_with_the_peers() -> None:
    """benchmarks/bench_pairwise.py on a toy size: it still runs against torch-fidelity's and prdc's current APIs,
    and the counts agree (precision/recall with torch-fidelity and with the all-float64 way, density/coverage with
    prdc)."""
    bench = script_module("benchmarks/bench_pairwise.py", "bench_pairwise")
    result = bench.run(n=120, dc_n=100, d=16, repeats=1, kid_subsets=3, kid_subset_size=50)
    assert all(result["agree"][key] for key in ("precision_recall_torch_fidelity", "precision_recall_all_float64"))
    assert (
        result["agree"]["density_coverage_prdc"] and result["agree"]["kid_relative_difference"] < 1e-3
    )  # theirs in float32
    assert 0 < result["rows"]["precision_recall/ours"]["result"][0] < 1
