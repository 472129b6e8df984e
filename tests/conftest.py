"""Fixtures: random-init Inception weights in the pt_inception-2015-12-05 layout and pytorch-fid's model on them.

No pretrained weights can be downloaded in CI, so the suite makes its own: pytorch-fid's own construction
(torchvision's Inception3 with pytorch-fid's FIDInceptionA/C/E_1/E_2 blocks, 1008 classes), random init,
and batch-norm running statistics calibrated on smooth random images so that features depend on the input
(with the default mean 0 / variance 1 the activations blow up or die and every image gets the same
features). Built independently of fid_metric's own network, once per session.

What the test modules share besides fixtures (images, extractors, launchers) is in helpers.py.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import DDPLauncher, peer_in_channels_last, smooth_images
from pytorch_fid import inception as pfid_inception

import fid_metric._features.extractor
from fid_metric import FrechetInceptionDistance

torch.set_num_threads(2)


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
    net = build_reference_inception(seed=0).to(memory_format=torch.channels_last)  # 3x faster on a CPU
    calibration = smooth_images(12, 299, seed=1234).float() / 128 - 1
    calibrate_batch_norm(net, calibration.contiguous(memory_format=torch.channels_last))
    net.to(memory_format=torch.contiguous_format)  # the file in the usual layout
    path = tmp_path_factory.mktemp("weights") / "pt_inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def inception_fid(inception_weights: Path) -> Callable[..., FrechetInceptionDistance]:
    """``inception_fid(feature, **kwargs)``: a new ``FrechetInceptionDistance`` on the random weights.

    Each configuration is built once per session and each call returns a clone: fresh states, and the same
    frozen network, which a metric's copies share by design. Tests of what the constructor itself does build
    their metrics directly.
    """
    built: dict[tuple, FrechetInceptionDistance] = {}

    def make(feature: int, **kwargs) -> FrechetInceptionDistance:
        key = (feature, *sorted(kwargs.items()))
        if key not in built:
            built[key] = FrechetInceptionDistance(feature, feature_extractor_weights_path=inception_weights, **kwargs)
        return built[key].clone()

    return make


@pytest.fixture(scope="session")
def pytorch_fid_random_weights(inception_weights: Path, monkeypatch_session: pytest.MonkeyPatch) -> None:
    """pytorch-fid's ``InceptionV3`` gets the random weights instead of its download."""
    state = torch.load(inception_weights, weights_only=True)
    monkeypatch_session.setattr(pfid_inception, "load_state_dict_from_url", lambda *a, **k: state)


@pytest.fixture(scope="session")
def pytorch_fid_model(pytorch_fid_random_weights: None) -> torch.nn.Module:
    """pytorch-fid's own ``InceptionV3`` (all four blocks) with the random weights."""
    # In NCHW, as our unfolded network runs in test_inception.py: the same arithmetic, so equal elementwise.
    return pfid_inception.InceptionV3(output_blocks=[0, 1, 2, 3]).eval()


@pytest.fixture(scope="session")
def pytorch_fid_model_64(pytorch_fid_random_weights: None) -> torch.nn.Module:
    """pytorch-fid's own ``InceptionV3`` for the 64-d features: its first block only, where it stops (~1/7 of the
    full network's cost per image)."""
    return peer_in_channels_last(pfid_inception.InceptionV3(output_blocks=[0]).eval())


@pytest.fixture(scope="session")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DDPLauncher]:
    """Two-process gloo runs (``helpers.DDPLauncher``); its processes serve the whole session."""
    launcher = DDPLauncher(tmp_path_factory.mktemp("ddp"))
    yield launcher
    launcher.close()


@pytest.fixture(scope="session", autouse=True)
def inception_file_loaded_once(monkeypatch_session: pytest.MonkeyPatch) -> None:
    """Each metric built in this process gets a deep copy of the network ``_load_inception`` made the first time
    it read that file, instead of reading and folding the 92 MB again (the suite's ~70 constructions from one
    file spent 30 s there: as long as all our Inception forward passes).

    The key is what the result depends on: the file (path, inode, size, modification time: a file rewritten or
    replaced loads afresh) and the default dtype and device around the call (a test that constructs under
    ``torch.set_default_dtype(torch.float64)`` gets its own real load). A failed load is not remembered: every
    refused file raises again. Subprocesses load for real.
    """
    load = fid_metric._features.extractor._load_inception
    loaded: dict[tuple, torch.nn.Module] = {}

    def load_once(source: os.PathLike) -> torch.nn.Module:
        info = os.stat(source)
        key = (os.path.realpath(source), info.st_ino, info.st_size, info.st_mtime_ns)
        key += (torch.get_default_dtype(), torch.get_default_device())
        if key not in loaded:
            loaded[key] = load(source)
        return copy.deepcopy(loaded[key])

    monkeypatch_session.setattr(fid_metric._features.extractor, "_load_inception", load_once)


@pytest.fixture(scope="session")
def monkeypatch_session():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()
