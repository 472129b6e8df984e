"""A smoke run of benchmarks/bench.py: it still runs against the peers' current APIs and agrees with them.

The timings are not asserted (claims of speed live in the benchmark's output, not in tests); what is
asserted is what the benchmark's tables rest on: identical features to torchmetrics, one Fréchet distance
from all three implementations (and from our fixed-reference path), and the exact FID that the fast modes'
deviations are measured from. bf16 is left out: on a CPU without AVX512-BF16 or AMX it is emulated and
slow (the fast modes have their own tests in test_metric.py).

The benchmark runs in this process (its ``run`` and ``report``, as its ``main`` calls them), on the suite's
random weights: a fresh interpreter would spend longer importing torch and the peers than benchmarking.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import script_module

pytestmark = pytest.mark.slow


def test_benchmark_smoke_run_agrees_with_the_peers(inception_weights) -> None:
    bench = script_module("benchmarks/bench.py", "bench")
    args = bench.parser().parse_args(
        [
            *("--repeats", "1", "--batch", "1", "--dim", "64", "--skip-compile", "--deviation-images", "2"),
            *("--devices", "cpu", "--precisions", "exact", "--sizes", "32"),
        ]
    )
    results = {"environment": bench.environment()}
    bench.run(args, inception_weights, results)
    assert "update()" in bench.report(results)
    results = json.loads(json.dumps(results))  # what --json writes
    assert [(r["device"], r["input_px"]) for r in results["update"]] == [("cpu", 32)]
    for row in results["update"]:
        assert row["max_rel_feature_diff"] < 1e-4, row
        assert set(row["images_per_s"]) == {"exact", "torchmetrics"}, row
    values = results["compute"][0]["values"]
    for ours in (values["ours"], values["ours_fixed_reference"]):
        # torchmetrics returns its FID in the features' dtype, float32: 6e-8 relative rounding.
        assert abs(ours - values["torchmetrics"]) <= 1e-6 * values["torchmetrics"]
        assert abs(ours - values["pytorch_fid"]) <= 1e-10 * values["pytorch_fid"]
    assert results["fid_deviation"][0]["fid"]["exact"] > 0
    network = results["network"][0]
    # The same float32 network in another memory layout: oneDNN sums in another order, round-off only (the
    # 1e-4 bound of the peer comparisons).
    assert network["metric_layout"] == "channels_last" and set(network["seconds"]) == {"channels_last", "nchw"}
    assert network["max_rel_feature_diff"]["nchw"] < 1e-4


def test_kept_features_benchmark_smoke_run() -> None:
    module = script_module("benchmarks/bench_kept_features.py", "bench_kept")
    result = module.run(n=1200, d=16, device=torch.device("cpu"), subsets=2)
    assert set(result["seconds"]) == {"fid_from_sums", "precision_recall_k3", "kid_2x1000", "kid_all_pairs"}
    assert all(seconds > 0 for seconds in result["seconds"].values())
    assert result["features_bytes"] == 2 * 1200 * 16 * 4
    assert 0 < result["precision_recall_share_of_matmul_rate"]


def test_definitions_benchmark_smoke_run(inception_weights) -> None:
    module = script_module("benchmarks/bench_definitions.py", "bench_definitions")
    (row,) = module.run(inception_weights, n=3, sizes=[16], dim=64)
    gaps = row["relative_to_tensorflow"]
    assert set(gaps) == {"tensorflow", "pytorch-fid", "torchmetrics", "clean-fid"} and gaps["tensorflow"] == 0
    assert min(gaps[compat] for compat in ("pytorch-fid", "torchmetrics", "clean-fid")) > 1e-4
    assert "clean-fid" in module.report([row])
