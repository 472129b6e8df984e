"""The forkserver that the suite's subprocesses and DDP ranks are forked from (``helpers.ForkedPython``,
``helpers.DDPLauncher``), with the libraries they use imported once.

conftest.py starts it before it imports anything heavy itself, so that the server's imports (~12 s of one core
here) run beside the test process's own (~9 s: torch, torchvision, torchmetrics), before the first test, instead
of beside the first tests (measured on the first three test modules: 17-19 s -> 11-12 s). This module imports
nothing heavy.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver

# What the forkserver imports once per session, so that a process forked from it starts in milliseconds instead of
# the 8-10 s that torch, torchmetrics (which imports torchvision and SciPy) and Lightning take here.
WARM_MODULES = [
    "torch",
    "torchvision",
    "torchmetrics",
    "lightning",
    "pytorch_lightning",
    "fid_metric",
    "fid_metric.lightning",
    "helpers",
    "tensorboard",
    "wandb",
    "wandb.sdk.launch",  # wandb.init() imports it (1.3 s here)
    "sklearn.datasets",  # the digits of examples/gan_digits.py
]


def start_warm_processes() -> None:
    """Start multiprocessing's forkserver, which imports ``WARM_MODULES`` in the background; no-op once started."""
    multiprocessing.set_forkserver_preload(WARM_MODULES)
    multiprocessing.forkserver.ensure_running()
