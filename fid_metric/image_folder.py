"""Image folders for the command line: listing, decoding in DataLoader workers, bad-file markers, batching.

Decoding follows pytorch-fid and clean-fid: ``PIL.Image.open(path).convert("RGB")``, so grey, grey+alpha,
RGBA, CMYK and palette images become 3-channel RGB the way those tools see them (alpha is dropped, not
composited). A file that cannot be decoded does not raise inside the worker, which would stop the whole
DataLoader: the dataset returns a :class:`BadImage` marker instead and the caller decides what to do.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")


class BadImage(NamedTuple):
    """A file that could not be decoded: its path and the decoder's error, on one line."""

    path: str
    error: str


Item = Union[Tensor, BadImage]


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted by path.

    A file counts as an image when its extension, in any case, is one of ``IMAGE_EXTENSIONS``; anything
    else (``.txt``, ``.npz``, ...) is ignored. Whether the file really is an image is found out when it is
    decoded.
    """
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def read_image(path: str | Path) -> Tensor:
    """The image at ``path`` as a ``(3, H, W)`` uint8 tensor, via PIL's ``convert("RGB")``."""
    with Image.open(path) as img:
        rgb = np.array(img.convert("RGB"))
    return torch.from_numpy(rgb).permute(2, 0, 1)


class ImageFiles(Dataset):
    """Decodes ``files[i]`` to a ``(3, H, W)`` uint8 tensor, or to a ``BadImage`` if it cannot be decoded."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Item:
        path = self.files[index]
        try:
            return read_image(path)
        except Exception as err:  # any decoder failure marks this file; it must not kill the worker
            return BadImage(str(path), " ".join(f"{type(err).__name__}: {err}".split()))


def collate(items: list[Item]) -> list[Item]:
    """Keep a batch as a list: images may differ in size, and bad-file markers travel with them."""
    return items


def same_size_batches(images: Sequence[Tensor]) -> Iterator[Tensor]:
    """Runs of consecutive equal-size ``(3, H, W)`` uint8 images, stacked to ``(n, 3, H, W)``, in order."""
    for _, run in itertools.groupby(images, key=lambda img: img.shape):
        yield torch.stack(list(run))
