"""2-process Lightning validation over 67 images, batch 8, for tests/test_exactly_once.py.

    python exactly_once.py DEVICES callback|argument OUT_JSON

``callback``: the metric learns the set size from ``fid_metric.lightning.ExactlyOnce``. ``argument``: one
metric gets ``dataset_size=67``, another none (the naive count, which includes the sampler's padding).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import smooth_images  # noqa: E402
from test_metric import TinyFeatures  # noqa: E402

from fid_metric import FrechetInceptionDistance  # noqa: E402
from fid_metric.lightning import ExactlyOnce  # noqa: E402

N_IMAGES = 67


class Validator(L.LightningModule):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.fid = FrechetInceptionDistance(TinyFeatures(), dataset_size=N_IMAGES if mode == "argument" else None)
        self.naive = FrechetInceptionDistance(TinyFeatures()) if mode == "argument" else None

    def validation_step(self, batch, batch_idx):
        real, fake = batch
        for metric in filter(None, (self.fid, self.naive)):
            metric.update(real, real=True)
            metric.update(fake, real=False)
        self.log("val/fid", self.fid)
        if self.naive is not None:
            self.log("val/naive", self.naive)


def main() -> None:
    devices, mode, out = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    data = TensorDataset(smooth_images(N_IMAGES, 16, seed=1), 255 - smooth_images(N_IMAGES, 16, seed=2) // 2)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ExactlyOnce()] if mode == "callback" else [],
    )
    model = Validator(mode)
    trainer.validate(model, DataLoader(data, batch_size=8), verbose=False)
    if trainer.global_rank == 0:
        out.write_text(json.dumps({k: float(v) for k, v in trainer.callback_metrics.items()}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
