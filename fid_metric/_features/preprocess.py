"""Input checks, float -> uint8 rounding, and the resize/normalisation of each compat mode.

Every FID implementation feeds Inception a 299x299 float32 image, but they get there differently, and the
differences move FID by more than the two decimals papers print. Each compat mode below reproduces one
reference pipeline step by step:

=============== ============================================ ===================== =======================
compat          resize to 299x299                            network input         reproduces
=============== ============================================ ===================== =======================
"tensorflow"    TF1 ``resize_bilinear`` (align_corners=False, ``(x - 128) / 128``   TTUR / TF FID, torch-
                half_pixel_centers=False), on 0..255 floats                        fidelity, ADM, StyleGAN
"pytorch-fid"   ``F.interpolate`` bilinear, align_corners=      ``2 * (x / 255) - 1`` pytorch-fid
                False, no antialias, on x / 255
"torchmetrics"  ``F.interpolate`` bilinear, align_corners=      ``(x - 128) / 128``   torchmetrics >= 1.8
                False, antialias=True, on 0..255 floats                            default (antialias=True)
"clean-fid"     PIL ``Image.resize(BICUBIC)`` of each channel  ``(x - 128) / 128``   clean-fid's default
                in float mode ``F`` (antialiased), clipped to                      ``mode="clean"``
                [0, 255] (``_resize_pil_bicubic``)
=============== ============================================ ===================== =======================

All four feed the same network (the TensorFlow FID graph's weights). clean-fid's other modes are two of these:
its ``legacy_pytorch`` is "pytorch-fid" (``F.interpolate`` bilinear on 0..255 floats, then ``x / 255`` into
pytorch-fid's network: the same arithmetic but for float32 round-off), and its ``legacy_tensorflow`` resizes
inside NVIDIA's TorchScript network to reproduce TensorFlow's, which is what "tensorflow" reproduces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fid_metric._checks import checked_choice

COMPAT_MODES = ("tensorflow", "pytorch-fid", "torchmetrics", "clean-fid")
# What each mode's number equals, for printed results.
REPRODUCES = {
    "tensorflow": "TensorFlow FID (TTUR; torch-fidelity, ADM, StyleGAN)",
    "pytorch-fid": "pytorch-fid",
    "torchmetrics": "torchmetrics' default (antialias=True)",
    "clean-fid": "clean-fid's mode='clean'",
}
INCEPTION_SIZE = 299

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def resolve_compat(compat: str | None, antialias: bool | None) -> str:
    """Pick the compat mode from ``compat`` and torchmetrics' ``antialias`` flag.

    ``antialias=True`` is torchmetrics' default resize ("torchmetrics"), ``antialias=False`` its TF1 resize
    ("tensorflow"). With neither given, the default is "tensorflow", the original definition of FID.

    Raises:
        ValueError: ``compat`` is not one of ``COMPAT_MODES``, or ``antialias`` contradicts it.
    """
    if compat is None:
        if antialias is None:
            return "tensorflow"
        return "torchmetrics" if antialias else "tensorflow"
    compat = checked_choice("compat", compat, COMPAT_MODES)
    if antialias is not None and (compat == "torchmetrics") != antialias:
        raise ValueError(
            f"`antialias={antialias}` contradicts `compat={compat!r}`: antialias=True means compat='torchmetrics', "
            "antialias=False means compat='tensorflow'. Pass only `compat`."
        )
    return compat


class ImageInputError(TypeError, ValueError):
    """A batch that is not what the metric accepts; the message says what was expected.

    Both a ``TypeError`` (what fid_metric 0.1 raised for a wrong type or dtype) and a ``ValueError`` (what
    torchmetrics raises for every bad image batch), so code written for either catches it.
    """


def check_images(imgs: object, normalize: bool) -> None:
    """Raise if ``imgs`` is not a batch of images the metric accepts; never modifies anything.

    Accepted: ``(N, C, H, W)`` with C in {1, 3}, N >= 1; uint8 in [0, 255] when ``normalize=False``;
    float16/bfloat16/float32/float64 in [0, 1], finite, when ``normalize=True``. The value check of float
    input reads the tensor's min and max, one host-device synchronisation; uint8 input needs none.

    Raises:
        ImageInputError: what was expected and what came; a ``TypeError`` and a ``ValueError`` both.
    """
    if not isinstance(imgs, Tensor):
        raise ImageInputError(f"Expected images as a torch.Tensor of shape (N, 3, H, W), got {type(imgs).__name__}.")
    if imgs.ndim != 4:
        raise ImageInputError(
            f"Expected images of shape (N, C, H, W) with C = 1 or 3, got a {imgs.ndim}-d tensor of shape "
            f"{tuple(imgs.shape)}."
        )
    n, c, h, w = imgs.shape
    if c not in (1, 3):
        raise ImageInputError(
            f"Expected 1 (grey) or 3 (RGB) channels in dimension 1 of (N, C, H, W), got shape {tuple(imgs.shape)}."
            + (" Channels-last input? Use imgs.permute(0, 3, 1, 2)." if w in (1, 3) else "")
        )
    if n == 0 or h == 0 or w == 0:
        raise ImageInputError(f"Expected a non-empty batch of images, got shape {tuple(imgs.shape)}.")
    if normalize:
        if imgs.dtype not in _FLOAT_DTYPES:
            raise ImageInputError(
                f"With normalize=True images must be floating point in [0, 1], got dtype {imgs.dtype}. "
                "Pass uint8 images in [0, 255] with normalize=False."
            )
        lo, hi = torch.aminmax(imgs.float())
        if not (torch.isfinite(lo) & torch.isfinite(hi) & (lo >= 0) & (hi <= 1)).item():
            raise ImageInputError(
                f"With normalize=True images must be finite and in [0, 1], got values in [{lo.item()}, {hi.item()}]."
            )
    elif imgs.dtype != torch.uint8:
        hint = " Floating point images in [0, 1] need normalize=True." if imgs.dtype in _FLOAT_DTYPES else ""
        raise ImageInputError(
            # torchmetrics' words first, so that code matching its message keeps working
            f"Expecting image as torch.Tensor with dtype=torch.uint8: with normalize=False images must be uint8 in "
            f"[0, 255], got dtype {imgs.dtype}.{hint}"
        )


def to_uint8_rgb(imgs: Tensor, compat: str = "tensorflow") -> Tensor:
    """Checked images ``(N, 1|3, H, W)`` -> ``(N, 3, H, W)`` uint8.

    Floats in [0, 1] are rounded as ``floor(255 * x + 0.5)``, exactly what ``torchvision.utils.save_image``
    does before writing a PNG, so the metric sees the 8-bit image a file-based evaluation would read. With
    ``compat="torchmetrics"`` they are truncated as torchmetrics' ``normalize=True`` does, ``(x * 255).byte()``
    in the input's own dtype (which darkens every image by half a level on average): that mode exists to give
    torchmetrics' number. Grey images are repeated to RGB, as PIL's ``convert("RGB")`` does in pytorch-fid and
    clean-fid.
    """
    if imgs.dtype != torch.uint8 and compat == "torchmetrics":
        imgs = (imgs * 255).byte()
    elif imgs.dtype != torch.uint8:
        imgs = imgs.float().mul(255).add_(0.5).floor_().to(torch.uint8)
    if imgs.shape[1] == 1:
        imgs = imgs.expand(-1, 3, -1, -1)
    return imgs


def resize_tf1_bilinear(x: Tensor, size: int) -> Tensor:
    """TensorFlow 1.x ``tf.image.resize_bilinear(align_corners=False)`` of ``(N, C, H, W)`` float32 to size x size.

    Reproduces ``ResizeBilinearOp`` (tensorflow/core/kernels/resize_bilinear_op.cc, legacy non-half-pixel
    centres): source coordinate ``dst * (in / out)`` computed in float32, the lower neighbour its floor, the
    upper one clamped to the edge, and the two lerps in TF's order (along x, then y) and form
    ``a + (b - a) * t``. torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x(method="slow")`` does the
    same arithmetic with four gathers; this does it separably (x pass on the input rows, then y pass), which
    gives the identical float32 result with half the memory traffic. Held to torch-fidelity at 1e-5 absolute
    on 0..255 inputs by tests/test_preprocess.py.
    """

    def taps(in_size: int) -> tuple[Tensor, Tensor, Tensor]:
        # The float32 scale as TF rounds it; torch.full, not torch.tensor, which would be a blocking copy to a GPU.
        scale = torch.full((), in_size / size, dtype=torch.float32, device=x.device)
        src = torch.arange(size, dtype=torch.float32, device=x.device) * scale
        lo = src.long()
        hi = (lo + 1).clamp_max(in_size - 1)
        return lo, hi, src - lo.float()

    x_lo, x_hi, dx = taps(x.shape[3])
    y_lo, y_hi, dy = taps(x.shape[2])
    left = x.index_select(3, x_lo)
    rows = left + (x.index_select(3, x_hi) - left) * dx
    top = rows.index_select(2, y_lo)
    return top + (rows.index_select(2, y_hi) - top) * dy.view(-1, 1)


def _resize_pil_bicubic(x: Tensor, size: int) -> Tensor:
    """Pillow's ``Image.resize((size, size), Image.BICUBIC)`` of each channel of ``(N, C, H, W)`` floats, as an
    image of mode ``F``; returns ``(N, C, size, size)`` float32.

    What clean-fid's ``make_resizer("PIL", quantize_after=False, "bicubic", (299, 299))`` does per channel.
    Pillow's ``ImagingResample`` is separable: a horizontal pass, then a vertical one (each skipped when that
    side keeps its size), each an antialiased convolution with the bicubic kernel of a = -0.5 whose support
    grows with the downscaling factor, weights normalised over the pixels inside the image, computed and
    accumulated in double and stored as float32 between and after the passes. ``F.interpolate(mode="bicubic",
    antialias=True)`` is that same convolution (a port of Pillow's); it runs here in float64 (float32 on Apple's
    MPS, which has no float64) with the float32 rounding after each pass. Held to Pillow through clean-fid's
    own resizer in tests/test_preprocess.py.
    """
    compute = torch.float32 if x.device.type == "mps" else torch.float64
    y = x.to(compute)
    height, width = x.shape[-2:]
    if width != size:
        y = F.interpolate(y, size=(height, size), mode="bicubic", align_corners=False, antialias=True)
        y = y.float().to(compute)
    if height != size:
        y = F.interpolate(y, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return y.float()


def inception_input(imgs: Tensor, compat: str) -> Tensor:
    """``(N, 3, H, W)`` uint8 -> ``(N, 3, 299, 299)`` float32 network input, as the ``compat`` reference makes it.

    Raises:
        ValueError: ``compat`` is not one of ``COMPAT_MODES``.
    """
    checked_choice("compat", compat, COMPAT_MODES)
    x = imgs.float()
    if compat == "tensorflow":
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = resize_tf1_bilinear(x, INCEPTION_SIZE)
        return x.sub_(128).div_(128)
    if compat == "pytorch-fid":
        x = F.interpolate(x.div_(255), size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return x.mul_(2).sub_(1)
    if compat == "torchmetrics":
        x = F.interpolate(
            x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False, antialias=True
        )
        return x.sub_(128).div_(128)
    # "clean-fid"
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):  # Pillow returns a copy at the same size
        x = _resize_pil_bicubic(x, INCEPTION_SIZE).clamp_(0, 255)
    return x.sub_(128).div_(128)
