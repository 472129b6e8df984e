"""A smoke run of benchmarks/bench.py: it still runs against the peers' current APIs and agrees with them.

The timings are not asserted (claims of speed live in the benchmark's output, not in tests); what is
asserted is what the benchmark's tables rest on: identical features to torchmetrics, one Fréchet distance
from all three implementations (and from our fixed-reference path), and a bf16 deviation small enough to be a fast mode.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import REPO, run_python


def test_benchmark_smoke_run_agrees_with_the_peers(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run_python(
        REPO / "benchmarks" / "bench.py",
        *("--repeats", "1", "--batch", "4", "--dim", "64", "--skip-compile", "--deviation-images", "8"),
        *("--json", str(out)),
    )
    results = json.loads(out.read_text())
    assert [(r["device"], r["input_px"]) for r in results["update"]][:2] == [("cpu", 299), ("cpu", 32)]
    for row in results["update"]:
        assert row["max_rel_feature_diff"] < 1e-4, row
    values = results["compute"]["values"]
    for ours in (values["ours"], values["ours_fixed_reference"]):
        # torchmetrics returns its FID in the features' dtype, float32: 6e-8 relative rounding.
        assert abs(ours - values["torchmetrics"]) <= 1e-6 * values["torchmetrics"]
        assert abs(ours - values["pytorch_fid"]) <= 1e-10 * values["pytorch_fid"]
    assert results["fast_mode"][0]["relative_deviation"] < 0.05
