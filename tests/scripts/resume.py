"""Train-then-resume script for tests/test_checkpoint.py: the real statistics must survive a checkpoint.

python resume.py train CKPT OUT_JSON    # 2 epochs; real images fed in epoch 0 only; saves CKPT
python resume.py resume CKPT OUT_JSON   # a new process: validate from CKPT feeding generated images only
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
from helpers import TinyFeatures, smooth_images
from torch.utils.data import DataLoader, TensorDataset

from fid_metric import FrechetInceptionDistance


class Module(L.LightningModule):
    def __init__(self, feed_real: bool) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.fid = FrechetInceptionDistance(TinyFeatures(), reset_real_features=False)
        self.feed_real = feed_real
        self.values: list[float] = []

    def training_step(self, batch, batch_idx):
        return (self.weight - 1).square().sum()

    def validation_step(self, batch, batch_idx):
        real, fake = batch
        if self.feed_real:
            self.fid.update(real, real=True)
        self.fid.update(fake, real=False)
        self.log("val/fid", self.fid)

    def on_validation_epoch_end(self) -> None:
        self.feed_real = False

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main() -> None:
    mode, ckpt, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    data = TensorDataset(smooth_images(24, 16, seed=1), smooth_images(24, 16, seed=2))
    loader = DataLoader(data, batch_size=8)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    if mode == "train":
        model = Module(feed_real=True)
        values = []
        for epoch in range(2):
            trainer.fit_loop.max_epochs = epoch + 1
            trainer.fit(model, loader, loader)
            values.append(float(trainer.callback_metrics["val/fid"]))
        trainer.save_checkpoint(ckpt)
    else:
        model = Module(feed_real=False)
        trainer.validate(model, loader, ckpt_path=ckpt, verbose=False)
        values = [float(trainer.callback_metrics["val/fid"])]
    out.write_text(json.dumps({"values": values, "real_n": int(model.fid.real_features_num_samples)}))


if __name__ == "__main__":
    main()
