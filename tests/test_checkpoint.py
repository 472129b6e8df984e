"""Real statistics kept across resets survive checkpoints, in one process and under DDP; a checkpoint that is
incomplete, of another configuration, of another dtype or corrupt is refused before any state changes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
from helpers import SCRIPTS, TinyFeatures, feed, run_python, smooth_images

from fid_metric import FrechetInceptionDistance, StatsMismatchError

REAL_KEYS = {"real_features_sum", "real_features_cov_sum", "real_features_num_samples"}


def test_only_kept_real_statistics_and_the_configuration_enter_the_state_dict() -> None:
    metric = FrechetInceptionDistance(TinyFeatures(), reset_real_features=False)
    state = metric.state_dict()
    assert set(state) == REAL_KEYS | {"_extra_state"}
    assert state["_extra_state"] == metric.identity()
    assert state["_extra_state"]["feature_dim"] == 12 and state["_extra_state"]["arithmetic"] == "exact"
    assert set(FrechetInceptionDistance(TinyFeatures()).state_dict()) == set()


def _fed(seed: int = 1, **kwargs) -> FrechetInceptionDistance:
    """A metric that keeps its real statistics, fed 20 real and 20 generated images."""
    metric = FrechetInceptionDistance(TinyFeatures(), reset_real_features=False, **kwargs)
    metric.update(smooth_images(20, 16, seed=seed), real=True)
    metric.update(smooth_images(20, 16, seed=seed + 1), real=False)
    return metric


def _states(metric: FrechetInceptionDistance) -> dict[str, torch.Tensor]:
    return {name: getattr(metric, name).clone() for name in metric._defaults}


def _unchanged(metric: FrechetInceptionDistance, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(getattr(metric, name), value) for name, value in before.items())


def test_a_checkpoint_missing_a_state_is_refused_and_nothing_loads() -> None:
    """The issue's case: without real_features_cov_sum, 0.1 loaded the rest ("All keys matched") and the FID was
    wrong (negative). A partial set is refused whatever `strict` says; with none of the states, strict=True
    reports them missing as torch does for parameters. The metric's states stay untouched."""
    state = _fed(seed=1).state_dict()
    del state["real_features_cov_sum"]
    target = _fed(seed=5)
    before = _states(target)
    for strict in (True, False):
        with pytest.raises(ValueError, match="not.*real_features_cov_sum.*nothing was loaded"):
            target.load_state_dict(state, strict=strict)
        assert _unchanged(target, before)
    with pytest.raises(RuntimeError, match="Missing key.*real_features_sum"):
        target.load_state_dict({"_extra_state": state["_extra_state"]})
    result = target.load_state_dict({}, strict=False)
    assert sorted(result.missing_keys) == sorted(REAL_KEYS)
    assert _unchanged(target, before)


def test_a_checkpoint_of_another_feature_dimension_is_refused() -> None:
    """With the configuration record, by its feature_dim; without it (a 0.1 checkpoint), by the shapes."""

    class Wider(torch.nn.Module):
        num_features = 16

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.float().flatten(1)[:, :16]

    wide = FrechetInceptionDistance(Wider(), reset_real_features=False)
    wide.update(smooth_images(4, 16, seed=0), real=True)
    state = wide.state_dict()
    target = _fed()
    before = _states(target)
    with pytest.raises(StatsMismatchError, match="feature_dim: 12 vs 16"):
        target.load_state_dict(state)
    del state["_extra_state"]
    with pytest.raises(StatsMismatchError, match=r"shape \(16,\).*\(12,\)"):
        target.load_state_dict(state)
    assert _unchanged(target, before)


def test_a_checkpoint_of_another_compat_or_arithmetic_is_refused(inception_fid) -> None:
    def make(**kwargs) -> FrechetInceptionDistance:
        return inception_fid(64, reset_real_features=False, **kwargs)

    state = make(compat="tensorflow").state_dict()
    assert len(state["_extra_state"]["weights_sha256"]) == 64
    make(compat="tensorflow").load_state_dict(state)
    with pytest.raises(StatsMismatchError, match="compat: 'pytorch-fid' vs 'tensorflow'"):
        make(compat="pytorch-fid").load_state_dict(state)
    with pytest.raises(StatsMismatchError, match="arithmetic: 'bf16' vs 'exact'"):
        make(arithmetic="bf16").load_state_dict(state)


def test_a_float32_checkpoint_is_converted_and_a_corrupt_one_refused() -> None:
    """float32 sums and a float count (torchmetrics' set_dtype writes such) load as float64 / int64 and give the
    same FID; a non-integral or negative count, NaN sums or a non-symmetric outer-product sum are refused with
    the metric untouched."""
    source = _fed()
    reference = float(source.compute())
    state = source.state_dict()
    as_float32 = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    target = FrechetInceptionDistance(TinyFeatures(), reset_real_features=False)
    target.load_state_dict(as_float32)
    assert target.real_features_cov_sum.dtype == torch.float64
    assert target.real_features_num_samples.dtype == torch.int64 and int(target.real_features_num_samples) == 20
    target.update(smooth_images(20, 16, seed=2), real=False)
    assert abs(float(target.compute()) - reference) <= 1e-5 * reference  # float32 rounding of the sums

    corrupt = {
        "non-integral": {"real_features_num_samples": torch.tensor(20.5)},
        "negative": {"real_features_num_samples": torch.tensor(-3)},
        "NaN": {"real_features_sum": state["real_features_sum"].clone().fill_(float("nan"))},
        "outer products": {"real_features_cov_sum": state["real_features_cov_sum"] - 2 * torch.eye(12) * 1e9},
        "a tensor": {"real_features_sum": state["real_features_sum"].tolist()},
    }
    for problem, change in corrupt.items():
        target = _fed(seed=7)
        before = _states(target)
        with pytest.raises(ValueError, match=problem):
            target.load_state_dict({**state, **change})
        assert _unchanged(target, before), problem


def test_loaded_states_are_copies() -> None:
    """Two metrics loaded from one dict share no tensor, and neither changes the caller's dict."""
    state = _fed().state_dict()
    saved = {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    first, second = (FrechetInceptionDistance(TinyFeatures(), reset_real_features=False) for _ in range(2))
    first.load_state_dict(state)
    second.load_state_dict(state)
    first.update(smooth_images(8, 16, seed=9), real=True)
    assert int(first.real_features_num_samples) == 28 and int(second.real_features_num_samples) == 20
    assert set(state) == REAL_KEYS | {"_extra_state"}
    assert all(torch.equal(state[k], v) for k, v in saved.items())


@pytest.mark.slow
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


def _ddp_images() -> tuple[torch.Tensor, torch.Tensor]:
    return smooth_images(21, 16, seed=1), smooth_images(19, 16, seed=2)


def _ddp_worker(rank: int, world: int, out_dir: str) -> dict:
    real, fake = _ddp_images()
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
    return {
        "value": float(value),
        "again": float(again),
        "saved_real_n": int(state["real_features_num_samples"]),
        "local_real_n_after_load": local_real_n,
    }


@pytest.mark.slow
def test_ddp_checkpoint_holds_all_ranks_real_statistics(ddp, tmp_path) -> None:
    """After compute(), rank 0 holds the global real sums; a resume on 2 ranks counts them once."""
    rank0, rank1 = ddp.run(_ddp_worker, str(tmp_path))
    expected = float(feed(FrechetInceptionDistance(TinyFeatures()), *_ddp_images(), batch=21).compute())
    assert (rank0["saved_real_n"], rank1["saved_real_n"]) == (21, 0)
    assert (rank0["local_real_n_after_load"], rank1["local_real_n_after_load"]) == (21, 0)
    for r in (rank0, rank1):
        assert abs(r["value"] - expected) <= 1e-9 * expected
        assert abs(r["again"] - expected) <= 1e-9 * expected
