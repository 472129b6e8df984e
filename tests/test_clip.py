"""CLIPFeatures (FD on CLIP features): the layout, weights resolution and loading, clean-fid's preprocessing, the
features, and the FD against clean-fid's own ``compute_fid(..., model_name="clip_vit_b_32")``.

No pretrained weights can be downloaded here, so the module saves a random-init open_clip ``ViT-B-32-quickgelu``
with safetensors, as open_clip's ``open_clip_model.safetensors`` holds OpenAI's weights (the layout is checked
against OpenAI's own model below), and loads it like the real file. clean-fid imports OpenAI's ``clip`` package,
which cannot be installed here: a stub module ``clip`` whose ``load`` returns open_clip's model with the same
weights stands in, so clean-fid's own code (its Pillow preprocessing, ``CLIP_fx``, ``np.cov``, scipy's sqrtm)
runs on the same network. ViT-L/14@336px, CMMD's network, is tested in tests/test_cmmd.py.
Every test runs with ``TORCH_HOME`` in a temporary folder and without the CLIP environment variables.
"""

from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_open_clip, relative, smooth_images
from PIL import Image

from fid_metric import CLIPFeatures, FrechetInceptionDistance
from fid_metric._features import clip, weights
from fid_metric._features.clip import CLIP_B32, CLIP_L14_336, MODELS, clip_input, pil_bicubic
from fid_metric._features.weights import WeightsUnavailableError

open_clip = pytest.importorskip("open_clip")
safetensors_torch = pytest.importorskip("safetensors.torch")

pytestmark = [
    pytest.mark.filterwarnings("ignore:FID from .* fewer samples than dimensions"),
    # clean-fid's frechet_distance calls scipy.linalg.sqrtm(..., disp=False), deprecated in SciPy 1.16.
    pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning:cleanfid.fid"),
]


def openai_visual_shapes(width: int, layers: int, patch: int, resolution: int, output_dim: int) -> dict[str, tuple]:
    """Names and shapes of the vision tower's state dict in OpenAI's CLIP (openai/CLIP ``clip/model.py``,
    ``VisionTransformer(input_resolution, patch_size, width, layers, heads, output_dim)``: conv1 without bias,
    class and positional embeddings, ln_pre, ``layers`` blocks of ``nn.MultiheadAttention`` and a 4x MLP
    (``c_fc``, QuickGELU, ``c_proj``), ln_post, ``proj``), under ``visual.`` in the checkpoint."""
    shapes: dict[str, tuple] = {
        "class_embedding": (width,),
        "positional_embedding": ((resolution // patch) ** 2 + 1, width),
        "proj": (width, output_dim),
        "conv1.weight": (width, 3, patch, patch),
        "ln_pre.weight": (width,),
        "ln_pre.bias": (width,),
        "ln_post.weight": (width,),
        "ln_post.bias": (width,),
    }
    block = {
        "attn.in_proj_weight": (3 * width, width),
        "attn.in_proj_bias": (3 * width,),
        "attn.out_proj.weight": (width, width),
        "attn.out_proj.bias": (width,),
        "ln_1.weight": (width,),
        "ln_1.bias": (width,),
        "mlp.c_fc.weight": (4 * width, width),
        "mlp.c_fc.bias": (4 * width,),
        "mlp.c_proj.weight": (width, 4 * width),
        "mlp.c_proj.bias": (width,),
        "ln_2.weight": (width,),
        "ln_2.bias": (width,),
    }
    for i in range(layers):
        shapes.update({f"transformer.resblocks.{i}.{name}": shape for name, shape in block.items()})
    return shapes


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for spec in (CLIP_B32, CLIP_L14_336):
        monkeypatch.delenv(spec.env_path, raising=False)
        monkeypatch.delenv(spec.env_url, raising=False)


@pytest.fixture(scope="module")
def b32(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A random-init open_clip ``ViT-B-32-quickgelu`` (the reference network) and its state dict saved as
    ``open_clip_model.safetensors``."""
    return random_open_clip("ViT-B-32-quickgelu", tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def features(b32: tuple[Path, torch.nn.Module]) -> CLIPFeatures:
    return CLIPFeatures("vit-b-32", b32[0])


def pil_resize(imgs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``Image.resize((w, h), Image.BICUBIC)`` of each image (mode "RGB", or "L" for one channel)."""
    out = []
    for img in imgs:
        array = np.ascontiguousarray(img.permute(1, 2, 0).numpy())
        pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        resized = np.array(pil.resize((size[1], size[0]), Image.BICUBIC))
        out.append(torch.from_numpy(resized.reshape(size[0], size[1], -1)).permute(2, 0, 1))
    return torch.stack(out)


# --- the network and its file --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(MODELS))
def test_the_vision_tower_is_openais_architecture(model: str) -> None:
    """The tower the weights are loaded into has OpenAI's state-dict layout, QuickGELU, 64-wide heads and
    PyTorch's LayerNorm eps (1e-5), as ``clip/model.py`` builds ViT-B/32 and ViT-L/14@336px, and is open_clip's
    ``*-quickgelu`` model's (the reference network of these tests)."""
    config = MODELS[model]
    visual = clip.visual_tower(model)
    with torch.device("meta"):
        quickgelu = open_clip.create_model(f"{config.open_clip_name}-quickgelu", pretrained=None, device="meta")
    assert repr(visual) == repr(quickgelu.visual)
    width, layers, patch = {"vit-b-32": (768, 12, 32), "vit-l-14-336": (1024, 24, 14)}[model]
    expected = openai_visual_shapes(width, layers, patch, config.image_size, config.dim)
    assert {name: tuple(value.shape) for name, value in visual.state_dict().items()} == expected
    blocks = list(visual.transformer.resblocks)
    assert all(type(block.mlp.gelu).__name__ == "QuickGELU" for block in blocks)
    assert all(block.attn.num_heads == width // 64 for block in blocks)
    assert all(m.eps == 1e-5 for m in visual.modules() if isinstance(m, torch.nn.LayerNorm))


def test_saved_file_has_the_published_files_size(b32: tuple[Path, torch.nn.Module]) -> None:
    """open_clip's full ViT-B-32-quickgelu state dict saved with safetensors has the size of the published
    ``open_clip_model.safetensors`` to the byte: the same names, shapes and dtype (float32), both towers."""
    assert b32[0].stat().st_size == CLIP_B32.size == 605_143_284


def test_loads_the_vision_tower_strictly(features: CLIPFeatures, b32: tuple[Path, torch.nn.Module]) -> None:
    reference = b32[1].visual.state_dict()
    loaded = features.visual.state_dict()
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[name], reference[name]) for name in reference)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in features.parameters())
    assert features.train() is features and not features.visual.training
    assert (features.num_features, features.extractor_id) == (512, "clip-vitb32-clean-fid/512")


def test_features_are_open_clips_encode_image(features: CLIPFeatures, b32: tuple[Path, torch.nn.Module]) -> None:
    """The features are open_clip's own ``encode_image`` (OpenAI's: not normalised) of clean-fid's network input,
    bit for bit, and depend on the image (random weights that gave every image one feature would prove nothing)."""
    imgs = smooth_images(3, (90, 120), seed=1)
    with torch.inference_mode():
        ours = features(imgs)
        reference = b32[1].encode_image(clip_input(imgs, "clean-fid"))
    assert ours.shape == (3, 512) and ours.dtype == torch.float32
    assert torch.equal(ours, reference)
    assert ours.std() > 0.1 and relative(ours[0], ours[1]) > 0.05


class _Recorder(torch.nn.Module):
    """Stands in for the vision tower (``forward``) or OpenAI's model (``encode_image``): keeps the network input
    it is given and returns zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return x.new_zeros(x.shape[0], 512)

    encode_image = forward


def test_grey_and_float_images_reach_the_network_as_their_uint8_rgb_image(features: CLIPFeatures) -> None:
    grey = smooth_images(2, 40, seed=5, channels=1)
    rgb = grey.expand(-1, 3, -1, -1)
    network, recorder = features.visual, _Recorder()
    features.visual = recorder  # not monkeypatch: its undo deletes a submodule instead of restoring it
    try:
        for imgs in (grey, rgb, grey.float() / 255, rgb.double() / 255):
            features(imgs)
    finally:
        features.visual = network
    expected = clip_input(rgb, "clean-fid")
    assert all(torch.equal(x, expected) for x in recorder.inputs)


# --- preprocessing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "out"),
    [
        ((64, 64), (224, 224)),  # enlarging, clean-fid's Resize(224) of a square
        ((100, 77), (290, 224)),  # enlarging, clean-fid's Resize(224) of a portrait
        ((300, 512), (224, 382)),  # shrinking, clean-fid's Resize(224) of a landscape
        ((1024, 700), (327, 224)),  # shrinking by 3, a portrait
        ((500, 500), (336, 336)),  # CMMD's resize of a square crop
        ((17, 17), (336, 336)),  # CMMD's, enlarging 20 times
        ((40, 57), (224, 300)),  # another aspect ratio, enlarging
        ((224, 301), (224, 301)),  # clean-fid's Resize(224) of an image 224 high: Pillow returns a copy
    ],
)
@pytest.mark.parametrize("channels", [3, 1])
def test_pil_bicubic_is_pillow_bit_for_bit(size: tuple[int, int], out: tuple[int, int], channels: int) -> None:
    g = torch.Generator().manual_seed(size[0] * 1000 + size[1])
    noise = torch.randint(0, 256, (1, channels, *size), dtype=torch.uint8, generator=g)
    imgs = torch.cat([noise, smooth_images(1, size, seed=size[0], channels=channels)])
    ours = pil_bicubic(imgs, out)
    assert ours.dtype == torch.uint8
    assert torch.equal(ours, pil_resize(imgs, out))


@pytest.mark.cuda
@pytest.mark.parametrize("resize", ["clean-fid", "cmmd", "jax"])
def test_the_network_input_on_a_gpu_is_the_cpus(resize: str) -> None:
    """On a GPU: Pillow's resize is the same integers (exact float64 sums, in any order), and the float32
    divisions and normalisation are IEEE's, so the input is the CPU's to the bit; jax's float64 contraction,
    rounded once to float32, within one float32 ulp."""
    imgs = smooth_images(2, (90, 130), seed=3)
    on_cpu, on_gpu = clip_input(imgs, resize), clip_input(imgs.cuda(), resize)
    assert on_gpu.device.type == "cuda"
    if resize == "jax":
        assert (on_gpu.cpu() - on_cpu).abs().max() <= 1e-6
    else:
        assert torch.equal(on_gpu.cpu(), on_cpu)


def _png_folder(folder: Path, imgs: list[torch.Tensor]) -> Path:
    folder.mkdir()
    for i, img in enumerate(imgs):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    return folder


def clean_fid_clip_features(monkeypatch: pytest.MonkeyPatch, model: torch.nn.Module) -> types.ModuleType:
    """clean-fid's ``cleanfid.clip_features``, imported with a stub of OpenAI's ``clip`` package whose
    ``load(name, device)`` returns ``(model, None)``, as clean-fid uses it."""
    stub = types.ModuleType("clip")
    stub.load = lambda name, device="cpu", **kwargs: (model, None)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "clip", stub)
    monkeypatch.delitem(sys.modules, "cleanfid.clip_features", raising=False)
    import cleanfid.clip_features

    return cleanfid.clip_features


def test_network_input_is_clean_fids(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """clean-fid's own pipeline (PNG files, ``ResizeDataset`` with ``img_preprocess_clip``, ``CLIP_fx``) hands the
    network what ``clip_input(imgs, "clean-fid")`` makes, bit for bit: images shrunk, enlarged, of both
    orientations, one already 224 on its short side (which clean-fid does not resize), and tiny ones of extreme
    aspect ratios (1 x 1, 3 x 40, 40 x 2: enlarged to 224 on the short side, then cropped)."""
    import cleanfid.fid

    recorder = _Recorder()
    clip_features = clean_fid_clip_features(monkeypatch, recorder)
    sizes = [(64, 80), (300, 260), (224, 301), (129, 500), (1, 1), (3, 40), (40, 2)]
    imgs = [smooth_images(1, size, seed=i)[0] for i, size in enumerate(sizes)]
    cleanfid.fid.get_folder_features(
        str(_png_folder(tmp_path / "imgs", imgs)), clip_features.CLIP_fx("ViT-B/32", device="cpu"),
        num_workers=0, batch_size=1, device=torch.device("cpu"), mode="clean", verbose=False,
        custom_fn_resize=clip_features.img_preprocess_clip,
    )  # fmt: skip
    assert len(recorder.inputs) == len(imgs)
    for img, given in zip(imgs, recorder.inputs):
        assert torch.equal(clip_input(img[None], "clean-fid"), given)


def test_fd_clip_equals_clean_fids_compute_fid(
    monkeypatch: pytest.MonkeyPatch, b32: tuple[Path, torch.nn.Module], features: CLIPFeatures, tmp_path: Path
) -> None:
    """``FrechetInceptionDistance(feature=CLIPFeatures())`` equals clean-fid's ``compute_fid(fdir1, fdir2,
    mode="clean", model_name="clip_vit_b_32")`` on the same random-init weights: generated images enlarged
    (64 x 80), real ones shrunk (260 x 300), 6 per side.

    The features are clean-fid's: its own statistics and distance of the features our metric computed give its
    number (exactly, when measured; 1e-9 demanded). The distances differ by 2e-6 relative (measured), within the
    1e-5 demanded: with 6 samples the 512-d covariances have rank 5, and scipy's sqrtm in clean-fid adds the
    square roots of the round-off eigenvalues of the other 507 directions (~1e-8 each) to the trace term, which
    the FID here leaves out (fid_metric._functional.distance; with 7 images per side it equalled the float64
    solution on the covariances' range to 1e-12).
    """
    import cleanfid.fid

    clean_fid_clip_features(monkeypatch, b32[1])  # compute_fid imports it when model_name="clip_vit_b_32"
    real, fake = smooth_images(6, (260, 300), seed=10), smooth_images(6, (64, 80), seed=11)
    reference = cleanfid.fid.compute_fid(
        str(_png_folder(tmp_path / "real", list(real))), str(_png_folder(tmp_path / "fake", list(fake))),
        mode="clean", model_name="clip_vit_b_32", num_workers=0, batch_size=6, device=torch.device("cpu"),
        verbose=False,
    )  # fmt: skip
    given: list[np.ndarray] = []
    hook = features.register_forward_hook(lambda module, args, out: given.append(out.numpy().copy()))
    try:
        fid = FrechetInceptionDistance(feature=features)
        fid.update(real, real=True)
        fid.update(fake, real=False)
    finally:
        hook.remove()
    value = fid.compute()
    assert reference > 1, "degenerate features: the test would prove nothing"
    stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in given]
    assert relative(cleanfid.fid.frechet_distance(*stats[0], *stats[1]), reference) <= 1e-9
    assert relative(value, reference) <= 1e-5
    assert fid.extractor_id == "clip-vitb32-clean-fid/512"


# --- weights -------------------------------------------------------------------------------------------------


def test_each_model_has_its_own_cache_name_and_variables() -> None:
    assert CLIP_B32.name == "vit_base_patch32_clip_224.openai.safetensors"
    assert CLIP_L14_336.name == "vit_large_patch14_clip_336.openai.safetensors"
    assert weights.url_name(CLIP_B32.url) == weights.url_name(CLIP_L14_336.url) == "open_clip_model.safetensors"
    assert (CLIP_B32.env_path, CLIP_L14_336.env_path) == (
        "FID_METRIC_CLIP_B32_WEIGHTS",
        "FID_METRIC_CLIP_L14_336_WEIGHTS",
    )
    assert CLIP_B32.sha256 is not None and CLIP_L14_336.sha256 is None


def test_loads_from_env_var_and_from_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, b32) -> None:
    """``$FID_METRIC_CLIP_B32_WEIGHTS``, then the torch hub cache under the model's own name, are the file loaded
    (what loading gives is tested above; here the loader records the path)."""
    loaded: list[Path] = []
    monkeypatch.setattr(clip, "load_visual", lambda path, model: loaded.append(path) or torch.nn.Identity())
    monkeypatch.setenv(CLIP_B32.env_path, str(b32[0]))
    assert CLIPFeatures().weights_path == b32[0]
    monkeypatch.delenv(CLIP_B32.env_path)
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / CLIP_L14_336.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"placeholder")
    assert CLIPFeatures("vit-l-14-336").weights_path == cached
    assert loaded == [b32[0], cached]


def test_nothing_found_lists_what_was_tried_and_how_to_supply_the_file() -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve(spec=CLIP_L14_336)
    message = str(info.value)
    for expected in (
        "weights_path: not given",
        "$FID_METRIC_CLIP_L14_336_WEIGHTS: not set",
        "checkpoints/vit_large_patch14_clip_336.openai.safetensors does not exist",
        "$FID_METRIC_CLIP_L14_336_WEIGHTS_URL not set",
        CLIP_L14_336.url,
        "CLIPFeatures(weights_path=",
    ):
        assert expected in message


@pytest.mark.parametrize("kind", ["other size", "same size"])
def test_b32_downloads_are_verified_against_the_published_hash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, b32: tuple[Path, torch.nn.Module], kind: str
) -> None:
    """A file with the published name that is not the published file (here: from a mirror) is refused, and
    nothing is kept: one of another size, and the random-init model, which has the published size to the byte,
    so that only its SHA-256 tells it apart."""
    fake = tmp_path / "mirror" / "open_clip_model.safetensors"
    fake.parent.mkdir()
    if kind == "same size":
        fake.symlink_to(b32[0])
    else:
        fake.write_bytes(b"not the weights")
    monkeypatch.setenv(CLIP_B32.env_url, fake.as_uri())
    with pytest.raises(WeightsUnavailableError, match="not the expected file" if kind == "other size" else "SHA-256"):
        weights.resolve(spec=CLIP_B32)
    assert not list((tmp_path / "torch_home" / "hub" / "checkpoints").glob("*"))


@pytest.mark.parametrize("prefix_matches", [True, False])
def test_l14_mirror_is_verified_by_the_hash_prefix_in_its_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, prefix_matches: bool
) -> None:
    """ViT-L/14 has no published hash: a mirror's file is kept only if it hashes to the prefix its name carries."""
    payload = b"stand-in for the weights"
    prefix = hashlib.sha256(payload if prefix_matches else b"other bytes").hexdigest()[:8]
    mirrored = tmp_path / "mirror" / f"vit_large_patch14_clip_336.openai-{prefix}.bin"
    mirrored.parent.mkdir()
    mirrored.write_bytes(payload)
    monkeypatch.setenv(CLIP_L14_336.env_url, mirrored.as_uri())
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / mirrored.name
    if prefix_matches:
        assert weights.resolve(spec=CLIP_L14_336) == cached and cached.read_bytes() == payload
    else:
        with pytest.raises(WeightsUnavailableError, match="SHA-256"):
            weights.resolve(spec=CLIP_L14_336)
        assert not cached.exists()


def test_a_torch_state_dict_of_the_tower_loads_too(tmp_path: Path, b32, features: CLIPFeatures) -> None:
    """open_clip's ``open_clip_pytorch_model.bin`` (a pickled state dict, read with ``weights_only=True``)."""
    state = {name: value for name, value in b32[1].state_dict().items() if name.startswith("visual.")}
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(state, path)
    loaded = CLIPFeatures(weights_path=path).visual.state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in features.visual.state_dict().items())


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"weight": torch.zeros(3)}, r"no 'visual\.\*' entries"),
        ({"visual.proj": torch.zeros(768, 512)}, "Missing key"),
    ],
)
def test_wrong_file_gives_a_clear_error(tmp_path: Path, state: dict, match: str) -> None:
    path = tmp_path / "not_clip.safetensors"
    safetensors_torch.save_file(state, str(path))
    with pytest.raises(RuntimeError, match="is not a CLIP ViT-B/32 state dict") as info:
        CLIPFeatures(weights_path=path)
    assert info.match(match)
    path.write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="Could not load"):
        CLIPFeatures(weights_path=path)


def test_another_networks_file_is_refused(b32: tuple[Path, torch.nn.Module]) -> None:
    """ViT-B/32's file given for ViT-L/14@336px: every tensor has another shape (and blocks 12-23 are missing)."""
    with pytest.raises(RuntimeError, match=r"is not a CLIP ViT-L/14@336px state dict") as info:
        CLIPFeatures("vit-l-14-336", b32[0])
    assert info.match("size mismatch") and info.match("Missing key")


class _Payload:
    """Any object a pickle could carry; ``torch.load(weights_only=True)`` must refuse to rebuild it."""


def test_a_pickle_that_holds_more_than_tensors_is_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save({"visual.proj": torch.zeros(768, 512), "payload": _Payload()}, path)
    with pytest.raises(RuntimeError, match="Could not load .*Weights only load failed"):
        CLIPFeatures(weights_path=path)


def test_missing_open_clip_names_the_extra(monkeypatch: pytest.MonkeyPatch, b32) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)  # what an uninstalled package looks like to `import`
    with pytest.raises(ImportError, match=r"pip install 'fid_metric\[clip\]'"):
        CLIPFeatures(weights_path=b32[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"model": "vit-h-14"}, "`model` must be one of"), ({"model": "vit-b-32", "resize": "cmmd"}, "`resize` must")],
)
def test_rejects_unknown_models_and_preprocessings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CLIPFeatures(**kwargs)
