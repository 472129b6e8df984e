"""Side-by-side benchmark: fid_metric vs torchmetrics vs pytorch-fid, same inputs, one process.

    python benchmarks/bench.py                       # CPU (and CUDA too when present)
    python benchmarks/bench.py --json bench.json     # also write the numbers as JSON

Measures, on identical inputs and identical (random-init, pt_inception layout) Inception weights:

* ``update()`` seconds per batch of images (299 px and 32 px input; batch 16 on CPU, 64 on CUDA), exact
  mode, ours vs torchmetrics' ``FrechetInceptionDistance(antialias=False)`` (its TF1-resize path, the one
  that computes the same features), and the largest relative feature difference between the two;
* the share of ``update()`` spent outside the network's own forward (preprocessing, float64 accumulation);
* ``compute()``'s Fréchet distance at d = 2048: ours (Cholesky + eigvalsh), ours with a fixed reference's
  factor reused, torchmetrics' ``_compute_fid`` (eigvals of S1 S2) and pytorch-fid's
  ``calculate_frechet_distance`` (scipy sqrtm);
* the bytes each process sends per DDP sync, from the state sizes.

Timings are medians of ``--repeats`` runs after one warm-up run; the weights' values do not affect them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytorch_fid
import torch
import torchmetrics
from pytorch_fid.fid_score import calculate_frechet_distance
from torchmetrics.image.fid import FrechetInceptionDistance as TorchmetricsFID
from torchmetrics.image.fid import _compute_fid

import fid_metric
from fid_metric import FrechetInceptionDistance, frechet_distance
from fid_metric.distance import sqrt_factor
from fid_metric.inception import FIDInceptionV3
from fid_metric.preprocess import inception_input


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up, synchronising CUDA around each."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_update(weights: Path, device: torch.device, batch: int, size: int, repeats: int) -> dict:
    imgs = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    ours = FrechetInceptionDistance(2048, feature_extractor_weights_path=weights).to(device)
    theirs = TorchmetricsFID(2048, feature_extractor_weights_path=str(weights), antialias=False).to(device)
    t_ours = median_seconds(lambda: ours.update(imgs, real=True), repeats, device)
    t_theirs = median_seconds(lambda: theirs.update(imgs, real=True), repeats, device)

    network = ours._extractor.on(device)
    x = inception_input(imgs, "tensorflow").contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        t_network = median_seconds(lambda: network(x, ("2048",)), repeats, device)
        f_ours = ours._outputs(imgs)["2048"].double()
        f_theirs = theirs.inception(imgs).double()
    feature_diff = ((f_ours - f_theirs).abs().max() / f_theirs.abs().max()).item()
    return {
        "input_px": size,
        "batch": batch,
        "ours_s": t_ours,
        "torchmetrics_s": t_theirs,
        "ratio": t_ours / t_theirs,
        "ours_images_per_s": batch / t_ours,
        "torchmetrics_images_per_s": batch / t_theirs,
        "network_only_s": t_network,
        "overhead_share": max(t_ours - t_network, 0.0) / t_network,
        "max_rel_feature_diff": feature_diff,
    }


def bench_compute(d: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    stats = []
    for _ in range(2):
        a = torch.randn(2 * d, d, generator=g, dtype=torch.float64).relu()
        stats.append((a.mean(0), torch.cov(a.T)))
    (mu1, s1), (mu2, s2) = stats
    factor = sqrt_factor(s1)
    cpu = torch.device("cpu")
    n1, n2 = [(m.numpy(), s.numpy()) for m, s in stats]
    values = {
        "ours": frechet_distance(mu1, s1, mu2, s2).item(),
        "torchmetrics": _compute_fid(mu1, s1, mu2, s2).item(),
        "pytorch_fid": float(calculate_frechet_distance(*n1, *n2)),
    }
    times = {
        "ours_s": median_seconds(lambda: frechet_distance(mu1, s1, mu2, s2), repeats, cpu),
        "ours_fixed_reference_s": median_seconds(
            lambda: frechet_distance(mu1, s1, mu2, s2, sigma1_factor=factor), repeats, cpu
        ),
        "torchmetrics_s": median_seconds(lambda: _compute_fid(mu1, s1, mu2, s2), repeats, cpu),
        "pytorch_fid_s": median_seconds(lambda: calculate_frechet_distance(*n1, *n2), 1, cpu),
    }
    return {"d": d, **times, "values": values}


def sync_bytes(d: int, world_size: int) -> dict:
    state = 2 * (d + d * d + 1) * 8
    return {
        "ours_bytes_all_reduce": 2 * (d + d * (d + 1) // 2 + 1) * 8,
        "torchmetrics_bytes_received_all_gather": world_size * state,
        "state_bytes": state,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--skip-compute", action="store_true", help="skip the d=2048 distance timings")
    args = parser.parse_args()

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "pt_inception-random.pth"
        torch.manual_seed(0)
        torch.save(FIDInceptionV3().state_dict(), weights)
        results = {
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "torch_threads": torch.get_num_threads(),
                "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            },
            "versions": {
                "fid_metric": fid_metric.__version__,
                "torch": torch.__version__,
                "torchmetrics": torchmetrics.__version__,
                "pytorch_fid": pytorch_fid.__version__,
                "numpy": np.__version__,
            },
            "update": [],
        }
        for device in devices:
            batch = 64 if device.type == "cuda" else 16
            for size in (299, 32):
                row = bench_update(weights, device, batch, size, args.repeats)
                results["update"].append({"device": device.type, **row})
    if not args.skip_compute:
        results["compute"] = bench_compute(2048, args.repeats)
    results["sync"] = sync_bytes(2048, world_size=8)

    print(
        f"fid_metric {fid_metric.__version__}, torch {torch.__version__}, torchmetrics {torchmetrics.__version__}, "
        f"pytorch-fid {pytorch_fid.__version__}; {results['machine']['processor']}, "
        f"{results['machine']['torch_threads']} threads; GPU: {results['machine']['cuda']}"
    )
    print()
    print(
        "| update() | input | batch | fid_metric | torchmetrics | ratio | overhead beyond network | max feature diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results["update"]:
        print(
            f"| {r['device']} | {r['input_px']} px | {r['batch']} | {r['ours_s'] * 1e3:.0f} ms "
            f"({r['ours_images_per_s']:.1f} img/s) | {r['torchmetrics_s'] * 1e3:.0f} ms "
            f"({r['torchmetrics_images_per_s']:.1f} img/s) | {r['ratio']:.2f}x | {100 * r['overhead_share']:.1f}% "
            f"| {r['max_rel_feature_diff']:.1e} |"
        )
    if "compute" in results:
        c = results["compute"]
        print()
        print("| Fréchet distance, d = 2048 | seconds | vs torchmetrics | vs pytorch-fid |")
        print("|---|---|---|---|")
        for name, key in [
            ("fid_metric", "ours_s"),
            ("fid_metric, fixed reference", "ours_fixed_reference_s"),
            ("torchmetrics", "torchmetrics_s"),
            ("pytorch-fid", "pytorch_fid_s"),
        ]:
            print(
                f"| {name} | {c[key]:.3f} | {c[key] / c['torchmetrics_s']:.2f}x | {c[key] / c['pytorch_fid_s']:.3f}x |"
            )
        print(f"\nvalues: {c['values']}")
    s = results["sync"]
    print(
        f"\nDDP sync at d = 2048: fid_metric all_reduces {s['ours_bytes_all_reduce'] / 1e6:.1f} MB per process; "
        f"torchmetrics all_gathers {s['torchmetrics_bytes_received_all_gather'] / 1e6:.0f} MB into each of 8 processes."
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
