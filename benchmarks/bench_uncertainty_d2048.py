"""Interval widths at 10k and 50k generated samples with d = 2048: the jackknife standard error of FID
(G = 10 groups) and the 95% interval's width, beside FID's spread over repetitions.

No Inception weights can be had on this project's machines, so the features are Gaussian, with the shape of
FID's problem: d = 2048, a fixed reference N(0, diag(lambda)) with a power-law spectrum lambda_i = c / i
scaled to tr = 100, and generated features N(delta, diag(1.5 lambda)) with |delta|^2 = 1, whose FID at
N = infinity is 1 + tr(lambda) (2.5 - 2 sqrt(1.5)) = 6.05. FID is invariant under rotations of the feature
space, so diagonal population covariances lose no generality (the sample covariances are full). Writes
benchmarks/results/uncertainty_cpu_gaussian_d2048.json.

    python benchmarks/bench_uncertainty_d2048.py [repetitions]
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

from fid_metric import FeatureStats, InceptionMetrics
from fid_metric._functional.jackknife import t_quantile

D, GROUPS, TRACE, SCALE = 2048, 10, 100.0, 1.5
_CHUNK = 5000


class _Samples(nn.Module):
    num_features = D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def run(sizes: tuple[int, ...] = (10_000, 50_000), repetitions: int = 8, seed: int = 0) -> dict:
    spectrum = 1 / torch.arange(1, D + 1, dtype=torch.float64)
    spectrum *= TRACE / spectrum.sum()
    reference = FeatureStats.from_sums(  # exactly N(0, diag(spectrum)): mean 0, covariance diag(spectrum)
        2, torch.zeros(D, dtype=torch.float64), torch.diag(spectrum)
    )
    delta = torch.full((D,), 1 / math.sqrt(D), dtype=torch.float64)
    limit = 1 + TRACE * (1 + SCALE - 2 * math.sqrt(SCALE))
    generator = torch.Generator().manual_seed(seed)
    half_width = t_quantile(0.975, GROUPS - 1)
    rows = []
    for n in sizes:
        values, seconds = [], []
        for _ in range(repetitions):
            metric = InceptionMetrics(
                sfid=False, inception_score=False, feature=_Samples(), fid_groups=GROUPS, real_stats=reference
            )
            for start in range(0, n, _CHUNK):
                rows_here = min(_CHUNK, n - start)
                x = torch.randn(rows_here, D, generator=generator, dtype=torch.float64)
                metric.update(x * (SCALE * spectrum).sqrt() + delta, real=False)
            began = time.perf_counter()
            values.append({k: float(v) for k, v in metric.compute().items()})
            seconds.append(time.perf_counter() - began)
        fids = torch.tensor([v["fid"] for v in values], dtype=torch.float64)
        stderr = sum(v["fid_stderr"] for v in values) / repetitions
        rows.append(
            {
                "n": n,
                "repetitions": repetitions,
                "mean_fid": float(fids.mean()),
                "mean_fid_infinity": sum(v["fid_infinity"] for v in values) / repetitions,
                "mean_fid_stderr": stderr,
                "ci95_width": 2 * half_width * stderr,
                "std_of_fid": float(fids.std()),
                "compute_seconds": sum(seconds) / repetitions,
            }
        )
        print(rows[-1], flush=True)
    return {
        "machine": platform.processor() or platform.machine(),
        "d": D,
        "groups": GROUPS,
        "fid_at_infinity": limit,
        "t_quantile_0975": half_width,
        "rows": rows,
    }


if __name__ == "__main__":
    results = run(repetitions=int(sys.argv[1]) if len(sys.argv) > 1 else 8)
    path = Path(__file__).parent / "results" / "uncertainty_cpu_gaussian_d2048.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
