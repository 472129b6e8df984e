"""FID under DDP: two real processes (gloo, CPU), compared with one process over all the data.

Both tests run standalone scripts from tests/ddp_scripts/ as subprocesses: torch.multiprocessing workers for
the raw torch.distributed test, and a Lightning "ddp" run (which re-launches its own script for rank 1). The
feature extractor is the tiny fixed conv of tests/ddp_scripts/tiny.py: what is checked here is the
bookkeeping (one all_reduce of the packed float64 states, sync/unsync, Lightning's logging), not Inception.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import run_python

from fid_metric import FrechetInceptionDistance, StatsMismatchError

SCRIPTS = Path(__file__).resolve().parent / "ddp_scripts"
sys.path.insert(0, str(SCRIPTS))

import lightning_ddp  # noqa: E402
import raw_ddp  # noqa: E402
from tiny import NUM_FEATURES, TinyFeatures, fid_of, images  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
    pytest.mark.filterwarnings("ignore:FID from .* fewer samples than dimensions"),
]

TIMEOUT_S = 240


def run_script(script: str, *args: str) -> None:
    run_python(SCRIPTS / script, *args, timeout=TIMEOUT_S)


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def test_raw_torch_distributed_two_processes(tmp_path: Path) -> None:
    run_script("raw_ddp.py", str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(raw_ddp.WORLD_SIZE)]
    assert [r["world_size"] for r in ranks] == [2, 2]

    d = raw_ddp.data()
    expected = {
        "epoch1": fid_of(d["real"], d["fake"]),
        "epoch2": fid_of(torch.cat([d["real"], d["real2"]]), torch.cat([d["fake"], d["fake2"]])),
        "epoch3": fid_of(d["real2"], d["fake2"]),
    }
    # The three data sets differ, so a wrong sync (double counting, a missing shard) cannot pass by accident.
    assert len({round(v, 12) for v in expected.values()}) == 3

    d_ = NUM_FEATURES
    packed_numel = 2 * (d_ + d_ * (d_ + 1) // 2 + 1)

    def n(key: str, rank: int) -> int:
        return len(raw_ddp.shard(key, d[key], rank))

    ranks_ = range(raw_ddp.WORLD_SIZE)
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
            assert rel(got["fid"], want) <= 1e-6, (epoch, rank, got["fid"], want)
            # Every rank gets the same all_reduced sums, hence the same FID, and the cached value on re-compute.
            assert got["fid"] == ranks[0][epoch]["fid"]
            assert got["fid_again"] == got["fid"]
            # Per compute() (the second call is served from the cache): the configuration check, one all_reduce
            # of 2 x 9 int64 hashes (144 bytes), then one all_reduce of the packed float64 buffer; no gathers,
            # no broadcasts.
            names = [call["name"] for call in got["calls"]]
            assert names == ["all_reduce", "all_reduce"], (epoch, rank, got["calls"])
            assert (got["calls"][0]["dtype"], got["calls"][0]["numel"]) == ("torch.int64", 18)
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
            assert rel(got["fid"], want) <= 1e-6, (epoch, rank, got["fid"], want)
            assert got["fid"] == ranks[0][epoch]["fid"]
            assert [call["name"] for call in got["calls"]] == ["all_reduce", "all_reduce"]
            assert got["calls"][1]["numel"] == packed_numel
            assert got["restored_fake"] is True and got["is_synced_after"] is False
            assert got["local_fake"] == fake_counts[epoch][rank][1]
        assert sum(result[epoch]["local_real"] for result in ranks) == len(d["real"])


def test_lightning_ddp_two_processes(tmp_path: Path) -> None:
    assert lightning_ddp.NUM_VAL % (2 * lightning_ddp.BATCH_SIZE) == 0  # no DistributedSampler padding
    run_script("lightning_ddp.py", str(tmp_path), "--devices", "2")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert [r["world_size"] for r in ranks] == [2, 2]

    real, base = lightning_ddp.val_data()
    expected = [fid_of(real, lightning_ddp.generated(base, epoch)) for epoch in range(lightning_ddp.MAX_EPOCHS)]
    assert rel(expected[0], expected[1]) > 1e-3  # the epochs differ: a stale or mixed epoch cannot pass
    for result in ranks:
        # One logged value per validation epoch (the sanity check excluded), equal to the 1-process FID of
        # that epoch's images, on every rank; also when the real images were fed only once.
        assert len(result["epochs"]) == lightning_ddp.MAX_EPOCHS
        for logged, want in zip(result["epochs"], expected):
            for name in ("val/fid", "val/fid_real_once"):
                assert logged[name]["dtype"] == "torch.float64"
                assert rel(logged[name]["value"], want) <= 1e-6, (result["rank"], name, logged, want)
        assert result["epochs"] == ranks[0]["epochs"]
        assert result["fid_states_after_reset"] == 0  # Lightning reset the metric after logging it
    # fid_real_once's real statistics, summed over the ranks at each validation start: none before the
    # sanity check (which fed them), then exactly the validation set once.
    totals = [sum(counts) for counts in zip(*(result["local_real_counts"] for result in ranks))]
    assert totals == [0] + [lightning_ddp.NUM_VAL] * lightning_ddp.MAX_EPOCHS


def _mismatch_worker(rank: int, init_file: str, weights: str, out_dir: str) -> None:
    """Each case builds a metric that differs between the two ranks in one field, then computes."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)

    class Narrow(torch.nn.Module):
        num_features = 6

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.float().flatten(1)[:, :6]

    cases = {
        "feature_dim": lambda: FrechetInceptionDistance(TinyFeatures() if rank == 0 else Narrow()),
        "compat": lambda: FrechetInceptionDistance(
            64, feature_extractor_weights_path=weights, compat=("tensorflow", "pytorch-fid")[rank]
        ),
        "dataset_size": lambda: FrechetInceptionDistance(TinyFeatures(), dataset_size=10 + rank),
    }
    outcome = {}
    for case, make in cases.items():
        metric = make()
        if metric.used_custom_model:
            metric.update(images(4, seed=rank), real=True)
            metric.update(images(4, seed=rank + 2), real=False)
        try:
            metric.compute()
            outcome[case] = "computed"
        except StatsMismatchError as err:
            outcome[case] = str(err)
    Path(out_dir, f"mismatch{rank}.json").write_text(json.dumps(outcome))
    dist.destroy_process_group()


def test_processes_with_different_configurations_all_raise_naming_the_field(tmp_path: Path, inception_weights) -> None:
    """0.1: different feature dimensions aborted the processes inside gloo (buffers of different sizes), and
    different compat modes were silently averaged. Now every rank raises StatsMismatchError naming the field."""
    args = (str(tmp_path / "init"), str(inception_weights), str(tmp_path))
    torch.multiprocessing.spawn(_mismatch_worker, args=args, nprocs=2, join=True)
    for rank in range(2):
        outcome = json.loads((tmp_path / f"mismatch{rank}.json").read_text())
        for field, message in outcome.items():
            assert message.startswith("The processes' metrics differ in"), (rank, field, message)
            assert field in message.split(" (rank")[0], (rank, field, message)
            assert f"rank {rank} has" in message
