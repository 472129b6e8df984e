"""Side-by-side benchmark: fid_metric vs torchmetrics vs pytorch-fid, same inputs, one process.

    python benchmarks/bench.py                       # CPU (and CUDA too when present)
    python benchmarks/bench.py --json bench.json     # also write the numbers as JSON
    python benchmarks/bench.py --devices cuda --batch 64,256 --sizes 299,32,64,256   # what device_check runs

Measures, on identical inputs and identical (random-init, pt_inception layout) Inception weights:

* ``update()`` seconds per batch of images (``--sizes`` px input, ``--batch`` images; default 299 and 32 px,
  batch 16 on CPU and 64 on CUDA): fid_metric exact, fid_metric ``arithmetic="bf16"`` and, on CUDA,
  ``arithmetic="tf32"``; torchmetrics' ``FrechetInceptionDistance(antialias=False)`` (its TF1-resize path, the
  one that computes the same features) with PyTorch's default flags, and on CUDA also with TF32 off; the
  largest relative feature difference between ours and torchmetrics'; peak CUDA memory of one update;
* the time ``update()`` spends outside the network's own forward (input checks, preprocessing, float64
  accumulation), measured by running it with the network swapped for its cached output, as a share of the
  network's time;
* ``compute()`` at d = 2048 (``--dim``) on identical float64 sums, on each device: ours (Cholesky +
  triangular product pair + eigvalsh), ours with fixed reference statistics (factor reused), torchmetrics'
  (eigvals of S1 S2), and on the CPU pytorch-fid's ``calculate_frechet_distance`` (scipy sqrtm);
* the network's exact forward: channels-last (what the metric runs) vs NCHW, and on CUDA a captured CUDA
  graph; unless ``--skip-compile``, ``torch.compile`` (and on CUDA ``mode="reduce-overhead"``), with the
  compile time;
* FID moved by the fast modes (and, on CUDA, by torchmetrics' default TF32 convolutions) relative to exact
  mode, on ``--deviation-images`` smooth images per side, at ``--dim`` features;
* the bytes each process sends per DDP sync, from the state sizes.

Timings are medians of ``--repeats`` rounds after one warm-up run, the contenders taking turns within each
round (pytorch-fid's 10 s ``sqrtm`` and the one-off compile times are timed once); the weights' values do
not affect them. ``--repeats 1 --batch 1 --dim 64 --skip-compile`` is a quick smoke run
(tests/test_bench.py).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
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
from fid_metric._features.arithmetic import cuda_fp32, network_math, network_memory_format
from fid_metric._features.inception import FIDInceptionV3
from fid_metric._features.preprocess import inception_input


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


def smooth_images(n: int, size: int, seed: int, chunk: int = 256) -> torch.Tensor:
    """``(n, 3, size, size)`` uint8: random 6x6 colour fields, bicubically upsampled, plus pixel noise.

    Made ``chunk`` images at a time (one seeded generator), so thousands of images need no float copy of all.
    """
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = F.interpolate(torch.rand(m, 3, 6, 6, generator=g) * 255, size=(size, size), mode="bicubic")
        x = x + torch.randn(m, 3, size, size, generator=g) * 6
        out[start : start + m] = x.round().clamp(0, 255).to(torch.uint8)
    return out


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


@contextlib.contextmanager
def tf32_off(device: torch.device):
    """IEEE float32 convolutions and matmuls on CUDA (PyTorch's default lets cuDNN use TF32); no-op elsewhere."""
    with cuda_fp32("ieee") if device.type == "cuda" else contextlib.nullcontext():
        yield


class _CachedOutputs(torch.nn.Module):
    """Stands in for the network: returns the outputs it was built with, whatever the input."""

    def __init__(self, outputs: dict[str, Tensor]) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, x: Tensor, names: tuple[str, ...]) -> dict[str, Tensor]:
        return {name: self.outputs[name] for name in names}


def device_precisions(device: torch.device, wanted: list[str]) -> list[str]:
    """The wanted fid_metric precisions that differ on ``device`` ("tf32" is "exact" off CUDA); exact first."""
    return [p for p in ("exact", "tf32", "bf16") if p in wanted + ["exact"] and (p != "tf32" or device.type == "cuda")]


def update_contenders(weights: Path, device: torch.device, precisions: list[str]) -> dict[str, torchmetrics.Metric]:
    """The metrics whose ``update()`` is timed, built once per device: fid_metric in each of ``precisions``,
    torchmetrics, and a fid_metric whose network ``bench_update`` swaps for its output."""
    metrics: dict[str, torchmetrics.Metric] = {
        p: FrechetInceptionDistance(2048, feature_extractor_weights_path=weights, arithmetic=p).to(device)
        for p in precisions
    }
    metrics["torchmetrics"] = TorchmetricsFID(2048, feature_extractor_weights_path=str(weights), antialias=False)
    metrics["hollow"] = FrechetInceptionDistance(2048, feature_extractor_weights_path=weights)
    return {name: metric.to(device) for name, metric in metrics.items()}


def bench_update(metrics: dict[str, torchmetrics.Metric], device: torch.device, batch: int, size: int, repeats: int):
    """One row of the update() table: seconds per batch of each contender, overhead share, feature agreement."""
    imgs = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    ours, theirs = metrics["exact"], metrics["torchmetrics"]
    peak_mib = {}
    if device.type == "cuda":
        for name in ("exact", "torchmetrics"):
            metrics[name].update(imgs, real=True)  # first: weights to the GPU, cuDNN's algorithm search
            torch.cuda.reset_peak_memory_stats(device)
            metrics[name].update(imgs, real=True)
            peak_mib[name] = torch.cuda.max_memory_allocated(device) / 2**20

    layout = network_memory_format(device, "exact")
    network = ours._extractor.on(device, layout)
    x = inception_input(imgs, "tensorflow").contiguous(memory_format=layout)
    # The same update() with the network swapped for its cached output: input checks, preprocessing, the
    # float64 accumulation, timed on their own rather than as a small difference of two large timings.
    with network_math(device, "exact"):
        metrics["hollow"]._extractor.module = _CachedOutputs(network(x, ("2048",)))

    def network_only() -> None:
        with network_math(device, "exact"):
            network(x, ("2048",))

    def torchmetrics_tf32_off() -> None:
        with tf32_off(device):
            theirs.update(imgs, real=True)

    fns: dict[str, Callable[[], object]] = {
        p: (lambda m=metrics[p]: m.update(imgs, real=True)) for p in ("exact", "tf32", "bf16") if p in metrics
    }
    fns["torchmetrics"] = lambda: theirs.update(imgs, real=True)
    if device.type == "cuda":
        fns["torchmetrics_tf32_off"] = torchmetrics_tf32_off
    fns["network"] = network_only
    fns["around_network"] = lambda: metrics["hollow"].update(imgs, real=True)
    seconds = interleaved_medians(fns, repeats, device)
    with torch.inference_mode():
        f_ours = ours.inception(imgs).double()
        with tf32_off(device):
            f_theirs = theirs.inception(imgs).double()
    contenders = [name for name in seconds if name not in ("network", "around_network")]
    return {
        "input_px": size,
        "batch": batch,
        "seconds": seconds,
        "images_per_s": {name: batch / seconds[name] for name in contenders},
        "speed_vs_torchmetrics": {name: seconds["torchmetrics"] / seconds[name] for name in contenders},
        "overhead_share": seconds["around_network"] / seconds["network"],
        "peak_cuda_mib": peak_mib,
        "max_rel_feature_diff": ((f_ours - f_theirs).abs().max() / f_theirs.abs().max()).item(),
    }


def bench_network(weights: Path, device: torch.device, batch: int, repeats: int, compile: bool, precision="exact"):
    """The network's forward at 299 px in ``precision``, in the layouts and launch modes the metric could use.

    Network and input in channels-last and in NCHW (the metric runs the one ``network_memory_format`` names:
    row ``metric_layout``), cuDNN choosing algorithms by its heuristics as the metric lets it; on CUDA also
    both layouts autotuned (``cudnn.benchmark``) and a captured CUDA graph of the metric's layout (fixed
    batch shape). With ``compile``: ``torch.compile`` of the metric's layout (on CPU with inductor's freezing,
    without which the CPU gains nothing; on CUDA also ``mode="reduce-overhead"``), with the one-off compile
    time. Each variant's largest relative feature difference from the metric's layout is reported.
    """
    source = FrechetInceptionDistance(2048, feature_extractor_weights_path=weights)._extractor
    networks = {
        "channels_last": source.on(device, torch.channels_last),
        "nchw": copy.deepcopy(source.module).to(memory_format=torch.contiguous_format),
    }
    x = inception_input(smooth_images(batch, 299, seed=4).to(device), "tensorflow")
    inputs = {"channels_last": x.contiguous(memory_format=torch.channels_last), "nchw": x}
    metric_layout = "nchw" if network_memory_format(device, precision) == torch.contiguous_format else "channels_last"
    forward = {name: (lambda n=name: networks[n](inputs[n], ("2048",))["2048"]) for name in networks}
    variants: dict[str, Callable[[], Tensor]] = {metric_layout: forward[metric_layout]}
    variants |= forward
    if device.type == "cuda":
        variants |= {f"{name}_autotuned": (lambda f=f: _autotuned(f)) for name, f in forward.items()}
    row: dict = {"batch": batch, "precision": precision, "metric_layout": metric_layout}
    row |= {"compile_s": {}, "max_rel_feature_diff": {}}
    with network_math(device, precision):
        reference = forward[metric_layout]().float()
        if device.type == "cuda":
            variants["cuda_graph"] = _cuda_graph(forward[metric_layout], device)
        modes = {}
        if compile:
            modes["compile"] = {"options": {"freezing": True}} if device.type == "cpu" else {}
            if device.type == "cuda":
                modes["compile_reduce_overhead"] = {"mode": "reduce-overhead"}
        for name, kwargs in modes.items():
            torch._dynamo.reset()
            compiled = torch.compile(networks[metric_layout], **kwargs)
            start = time.perf_counter()
            compiled(inputs[metric_layout], ("2048",))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            row["compile_s"][name] = time.perf_counter() - start
            # clone(): reduce-overhead's output lives in the graph's pool, overwritten by the next replay.
            variants[name] = lambda c=compiled: c(inputs[metric_layout], ("2048",))["2048"].clone()
        for name, fn in variants.items():
            diff = (fn().float() - reference).abs().max() / reference.abs().max()
            row["max_rel_feature_diff"][name] = diff.item()
        row["seconds"] = interleaved_medians(variants, repeats, device)
    row["speedup_vs_metric_layout"] = {n: row["seconds"][metric_layout] / s for n, s in row["seconds"].items()}
    return row


def _autotuned(fn: Callable[[], Tensor]) -> Tensor:
    """``fn()`` with cuDNN autotuning its algorithms (``cudnn.benchmark``) instead of its heuristics."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        return fn()
    finally:
        torch.backends.cudnn.benchmark = saved


def _cuda_graph(fn: Callable[[], Tensor], device: torch.device) -> Callable[[], Tensor]:
    """``fn`` captured once as a CUDA graph (its inputs must stay where they are); replays return a copy."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up off the capture: cuDNN's algorithm search, workspace allocation
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay() -> Tensor:
        graph.replay()
        return out.clone()

    return replay


def fid_deviation(
    weights: Path, device: torch.device, n: int, batch: int, precisions: list[str], dim: int = 2048
) -> dict:
    """FID of n smooth real vs n darker generated images at 299 px, ``dim``-d features, in each arithmetic.

    fid_metric in each of ``precisions`` (exact first); on CUDA also torchmetrics with PyTorch's default flags (TF32
    convolutions, what published GPU numbers use) and with TF32 off. Relative deviations are from exact.
    """
    real, fake = smooth_images(n, 299, seed=2), smooth_images(n, 299, seed=3) // 2 + 40
    real, fake = real.to(device), fake.to(device)
    modes: dict[str, Callable[[], torchmetrics.Metric]] = {
        p: lambda p=p: FrechetInceptionDistance(dim, feature_extractor_weights_path=weights, arithmetic=p)
        for p in precisions
    }
    if device.type == "cuda":
        modes["torchmetrics"] = modes["torchmetrics_tf32_off"] = lambda: TorchmetricsFID(
            dim, feature_extractor_weights_path=str(weights), antialias=False
        )
    values = {}
    for name, make in modes.items():
        metric = make().to(device)
        with tf32_off(device) if name == "torchmetrics_tf32_off" else contextlib.nullcontext():
            for start in range(0, n, batch):
                metric.update(real[start : start + batch], real=True)
                metric.update(fake[start : start + batch], real=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # n < 2048: singular covariances; fine for comparing the modes
            values[name] = float(metric.compute())
    return {
        "images_per_side": n,
        "dim": dim,
        "fid": values,
        "relative_deviation": {k: abs(v - values["exact"]) / values["exact"] for k, v in values.items()},
    }


def bench_compute(weights: Path, d: int, repeats: int, device: torch.device) -> dict:
    """``compute()`` on identical float64 sums of 2d samples per side, on ``device``: ours two-sided, ours with a
    fixed reference (``real_stats=``, its factor computed once), torchmetrics; on the CPU also pytorch-fid's
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
        real_stats=FeatureStats.from_sums(int(sums[0][0]), *sums[0][1:], compat="tensorflow"),
        compute_with_cache=False,
    )
    theirs = TorchmetricsFID(d, feature_extractor_weights_path=str(weights), compute_with_cache=False)
    two_images = smooth_images(2, 32, seed=5).to(device)
    for metric in (ours, fixed, theirs):
        metric.to(device).update(two_images, real=False)  # then overwrite the states: update() sets up torchmetrics'
        sides = ("fake",) if metric is fixed else ("real", "fake")
        for side, (n, feature_sum, outer_sum) in zip(sides, sums[-len(sides) :]):
            getattr(metric, f"{side}_features_num_samples").copy_(n)
            getattr(metric, f"{side}_features_sum").copy_(feature_sum)
            getattr(metric, f"{side}_features_cov_sum").copy_(outer_sum)
    values = {
        "ours": ours.compute().item(),
        "ours_fixed_reference": fixed.compute().item(),
        "torchmetrics": theirs.compute().item(),
    }
    seconds = interleaved_medians(
        {"ours": ours.compute, "ours_fixed_reference": fixed.compute, "torchmetrics": theirs.compute},
        repeats,
        device,
    )
    if device.type == "cpu":
        numpy_stats = []
        for n, feature_sum, outer_sum in sums:
            mu = feature_sum.numpy() / int(n)
            numpy_stats += [mu, (outer_sum.numpy() - int(n) * np.outer(mu, mu)) / (int(n) - 1)]
        try:
            values["pytorch_fid"] = float(calculate_frechet_distance(*numpy_stats))
        except TypeError as err:  # pytorch-fid 0.3.0 passes sqrtm(disp=False), which SciPy 1.16 removed
            values["pytorch_fid"] = f"not run: {err}"
        else:
            seconds |= interleaved_medians({"pytorch_fid": lambda: calculate_frechet_distance(*numpy_stats)}, 1, device)
    return {"d": d, "seconds": seconds, "values": values}


def sync_bytes(d: int, world_size: int) -> dict:
    state = 2 * (d + d * d + 1) * 8
    return {
        "ours_bytes_all_reduce": 2 * (d + d * (d + 1) // 2 + 1) * 8,
        "torchmetrics_bytes_received_all_gather": world_size * state,
        "state_bytes": state,
    }


def environment() -> dict:
    """The machine and the versions the figures come from."""
    cuda = torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if cuda else None,
        "versions": {
            "fid_metric": fid_metric.__version__,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "torchmetrics": torchmetrics.__version__,
            "pytorch_fid": pytorch_fid.__version__,
            "numpy": np.__version__,
        },
        # PyTorch's defaults, which torchmetrics and the other peers run under: cuDNN may use TF32.
        "default_flags": {
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.benchmark": torch.backends.cudnn.benchmark,
        },
    }


def csv_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--devices", default=None, help="comma-separated; default: cpu, and cuda when present")
    p.add_argument("--batch", type=csv_ints, default=None, help="images per update(); default 16 CPU, 64 CUDA")
    p.add_argument("--sizes", type=csv_ints, default=[299, 32], help="input px of the update() rows")
    p.add_argument("--skip-compute", action="store_true", help="skip the distance timings")
    p.add_argument(
        "--dim", type=int, default=2048, choices=(64, 192, 768, 2048), help="compute() and FID-deviation features"
    )
    p.add_argument("--skip-compile", action="store_true", help="skip the torch.compile timings")
    p.add_argument("--deviation-images", type=int, default=64, help="images per side, fast-mode FID deviation")
    p.add_argument("--precisions", default="exact,tf32,bf16", help="fid_metric's, where they differ on a device")
    return p


def run(args: argparse.Namespace, weights: Path, results: dict, checkpoint: Callable[[], None] = lambda: None):
    """Fill ``results`` section by section, calling ``checkpoint`` after each (device_check saves there)."""
    names = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in map(torch.device, names):
        batches = args.batch or [64 if device.type == "cuda" else 16]
        precisions = device_precisions(device, args.precisions.split(","))
        metrics = update_contenders(weights, device, precisions)
        for batch in batches:
            for size in args.sizes:
                row = bench_update(metrics, device, batch, size, args.repeats)
                results.setdefault("update", []).append({"device": device.type, **row})
                checkpoint()
        del metrics
        deviation = fid_deviation(weights, device, args.deviation_images, batches[0], precisions, args.dim)
        results.setdefault("fid_deviation", []).append({"device": device.type, **deviation})
        checkpoint()
        if not args.skip_compute:
            compute = bench_compute(weights, args.dim, args.repeats, device)
            results.setdefault("compute", []).append({"device": device.type, **compute})
            checkpoint()
        row = bench_network(weights, device, batches[0], args.repeats, compile=not args.skip_compile)
        results.setdefault("network", []).append({"device": device.type, **row})
        checkpoint()
    results["sync"] = sync_bytes(2048, world_size=8)


def report(results: dict) -> str:
    """The results as the markdown tables of docs/performance.md."""
    env = results["environment"]
    v = env["versions"]
    lines = [
        f"fid_metric {v['fid_metric']}, torch {v['torch']} (CUDA {v['cuda']}, cuDNN {v['cudnn']}), torchmetrics "
        f"{v['torchmetrics']}, pytorch-fid {v['pytorch_fid']}; {env['processor']}, {env['torch_threads']} threads; "
        f"GPU: {env['cuda']}",
        "",
        "| update() | input | batch | contender | images/s | speed vs torchmetrics | peak CUDA MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results.get("update", []):
        for name, rate in r["images_per_s"].items():
            peak = r["peak_cuda_mib"].get(name)
            lines.append(
                f"| {r['device']} | {r['input_px']} px | {r['batch']} | {name} | {rate:.1f} | "
                f"{r['speed_vs_torchmetrics'][name]:.2f}x | {'' if peak is None else f'{peak:.0f}'} |"
            )
        lines.append(
            f"| {r['device']} | {r['input_px']} px | {r['batch']} | (exact: outside the network "
            f"{100 * r['overhead_share']:.1f}% of it; features vs torchmetrics {r['max_rel_feature_diff']:.1e}) "
            "| | | |"
        )
    for r in results.get("network", []):
        lines += [
            "",
            f"network forward on {r['device']}, batch {r['batch']} at 299 px, {r['precision']} "
            f"(the metric runs {r['metric_layout']}):",
        ]
        for name, seconds in r["seconds"].items():
            compile_s = r["compile_s"].get(name)
            lines.append(
                f"- {name}: {seconds * 1e3:.1f} ms ({r['speedup_vs_metric_layout'][name]:.2f}x), feature diff "
                f"{r['max_rel_feature_diff'][name]:.1e}" + ("" if compile_s is None else f", {compile_s:.0f} s compile")
            )
    for r in results.get("fid_deviation", []):
        lines += ["", f"FID on {r['device']}, {r['images_per_side']} images per side at 299 px, d = {r['dim']}:"]
        for name, value in r["fid"].items():
            lines.append(f"- {name}: {value:.6f} ({100 * r['relative_deviation'][name]:.4f}% from exact)")
    for c in results.get("compute", []):
        s = c["seconds"]
        lines += ["", f"| compute() on {c['device']}, d = {c['d']} | seconds | vs torchmetrics |", "|---|---|---|"]
        lines += [f"| {name} | {t:.3f} | {t / s['torchmetrics']:.2f}x |" for name, t in s.items()]
        lines.append(f"values: {c['values']}")
    if "sync" in results:
        s = results["sync"]
        lines.append(
            f"\nDDP sync at d = 2048: fid_metric all-reduces {s['ours_bytes_all_reduce'] / 1e6:.1f} MB per process; "
            f"torchmetrics all_gathers {s['torchmetrics_bytes_received_all_gather'] / 1e6:.0f} MB into each of 8."
        )
    return "\n".join(lines)


def main() -> None:
    args = parser().parse_args()
    results: dict = {"environment": environment()}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "pt_inception-random.pth"
        random_weights(weights)
        run(args, weights, results)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
