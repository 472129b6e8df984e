"""Real statistics kept across resets survive checkpoints, in one process and under DDP."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import run_python, smooth_images
from test_metric import TinyFeatures

from fid_metric import FrechetInceptionDistance

SCRIPTS = Path(__file__).parent / "scripts"
REAL_KEYS = {"real_features_sum", "real_features_cov_sum", "real_features_num_samples"}


def test_only_kept_real_statistics_enter_the_state_dict() -> None:
    assert set(FrechetInceptionDistance(TinyFeatures(), reset_real_features=False).state_dict()) == REAL_KEYS
    assert set(FrechetInceptionDistance(TinyFeatures()).state_dict()) == set()


def test_lightning_resume_in_a_new_process_gives_the_same_fid(tmp_path) -> None:
    """Train 2 epochs (real images fed in epoch 0 only), checkpoint, then validate in a fresh process."""
    ckpt = tmp_path / "model.ckpt"
    for mode in ("train", "resume"):
        run_python(SCRIPTS / "resume.py", mode, str(ckpt), str(tmp_path / f"{mode}.json"))
    trained = json.loads((tmp_path / "train.json").read_text())
    resumed = json.loads((tmp_path / "resume.json").read_text())
    assert trained["values"][0] == trained["values"][1] > 0, "epoch 1 reused the real statistics of epoch 0"
    assert resumed["real_n"] == 24
    assert abs(resumed["values"][0] - trained["values"][1]) <= 1e-12 * trained["values"][1]
    assert ckpt.stat().st_size < 1_000_000


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    real, fake = smooth_images(21, 16, seed=1), smooth_images(19, 16, seed=2)
    metric = FrechetInceptionDistance(TinyFeatures(), reset_real_features=False)
    metric.update(real[rank::world], real=True)
    metric.update(fake[rank::world], real=False)
    value = metric.compute()
    state = metric.state_dict()
    torch.save(state, f"{out_dir}/state{rank}.pt")
    dist.barrier()
    # A resumed run: every rank loads rank 0's checkpoint.
    resumed = FrechetInceptionDistance(TinyFeatures(), reset_real_features=False)
    resumed.load_state_dict(torch.load(f"{out_dir}/state0.pt", weights_only=True))
    local_real_n = int(resumed.real_features_num_samples)
    resumed.update(fake[rank::world], real=False)
    again = resumed.compute()
    json.dump(
        {
            "value": float(value),
            "again": float(again),
            "saved_real_n": int(state["real_features_num_samples"]),
            "local_real_n_after_load": local_real_n,
        },
        open(f"{out_dir}/rank{rank}.json", "w"),
    )
    dist.destroy_process_group()


def test_ddp_checkpoint_holds_all_ranks_real_statistics(tmp_path) -> None:
    """After compute(), rank 0 holds the global real sums; a resume on 2 ranks counts them once."""
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    single = FrechetInceptionDistance(TinyFeatures())
    single.update(smooth_images(21, 16, seed=1), real=True)
    single.update(smooth_images(19, 16, seed=2), real=False)
    expected = float(single.compute())
    assert (rank0["saved_real_n"], rank1["saved_real_n"]) == (21, 0)
    assert (rank0["local_real_n_after_load"], rank1["local_real_n_after_load"]) == (21, 0)
    for r in (rank0, rank1):
        assert abs(r["value"] - expected) <= 1e-9 * expected
        assert abs(r["again"] - expected) <= 1e-9 * expected
