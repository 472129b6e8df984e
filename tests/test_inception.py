"""The FID Inception network against pytorch-fid's and torch-fidelity's, on identical random weights."""

from __future__ import annotations

import pytest
import torch
from helpers import smooth_images
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from fid_metric._features import weights
from fid_metric._features.inception import OUTPUTS, FIDInceptionV3, fold_batch_norm
from fid_metric._features.preprocess import inception_input


@pytest.fixture(scope="module")
def network(inception_weights) -> FIDInceptionV3:
    return _loaded(inception_weights)


def test_state_dict_layout_is_pytorch_fid(inception_weights) -> None:
    """Same keys and shapes as pytorch-fid's fid_inception_v3(), the layout of pt_inception-2015-12-05 (the
    ``inception_weights`` file is the state dict of pytorch-fid's own construction, conftest.py)."""
    ours = {k: v.shape for k, v in FIDInceptionV3().state_dict().items()}
    pytorch_fid = {k: v.shape for k, v in torch.load(inception_weights, weights_only=True).items()}
    assert ours == pytorch_fid


def test_features_match_pytorch_fid(network, pytorch_fid_model) -> None:
    """All four blocks equal pytorch-fid's InceptionV3 on its own preprocessing (x / 255, bilinear, 2x - 1)."""
    imgs = smooth_images(4, (96, 80), seed=11)
    ours = network(inception_input(imgs, "pytorch-fid"), ("64", "192", "768", "2048"))
    with torch.no_grad():
        blocks = pytorch_fid_model(imgs.float() / 255)
    for name, block in zip(("64", "192", "768", "2048"), blocks):
        reference = torch.nn.functional.adaptive_avg_pool2d(block, (1, 1)).flatten(1)
        assert torch.allclose(ours[name], reference, rtol=1e-4, atol=1e-6), name
        assert reference.std(0).mean() > 1e-3, f"features of {name} do not depend on the input"


def test_features_and_logits_match_torch_fidelity(network, inception_weights) -> None:
    """Features and the 1008 logits equal torch-fidelity's extractor (TF1 resize, (x - 128) / 128)."""
    names = ["64", "192", "768", "2048", "logits"]
    fidelity = FeatureExtractorInceptionV3(
        "inception-v3-compat", names, feature_extractor_weights_path=str(inception_weights)
    )
    assert {k: v.shape for k, v in fidelity.state_dict().items()} == {
        k: v.shape for k, v in network.state_dict().items()
    }
    imgs = smooth_images(3, (64, 64), seed=12)
    ours = network(inception_input(imgs, "tensorflow"), names)
    with torch.no_grad():
        reference = dict(zip(names, fidelity(imgs)))
    for name in names:
        assert ours[name].shape == reference[name].shape
        assert torch.allclose(ours[name], reference[name], rtol=1e-4, atol=1e-5), name


def test_stops_after_the_last_needed_layer(network) -> None:
    """Asking for the 64-d feature runs no Mixed block."""
    called = []
    handle = network.Mixed_5b.register_forward_hook(lambda *_: called.append(True))
    try:
        out = network(inception_input(smooth_images(1, 32, seed=0), "tensorflow"), ("64",))
    finally:
        handle.remove()
    assert set(out) == {"64"} and out["64"].shape == (1, 64)
    assert not called


def test_always_eval_and_frozen(network) -> None:
    network.train()
    assert not network.training and not any(m.training for m in network.modules())
    assert not any(p.requires_grad for p in network.parameters())
    with pytest.raises(ValueError, match="Unknown Inception outputs"):
        network(torch.zeros(1, 3, 299, 299), ("1000",))
    assert OUTPUTS == ("64", "192", "spatial", "768", "2048", "logits_unbiased", "logits")


def test_folded_batch_norm_is_as_accurate_as_the_reference_arithmetic(network, inception_weights) -> None:
    """The metric's BN-folded float32 network is no further from a float64 evaluation than the unfolded one.

    Both float32 networks differ from float64 by ~3e-5 relative on these random weights (their batch norms
    subtract large means); folding must not add to that.
    """
    folded = fold_batch_norm(_loaded(inception_weights))
    exact = _loaded(inception_weights).double()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = inception_input(smooth_images(1, 48, seed=13), "tensorflow")
    names = ("64", "spatial", "2048", "logits")
    with torch.inference_mode():
        ours, unfolded, truth = folded(x, names), network(x, names), exact(x.double(), names)
    for name in names:
        scale = truth[name].abs().max()
        folded_error = (ours[name].double() - truth[name]).abs().max() / scale
        unfolded_error = (unfolded[name].double() - truth[name]).abs().max() / scale
        assert folded_error <= 1.5 * unfolded_error + 1e-6, name


def _loaded(path) -> FIDInceptionV3:
    net = FIDInceptionV3()
    net.load_state_dict(weights.load_state_dict(path), strict=True)
    return net


def test_the_network_is_float32_whatever_the_default_dtype(inception_weights) -> None:
    """torch.set_default_dtype(torch.float64) around construction: the network is still float32 (0.1 built it in
    float64, which then rejected the float32 input)."""
    from fid_metric import FrechetInceptionDistance

    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        metric = FrechetInceptionDistance(64, feature_extractor_weights_path=inception_weights)
    finally:
        torch.set_default_dtype(saved)
    assert {p.dtype for p in metric._extractor.module.parameters()} == {torch.float32}
    metric.update(smooth_images(2, 32, seed=0), real=True)
    assert int(metric.real_features_num_samples) == 2
