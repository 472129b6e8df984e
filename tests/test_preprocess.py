"""Preprocessing against its references: torch-fidelity's TF1 resize, clean-fid's resizers, save_image's rounding,
PIL's grey->RGB."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from cleanfid.resize import build_resizer
from helpers import BAD_INPUTS, smooth_images
from PIL import Image
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from fid_metric._features.preprocess import (
    check_images,
    inception_input,
    resize_tf1_bilinear,
    resolve_compat,
    to_uint8_rgb,
)


@pytest.mark.parametrize("shape", [(32, 32), (64, 48), (299, 299), (300, 517), (1, 7)])
def test_tf1_resize_matches_torch_fidelity(shape: tuple[int, int]) -> None:
    """Up-, down- and non-square resizes agree with torch-fidelity's TF1 bilinear to 1e-5 on 0..255 floats."""
    x = smooth_images(3, shape, seed=sum(shape)).float()
    ours = resize_tf1_bilinear(x, 299)
    reference = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    assert ours.shape == (3, 3, 299, 299)
    assert torch.allclose(ours, reference, rtol=0, atol=1e-5)


def test_tensorflow_input_equals_torch_fidelity_pipeline() -> None:
    """compat='tensorflow': TF1 resize of the 0..255 floats, then (x - 128) / 128, as torch-fidelity does."""
    imgs = smooth_images(2, (80, 120), seed=3)
    resized = interpolate_bilinear_2d_like_tensorflow1x(imgs.float(), size=(299, 299), align_corners=False)
    reference = (resized - 128) / 128
    assert torch.allclose(inception_input(imgs, "tensorflow"), reference, rtol=0, atol=1e-6)


def _clean_fid_resized(imgs: torch.Tensor, mode: str) -> torch.Tensor:
    """clean-fid's own resizer of ``mode`` on each ``(3, H, W)`` uint8 image as its dataset hands it (HWC uint8
    numpy): ``(N, 3, 299, 299)`` float32 in [0, 255]."""
    resize = build_resizer(mode)
    return torch.stack([torch.from_numpy(resize(img.permute(1, 2, 0).numpy())).permute(2, 0, 1) for img in imgs])


@pytest.mark.parametrize("shape", [(32, 32), (48, 64), (299, 299), (320, 400), (600, 300), (17, 1000)])
def test_clean_fid_input_equals_clean_fids_pil_resize(shape: tuple[int, int]) -> None:
    """compat='clean-fid': up-, down-, one-sided and non-square resizes equal clean-fid's PIL float-mode bicubic
    to two float32 ulps of the 0..255 values (2 * 2^-16 / 128 = 2.4e-7 after (x - 128) / 128; measured: 0 at
    most sizes)."""
    imgs = smooth_images(3, shape, seed=sum(shape))
    ours = inception_input(imgs, "clean-fid")
    assert ours.shape == (3, 3, 299, 299) and ours.dtype == torch.float32
    theirs = (_clean_fid_resized(imgs, "clean") - 128) / 128  # clean-fid's TorchScript network's first step
    assert (ours - theirs).abs().max() <= 2 * 2.0**-16 / 128


def test_clean_fid_legacy_pytorch_is_the_pytorch_fid_mode() -> None:
    """clean-fid's legacy_pytorch resizes 0..255 floats bilinearly and divides by 255 in the network; our
    pytorch-fid mode divides first: the same network input but for float32 round-off (measured below 4e-7)."""
    imgs = smooth_images(3, (48, 64), seed=7)
    theirs = 2 * (_clean_fid_resized(imgs, "legacy_pytorch") / 255) - 1  # pytorch-fid's network: 2 (x / 255) - 1
    assert (inception_input(imgs, "pytorch-fid") - theirs).abs().max() < 1e-6


def test_save_image_png_round_trip_equals_rounding(tmp_path) -> None:
    """Float images become the uint8 values a PNG written by torchvision.utils.save_image holds."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 17, 23, generator=g)
    x[0, 0, 0, :6] = torch.tensor([0.0, 0.5 / 255, 0.49 / 255, 1.0, 128.5 / 255, 254.51 / 255])
    torchvision.utils.save_image(x[0], tmp_path / "x.png")
    from_png = torch.from_numpy(np.array(Image.open(tmp_path / "x.png"))).permute(2, 0, 1)
    assert torch.equal(to_uint8_rgb(x)[0], from_png)


def test_exact_levels_survive_rounding() -> None:
    """Every k / 255 in float32, float64 and bfloat16-representable cases maps back to k."""
    k = torch.arange(256)
    for dtype in (torch.float32, torch.float64):
        x = (k.to(dtype) / 255).view(1, 1, 16, 16)
        assert torch.equal(to_uint8_rgb(x)[0, 0].flatten(), k.to(torch.uint8))


def test_grey_repeats_like_pil_convert_rgb() -> None:
    """A 1-channel batch becomes the 3-channel image PIL's convert('RGB') makes (pytorch-fid, clean-fid)."""
    grey = smooth_images(1, (9, 11), seed=5, channels=1)
    pil_rgb = np.asarray(Image.fromarray(grey[0, 0].numpy(), mode="L").convert("RGB"))
    assert torch.equal(to_uint8_rgb(grey)[0], torch.from_numpy(pil_rgb.copy()).permute(2, 0, 1))


def test_resolve_compat_maps_torchmetrics_antialias() -> None:
    assert resolve_compat(None, None) == "tensorflow"
    assert resolve_compat(None, True) == "torchmetrics"
    assert resolve_compat(None, False) == "tensorflow"
    assert resolve_compat("pytorch-fid", None) == "pytorch-fid"
    with pytest.raises(ValueError, match="contradicts"):
        resolve_compat("pytorch-fid", True)
    assert resolve_compat("clean-fid", None) == "clean-fid"
    with pytest.raises(ValueError, match="must be one of"):
        resolve_compat("cleanfid", None)


@pytest.mark.parametrize(("imgs", "normalize", "error", "message"), BAD_INPUTS)
def test_check_images_rejects_with_what_was_expected(imgs, normalize, error, message) -> None:
    with pytest.raises(error, match=message):
        check_images(imgs, normalize)


def test_check_images_accepts_valid_batches() -> None:
    check_images(torch.zeros(1, 1, 3, 3, dtype=torch.uint8), normalize=False)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        check_images(torch.ones(2, 3, 5, 4, dtype=dtype), normalize=True)
