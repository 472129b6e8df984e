"""DINOv2Features (FD_DINOv2): weights resolution and loading, preprocessing, features, the metric end to end.

No pretrained weights can be downloaded here, so the module builds a random state dict in the layout of Meta's
``dinov2_vitl14_pretrain.pth`` (the hub model at 518 px: ``pos_embed`` (1, 1370, 1024), ``mask_token``, ...)
once, writes it to a temporary file and loads it like the real one. ViT-L is 1.2 GB and slow on a CPU, so the
network is built once and every forward pass uses a handful of images.
Every test runs with ``TORCH_HOME`` in a temporary folder and without the DINOv2 environment variables.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import smooth_images
from PIL import Image

from fid_metric import FeatureStats, FrechetInceptionDistance, StatsMismatchError
from fid_metric._features import dinov2, weights
from fid_metric._features.dinov2 import DINOV2, DINOv2Features, dinov2_input, hub_pos_embed_224, pil_bicubic_224
from fid_metric._features.weights import WeightsUnavailableError

timm = pytest.importorskip("timm")

DIM, DEPTH, HUB_GRID = 1024, 24, 37  # ViT-L/14; the official checkpoint is for 518 px = 37 x 14
REFERENCE_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.bias", "blocks.23.mlp.fc2.bias", "norm.weight")


def hub_state_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``dinov2_vitl14_pretrain.pth``, from facebookresearch/dinov2's ``DinoVisionTransformer``.

    ``vit_large`` as ``hub/backbones.py`` builds it: img_size=518, patch_size=14, init_values=1.0 (LayerScale
    ``ls1``/``ls2``), ffn_layer="mlp" (``fc1``/``fc2``), block_chunks=0 (``blocks.N``, not ``blocks.0.N``).
    """
    shapes = {
        "cls_token": (1, 1, DIM),
        "pos_embed": (1, 1 + HUB_GRID * HUB_GRID, DIM),
        "mask_token": (1, DIM),
        "patch_embed.proj.weight": (DIM, 3, 14, 14),
        "patch_embed.proj.bias": (DIM,),
    }
    for i in range(DEPTH):
        block = {
            "norm1.weight": (DIM,),
            "norm1.bias": (DIM,),
            "attn.qkv.weight": (3 * DIM, DIM),
            "attn.qkv.bias": (3 * DIM,),
            "attn.proj.weight": (DIM, DIM),
            "attn.proj.bias": (DIM,),
            "ls1.gamma": (DIM,),
            "norm2.weight": (DIM,),
            "norm2.bias": (DIM,),
            "mlp.fc1.weight": (4 * DIM, DIM),
            "mlp.fc1.bias": (4 * DIM,),
            "mlp.fc2.weight": (DIM, 4 * DIM),
            "mlp.fc2.bias": (DIM,),
            "ls2.gamma": (DIM,),
        }
        shapes.update({f"blocks.{i}.{name}": shape for name, shape in block.items()})
    shapes.update({"norm.weight": (DIM,), "norm.bias": (DIM,)})
    return shapes


def timm_518_shapes_with_mask_token() -> dict[str, tuple[int, ...]]:
    """timm's ``vit_large_patch14_dinov2`` state dict at 518 px (built on the meta device), plus ``mask_token``."""
    with torch.device("meta"):
        model = timm.create_model(dinov2.TIMM_MODEL, pretrained=False, img_size=518, num_classes=0)
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    return {**shapes, "mask_token": (1, DIM)}


def random_hub_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the hub layout, scaled so that the CLS feature depends clearly on the image.

    Every large tensor is a view into one shared pool of 8M normal numbers, at its own offset (overlapping), so
    the file holds 32 MB instead of 1.2 GB (``torch.save`` writes a shared storage once) and is drawn, written
    and read in a fraction of a second; the loader sees the hub's names and shapes all the same.
    """
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(8 * 2**20, generator=g).mul_(0.02)
    state, offset = {}, 0
    for name, shape in timm_518_shapes_with_mask_token().items():
        size = math.prod(shape)
        # a stride that is no multiple of any row length; 64-float (256-byte) aligned, as fresh tensors are
        offset = (offset + 7919 * 131) % (pool.numel() - size) // 64 * 64
        value = pool[offset : offset + size].view(shape)
        if name.endswith("gamma"):  # LayerScale: small, as trained DINOv2 blocks are
            value = torch.full(shape, 0.1)
        elif name.endswith(("norm1.weight", "norm2.weight")) or name == "norm.weight":
            value = value * 5 + 1  # 1 + 0.1 * N(0, 1), a copy: the pool is shared
        elif name == "mask_token":
            value = torch.zeros(shape)
        state[name] = value
    return state


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(DINOV2.env_path, raising=False)
    monkeypatch.delenv(DINOV2.env_url, raising=False)


@pytest.fixture(scope="module")
def hub_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    """A random ``dinov2_vitl14_pretrain.pth`` (hub layout, 518 px; ``random_hub_state``) and copies of a few of
    its tensors."""
    state = random_hub_state()
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vitl14_pretrain.pth"
    torch.save(state, path)
    yield path, {name: state[name].clone() for name in REFERENCE_KEYS}


@pytest.fixture(scope="module")
def features(hub_checkpoint: tuple[Path, dict[str, torch.Tensor]]) -> DINOv2Features:
    return DINOv2Features(hub_checkpoint[0])


def hub_interpolate_pos_encoding(pos_embed: torch.Tensor, w: int, h: int, patch_size: int = 14) -> torch.Tensor:
    """``DinoVisionTransformer.interpolate_pos_encoding`` of facebookresearch/dinov2, written as the hub writes it."""
    n = pos_embed.shape[1] - 1
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:].float()
    dim = pos_embed.shape[-1]
    w0, h0 = w // patch_size + 0.1, h // patch_size + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), dim).permute(0, 3, 1, 2),
        scale_factor=(float(w0 / math.sqrt(n)), float(h0 / math.sqrt(n))),
        mode="bicubic",
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def pil_resize_224(imgs: torch.Tensor) -> torch.Tensor:
    """dgm-eval's resize: ``PIL.Image.resize((224, 224), BICUBIC)`` of each RGB image, as float32 0..255."""
    out = []
    for img in imgs:
        pil = Image.fromarray(np.ascontiguousarray(img.permute(1, 2, 0).numpy()))
        out.append(torch.from_numpy(np.array(pil.resize((224, 224), Image.BICUBIC))).permute(2, 0, 1))
    return torch.stack(out).float()


# --- the checkpoint layout ----------------------------------------------------------------------------


def test_timm_layout_at_518_plus_mask_token_is_the_hub_layout() -> None:
    assert timm_518_shapes_with_mask_token() == hub_state_shapes()


# --- loading ------------------------------------------------------------------------------------------


def test_loads_hub_checkpoint_strictly_from_path(features: DINOv2Features, hub_checkpoint) -> None:
    _, ref = hub_checkpoint
    params = dict(features.model.named_parameters())
    assert len(params) == len(hub_state_shapes()) - 1  # everything but mask_token, strict=True
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params.values())
    for name in REFERENCE_KEYS:
        if name != "pos_embed":  # resampled, see the next test
            assert torch.equal(params[name], ref[name]), name
    assert features.weights_path == hub_checkpoint[0]


def test_pos_embed_518_is_resampled_as_the_hub_does_at_224(features: DINOv2Features, hub_checkpoint) -> None:
    _, ref = hub_checkpoint
    assert ref["pos_embed"].shape == (1, 1 + 37 * 37, DIM)
    loaded = features.model.pos_embed
    assert loaded.shape == (1, 1 + 16 * 16, DIM)
    assert torch.equal(loaded, hub_interpolate_pos_encoding(ref["pos_embed"], 224, 224))
    # timm's own resampling (antialiased, size=(16, 16)) is a different tensor: the reason for hub_pos_embed_224.
    timm_way = timm.layers.resample_abs_pos_embed(ref["pos_embed"], new_size=[16, 16], num_prefix_tokens=1)
    assert not torch.allclose(loaded, timm_way, atol=1e-4)


def test_hub_pos_embed_224_keeps_a_16x16_grid_and_rejects_other_shapes() -> None:
    pos = torch.randn(1, 1 + 16 * 16, 8)
    assert hub_pos_embed_224(pos) is pos
    with pytest.raises(RuntimeError, match=r"\(1, 1 \+ M \* M, d\)"):
        hub_pos_embed_224(torch.randn(1, 1 + 37 * 36, 8))


def test_loads_from_env_var(monkeypatch: pytest.MonkeyPatch, hub_checkpoint) -> None:
    """Without an argument, ``$FID_METRIC_DINOV2_WEIGHTS`` is the file loaded (what loading it gives is the test
    above; here the loader records the path instead of reading the file again)."""
    monkeypatch.setenv(DINOV2.env_path, str(hub_checkpoint[0]))
    assert weights.resolve(spec=DINOV2) == hub_checkpoint[0]
    loaded: list[Path] = []
    monkeypatch.setattr(dinov2, "load_vit", lambda path: loaded.append(path) or torch.nn.Identity())
    assert DINOv2Features().weights_path == hub_checkpoint[0]
    assert loaded == [hub_checkpoint[0]]


def test_eval_frozen_and_num_features(features: DINOv2Features) -> None:
    assert features.num_features == 1024
    assert features.train() is features and not features.training and not features.model.training
    assert not any(p.requires_grad for p in features.parameters())


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"weight": torch.zeros(3)}, r"no \['mask_token', 'pos_embed'\] entries"),
        ({"pos_embed": torch.zeros(1, 1 + 37 * 37, DIM), "mask_token": torch.zeros(1, DIM)}, "Missing key"),
        (torch.zeros(3), "not a state dict"),
    ],
)
def test_wrong_file_gives_a_clear_error(tmp_path: Path, state: object, match: str) -> None:
    path = tmp_path / "not_dinov2.pth"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="is not a DINOv2 ViT-L/14 state dict") as info:
        DINOv2Features(path)
    assert info.match(match)


# --- resolution ---------------------------------------------------------------------------------------


def test_missing_explicit_file_or_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(WeightsUnavailableError, match=r"nowhere\.pth \(from weights_path\) does not exist"):
        DINOv2Features(missing)
    monkeypatch.setenv(DINOV2.env_path, str(missing))
    with pytest.raises(WeightsUnavailableError, match=r"from \$FID_METRIC_DINOV2_WEIGHTS\) does not exist"):
        weights.resolve(spec=DINOV2)


def test_nothing_found_lists_what_was_tried_and_how_to_supply_the_file() -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve(spec=DINOV2)
    message = str(info.value)
    for expected in (
        "weights_path: not given",
        "$FID_METRIC_DINOV2_WEIGHTS: not set",
        "checkpoints/dinov2_vitl14_pretrain.pth does not exist",
        "$FID_METRIC_DINOV2_WEIGHTS_URL not set",
        DINOV2.url,
        "DINOv2Features(weights_path=",
        "FID_METRIC_DINOV2_WEIGHTS=/path/to/dinov2_vitl14_pretrain.pth",
    ):
        assert expected in message


def test_torch_hub_cache_is_used(tmp_path: Path) -> None:
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / "dinov2_vitl14_pretrain.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"placeholder")
    assert weights.resolve(spec=DINOV2) == cached


def test_mirror_without_hash_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    source = tmp_path / "dinov2_vitl14_pretrain.pth"
    source.write_bytes(b"unverifiable")
    monkeypatch.setenv(DINOV2.env_url, source.as_uri())  # reachable, but nothing to verify it by
    with pytest.raises(WeightsUnavailableError, match="no SHA-256 prefix"):
        weights.resolve(spec=DINOV2)
    assert not (tmp_path / "torch_home" / "hub" / "checkpoints").exists()


def test_mirror_with_hash_is_downloaded_verified(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    payload = b"stand-in for the weights"
    digest = hashlib.sha256(payload).hexdigest()
    good = tmp_path / "mirror" / f"dinov2_vitl14_pretrain-{digest[:8]}.pth"
    good.parent.mkdir()
    good.write_bytes(payload)
    monkeypatch.setenv(DINOV2.env_url, good.as_uri())
    path = weights.resolve(spec=DINOV2)
    assert path == tmp_path / "torch_home" / "hub" / "checkpoints" / good.name
    assert path.read_bytes() == payload
    assert weights.resolve(spec=DINOV2) == path  # now from the cache

    bad = good.with_name("dinov2_vitl14_pretrain-00000000.pth")
    bad.write_bytes(payload)
    monkeypatch.setenv(DINOV2.env_url, bad.as_uri())
    with pytest.raises(WeightsUnavailableError, match="does not start with 00000000"):
        weights.resolve(spec=DINOV2)
    assert not (path.parent / bad.name).exists()


# --- preprocessing ------------------------------------------------------------------------------------


def test_preprocessing_is_the_documented_formula() -> None:
    imgs = torch.randint(0, 256, (2, 3, 40, 57), dtype=torch.uint8)
    x = imgs.float()
    x = F.interpolate(x, size=(40, 224), mode="bicubic", antialias=True, align_corners=False)
    x = torch.floor(x + 0.5).clamp(0, 255)
    x = F.interpolate(x, size=(224, 224), mode="bicubic", antialias=True, align_corners=False)
    x = torch.floor(x + 0.5).clamp(0, 255)
    assert torch.equal(pil_bicubic_224(imgs), x)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = (x / 255 - mean) / std
    out = dinov2_input(imgs)
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (100, 77), (256, 256), (300, 512)])
def test_resize_matches_pillow_bicubic(size: tuple[int, int]) -> None:
    """dgm-eval resizes with Pillow; we agree up to Pillow's fixed-point rounding (pil_bicubic_224)."""
    g = torch.Generator().manual_seed(size[0] * 1000 + size[1])
    noise = torch.randint(0, 256, (1, 3, *size), dtype=torch.uint8, generator=g)
    imgs = torch.cat([noise, smooth_images(1, size, seed=size[0])])
    diff = (pil_bicubic_224(imgs) - pil_resize_224(imgs)).abs()
    assert diff.max() <= 2
    assert (diff > 0).float().mean() < 0.01


def test_resize_of_a_224_image_is_the_identity() -> None:
    imgs = torch.randint(0, 256, (1, 3, 224, 224), dtype=torch.uint8)
    assert torch.equal(pil_bicubic_224(imgs), imgs.float())


# --- features -----------------------------------------------------------------------------------------


class _Recorder(torch.nn.Module):
    """Stands in for the ViT: keeps the network input it is given and returns zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return x.new_zeros(x.shape[0], DIM)


def test_grey_and_float_images_reach_the_network_as_their_uint8_rgb_image(features: DINOv2Features) -> None:
    grey = smooth_images(2, 32, seed=5, channels=1)
    rgb = grey.expand(-1, 3, -1, -1)
    network, recorder = features.model, _Recorder()
    features.model = recorder  # not monkeypatch: its undo deletes a submodule instead of restoring it
    try:
        for imgs in (grey, rgb, grey.float() / 255, rgb.double() / 255):
            features(imgs)
    finally:
        features.model = network
    expected = dinov2_input(rgb)
    assert all(torch.equal(x, expected) for x in recorder.inputs)


@pytest.mark.parametrize(
    ("imgs", "error", "match"),
    [
        (torch.zeros(1, 3, 8, 8, dtype=torch.int64), TypeError, "must be uint8"),
        (torch.full((1, 3, 8, 8), 2.0), ValueError, r"in \[0, 1\]"),
        (torch.zeros(1, 2, 8, 8, dtype=torch.uint8), ValueError, "channels"),
        ([[0]], TypeError, "torch.Tensor"),
    ],
)
def test_rejects_what_is_not_an_image_batch(features: DINOv2Features, imgs, error, match) -> None:
    with pytest.raises(error, match=match):
        features(imgs)


# Two images per side through random weights: some of the 1024 features barely differ between them, which the
# cancellation check reports; not what this test is about.
@pytest.mark.filterwarnings("ignore:Covariance cancellation")
def test_fd_dinov2_end_to_end(features: DINOv2Features) -> None:
    """The metric over DINOv2Features against fixed reference statistics (N(0, I / 100), as a statistics file of
    a dataset would give them; two images, as ViT-L is slow on a CPU): what the network gives the metric ((N, 1024)
    float32, finite, depending on the image) and a finite positive float64 FD."""
    reference = FeatureStats(
        torch.zeros(1024, dtype=torch.float64),
        torch.eye(1024, dtype=torch.float64) / 100,
        extractor=features.extractor_id,
    )
    given: list[torch.Tensor] = []
    hook = features.register_forward_hook(lambda module, args, out: given.append(out))
    try:
        fid = FrechetInceptionDistance(feature=features, real_stats=reference)
        fid.update(smooth_images(2, 32, seed=20), real=False)
    finally:
        hook.remove()
    assert fid.num_features == 1024
    assert [(out.shape, out.dtype) for out in given] == [((2, 1024), torch.float32)]
    out = given[0]
    assert torch.isfinite(out).all()
    assert (out[0] - out[1]).abs().max() > 1e-2  # depends on the image
    with pytest.warns(UserWarning, match="fewer samples than dimensions"):
        value = fid.compute()
    assert value.dtype == torch.float64 and value.ndim == 0
    assert torch.isfinite(value) and value > 0


def _edm2_detector_input(x: torch.Tensor) -> torch.Tensor:
    """NVlabs/edm2 calculate_metrics.py, ``DINOv2Detector.__call__`` with its default ``resize_mode="torch"``, up to
    the network: one float32 antialiased bicubic resize of the uint8 values, then ImageNet's mean and std."""
    x = torch.nn.functional.interpolate(x.to(torch.float32), size=(224, 224), mode="bicubic", antialias=True)
    x = x.to(torch.float32) / 255
    x = x - torch.tensor([0.485, 0.456, 0.406]).reshape(1, -1, 1, 1)
    return x / torch.tensor([0.229, 0.224, 0.225]).reshape(1, -1, 1, 1)


@pytest.mark.parametrize("size", [(32, 32), (300, 260), (224, 224)])
def test_edm2_resize_is_edm2s_detector_input(size: tuple[int, int]) -> None:
    """resize="edm2": the network input EDM2's DINOv2Detector makes, to the bit; another definition than
    dgm-eval's (which rounds after each Pillow pass), except at 224 px where neither resizes."""
    imgs = smooth_images(2, size, seed=sum(size))
    ours = dinov2_input(imgs, "edm2")
    assert torch.equal(ours, _edm2_detector_input(imgs))
    differs = not torch.equal(ours, dinov2_input(imgs, "dgm-eval"))
    assert differs == (size != (224, 224))


def test_the_two_resizes_are_two_definitions(hub_checkpoint) -> None:
    edm2 = DINOv2Features(weights_path=hub_checkpoint[0], resize="edm2")
    assert edm2.extractor_id == "dinov2-vitl14-edm2/1024" != DINOv2Features.__name__
    stats = FeatureStats(
        torch.zeros(1024, dtype=torch.float64),
        torch.eye(1024, dtype=torch.float64),
        extractor="dinov2-vitl14-dgm-eval/1024",
    )
    with pytest.raises(StatsMismatchError, match="extractor is 'dinov2-vitl14-dgm-eval/1024' in real_stats"):
        FrechetInceptionDistance(feature=edm2, real_stats=stats)
    with pytest.raises(StatsMismatchError, match="does not record which feature network made it"):
        FrechetInceptionDistance(feature=edm2, real_stats=FeatureStats(stats.mean, stats.covariance))
    with pytest.raises(ValueError, match="`resize` must be one of"):
        DINOv2Features(weights_path=hub_checkpoint[0], resize="pil")
