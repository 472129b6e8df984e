"""How the jackknife standard error and FID's finite-N bias scale with the number of generated samples N.

Gaussian features (d = 4) against a fixed reference with zero covariance, where the expected FID at N samples is
``|mu - mu_ref|^2 + tr(Sigma) (1 + 1/N)`` in closed form (as in tests/test_jackknife.py): for each N, the mean
over repetitions of ``fid_stderr`` (G = 10 groups) beside the spread of FID itself, and FID's bias above its
N = infinity value (``tr(Sigma) / N`` in closed form) beside the Monte Carlo error of the measured mean.
Writes benchmarks/results/uncertainty_cpu_gaussian_d4.json.

    python benchmarks/bench_uncertainty.py
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
from torch import nn

from fid_metric import FeatureStats, InceptionMetrics

D, GROUPS = 4, 10


class _Samples(nn.Module):
    num_features = D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def run(sizes: tuple[int, ...] = (400, 1600, 6400), repetitions: int = 100, seed: int = 0) -> dict:
    mu = torch.full((D,), 0.5, dtype=torch.float64)
    zero = torch.zeros(D, dtype=torch.float64)
    reference = FeatureStats.from_sums(2, 2 * zero, torch.zeros(D, D, dtype=torch.float64))
    limit = float(mu.square().sum() + D)  # FID at N = infinity: |mu|^2 + tr(I)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for n in sizes:
        values = []
        for _ in range(repetitions):
            metric = InceptionMetrics(
                sfid=False, inception_score=False, feature=_Samples(), fid_groups=GROUPS, real_stats=reference
            )
            metric.update(torch.randn(n, D, generator=generator, dtype=torch.float64) + mu, real=False)
            values.append({k: float(v) for k, v in metric.compute().items()})
        fids = torch.tensor([v["fid"] for v in values], dtype=torch.float64)
        rows.append(
            {
                "n": n,
                "mean_fid_stderr": sum(v["fid_stderr"] for v in values) / repetitions,
                "std_of_fid": float(fids.std()),
                "bias_of_fid_closed_form": D / n,
                "monte_carlo_error_of_mean_fid": float(fids.std()) / repetitions**0.5,
                "mean_fid_minus_limit": float(fids.mean()) - limit,
            }
        )
    return {"machine": platform.processor() or platform.machine(), "d": D, "groups": GROUPS, "rows": rows}


if __name__ == "__main__":
    results = run()
    path = Path(__file__).parent / "results" / "uncertainty_cpu_gaussian_d4.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    for row in results["rows"]:
        print(row)
