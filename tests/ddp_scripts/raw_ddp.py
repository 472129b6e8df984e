"""Two gloo processes, each with its own shard of a fixed data set; every rank writes what it saw to JSON.

Run by tests/test_ddp.py as ``python raw_ddp.py OUT_DIR``. Each rank writes ``OUT_DIR/rank{r}.json`` with the
FID of three ``compute()`` calls (epoch 1; epoch 2 accumulated on top of epoch 1; epoch 3 after ``reset``),
two more with ``reset_real_features=False`` (real and generated; after ``reset``, generated only),
the collective calls made during each ``compute()`` (counted by wrapping ``torch.distributed``'s
functions), and whether the local states were restored after each sync.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny import TinyFeatures, images  # noqa: E402

from fid_metric import FrechetInceptionDistance  # noqa: E402

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


def data() -> dict[str, torch.Tensor]:
    """The fixed data set, identical in every process and in the test that checks the result."""
    return {
        "real": images(48, seed=1),
        "fake": images(40, seed=2),
        "real2": images(40, seed=3),
        "fake2": images(36, seed=4),
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


def feed(metric: FrechetInceptionDistance, real: torch.Tensor, fake: torch.Tensor) -> None:
    for start in range(0, len(real), BATCH):
        metric.update(real[start : start + BATCH], real=True)
    for start in range(0, len(fake), BATCH):
        metric.update(fake[start : start + BATCH], real=False)


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


def worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        d = data()
        metric = FrechetInceptionDistance(feature=TinyFeatures())
        result = {"rank": rank, "world_size": dist.get_world_size()}

        feed(metric, shard("real", d["real"], rank), shard("fake", d["fake"], rank))
        result["epoch1"] = checked_compute(metric)

        # Keep accumulating without reset: correct only if compute() restored the local (unsynced) states.
        feed(metric, shard("real2", d["real2"], rank), shard("fake2", d["fake2"], rank))
        result["epoch2"] = checked_compute(metric)

        metric.reset()
        feed(metric, shard("real2", d["real2"], rank), shard("fake2", d["fake2"], rank))
        result["epoch3"] = checked_compute(metric)

        # reset_real_features=False: real images fed once; after reset() only generated ones.
        once = FrechetInceptionDistance(feature=TinyFeatures(), reset_real_features=False)
        feed(once, shard("real", d["real"], rank), shard("fake", d["fake"], rank))
        result["once_epoch1"] = checked_compute(once)
        once.reset()
        feed(once, shard("real", d["real"][:0], rank), shard("fake2", d["fake2"], rank))
        result["once_epoch2"] = checked_compute(once)

        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result, indent=1))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main() -> None:
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    init_file = out_dir / "dist_init"
    if init_file.exists():
        os.remove(init_file)
    mp.spawn(worker, args=(str(init_file), str(out_dir)), nprocs=WORLD_SIZE, join=True)


if __name__ == "__main__":
    main()
