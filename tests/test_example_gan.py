"""examples/gan_digits.py end to end, as a subprocess with tiny settings and the random-init Inception weights.

Each run trains for two batches per epoch, computes the reference statistics of 16 real digits and evaluates 8
generated digits per epoch at ``--feature 64`` (a few seconds on one CPU thread).
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
from pathlib import Path

import pytest
from helpers import REPO, run_python, script_module
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fid_metric import FeatureStats

pytestmark = pytest.mark.slow

TINY = "--val-samples 8 --batch-size 8 --max-train-batches 2 --feature 64 --reference-images 16 --accelerator cpu"


def run_example(args: list[str], weights: Path, logdir: Path, **env_vars: str) -> subprocess.CompletedProcess:
    return run_python(
        REPO / "examples" / "gan_digits.py",
        *TINY.split(),
        *args,
        *["--inception-weights", str(weights), "--logdir", str(logdir)],
        **env_vars,
    )


def printed_fids(stdout: str) -> list[float]:
    """The values of the ``  epoch N: FID`` lines the example prints at the end."""
    lines = stdout.split("per epoch:\n", 1)[1].splitlines()
    return [float(line.split(":")[1]) for line in lines if line.startswith("  epoch ")]


HAS_WANDB = importlib.util.find_spec("wandb") is not None


def test_gan_example_logs_fid_each_epoch_to_tensorboard_and_wandb(inception_weights: Path, tmp_path: Path) -> None:
    """One run with both loggers (``--logger tensorboard,wandb``; W&B offline, writing only under tmp_path): each
    gets val/fid once per epoch, the values printed at the end; the reference statistics and the plot are written."""
    wandb_dirs = ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")
    wandb_env = {name: str(tmp_path / name.lower()) for name in wandb_dirs}  # nothing written to $HOME
    loggers = "tensorboard,wandb" if HAS_WANDB else "tensorboard"
    proc = run_example(
        ["--epochs", "2", "--logger", loggers],
        inception_weights,
        tmp_path,
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        **wandb_env,
    )

    printed = printed_fids(proc.stdout)
    assert len(printed) == 2
    assert all(math.isfinite(value) and value > 0 for value in printed)

    event_files = list((tmp_path / "gan_digits").glob("version_*/events.out.tfevents.*"))
    assert len(event_files) == 1
    acc = EventAccumulator(str(event_files[0].parent), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("val/fid")
    assert len(events) == 2  # once per epoch
    assert events[0].step < events[1].step
    assert [event.value for event in events] == pytest.approx(printed, rel=1e-5, abs=1e-4)  # printed: 4 decimals

    if HAS_WANDB:
        runs = list((tmp_path / "wandb").glob("offline-run-*"))
        assert len(runs) == 1
        (transaction_log,) = runs[0].glob("run-*.wandb")
        assert transaction_log.stat().st_size > 0
        assert f"W&B run: {runs[0]}" in proc.stdout

    reference = FeatureStats.load(tmp_path / "digits_ref_64.npz")
    assert reference.n == 16
    assert reference.feature_dim == 64
    assert reference.extractor == "inception-2015-12-05/64"
    assert reference.weights_sha256  # recorded, so statistics made with other weights are refused

    plot = tmp_path / "fid_curve.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(plot) as image:
        image.verify()
    with Image.open(plot) as image:
        assert image.format == "PNG" and min(image.size) > 100


def test_logger_names() -> None:
    """``--logger`` takes tensorboard, wandb or both; anything else is an argparse error naming the choices."""
    module = script_module("examples/gan_digits.py", "gan_digits")
    assert module.parse_args([]).logger == ["tensorboard"]
    assert module.parse_args(["--logger", "wandb,tensorboard"]).logger == ["wandb", "tensorboard"]
    for bad in ("tensorbord", "wandb,wandb"):
        with pytest.raises(module.argparse.ArgumentTypeError, match="expected tensorboard, wandb"):
            module.logger_names(bad)
