"""How far apart the definitions of FID are: the same images, the same network, every compat mode.

    python benchmarks/bench_definitions.py                      # 24 + 24 images at 32 and 299 px, 2048-d
    python benchmarks/bench_definitions.py --n 50 --sizes 32,64,256 --json definitions.json

Each compat mode reproduces one library's pipeline (``fid_metric._features.preprocess``); they differ only before the
network (resize, input scaling). This prints, per input size, the FID of each mode and its relative distance
from ``compat="tensorflow"`` (the original definition), on random-init weights of the real file's layout with
batch-norm statistics calibrated on smooth images (no pretrained weights are downloadable here): the gaps show
that the choice matters and where (at 299 x 299 no resize happens and the modes that scale alike agree); their
size with the real weights and real images differs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
from pathlib import Path

import torch

from fid_metric import FrechetInceptionDistance
from fid_metric._features.preprocess import COMPAT_MODES


def _bench_module():
    """benchmarks/bench.py, for its random weights and images (a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location("bench", Path(__file__).with_name("bench.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(weights: Path, n: int, sizes: list[int], dim: int, batch: int = 25) -> list[dict]:
    """Per size: the FID of each compat mode on ``n`` + ``n`` smooth images, and each one's relative distance from
    the tensorflow mode's."""
    bench = _bench_module()
    rows = []
    for size in sizes:
        real, fake = bench.smooth_images(n, size, seed=1), bench.smooth_images(n, size, seed=2) // 2 + 40
        fids = {}
        for compat in COMPAT_MODES:
            metric = FrechetInceptionDistance(dim, compat=compat, feature_extractor_weights_path=weights)
            for imgs, is_real in ((real, True), (fake, False)):
                for part in imgs.split(batch):
                    metric.update(part, real=is_real)
            fids[compat] = float(metric.compute())
        reference = fids["tensorflow"]
        gaps = {compat: abs(value - reference) / reference for compat, value in fids.items()}
        rows.append({"input_px": size, "images_per_side": n, "dim": dim, "fid": fids, "relative_to_tensorflow": gaps})
    return rows


def report(rows: list[dict]) -> str:
    lines = [f"{'px':>5}  " + "  ".join(f"{compat:>22}" for compat in COMPAT_MODES)]
    for row in rows:
        cells = [f"{row['fid'][c]:10.5g} ({row['relative_to_tensorflow'][c]:8.2%})" for c in COMPAT_MODES]
        lines.append(f"{row['input_px']:>5}  " + "  ".join(f"{cell:>22}" for cell in cells))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=24, help="images per side")
    p.add_argument("--sizes", default="32,299", help="comma-separated input sizes in px")
    p.add_argument("--dim", type=int, default=2048, help="Inception feature layer")
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "pt_inception-random.pth"
        _bench_module().random_weights(weights)
        rows = run(weights, args.n, [int(s) for s in args.sizes.split(",")], args.dim)
    print(report(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
