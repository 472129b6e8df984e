"""Log FID to TensorBoard from a Lightning validation loop, with ``fid_metric.FrechetInceptionDistance``.

What it does: a small convolutional autoencoder learns to reproduce procedurally generated 32x32 images of
smooth coloured blobs. After every training epoch the validation loop measures the FID between the
validation images and their reconstructions; as the autoencoder improves, the FID goes down. The metric is
logged with ``self.log("val/fid", self.fid)``: Lightning calls ``compute()`` once at the end of each
validation epoch (under DDP the states of all processes are combined by one all_reduce first), writes the
value to TensorBoard, and resets the metric.

The real (validation) images never change, so the metric is built with ``reset_real_features=False`` and
their statistics are computed once, over the whole validation set, at the start of the first validation
(the sanity check, if there is one): ``reset()`` then keeps them, and every later epoch feeds only the
reconstructions. (Feeding real images from ``validation_step`` in "the first epoch only" would be wrong: the
sanity check runs two batches before the first epoch, and their real statistics would survive its reset.
Testing the local real count would be wrong under DDP: see ``on_validation_epoch_start``.)

Run it (from the repository root, with ``pip install -e .[examples]``):

    python examples/lightning_tensorboard.py                          # CPU or the one GPU found
    python examples/lightning_tensorboard.py --accelerator gpu --devices 1
    python examples/lightning_tensorboard.py --accelerator gpu --devices 4 --strategy ddp
    python examples/lightning_tensorboard.py --accelerator cpu --devices 2 --strategy ddp
    tensorboard --logdir runs                                         # then open the val/fid scalar

Under DDP each process validates a shard of the validation set. Make ``--val-images`` divisible by the
number of devices, otherwise the DistributedSampler pads the shards with repeated images, which are then
counted twice.

Inception weights: by default the library finds pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` in
torch hub's cache or downloads (and verifies) it. Offline, pass a local copy with
``--inception-weights /path/to/pt_inception-2015-12-05-6726825d.pth`` (or set ``FID_METRIC_WEIGHTS``).

On a CPU the Inception forward dominates (roughly 10 images/s): the defaults evaluate about 830 images in
all. ``--feature 64`` is several times faster (the network stops after its first block) and far less biased with a
few hundred images than 2048; use 2048 (the standard) to compare with published numbers, on 10k+ images.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from fid_metric import FrechetInceptionDistance, WeightsUnavailableError

IMAGE_SIZE = 32


def make_blobs(n: int, seed: int, size: int = IMAGE_SIZE, blobs: int = 3) -> Tensor:
    """``(n, 3, size, size)`` float images in [0, 1]: a dark background and a few soft coloured discs."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images = (torch.rand(n, 3, 1, 1, generator=g) * 0.3).expand(n, 3, size, size).clone()
    for _ in range(blobs):
        cx, cy = (torch.rand(2, n, 1, 1, 1, generator=g) * 0.8 + 0.1).unbind(0)
        radius = torch.rand(n, 1, 1, 1, generator=g) * 0.12 + 0.06
        colour = torch.rand(n, 3, 1, 1, generator=g)
        mask = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
        images = images * (1 - mask) + colour * mask
    return images.clamp(0, 1)


class AutoEncoder(L.LightningModule):
    """A 32x32 convolutional autoencoder; validation FID compares images with their reconstructions."""

    def __init__(
        self,
        feature: int = 2048,
        inception_weights: str | None = None,
        latent_dim: int = 32,
        lr: float = 2e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, stride=2, padding=1),  # 16x16
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),  # 8x8
            nn.ReLU(),
            nn.Conv2d(64, 64, 4, stride=2, padding=1),  # 4x4
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 64 * 4 * 4),
            nn.ReLU(),
            nn.Unflatten(1, (64, 4, 4)),
            nn.ConvTranspose2d(64, 64, 4, stride=2, padding=1),  # 8x8
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),  # 16x16
            nn.ReLU(),
            nn.ConvTranspose2d(32, 3, 4, stride=2, padding=1),  # 32x32
            nn.Sigmoid(),
        )
        # normalize=True: float images in [0, 1]. The Inception network is not part of this module's
        # parameters or state_dict (checkpoints stay small) and is never cast by mixed/true precision.
        self.fid = FrechetInceptionDistance(
            feature=feature,
            normalize=True,
            reset_real_features=False,
            feature_extractor_weights_path=inception_weights,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    def training_step(self, batch: tuple[Tensor], batch_idx: int) -> Tensor:
        (images,) = batch
        loss = F.mse_loss(self(images), images)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        # Real statistics once, over the whole validation set: each process feeds its DistributedSampler
        # shard, and reset() keeps them (reset_real_features=False). Whether they are there already is
        # decided on the count summed over the processes, not the local one: under DDP, compute() leaves
        # the global real sums on rank 0 and zeros on the other ranks (as does loading a checkpoint).
        real_seen = self.trainer.strategy.reduce(self.fid.real_features_num_samples.double(), reduce_op="sum")
        if int(real_seen) == 0:
            for (images,) in self.trainer.val_dataloaders:
                self.fid.update(images.to(self.device), real=True)

    def validation_step(self, batch: tuple[Tensor], batch_idx: int) -> None:
        (images,) = batch
        reconstructions = self(images).clamp(0, 1)
        self.fid.update(reconstructions, real=False)
        self.log("val/fid", self.fid)  # computed, logged and reset by Lightning at the end of the epoch
        self.log("val/mse", F.mse_loss(reconstructions, images), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class FIDHistory(Callback):
    """Keeps the logged ``val/fid`` of every validation epoch (not of the sanity check)."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and "val/fid" in trainer.callback_metrics:
            self.values.append(float(trainer.callback_metrics["val/fid"]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-images", type=int, default=2048)
    parser.add_argument("--val-images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--feature", type=int, default=2048, choices=(64, 192, 768, 2048))
    parser.add_argument(
        "--inception-weights",
        default=None,
        help="local pt_inception-2015-12-05 weights file (default: torch hub cache, else download)",
    )
    parser.add_argument("--logdir", default="runs")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto", help='e.g. "ddp" with --devices > 1')
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[float]:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    L.seed_everything(args.seed, verbose=False)

    train_set = TensorDataset(make_blobs(args.train_images, seed=args.seed + 1))
    val_set = TensorDataset(make_blobs(args.val_images, seed=args.seed + 2))
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True)
    val_loader = DataLoader(val_set, batch_size=args.batch_size, shuffle=False)

    model = AutoEncoder(feature=args.feature, inception_weights=args.inception_weights)
    logger = TensorBoardLogger(save_dir=args.logdir, name="fid_example")
    history = FIDHistory()
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        logger=logger,
        callbacks=[history],
        log_every_n_steps=10,
        enable_checkpointing=False,
    )
    trainer.fit(model, train_dataloaders=train_loader, val_dataloaders=val_loader)

    if trainer.is_global_zero:
        print("\nFID (validation images vs reconstructions) per epoch:")
        for epoch, value in enumerate(history.values):
            print(f"  epoch {epoch}: {value:.4f}")
        print(f"TensorBoard event files: {logger.log_dir}")
        print(f"View them with: tensorboard --logdir {args.logdir}")
    return history.values


if __name__ == "__main__":
    try:
        main()
    except WeightsUnavailableError as err:  # e.g. offline: one line on what to pass, not a chained traceback
        reason = str(err.__cause__ or err).splitlines()[0]
        sys.exit(
            f"{Path(__file__).name}: no Inception weights ({reason}); pass --inception-weights "
            "/path/to/pt_inception-2015-12-05-6726825d.pth or set FID_METRIC_WEIGHTS"
        )
