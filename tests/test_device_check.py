"""benchmarks/device_check.sh on a machine without a GPU: it parses its arguments and skips cleanly.

What it measures runs only on a GPU (its steps reuse benchmarks/bench.py, whose smoke run is
tests/test_bench.py; ``--dry-run`` runs every step tiny on the CPU by hand).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, script_module


def _device_check():
    return script_module("benchmarks/device_check.py", "device_check")


def test_arguments_and_their_defaults(tmp_path: Path) -> None:
    args = _device_check().parser().parse_args([str(tmp_path), "--batch", "8,16", "--skip-compile"])
    assert (args.out, args.batch, args.sizes, args.skip_compile) == (tmp_path, "8,16", "299,32,64,256", True)
    assert (args.deviation_images, args.dry_run, args.steps) == (
        2000,
        False,
        "cuda_tests,update,fid_deviation,compute,network",
    )
    with pytest.raises(SystemExit) as exit_info:
        _device_check().parser().parse_args([])  # the output folder is required
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "WHEELS": str(tmp_path / "none"), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [str(REPO / "benchmarks" / "device_check.sh"), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA GPU" in proc.stdout
    assert "no CUDA GPU" in json.loads((tmp_path / "out" / "results.json").read_text())["skipped"]
