"""2-process Lightning validation over 67 images, batch 8, for tests/test_exactly_once.py.

    python exactly_once.py OUT_DIR     # once per rank, with RANK, LOCAL_RANK, WORLD_SIZE=2, MASTER_ADDR/PORT set

Its two ranks are started from outside, as torchrun starts them (``helpers.run_python(..., ranks=2)``); Lightning's
"ddp" strategy then joins them instead of launching rank 1 itself.

Two validations with one Trainer: ``callback``, where the metric learns the set size from
``fid_metric.lightning.ExactlyOnce``; then, the callback removed, ``argument``, where one metric gets
``dataset_size=67`` and another none (the naive count, which includes the sampler's padding). In both, an
``InceptionMetrics`` with precision/recall and KID (kept features) learns the size the same way. Each rank writes
the values logged in each mode to ``OUT_DIR/rank{r}.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
from helpers import TinyFeatures, kept_features_metric, smooth_images
from torch.utils.data import DataLoader, TensorDataset

from fid_metric import FrechetInceptionDistance
from fid_metric.lightning import ExactlyOnce

N_IMAGES = 67


class Validator(L.LightningModule):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.fid = FrechetInceptionDistance(TinyFeatures(), dataset_size=N_IMAGES if mode == "argument" else None)
        self.naive = FrechetInceptionDistance(TinyFeatures()) if mode == "argument" else None
        self.kept = kept_features_metric(dataset_size=N_IMAGES if mode == "argument" else None)

    def validation_step(self, batch, batch_idx):
        real, fake = batch
        for metric in filter(None, (self.fid, self.naive, self.kept)):
            metric.update(real, real=True)
            metric.update(fake, real=False)
        self.log("val/fid", self.fid)

    def on_validation_epoch_end(self) -> None:
        # A dict-valued metric: computed (synced, gathered) once per epoch, then reset, as Lightning users do.
        self.log_dict({f"val/{name}": value for name, value in self.kept.compute().items() if name != "fid"})
        self.kept.reset()
        if self.naive is not None:
            self.log("val/naive", self.naive)


def main() -> None:
    out_dir = Path(sys.argv[1])
    data = TensorDataset(smooth_images(N_IMAGES, 16, seed=1), 255 - smooth_images(N_IMAGES, 16, seed=2) // 2)
    exactly_once = ExactlyOnce()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[exactly_once],
    )
    values = {}
    for mode in ("callback", "argument"):
        if mode == "argument":
            trainer.callbacks.remove(exactly_once)
        trainer.validate(Validator(mode), DataLoader(data, batch_size=8), verbose=False)
        values[mode] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    (out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(values))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
