"""Precision/Recall and KID inside ``InceptionMetrics``: the kept features, their gather under DDP, their boundaries.

The numbers themselves are checked against torch-fidelity in test_kid_precision_recall.py; here the metric must
hand those functions exactly the features it was given, in the sampler's order, on 1 or 2 processes, and refuse
where it no longer holds them. The extractor is ``helpers.ddp_features()`` (32 float32 features), so that the
kept features are the network's own values and every comparison can be exact.
"""

from __future__ import annotations

import pytest
import torch
from helpers import ddp_features, feed, recorded_collectives, relative, sampler_shard, smooth_images

from fid_metric import InceptionMetrics
from fid_metric._functional.kid import kernel_inception_distance
from fid_metric._functional.precision_recall import precision_recall

N_REAL, N_FAKE = 23, 23  # odd: a DistributedSampler over 2 processes repeats one sample
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_object", "broadcast", "gather")
KID = {"kid_subsets": 4, "kid_subset_size": 10, "kid_seed": 7}

pytestmark = pytest.mark.filterwarnings("ignore:FID from .* fewer samples than dimensions")


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    return smooth_images(N_REAL, 16, seed=41), smooth_images(N_FAKE, 16, seed=42) // 2 + 30


def _metric(**kwargs) -> InceptionMetrics:
    return InceptionMetrics(
        sfid=False, inception_score=False, feature=ddp_features(), precision_recall=True, kid=True, **KID, **kwargs
    )


def _expected() -> dict[str, float]:
    """The functions on the extractor's own features of all images, in their order."""
    real, fake = _images()
    network = ddp_features()
    x, y = network(real), network(fake)
    p, r = precision_recall(x, y)
    kid, kid_std = kernel_inception_distance(y, x, **{k.removeprefix("kid_"): v for k, v in KID.items()})
    return {"precision": float(p), "recall": float(r), "kid": float(kid), "kid_std": float(kid_std)}


def test_values_are_the_functions_on_the_given_features() -> None:
    real, fake = _images()
    values = feed(_metric(), real, fake, batch=5).compute()
    assert set(values) == {"fid", "precision", "recall", "kid", "kid_std"}
    assert all(v.dtype == torch.float64 and v.ndim == 0 for v in values.values())
    assert {k: float(v) for k, v in values.items() if k != "fid"} == _expected()


def test_kid_over_all_pairs_and_the_argument_checks() -> None:
    real, fake = _images()
    metric = InceptionMetrics(sfid=False, inception_score=False, feature=ddp_features(), kid=True, kid_subset_size=None)
    values = feed(metric, real, fake).compute()
    network = ddp_features()
    kid, _ = kernel_inception_distance(network(fake), network(real), subset_size=None)
    assert float(values["kid"]) == float(kid) and float(values["kid_std"]) == 0.0
    for kwargs, match in [
        ({"precision_recall": True, "prc_neighborhood": 0}, "prc_neighborhood"),
        ({"kid": True, "kid_subsets": 0}, "kid_subsets"),
        ({"kid": True, "kid_subset_size": 1}, "kid_subset_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            InceptionMetrics(inception_score=kwargs.pop("inception_score", True), **{"sfid": False, **kwargs})
    with pytest.raises(TypeError, match="sFID and the Inception Score need an Inception `feature`"):
        InceptionMetrics(feature=ddp_features(), kid=True)


def test_a_subset_larger_than_a_side_is_an_error_at_compute() -> None:
    real, fake = _images()
    metric = feed(_metric(), real[:8], fake[:8])
    with pytest.raises(ValueError, match="subset_size"):
        metric.compute()


def test_reset_keeps_the_real_features_only_when_asked() -> None:
    real, fake = _images()
    kept = feed(_metric(reset_real_features=False), real, fake)
    dropped = feed(_metric(), real, fake)
    for metric in (kept, dropped):
        metric.reset()
        for start in range(0, N_FAKE, 8):
            metric.update(fake[start : start + 8], real=False)
    assert {k: float(v) for k, v in kept.compute().items() if k != "fid"} == _expected()
    with pytest.raises(RuntimeError, match="at least 2 real"):
        dropped.compute()


def test_merge_state_appends_the_other_metrics_features() -> None:
    real, fake = _images()
    first, second = _metric(), _metric()
    feed(first, real[:11], fake[:12])
    feed(second, real[11:], fake[12:])
    first.merge_state(second)
    assert {k: float(v) for k, v in first.compute().items() if k != "fid"} == _expected()


def test_kept_real_features_survive_a_checkpoint_that_matches_its_counts() -> None:
    """With reset_real_features=False the real features are part of the state dict, beside the real sums: a
    resumed metric computes precision/recall and KID from them. A checkpoint whose rows and counts disagree is
    refused before anything loads."""
    real, fake = _images()
    fed = feed(_metric(reset_real_features=False), real, fake)
    state = fed.state_dict()
    assert sum(len(rows) for rows in state["real_features"]) == N_REAL and "fake_features" not in state
    resumed = _metric(reset_real_features=False)
    resumed.load_state_dict(state)
    feed(resumed, real[:0], fake)
    assert {k: float(v) for k, v in resumed.compute().items() if k != "fid"} == _expected()

    state["real_features"] = [torch.cat(state["real_features"])[:-1]]
    target = _metric(reset_real_features=False)
    with pytest.raises(ValueError, match="22 real feature rows but counts 23 real images"):
        target.load_state_dict(state)
    assert target.real_features == [] and int(target.real_features_num_samples) == 0


def test_features_on_cpu_stay_on_the_cpu() -> None:
    real, fake = _images()
    metric = feed(_metric(features_on_cpu=True), real, fake)
    kept = [*metric.real_features, *metric.fake_features]
    assert all(rows.device.type == "cpu" and rows.dtype == torch.float32 for rows in kept)
    assert {k: float(v) for k, v in metric.compute().items() if k != "fid"} == _expected()


def _shard_worker(rank: int, world: int) -> dict:
    """A DistributedSampler's shard (rank::world, the last round padded with the first samples), exactly-once."""
    real, fake = _images()
    mine = sampler_shard(N_REAL, world, rank)
    metric = _metric(dataset_size=N_REAL)
    for start in range(0, len(mine), 4):
        metric.update(real[mine[start : start + 4]], real=True)
        metric.update(fake[mine[start : start + 4]], real=False)
    with recorded_collectives(COLLECTIVES) as calls:
        values: dict = {k: float(v) for k, v in metric.compute().items()}
    values["collectives"] = calls
    # After compute() the states are this process's own again, the gathered features gone from the local lists.
    values["local_real"] = sum(len(rows) for rows in metric.real_features)
    return values


@pytest.mark.slow
def test_two_processes_equal_one(ddp) -> None:
    """23 images per side over 2 gloo processes (rank 1 is given a repeat of sample 0, which must not count):
    precision, recall and KID exactly as on one process, FID to 1e-9; the sums in their one all_reduce (after the
    configuration check), the features in one all_gather per side."""
    expected = _expected()
    single_fid = float(feed(_metric(), *_images()).compute()["fid"])
    ranks = ddp.run(_shard_worker)
    assert ranks[0] == {**ranks[1], "local_real": ranks[0]["local_real"]}
    assert [r["local_real"] for r in ranks] == [12, 11]
    assert ranks[0]["collectives"] == ["all_reduce", "all_reduce", "all_gather", "all_gather"]
    for values in ranks:
        assert {k: values[k] for k in expected} == expected
        assert relative(values["fid"], single_fid) <= 1e-9


def _stderr_worker(rank: int, world: int) -> dict:
    """rank's DistributedSampler shard of the first 22 images (samples rank, rank + W, ...), fid_groups=3."""
    real, fake = _images()
    mine = torch.arange(22)[rank::world]
    metric = _metric(fid_groups=3)
    for start in range(0, len(mine), 4):
        metric.update(real[mine[start : start + 4]], real=True)
        metric.update(fake[mine[start : start + 4]], real=False)
    return {name: float(value) for name, value in metric.compute().items()}


@pytest.mark.slow
def test_standard_errors_on_two_processes_equal_one(ddp) -> None:
    """fid_stderr (to 1e-8 of the FID: sums added in another order) and precision/recall/KID's errors (exactly:
    the same rows in the same groups, sample j in group j % 3) from 2 gloo processes equal one process's."""
    real, fake = _images()
    single = feed(_metric(fid_groups=3), real[:22], fake[:22])
    expected = {name: float(value) for name, value in single.compute().items()}
    assert expected["precision_stderr"] > 0 and expected["kid_stderr"] > 0
    for values in ddp.run(_stderr_worker):
        # The group-deleted FIDs (14-15 samples in 32 dimensions: singular covariances) differ by the sums' order
        # of addition; their spread, the stderr, moved by 2.9e-9 of the FID when measured.
        assert abs(values["fid_stderr"] - expected["fid_stderr"]) <= 1e-8 * expected["fid"]
        assert relative(values["fid"], expected["fid"]) <= 1e-9
        for name in ("precision_stderr", "recall_stderr", "kid_stderr", "precision", "recall", "kid"):
            assert values[name] == expected[name], name
