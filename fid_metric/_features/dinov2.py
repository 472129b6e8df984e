"""FD_DINOv2's feature network: DINOv2 ViT-L/14 CLS features at 224 px, built on timm.

Holds ``DINOV2`` (Meta's weights file, for ``fid_metric._features.weights.resolve``; no hash is published,
so there is no default download), ``DINOv2Features``, its preprocessing (``dinov2_input``,
``pil_bicubic_224``) and the loading of Meta's torch hub checkpoint into timm's ViT (``hub_pos_embed_224``,
``load_vit``). It reproduces the default pipeline of dgm-eval (Stein et al. 2023,
github.com/layer6ai-labs/dgm-eval, ``--model dinov2``) and, with ``resize="edm2"``, the ``DINOv2Detector`` of
EDM2 (NVlabs/edm2 ``calculate_metrics.py``, ``resize_mode="torch"``); docs/definitions.md says how, step by step.

tests/test_dinov2.py holds: the dgm-eval resize at most 2/255 from Pillow's, with under 1% of values
differing (Pillow's fixed-point rounding); EDM2's network input, and the hub model's 224 px position
embedding, to the bit; the checkpoint loaded strictly.
"""

from __future__ import annotations

import math
import os
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fid_metric._checks import checked_choice
from fid_metric._features import weights
from fid_metric._features.preprocess import check_images, to_uint8_rgb

# Meta's checkpoint of the torch hub model ``dinov2_vitl14``; no hash of it is published.
DINOV2 = weights.WeightsSpec(
    what="DINOv2 ViT-L/14 weights",
    url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth",
    sha256=None,
    size=None,
    owner="DINOv2Features",
    argument="weights_path",
    env_path="FID_METRIC_DINOV2_WEIGHTS",
    env_url="FID_METRIC_DINOV2_WEIGHTS_URL",
)
TIMM_MODEL = "vit_large_patch14_dinov2"
IMAGE_SIZE = 224
PATCH_SIZE = 14
NUM_FEATURES = 1024
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HUB_INTERPOLATE_OFFSET = 0.1


RESIZES = ("dgm-eval", "edm2")


class DINOv2Features(nn.Module):
    """DINOv2 ViT-L/14 CLS features at 224 px, as dgm-eval (default) or EDM2 computes them for FD_DINOv2.

    Use as ``FrechetInceptionDistance(feature=DINOv2Features())``. Always in eval mode (``train()`` is a
    no-op) and without gradients.

    Args:
        weights_path: a local ``dinov2_vitl14_pretrain.pth`` (Meta's torch hub state dict). Default:
            ``$FID_METRIC_DINOV2_WEIGHTS``, else the torch hub cache (``torch.hub.get_dir()/checkpoints``, where
            ``torch.hub.load`` leaves it), else a download from ``$FID_METRIC_DINOV2_WEIGHTS_URL``, a mirror whose
            file name carries the file's SHA-256 prefix. Meta publishes no hash, so there is no default download.
        resize: ``"dgm-eval"``: Pillow's bicubic of the 8-bit image, rounded after each pass
            (``pil_bicubic_224``), as dgm-eval and EDM2's ``resize_mode="pil"``; ``"edm2"``: EDM2's default
            ``resize_mode="torch"`` of ``calculate_metrics.DINOv2Detector``, one float32
            ``F.interpolate(bicubic, antialias=True)`` of the uint8 values, neither rounded nor clipped. The two
            are different definitions: statistics record which (``extractor_id``).

    Attributes:
        extractor_id: ``"dinov2-vitl14-<resize>/1024"``, recorded in statistics files and checkpoints.

    Raises:
        ValueError: ``resize`` is not one of ``RESIZES``.
        ImportError: timm is not installed (``pip install fid_metric[dinov2]``).
        fid_metric._features.weights.WeightsUnavailableError: no weights file was found.
        RuntimeError: the file is not a DINOv2 ViT-L/14 state dict.
    """

    num_features = NUM_FEATURES

    def __init__(self, weights_path: str | os.PathLike | None = None, *, resize: str = "dgm-eval") -> None:
        super().__init__()
        self.resize = checked_choice("resize", resize, RESIZES)
        self.extractor_id = f"dinov2-vitl14-{self.resize}/{NUM_FEATURES}"
        self.weights_path = weights.resolve(weights_path, DINOV2)
        self.model = load_vit(self.weights_path)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> DINOv2Features:
        """No-op: the network never leaves eval mode."""
        return self

    def forward(self, imgs: Tensor) -> Tensor:
        """``(N, 3 or 1, H, W)`` images -> ``(N, 1024)`` float32 CLS features.

        ``imgs``: uint8 in [0, 255], or floats in [0, 1] (the metric's ``normalize=True``), rounded to uint8
        as ``floor(255 x + 0.5)`` first; any H, W. Grey images are repeated to RGB.
        """
        check_images(imgs, normalize=isinstance(imgs, Tensor) and imgs.dtype.is_floating_point)
        return self.model(dinov2_input(to_uint8_rgb(imgs), self.resize))


def dinov2_input(imgs: Tensor, resize: str = "dgm-eval") -> Tensor:
    """``(N, 3, H, W)`` uint8 -> ``(N, 3, 224, 224)`` float32 network input, dgm-eval's ``transform`` or EDM2's.

    ``(resized / 255 - mean) / std`` with the ImageNet mean and std, per channel, ``resized`` being
    ``pil_bicubic_224(imgs)`` (dgm-eval) or EDM2's one float32 antialiased bicubic of the 0..255 values.
    """
    if resize == "edm2":
        resized = F.interpolate(imgs.float(), size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", antialias=True)
    else:
        resized = pil_bicubic_224(imgs)
    x = resized / 255
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def pil_bicubic_224(imgs: Tensor) -> Tensor:
    """``(N, C, H, W)`` uint8 -> ``(N, C, 224, 224)`` float32 holding integers in [0, 255].

    Pillow's ``Image.resize((224, 224), Image.BICUBIC)`` of an 8-bit image: the horizontal pass, rounded
    half up and clipped to [0, 255], then the vertical pass, rounded and clipped; a pass whose size does not
    change is skipped. Differs from Pillow only by its fixed-point rounding: a test holds it at most 2/255
    apart, with under 1% of values differing.
    """
    x = imgs.float()
    if x.shape[-1] != IMAGE_SIZE:
        x = _bicubic_pass(x, (x.shape[-2], IMAGE_SIZE))
    if x.shape[-2] != IMAGE_SIZE:
        x = _bicubic_pass(x, (IMAGE_SIZE, IMAGE_SIZE))
    return x


def _bicubic_pass(x: Tensor, size: tuple[int, int]) -> Tensor:
    y = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    return y.add_(0.5).floor_().clamp_(0, 255)


def hub_pos_embed_224(pos_embed: Tensor) -> Tensor:
    """``(1, 1 + M * M, d)`` hub position embedding -> ``(1, 1 + 16 * 16, d)``, as the hub model uses at 224 px.

    Reproduces ``DinoVisionTransformer.interpolate_pos_encoding`` (facebookresearch/dinov2,
    ``dinov2/models/vision_transformer.py``) with the hub defaults ``interpolate_offset=0.1`` and
    ``interpolate_antialias=False``: the class token's entry is kept, the M x M grid is resampled in float32
    with ``F.interpolate(mode="bicubic", scale_factor=(16.1 / M, 16.1 / M))``. Returned unchanged if M = 16.
    """
    grid = IMAGE_SIZE // PATCH_SIZE
    side = math.isqrt(pos_embed.shape[1] - 1)
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1 or side * side != pos_embed.shape[1] - 1:
        raise RuntimeError(
            f"pos_embed has shape {tuple(pos_embed.shape)}; a DINOv2 checkpoint has (1, 1 + M * M, d) "
            "(M = 37 for the official 518 px weights)."
        )
    if side == grid:
        return pos_embed
    dim = pos_embed.shape[-1]
    patches = pos_embed[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    scale = float(grid + _HUB_INTERPOLATE_OFFSET) / side
    patches = F.interpolate(patches, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos_embed.dtype)
    return torch.cat([pos_embed[:, :1], patches], dim=1)


def load_vit(path: str | os.PathLike) -> nn.Module:
    """timm's ``vit_large_patch14_dinov2`` at 224 px holding the hub state dict in ``path`` (strict).

    The model is built on the meta device and takes the loaded tensors as its parameters, so no random
    initialisation runs and the 1.2 GB of weights exist once. Returns it in eval mode.
    """
    try:
        import timm
        from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
    except ImportError as err:
        raise ImportError("DINOv2Features needs timm: pip install 'fid_metric[dinov2]' (or timm>=0.9).") from err

    with torch.device("meta"):
        # create_model is typed as returning any nn.Module; TIMM_MODEL's is a VisionTransformer
        model = cast(
            VisionTransformer, timm.create_model(TIMM_MODEL, pretrained=False, img_size=IMAGE_SIZE, num_classes=0)
        )
    try:
        state = weights.load_state_dict(path, what=DINOV2.what)
        if "pos_embed" not in state or "mask_token" not in state:
            missing = sorted({"pos_embed", "mask_token"} - set(state))
            raise RuntimeError(f"no {missing} entries (it has {len(state)} entries, e.g. {sorted(state)[:3]})")
        state["pos_embed"] = hub_pos_embed_224(state["pos_embed"])
        # float32 like the hub model's parameters, which load_state_dict copies into (a no-op for Meta's file)
        state = {name: value.float() for name, value in checkpoint_filter_fn(state, model).items()}
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise RuntimeError(
            f"{path} is not a DINOv2 ViT-L/14 state dict in torch hub's layout (as in Meta's {DINOV2.name}): {err}"
        ) from err
    return model.eval()
