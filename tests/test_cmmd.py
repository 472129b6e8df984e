"""CMMD: the distance against google-research's formula, the preprocessing against its steps (Pillow, jax), the
embedding and the whole pipeline against a reference assembled from those steps and open_clip's own forward, the
metric's states, two gloo processes against one, and a Lightning ``validation_step``.

The reference (google-research/google-research ``cmmd/``): ``io_util`` reads each file with Pillow, takes the
centred square and resizes it to 336 x 336 with ``Image.BICUBIC``, divides by 255 in float32;
``embedding.ClipEmbeddingModel.embed`` resizes with ``jax.image.resize(method="bicubic")`` to 336 x 336 (the
identity after io_util's resize), subtracts OpenAI's mean and divides by its std (scenic's ``normalize_image``),
and returns scenic's CLIP ViT-L/14@336px image embedding divided by its L2 norm; ``distance.mmd`` is the biased
Gaussian-kernel MMD with sigma 10, times 1000. The steps are transcribed below (``reference_*``), run with
Pillow and jax themselves; scenic's network is OpenAI's, whose layout open_clip's ``ViT-L-14-336-quickgelu``
has (tests/test_clip.py), on random-init weights saved as ``open_clip_model.safetensors``. ViT-L/14 at 336 px
costs ~3 s per image on a CPU, so few images go through it.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from helpers import (
    TinyFeatures,
    ddp_features,
    feed,
    random_open_clip,
    recorded_collectives,
    relative,
    sampler_shard,
    smooth_images,
)
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MetricCollection

from fid_metric import CMMD, CLIPFeatures, FrechetInceptionDistance, StatsMismatchError, WeightsUnavailableError
from fid_metric._features.clip import CLIP_L14_336, OPENAI_MEAN, OPENAI_STD, clip_input, jax_bicubic
from fid_metric._functional import pairwise
from fid_metric._functional.cmmd import cmmd

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
open_clip = pytest.importorskip("open_clip")

pytestmark = pytest.mark.filterwarnings(
    # torch deprecated its pytree LeafSpec; Lightning 2.6's pytree helper (used when it logs) still creates one.
    r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning:lightning.pytorch.utilities._pytree",
)
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_object", "broadcast", "gather")
N_REAL, N_FAKE = 23, 23  # odd: a DistributedSampler over 2 processes repeats one sample


# --- the reference, transcribed ---------------------------------------------------------------------------------


def reference_mmd(x: np.ndarray, y: np.ndarray, xp=np) -> float:
    """cmmd/distance.py's ``mmd``: squared norms from the Gram matrices' diagonals, the squared distance as
    ``-2 x.y + |x|^2 + |y|^2``, ``k = exp(-d / (2 * 10^2))``, means over all pairs, ``1000 (k_xx + k_yy - 2
    k_xy)``. ``xp``: numpy (float64 here) or jax.numpy (the reference's own library and float32 default)."""
    x, y = xp.asarray(x), xp.asarray(y)
    x_norms, y_norms = xp.diag(x @ x.T), xp.diag(y @ y.T)
    gamma = 1 / (2 * 10**2)

    def mean_kernel(a, a_norms, b, b_norms):
        return xp.mean(xp.exp(-gamma * (-2 * (a @ b.T) + a_norms[:, None] + b_norms[None, :])))

    k_xx, k_yy = mean_kernel(x, x_norms, x, x_norms), mean_kernel(y, y_norms, y, y_norms)
    return float(1000 * (k_xx + k_yy - 2 * mean_kernel(x, x_norms, y, y_norms)))


def rel(value: object, reference: object) -> float:
    """``|value - reference| / |reference|`` of two numbers, in float64."""
    return abs(float(value) - float(reference)) / abs(float(reference))  # type: ignore[arg-type]


def summation_tolerance(n: int, m: int, value: float) -> float:
    """The relative difference two float64 evaluations of a CMMD of n and m embeddings may show when their kernel
    values are added in other orders (blocks, processes, merged lists): ``N u`` for the N = n^2 + m^2 + 2 n m
    values of at most 1 (u = 2^-53), times 1000, over the CMMD."""
    return 1000 * (n * n + m * m + 2 * n * m) * 2**-53 / value


def reference_crop_and_resize(img: torch.Tensor) -> np.ndarray:
    """cmmd/io_util.py, ``_read_image`` of a decoded image: the centred square (Pillow's ``crop`` of the box
    ``(left, top, left + l, top + l)``, offsets rounded down), ``resize((336, 336), Image.BICUBIC)``, float32."""
    pil = Image.fromarray(np.ascontiguousarray(img.permute(1, 2, 0).numpy()))
    w, h = pil.size
    side = min(w, h)
    top, left = (h - side) // 2, (w - side) // 2
    pil = pil.crop((left, top, left + side, top + side)).resize((336, 336), resample=Image.BICUBIC)
    return np.asarray(pil).astype(np.float32)


def reference_clip_preprocess(images: np.ndarray) -> np.ndarray:
    """cmmd/embedding.py's ``_clip_preprocess`` of ``(N, H, W, 3)`` float32 in [0, 1], jitted as ``embed`` runs
    under ``pmap``: ``jax.image.resize`` to 336 x 336 bicubic, then scenic's ``normalize_image`` with its float64
    numpy constants."""
    mean, std = np.array(OPENAI_MEAN), np.array(OPENAI_STD)

    def preprocess(x):
        return (jax.image.resize(x, shape=(*x.shape[:-3], 336, 336, 3), method="bicubic") - mean) / std

    return np.array(jax.jit(preprocess)(images))  # a writable copy, for torch.from_numpy


def reference_input(imgs: torch.Tensor, crop_and_resize: bool) -> torch.Tensor:
    """The network input the reference makes of uint8 ``(N, 3, H, W)``: from image files (``compute_cmmd``:
    io_util's crop and resize, then ``/ 255.0``) or from arrays given to ``embed`` (``uint8 / 255``), NCHW."""
    if crop_and_resize:
        batch = np.stack([reference_crop_and_resize(img) for img in imgs]) / 255.0
    else:
        batch = imgs.permute(0, 2, 3, 1).numpy().astype(np.float32) / 255.0
    return torch.from_numpy(reference_clip_preprocess(batch)).permute(0, 3, 1, 2)


def reference_embedding(model: torch.nn.Module, imgs: torch.Tensor) -> np.ndarray:
    """The reference's embedding of image files: the network's image embedding divided by its L2 norm."""
    with torch.inference_mode():
        emb = model.encode_image(reference_input(imgs, crop_and_resize=True)).double().numpy()
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


# --- the distance ------------------------------------------------------------------------------------------------


def _embeddings(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift
    return x / x.norm(dim=1, keepdim=True)


@pytest.mark.parametrize(("n", "m", "d"), [(1, 1, 8), (5, 9, 16), (40, 31, 768)])
def test_cmmd_is_the_reference_formula(n: int, m: int, d: int) -> None:
    x, y = _embeddings(n, d, seed=n), _embeddings(m, d, seed=m + 100, shift=0.05)
    value = cmmd(x, y)
    assert value.dtype == torch.float64 and value.ndim == 0
    tolerance = summation_tolerance(n, m, float(value))  # 4e-13 measured
    assert rel(value, reference_mmd(x.numpy(), y.numpy())) <= tolerance
    assert rel(cmmd(y, x), value) <= tolerance
    x32, y32 = x.float(), y.float()  # float32 embeddings are used as the float64 numbers they are
    assert rel(cmmd(x32, y32), reference_mmd(x32.double().numpy(), y32.double().numpy())) <= tolerance


def test_cmmd_of_unnormalised_embeddings_is_the_reference_formula_too() -> None:
    x = torch.randn(12, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 4
    y = torch.randn(10, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 4 + 1
    value = cmmd(x, y)
    assert rel(value, reference_mmd(x.numpy(), y.numpy())) <= summation_tolerance(12, 10, float(value))


def test_cmmd_against_the_reference_run_by_jax() -> None:
    """The formula run by jax: with 64-bit types, equal (within 1e-12); in jax's default float32, as the reference
    runs, within the float32 round-off of its sums: at most ``N u`` for N kernel values of at most 1 (Higham's
    gamma_N, u = 2^-24), N = 8 x 8 + 8 x 8 + 2 x 8 x 8, times 1000 (exp and the distances add far less)."""
    x, y = _embeddings(8, 768, seed=3), _embeddings(8, 768, seed=4, shift=0.2)
    value = float(cmmd(x, y))
    with jax.enable_x64(True):
        assert rel(value, reference_mmd(x.numpy(), y.numpy(), xp=jnp)) <= 1e-12
    in_float32 = reference_mmd(x.float().numpy(), y.float().numpy(), xp=jnp)
    bound = 1000 * (8 * 8 * 4) * 2**-24
    assert abs(in_float32 - value) <= bound
    assert value > 100 * bound, "a CMMD within float32 round-off: the comparison would prove nothing"


def test_blocks_give_the_same_sums(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _embeddings(37, 16, seed=5), _embeddings(29, 16, seed=6, shift=0.1)
    whole = cmmd(x, y)
    monkeypatch.setattr(pairwise, "_BLOCK_ELEMENTS", 60)  # blocks of 1 row against 37, 2 rows against 29
    assert rel(cmmd(x, y), whole) <= summation_tolerance(37, 29, float(whole))


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.zeros(3, 4), torch.zeros(3, 5), r"\(n, d\) and \(m, d\)"),
        (torch.zeros(3), torch.zeros(3, 3), r"\(n, d\) and \(m, d\)"),
        (torch.zeros(0, 4), torch.zeros(3, 4), "at least 1"),
    ],
)
def test_cmmd_rejects_what_is_not_two_sets_of_embeddings(x: torch.Tensor, y: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cmmd(x, y)


# --- preprocessing -----------------------------------------------------------------------------------------------


JAX_SIZES = [(64, 64), (500, 300), (100, 777), (20, 30), (336, 500), (1000, 1000), (1, 1), (3, 700), (150, 200)]


@pytest.mark.parametrize("size", [*JAX_SIZES, (335, 337), (100, 336), (336, 340), (336, 336)])
def test_jax_bicubic_is_jax_image_resize(size: tuple[int, int]) -> None:
    """``jax.image.resize(method="bicubic")`` (antialiased), shrinking and enlarging, within 1e-6 on [0, 1] (5e-7
    measured: jax's float32 einsum is ~1.4e-7 from the exact sums of its own weights, which ours are within 2.4e-7
    of); 336 x 336 is the identity, to the bit. Sizes such as 335, 340, 150 and 200 are where the weights as
    scale.py writes them, without XLA's fused multiply-adds and reciprocals, were up to 1e-5 off."""
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
    expected = jax.image.resize(jnp.asarray(x.permute(0, 2, 3, 1).numpy()), (2, 336, 336, 3), method="bicubic")
    ours = jax_bicubic(x, 336)
    assert ours.shape == (2, 3, 336, 336) and ours.dtype == torch.float32
    difference = np.abs(ours.permute(0, 2, 3, 1).numpy() - np.asarray(expected)).max()
    assert difference == 0 if size == (336, 336) else difference <= 1e-6


@pytest.mark.parametrize(
    "size", [(64, 64), (200, 150), (90, 400), (336, 336), (600, 500), (1, 1), (2, 300), (700, 3), (337, 336)]
)
def test_cmmd_network_input_is_the_references(size: tuple[int, int]) -> None:
    """``clip_input(imgs, "cmmd")`` is the network input of ``compute_cmmd`` on image files (Pillow's crop and
    resize, ``/ 255.0``, jax's resize and normalisation) bit for bit: also for images smaller than 336 px, down to
    1 x 1, and for extreme aspect ratios."""
    imgs = smooth_images(2, size, seed=size[0])
    assert torch.equal(clip_input(imgs, "cmmd"), reference_input(imgs, crop_and_resize=True))


@pytest.mark.parametrize("size", [(64, 64), (200, 150), (335, 340), (1, 1), (336, 336)])
def test_jax_network_input_is_embeds(size: tuple[int, int]) -> None:
    """``clip_input(imgs, "jax")`` is what ``ClipEmbeddingModel.embed`` makes of ``uint8 / 255`` arrays: within the
    resize's 1e-6 over the std (~0.27), and bit for bit at 336 x 336, where jax's resize is the identity."""
    imgs = smooth_images(2, size, seed=size[1])
    difference = (clip_input(imgs, "jax") - reference_input(imgs, crop_and_resize=False)).abs().max()
    assert difference == 0 if size == (336, 336) else difference <= 1e-6 / min(OPENAI_STD)


def test_the_two_resizes_agree_on_336_square_images_only() -> None:
    square, other = smooth_images(1, 336, seed=1), smooth_images(1, (200, 150), seed=2)
    assert torch.equal(clip_input(square, "cmmd"), clip_input(square, "jax"))
    assert not torch.allclose(clip_input(other, "cmmd"), clip_input(other, "jax"), atol=1e-2)


# --- ViT-L/14@336px: the embedding and the whole pipeline ----------------------------------------------------------


@pytest.fixture(scope="module")
def l14(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A random-init open_clip ``ViT-L-14-336-quickgelu`` (the reference network) and its state dict saved as
    ``open_clip_model.safetensors``."""
    return random_open_clip("ViT-L-14-336-quickgelu", tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def l14_features(l14: tuple[Path, torch.nn.Module]) -> CLIPFeatures:
    return CLIPFeatures("vit-l-14-336", l14[0])


def test_embedding_is_the_references(l14_features: CLIPFeatures, l14: tuple[Path, torch.nn.Module]) -> None:
    """One image (ViT-L/14 at 336 px is slow): the weights loaded strictly, and the embedding the reference
    pipeline's on open_clip's own forward, L2-normalised: the same network input, and a float32 division by the
    norm where the reference's is float64 here (2^-24 relative per entry; 5e-8 measured)."""
    assert l14_features.extractor_id == "clip-vitl14-336-cmmd/768"
    reference = l14[1].visual.state_dict()
    assert all(torch.equal(value, reference[name]) for name, value in l14_features.visual.state_dict().items())
    img = smooth_images(1, (150, 200), seed=7)
    with torch.inference_mode():
        ours = l14_features(img)
    assert ours.shape == (1, 768) and ours.dtype == torch.float32
    assert abs(float(ours.double().norm()) - 1) <= 1e-6
    assert relative(ours, reference_embedding(l14[1], img)) <= 1e-6


@pytest.mark.slow
def test_cmmd_pipeline_is_the_references(l14_features: CLIPFeatures, l14: tuple[Path, torch.nn.Module]) -> None:
    """CMMD of 2 real images (a landscape, cropped and shrunk) and 2 generated ones (enlarged) equals the reference
    pipeline's (io_util's Pillow steps, jax's resize and normalisation, open_clip's forward, the L2 norm, the
    formula) within 1e-6 (8e-9 measured: the embeddings' float32 normalisation)."""
    real, fake = smooth_images(2, (240, 320), seed=8), smooth_images(2, 48, seed=9) // 2 + 60
    metric = CMMD(l14_features)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    value = metric.compute()
    expected = reference_mmd(reference_embedding(l14[1], real), reference_embedding(l14[1], fake))
    assert expected > 1e-3, "embeddings too alike: the comparison would prove nothing"
    assert rel(value, expected) <= 1e-6


def test_default_feature_is_cmmds_and_needs_its_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(CLIP_L14_336.env_path, raising=False)
    monkeypatch.delenv(CLIP_L14_336.env_url, raising=False)
    with pytest.raises(WeightsUnavailableError, match=CLIP_L14_336.env_path):
        CMMD()


# --- the metric --------------------------------------------------------------------------------------------------


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    return smooth_images(N_REAL, 16, seed=41), smooth_images(N_FAKE, 16, seed=42) // 2 + 30


def _expected(network: torch.nn.Module | None = None, real: torch.Tensor | None = None, fake=None) -> float:
    """CMMD of the network's own embeddings of the images (default: ``ddp_features()``, all of ``_images()``)."""
    network, (all_real, all_fake) = ddp_features() if network is None else network, _images()
    return float(cmmd(network(all_real if real is None else real), network(all_fake if fake is None else fake)))


# TinyFeatures() are float64: the same embeddings whatever the batch, so that values can be compared exactly.


def test_metric_is_the_distance_of_the_embeddings() -> None:
    """The embeddings the network gives, kept per batch, and the distance of all of them; ``module.half()`` or
    ``to(torch.bfloat16)`` (Lightning's "16-true") moves no state to another dtype."""
    metric = feed(CMMD(TinyFeatures()), *_images(), batch=5)
    assert [len(rows) for rows in metric.real_features] == [5, 5, 5, 5, 3]
    value = metric.compute()
    assert value.dtype == torch.float64 and value.ndim == 0
    assert float(value) == _expected(TinyFeatures())
    metric.half().to(torch.bfloat16)
    assert all(rows.dtype == torch.float64 for rows in [*metric.real_features, *metric.fake_features])
    assert float(metric.compute()) == float(value)


def test_reset_keeps_the_real_embeddings_only_when_asked() -> None:
    real, fake = _images()
    for keep in (False, True):
        metric = feed(CMMD(TinyFeatures(), reset_real_features=not keep), real, fake)
        metric.reset()
        metric.update(fake, real=False)
        if keep:
            assert float(metric.compute()) == _expected(TinyFeatures())
        else:
            with pytest.raises(RuntimeError, match="at least one real and one generated image; got 0 real"):
                metric.compute()


def test_kept_real_embeddings_survive_a_checkpoint() -> None:
    real, fake = _images()
    metric = feed(CMMD(TinyFeatures(), reset_real_features=False), real, fake[:0])
    assert set(metric.state_dict()) == {"real_features", "real_features_num_samples", "_extra_state"}
    restored = CMMD(TinyFeatures(), reset_real_features=False)
    restored.load_state_dict(metric.state_dict())
    restored.update(fake, real=False)
    assert float(restored.compute()) == _expected(TinyFeatures())


def test_compute_follows_merge_state_and_load_state_dict() -> None:
    """``merge_state`` appends the other metric's embeddings, ``load_state_dict`` replaces the real ones, and the
    value ``compute()`` cached is dropped by both."""
    real, fake = _images()
    metric = feed(CMMD(TinyFeatures(), reset_real_features=False), real[:10], fake[:12])
    alone = float(metric.compute())
    metric.merge_state(feed(CMMD(TinyFeatures(), reset_real_features=False), real[10:], fake[12:]))
    union = float(metric.compute())
    assert union != alone and rel(union, _expected(TinyFeatures())) <= summation_tolerance(N_REAL, N_FAKE, union)
    metric.load_state_dict(feed(CMMD(TinyFeatures(), reset_real_features=False), real[:4], fake[:0]).state_dict())
    assert float(metric.compute()) == _expected(TinyFeatures(), real=real[:4])


@pytest.mark.parametrize("other", ["width", "definition"])
def test_a_checkpoint_of_other_embeddings_is_refused(other: str) -> None:
    """Another width, or another definition of the same width (its ``extractor_id``, e.g. the other resize)."""
    real, fake = _images()
    target = feed(CMMD(TinyFeatures(), reset_real_features=False), real, fake)
    before = float(target.compute())
    network = TinyFeatures(channels=4) if other == "width" else TinyFeatures()
    if other == "definition":
        network.extractor_id = "clip-vitl14-336-jax/12"
    source = feed(CMMD(network, reset_real_features=False), real[:5], fake[:0])
    with pytest.raises(StatsMismatchError, match="feature_dim|extractor"):
        target.load_state_dict(source.state_dict())
    assert float(target.compute()) == before and int(target.real_features_num_samples) == N_REAL


def test_update_forward_and_an_empty_side() -> None:
    """``real`` must be a bool; ``forward`` adds once and returns None; one image per side is enough, none is a
    clear error."""
    real, fake = _images()
    metric = CMMD(TinyFeatures())
    with pytest.raises(TypeError, match="`real` must be a bool"):
        metric.update(real, real=1)  # type: ignore[arg-type]
    assert metric(real, real=True) is None
    with pytest.raises(RuntimeError, match="got 23 real and 0 generated. Call update"):
        metric.compute()
    metric(fake[:1], real=False)
    assert int(metric.real_features_num_samples) == N_REAL
    assert float(metric.compute()) == _expected(TinyFeatures(), fake=fake[:1])


def test_metric_collection_with_fid_on_the_same_network() -> None:
    """Two CMMDs (one compute group: their states are shared) and an FID on one network, over two epochs with a
    reset between: each value is the metric's alone."""
    network = TinyFeatures()
    collection = MetricCollection({"a": CMMD(network), "b": CMMD(network), "fid": FrechetInceptionDistance(network)})
    real, fake = _images()
    for epoch_real, epoch_fake in ((real, fake), (real[:15], fake[6:])):
        feed(collection, epoch_real, epoch_fake, batch=7)
        values = collection.compute()
        assert collection.compute_groups == {0: ["a", "b"], 1: ["fid"]}
        assert float(values["a"]) == float(values["b"]) == _expected(TinyFeatures(), epoch_real, epoch_fake)
        fid = feed(FrechetInceptionDistance(TinyFeatures()), epoch_real, epoch_fake, batch=7).compute()
        assert float(values["fid"]) == float(fid)
        collection.reset()


@pytest.mark.cuda
def test_on_a_gpu_with_the_embeddings_in_host_memory() -> None:
    """``.cuda()`` with ``features_on_cpu``: the network runs on the GPU, the embeddings stay on the CPU, and the
    CMMD is the CPU metric's (float64 convolutions on either device: round-off apart)."""
    real, fake = _images()
    on_cpu = feed(CMMD(TinyFeatures()), real, fake)
    on_gpu = feed(CMMD(TinyFeatures(), features_on_cpu=True).cuda(), real.cuda(), fake.cuda())
    assert all(rows.device.type == "cpu" for rows in [*on_gpu.real_features, *on_gpu.fake_features])
    assert rel(on_gpu.compute(), on_cpu.compute()) <= 1e-9


class _Pooled(torch.nn.Module):
    """Stands in for the vision tower: its input pooled to 16 x 16, 768 values that depend on every pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 16).flatten(1)


def test_float_and_grey_images_give_their_uint8_rgb_images_cmmd(l14_features: CLIPFeatures) -> None:
    """Through the metric: floats in [0, 1] (``normalize=True``) and grey images give the CMMD of their 8-bit RGB
    images, also with ``features_on_cpu``."""
    grey, fake = smooth_images(3, (40, 60), seed=3, channels=1), smooth_images(3, 50, seed=4)
    rgb = grey.expand(-1, 3, -1, -1)
    network, l14_features.visual = l14_features.visual, _Pooled()  # not monkeypatch: its undo deletes it
    try:
        values = []
        for normalize, on_cpu, real, generated in [
            (False, False, rgb, fake),
            (False, True, grey, fake),
            (True, False, grey.float() / 255, fake.double() / 255),
        ]:
            metric = CMMD(l14_features, normalize=normalize, features_on_cpu=on_cpu)
            metric.update(real, real=True)
            metric.update(generated, real=False)
            values.append(float(metric.compute()))
    finally:
        l14_features.visual = network
    assert values[0] > 1e-3 and values == [values[0]] * 3


def test_feature_must_be_a_module() -> None:
    with pytest.raises(TypeError, match="nn.Module"):
        CMMD(feature=lambda x: x)  # type: ignore[arg-type]


def _shard_worker(rank: int, world: int) -> dict:
    """A DistributedSampler's shard (rank::world, the last round padded with the first sample), exactly-once."""
    real, fake = _images()
    mine = sampler_shard(N_REAL, world, rank)
    metric = CMMD(ddp_features(), dataset_size=N_REAL)
    for start in range(0, len(mine), 4):
        metric.update(real[mine[start : start + 4]], real=True)
        metric.update(fake[mine[start : start + 4]], real=False)
    with recorded_collectives(COLLECTIVES) as calls:
        value = float(metric.compute())
    return {"cmmd": value, "collectives": calls, "local_real": sum(len(rows) for rows in metric.real_features)}


@pytest.mark.slow
def test_two_processes_equal_one(ddp) -> None:
    """23 images per side over 2 gloo processes (rank 1 is given a repeat of sample 0, which must not count): the
    CMMD of one process over all images, to float64 round-off (the same embeddings, added in another order); the
    counts in the one all_reduce (after the configuration check), the embeddings in one all_gather per side."""
    expected = _expected()
    ranks = ddp.run(_shard_worker)
    assert [r["local_real"] for r in ranks] == [12, 11]
    for values in ranks:
        assert values["collectives"] == ["all_reduce", "all_reduce", "all_gather", "all_gather"]
        assert rel(values["cmmd"], expected) <= summation_tolerance(N_REAL, N_FAKE, expected)


class _Validated(L.LightningModule):
    """Validation only: each batch's real images and a darker copy as the generated ones, into ``val/cmmd``."""

    def __init__(self) -> None:
        super().__init__()
        self.cmmd = CMMD(ddp_features())

    def validation_step(self, batch, batch_idx):
        (real,) = batch
        self.cmmd.update(real, real=True)
        self.cmmd.update(real // 2 + 30, real=False)
        self.log("val/cmmd", self.cmmd)


def test_lightning_validation_step_logs_the_epochs_cmmd() -> None:
    real = smooth_images(N_REAL, 16, seed=41)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    model = _Validated()
    logged = trainer.validate(model, DataLoader(TensorDataset(real), batch_size=8), verbose=False)
    network = ddp_features()
    assert logged[0]["val/cmmd"] == pytest.approx(float(cmmd(network(real), network(real // 2 + 30))), rel=1e-6)
    assert int(model.cmmd.real_features_num_samples) == 0  # Lightning reset the metric after logging it
