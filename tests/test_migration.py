"""Drop-in for torchmetrics' FrechetInceptionDistance: what migrating code relies on, checked against torchmetrics.

Each test sets our metric beside torchmetrics' own (installed as a test dependency) on the suite's random
weights: the same behaviour, or the documented difference asserted.
"""

from __future__ import annotations

import logging

import matplotlib
import pytest
import torch
from helpers import BAD_INPUTS, TinyFeatures, feed, peer_in_channels_last, relative, smooth_images
from torchmetrics.image.fid import FrechetInceptionDistance as TorchmetricsFID
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.wrappers import FeatureShare

from fid_metric import FrechetInceptionDistance, ImageInputError, InceptionMetrics, InceptionScore, StatsMismatchError
from fid_metric._features.preprocess import check_images

matplotlib.use("Agg")
pytestmark = pytest.mark.filterwarnings("ignore:FID from .* fewer samples than dimensions:UserWarning")


def test_class_attributes_as_torchmetrics() -> None:
    for name in ("higher_is_better", "is_differentiable", "full_state_update", "plot_lower_bound", "feature_network"):
        assert getattr(FrechetInceptionDistance, name) == getattr(TorchmetricsFID, name), name


@pytest.mark.parametrize(("imgs", "normalize", "error", "message"), BAD_INPUTS)
def test_bad_input_is_both_a_type_and_a_value_error(imgs, normalize, error, message) -> None:
    """torchmetrics raises ValueError for a bad batch, fid_metric 0.1 raised TypeError for a wrong type: the
    error is both, so `except ValueError` and `except TypeError` both catch it."""
    with pytest.raises(ImageInputError, match=message) as info:
        check_images(imgs, normalize)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


def test_float_images_without_normalize_raise_what_torchmetrics_raises(inception_fid, inception_weights) -> None:
    floats = torch.rand(2, 3, 32, 32)
    reference = TorchmetricsFID(64, feature_extractor_weights_path=str(inception_weights))
    with pytest.raises(ValueError):
        reference.update(floats, real=True)
    metric = inception_fid(64)
    with pytest.raises(ValueError, match="need normalize=True"):
        metric.update(floats, real=True)
    assert int(metric.real_features_num_samples) == 0


def test_plot_single_value_and_sequence(tmp_path) -> None:
    """plot() as torchmetrics': a figure of the current value, and of a list of values (one per epoch)."""
    metric = feed(FrechetInceptionDistance(TinyFeatures()), smooth_images(20, 16, seed=1), smooth_images(18, 16, 2))
    figure, axis = metric.plot()
    values = [metric.compute(), metric.compute() / 2]
    figure_2, _ = metric.plot(values)
    for fig, name in ((figure, "one.png"), (figure_2, "many.png")):
        fig.savefig(tmp_path / name)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert axis.get_ylim()[0] <= float(values[0])


def test_inception_attribute_is_the_network_torchmetrics_users_call(inception_fid) -> None:
    """`metric.inception(imgs)` gives the features the metric accumulates; a custom module is itself; the
    network never enters state_dict()."""
    metric = inception_fid(64)
    imgs = smooth_images(6, 40, seed=3)
    features = metric.inception(imgs)
    assert features.shape == (6, 64) and features.dtype == torch.float32
    metric.update(imgs, real=True)
    assert relative(metric.real_features_sum, features.double().sum(0)) < 1e-12
    assert not any("inception" in key for key in metric.state_dict())
    module = TinyFeatures()
    assert FrechetInceptionDistance(module).inception is module


def _torchmetrics_on_our_network(inception_fid, weights, *images: torch.Tensor) -> TorchmetricsFID:
    """torchmetrics' FID with ``normalize=True``, its ``inception`` replaced by our 64-d network in the torchmetrics
    compat mode (uint8 images -> features), fed ``images`` (real, generated): only its own step before the
    network, ``(x * 255).byte()``, differs from running our metric."""
    theirs = TorchmetricsFID(64, normalize=True, antialias=True, feature_extractor_weights_path=str(weights))
    theirs.inception = inception_fid(64, compat="torchmetrics").inception
    return feed(theirs, *images)


@pytest.mark.parametrize(
    ("size", "dtype"), [(32, torch.float32), (32, torch.float64), (32, torch.float16), (299, torch.float32)]
)
def test_float_input_in_torchmetrics_mode_is_truncated_as_torchmetrics_does(
    size, dtype, inception_fid, inception_weights
) -> None:
    """normalize=True: torchmetrics feeds ``(x * 255).byte()`` (truncation, in the input's dtype) to its network;
    compat='torchmetrics' does the same, so torchmetrics' float64 sums, on our network, equal ours to the bit.
    The other modes round, as a saved PNG would: there the images, hence the sums, differ."""
    real, fake = ((imgs.to(dtype) + 0.7) / 255.7 for imgs in _migration_images(size))
    ours = feed(inception_fid(64, compat="torchmetrics", normalize=True), real, fake)
    theirs = _torchmetrics_on_our_network(inception_fid, inception_weights, real, fake)
    for name in ("real_features_sum", "real_features_cov_sum", "fake_features_sum", "fake_features_cov_sum"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    if size == 32 and dtype == torch.float32:
        rounded = feed(inception_fid(64, compat="torchmetrics"), *(_to_uint8(x) for x in (real, fake)))
        assert not torch.equal(rounded.fake_features_sum, theirs.fake_features_sum)


def test_torchmetrics_mode_fid_of_float_input_equals_torchmetrics(inception_fid, inception_weights) -> None:
    """The FID itself, full rank (70 + 66 images at 64-d, where torchmetrics' eigvals of S1 S2 is accurate):
    within 1e-6 of torchmetrics' float32 result."""
    real, fake = (
        (imgs.float() + 0.7) / 255.7 for imgs in (smooth_images(70, 32, seed=33), smooth_images(66, 32, seed=34))
    )
    ours = feed(inception_fid(64, compat="torchmetrics", normalize=True), real, fake, batch=35).compute()
    reference = _torchmetrics_on_our_network(inception_fid, inception_weights, real, fake).compute()
    assert reference > 1e-3, "degenerate features: the test would prove nothing"
    assert relative(ours, reference) <= 1e-6


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """``floor(255 x + 0.5)``: what torchvision's save_image writes to a PNG."""
    return (x.double() * 255 + 0.5).floor().to(torch.uint8)


def _migration_images(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return smooth_images(6, size, seed=31), smooth_images(5, size, seed=32)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save all extracted features")
def test_feature_share_runs_one_network_pass_for_our_fid_and_torchmetrics_metrics(inception_fid) -> None:
    """torchmetrics' FeatureShare of our FID, torchmetrics' KID and torchmetrics' FID: one forward pass of our
    network per batch for all three, our FID exactly as alone, theirs on our (exact) features."""
    ours = inception_fid(64)
    network = ours.inception
    kid = KernelInceptionDistance(feature=network, subsets=3, subset_size=8)
    theirs = TorchmetricsFID(feature=network)
    shared = FeatureShare({"ours": ours, "kid": kid, "theirs": theirs})
    passes = []
    hook = ours._extractor.module.register_forward_hook(lambda *_: passes.append(1))
    real, fake = smooth_images(12, 40, seed=4), smooth_images(10, 40, seed=5)
    for batch in real.split(4):
        shared.update(batch, real=True)
    for batch in fake.split(5):
        shared.update(batch, real=False)
    hook.remove()
    assert len(passes) == 5  # one forward of the Inception network per update(), not one per metric
    torch.manual_seed(0)
    values = shared.compute()

    alone = inception_fid(64)
    for batch in real.split(4):  # the same batches: float32 convolutions pick their algorithm by batch shape
        alone.update(batch, real=True)
    for batch in fake.split(5):
        alone.update(batch, real=False)
    alone = alone.compute()
    assert relative(values["ours"], alone) < 1e-12
    assert relative(values["theirs"], alone) < 1e-5  # torchmetrics' own float64 arithmetic on the same features
    kid_alone = feed(KernelInceptionDistance(feature=inception_fid(64).inception, subsets=3, subset_size=8), real, fake)
    torch.manual_seed(0)
    assert relative(values["kid"][0], kid_alone.compute()[0]) < 1e-9


def test_inception_metrics_refuses_a_shared_network(inception_weights) -> None:
    metric = InceptionMetrics(feature=64, feature_extractor_weights_path=inception_weights)
    with pytest.raises(ValueError, match="a shared network gives one"):
        metric.inception = TinyFeatures()


def _torchmetrics_checkpoint(fid: TorchmetricsFID, real: torch.Tensor) -> dict:
    """The state dict of a module holding torchmetrics' FID ``fid`` (persistent states) once fed ``real``: what a
    Lightning checkpoint of a migrated module holds under ``state_dict``."""
    module = torch.nn.Module()
    module.fid = fid
    module.fid.persistent(True)
    module.fid.update(real, real=True)
    return module.state_dict()


def test_torchmetrics_checkpoint_loads_with_strict_true(inception_fid, inception_weights, tmp_path, caplog) -> None:
    """A checkpoint torchmetrics wrote (its 566 inception.* entries and its float64 sums) loads into our metric
    with strict=True: the network entries are recognised and skipped with one message, the sums kept; FID
    continues as torchmetrics' own does."""
    real, fake = smooth_images(12, 40, seed=6), smooth_images(10, 40, seed=7)
    reference = TorchmetricsFID(64, feature_extractor_weights_path=str(inception_weights), reset_real_features=False)
    torch.save(_torchmetrics_checkpoint(reference, real), tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert sum(key.startswith("fid.inception.") for key in state) == 566

    module = torch.nn.Module()
    module.fid = inception_fid(64, antialias=True, reset_real_features=False)
    module.fid.persistent(True)
    with caplog.at_level(logging.INFO, logger="fid_metric"):
        module.load_state_dict(state, strict=True)
    assert [r.getMessage() for r in caplog.records if "566" in r.getMessage()], caplog.text
    assert torch.equal(module.fid.real_features_sum, state["fid.real_features_sum"])
    assert int(module.fid.real_features_num_samples) == 12

    reference.update(fake, real=False)  # torchmetrics' FID continues from the state it checkpointed
    module.fid.update(fake, real=False)
    assert relative(module.fid.compute(), reference.compute()) < 1e-4


def test_torchmetrics_checkpoint_refused_where_it_does_not_belong(inception_fid, inception_weights) -> None:
    peer = TorchmetricsFID(64, feature_extractor_weights_path=str(inception_weights))
    state = _torchmetrics_checkpoint(peer, smooth_images(4, 40, seed=8))
    other = torch.nn.Module()
    other.fid = inception_fid(64, compat="pytorch-fid")
    with pytest.raises(StatsMismatchError, match="torchmetrics' FrechetInceptionDistance"):
        other.load_state_dict(dict(state), strict=True)
    broken = {key: value for key, value in state.items() if key != "fid.inception.fc.bias"}
    mine = torch.nn.Module()
    mine.fid = inception_fid(64, antialias=True)
    with pytest.raises(StatsMismatchError, match="not the FID Inception network"):
        mine.load_state_dict(broken, strict=True)
    assert int(mine.fid.real_features_num_samples) == 0


def test_pickle_round_trip_keeps_states_and_result() -> None:
    """torchmetrics' metrics pickle (its tests do); so does ours, states, configuration and result included."""
    import pickle

    metric = feed(FrechetInceptionDistance(TinyFeatures()), smooth_images(20, 16, seed=1), smooth_images(18, 16, 2))
    copy = pickle.loads(pickle.dumps(metric))
    assert copy.identity() == metric.identity()
    assert torch.equal(copy.real_features_cov_sum, metric.real_features_cov_sum)
    assert float(copy.compute()) == float(metric.compute())


# ---------------------------------------------------------------------------------------------------------------
# InceptionScore with torchmetrics' signature
# ---------------------------------------------------------------------------------------------------------------


def _torchmetrics_inception_score(weights, splits: int):
    """torchmetrics' InceptionScore on the suite's weights: its own logits network, given as the feature module
    (its default would download the weights)."""
    from torchmetrics.image.fid import NoTrainInceptionV3
    from torchmetrics.image.inception import InceptionScore as TorchmetricsIS

    network = NoTrainInceptionV3(
        name="inception-v3-compat", features_list=["logits_unbiased"], feature_extractor_weights_path=str(weights)
    )
    peer_in_channels_last(network)
    with pytest.warns(UserWarning, match="save all extracted features"):
        return TorchmetricsIS(feature=network, splits=splits)


@pytest.mark.filterwarnings("ignore:std\\(\\). degrees of freedom:UserWarning")  # torchmetrics' std of one split
def test_inception_score_as_torchmetrics(inception_weights) -> None:
    """``InceptionScore(splits=1, compat="torchmetrics")`` gives torchmetrics' mean (one split: its shuffle changes
    nothing; its network resizes with antialiasing, which compat="torchmetrics" names) as a tuple; with K splits,
    the mean and population std over the splits j % K that InceptionMetrics computes."""
    imgs = smooth_images(7, 32, seed=61)
    ours = InceptionScore(splits=1, compat="torchmetrics", feature_extractor_weights_path=inception_weights)
    theirs = _torchmetrics_inception_score(inception_weights, splits=1)
    for batch in (imgs[:3], imgs[3:]):
        ours.update(batch)
        theirs.update(batch)
    (mean, std), (tm_mean, _) = ours.compute(), theirs.compute()
    assert mean.dtype == torch.float64 and float(std) == 0.0
    # The two networks' logits differ by round-off (BN folding, summation order): 2.4e-5 of the largest logit on
    # these weights and images, which moves the score 4.7e-6 relative (both measured; 1.9e-6 with torchmetrics'
    # network in NCHW). Another resize is a real difference: 8e-3 without antialiasing, 1.2e-2 with pytorch-fid's.
    assert relative(mean, tm_mean) <= 2e-5

    three = InceptionScore(splits=3, feature_extractor_weights_path=inception_weights)
    beside = InceptionMetrics(sfid=False, splits=3, feature=64, feature_extractor_weights_path=inception_weights)
    beside.update(imgs[:4], real=True)  # the FID beside it needs a real side
    for metric in (three, beside):  # splits of 2, 1 and 1 images
        metric.update(imgs[:3], real=False)
        metric.update(imgs[3:4], real=False)
    values = beside.compute()
    assert tuple(three.compute()) == (values["inception_score"], values["inception_score_std"])
    assert {name for name in three.state_dict()} == set()  # no FID sums, and the IS sums reset every epoch
    assert set(three._defaults) == {"is_plogp_sum", "is_p_sum", "is_num_samples", "update_configuration"}


def test_inception_score_interface(inception_weights) -> None:
    metric = InceptionScore(feature_extractor_weights_path=inception_weights)
    assert (metric.splits, metric.higher_is_better, metric.normalize) == (10, True, False)
    metric.train()
    assert not metric.inception.training
    with pytest.raises(ValueError, match="generated images only"):
        metric.update(smooth_images(2, 32, seed=0), real=True)
    with pytest.raises(ValueError, match="Expecting image as torch.Tensor with dtype=torch.uint8"):
        metric.update(torch.rand(2, 3, 32, 32))
    with pytest.raises(RuntimeError, match="at least one generated image per split"):
        metric.compute()
    with pytest.raises(ValueError, match="Integer input to argument `feature` must be one of"):
        InceptionScore(feature=2)
    with pytest.raises(ValueError, match="logits"):
        InceptionScore(feature=2048)
    with pytest.raises(TypeError, match="Got unknown input to argument `feature`"):
        InceptionScore(feature=[1, 2])
