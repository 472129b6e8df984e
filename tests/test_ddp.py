"""FID under DDP: two real processes (gloo, CPU), compared with one process over all the data.

The raw torch.distributed tests run workers of this module in two processes (the ``ddp`` fixture); the
Lightning test runs tests/scripts/lightning_ddp.py, since Lightning's "ddp" strategy re-launches its script for
rank 1. The feature extractor is ``helpers.ddp_features()``, a tiny fixed conv with 32 float32 features: what is
checked here is the bookkeeping (one all_reduce of the packed float64 states, sync/unsync, Lightning's logging),
not Inception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
from helpers import SCRIPTS, TinyFeatures, ddp_features, feed, relative, smooth_images

from fid_metric import FrechetInceptionDistance, StatsMismatchError

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
    pytest.mark.filterwarnings("ignore:FID from .* fewer samples than dimensions"),
    pytest.mark.slow,
]

WORLD_SIZE = 2
BATCH = 5
COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "broadcast",
    "broadcast_object_list",
    "reduce",
    "reduce_scatter",
    "gather",
    "scatter",
    "all_to_all",
)


def fid_of(real: torch.Tensor, fake: torch.Tensor, batch_size: int = 7) -> float:
    """FID of ``real`` vs ``fake`` with a fresh single-process metric on ``ddp_features()``, fed in batches."""
    return float(feed(FrechetInceptionDistance(feature=ddp_features()), real, fake, batch_size).compute())


# ---------------------------------------------------------------------------------------------------------------
# raw torch.distributed: each rank holds its own shard of a fixed data set
# ---------------------------------------------------------------------------------------------------------------


def data() -> dict[str, torch.Tensor]:
    """The fixed data set, identical in every process and in the test that checks the result."""
    return {
        "real": smooth_images(48, 16, seed=1),
        "fake": smooth_images(40, 16, seed=2),
        "real2": smooth_images(40, 16, seed=3),
        "fake2": smooth_images(36, 16, seed=4),
    }


# Uneven shards: rank 0 gets the first SPLIT[key] images, rank 1 the rest.
SPLIT = {"real": 29, "fake": 13, "real2": 11, "fake2": 25}


def shard(key: str, tensor: torch.Tensor, rank: int) -> torch.Tensor:
    return tensor[: SPLIT[key]] if rank == 0 else tensor[SPLIT[key] :]


@contextlib.contextmanager
def counting_collectives() -> Iterator[list[dict]]:
    """Wrap the collectives of ``torch.distributed`` (and ``distributed_c10d``); record every call."""
    calls: list[dict] = []
    saved = []
    for module in (dist, c10d):
        for name in COLLECTIVES:
            original = getattr(module, name, None)
            if original is None:
                continue

            def wrapper(*args, __name=name, __original=original, **kwargs):
                tensor = args[0] if args else kwargs.get("tensor")
                record = {"name": __name}
                if isinstance(tensor, torch.Tensor):
                    record.update(numel=tensor.numel(), dtype=str(tensor.dtype), shape=list(tensor.shape))
                calls.append(record)
                return __original(*args, **kwargs)

            saved.append((module, name, original))
            setattr(module, name, wrapper)
    try:
        yield calls
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


def local_states(metric: FrechetInceptionDistance) -> dict[str, torch.Tensor]:
    return {name: getattr(metric, name).clone() for name in metric._defaults}


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a, b)


def checked_compute(metric: FrechetInceptionDistance) -> dict:
    """compute() twice (the second is served from the cache) with the collectives counted."""
    before = local_states(metric)
    with counting_collectives() as calls:
        value = metric.compute()
        again = metric.compute()
    after = local_states(metric)
    return {
        "fid": float(value),
        "fid_dtype": str(value.dtype),
        "fid_again": float(again),
        "calls": calls,
        "restored_real": all(same(before[k], after[k]) for k in before if k.startswith("real")),
        "restored_fake": all(same(before[k], after[k]) for k in before if k.startswith("fake")),
        "is_synced_after": bool(metric._is_synced),
        "local_real": int(metric.real_features_num_samples),
        "local_fake": int(metric.fake_features_num_samples),
    }


def sharded_worker(rank: int, world: int) -> dict:
    """Three ``compute()`` calls (epoch 1; epoch 2 accumulated on top of epoch 1; epoch 3 after ``reset``), two
    more with ``reset_real_features=False`` (real and generated; after ``reset``, generated only), each with the
    collective calls it made and whether the local states were restored after the sync."""
    d = data()
    metric = FrechetInceptionDistance(feature=ddp_features())
    result = {"rank": rank, "world_size": dist.get_world_size()}

    feed(metric, shard("real", d["real"], rank), shard("fake", d["fake"], rank), BATCH)
    result["epoch1"] = checked_compute(metric)

    # Keep accumulating without reset: correct only if compute() restored the local (unsynced) states.
    feed(metric, shard("real2", d["real2"], rank), shard("fake2", d["fake2"], rank), BATCH)
    result["epoch2"] = checked_compute(metric)

    metric.reset()
    feed(metric, shard("real2", d["real2"], rank), shard("fake2", d["fake2"], rank), BATCH)
    result["epoch3"] = checked_compute(metric)

    # reset_real_features=False: real images fed once; after reset() only generated ones.
    once = FrechetInceptionDistance(feature=ddp_features(), reset_real_features=False)
    feed(once, shard("real", d["real"], rank), shard("fake", d["fake"], rank), BATCH)
    result["once_epoch1"] = checked_compute(once)
    once.reset()
    feed(once, shard("real", d["real"][:0], rank), shard("fake2", d["fake2"], rank), BATCH)
    result["once_epoch2"] = checked_compute(once)
    return result


def test_raw_torch_distributed_two_processes(ddp) -> None:
    assert ddp.world_size == WORLD_SIZE
    ranks = ddp.run(sharded_worker)
    assert [r["world_size"] for r in ranks] == [2, 2]

    d = data()
    expected = {
        "epoch1": fid_of(d["real"], d["fake"]),
        "epoch2": fid_of(torch.cat([d["real"], d["real2"]]), torch.cat([d["fake"], d["fake2"]])),
        "epoch3": fid_of(d["real2"], d["fake2"]),
    }
    # The three data sets differ, so a wrong sync (double counting, a missing shard) cannot pass by accident.
    assert len({round(v, 12) for v in expected.values()}) == 3

    config_fields = FrechetInceptionDistance(feature=ddp_features())._sync_fields()
    d_ = ddp_features().num_features
    packed_numel = 2 * (d_ + d_ * (d_ + 1) // 2 + 1)

    def n(key: str, rank: int) -> int:
        return len(shard(key, d[key], rank))

    ranks_ = range(WORLD_SIZE)
    local_counts = {  # (real, generated) images each rank holds locally after compute()
        "epoch1": [(n("real", r), n("fake", r)) for r in ranks_],
        "epoch2": [(n("real", r) + n("real2", r), n("fake", r) + n("fake2", r)) for r in ranks_],
        "epoch3": [(n("real2", r), n("fake2", r)) for r in ranks_],
    }
    assert local_counts["epoch1"][0] != local_counts["epoch1"][1]  # uneven shards
    for epoch, want in expected.items():
        for rank, result in enumerate(ranks):
            got = result[epoch]
            assert got["fid_dtype"] == "torch.float64"
            assert relative(got["fid"], want) <= 1e-6, (epoch, rank, got["fid"], want)
            # Every rank gets the same all_reduced sums, hence the same FID, and the cached value on re-compute.
            assert got["fid"] == ranks[0][epoch]["fid"]
            assert got["fid_again"] == got["fid"]
            # Per compute() (the second call is served from the cache): the configuration check, one all_reduce
            # of 2 int64 hashes per field (12 fields: 192 bytes), then one all_reduce of the packed float64 buffer;
            # no gathers, no broadcasts.
            names = [call["name"] for call in got["calls"]]
            assert names == ["all_reduce", "all_reduce"], (epoch, rank, got["calls"])
            assert len(config_fields) == 12
            assert (got["calls"][0]["dtype"], got["calls"][0]["numel"]) == ("torch.int64", 2 * len(config_fields))
            assert got["calls"][1]["dtype"] == "torch.float64"
            assert got["calls"][1]["numel"] == packed_numel == 1122
            assert got["calls"][1]["shape"] == [packed_numel]
            # After compute the local (unsynced) states are back, so accumulation can go on.
            assert got["restored_real"] is True and got["restored_fake"] is True
            assert got["is_synced_after"] is False
            assert (got["local_real"], got["local_fake"]) == local_counts[epoch][rank]

    # reset_real_features=False: the real statistics survive reset() (their local split across the ranks is
    # the metric's business: the documented fold leaves the global sums on rank 0), the generated ones do not.
    want_once = {"once_epoch1": expected["epoch1"], "once_epoch2": fid_of(d["real"], d["fake2"])}
    fake_counts = {"once_epoch1": local_counts["epoch1"], "once_epoch2": local_counts["epoch3"]}
    for epoch, want in want_once.items():
        for rank, result in enumerate(ranks):
            got = result[epoch]
            assert relative(got["fid"], want) <= 1e-6, (epoch, rank, got["fid"], want)
            assert got["fid"] == ranks[0][epoch]["fid"]
            assert [call["name"] for call in got["calls"]] == ["all_reduce", "all_reduce"]
            assert got["calls"][1]["numel"] == packed_numel
            assert got["restored_fake"] is True and got["is_synced_after"] is False
            assert got["local_fake"] == fake_counts[epoch][rank][1]
        assert sum(result[epoch]["local_real"] for result in ranks) == len(d["real"])


def test_lightning_ddp_two_processes(ddp, tmp_path: Path) -> None:
    ranks = ddp.run_script(SCRIPTS / "lightning_ddp.py", tmp_path)
    assert [r["rank"] for r in ranks] == [0, 1]
    assert [r["world_size"] for r in ranks] == [2, 2]

    validation = torch.load(tmp_path / "images.pt", weights_only=True)
    real, num_val = validation["real"], len(validation["real"])
    assert num_val % (2 * validation["batch_size"]) == 0  # no DistributedSampler padding
    expected = [fid_of(real, fake) for fake in validation["generated"]]
    assert len(expected) == 2 and relative(expected[0], expected[1]) > 1e-3  # a stale or mixed epoch cannot pass
    for result in ranks:
        # One logged value per validation epoch (the sanity check excluded), equal to the 1-process FID of
        # that epoch's images, on every rank; also when the real images were fed only once.
        assert len(result["epochs"]) == len(expected)
        for logged, want in zip(result["epochs"], expected):
            for name in ("val/fid", "val/fid_real_once"):
                assert logged[name]["dtype"] == "torch.float64"
                assert relative(logged[name]["value"], want) <= 1e-6, (result["rank"], name, logged, want)
        assert result["epochs"] == ranks[0]["epochs"]
        assert result["fid_states_after_reset"] == 0  # Lightning reset the metric after logging it
    # fid_real_once's real statistics, summed over the ranks at each validation start: none before the
    # sanity check (which fed them), then exactly the validation set once.
    totals = [sum(counts) for counts in zip(*(result["local_real_counts"] for result in ranks))]
    assert totals == [0] + [num_val] * len(expected)


class _Narrow(torch.nn.Module):
    num_features = 6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().flatten(1)[:, :6]


def _mismatch_worker(rank: int, world: int, weights: str) -> dict:
    """Each case builds a metric that differs between the two ranks in one field, then computes."""
    cases = {
        "feature_dim": lambda: FrechetInceptionDistance(TinyFeatures() if rank == 0 else _Narrow()),
        "compat": lambda: FrechetInceptionDistance(
            64, feature_extractor_weights_path=weights, compat=("tensorflow", "pytorch-fid")[rank]
        ),
        "dataset_size": lambda: FrechetInceptionDistance(TinyFeatures(), dataset_size=10 + rank),
    }
    outcome = {}
    for case, make in cases.items():
        metric = make()
        if metric.used_custom_model:
            metric.update(smooth_images(4, 16, seed=rank), real=True)
            metric.update(smooth_images(4, 16, seed=rank + 2), real=False)
        try:
            metric.compute()
            outcome[case] = "computed"
        except StatsMismatchError as err:
            outcome[case] = str(err)
    return outcome


def test_processes_with_different_configurations_all_raise_naming_the_field(ddp, inception_weights) -> None:
    """0.1: different feature dimensions aborted the processes inside gloo (buffers of different sizes), and
    different compat modes were silently averaged. Now every rank raises StatsMismatchError naming the field."""
    for rank, outcome in enumerate(ddp.run(_mismatch_worker, str(inception_weights))):
        assert set(outcome) == {"feature_dim", "compat", "dataset_size"}
        for field, message in outcome.items():
            assert message.startswith("The processes' metrics differ in"), (rank, field, message)
            assert field in message.split(" (rank")[0], (rank, field, message)
            assert f"rank {rank} has" in message
