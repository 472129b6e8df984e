r"""Train a small GAN on scikit-learn's digits and log its FID every epoch, with ``fid_metric``.

What it does: a GAN (two small MLPs) learns to draw the 1797 8x8 grey handwritten digits that ship with
scikit-learn (``sklearn.datasets.load_digits``; values 0..16, scaled to uint8 as ``round(x * 255 / 16)``).
The real side of the FID is fixed, so its Inception statistics are computed once, before training, and
saved to ``<logdir>/digits_ref_<feature>.npz`` (reused by later runs while the weights, feature and number
of images match). The metric is built with ``real_stats=`` that file, and every validation epoch feeds it
only the generator's images for the same fixed latent vectors (``--val-samples`` of them, drawn with
``--seed``), so the curve shows the generator improving, not the noise in the samples. Lightning computes,
logs and resets the metric once per epoch (``self.log("val/fid", self.fid)``); the ``ExactlyOnce`` callback
makes every latent vector count once under DDP, whatever the number of processes. At the end the program
prints the FID of each epoch and draws them, next to digits from the final generator, in a PNG.

Run it (from the repository root, with ``pip install -e .[examples]``):

    python examples/gan_digits.py --accelerator cpu                               # CPU: a few minutes
    python examples/gan_digits.py --feature 2048 --val-samples 5000 --epochs 30   # 1 GPU
    python examples/gan_digits.py --feature 2048 --val-samples 5000 --epochs 30 \
        --devices 4 --strategy ddp_find_unused_parameters_true                    # 4 GPUs
    python examples/gan_digits.py --logger wandb --wandb-offline    # then: wandb sync runs/wandb/offline-run-*
    python examples/gan_digits.py --logger tensorboard,wandb        # both: the same val/fid to each
    tensorboard --logdir runs                                       # the val/fid scalar

Several devices: Lightning wraps the whole module, generator and discriminator, in one
DistributedDataParallel, and each of the two backward passes per batch leaves one of them without
gradients, so plain ``--strategy ddp`` stops with "parameters that were not used in producing the loss";
``ddp_find_unused_parameters_true`` is the strategy for it (the usual GAN-under-Lightning setting). The FID
itself needs nothing: its states are combined by one all_reduce, and ``ExactlyOnce`` drops the padding that
the DistributedSampler adds when ``--val-samples`` is not divisible by the number of processes.

Inception weights: by default the library finds pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` in
torch hub's cache or downloads (and verifies) it. Offline, pass a local copy with
``--inception-weights /path/to/pt_inception-2015-12-05-6726825d.pth`` (or set ``FID_METRIC_WEIGHTS``).

Cost: training is negligible; the Inception network dominates, since every 8x8 image is resized to 299x299.
The defaults (``--feature 64``: the network stops after its first block) evaluate the 1797 real digits once
and 500 generated ones per epoch for 10 epochs: 3.5 minutes on one CPU thread. ``--feature 2048`` is the
standard FID, about three times slower per image on a CPU (5 epochs: 9 minutes) and seconds on a GPU; give it
more ``--val-samples`` than 2048 dimensions. Its reference covariance, from 1797 digits, is singular, which
the distance handles, but the values are biased upwards: compare runs with each other, not with published
numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import lightning as L
import matplotlib
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from fid_metric import FeatureStats, FrechetInceptionDistance, WeightsUnavailableError
from fid_metric.lightning import ExactlyOnce

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

IMAGE_SIZE = 8
LATENT_DIM = 32
SHOWN_SAMPLES = 32  # digits drawn next to the curve


def digits_uint8(count: int | None = None) -> Tensor:
    """The first ``count`` (default: all 1797) scikit-learn digits as ``(N, 1, 8, 8)`` uint8 in [0, 255]."""
    images = torch.from_numpy(load_digits().images[:count]).float()  # values 0..16
    return images.mul(255 / 16).round().to(torch.uint8).unsqueeze(1)


def write_reference(path: Path, images: Tensor, feature: int, weights: str | None, device: torch.device) -> None:
    """Inception statistics of ``images`` (``(N, 1, H, W)`` uint8) to ``path``, unless it holds them already."""
    try:
        stats = FeatureStats.load(path)
        FrechetInceptionDistance(feature, feature_extractor_weights_path=weights, real_stats=stats)
        if stats.n == len(images):
            return
    except ValueError:  # no file, an unreadable one, or one made with other weights/feature (StatsMismatchError)
        pass
    print(f"Inception statistics of {len(images)} real digits -> {path} (once)")
    # sync_on_compute=False: under DDP only this process (local rank 0, in prepare_data) computes them.
    metric = FrechetInceptionDistance(feature, feature_extractor_weights_path=weights, sync_on_compute=False)
    metric = metric.to(device)
    for batch in images.split(100):
        metric.update(batch, real=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    metric.statistics(real=True).save(partial)
    os.replace(partial, path)  # atomic: a concurrent reader sees the old file or the whole new one


class DigitsGAN(L.LightningModule):
    """An MLP GAN for 8x8 digits in [-1, 1]; validation FID of the generated digits against the real ones."""

    def __init__(
        self,
        reference: str,
        feature: int = 64,
        inception_weights: str | None = None,
        reference_images: int | None = None,
        latent_dim: int = LATENT_DIM,
        lr: float = 1e-3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False  # one discriminator step and one generator step per batch
        pixels = IMAGE_SIZE * IMAGE_SIZE
        self.generator = nn.Sequential(
            nn.Linear(latent_dim, 256),
            nn.BatchNorm1d(256),
            nn.LeakyReLU(0.2),
            nn.Linear(256, 256),
            nn.BatchNorm1d(256),
            nn.LeakyReLU(0.2),
            nn.Linear(256, pixels),
            nn.Tanh(),
            nn.Unflatten(1, (1, IMAGE_SIZE, IMAGE_SIZE)),
        )
        self.discriminator = nn.Sequential(
            nn.Flatten(),
            nn.Linear(pixels, 256),
            nn.LeakyReLU(0.2),
            nn.Dropout(0.3),
            nn.Linear(256, 256),
            nn.LeakyReLU(0.2),
            nn.Dropout(0.3),
            nn.Linear(256, 1),
        )
        self.fid: FrechetInceptionDistance | None = None  # built by setup() from the reference file

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node before setup(); the other processes wait for it.
        images = digits_uint8(self.hparams.reference_images)
        device = self.trainer.strategy.root_device
        write_reference(
            Path(self.hparams.reference), images, self.hparams.feature, self.hparams.inception_weights, device
        )

    def setup(self, stage: str) -> None:
        if self.fid is None:
            # normalize=True: the generated digits are floats in [0, 1], rounded to 8 bits as a PNG would be,
            # like the real ones. The reference is the real side; update() only ever gets generated images.
            self.fid = FrechetInceptionDistance(
                self.hparams.feature,
                normalize=True,
                feature_extractor_weights_path=self.hparams.inception_weights,
                real_stats=self.hparams.reference,
            )

    def forward(self, z: Tensor) -> Tensor:
        """``(B, latent_dim)`` latents -> ``(B, 1, 8, 8)`` float digits in [0, 1]."""
        return (self.generator(z) + 1) / 2

    def on_train_start(self) -> None:
        # Other latent draws on each DDP process (the weights are the same: DDP broadcasts rank 0's).
        torch.manual_seed(self.hparams.seed + self.global_rank)

    def training_step(self, batch: tuple[Tensor], batch_idx: int) -> None:
        (real,) = batch
        real = real.float() / 127.5 - 1  # uint8 -> [-1, 1], the generator's tanh range
        opt_g, opt_d = self.optimizers()
        ones = torch.ones(len(real), 1, device=self.device)
        z = torch.randn(len(real), self.hparams.latent_dim, device=self.device)

        fake = self.generator(z)
        d_loss = F.binary_cross_entropy_with_logits(self.discriminator(real), ones)
        d_loss = d_loss + F.binary_cross_entropy_with_logits(self.discriminator(fake.detach()), 1 - ones)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()

        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake), ones)  # non-saturating loss
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        losses = {"train/d_loss": d_loss, "train/g_loss": g_loss}
        self.log_dict(losses, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)

    def validation_step(self, batch: tuple[Tensor], batch_idx: int) -> None:
        (z,) = batch
        self.fid.update(self(z).clamp(0, 1), real=False)
        self.log("val/fid", self.fid)  # computed, logged and reset by Lightning at the end of the epoch

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = (0.5, 0.999)
        return [
            torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr, betas=betas),
            torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr, betas=betas),
        ]


class FIDHistory(Callback):
    """Keeps the ``val/fid`` that Lightning logged at the end of each validation epoch."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.values.append(float(trainer.callback_metrics["val/fid"]))


def plot(values: list[float], samples: Tensor, path: Path, title: str) -> None:
    """FID per epoch next to a grid of ``samples`` (``(N, 1, 8, 8)`` in [0, 1]), written as a PNG."""
    fig, (curve, grid) = plt.subplots(1, 2, figsize=(9, 3.6), gridspec_kw={"width_ratios": [1.25, 1]})
    epochs = range(len(values))  # numbered from 0, as Lightning numbers them
    curve.plot(epochs, values, marker="o")
    curve.set(xlabel="epoch", ylabel="FID", title=title)
    curve.set_xticks(list(epochs))
    curve.grid(alpha=0.3)
    columns = 8
    rows = -(-len(samples) // columns)
    tiles = torch.ones(rows * columns, IMAGE_SIZE + 2, IMAGE_SIZE + 2)  # 1-pixel white border per digit
    tiles[: len(samples), 1:-1, 1:-1] = samples[:, 0]
    mosaic = tiles.view(rows, columns, IMAGE_SIZE + 2, IMAGE_SIZE + 2).permute(0, 2, 1, 3).flatten(2).flatten(0, 1)
    grid.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    grid.set_title(f"generated after epoch {len(values) - 1}")
    grid.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--val-samples", type=int, default=500, help="fixed latent vectors evaluated each epoch")
    parser.add_argument("--feature", type=int, default=64, choices=(64, 192, 768, 2048))
    parser.add_argument(
        "--inception-weights",
        default=None,
        help="local pt_inception-2015-12-05 weights file (default: torch hub cache, else download)",
    )
    parser.add_argument(
        "--reference-images", type=int, default=None, help="real digits in the reference (default: all 1797)"
    )
    parser.add_argument("--max-train-batches", type=int, default=None, help="per epoch (default: all)")
    parser.add_argument("--logdir", default="runs")
    parser.add_argument(
        "--logger",
        default="tensorboard",
        type=logger_names,
        help='"tensorboard", "wandb", or both, comma-separated (Lightning logs val/fid to each)',
    )
    parser.add_argument("--wandb-offline", action="store_true", help="as WANDB_MODE=offline; `wandb sync` later")
    parser.add_argument("--plot", default=None, help="the PNG written at the end (default: <logdir>/fid_curve.png)")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto", help='"ddp_find_unused_parameters_true" with --devices > 1')
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def logger_names(text: str) -> list[str]:
    """``--logger``'s value: "tensorboard", "wandb", or both, comma-separated."""
    names = [name.strip() for name in text.split(",")]
    unknown = sorted(set(names) - {"tensorboard", "wandb"})
    if unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected tensorboard, wandb or tensorboard,wandb; got {text!r}")
    return names


def make_loggers(args: argparse.Namespace) -> list[Logger]:
    loggers: list[Logger] = []
    for name in args.logger:
        if name == "wandb":
            loggers.append(WandbLogger(project="fid-metric-digits", save_dir=args.logdir, offline=args.wandb_offline))
        else:
            loggers.append(TensorBoardLogger(save_dir=args.logdir, name="gan_digits"))
    return loggers


def main(argv: list[str] | None = None) -> list[float]:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    L.seed_everything(args.seed, verbose=False)
    logdir = Path(args.logdir)

    train_loader = DataLoader(TensorDataset(digits_uint8()), batch_size=args.batch_size, shuffle=True, drop_last=True)
    latents = torch.randn(args.val_samples, LATENT_DIM, generator=torch.Generator().manual_seed(args.seed + 1))
    val_loader = DataLoader(TensorDataset(latents), batch_size=args.batch_size, shuffle=False)

    model = DigitsGAN(
        reference=str(logdir / f"digits_ref_{args.feature}.npz"),
        feature=args.feature,
        inception_weights=args.inception_weights,
        reference_images=args.reference_images,
        seed=args.seed,
    )
    loggers = make_loggers(args)
    history = FIDHistory()
    trainer = L.Trainer(
        max_epochs=args.epochs,
        limit_train_batches=args.max_train_batches,
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        logger=loggers,
        callbacks=[ExactlyOnce(), history],
        num_sanity_val_steps=0,  # its FID (two batches) is not logged; the first epoch takes a second
        log_every_n_steps=10,
        enable_checkpointing=False,
    )
    trainer.fit(model, train_dataloaders=train_loader, val_dataloaders=val_loader)

    if trainer.is_global_zero:
        model.eval()
        with torch.no_grad():
            samples = model(latents[:SHOWN_SAMPLES].to(model.device)).clamp(0, 1).cpu()
        weights = Path(args.inception_weights).name if args.inception_weights else "pt_inception-2015-12-05"
        path = Path(args.plot) if args.plot else logdir / "fid_curve.png"
        plot(history.values, samples, path, f"FID ({args.feature}-d, {args.val_samples} samples; {weights})")
        print("\nFID (generated digits vs the real ones) per epoch:")
        for epoch, value in enumerate(history.values):
            print(f"  epoch {epoch}: {value:.4f}")
        print(f"Curve: {path}")
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                print(f"W&B run: {Path(logger.experiment.dir).parent}")
                logger.experiment.finish()
            else:
                print(f"TensorBoard event files: {logger.log_dir} (tensorboard --logdir {args.logdir})")
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
