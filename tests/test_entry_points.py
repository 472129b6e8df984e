"""Every entry point, run in a fresh interpreter: the ``fid-metric`` console script, ``python -m fid_metric`` and
``import fid_metric.lightning`` with either Lightning package alone. (The examples' offline runs are in
test_example_gan.py and test_lightning.py: ``helpers.run_python`` starts a fresh interpreter too.)

A fresh interpreter is what a user's shell starts: an import that works only because the test process had
already imported something, or an entry point that imports torch before answering ``--help``, shows here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, relative, run_python, smooth_images
from PIL import Image

from fid_metric import FeatureStats
from fid_metric._cli import parser
from fid_metric._cli.main import main

pytestmark = pytest.mark.filterwarnings("ignore:FID from")

# What `--help` may import of fid_metric: the package (whose names are imported on first use), the entry point
# and the parser; and of the heavy libraries, nothing.
HELP_MODULES = {
    "fid_metric",
    "fid_metric._version",
    "fid_metric._cli",
    "fid_metric._cli.main",
    "fid_metric._cli.parser",
}
HEAVY = ("torch", "numpy", "PIL", "tqdm", "torchvision", "torchmetrics", "scipy")


def _console_script() -> str:
    """The installed ``fid-metric`` script of this interpreter's environment (``pip install -e .`` puts it there)."""
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        if (folder / "fid-metric").is_file():
            return str(folder / "fid-metric")
    pytest.fail(f"no fid-metric script beside {sys.executable}: install the package (pip install -e .)")


def _run(*command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``command`` from the repository root, its output captured; the environment less any launcher variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two folders of 4 small PNGs."""
    root = tmp_path_factory.mktemp("entry_points")
    for name, seed in (("a", 1), ("b", 2)):
        (root / name).mkdir()
        for i, img in enumerate(smooth_images(4, 32, seed=seed)):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / name / f"{i}.png")
    return root / "a", root / "b"


def test_help_imports_only_the_parser() -> None:
    """``main(["--help"])`` and ``main(["score", "--help"])`` print the help with neither torch nor any module of
    fid_metric beyond the entry point and the parser imported."""
    code = (
        "import json, sys\n"
        "from fid_metric._cli.main import main\n"
        "codes = [main(['--help']), main(['score', '--help'])]\n"
        "print(json.dumps({'codes': codes, 'modules': sorted(sys.modules)}), file=sys.stderr)\n"
    )
    done = _run(sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["codes"] == [0, 0]
    assert "exit codes:" in done.stdout and "--metrics LIST" in done.stdout
    loaded = set(report["modules"])
    assert {m for m in loaded if m.split(".")[0] == "fid_metric"} <= HELP_MODULES
    assert not [m for m in loaded if m.split(".")[0] in HEAVY]


@pytest.mark.slow
def test_console_script_prints_help_and_scores_two_folders(folders, inception_weights, capsys) -> None:
    """The installed ``fid-metric``: its help, and a real run whose FID is ``main``'s in this process."""
    script = _console_script()
    for argv, fragment in ((["--help"], "{score,stats,compare}"), (["score", "--help"], "--kid-subset-size N")):
        done = _run(script, *argv)
        assert done.returncode == 0 and fragment in done.stdout and "exit codes:" in done.stdout, done.stderr
    argv = [*map(str, folders), "--json", "--feature", "64", "--weights", str(inception_weights)]
    argv += ["--device", "cpu", "--workers", "0", "--no-progress"]
    done = _run(script, "score", *argv)
    assert done.returncode == 0, done.stderr
    assert main(["score", *argv]) == 0
    here = json.loads(capsys.readouterr().out)
    there = json.loads(done.stdout)
    assert (there["n_a"], there["n_b"], there["compat"], there["feature_dim"]) == (4, 4, "tensorflow", 64)
    assert there["fid"] > 1e-3 and relative(there["fid"], here["fid"]) <= 1e-5  # other thread counts: round-off


@pytest.mark.slow
def test_python_m_fid_metric_prints_help_and_writes_statistics(folders, inception_weights, tmp_path) -> None:
    """``python -m fid_metric``: the console script's help, and ``stats`` writes a statistics file."""
    assert _run(sys.executable, "-m", "fid_metric", "--help").stdout == _run(_console_script(), "--help").stdout
    output = tmp_path / "a.npz"
    argv = ["stats", str(folders[0]), "-o", str(output), "--feature", "64", "--weights", str(inception_weights)]
    done = _run(sys.executable, "-m", "fid_metric", *argv, "--device", "cpu", "--workers", "0", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{output}: 4 images, inception-2015-12-05/64, compat=tensorflow\n"
    stats = FeatureStats.load(output)
    assert (stats.n, stats.feature_dim) == (4, 64) and np.isfinite(stats.mean.numpy()).all()


# `import fid_metric.lightning` with one Lightning package made absent: a None entry in sys.modules is what
# importlib.util.find_spec (which fid_metric.lightning asks) reports as not installed, and what makes an import
# of it raise ModuleNotFoundError.
_ONLY_ONE_LIGHTNING = """
import importlib, json, sys
present, blocked = sys.argv[1], sys.argv[2]
sys.modules[blocked] = None
import fid_metric.lightning
callback = importlib.import_module(present if present == "pytorch_lightning" else "lightning.pytorch").Callback
loaded = sorted(m for m in sys.modules if m.split(".")[0] == blocked and sys.modules[m] is not None)
print(json.dumps({"subclass": issubclass(fid_metric.lightning.ExactlyOnce, callback), "blocked_loaded": loaded}))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("present", "blocked"), [("lightning", "pytorch_lightning"), ("pytorch_lightning", "lightning")]
)
def test_the_lightning_callback_works_with_either_package_alone(present: str, blocked: str) -> None:
    """With only ``lightning`` or only ``pytorch_lightning`` importable, ``ExactlyOnce`` is a ``Callback`` of the
    one present, and the other is never imported."""
    done = run_python("-c", _ONLY_ONE_LIGHTNING, present, blocked)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"subclass": True, "blocked_loaded": []}


def test_the_parsers_copies_of_library_constants_are_the_library_values() -> None:
    """The parser keeps torch-free copies of the constants its help and choices quote; they must not drift."""
    from fid_metric._features.inception import POOL_FEATURES
    from fid_metric._features.preprocess import COMPAT_MODES
    from fid_metric._features.weights import INCEPTION
    from fid_metric._files.image_folder import FORMATS, IMAGE_EXTENSIONS

    assert parser.POOL_FEATURES == POOL_FEATURES
    assert parser.COMPAT_MODES == COMPAT_MODES
    assert (parser.IMAGE_EXTENSIONS, parser.FORMATS) == (IMAGE_EXTENSIONS, FORMATS)
    assert parser.WEIGHTS_ENV_PATH == INCEPTION.env_path
