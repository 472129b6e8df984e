"""FID inside Lightning (one process): TensorBoard logging per epoch, precision plugins, checkpoint size, example.

The bookkeeping tests use the tiny fixed conv extractor ``helpers.ddp_features()`` instead of Inception
(far too slow on a CPU); the checkpoint test and the example run use the random-init Inception weights of
the ``inception_weights`` fixture.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import REPO, ddp_features, feed, run_python, smooth_images
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fid_metric import FrechetInceptionDistance

STATES = (
    "real_features_sum",
    "real_features_cov_sum",
    "real_features_num_samples",
    "fake_features_sum",
    "fake_features_cov_sum",
    "fake_features_num_samples",
)
STATE_DTYPES = {name: torch.int64 if name.endswith("num_samples") else torch.float64 for name in STATES}

pytestmark = pytest.mark.filterwarnings(
    # torch deprecated its pytree LeafSpec; Lightning 2.6's pytree helper (used when it logs) still creates one.
    r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning:lightning.pytorch.utilities._pytree",
    r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning:pytorch_lightning.utilities._pytree",
    "ignore:FID from .* fewer samples than dimensions",
)


@pytest.fixture(autouse=True)
def _one_thread():
    # These models are tiny: one thread is as fast, and it does not thrash when other jobs share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def quiet_trainer(**kwargs) -> L.Trainer:
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "logger": False,
    }
    return L.Trainer(**{**defaults, **kwargs})


def _fid_of(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID of a fresh metric outside Lightning fed the same batches of 8 in the same order."""
    return float(feed(FrechetInceptionDistance(feature=ddp_features()), real, fake, batch=8).compute())


# ---------------------------------------------------------------------------------------------------------------
# a. TensorBoard: one val/fid value per validation epoch, equal to the FID of that epoch's images
# ---------------------------------------------------------------------------------------------------------------

NUM_VAL = 40


class BrightnessGenerator(L.LightningModule):
    """Generates ``clamp(base + bias)`` from fixed base images; ``bias`` (the one parameter) is trained."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("base", smooth_images(NUM_VAL, 16, seed=22).float() / 255 * 0.6)
        self.fid = FrechetInceptionDistance(feature=ddp_features())
        self.epoch_fakes: list[torch.Tensor] = []
        self.generated: list[torch.Tensor] = []  # per validation epoch (not the sanity check), uint8

    def generate(self, index: torch.Tensor) -> torch.Tensor:
        return (self.base[index] + self.bias).clamp(0, 1)

    def training_step(self, batch, batch_idx):
        (index,) = batch
        return (self.generate(index).mean() - 0.6) ** 2

    def validation_step(self, batch, batch_idx):
        index, real = batch
        fake = (self.generate(index) * 255).round().to(torch.uint8)
        self.fid.update(real, real=True)
        self.fid.update(fake, real=False)
        self.log("val/fid", self.fid)
        if not self.trainer.sanity_checking:
            self.epoch_fakes.append(fake.clone())

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.generated.append(torch.cat(self.epoch_fakes))
        self.epoch_fakes = []

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class LoggedFID(Callback):
    """What Lightning logged as ``val/fid`` after each validation epoch (the sanity check excluded)."""

    def __init__(self) -> None:
        self.values: list[torch.Tensor] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.values.append(trainer.callback_metrics["val/fid"].clone())


def test_tensorboard_logs_fid_once_per_epoch_with_the_exact_value(tmp_path: Path) -> None:
    real = smooth_images(NUM_VAL, 16, seed=21)
    val_loader = DataLoader(TensorDataset(torch.arange(NUM_VAL), real), batch_size=8)
    train_loader = DataLoader(TensorDataset(torch.arange(NUM_VAL)), batch_size=10)
    model = BrightnessGenerator()
    logger = TensorBoardLogger(save_dir=tmp_path, name="tb")
    logged = LoggedFID()
    trainer = quiet_trainer(max_epochs=3, logger=logger, callbacks=[logged], log_every_n_steps=1)
    trainer.fit(model, train_dataloaders=train_loader, val_dataloaders=val_loader)

    # The sanity check (2 batches) ran, then 3 validation epochs, each with different generated images.
    assert len(model.generated) == 3
    assert len({float(g.float().mean()) for g in model.generated}) == 3
    expected = [_fid_of(real, fake) for fake in model.generated]
    assert len({round(v, 10) for v in expected}) == 3

    assert len(logged.values) == 3
    for value, want in zip(logged.values, expected):
        assert value.dtype == torch.float64
        assert float(value) == pytest.approx(want, rel=1e-12)

    acc = EventAccumulator(str(logger.log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    assert "val/fid" in acc.Tags()["scalars"]
    events = acc.Scalars("val/fid")
    assert len(events) == 3  # once per validation epoch, none for the sanity check
    steps = [event.step for event in events]
    assert steps == sorted(steps) and len(set(steps)) == 3
    # One value per epoch of 4 training steps (Lightning's step numbering itself is its own business).
    assert [b - a for a, b in zip(steps, steps[1:])] == [4, 4]
    for event, want in zip(events, expected):
        assert event.value == pytest.approx(want, rel=1e-6)  # TensorBoard stores float32


# ---------------------------------------------------------------------------------------------------------------
# b. precision plugins do not touch the float64 states or the result
# ---------------------------------------------------------------------------------------------------------------


class ValidateFID(L.LightningModule):
    """Validation only: real and generated uint8 images come from the dataloader."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 4)  # something for the precision plugin to cast
        self.fid = FrechetInceptionDistance(feature=ddp_features())

    def validation_step(self, batch, batch_idx):
        real, fake = batch
        self.fid.update(real, real=True)
        self.fid.update(fake, real=False)
        self.log("val/fid", self.fid)


class InspectStates(Callback):
    """At the end of the validation epoch, before Lightning computes and resets the metric."""

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        fid = pl_module.fid
        self.state_dtypes = {name: getattr(fid, name).dtype for name in STATES}
        self.counts = (int(fid.real_features_num_samples), int(fid.fake_features_num_samples))
        self.layer_dtype = pl_module.layer.weight.dtype
        self.extractor_dtype = fid._extractor.module.conv.weight.dtype


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true"])
def test_precision_leaves_fid_exact(precision: str) -> None:
    real, fake = smooth_images(48, 16, seed=31), smooth_images(48, 16, seed=32)
    loader = DataLoader(TensorDataset(real, fake), batch_size=8)
    model = ValidateFID()
    inspect = InspectStates()
    trainer = quiet_trainer(precision=precision, callbacks=[inspect])
    trainer.validate(model, dataloaders=loader, verbose=False)
    value = trainer.callback_metrics["val/fid"]

    # The plugin did act on the module (bf16-true casts its parameters) ...
    assert inspect.layer_dtype == (torch.bfloat16 if precision == "bf16-true" else torch.float32)
    # ... but not on the metric's states, its feature extractor, or the result.
    assert inspect.state_dtypes == STATE_DTYPES
    assert inspect.counts == (48, 48)
    assert inspect.extractor_dtype == torch.float32
    assert value.dtype == torch.float64
    assert {name: model.fid._defaults[name].dtype for name in STATES} == STATE_DTYPES
    assert {name: getattr(model.fid, name).dtype for name in STATES} == STATE_DTYPES
    assert int(model.fid.real_features_num_samples) == 0  # Lightning reset the metric after logging

    # Identical across plugins: each equals, bit for bit, a fresh float32 metric outside Lightning fed the same
    # batches in the same order (the features are float32 with autocast off, the sums float64).
    assert float(value) == _fid_of(real, fake)


# ---------------------------------------------------------------------------------------------------------------
# c. checkpoints hold no Inception weights
# ---------------------------------------------------------------------------------------------------------------


class WithInception(L.LightningModule):
    def __init__(self, weights: Path) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 2)
        self.fid = FrechetInceptionDistance(feature=64, feature_extractor_weights_path=weights)


def test_state_dict_has_no_inception_weights(inception_weights: Path, tmp_path: Path) -> None:
    model = WithInception(inception_weights)
    keys = list(model.state_dict())
    assert not [k for k in keys if "Conv2d" in k or "Mixed" in k]
    assert keys == ["layer.weight", "layer.bias"]  # the metric states are not persistent by default
    assert [name for name, _ in model.named_parameters()] == ["layer.weight", "layer.bias"]
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    assert path.stat().st_size < 10_000  # the Inception weights file is ~95 MB

    model.fid.persistent(True)  # the states can be checkpointed on request: still no network weights
    keys = list(model.state_dict())
    assert not [k for k in keys if "Conv2d" in k or "Mixed" in k]
    expected = ["layer.weight", "layer.bias", "fid._extra_state"] + [f"fid.{name}" for name in STATES]
    assert sorted(keys) == sorted(expected)  # _extra_state: the metric's configuration record (a small dict)

    # Not in the module tree, so a whole-module cast (Lightning's bf16-true) leaves the network in float32.
    model.to(torch.bfloat16)
    assert model.layer.weight.dtype == torch.bfloat16
    assert {p.dtype for p in model.fid._extractor.module.parameters()} == {torch.float32}
    assert model.fid.real_features_sum.dtype == torch.float64


# ---------------------------------------------------------------------------------------------------------------
# the example, end to end
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_example_runs_and_logs_fid(inception_weights: Path, tmp_path: Path) -> None:
    proc = run_python(
        REPO / "examples" / "lightning_tensorboard.py",
        *"--epochs 1 --val-images 8 --batch-size 4 --train-images 64 --feature 64 --accelerator cpu".split(),
        *["--inception-weights", str(inception_weights), "--logdir", str(tmp_path)],
    )
    assert "epoch 0:" in proc.stdout

    event_files = list((tmp_path / "fid_example").glob("version_*/events.out.tfevents.*"))
    assert len(event_files) == 1
    acc = EventAccumulator(str(event_files[0].parent), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("val/fid")
    assert len(events) == 1
    assert events[0].value > 0 and events[0].value == events[0].value  # positive, not NaN
    printed = float(proc.stdout.split("epoch 0:")[1].split()[0])
    assert printed == pytest.approx(events[0].value, rel=1e-3)
    assert str(event_files[0].parent) in proc.stdout


# ---------------------------------------------------------------------------------------------------------------
# d. both Lightning packages: lightning and pytorch_lightning
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
def test_exactly_once_with_either_lightning_package(package: str) -> None:
    """``import pytorch_lightning as pl`` code gets the same callback: its Trainer accepts it, it sets the
    validation set's size on the metric, and the logged FID is the plain metric's."""
    pl = pytest.importorskip(package)
    from fid_metric.lightning import ExactlyOnce

    class Validate(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fid = FrechetInceptionDistance(feature=ddp_features())

        def validation_step(self, batch, batch_idx):
            self.fid.update(batch[0], real=True)
            self.fid.update(batch[1], real=False)
            self.log("val/fid", self.fid)

    real, fake = smooth_images(20, 16, seed=41), smooth_images(20, 16, seed=42)
    model = Validate()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ExactlyOnce()],
    )
    trainer.validate(model, DataLoader(TensorDataset(real, fake), batch_size=8), verbose=False)
    assert model.fid.dataset_size == 20
    assert float(trainer.callback_metrics["val/fid"]) == _fid_of(real, fake)
