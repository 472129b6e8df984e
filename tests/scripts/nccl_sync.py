"""One process, NCCL: the metric's sync path (the packed all_reduce) runs through NCCL and changes nothing.

Run by tests/test_cuda.py (world size 1: the one GPU of a device check). Prints ``all_reduce calls: K`` and
``max relative difference: X`` between the synced states and those of an identical metric that never syncs.
"""

from __future__ import annotations

import socket

import torch.distributed as dist
from helpers import ddp_features, smooth_images

from fid_metric import FrechetInceptionDistance


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    calls = []
    all_reduce = dist.all_reduce

    def counting_all_reduce(tensor, *args, **kwargs):
        calls.append((tensor.device.type, tensor.dtype, tensor.numel()))
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counting_all_reduce
    synced = FrechetInceptionDistance(ddp_features()).cuda()
    local = FrechetInceptionDistance(ddp_features(), sync_on_compute=False).cuda()
    for metric in (synced, local):
        for real, seed in ((True, 1), (False, 2)):
            metric.update(smooth_images(40, 16, seed).cuda(), real=real)
    fid_synced, fid_local = synced.compute(), local.compute()
    compute_calls = list(calls)
    assert dist.get_backend() == "nccl"
    synced.sync()
    diffs = [
        ((getattr(synced, name) - getattr(local, name)).abs().max() / getattr(local, name).abs().max()).item()
        for name in synced._defaults
    ]
    synced.unsync()
    dist.destroy_process_group()
    fid_diff = abs(fid_synced.item() - fid_local.item()) / fid_local.item()
    print(f"all_reduce calls in compute(): {len(compute_calls)} {compute_calls}")
    print(f"fid synced {fid_synced.item()!r} local {fid_local.item()!r}")
    print(f"max relative difference: {max([*diffs, fid_diff])!r}")


if __name__ == "__main__":
    main()
