"""The added cost of Precision/Recall and KID over FID alone, on random features (no network: the Inception pass
is the same for all of them, so only compute() differs).

    python benchmarks/bench_kept_features.py --n 10000 --dim 2048 [--device cuda] [--json out.json]

For N real and N generated float32 features of dimension d: the time of FID from the sums (mean, covariance,
the Fréchet distance), of precision/recall (k = 3) and of KID (100 subsets of 1000, and over all pairs), the
peak memory each adds (CUDA: max_memory_allocated; CPU: the peak resident set, reset before each), and the
float64 matmul rate that the blocked distances reach as a share of the device's (a 4096 x d x 4096 matmul).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fid_metric import frechet_distance, kernel_inception_distance, precision_recall
from fid_metric._functional.covariance import mean_and_covariance


def _peak_bytes_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak RSS restarts from the current RSS


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) * 1024


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, int]:
    """Seconds of one call and the peak memory during it (bytes)."""
    _peak_bytes_reset(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, _peak_bytes(device)


def matmul_rate(d: int, device: torch.device) -> float:
    """float64 GFLOP/s of a (4096, d) @ (d, 4096) product, the blocked distances' kernel."""
    a = torch.randn(4096, d, dtype=torch.float64, device=device)
    a @ a.T  # warm-up
    seconds, _ = _timed(lambda: a @ a.T, device)
    return 2 * 4096 * 4096 * d / seconds / 1e9


def run(n: int, d: int, device: torch.device, subsets: int) -> dict:
    g = torch.Generator().manual_seed(0)
    real = torch.randn(n, d, generator=g).to(device)
    fake = (torch.randn(n, d, generator=g) * 1.1 + 0.05).to(device)
    sums = [(torch.tensor(n), x.double().sum(0), x.double().T @ x.double()) for x in (real, fake)]

    def fid() -> object:
        (mu1, s1), (mu2, s2) = (mean_and_covariance(*side) for side in sums)
        return frechet_distance(mu1, s1, mu2, s2)

    resident = _peak_bytes(device)
    rows = {
        "fid_from_sums": _timed(fid, device),
        "precision_recall_k3": _timed(lambda: precision_recall(real, fake, k=3), device),
        f"kid_{subsets}x1000": _timed(
            lambda: kernel_inception_distance(real, fake, subsets=subsets, subset_size=1000), device
        ),
        "kid_all_pairs": _timed(lambda: kernel_inception_distance(real, fake, subset_size=None), device),
    }
    rate = matmul_rate(d, device)
    # Precision/recall: 4 blocked n x n x d distance products (2 for the radii, 2 for the memberships).
    pr_flops = 4 * 2 * n * n * d
    return {
        "device": str(device),
        "n_per_side": n,
        "dim": d,
        "features_bytes": 2 * n * d * 4,
        "seconds": {name: round(t, 3) for name, (t, _) in rows.items()},
        "peak_bytes_above_start": {name: max(0, peak - resident) for name, (_, peak) in rows.items()},
        "matmul_gflops_float64": round(rate, 1),
        "precision_recall_share_of_matmul_rate": round(pr_flops / rows["precision_recall_k3"][0] / 1e9 / rate, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10000, help="features per side")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.n, args.dim, torch.device(args.device), args.kid_subsets)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
