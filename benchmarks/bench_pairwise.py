"""The pairwise engine beside its peers, in one run on one machine: precision/recall against torch-fidelity, density
and coverage against prdc, KID against torch-fidelity, on the same random features.

    python benchmarks/bench_pairwise.py [--n 10000] [--dc-n 10000] [--dim 2048] [--repeats 3] [--device cuda]
        [--json out.json]

Features: N x d float32, non-negative like Inception's pool features (a rank-64 structure plus noise, through a
ReLU); the generated set is shifted and scaled a little, so that precision, recall, density and coverage lie
inside (0, 1). Each side is timed ``--repeats`` times and the median reported, with the peak resident memory it
added (Linux: the high-water mark, reset before each call; host memory only). With ``--device cuda`` the features
live on the GPU for ours and torch-fidelity's precision/recall; prdc and torch-fidelity's KID copy them to numpy.
Rows:

* ``precision_recall``: ours (``fid_metric.precision_recall``: a float32 pass with float64 re-checks), ours the
  0.2 way (every distance in float64, as ``precision_recall`` computed them before the engine), torch-fidelity's
  ``calculate_precision_recall_full`` (the one its ``prc`` runs by default; float32 ``torch.cdist``) and its
  ``calculate_precision_recall_part`` (``save_cpu_ram``);
* ``density_coverage`` (at ``--dc-n`` per side): ours and prdc's ``compute_prdc`` (scikit-learn distances);
* ``kid``: 100 subsets of 1000, ours (float64) and torch-fidelity's ``kid_features_to_metric`` (numpy, float32).

The counts behind each number are compared too (``agree``): ours must equal torch-fidelity's and the old way's
exactly; prdc rounds its float32 distances to float32, so that a near-tie may go either way there.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from prdc import compute_prdc
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import calculate_precision_recall_full, calculate_precision_recall_part

from fid_metric import kernel_inception_distance, precision_recall
from fid_metric._functional.density_coverage import density_coverage


def features(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(real, generated)`` ``(n, d)`` float32, non-negative, overlapping in part."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(64, d, generator=g) * 0.1

    def side(shift: float, noise: float) -> torch.Tensor:
        z = torch.randn(n, 64, generator=g)
        return torch.relu(z @ basis + torch.randn(n, d, generator=g) * noise + shift)

    return side(0.30, 0.50), side(0.35, 0.55)


def float64_precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Precision/recall as fid_metric 0.2 computed them: every distance in float64, ``|a|^2 + |b|^2 - 2 a.b`` in
    blocks of 2^24."""
    real, fake = real.double(), fake.double()

    def squared(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T).clamp_min_(0)

    def radii(points: torch.Tensor) -> torch.Tensor:
        rows = max(1, (1 << 24) // len(points))
        return torch.cat(
            [squared(points[s : s + rows], points).kthvalue(k + 1, dim=1).values for s in range(0, len(points), rows)]
        )

    def share(points: torch.Tensor, centres: torch.Tensor, r: torch.Tensor) -> float:
        rows = max(1, (1 << 24) // len(centres))
        inside = [(squared(points[s : s + rows], centres) <= r).any(1) for s in range(0, len(points), rows)]
        return float(torch.cat(inside).double().mean())

    return share(fake, real, radii(real)), share(real, fake, radii(fake))


def _peak_reset() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak() -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    return 0


def timed(fn: Callable[[], object], repeats: int) -> dict:
    """The median seconds of ``repeats`` calls, every time, the peak memory added (bytes) and the last result."""
    times, peaks, result = [], [], None
    for _ in range(repeats):
        _peak_reset()
        resident = _peak()
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
            result = fn()
        times.append(time.perf_counter() - start)
        peaks.append(max(0, _peak() - resident))
    return {
        "seconds": round(statistics.median(times), 3),
        "runs": [round(t, 3) for t in times],
        "peak_bytes": max(peaks),
        "result": result,
    }


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run(
    n: int, dc_n: int, d: int, repeats: int, kid_subsets: int = 100, kid_subset_size: int = 1000, device: str = "cpu"
) -> dict:
    load_before = os.getloadavg()[0]
    real, fake = (x.to(device) for x in features(n, d, seed=0))
    rows: dict[str, dict] = {}

    def ours_prc() -> tuple[float, float]:
        return tuple(float(v) for v in precision_recall(real, fake, k=3))  # type: ignore[return-value]

    rows["precision_recall/ours"] = timed(ours_prc, repeats)
    rows["precision_recall/torch_fidelity_full"] = timed(
        lambda: calculate_precision_recall_full(fake, real, neighborhood=3), repeats
    )
    rows["precision_recall/torch_fidelity_part"] = timed(
        lambda: calculate_precision_recall_part(fake, real, neighborhood=3), repeats
    )
    rows["precision_recall/ours_all_float64"] = timed(lambda: float64_precision_recall(real, fake), repeats)

    dc_real, dc_fake = real[:dc_n], fake[:dc_n]
    rows["density_coverage/ours"] = timed(
        lambda: tuple(float(v) for v in density_coverage(dc_real, dc_fake, k=5)), repeats
    )

    def prdc_dc() -> tuple[float, float]:
        values = compute_prdc(real_features=dc_real.cpu().numpy(), fake_features=dc_fake.cpu().numpy(), nearest_k=5)
        return float(values["density"]), float(values["coverage"])

    rows["density_coverage/prdc"] = timed(prdc_dc, repeats)

    kid = {"subsets": kid_subsets, "subset_size": kid_subset_size}
    rows["kid/ours"] = timed(
        lambda: tuple(float(v) for v in kernel_inception_distance(fake, real, **kid)),
        repeats,  # type: ignore[arg-type]
    )

    def tf_kid() -> tuple[float, float]:
        values = kid_features_to_metric(
            fake, real, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, rng_seed=2020, verbose=False,
            kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1,
        )  # fmt: skip
        return values["kernel_inception_distance_mean"], values["kernel_inception_distance_std"]

    rows["kid/torch_fidelity"] = timed(tf_kid, repeats)

    def counts(key: str, sizes: tuple[int, int]) -> list[int]:
        return [round(v * size) for v, size in zip(rows[key]["result"], sizes)]

    ours_prc_counts = counts("precision_recall/ours", (n, n))
    agree = {
        "precision_recall_torch_fidelity": ours_prc_counts == counts("precision_recall/torch_fidelity_full", (n, n)),
        "precision_recall_all_float64": ours_prc_counts == counts("precision_recall/ours_all_float64", (n, n)),
        "density_coverage_prdc": counts("density_coverage/ours", (5 * dc_n, dc_n))
        == counts("density_coverage/prdc", (5 * dc_n, dc_n)),
        "kid_relative_difference": abs(rows["kid/ours"]["result"][0] / rows["kid/torch_fidelity"]["result"][0] - 1),
    }
    return {
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "load_average_1min_before_and_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        },
        "n_per_side": n,
        "density_coverage_n_per_side": dc_n,
        "dim": d,
        "repeats": repeats,
        "rows": {key: {**row, "result": [round(v, 6) for v in row["result"]]} for key, row in rows.items()},
        "agree": agree,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="features per side (precision/recall, KID)")
    parser.add_argument("--dc-n", type=int, default=10_000, help="features per side for density/coverage")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="where the features live: cpu or cuda")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.n, args.dc_n, args.dim, args.repeats, device=args.device)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
