"""Shared fixtures: random-init Inception weights in the pt_inception-2015-12-05 layout, and test images.

No pretrained weights can be downloaded in CI, so the suite makes its own: pytorch-fid's own construction
(torchvision's Inception3 with pytorch-fid's FIDInceptionA/C/E_1/E_2 blocks, 1008 classes), random init,
and batch-norm running statistics calibrated on smooth random images so that features depend on the input
(with the default mean 0 / variance 1 the activations blow up or die and every image gets the same
features). Built independently of fid_metric's own network, once per session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from pytorch_fid import inception as pfid_inception

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]


def run_python(script: Path, *args: str, timeout: float = 300, **env_vars: str) -> subprocess.CompletedProcess:
    """Run ``python script args`` from the repository root, as a fresh process; fail with its output.

    The child finds ``fid_metric`` and the test helpers on its path, runs one thread per process (its
    models are tiny, and threads thrash when other jobs share the cores), and inherits no launcher
    variables (MASTER_ADDR, RANK, ...) that would confuse a DDP script.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")
    }
    paths = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "ddp_scripts"), env.get("PYTHONPATH", "")]
    env.update(PYTHONPATH=os.pathsep.join(filter(None, paths)), OMP_NUM_THREADS="1", **env_vars)
    proc = subprocess.run(
        [sys.executable, str(script), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    assert proc.returncode == 0, f"{script.name} failed ({proc.returncode}):\n{output}"
    return proc


def build_reference_inception(seed: int = 0) -> torch.nn.Module:
    """pytorch-fid's ``fid_inception_v3()`` architecture with random weights (its own code, no download)."""
    torch.manual_seed(seed)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=True)
    net.Mixed_5b = pfid_inception.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfid_inception.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfid_inception.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfid_inception.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfid_inception.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfid_inception.FIDInceptionE_1(1280)
    net.Mixed_7c = pfid_inception.FIDInceptionE_2(2048)
    return net


def smooth_images(n: int, size: int | tuple[int, int], seed: int, channels: int = 3) -> torch.Tensor:
    """``(n, channels, H, W)`` uint8 images: random 6x6 colour fields upsampled, plus mild pixel noise."""
    h, w = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 6, 6, generator=g) * 255
    brightness = torch.rand(n, 1, 1, 1, generator=g) * 0.8 + 0.4
    x = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False) * brightness
    x = x + torch.randn(n, channels, h, w, generator=g) * 6
    return x.round().clamp(0, 255).to(torch.uint8)


def calibrate_batch_norm(net: torch.nn.Module, images: torch.Tensor) -> None:
    """Set every batch-norm layer's running statistics to those of ``images`` (network input, float)."""
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch gives exactly its statistics
    net.train()
    with torch.no_grad():
        net(images)
    net.eval()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` are skipped where no CUDA GPU is present (benchmarks/device_check.sh runs them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; benchmarks/device_check.sh runs it on one")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a random-init, batch-norm-calibrated ``pt_inception-2015-12-05`` state dict file."""
    net = build_reference_inception(seed=0)
    calibration = smooth_images(24, 299, seed=1234).float() / 128 - 1
    calibrate_batch_norm(net, calibration)
    path = tmp_path_factory.mktemp("weights") / "pt_inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def pytorch_fid_model(inception_weights: Path, monkeypatch_session: pytest.MonkeyPatch) -> torch.nn.Module:
    """pytorch-fid's own ``InceptionV3`` (all four blocks) with the random weights instead of its download."""
    state = torch.load(inception_weights, weights_only=True)
    monkeypatch_session.setattr(pfid_inception, "load_state_dict_from_url", lambda *a, **k: state)
    model = pfid_inception.InceptionV3(output_blocks=[0, 1, 2, 3])
    return model.eval()


@pytest.fixture(scope="session")
def monkeypatch_session():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()
