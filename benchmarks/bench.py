"""Side-by-side benchmark: fid_metric vs torchmetrics vs pytorch-fid, same inputs, one process.

    python benchmarks/bench.py                       # CPU (and CUDA too when present)
    python benchmarks/bench.py --json bench.json     # also write the numbers as JSON

Measures, on identical inputs and identical (random-init, pt_inception layout) Inception weights:

* ``update()`` seconds per batch of images (299 px and 32 px input; batch 16 on CPU, 64 on CUDA), exact
  mode, ours vs torchmetrics' ``FrechetInceptionDistance(antialias=False)`` (its TF1-resize path, the one
  that computes the same features), and the largest relative feature difference between the two;
* the time ``update()`` spends outside the network's own forward (input checks, preprocessing, float64
  accumulation), measured by running it with the network swapped for its cached output, as a share of the
  network's time;
* ``compute()`` at d = 2048 (``--dim``) on identical float64 sums: ours (Cholesky + triangular product
  pair + eigvalsh), ours with fixed reference statistics (factor reused), torchmetrics' (eigvals of S1 S2)
  and pytorch-fid's ``calculate_frechet_distance`` (scipy sqrtm) on the same mean and covariance;
* the network's forward, eager vs ``torch.compile`` (and CUDA graphs on CUDA), with the compile time;
* the bytes each process sends per DDP sync, from the state sizes.

Timings are medians of ``--repeats`` rounds after one warm-up run, the contenders taking turns within each
round (pytorch-fid's 10 s ``sqrtm`` and the one-off compile times are timed once); the weights' values do
not affect them. ``--repeats 1 --batch 4 --dim 64 --skip-compile`` is a quick smoke run
(tests/test_bench.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pytorch_fid
import torch
import torch.nn.functional as F
import torchmetrics
from pytorch_fid.fid_score import calculate_frechet_distance
from torch import Tensor
from torchmetrics.image.fid import FrechetInceptionDistance as TorchmetricsFID

import fid_metric
from fid_metric import FeatureStats, FrechetInceptionDistance
from fid_metric.inception import FIDInceptionV3
from fid_metric.metric import _Unregistered
from fid_metric.precision import network_math
from fid_metric.preprocess import inception_input


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median wall time of each function over ``repeats`` rounds, after one warm-up run of each.

    Each round runs every function once, in turn, so a slow spell of a shared machine lands on all of them
    alike and the ratios stay fair. CUDA is synchronised around each run.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """``(n, 3, size, size)`` uint8: random 6x6 colour fields, bicubically upsampled, plus pixel noise."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 6, 6, generator=g) * 255, size=(size, size), mode="bicubic")
    return (x + torch.randn(n, 3, size, size, generator=g) * 6).round().clamp(0, 255).to(torch.uint8)


def random_weights(path: Path) -> None:
    """Random-init pt_inception weights with batch-norm statistics calibrated on smooth images.

    Timings do not depend on the weights' values; the fast-mode FID deviation does, and with BN statistics
    left at 0/1 every image would get nearly the same features.
    """
    torch.manual_seed(0)
    network = FIDInceptionV3()
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    torch.nn.Module.train(network, True)
    with torch.no_grad():
        network(inception_input(smooth_images(24, 299, seed=1), "tensorflow"))
    torch.save(network.state_dict(), path)


class _CachedOutputs(torch.nn.Module):
    """Stands in for the network: returns the outputs it was built with, whatever the input."""

    def __init__(self, outputs: dict[str, Tensor]) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, x: Tensor, names: tuple[str, ...]) -> dict[str, Tensor]:
        return {name: self.outputs[name] for name in names}


def bench_update(weights: Path, device: torch.device, batch: int, size: int, repeats: int) -> dict:
    imgs = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    ours = FrechetInceptionDistance(2048, feature_extractor_weights_path=weights).to(device)
    fast = FrechetInceptionDistance(2048, feature_extractor_weights_path=weights, precision="bf16").to(device)
    theirs = TorchmetricsFID(2048, feature_extractor_weights_path=str(weights), antialias=False).to(device)
    peak_bytes = {}
    if device.type == "cuda":
        for name, metric in (("ours", ours), ("torchmetrics", theirs)):
            metric.update(imgs, real=True)  # first: weights to the GPU, cuDNN's algorithm search
            torch.cuda.reset_peak_memory_stats(device)
            metric.update(imgs, real=True)
            peak_bytes[name] = torch.cuda.max_memory_allocated(device)

    network = ours._extractor.on(device)
    x = inception_input(imgs, "tensorflow").contiguous(memory_format=torch.channels_last)
    # The same update() with the network swapped for its cached output: input checks, preprocessing, the
    # float64 accumulation, timed on their own rather than as a small difference of two large timings.
    hollow = FrechetInceptionDistance(2048, feature_extractor_weights_path=weights).to(device)
    with network_math(device, "exact"):
        hollow._extractor = _Unregistered(_CachedOutputs(network(x, ("2048",))))

    def network_only() -> None:
        with network_math(device, "exact"):
            network(x, ("2048",))

    times = interleaved_medians(
        {
            "ours": lambda: ours.update(imgs, real=True),
            "torchmetrics": lambda: theirs.update(imgs, real=True),
            "fast": lambda: fast.update(imgs, real=True),
            "network": network_only,
            "hollow": lambda: hollow.update(imgs, real=True),
        },
        repeats,
        device,
    )
    t_ours, t_theirs, t_fast, t_network = times["ours"], times["torchmetrics"], times["fast"], times["network"]
    with torch.inference_mode():
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
        "fast_bf16_s": t_fast,
        "fast_bf16_images_per_s": batch / t_fast,
        "fast_speedup_vs_torchmetrics": t_theirs / t_fast,
        "peak_cuda_bytes_ours": peak_bytes.get("ours"),
        "peak_cuda_bytes_torchmetrics": peak_bytes.get("torchmetrics"),
        "network_only_s": t_network,
        "around_network_s": times["hollow"],
        "overhead_share": times["hollow"] / t_network,
        "max_rel_feature_diff": feature_diff,
    }


def bench_compile(weights: Path, device: torch.device, batch: int, repeats: int) -> dict:
    """The network's exact forward at 299 px: eager (what the metric runs) vs ``torch.compile``.

    On CUDA also ``mode="reduce-overhead"`` (CUDA graphs). On CPU, inductor's freezing (constant-folded,
    prepacked weights), without which the CPU gains nothing. Reports the one-off compile time and the
    largest relative feature difference from eager.
    """
    network = FrechetInceptionDistance(2048, feature_extractor_weights_path=weights)._extractor.on(device)
    x = inception_input(smooth_images(batch, 299, seed=4).to(device), "tensorflow")
    x = x.contiguous(memory_format=torch.channels_last)
    modes = {"default": {"options": {"freezing": True}} if device.type == "cpu" else {}}
    if device.type == "cuda":
        modes["reduce-overhead"] = {"mode": "reduce-overhead"}
    variants: dict[str, Callable[[], Tensor]] = {"eager": lambda: network(x, ("2048",))["2048"]}
    row: dict = {"batch": batch}
    with network_math(device, "exact"):
        reference = variants["eager"]()
        for name, kwargs in modes.items():
            torch._dynamo.reset()
            compiled = torch.compile(network, **kwargs)
            start = time.perf_counter()
            features = compiled(x, ("2048",))["2048"]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            row[f"{name}_compile_s"] = time.perf_counter() - start
            row[f"{name}_max_rel_feature_diff"] = ((features - reference).abs().max() / reference.abs().max()).item()
            variants[name] = lambda c=compiled: c(x, ("2048",))["2048"]
        times = interleaved_medians(variants, repeats, device)
    for name, seconds in times.items():
        row[f"{name}_s"] = seconds
        row[f"{name}_speedup"] = times["eager"] / seconds
    return row


def fast_mode_deviation(weights: Path, device: torch.device, n: int) -> dict:
    """FID of n smooth real vs n darker generated images at 299 px: exact mode vs precision="bf16"."""
    real, fake = smooth_images(n, 299, seed=2), smooth_images(n, 299, seed=3) // 2 + 40
    values = {}
    for precision in ("exact", "bf16"):
        metric = FrechetInceptionDistance(2048, feature_extractor_weights_path=weights, precision=precision)
        metric = metric.to(device)
        for start in range(0, n, 16):
            metric.update(real[start : start + 16].to(device), real=True)
            metric.update(fake[start : start + 16].to(device), real=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # n < 2048: singular covariances; fine for comparing two modes
            values[precision] = metric.compute().item()
    return {
        "images_per_side": n,
        "fid_exact": values["exact"],
        "fid_bf16": values["bf16"],
        "relative_deviation": abs(values["bf16"] - values["exact"]) / values["exact"],
    }


def bench_compute(weights: Path, d: int, repeats: int) -> dict:
    """``compute()`` on identical float64 sums of 2d samples per side: ours two-sided, ours with a fixed
    reference (``real_stats=``, its factor computed once), torchmetrics; and pytorch-fid's
    ``calculate_frechet_distance`` on the same mean and covariance (pytorch-fid has no metric object).
    """
    g = torch.Generator().manual_seed(0)
    sums = []
    for _ in range(2):
        a = torch.randn(2 * d, d, generator=g, dtype=torch.float64).relu()
        sums.append((torch.tensor(2 * d), a.sum(0), a.T @ a))
    # compute_with_cache=False: torchmetrics would otherwise return the first result again.
    ours = FrechetInceptionDistance(d, feature_extractor_weights_path=weights, compute_with_cache=False)
    fixed = FrechetInceptionDistance(
        d,
        feature_extractor_weights_path=weights,
        real_stats=FeatureStats.from_sums(int(sums[0][0]), *sums[0][1:]),
        compute_with_cache=False,
    )
    theirs = TorchmetricsFID(d, feature_extractor_weights_path=str(weights), compute_with_cache=False)
    two_images = smooth_images(2, 32, seed=5)
    for metric in (ours, fixed, theirs):
        metric.update(two_images, real=False)  # then overwrite the states: update() also sets up torchmetrics'
        sides = ("fake",) if metric is fixed else ("real", "fake")
        for side, (n, feature_sum, outer_sum) in zip(sides, sums[-len(sides) :]):
            getattr(metric, f"{side}_features_num_samples").copy_(n)
            getattr(metric, f"{side}_features_sum").copy_(feature_sum)
            getattr(metric, f"{side}_features_cov_sum").copy_(outer_sum)
    numpy_stats = []
    for n, feature_sum, outer_sum in sums:
        mu = feature_sum.numpy() / int(n)
        numpy_stats += [mu, (outer_sum.numpy() - int(n) * np.outer(mu, mu)) / (int(n) - 1)]
    cpu = torch.device("cpu")
    values = {
        "ours": ours.compute().item(),
        "ours_fixed_reference": fixed.compute().item(),
        "torchmetrics": theirs.compute().item(),
        "pytorch_fid": float(calculate_frechet_distance(*numpy_stats)),
    }
    times = interleaved_medians(
        {"ours_s": ours.compute, "ours_fixed_reference_s": fixed.compute, "torchmetrics_s": theirs.compute},
        repeats,
        cpu,
    )
    pytorch_fid_s = interleaved_medians({"p": lambda: calculate_frechet_distance(*numpy_stats)}, 1, cpu)["p"]
    return {"d": d, **times, "pytorch_fid_s": pytorch_fid_s, "values": values}


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
    parser.add_argument("--batch", type=int, default=None, help="images per update(); default 16 CPU, 64 CUDA")
    parser.add_argument("--skip-compute", action="store_true", help="skip the distance timings")
    parser.add_argument("--dim", type=int, default=2048, choices=(64, 192, 768, 2048), help="compute()'s features")
    parser.add_argument("--skip-compile", action="store_true", help="skip the torch.compile timings")
    parser.add_argument("--deviation-images", type=int, default=64, help="images per side, bf16 deviation")
    args = parser.parse_args()

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "pt_inception-random.pth"
        random_weights(weights)
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
            batch = args.batch or (64 if device.type == "cuda" else 16)
            for size in (299, 32):
                row = bench_update(weights, device, batch, size, args.repeats)
                results["update"].append({"device": device.type, **row})
            if not args.skip_compile:
                row = bench_compile(weights, device, batch, args.repeats)
                results.setdefault("compile", []).append({"device": device.type, **row})
            deviation = fast_mode_deviation(weights, device, args.deviation_images)
            results.setdefault("fast_mode", []).append({"device": device.type, **deviation})
        if not args.skip_compute:
            results["compute"] = bench_compute(weights, args.dim, args.repeats)
    results["sync"] = sync_bytes(2048, world_size=8)

    print(
        f"fid_metric {fid_metric.__version__}, torch {torch.__version__}, torchmetrics {torchmetrics.__version__}, "
        f"pytorch-fid {pytorch_fid.__version__}; {results['machine']['processor']}, "
        f"{results['machine']['torch_threads']} threads; GPU: {results['machine']['cuda']}"
    )
    print()
    print(
        "| update() | input | batch | fid_metric exact | torchmetrics | time ratio | overhead beyond network "
        "| max feature diff | fid_metric bf16 | bf16 speed-up vs torchmetrics |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results["update"]:
        print(
            f"| {r['device']} | {r['input_px']} px | {r['batch']} | {r['ours_s'] * 1e3:.0f} ms "
            f"({r['ours_images_per_s']:.1f} img/s) | {r['torchmetrics_s'] * 1e3:.0f} ms "
            f"({r['torchmetrics_images_per_s']:.1f} img/s) | {r['ratio']:.2f}x | {100 * r['overhead_share']:.1f}% "
            f"| {r['max_rel_feature_diff']:.1e} | {r['fast_bf16_s'] * 1e3:.0f} ms "
            f"({r['fast_bf16_images_per_s']:.1f} img/s) | {r['fast_speedup_vs_torchmetrics']:.1f}x |"
        )
        if r["peak_cuda_bytes_ours"] is not None:
            print(
                f"peak CUDA memory: fid_metric {r['peak_cuda_bytes_ours'] / 2**20:.0f} MiB, "
                f"torchmetrics {r['peak_cuda_bytes_torchmetrics'] / 2**20:.0f} MiB"
            )
    for r in results.get("compile", []):
        line = (
            f"\ntorch.compile of the network on {r['device']}, batch {r['batch']} at 299 px: eager "
            f"{r['eager_s'] * 1e3:.0f} ms; compiled {r['default_s'] * 1e3:.0f} ms ({r['default_speedup']:.2f}x, "
            f"{r['default_compile_s']:.0f} s to compile, feature diff {r['default_max_rel_feature_diff']:.1e})"
        )
        if "reduce-overhead_s" in r:
            line += (
                f"; CUDA graphs {r['reduce-overhead_s'] * 1e3:.1f} ms ({r['reduce-overhead_speedup']:.2f}x, "
                f"{r['reduce-overhead_compile_s']:.0f} s to compile)"
            )
        print(line)
    for r in results["fast_mode"]:
        print(
            f"\nbf16 fast mode on {r['device']}, {r['images_per_side']} images per side at 299 px: FID "
            f"{r['fid_bf16']:.4f} vs exact {r['fid_exact']:.4f}, relative deviation "
            f"{100 * r['relative_deviation']:.2f}%"
        )
    if "compute" in results:
        c = results["compute"]
        print()
        print(f"| compute(), d = {c['d']} | seconds | vs torchmetrics | vs pytorch-fid |")
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
