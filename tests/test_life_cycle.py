"""Whatever the states went through (merge, load, reset, a MetricCollection's shared states, the numerical edges),
``compute()`` answers for the states as they are now, or says clearly why it cannot.

Each case is one that gave a stale or silently wrong number before; the reference is always independent of the
path under test: a metric fed the same images directly, a closed form, or the functions on the features.
"""

from __future__ import annotations

import datetime
import time
import warnings

import numpy as np
import pytest
import torch
from helpers import TinyFeatures, ddp_features, feed, kept_features_metric, relative, smooth_images
from torchmetrics import MetricCollection

from fid_metric import (
    FeatureStats,
    FrechetInceptionDistance,
    InceptionMetrics,
    InceptionScore,
    frechet_distance,
    kernel_inception_distance,
    precision_recall,
)

pytestmark = pytest.mark.filterwarnings("ignore:FID from .* fewer samples than dimensions")


def _sets(seed: int, n: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    return smooth_images(n, 16, seed=seed), smooth_images(n, 16, seed=seed + 100) // 2 + 40


# --- derived results follow the states -------------------------------------------------------------------------


def test_compute_after_merge_state_is_the_unions_fid() -> None:
    (real_a, fake_a), (real_b, fake_b) = _sets(1), _sets(2)
    a = feed(FrechetInceptionDistance(TinyFeatures()), real_a, fake_a)
    b = feed(FrechetInceptionDistance(TinyFeatures()), real_b, fake_b)
    alone = float(a.compute())
    a.merge_state(b)
    union = feed(FrechetInceptionDistance(TinyFeatures()), torch.cat([real_a, real_b]), torch.cat([fake_a, fake_b]))
    assert relative(a.compute(), union.compute()) < 1e-12
    assert relative(a.compute(), alone) > 1e-3  # the cached value would have been another number


def test_compute_after_load_state_dict_is_the_checkpoints_fid() -> None:
    (real_a, fake_a), (real_b, _) = _sets(3), _sets(4)
    source = feed(FrechetInceptionDistance(TinyFeatures(), reset_real_features=False), real_b, fake_a)
    target = feed(FrechetInceptionDistance(TinyFeatures(), reset_real_features=False), real_a, fake_a)
    before = float(target.compute())
    target.load_state_dict(source.state_dict())
    assert relative(target.compute(), source.compute()) < 1e-12
    assert relative(target.compute(), before) > 1e-3


def test_any_assignment_of_a_state_drops_the_cached_value() -> None:
    (real, fake), (_, other_fake) = _sets(5), _sets(9)
    metric = feed(FrechetInceptionDistance(TinyFeatures()), real, fake)
    other = feed(FrechetInceptionDistance(TinyFeatures()), real, other_fake)
    first = float(metric.compute())
    for name in ("fake_features_sum", "fake_features_cov_sum", "fake_features_num_samples"):
        setattr(metric, name, getattr(other, name).clone())
    assert float(metric.compute()) == float(other.compute()) != first


def test_load_state_dict_replaces_the_kept_features_with_the_checkpoints() -> None:
    """The issue's case: a metric holding N real features loads a checkpoint of N other real images; precision,
    recall and KID come from the checkpoint's features, as FID comes from its sums."""
    (real_a, fake), (real_b, _) = _sets(6), _sets(7)
    source = feed(kept_features_metric(reset_real_features=False), real_b, fake[:0])
    target = feed(kept_features_metric(reset_real_features=False), real_a, fake[:0])
    target.load_state_dict(source.state_dict())
    feed(target, real_a[:0], fake)
    expected = feed(kept_features_metric(), real_b, fake).compute()
    got = target.compute()
    assert {k: float(v) for k, v in got.items()} == pytest.approx({k: float(v) for k, v in expected.items()}, 1e-12)


def test_fid_by_size_is_dropped_with_the_states_it_came_from() -> None:
    real, fake = _sets(8, n=24)
    metric = InceptionMetrics(sfid=False, inception_score=False, fid_groups=3, feature=TinyFeatures())
    feed(metric, real, fake).compute()
    assert metric.fid_by_size is not None and len(metric.fid_by_size[0]) == 3
    metric.reset()
    assert metric.fid_by_size is None
    feed(metric, real, fake).compute()
    metric.update(fake[:3], real=False)
    assert metric.fid_by_size is None


# --- kept features keep every digit ------------------------------------------------------------------------------


class _Float64Features(torch.nn.Module):
    """Fixed float64 features per image, looked up by the image's first pixel (0..n-1)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.num_features = table.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].long()]


def _indexed(n: int, offset: int = 0) -> torch.Tensor:
    imgs = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    imgs[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8) + offset
    return imgs


@pytest.mark.parametrize("kind", ["huge", "fine"])
def test_float64_features_are_kept_in_float64(kind: str) -> None:
    """Features around 1e39 (beyond float32) or 1000 + 1e-4 noise (below float32's resolution there): the kept
    features are the module's own, so precision, recall and KID are the functions on them, not on float32
    roundings (which gave inf, 0.0 and NaN, or precision 0.793 for 0.760)."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(80, 4, generator=g, dtype=torch.float64)
    table = noise * 1e38 if kind == "huge" else 1000 + 1e-4 * noise
    table[40:] += (2e38 if kind == "huge" else 1e-4) * torch.randn(40, 4, generator=g, dtype=torch.float64)
    metric = InceptionMetrics(
        sfid=False, inception_score=False, feature=_Float64Features(table), precision_recall=True, kid=True,
        kid_subset_size=None,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fine structure warns about cancellation in the covariance
        metric.update(_indexed(40), real=True)
        metric.update(_indexed(40, offset=40), real=False)
        values = metric.compute()
    assert all(rows.dtype == torch.float64 for rows in [*metric.real_features, *metric.fake_features])
    p, r = precision_recall(table[:40], table[40:])
    kid, _ = kernel_inception_distance(table[:40], table[40:], subset_size=None)
    assert (float(values["precision"]), float(values["recall"])) == (float(p), float(r))
    assert float(values["kid"]) == float(kid) and np.isfinite(float(kid))
    if kind == "fine":  # (float32 copies of the huge table overflow, which precision_recall refuses)
        p32, _ = precision_recall(table[:40].float(), table[40:].float())
        assert float(p32) != float(p)  # float32 would have given another precision: the case is sharp


# --- torchmetrics' MetricCollection and its compute groups -----------------------------------------------------


def test_metric_collection_groups_only_metrics_that_may_share_states() -> None:
    """compute_groups=True (torchmetrics' default) shares states between metrics whose states are equal after the
    first batch and updates only one of them. FID and precision/recall (which keeps features), two precision/
    recall metrics of different k (which may share), and two FIDs of which one keeps its real statistics (which
    may not): every value equals the metric's alone, over two epochs."""
    epochs = [_sets(10), _sets(11)]
    build = {
        "fid": lambda: FrechetInceptionDistance(TinyFeatures()),
        "fid_keep": lambda: FrechetInceptionDistance(TinyFeatures(), reset_real_features=False),
        "prc3": lambda: kept_features_metric(),
        "prc5": lambda: kept_features_metric(prc_neighborhood=5),
    }
    collection = MetricCollection({name: make() for name, make in build.items()})
    alone = {name: make() for name, make in build.items()}
    for epoch, (real, fake) in enumerate(epochs):
        for metric in (collection, *alone.values()):
            feed(metric, real, fake, batch=7)
        if epoch == 1:  # the keeping FID holds both epochs' real images, the others the second epoch's
            assert int(collection["fid_keep"].real_features_num_samples) == 40
            assert int(collection["fid"].real_features_num_samples) == 20
        got = collection.compute()
        for name, metric in alone.items():
            expected = metric.compute()
            expected = expected if isinstance(expected, dict) else {"": expected}
            for key, value in expected.items():
                name_in_collection = f"{name}_{key}" if key and f"{name}_{key}" in got else key or name
                assert torch.allclose(got[name_in_collection], value, rtol=1e-12, atol=1e-15), (epoch, name, key)
        assert collection.compute_groups[0] != list(build)  # not all in one group
        collection.reset()
        for metric in alone.values():
            metric.reset()


def test_metric_collection_of_fid_and_precision_recall() -> None:
    """The issue's case: FID and InceptionMetrics(precision_recall=True) in one collection compute."""
    real, fake = _sets(12)
    collection = MetricCollection([FrechetInceptionDistance(TinyFeatures()), kept_features_metric()])
    feed(collection, real, fake)
    values = collection.compute()
    assert float(values["FrechetInceptionDistance"]) == float(values["fid"])
    assert float(values["precision"]) == float(feed(kept_features_metric(), real, fake).compute()["precision"])


# --- the Fréchet distance sees both covariances whole -----------------------------------------------------------


def test_a_zero_covariance_on_either_side_gives_the_closed_form() -> None:
    """sigma1 = 0 (identical real images): d^2 = |mu1 - mu2|^2 + tr(sigma2), in either order (it crashed with
    "min(): Expected reduction dim" when the zero covariance was sigma1)."""
    mu = torch.arange(4, dtype=torch.float64)
    zero, eye = torch.zeros(4, 4, dtype=torch.float64), torch.eye(4, dtype=torch.float64)
    assert float(frechet_distance(mu, zero, mu + 1, eye)) == 8.0
    assert float(frechet_distance(mu + 1, eye, mu, zero)) == 8.0


def test_identical_real_images_give_the_closed_form_fid() -> None:
    real, fake = smooth_images(1, 16, seed=13).expand(6, 3, 16, 16), smooth_images(9, 16, seed=14)
    metric = feed(FrechetInceptionDistance(TinyFeatures()), real, fake)
    with pytest.warns(UserWarning, match="cancellation"):  # a constant feature reads as cancellation
        fid = float(metric.compute())
    x, y = TinyFeatures()(real[:1]).numpy(), TinyFeatures()(fake).numpy()
    closed = float(((x[0] - y.mean(0)) ** 2).sum() + np.trace(np.cov(y, rowvar=False)))
    assert abs(fid - closed) <= 1e-9 * closed


@pytest.mark.parametrize("singular_first", [True, False])
def test_a_non_psd_covariance_is_refused_whichever_is_singular(singular_first: bool) -> None:
    """The issue's case: sigma2 = diag(1, 1, 1, -5) against a singular sigma1 = diag(1, 0, 0, 0) gave 0.0."""
    mu = torch.zeros(4, dtype=torch.float64)
    singular, broken = torch.diag(torch.tensor([1.0, 0, 0, 0])), torch.diag(torch.tensor([1.0, 1, 1, -5]))
    first, second = (singular, broken) if singular_first else (broken, singular)
    name = "sigma2" if singular_first else "sigma1"
    with pytest.raises(ValueError, match=f"{name} is not a covariance: it has the eigenvalue -5"):
        frechet_distance(mu, first, mu, second)


def test_a_statistics_file_with_one_triangle_is_refused(tmp_path) -> None:
    features = torch.randn(30, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stats = FeatureStats.from_features(features)
    np.savez(tmp_path / "upper.npz", mu=stats.mean.numpy(), sigma=np.triu(stats.covariance.numpy()))
    with pytest.raises(ValueError, match=r"upper\.npz: 'sigma' is not symmetric"):
        FeatureStats.load(tmp_path / "upper.npz")
    rounded = stats.covariance.numpy().astype(np.float32).astype(np.float64)  # float32 round-off: accepted
    np.savez(tmp_path / "float32.npz", mu=stats.mean.numpy(), sigma=rounded)
    assert FeatureStats.load(tmp_path / "float32.npz").feature_dim == 5


# --- numerical edges named ---------------------------------------------------------------------------------------


class _Scaled(torch.nn.Module):
    num_features = 3

    def __init__(self, scale: float, offset: float) -> None:
        super().__init__()
        self.scale, self.offset = scale, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double().mean((2, 3)) * self.scale + self.offset


def _fed_scaled(scale: float, offset: float) -> FrechetInceptionDistance:
    metric = FrechetInceptionDistance(_Scaled(scale, offset))
    real, fake = _sets(15)
    return feed(metric, real, fake)


def test_overflowing_feature_sums_are_named() -> None:
    metric = _fed_scaled(1e160, 0.0)
    with pytest.raises(ValueError, match="feature sums hold infinite or NaN values.*Scale the features down"):
        metric.compute()


def test_a_covariance_without_a_correct_digit_is_named_not_refused() -> None:
    """Features of mean 1e8 and unit spread lose all of float64's digits in the one-pass covariance, whose round-off
    then looked indefinite ("sigma1 is not a covariance", blaming the data). Now the warning names the cause and
    the lost feature's row and column are 0: exactly right for a constant feature, and said to be meaningless
    otherwise."""
    metric = _fed_scaled(1e-2, 1e8)
    with pytest.warns(UserWarning, match="Covariance cancellation: feature . lost all of float64's"):
        fid = metric.compute()
    assert torch.isfinite(fid)
    assert torch.equal(metric._fid_sums.mean_and_covariance(metric, "real")[1], torch.zeros(3, 3, dtype=torch.float64))


@pytest.mark.parametrize("num_features", [0, -1, True])
def test_a_custom_dimension_must_be_a_positive_int(num_features: object) -> None:
    module = TinyFeatures()
    module.num_features = num_features  # type: ignore[assignment]
    with pytest.raises(ValueError, match="`num_features` must be a positive int"):
        FrechetInceptionDistance(module)


def test_an_empty_custom_output_is_refused_at_construction() -> None:
    class Empty(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.new_zeros(len(x), 0, dtype=torch.float32)

    with pytest.raises(ValueError, match="with d >= 1"):
        FrechetInceptionDistance(Empty())


@pytest.mark.parametrize("argument", ["real_stats", "reset_real_features"])
def test_inception_score_refuses_real_side_arguments(argument: str) -> None:
    with pytest.raises(ValueError, match=f"generated images only: {argument} would be ignored"):
        InceptionScore(**{argument: False})


# --- under DDP ---------------------------------------------------------------------------------------------------


def _differently_built(rank: int, world: int, field: str) -> dict:
    settings = {"prc_neighborhood": 3, "kid_seed": 0, "kid_subsets": 5, "kid_subset_size": 20}
    settings[field] += rank
    metric = InceptionMetrics(
        sfid=False, inception_score=False, feature=ddp_features(), precision_recall=True, kid=True, **settings
    )
    real, fake = _sets(20, n=24)
    feed(metric, real[rank::world], fake[rank::world])
    try:
        metric.compute()
    except Exception as err:  # noqa: BLE001  # reported to the test
        return {"type": type(err).__name__, "message": str(err)}
    return {"type": None}


@pytest.mark.slow
@pytest.mark.parametrize("field", ["prc_neighborhood", "kid_seed", "kid_subsets", "kid_subset_size"])
def test_processes_built_with_other_compute_arguments_refuse_together(ddp, field: str) -> None:
    """Ranks built with another k or KID configuration reported different numbers (0.975 on rank 0, 1.0 on rank 1);
    now every rank raises, naming the field."""
    for result in ddp.run(_differently_built, field):
        assert result["type"] == "StatsMismatchError" and field in result["message"], result


def _only_rank0_computes(rank: int, world: int) -> dict:
    group = torch.distributed.new_group(timeout=datetime.timedelta(seconds=3))
    metric = FrechetInceptionDistance(ddp_features(), process_group=group)
    real, fake = _sets(21)
    feed(metric, real[rank::world], fake[rank::world])
    if rank != 0:
        time.sleep(6)  # busy elsewhere: never joins the collective
        return {"message": ""}
    try:
        metric.compute()
    except RuntimeError as err:
        return {"message": str(err)}
    return {"message": "no error"}


@pytest.mark.slow
def test_compute_on_one_process_only_fails_saying_it_is_a_collective(ddp) -> None:
    message = ddp.run(_only_rank0_computes)[0]["message"]
    assert "The metric's sync failed" in message and "every process of the group must call it" in message, message


# --- found by an adversarial pass over the above -----------------------------------------------------------------


def test_forward_of_a_metric_collection_counts_each_image_once() -> None:
    """MetricCollection calls forward on every member of a compute group (here two FIDs on one network, which may
    share states): each member adds to its own copies, so the batch counts once, not once per member."""
    network = TinyFeatures()
    real, fake = _sets(16)
    collection = MetricCollection({"a": FrechetInceptionDistance(network), "b": FrechetInceptionDistance(network)})
    collection.update(real, real=True)
    assert collection.compute_groups == {0: ["a", "b"]}
    collection.update(fake[:10], real=False)
    collection(fake[10:], real=False)
    alone = feed(FrechetInceptionDistance(TinyFeatures()), real, fake).compute()
    for name, value in collection.compute().items():
        assert int(collection[name].fake_features_num_samples) == 20
        assert relative(value, alone) < 1e-12, name


def test_two_instances_of_one_custom_class_do_not_share_states() -> None:
    """Custom modules are known by class and width; two instances (other weights) are never one compute group,
    even when the first batch is empty and their states are equal."""
    real, fake = _sets(17)
    first, second = TinyFeatures(seed=0), TinyFeatures(seed=1)
    collection = MetricCollection({"a": FrechetInceptionDistance(first), "b": FrechetInceptionDistance(second)})
    collection.update(real[:0], real=True)
    feed(collection, real, fake)
    assert collection.compute_groups == {0: ["a"], 1: ["b"]}
    assert float(collection.compute()["b"]) == float(feed(FrechetInceptionDistance(second), real, fake).compute())


def test_a_side_loads_whole_or_not_at_all() -> None:
    """A count without its sums (or sums without their count), into a metric that saves nothing, loaded with
    strict=True and changed FID without a word."""
    real, fake = _sets(18)
    source = feed(FrechetInceptionDistance(TinyFeatures()), real, fake)
    target = feed(FrechetInceptionDistance(TinyFeatures()), real, fake)
    before = float(target.compute())
    for keys in (["fake_features_num_samples"], ["fake_features_sum", "fake_features_cov_sum"]):
        for strict in (True, False):
            with pytest.raises(ValueError, match="a side's statistics load whole or not at all"):
                target.load_state_dict({key: getattr(source, key) for key in keys}, strict=strict)
    assert float(target.compute()) == before


def test_kept_features_must_come_with_the_real_sums_they_belong_to() -> None:
    """A FID checkpoint (real sums, no features) into a metric that keeps features: refused, instead of FID from
    the checkpoint and precision/KID from the features held before."""
    (real_a, fake), (real_b, _) = _sets(19), _sets(20)
    checkpoint = feed(FrechetInceptionDistance(TinyFeatures(), reset_real_features=False), real_b, fake[:0])
    target = feed(kept_features_metric(reset_real_features=False), real_a, fake)
    with pytest.raises(ValueError, match=r"but not \['real_features'\]"):
        target.load_state_dict(checkpoint.state_dict())


def test_a_states_dict_never_sets_the_update_configuration() -> None:
    real, fake = _sets(21)
    source = feed(FrechetInceptionDistance(TinyFeatures(), normalize=False), real, fake)
    target = FrechetInceptionDistance(TinyFeatures(), reset_real_features=False)
    own = target.update_configuration.clone()
    target.load_state_dict(source.metric_state, strict=False)
    assert torch.equal(target.update_configuration, own)


def test_resetting_one_member_of_a_compute_group_leaves_the_others_features() -> None:
    network = TinyFeatures()
    real, fake = _sets(22)
    settings = {"sfid": False, "inception_score": False, "precision_recall": True, "kid": True, "kid_subset_size": 10}
    first, second = (InceptionMetrics(feature=network, **settings) for _ in range(2))
    collection = MetricCollection({"a": first, "b": second})
    feed(collection, real, fake)
    assert collection.compute_groups == {0: ["a", "b"]}
    first.reset()
    assert sum(len(rows) for rows in second.real_features) == 20


def test_an_inception_score_metric_loads_its_own_state_dict(inception_weights) -> None:
    """No real side: loading crashed with an IndexError (also a Lightning resume of a module holding one)."""
    metric = InceptionScore(splits=1, feature_extractor_weights_path=inception_weights)
    metric.persistent(True)
    metric.update(smooth_images(3, 32, seed=23))
    copy = InceptionScore(splits=1, feature_extractor_weights_path=inception_weights)
    copy.persistent(True)
    copy.load_state_dict(metric.state_dict())
    assert tuple(copy.compute()) == tuple(metric.compute())


def test_a_fixed_reference_keeps_no_real_states_in_checkpoints(tmp_path) -> None:
    """With real_stats the reference is the real side: reset_real_features=False keeps no (all-zero) real sums in
    state_dict(), so the checkpoint holds nothing but what update() adds, and loads with strict=True."""
    real, fake = _sets(5)
    two_sided = feed(FrechetInceptionDistance(TinyFeatures()), real, fake)
    two_sided.save_real_stats(tmp_path / "ref.npz")
    metric = FrechetInceptionDistance(TinyFeatures(), reset_real_features=False, real_stats=tmp_path / "ref.npz")
    assert metric.state_dict() == {}
    FrechetInceptionDistance(
        TinyFeatures(), reset_real_features=False, real_stats=tmp_path / "ref.npz"
    ).load_state_dict(metric.state_dict(), strict=True)


def test_a_state_that_no_accumulator_owns_is_refused_at_the_boundaries() -> None:
    """A subclass's own add_state would be neither synced, saved nor merged by the accumulators: every boundary
    that would drop it says so instead."""

    class Counting(FrechetInceptionDistance):
        def __init__(self) -> None:
            super().__init__(TinyFeatures())
            self.add_state("calls", torch.tensor(0), dist_reduce_fx="sum")

    real, fake = _sets(6)
    a, b = feed(Counting(), real, fake), feed(Counting(), real, fake)
    with pytest.raises(TypeError, match=r"accumulators' states only, not \['calls'\]"):
        a.merge_state(b)
    with pytest.raises(TypeError, match=r"not \['calls'\]"):
        a.load_state_dict(b.state_dict())
