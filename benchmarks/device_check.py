"""The GPU machine's one command: CUDA tests, CUDA benchmark, TF32/bf16 FID deviation, NCCL path.

    benchmarks/device_check.sh OUT_DIR                  # on a machine with one CUDA GPU
    benchmarks/device_check.sh OUT_DIR --dry-run        # the same steps, tiny, on the CPU (checks the script)

Writes to OUT_DIR, section by section so that a run cut short keeps what it measured:

* ``results.json``: every figure (the structure of ``benchmarks/bench.py``'s JSON plus ``cuda_tests``,
  ``timing`` and ``errors``);
* ``device_check.log``: everything printed; ``pytest.log`` and ``pytest.xml``: the CUDA tests' output;
* ``summary.md``: the tables, also printed last.

Steps, in this order (a step that fails is recorded in ``errors`` and the next one runs):

1. ``pytest -m cuda tests``: update() under ``torch.cuda.set_sync_debug_mode("error")``, CUDA FID equal to
   CPU FID (1e-6 relative, exact mode), exact mode immune to host TF32/autocast, and one-process NCCL sync.
2. ``update()`` images/s at each ``--batch`` and ``--sizes``: fid_metric exact, tf32 and bf16; torchmetrics
   with PyTorch's default flags (TF32 convolutions) and with TF32 off; peak GPU memory; overhead share.
3. FID moved by TF32 (ours and torchmetrics' default) and by bf16 relative to exact, ``--deviation-images``
   images per side (BN-calibrated random weights).
4. ``compute()`` at d = 2048 on the GPU and on the CPU.
5. The network's forward: channels-last vs NCHW, CUDA graph, ``torch.compile`` default and
   ``reduce-overhead`` (skipped when the elapsed time leaves less than ``--compile-reserve-s`` of ``--budget-s``).

Where no CUDA GPU is present (and no ``--dry-run``), it says so, writes ``results.json`` with ``skipped``
and exits 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
STEPS = ("cuda_tests", "update", "fid_deviation", "compute", "network")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder for results.json, the logs and summary.md (created)")
    p.add_argument("--batch", default="64,256", help="update() batch sizes, comma-separated")
    p.add_argument("--sizes", default="299,32,64,256", help="update() input px, comma-separated")
    p.add_argument("--repeats", type=int, default=5, help="timing rounds (median)")
    p.add_argument("--deviation-images", type=int, default=2000, help="images per side for the FID deviation")
    p.add_argument("--budget-s", type=float, default=330, help="the run's target length in seconds")
    p.add_argument("--compile-reserve-s", type=float, default=150, help="time torch.compile needs; else skipped")
    p.add_argument("--steps", default=",".join(STEPS), help=f"which steps, comma-separated: {','.join(STEPS)}")
    p.add_argument("--skip-compile", action="store_true", help="skip torch.compile in step 5")
    p.add_argument("--dry-run", action="store_true", help="every step on the CPU at tiny sizes, no GPU needed")
    return p


class Run:
    """The output folder and the results, saved after every step; prints go to the log too."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.start = time.perf_counter()
        self.results: dict = {"errors": {}, "timing": {}}
        self.log = (out / "device_check.log").open("a", buffering=1)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def say(self, text: str) -> None:
        line = f"[{self.elapsed():6.1f} s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def save(self) -> None:
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=2, default=str))
        tmp.replace(self.out / "results.json")

    def step(self, name: str, fn: Callable[[], object]) -> None:
        self.say(f"{name} ...")
        start = time.perf_counter()
        try:
            fn()
        except Exception:  # record it and go on: one broken step must not lose the others' figures
            self.results["errors"][name] = traceback.format_exc()
            self.say(f"{name} FAILED:\n{self.results['errors'][name]}")
        self.results["timing"][name] = time.perf_counter() - start
        self.save()


def cuda_tests(run: Run, timeout: float) -> dict:
    """``pytest -m cuda tests`` in a subprocess; outcome of each test from its JUnit XML."""
    xml = run.out / "pytest.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "tests", "-q", "-rA", "-p", "no:cacheprovider"]
    with (run.out / "pytest.log").open("w") as log:
        proc = subprocess.run(
            [*cmd, f"--junitxml={xml}"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
        )
    outcomes: dict[str, list[str]] = {"passed": [], "failed": [], "skipped": []}
    for case in ET.parse(xml).iter("testcase"):
        kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        outcomes["failed" if kind in ("failure", "error") else kind].append(case.get("name"))
    tail = (run.out / "pytest.log").read_text().strip().splitlines()[-1:]
    run.say(f"pytest -m cuda: exit {proc.returncode}; {tail[0] if tail else ''}")
    return {"exit_code": proc.returncode, **outcomes}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import torch

    if not (torch.cuda.is_available() or args.dry_run):
        reason = "no CUDA GPU: torch.cuda.is_available() is False; nothing to measure, skipped"
        print(f"device_check: {reason}")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"skipped": reason}))
        return 0

    import bench  # benchmarks/bench.py: the measurements; imported only where there is something to measure

    run = Run(args.out)
    device = torch.device("cpu" if args.dry_run else "cuda")
    batches, sizes = bench.csv_ints(args.batch), bench.csv_ints(args.sizes)
    deviation_images, dim, repeats = args.deviation_images, 2048, args.repeats
    if args.dry_run:
        batches, sizes, deviation_images, dim, repeats = [2], [32], 4, 64, 1
        args.skip_compile = True
    precisions = bench.device_precisions(device, ["exact", "tf32", "bf16"])
    run.results["environment"] = bench.environment()
    run.results["arguments"] = vars(args) | {"batches": batches, "sizes": sizes}
    if device.type == "cuda":
        nvsmi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, check=False)
        run.results["environment"]["nvidia_smi"] = nvsmi.stdout
    run.say(f"device_check on {device}: {run.results['environment']['cuda']}, torch {torch.__version__}")
    run.save()

    steps = args.steps.split(",")
    if unknown := set(steps) - set(STEPS):
        raise SystemExit(f"device_check: unknown steps {sorted(unknown)}; known: {','.join(STEPS)}")
    if "cuda_tests" in steps:
        run.step("cuda_tests", lambda: run.results.update(cuda_tests=cuda_tests(run, timeout=args.budget_s / 2)))

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "pt_inception-random.pth"
        bench.random_weights(weights)

        def update() -> None:
            metrics = bench.update_contenders(weights, device, precisions)
            rows = run.results.setdefault("update", [])
            for batch in batches:
                for size in sizes:
                    rows.append({"device": device.type, **bench.bench_update(metrics, device, batch, size, repeats)})
                    speeds = ", ".join(f"{k} {v:.0f}" for k, v in rows[-1]["images_per_s"].items())
                    run.say(f"update() batch {batch}, {size} px, images/s: {speeds}")
                    run.save()

        def deviation() -> None:
            row = bench.fid_deviation(weights, device, deviation_images, batches[-1], precisions)
            run.results["fid_deviation"] = [{"device": device.type, **row}]
            run.say(f"FID deviation from exact: {row['relative_deviation']}")

        def compute() -> None:
            rows = run.results.setdefault("compute", [])
            for where in dict.fromkeys([device, torch.device("cpu")]):
                rows.append({"device": where.type, **bench.bench_compute(weights, dim, repeats, where)})
                run.say(f"compute() on {where}: {rows[-1]['seconds']}")
                run.save()

        def network() -> None:
            compile = not args.skip_compile and run.elapsed() < args.budget_s - args.compile_reserve_s
            if not compile and not args.skip_compile:
                run.say(f"torch.compile skipped: {run.elapsed():.0f} s elapsed of a {args.budget_s:.0f} s budget")
            rows = run.results.setdefault("network", [])
            for batch in dict.fromkeys([batches[0], batches[-1]]):
                for precision in precisions:
                    first = batch == batches[0] and precision == "exact"
                    row = bench.bench_network(weights, device, batch, repeats, compile and first, precision)
                    rows.append({"device": device.type, **row})
                    run.say(f"network, batch {batch}, {precision}: {row['seconds']}")
                    run.save()

        for name, fn in (("update", update), ("fid_deviation", deviation), ("compute", compute), ("network", network)):
            if name in steps:
                run.step(name, fn)

    run.results["sync"] = bench.sync_bytes(2048, world_size=8)
    summary = bench.report(run.results)
    tests = run.results.get("cuda_tests")
    if tests:
        summary += (
            f"\n\npytest -m cuda: exit {tests['exit_code']}, {len(tests['passed'])} passed, "
            f"{len(tests['failed'])} failed {tests['failed']}, {len(tests['skipped'])} skipped"
        )
    if run.results["errors"]:
        summary += f"\n\nsteps that failed: {sorted(run.results['errors'])} (tracebacks in results.json)"
    (args.out / "summary.md").write_text(summary + "\n")
    run.save()
    run.say(f"done in {run.elapsed():.0f} s\n\n{summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
