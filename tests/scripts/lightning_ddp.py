"""A real Lightning run with FID logged from ``validation_step``; every rank writes what it logged to JSON.

Run by tests/test_ddp.py as ``python lightning_ddp.py OUT_DIR`` in two processes started as torchrun starts
them (``helpers.DDPLauncher.run_script``): ``Trainer(accelerator="cpu", devices=2, strategy="ddp")`` finds its
ranks in the environment. A script and not a test, as under torchrun.

Two epochs, each followed by validation (after a sanity check of 2 batches). The generated images change
with the epoch. Two metrics are logged:

* ``val/fid``: ``reset_real_features=True``, real and generated images fed in ``validation_step``;
* ``val/fid_real_once``: ``reset_real_features=False``, the real images fed once, over the whole validation
  set, in ``on_validation_epoch_start`` (as examples/lightning_tensorboard.py does), only generated images
  in ``validation_step``.

Each rank writes ``OUT_DIR/rank{r}.json`` with the values logged after each epoch and its local real counts;
rank 0 writes the validation images, real and generated per epoch, to ``OUT_DIR/images.pt``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from helpers import ddp_features, smooth_images
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fid_metric import FrechetInceptionDistance

NUM_VAL = 48
BATCH_SIZE = 4  # NUM_VAL is divisible by 2 * BATCH_SIZE: the DistributedSampler pads nothing.
MAX_EPOCHS = 2


def val_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The validation set: NUM_VAL real and NUM_VAL base generated uint8 images, the same in every process."""
    return smooth_images(NUM_VAL, 16, seed=11), smooth_images(NUM_VAL, 16, seed=12)


def generated(base: torch.Tensor, epoch: int) -> torch.Tensor:
    """The "generator" output in a given epoch: the base images brightened by 25 levels per epoch."""
    return (base.to(torch.int16) + 25 * epoch).clamp(0, 255).to(torch.uint8)


class FIDModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.fid = FrechetInceptionDistance(feature=ddp_features())
        self.fid_real_once = FrechetInceptionDistance(feature=ddp_features(), reset_real_features=False)
        self.local_real_counts: list[int] = []  # fid_real_once's, at each validation start (before feeding)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return ((self.weight - x.mean()) ** 2).sum()

    def on_validation_epoch_start(self) -> None:
        local = self.fid_real_once.real_features_num_samples
        self.local_real_counts.append(int(local))
        if int(self.trainer.strategy.reduce(local.double(), reduce_op="sum")) == 0:
            for real, _ in self.trainer.val_dataloaders:
                self.fid_real_once.update(real, real=True)

    def validation_step(self, batch, batch_idx):
        real, base = batch
        fake = generated(base, self.current_epoch)
        self.fid.update(real, real=True)
        self.fid.update(fake, real=False)
        self.fid_real_once.update(fake, real=False)
        self.log("val/fid", self.fid)
        self.log("val/fid_real_once", self.fid_real_once)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Record(Callback):
    def __init__(self) -> None:
        self.values: list[dict] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.values.append(
                {
                    name: {
                        "value": float(trainer.callback_metrics[name]),
                        "dtype": str(trainer.callback_metrics[name].dtype),
                    }
                    for name in ("val/fid", "val/fid_real_once")
                }
            )


def main() -> None:
    out_dir = Path(sys.argv[1])
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*fewer samples than dimensions.*")
    torch.set_num_threads(1)

    real, base = val_data()
    val_loader = DataLoader(TensorDataset(real, base), batch_size=BATCH_SIZE, shuffle=False)
    train_loader = DataLoader(TensorDataset(torch.randn(8, 1)), batch_size=4)
    record = Record()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=MAX_EPOCHS,
        limit_train_batches=1,
        logger=False,
        callbacks=[record],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    model = FIDModule()
    trainer.fit(model, train_dataloaders=train_loader, val_dataloaders=val_loader)

    result = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "epochs": record.values,
        "local_real_counts": model.local_real_counts,
        "fid_states_after_reset": int(model.fid.real_features_num_samples + model.fid.fake_features_num_samples),
    }
    (out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(result, indent=1))
    if trainer.global_rank == 0:
        generated_images = [generated(base, epoch) for epoch in range(MAX_EPOCHS)]
        torch.save({"real": real, "generated": generated_images, "batch_size": BATCH_SIZE}, out_dir / "images.pt")


if __name__ == "__main__":
    main()
