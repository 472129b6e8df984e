"""What the test modules and the scripts under tests/scripts/ share: images, a tiny extractor, the relative error,
the feeding loop, and the launchers of subprocesses and two-process DDP runs.

Test modules import this (``from helpers import ...``; pytest puts tests/ on the path); the scripts find it on
the PYTHONPATH that ``run_python`` sets. Fixtures live in conftest.py.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "scripts"


def smooth_images(n: int, size: int | tuple[int, int], seed: int, channels: int = 3) -> Tensor:
    """``(n, channels, H, W)`` uint8 images: random 6x6 colour fields upsampled, plus mild pixel noise.

    Deterministic: the same arguments give the same images in every process.
    """
    h, w = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 6, 6, generator=g) * 255
    brightness = torch.rand(n, 1, 1, 1, generator=g) * 0.8 + 0.4
    x = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False) * brightness
    x = x + torch.randn(n, channels, h, w, generator=g) * 6
    return x.round().clamp(0, 255).to(torch.uint8)


class TinyFeatures(nn.Module):
    """A cheap custom extractor: uint8 ``(N, 3, H, W)`` -> x / 255, a fixed random 3x3 conv, ReLU, 2x2 average pool,
    ``(N, 4 * channels)`` features in ``dtype``. Instead of Inception (5-10 images/s on a CPU) wherever what is
    tested is the bookkeeping, which does not depend on the network.

    * ``TinyFeatures()``: 12 float64 features. float64 so that the features do not depend on the batch size
      (float32 convolutions pick other algorithms per batch shape, ~1e-7 apart): tests demand 1e-9 agreement.
    * ``TinyFeatures(channels=8, dtype=torch.float32)``: 32 float32 features, as Inception's are float32: the
      DDP and Lightning runs, whose float32 features a single process must reproduce bit for bit.
    """

    def __init__(self, channels: int = 3, dtype: torch.dtype = torch.float64, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv = nn.Conv2d(3, channels, kernel_size=3, dtype=dtype)
        self.num_features = 4 * channels
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.conv(x.to(self.conv.weight.dtype) / 255))
        return F.adaptive_avg_pool2d(y, 2).flatten(1)


# Inputs ``update`` and ``check_images`` must refuse: (images, normalize, exception, message pattern).
BAD_INPUTS = [
    ([[0]], False, TypeError, "torch.Tensor"),
    (torch.zeros(3, 8, 8, dtype=torch.uint8), False, ValueError, "3-d tensor"),
    (torch.zeros(2, 2, 8, 8, dtype=torch.uint8), False, ValueError, "1 \\(grey\\) or 3 \\(RGB\\) channels"),
    (torch.zeros(2, 4, 8, 8, dtype=torch.uint8), False, ValueError, "got shape \\(2, 4, 8, 8\\)"),
    (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), False, ValueError, "permute"),
    (torch.zeros(0, 3, 8, 8, dtype=torch.uint8), False, ValueError, "non-empty"),
    (torch.zeros(2, 3, 8, 8), False, TypeError, "need normalize=True"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.int32), False, TypeError, "uint8 in \\[0, 255\\], got dtype torch.int32"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), True, TypeError, "floating point in \\[0, 1\\]"),
    (torch.full((2, 3, 8, 8), 1.5), True, ValueError, "in \\[0, 1\\], got values in \\[1.5, 1.5\\]"),
    (torch.full((2, 3, 8, 8), -0.1), True, ValueError, "in \\[0, 1\\]"),
    (torch.full((2, 3, 8, 8), float("nan")), True, ValueError, "finite"),
    (torch.full((2, 3, 8, 8), float("inf")), True, ValueError, "finite"),
]


def ddp_features() -> TinyFeatures:
    """The extractor of the DDP and Lightning runs: 32 float32 features."""
    return TinyFeatures(channels=8, dtype=torch.float32)


def kept_features_metric(**kwargs: Any) -> Any:
    """An ``InceptionMetrics`` of FID, precision/recall and KID (5 subsets of 20) on ``TinyFeatures()``: the kept
    features' bookkeeping without Inception."""
    from fid_metric import InceptionMetrics

    settings = {"sfid": False, "inception_score": False, "precision_recall": True, "kid": True}
    return InceptionMetrics(feature=TinyFeatures(), kid_subsets=5, kid_subset_size=20, **settings, **kwargs)


def relative(value: Any, reference: Any) -> float:
    """``max |value - reference| / max |reference|``: of numbers, their relative difference; of tensors, the largest
    difference in the scale of the reference's largest entry. On the CPU, in float64."""
    a = torch.as_tensor(value).detach().cpu().double()
    b = torch.as_tensor(reference).detach().cpu().double()
    return ((a - b).abs().max() / b.abs().max()).item()


def peer_in_channels_last(network: nn.Module) -> nn.Module:
    """A peer library's network, in place, with its 4-d weights in channels-last memory; returns it.

    The peer's own code runs unchanged; its convolutions then sum in another order and run 1.5x faster on this
    CPU, where the suite's time goes to Inception forward passes. The round-off this moves is 1.4e-7 relative
    at the 64-d layer; the suite's random weights amplify it with depth (4e-5 at 2048-d, the distance our folded
    channels-last network already is from the peer's NCHW one), while the FIDs compared move ~1e-6, far inside
    the 1e-4 demanded. Elementwise comparisons of deep features keep the peer's own layout.
    """
    return network.to(memory_format=torch.channels_last)


def script_module(path: str, name: str) -> ModuleType:
    """The repository's script at ``path`` (from the root, e.g. ``"benchmarks/bench.py"``) imported as module
    ``name``: its functions, without running its ``__main__`` block."""
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def feed(metric: Any, real: Tensor, fake: Tensor, batch: int = 8) -> Any:
    """``metric.update`` with ``real`` then ``fake`` in batches of ``batch``; returns the metric (``.compute()``)."""
    for start in range(0, len(real), batch):
        metric.update(real[start : start + batch], real=True)
    for start in range(0, len(fake), batch):
        metric.update(fake[start : start + batch], real=False)
    return metric


_LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK")


def run_python(
    script: Path | str, *args: str, timeout: float = 300, ranks: int = 1, **env_vars: str
) -> subprocess.CompletedProcess:
    """Run ``python script args`` from the repository root in a fresh interpreter; fail with its output.

    ``script`` may also be ``"-m module"`` or ``"-c"`` (then ``args[0]`` is the code). ``ranks=N`` starts N
    interpreters as an external launcher (``torchrun``) would (``launcher_variables``), so that Lightning's
    "ddp" strategy and ``torch.distributed.init_process_group("gloo")`` join them in one group. Returns rank 0's
    output.
    """
    command = [*str(script).split(" ", 1), *args] if str(script).startswith("-m ") else [str(script), *args]
    if ranks == 1:
        processes = [PythonProcess(*command, **env_vars)]
    else:
        launcher = launcher_variables(ranks)
        processes = [
            PythonProcess(*command, RANK=str(r), LOCAL_RANK=str(r), **launcher, **env_vars) for r in range(ranks)
        ]
    deadline = time.monotonic() + timeout
    outputs = [process.wait(max(0.0, deadline - time.monotonic())) for process in processes]
    for rank, proc in enumerate(outputs):
        output = f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        assert proc.returncode == 0, f"{command[0]} (rank {rank} of {ranks}) failed ({proc.returncode}):\n{output}"
    return outputs[0]


def launcher_variables(world_size: int) -> dict[str, str]:
    """What torchrun sets for every process of a ``world_size`` group on this machine (each adds its ``RANK``):
    ``MASTER_ADDR``, a ``MASTER_PORT`` that is free now, ``WORLD_SIZE``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world_size)}


def _child_env(env_vars: dict[str, str]) -> dict[str, str]:
    """This process's environment less any launcher variables, with the repository and tests/ on the path, one
    thread (the children's models are tiny, and threads thrash when other jobs share the cores), and ``env_vars``."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARIABLES}
    paths = [str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")]
    env.update(PYTHONPATH=os.pathsep.join(filter(None, paths)), OMP_NUM_THREADS="1", **env_vars)
    return env


class PythonProcess:
    """``python *command`` (a script and its arguments, ``-m module ...`` or ``-c code ...``) started from the
    repository root in a fresh interpreter, with the environment ``_child_env(env_vars)``; its output goes to
    files, so that ``stdout()`` can be read while it runs."""

    def __init__(self, *command: str, **env_vars: str) -> None:
        self.command = [sys.executable, *command]
        self._folder = tempfile.TemporaryDirectory()
        self._out, self._err = Path(self._folder.name, "stdout"), Path(self._folder.name, "stderr")
        with self._out.open("w") as out, self._err.open("w") as err:
            self.process = subprocess.Popen(self.command, cwd=REPO, env=_child_env(env_vars), stdout=out, stderr=err)

    @property
    def returncode(self) -> int | None:
        """The exit status; minus the signal's number if a signal ended it; None while it runs."""
        return self.process.poll()

    def stdout(self) -> str:
        return self._out.read_text()

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> subprocess.CompletedProcess:
        """Wait up to ``timeout`` s (then kill it: return code -9); its exit status and output."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        result = subprocess.CompletedProcess(
            self.command, self.process.returncode, self.stdout(), self._err.read_text()
        )
        self._folder.cleanup()
        return result


class DDPLauncher:
    """Two-process (``world_size``) gloo runs on the CPU; each returns what every rank reported, by rank.

    * ``run(target, *args)``: ``target(rank, world_size, *args) -> dict``, a module-level function, runs in
      every rank of a process group. The processes (started by multiprocessing's "spawn", one thread each) start
      at the first call and serve every later call: their imports are paid once per session. A failure or a
      timeout in any rank stops them (the next call starts new ones) and fails the calling test with the ranks'
      tracebacks.
    * ``run_script(script, out_dir, *args)``: ``python script OUT_DIR *args`` in ``world_size`` processes started
      as torchrun starts them (``run_python(..., ranks=world_size)``); Lightning's "ddp" strategy then finds
      its ranks in the environment instead of launching the script again for them. Each rank writes
      ``OUT_DIR/rank{r}.json``.
    """

    def __init__(self, workdir: Path, world_size: int = 2) -> None:
        self.workdir = workdir
        self.world_size = world_size
        self._processes: list = []
        self._tasks: list = []
        self._started = 0

    def run(self, target: Callable[..., dict], *args: Any, timeout: float = 240) -> list[dict]:
        if not self._processes:
            self._start()
        for tasks in self._tasks:
            tasks.put((target, args))
        outcomes: dict[int, tuple[bool, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(outcomes) < self.world_size:
            try:
                rank, ok, value = self._results.get(timeout=1)
                outcomes[rank] = (ok, value)
            except queue.Empty:
                dead = [p.pid for p in self._processes if not p.is_alive()]
                if dead or time.monotonic() > deadline:
                    self.close()
                    raise AssertionError(
                        f"{target.__name__}: ranks {sorted(set(range(self.world_size)) - set(outcomes))} "
                        f"{'died' if dead else f'did not answer in {timeout} s'}; {outcomes}"
                    ) from None
        if not all(ok for ok, _ in outcomes.values()):
            self.close()
            failures = "\n".join(f"rank {r}:\n{v}" for r, (ok, v) in sorted(outcomes.items()) if not ok)
            raise AssertionError(f"{target.__name__} failed:\n{failures}")
        return [outcomes[rank][1] for rank in range(self.world_size)]

    def run_script(self, script: Path, out_dir: Path, *args: Any) -> list[dict]:
        out_dir.mkdir(parents=True, exist_ok=True)
        run_python(script, str(out_dir), *map(str, args), timeout=240, ranks=self.world_size)
        return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(self.world_size)]

    def _start(self) -> None:
        context = torch.multiprocessing.get_context("spawn")
        self._started += 1
        init_file = self.workdir / f"dist_init_{self._started}"
        self._tasks = [context.SimpleQueue() for _ in range(self.world_size)]
        self._results = context.Queue()
        self._processes = [
            context.Process(
                target=_serve_rank,
                args=(rank, self.world_size, str(init_file), self._tasks[rank], self._results),
                daemon=True,
            )
            for rank in range(self.world_size)
        ]
        for process in self._processes:
            process.start()

    def close(self) -> None:
        """Stop the processes: idle ones leave the process group and exit, others are terminated."""
        for tasks, process in zip(self._tasks, self._processes):
            if process.is_alive():
                tasks.put(None)
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join()
        self._processes = []


def _serve_rank(rank: int, world_size: int, init_file: str, tasks: Any, results: Any) -> None:
    """A rank of ``DDPLauncher``: joins the gloo group, then runs tasks until it receives None. Its output goes to
    ``rank{rank}.log`` beside ``init_file`` (it would otherwise write to the test's terminal)."""
    log = os.open(Path(init_file).with_name(f"rank{rank}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    for fd in (1, 2):
        os.dup2(log, fd)
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        while (task := tasks.get()) is not None:
            target, args = task
            try:
                results.put((rank, True, target(rank, world_size, *args)))
            except BaseException:
                results.put((rank, False, traceback.format_exc()))
    finally:
        torch.distributed.destroy_process_group()


def sampler_shard(n: int, world: int, rank: int) -> Tensor:
    """The positions a ``DistributedSampler`` (no shuffling) deals ``rank`` of ``world`` over ``n`` samples: every
    ``world``-th, the last round padded with the first samples again."""
    order = [i % n for i in range(-(-n // world) * world)]
    return torch.tensor(order[rank::world])


@contextlib.contextmanager
def recorded_collectives(names: Iterable[str]) -> Iterator[list[str]]:
    """Within the block, each call of the ``torch.distributed`` functions ``names`` is made and its name appended to
    the yielded list."""
    calls: list[str] = []
    originals = {name: getattr(torch.distributed, name) for name in names}

    def recording(name: str) -> Callable[..., Any]:
        def collective(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return originals[name](*args, **kwargs)

        return collective

    for name in originals:
        setattr(torch.distributed, name, recording(name))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.distributed, name, original)


def random_open_clip(name: str, folder: Path) -> tuple[Path, nn.Module]:
    """A random-init open_clip model ``name`` (seed 0), in eval mode, and its state dict saved in ``folder`` as
    open_clip publishes it (``open_clip_model.safetensors``)."""
    import open_clip
    from safetensors import torch as safetensors_torch

    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval()
    path = folder / "open_clip_model.safetensors"
    safetensors_torch.save_file(model.state_dict(), str(path))
    return path, model
