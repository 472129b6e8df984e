"""Lightning integration: exactly-once counting of the validation set under DDP.

Works with either Lightning package, ``lightning`` (``import lightning as L``) or ``pytorch-lightning``
(``import pytorch_lightning as pl``), or both: each Trainer accepts only callbacks of its own package's
``Callback`` class, so ``ExactlyOnce`` derives from the ``Callback`` of each one installed.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from torch.utils.data import DataLoader, DistributedSampler

from fid_metric._metrics.base import FeatureSumsMetric


def _callback_bases() -> tuple[type, ...]:
    """``Callback`` of each Lightning package installed: lightning.pytorch's, pytorch_lightning's."""
    bases: list[type] = []
    if importlib.util.find_spec("lightning") is not None:
        from lightning.pytorch import Callback

        bases.append(Callback)
    if importlib.util.find_spec("pytorch_lightning") is not None:
        from pytorch_lightning import Callback as PLCallback

        bases.append(PLCallback)
    if not bases:
        raise ImportError(
            "fid_metric.lightning needs Lightning: pip install lightning (or pytorch-lightning, for code that "
            "imports pytorch_lightning)."
        )
    return tuple(bases)


class ExactlyOnce(*_callback_bases()):  # type: ignore[misc]
    """Gives every metric of this package (``FrechetInceptionDistance``, ``InceptionMetrics``) in the
    LightningModule the size of the validation set.

    Under DDP, Lightning's validation ``DistributedSampler`` pads the last round by repeating samples when
    the set's size N is not divisible by the number of processes; with ``dataset_size=N`` the metric drops
    those repeats (see ``FrechetInceptionDistance``), so 1 and 8 GPUs give the same FID. Add it once::

        trainer = L.Trainer(strategy="ddp", devices=8, callbacks=[ExactlyOnce()])

    The ``validation_step`` stays a plain ``update`` per batch and side. Requirements, checked here: one
    validation DataLoader, over a dataset with a length; its sampler must not drop samples
    (``drop_last=False``). During the sanity check the metric is left unbounded (it sees two batches only).
    """

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        size = None if trainer.sanity_checking else _validation_set_size(trainer.val_dataloaders)
        for module in pl_module.modules():
            if isinstance(module, FeatureSumsMetric):
                module.dataset_size = size


def _validation_set_size(loaders: Any) -> int:
    if isinstance(loaders, (list, tuple)):
        if len(loaders) != 1:
            raise ValueError(f"ExactlyOnce supports one validation DataLoader, got {len(loaders)}.")
        loaders = loaders[0]
    if not isinstance(loaders, DataLoader):
        raise TypeError(f"ExactlyOnce needs the validation DataLoader, got {type(loaders).__name__}.")
    sampler = getattr(loaders.batch_sampler, "sampler", loaders.sampler)
    if isinstance(sampler, DistributedSampler) and sampler.drop_last:
        raise ValueError(
            "The validation DistributedSampler has drop_last=True: samples are dropped, not repeated, so no FID "
            "over the whole validation set exists. Use drop_last=False (Lightning's default)."
        )
    if loaders.drop_last:
        raise ValueError("The validation DataLoader has drop_last=True, so it skips samples; use drop_last=False.")
    try:
        return len(loaders.dataset)  # type: ignore[arg-type]  # an IterableDataset raises, caught below
    except TypeError as err:
        raise TypeError("ExactlyOnce needs a validation dataset with a length (not an IterableDataset).") from err
