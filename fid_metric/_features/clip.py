"""CLIP image features: FD on CLIP features as clean-fid computes it, and CMMD's embedding; built on open_clip.

Holds the two weights files (``CLIP_B32``, ``CLIP_L14_336``, for ``fid_metric._features.weights.resolve``),
``CLIPFeatures``, the network input of each reference (``clip_input``), the two resizes the references use
(``pil_bicubic``: Pillow's 8-bit bicubic; ``jax_bicubic``: ``jax.image.resize(method="bicubic")``) and the
loading of open_clip's weights file into open_clip's vision tower (``load_visual``).

* ``CLIPFeatures("vit-b-32")``: clean-fid's ``compute_fid(..., model_name="clip_vit_b_32")`` (GaParmar/clean-fid,
  ``cleanfid/clip_features.py``): OpenAI's CLIP ViT-B/32 ``encode_image``, 512-d, not normalised.
* ``CLIPFeatures("vit-l-14-336")``: the embedding of CMMD (Jayasumana et al., CVPR 2024; google-research/
  google-research ``cmmd/``): OpenAI's CLIP ViT-L/14 at 336 px, the projected image embedding, L2-normalised.

OpenAI's ``clip`` package, scenic's CLIP (the references' networks) and open_clip's ``*-quickgelu`` models are
one architecture with one state-dict layout. docs/metrics/fd-clip.md and docs/metrics/cmmd.md give each
pipeline step by step; tests/test_clip.py and tests/test_cmmd.py hold both resizes to Pillow (bit for bit) and
jax, the network input to clean-fid's and CMMD's, and the features to open_clip's own forward.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import cast

import torch
from torch import Tensor, nn

from fid_metric._checks import checked_choice
from fid_metric._features import weights
from fid_metric._features.preprocess import check_images, to_uint8_rgb

# open_clip's copy of OpenAI's weights on Hugging Face, at the snapshot whose SHA-256 and size several public projects
# that pin this file record (a random-init ViT-B-32-quickgelu saved with safetensors has this very size).
CLIP_B32 = weights.WeightsSpec(
    what="CLIP ViT-B/32 weights (OpenAI's, open_clip's file)",
    url="https://huggingface.co/timm/vit_base_patch32_clip_224.openai/resolve/"
    "a6f597a30f7b82c51704746581f9a4e41421e878/open_clip_model.safetensors",
    sha256="e6d1bd7789aa45192b3bf90570a789b478bae1b74ebcce7eddd908e83a2b7c31",
    size=605_143_284,
    owner="CLIPFeatures",
    argument="weights_path",
    env_path="FID_METRIC_CLIP_B32_WEIGHTS",
    env_url="FID_METRIC_CLIP_B32_WEIGHTS_URL",
    cache_name="vit_base_patch32_clip_224.openai.safetensors",
)
# No hash of this file was found published, so there is no default download (as for DINOv2).
CLIP_L14_336 = weights.WeightsSpec(
    what="CLIP ViT-L/14@336px weights (OpenAI's, open_clip's file)",
    url="https://huggingface.co/timm/vit_large_patch14_clip_336.openai/resolve/main/open_clip_model.safetensors",
    sha256=None,
    size=None,
    owner="CLIPFeatures",
    argument="weights_path",
    env_path="FID_METRIC_CLIP_L14_336_WEIGHTS",
    env_url="FID_METRIC_CLIP_L14_336_WEIGHTS_URL",
    cache_name="vit_large_patch14_clip_336.openai.safetensors",
)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_PRECISION_BITS = 22  # Pillow's fixed-point coefficients for 8-bit images: 32 - 8 - 2


@dataclass(frozen=True)
class CLIPModel:
    """One of ``MODELS``: the network's name in messages, open_clip's configuration of the architecture (built
    with QuickGELU, see ``visual_tower``), its weights, input size, feature dimension, the preprocessings
    (``resize``) its references use, the first being the default, whether the features are L2-normalised, and
    its name in ``extractor_id``."""

    name: str
    open_clip_name: str
    spec: weights.WeightsSpec
    image_size: int
    dim: int
    resizes: tuple[str, ...]
    normalized: bool
    short_id: str


MODELS = {
    "vit-b-32": CLIPModel("CLIP ViT-B/32", "ViT-B-32", CLIP_B32, 224, 512, ("clean-fid",), False, "vitb32"),
    "vit-l-14-336": CLIPModel(
        "CLIP ViT-L/14@336px", "ViT-L-14-336", CLIP_L14_336, 336, 768, ("cmmd", "jax"), True, "vitl14-336"
    ),
}


class CLIPFeatures(nn.Module):
    """OpenAI's CLIP image features with a reference's preprocessing: clean-fid's FD on CLIP, or CMMD's embedding.

    Use as ``FrechetInceptionDistance(feature=CLIPFeatures())`` (clean-fid's ``model_name="clip_vit_b_32"``)
    or ``CMMD(feature=CLIPFeatures("vit-l-14-336"))`` (CMMD's default). Always in eval mode (``train()`` is a
    no-op) and without gradients.

    Args:
        model: ``"vit-b-32"``: ViT-B/32, clean-fid's ``CLIP_fx("ViT-B/32")``, ``(N, 512)`` ``encode_image``
            outputs, not normalised. ``"vit-l-14-336"``: ViT-L/14@336px, CMMD's ``ClipEmbeddingModel``,
            ``(N, 768)`` projected image embeddings divided by their L2 norm.
        weights_path: a local copy of open_clip's ``open_clip_model.safetensors`` for the model (Hugging Face
            ``timm/vit_base_patch32_clip_224.openai`` or ``timm/vit_large_patch14_clip_336.openai``; or its
            ``open_clip_pytorch_model.bin``). Default: ``$FID_METRIC_CLIP_B32_WEIGHTS`` or
            ``$FID_METRIC_CLIP_L14_336_WEIGHTS``, else the torch hub cache (``torch.hub.get_dir()/checkpoints/
            vit_base_patch32_clip_224.openai.safetensors`` or ``vit_large_patch14_clip_336.openai.safetensors``),
            else a download: ViT-B/32 from Hugging Face, verified by its SHA-256; ViT-L/14 only from
            ``$FID_METRIC_CLIP_L14_336_WEIGHTS_URL``, a mirror whose file name carries the SHA-256 prefix.
        resize: for ``"vit-l-14-336"``: ``"cmmd"`` (default): CMMD's ``compute_cmmd`` on image files, a centre
            square crop and Pillow's bicubic of the 8-bit image to 336 x 336; ``"jax"``: CMMD's
            ``ClipEmbeddingModel.embed`` of given arrays, ``jax.image.resize`` of the whole image to 336 x 336
            (no crop). For ``"vit-b-32"`` only ``"clean-fid"``. See ``clip_input``.

    Attributes:
        extractor_id: ``"clip-vitb32-clean-fid/512"``, ``"clip-vitl14-336-cmmd/768"`` or
            ``"clip-vitl14-336-jax/768"``, recorded in statistics files and checkpoints.

    Raises:
        ValueError: ``model`` or ``resize`` is not one of the above.
        ImportError: open_clip is not installed (``pip install fid_metric[clip]``).
        fid_metric._features.weights.WeightsUnavailableError: no weights file was found.
        RuntimeError: the file is not open_clip's state dict of the model.
    """

    def __init__(
        self, model: str = "vit-b-32", weights_path: str | os.PathLike | None = None, *, resize: str | None = None
    ) -> None:
        super().__init__()
        self.model = checked_choice("model", model, tuple(MODELS))
        config = MODELS[self.model]
        self.resize = checked_choice("resize", config.resizes[0] if resize is None else resize, config.resizes)
        self.num_features, self.normalized = config.dim, config.normalized
        self.extractor_id = f"clip-{config.short_id}-{self.resize}/{config.dim}"
        import_open_clip()  # before looking for weights: the missing package is what to fix first
        self.weights_path = weights.resolve(weights_path, config.spec)
        self.visual = load_visual(self.weights_path, self.model)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> CLIPFeatures:
        """No-op: the network never leaves eval mode."""
        return self

    def forward(self, imgs: Tensor) -> Tensor:
        """``(N, 3 or 1, H, W)`` images -> ``(N, num_features)`` float32 features.

        ``imgs``: uint8 in [0, 255] (the 8-bit image a reference reads from a file), or floats in [0, 1] (the
        metric's ``normalize=True``), rounded to uint8 as ``floor(255 x + 0.5)`` first; any H, W. Grey images
        are repeated to RGB (what a file-based reference's ``convert("RGB")`` or channel tiling does).
        """
        check_images(imgs, normalize=isinstance(imgs, Tensor) and imgs.dtype.is_floating_point)
        features = self.visual(clip_input(to_uint8_rgb(imgs), self.resize))
        if self.normalized:  # as scenic's CLIP.encode_image: x / ||x||
            features = features / torch.linalg.vector_norm(features, dim=-1, keepdim=True)
        return features


def clip_input(imgs: Tensor, resize: str) -> Tensor:
    """``(N, 3, H, W)`` uint8 -> the float32 network input of the reference ``resize`` names, ``(N, 3, S, S)``.

    * ``"clean-fid"`` (S = 224): clean-fid's ``img_preprocess_clip``, i.e. torchvision's ``Resize(224, BICUBIC)``
      (Pillow; the short side to 224, the long one to ``int(224 * long / short)``) and ``CenterCrop(224)`` of
      the 8-bit image; then its ``ResizeDataset`` (``ToTensor() * 255``) and ``CLIP_fx`` (``/ 255.0``,
      ``Normalize`` with OpenAI's mean and std), in float32, where ``(u / 255) * 255 / 255`` is ``u / 255`` for
      every 8-bit value u.
    * ``"cmmd"`` (S = 336): CMMD's ``io_util._center_crop_and_resize`` (the centred square of side
      ``min(H, W)``, Pillow's bicubic to 336 x 336 of the 8-bit image), ``/ 255.0`` in float32, then
      ``embedding._clip_preprocess``: ``jax.image.resize`` to 336 x 336 (the identity here) and scenic's
      ``normalize_image``, ``(x - mean) / std`` in float32, which jax evaluates as ``(x - mean) * (1 / std)``.
    * ``"jax"`` (S = 336): ``embedding._clip_preprocess`` of ``uint8 / 255``: ``jax_bicubic`` to 336 x 336,
      then ``normalize_image``.
    """
    if resize == "clean-fid":
        height, width = imgs.shape[-2:]
        x = _center_crop(pil_bicubic(imgs, _short_side_to(height, width, 224)), 224).float() / 255
    elif resize == "cmmd":
        x = pil_bicubic(_square_crop(imgs), (336, 336)).float() / 255
    else:
        x = jax_bicubic(imgs.float() / 255, 336)
    mean = torch.tensor(OPENAI_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=x.device).view(1, 3, 1, 1)
    if resize == "clean-fid":
        return (x - mean) / std
    return (x - mean) * (1 / std)  # jax divides by the float32 std as XLA does on the CPU: times its reciprocal


def pil_bicubic(imgs: Tensor, size: tuple[int, int]) -> Tensor:
    """``(N, C, H, W)`` uint8 -> ``(N, C, h, w)`` uint8: Pillow's ``Image.resize((w, h), Image.BICUBIC)`` of
    8-bit images, bit for bit.

    Pillow's ``ImagingResample`` for 8-bit images (src/libImaging/Resample.c): the horizontal pass, then the
    vertical one (a pass whose size does not change is skipped), each with the bicubic kernel (a = -0.5) whose
    support grows with the reduction factor, normalised over the pixels inside the image and rounded to 22-bit
    fixed point (``_pil_weights``); each output is ``(2^21 + sum_k w_k p_k) >> 22`` clipped to [0, 255]. The
    sums are integers below 2^40, exact in float64 whatever the order of summation, so one float64 matmul per
    pass gives Pillow's integers. Pillow >= 13 runs the vertical pass first where the height shrinks much more
    than the width (python-pillow/Pillow#9549), which the resizes here, keeping the aspect ratio, never do.
    tests/test_clip.py holds it to Pillow bit for bit.
    """
    device = torch.device("cpu") if imgs.device.type == "mps" else imgs.device  # MPS has no float64
    x = imgs.to(device, torch.float64)
    if x.shape[-1] != size[1]:
        x = _pil_pass(x, _pil_weights(x.shape[-1], size[1]))
    if x.shape[-2] != size[0]:
        x = _pil_pass(x.transpose(-1, -2), _pil_weights(x.shape[-2], size[0])).transpose(-1, -2)
    return x.to(imgs.device, torch.uint8)


def _pil_pass(x: Tensor, coefficients: Tensor) -> Tensor:
    total = x @ coefficients.to(x.device).T
    return total.add_(2 ** (_PRECISION_BITS - 1)).div_(2**_PRECISION_BITS).floor_().clamp_(0, 255)


@functools.lru_cache(maxsize=32)
def _pil_weights(in_size: int, out_size: int) -> Tensor:
    """``(out_size, in_size)`` float64 integers: Pillow's ``precompute_coeffs`` with its bicubic filter, then
    ``normalize_coeffs_8bpc``, in its double arithmetic and order (Python floats are C doubles)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support, inverse = 2.0 * filterscale, 1.0 / filterscale
    coefficients = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        low = max(int(center - support + 0.5), 0)
        high = min(int(center + support + 0.5), in_size)
        taps = [_pil_bicubic((j - center + 0.5) * inverse) for j in range(low, high)]
        total = 0.0
        for tap in taps:  # in order, as Pillow's C loop (sum() compensates since Python 3.12)
            total += tap
        for j, tap in enumerate(taps, start=low):
            k = tap / total if total != 0.0 else tap
            coefficients[i, j] = int(k * (1 << _PRECISION_BITS) + (0.5 if k >= 0 else -0.5))
    return coefficients


def _pil_bicubic(x: float) -> float:
    """Pillow's ``bicubic_filter`` (a = -0.5)."""
    x = abs(x)
    if x < 1.0:
        return (1.5 * x - 2.5) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * -0.5
    return 0.0


def jax_bicubic(x: Tensor, size: int) -> Tensor:
    """``(N, C, H, W)`` float32 -> ``(N, C, size, size)`` float32: ``jax.image.resize(x, (N, size, size, C),
    method="bicubic")`` (antialias=True, its default) of the NHWC array, in NCHW.

    jax/_src/image/scale.py: each changed axis is contracted with the float32 ``compute_weight_mat``
    (``_jax_weights``: jax's float32 weights as XLA computes them, whose round-off moves them by up to 4e-5 from
    their exact values: the reference's, so kept); an axis whose size does not change is left alone, so a size x
    size image is returned as it is. The contraction is in float64, rounded to float32 once. tests/test_cmmd.py
    holds it within 1e-6 of jax on [0, 1] images (5e-7 measured: jax's float32 einsum is itself ~1.4e-7 from the
    exact sums of its weights).
    """
    if x.shape[-2:] == (size, size):
        return x
    device = torch.device("cpu") if x.device.type == "mps" else x.device  # MPS has no float64
    y = x.to(device, torch.float64)
    if y.shape[-1] != size:
        y = y @ _jax_weights(y.shape[-1], size).to(device).T
    if y.shape[-2] != size:
        y = _jax_weights(y.shape[-2], size).to(device) @ y
    return y.to(x.device, torch.float32)


@functools.lru_cache(maxsize=32)
def _jax_weights(in_size: int, out_size: int) -> Tensor:
    """``(out_size, in_size)`` float64 holding the float32 weights ``jax.image.resize`` contracts with:
    ``compute_weight_mat(in_size, out_size, scale=out / in, translation=0, kernel=_fill_keys_cubic_kernel,
    antialias=True)``, transposed, as XLA compiles it (``resize`` is jitted; jax 0.10 on the CPU measured):
    divisions by a constant become products with its float32 reciprocal, constant factors fold (``-0.5 * (d / s)``
    is ``d * (-0.5 / s)``), and each ``a * b + c`` is one fused multiply-add (``_fma``). Within 2.4e-7 of jax's
    (1 or 2 float32 ulps: the order of its sums); the operations as written in scale.py, evaluated one by one, are
    up to 1e-5 from them (one ulp of a sample position near 336 is 3e-5). The scale's inverse is a double, as
    jax takes it from a Python float.
    """
    f32 = torch.float32
    inverse = 1.0 / (out_size / in_size)
    reciprocal = 1 / torch.tensor(max(inverse, 1.0), dtype=f32)  # of the kernel's scale, antialiasing a reduction
    sample = _fma(torch.arange(out_size, dtype=f32) + 0.5, torch.tensor(inverse, dtype=f32), -0.5)
    distance = (sample[:, None] - torch.arange(in_size, dtype=f32)).abs()
    x = distance * reciprocal
    far = _fma(_fma(_fma(distance, -0.5 * reciprocal, 2.5), x, -4.0), x, 2.0)  # Keys' cubic, a = -0.5, 1 <= x < 2
    near = _fma(_fma(distance, 1.5 * reciprocal, -2.5) * x, x, 1.0)  # x < 1
    kernel = torch.where(x >= 2.0, 0.0, torch.where(x >= 1.0, far, near))
    total = kernel.sum(1, keepdim=True)
    usable = total.abs() > 1000 * torch.finfo(f32).eps
    kernel = torch.where(usable, kernel * (1 / torch.where(total != 0, total, 1.0)), 0.0)
    inside = (sample >= -0.5) & (sample <= in_size - 0.5)
    return torch.where(inside[:, None], kernel, 0.0).double()


def _fma(a: Tensor, b: Tensor, c: float) -> Tensor:
    """float32 ``a * b + c`` rounded once, as a fused multiply-add: the float64 product of two float32 numbers is
    exact, and the float64 sum rounds to float32 as the exact one does unless it falls within 2^-53 of a float32
    tie (double rounding, about one case in 2^29)."""
    return (a.double() * b.double() + c).float()


def _short_side_to(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's ``Resize(size)`` output ``(h, w)``: the short side ``size``, the long ``int(size * long /
    short)`` (``_compute_resized_output_size``)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def _center_crop(x: Tensor, size: int) -> Tensor:
    """torchvision's ``CenterCrop(size)`` of an image at least ``size`` on each side (Python's ``round``)."""
    top, left = int(round((x.shape[-2] - size) / 2.0)), int(round((x.shape[-1] - size) / 2.0))
    return x[..., top : top + size, left : left + size]


def _square_crop(x: Tensor) -> Tensor:
    """CMMD's crop: the centred square of side ``min(H, W)``, offsets rounded down."""
    side = min(x.shape[-2:])
    top, left = (x.shape[-2] - side) // 2, (x.shape[-1] - side) // 2
    return x[..., top : top + side, left : left + side]


def import_open_clip() -> ModuleType:
    """The ``open_clip`` module, or an ImportError that says how to install it."""
    try:
        import open_clip  # type: ignore[import-untyped]  # no py.typed
    except ImportError as err:
        raise ImportError("CLIPFeatures needs open_clip: pip install 'fid_metric[clip]' (or open_clip_torch).") from err
    return cast(ModuleType, open_clip)


def visual_tower(model: str) -> nn.Module:
    """open_clip's vision tower of ``MODELS[model]`` on the meta device (no memory, no initialisation): the
    architecture's configuration with QuickGELU, OpenAI's activation, as open_clip's ``*-quickgelu`` models are
    (built from the plain configuration: open_clip < 2.29 has no ``ViT-L-14-336-quickgelu``)."""
    open_clip = import_open_clip()
    settings = {**open_clip.get_model_config(MODELS[model].open_clip_name), "quick_gelu": True}
    with torch.device("meta"):
        return cast(nn.Module, open_clip.model.CLIP(**settings).visual)


def load_visual(path: str | os.PathLike, model: str) -> nn.Module:
    """``visual_tower(model)`` holding the ``visual.*`` tensors of the file at ``path`` (strict), in float32 and
    eval mode.

    ``path``: open_clip's ``open_clip_model.safetensors`` (read with safetensors: nothing is unpickled, and only
    the vision tower's tensors are read), or its ``open_clip_pytorch_model.bin`` (``torch.load(weights_only=
    True)``). The network is built on the meta device and takes the loaded tensors as its parameters, so no
    random initialisation runs and the weights exist once.
    """
    config = MODELS[model]
    network = visual_tower(model)
    try:
        network.load_state_dict(_visual_state(Path(path), config.spec.what), strict=True, assign=True)
    except RuntimeError as err:
        raise RuntimeError(
            f"{path} is not a {config.name} state dict in open_clip's layout (as in {config.spec.url}): {err}"
        ) from err
    return network.eval()


def _visual_state(path: Path, what: str) -> dict[str, Tensor]:
    """The file's ``visual.*`` tensors, without the prefix, in float32."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as file:
                state = {name[7:]: file.get_tensor(name) for name in file.keys() if name.startswith("visual.")}
        except Exception as err:  # safetensors raises its own error types for a file it cannot read
            raise RuntimeError(f"Could not load {what} from {path}: {err}") from err
    else:
        loaded = weights.load_state_dict(path, what=what)
        state = {name[7:]: value for name, value in loaded.items() if name.startswith("visual.")}
    if not state:
        raise RuntimeError(f"no 'visual.*' entries (the vision tower's) in {path}")
    return {name: value.float() for name, value in state.items()}
