"""InceptionMetrics: one pass for FID, sFID, IS (vs torch-fidelity), FID-infinity (vs closed form), under DDP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import smooth_images
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_isc import isc_features_to_metric

from fid_metric import FeatureStats, InceptionMetrics, InceptionScore, StatsMismatchError
from fid_metric._features.inception import FIDInceptionV3
from fid_metric._features.preprocess import inception_input
from fid_metric._states.exactly_once import sampler_positions

# Tests that feed fewer images than feature dimensions on purpose (bookkeeping, not the Cholesky path).
pytestmark = pytest.mark.filterwarnings("ignore:FID from .* fewer samples than dimensions:UserWarning")


@pytest.fixture(scope="module")
def images() -> dict[str, torch.Tensor]:
    return {"real": smooth_images(6, 40, seed=21), "fake": smooth_images(6, 40, seed=22) // 2 + 60}


@pytest.fixture(scope="module")
def suite(images, inception_weights) -> InceptionMetrics:
    """FID (64-d), sFID and IS (splits=1) of ``images``, computed once for the module."""
    metric = InceptionMetrics(splits=1, feature=64, feature_extractor_weights_path=inception_weights)
    metric.update(images["real"], real=True)
    metric.update(images["fake"][:5], real=False)
    metric.update(images["fake"][5:], real=False)
    return metric


@pytest.fixture(scope="module")
def suite_values(suite) -> dict[str, float]:
    return {k: float(v) for k, v in suite.compute().items()}


@pytest.fixture(scope="module")
def fidelity_logits(images, inception_weights) -> torch.Tensor:
    """torch-fidelity's own extractor's ``logits_unbiased`` of the generated images."""
    extractor = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["logits_unbiased"], feature_extractor_weights_path=str(inception_weights)
    )
    with torch.no_grad():
        (logits,) = extractor(images["fake"])
    return logits


def test_fid_equals_the_standalone_metric(images, suite_values, inception_fid) -> None:
    standalone = inception_fid(64)
    standalone.update(images["real"], real=True)
    standalone.update(images["fake"], real=False)
    expected = float(standalone.compute())
    assert set(suite_values) == {"fid", "sfid", "inception_score", "inception_score_std"}
    assert abs(suite_values["fid"] - expected) <= 1e-6 * expected


def test_inception_score_matches_torch_fidelity(suite_values, fidelity_logits) -> None:
    """splits=1: torch-fidelity's isc_features_to_metric on its own extractor's logits_unbiased, to 1e-6."""
    reference = isc_features_to_metric(fidelity_logits, splits=1, shuffle=False)["inception_score_mean"]
    assert reference > 1.0001, "near-uniform predictions would make this test weak"
    assert abs(suite_values["inception_score"] - reference) <= 1e-6 * reference
    assert suite_values["inception_score_std"] == 0


def test_inception_score_splits_are_interleaved(images, fidelity_logits, inception_weights) -> None:
    """splits=3: image j goes to split j % 3; each split's score is torch-fidelity's formula on it."""
    metric = InceptionMetrics(sfid=False, splits=3, feature=64, feature_extractor_weights_path=inception_weights)
    metric.update(images["fake"][:4], real=False)
    metric.update(images["fake"][4:], real=False)
    metric.update(images["real"][:2], real=True)
    values = metric.compute()
    logits = fidelity_logits
    scores = [isc_features_to_metric(logits[k::3], splits=1, shuffle=False)["inception_score_mean"] for k in range(3)]
    assert abs(float(values["inception_score"]) - np.mean(scores)) <= 1e-6 * np.mean(scores)
    assert abs(float(values["inception_score_std"]) - np.std(scores)) <= 1e-5 * np.mean(scores)


def _adm_inception_score(logits: np.ndarray, split_size: int) -> float:
    """guided-diffusion's evaluations/evaluator.py ``compute_inception_score``, on the softmax of ``logits``."""
    preds = np.exp(logits - logits.max(1, keepdims=True))
    preds /= preds.sum(1, keepdims=True)
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i : i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        kl = np.mean(np.sum(kl, 1))
        scores.append(np.exp(kl))
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def twelve(inception_weights) -> tuple[torch.Tensor, torch.Tensor]:
    """12 generated images and our network's logits without bias of them, in one batch of 12 (the float32 matmul's
    round-off follows the batch shape, so the metrics below are fed the same batch)."""
    imgs = smooth_images(12, 40, seed=23)
    metric = InceptionScore(splits=1, feature_extractor_weights_path=inception_weights)
    logits = metric._extractor.outputs(imgs, ("logits_unbiased",), torch.device("cpu"), "exact")["logits_unbiased"]
    return imgs, logits.double()


def _inception_score(imgs: torch.Tensor, weights, world: int = 1, **kwargs) -> tuple[float, float]:
    """IS of ``imgs`` fed in one batch, or as ``world`` processes would be (rank r: positions r, r + W, ...; their
    states merged, which the DDP sync does by the same sums)."""
    ranks = []
    for rank in range(world):
        metric = InceptionScore(feature_extractor_weights_path=weights, **kwargs)
        metric._world_and_rank = lambda rank=rank: (world, rank)  # type: ignore[method-assign]
        metric.update(imgs[rank::world])
        ranks.append(metric)
    for other in ranks[1:]:
        ranks[0].merge_state(other)
    mean, std = ranks[0].compute()
    return float(mean), float(std)


def test_adm_splits_are_consecutive_chunks_of_split_size(twelve, inception_weights) -> None:
    """split_size=5 on 12 images: splits of 5, 5 and 2 in sample order, ADM's compute_inception_score to 1e-9; 10
    splits allowed, the 7 no image reached left out; the same from 2 processes."""
    imgs, logits = twelve
    mean, std = _inception_score(imgs, inception_weights, splits=10, split_size=5)
    assert abs(mean - _adm_inception_score(logits.numpy(), 5)) <= 1e-9 * mean
    scores = [_adm_inception_score(logits[i : i + 5].numpy(), 5) for i in (0, 5, 10)]
    assert abs(std - float(np.std(scores))) <= 1e-9 * mean and std > 1e-3
    two = _inception_score(imgs, inception_weights, world=2, splits=10, split_size=5, dataset_size=12)
    assert two == pytest.approx((mean, std), rel=1e-9)
    with pytest.raises(ValueError, match="2 splits of 5 images; the image at position 10 would be in split 3"):
        _inception_score(imgs, inception_weights, splits=2, split_size=5)


def test_torch_fidelity_splits_are_its_shuffled_chunks(twelve, inception_weights) -> None:
    """split_seed: torch-fidelity's isc_features_to_metric(splits=3, shuffle=True, rng_seed) on the same logits to
    1e-9, from 1 and 2 processes; it needs dataset_size (the whole set is shuffled)."""
    imgs, logits = twelve
    for seed in (2020, 5):
        expected = isc_features_to_metric(logits, splits=3, shuffle=True, rng_seed=seed)
        mean, std = _inception_score(imgs, inception_weights, splits=3, split_seed=seed, dataset_size=12)
        assert abs(mean - expected["inception_score_mean"]) <= 1e-9 * mean
        assert abs(std - expected["inception_score_std"]) <= 1e-9 * mean and std > 1e-3
        two = _inception_score(imgs, inception_weights, world=2, splits=3, split_seed=seed, dataset_size=12)
        assert two == pytest.approx((mean, std), rel=1e-9)
    with pytest.raises(ValueError, match="need `dataset_size`"):
        _inception_score(imgs, inception_weights, splits=3, split_seed=1)
    with pytest.raises(ValueError, match="not both"):
        InceptionScore(split_size=5, split_seed=1, feature_extractor_weights_path=inception_weights)


def test_spatial_feature_is_mixed_6d_branch1x1_in_nhwc_order(inception_weights) -> None:
    """ADM's mixed_6/conv:0[..., :7] reshaped from NHWC: (N, 17 * 17 * 7) with the channel fastest."""
    network = FIDInceptionV3()
    network.load_state_dict(torch.load(inception_weights, weights_only=True))
    captured = {}
    handle = network.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    try:
        with torch.inference_mode():
            spatial = network(inception_input(smooth_images(2, 32, seed=3), "tensorflow"), ("spatial",))["spatial"]
    finally:
        handle.remove()
    nchw = captured["out"]
    assert nchw.shape == (2, 192, 17, 17) and spatial.shape == (2, 2023)
    nhwc = np.transpose(nchw.numpy(), (0, 2, 3, 1))[..., :7].reshape(2, -1)
    assert np.array_equal(spatial.numpy(), nhwc)
    assert spatial[1, (5 * 17 + 11) * 7 + 3] == nchw[1, 3, 5, 11]
    assert nchw.std() > 0


def test_sfid_with_an_adm_style_reference(images, suite, suite_values, inception_weights, tmp_path) -> None:
    """save_real_stats writes mu_s/sigma_s; as real_stats it gives the same FID and sFID."""
    suite.save_real_stats(tmp_path / "ref.npz")
    assert set(FeatureStats.load(tmp_path / "ref.npz").extra) == {"mu_s", "sigma_s"}
    with_ref = InceptionMetrics(
        inception_score=False,
        feature=64,
        feature_extractor_weights_path=inception_weights,
        real_stats=tmp_path / "ref.npz",
    )
    with_ref.update(images["fake"], real=False)
    expected, got = suite_values, with_ref.compute()
    for key in ("fid", "sfid"):
        assert abs(got[key] - expected[key]) <= 1e-9 * expected[key], key
    np.savez(tmp_path / "no_s.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    no_s = FeatureStats.load(tmp_path / "no_s.npz", compat="tensorflow")
    with pytest.raises(ValueError, match="mu_s"):
        InceptionMetrics(feature_extractor_weights_path=inception_weights, real_stats=no_s)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")  # the sums are set directly, not by update
def test_fid_infinity_recovers_the_closed_form(inception_weights) -> None:
    """Gaussian features, reference N(0, I), generated N(delta, I), d = 64.

    FID_true = |delta|^2 = 1. With the reference exact, E[FID_N] = FID_true + d (d + 5) / (4 N) + O(N^-2):
    E|mu_hat - delta|^2 = |delta|^2 + d / N, and for sigma_hat = I + E (Wishart, E[E_ij^2] = (1 + [i=j]) / N)
    E tr sqrt(sigma_hat) = d - E tr(E^2) / 8 = d - d (d + 1) / (8 N), so the trace term adds d (d + 1) / (4 N).
    """
    d, n, groups = 64, 20000, 10
    reference = FeatureStats(
        torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64), compat="tensorflow"
    )
    metric = InceptionMetrics(
        sfid=False,
        inception_score=False,
        fid_groups=groups,
        feature=64,
        feature_extractor_weights_path=inception_weights,
        real_stats=reference,
    )
    g = torch.Generator().manual_seed(0)
    delta = torch.full((d,), 1 / d**0.5, dtype=torch.float64)
    features = torch.randn(n, d, generator=g, dtype=torch.float64) + delta
    for first in range(0, n, 1000):
        batch = features[first : first + 1000]
        metric._accumulators.add(metric, "fake", {"64": batch}, sampler_positions(first, len(batch), world=1, rank=0))
    values = metric.compute()
    sizes, by_size = metric.fid_by_size
    bias = d * (d + 5) / (4 * sizes)
    noise = 2 / sizes.sqrt()  # std of |mu_hat - mu|^2 with |delta| = 1 dominates
    assert torch.equal(sizes, torch.arange(1, groups + 1, dtype=torch.float64) * n / groups)
    assert ((by_size - 1 - bias).abs() <= 5 * noise + 0.05 * bias).all()
    assert abs(values["fid_infinity"] - 1) <= 5 * noise[-1], "FID-infinity must remove the 1/N bias"
    assert abs(values["fid"] - 1 - bias[-1]) <= 5 * noise[-1]
    assert 0.5 * noise[-1] <= values["fid_stderr"] <= 2 * noise[-1]


def _suite_on_shard(rank: int, world: int, weights: str) -> dict[str, float]:
    real, fake = smooth_images(6, 32, seed=31), smooth_images(6, 32, seed=32) // 2
    # sfid=False: sFID's sums are synced as FID's are (and compared on two processes in test_cli_metrics.py);
    # its 2023-d singular covariance would add 2.5 s of eigh per single-thread process.
    metric = InceptionMetrics(splits=2, fid_groups=2, sfid=False, feature=64, feature_extractor_weights_path=weights)
    indices = list(range(rank, 6, world))  # a DistributedSampler's shard
    for batch in (indices[:2], indices[2:]):
        metric.update(real[batch], real=True)
        metric.update(fake[batch], real=False)
    return {k: float(v) for k, v in metric.compute().items()}


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(ddp, inception_weights) -> None:
    """Every value, IS splits and FID groups included, is the same on 2 gloo processes as on one."""
    synced, other_rank = ddp.run(_suite_on_shard, str(inception_weights))
    assert other_rank == synced
    single = _suite_on_shard(0, 1, str(inception_weights))
    assert set(synced) == set(single) == {"fid", "inception_score", "inception_score_std", "fid_infinity", "fid_stderr"}
    # The spreads are differences of nearly equal split scores and group FIDs: float32 round-off in the
    # features (the worker processes run one thread, so oneDNN may sum in another order) is relative to the
    # scores, not to their small spread (the std moved 1.8e-5 of itself, 3e-7 of the score, on an AMD EPYC).
    scale = {**single, "inception_score_std": single["inception_score"], "fid_stderr": single["fid"]}
    for key, value in single.items():
        assert abs(synced[key] - value) <= 1e-5 * abs(scale[key]) + 1e-9, key


def test_fid_infinity_is_never_negative(inception_weights) -> None:
    """Generated features equal to the real ones: the FID of all groups is 0 (up to round-off), the subsets'
    FIDs are larger, so the least-squares line through them crosses below 0 at N = infinity (checked); the
    metric returns 0, as a distance can be no less."""
    g = torch.Generator().manual_seed(0)
    features = torch.randn(400, 64, generator=g, dtype=torch.float64)
    metric = InceptionMetrics(
        sfid=False, inception_score=False, fid_groups=4, feature=64, feature_extractor_weights_path=inception_weights
    )
    metric._accumulators.add(metric, "real", {"64": features}, sampler_positions(0, len(features), world=1, rank=0))
    metric._accumulators.add(metric, "fake", {"64": features}, sampler_positions(0, len(features), world=1, rank=0))
    with pytest.warns(UserWarning, match="before the ``update`` method"):  # sums set directly, not by update()
        values = metric.compute()
    sizes, by_size = metric.fid_by_size
    design = torch.stack([torch.ones_like(sizes), 1 / sizes], dim=1)
    unclamped = torch.linalg.lstsq(design, by_size[:, None]).solution[0, 0]
    assert unclamped < 0 and abs(values["fid"]) <= 1e-9
    assert values["fid_infinity"] == 0


def test_inception_score_alone_from_generated_images_only(images, suite_values, inception_weights) -> None:
    """InceptionScore: the Inception Score without a real side, equal to the one InceptionMetrics computes beside
    the FID from the same generated batches; InceptionMetrics has no way to drop the FID (one way to each thing)."""
    alone = InceptionScore(splits=1, feature_extractor_weights_path=inception_weights)
    with pytest.raises(ValueError, match="generated images only"):
        alone.update(images["real"], real=True)
    alone.update(images["fake"][:5])
    alone.update(images["fake"][5:])
    mean, _ = alone.compute()
    assert abs(float(mean) - suite_values["inception_score"]) <= 1e-12 * suite_values["inception_score"]
    with pytest.raises(ValueError, match="Unexpected keyword arguments: `fid`"):
        InceptionMetrics(fid=False, feature=64, feature_extractor_weights_path=inception_weights)


def test_merge_state_refuses_another_split_convention(inception_weights) -> None:
    """The DDP sync compares the accumulators' settings; merge_state compared the identity only and added the
    split sums of ADM's convention to torch-fidelity's."""
    consecutive = InceptionScore(splits=3, split_size=2, feature_extractor_weights_path=inception_weights)
    shuffled = InceptionScore(splits=3, split_seed=1, feature_extractor_weights_path=inception_weights)
    with pytest.raises(StatsMismatchError, match="accumulators: .*split_size=2"):
        consecutive.merge_state(shuffled)


def test_the_inception_score_alone_warns_when_the_set_is_not_covered(twelve, inception_weights) -> None:
    imgs, _ = twelve
    metric = InceptionScore(splits=1, dataset_size=12, feature_extractor_weights_path=inception_weights)
    metric.update(imgs[:5])
    with pytest.warns(UserWarning, match="dataset_size=12, but 5 generated images were counted"):
        metric.compute()


def test_arguments_cannot_be_misread(inception_weights) -> None:
    """InceptionMetrics(2048) set sfid=2048; splits=True passed the check of one class and not the other's."""
    with pytest.raises(TypeError, match="positional"):
        InceptionMetrics(2048)  # type: ignore[misc]
    for splits in (True, 0, 2.0):
        with pytest.raises(ValueError, match="`splits` must be a positive int"):
            InceptionMetrics(sfid=False, splits=splits, feature_extractor_weights_path=inception_weights)
        with pytest.raises(ValueError, match="`splits` must be a positive int"):
            InceptionScore(splits=splits, feature_extractor_weights_path=inception_weights)


def test_sfid_stderr_is_the_jackknife_of_sfid_without_each_group(images, inception_weights) -> None:
    """fid_groups=3 with sfid: sfid_stderr is the delete-a-group jackknife of the sFIDs of metrics fed every
    generated image but those at positions j % 3 == g (fed one image at a time, so the features are identical)."""
    real, fake = images["real"], images["fake"]
    settings = {"feature": 64, "inception_score": False, "feature_extractor_weights_path": inception_weights}

    def fed(metric: InceptionMetrics, keep: list[int]) -> InceptionMetrics:
        for i in range(len(real)):
            metric.update(real[i : i + 1], real=True)
        for i in keep:
            metric.update(fake[i : i + 1], real=False)
        return metric

    grouped = fed(InceptionMetrics(fid_groups=3, **settings), list(range(len(fake)))).compute()
    leave_one_out = torch.tensor(
        [
            float(fed(InceptionMetrics(**settings), [i for i in range(len(fake)) if i % 3 != g]).compute()["sfid"])
            for g in range(3)
        ],
        dtype=torch.float64,
    )
    expected = (2 / 3 * (leave_one_out - leave_one_out.mean()).square().sum()).sqrt()
    assert float(expected) > 1e-6 * float(grouped["sfid"]), "the test would prove nothing"
    assert abs(float(grouped["sfid_stderr"]) - float(expected)) <= 1e-8 * float(grouped["sfid"])
