"""Image folders for the command line: listing, header checks, decoding in DataLoader workers, batching.

Decoding follows pytorch-fid and clean-fid: ``PIL.Image.open(path).convert("RGB")``, so grey, grey+alpha,
RGBA, CMYK and palette images become 3-channel RGB the way those tools see them (alpha is dropped, not
composited). Pillow may only pick the decoders of ``FORMATS``, the formats ``IMAGE_EXTENSIONS`` name: left to
itself it identifies a file by its content, so a PostScript file named ``x.png`` would go to its EPS plugin,
which runs Ghostscript. Within ``FORMATS`` the content decides (ImageNet has PNG files named ``.JPEG``).

A file that cannot be decoded does not raise inside the worker, which would stop the whole DataLoader: the
dataset returns a :class:`BadImage` marker instead and the caller decides what to do.
"""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

_FORMAT_OF = {".bmp": "BMP", ".jpeg": "JPEG", ".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
IMAGE_EXTENSIONS = tuple(_FORMAT_OF)
FORMATS = tuple(sorted(set(_FORMAT_OF.values())))


class BadImage(NamedTuple):
    """A file that could not be decoded: its path and the decoder's error, on one line."""

    path: str
    error: str


Item = Union[Tensor, BadImage]


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted by their path's components below ``folder``.

    A file counts as an image when its extension, in any case, is one of ``IMAGE_EXTENSIONS``; anything
    else (``.txt``, ``.npz``, ...) is ignored, and a broken link named like an image is listed (so that it is
    reported, not silently left out). Symbolic links to folders are followed, but each real folder is listed
    once, under the first of its paths in sorted order: a link back up the tree is not a loop, and a folder
    linked twice does not count its images twice. The order depends neither on the file system nor on the
    Python version.

    Raises:
        OSError: a folder cannot be listed (e.g. no permission); leaving it out would change the count.
    """

    def fail(err: OSError) -> None:
        raise err

    root = Path(folder)
    seen: set[str] = set()
    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames.clear()
            continue
        seen.add(real)
        dirnames.sort()  # depth-first in sorted order: which path of a twice-linked folder is kept
        found += [Path(dirpath, name) for name in filenames if Path(name).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(found, key=lambda path: path.relative_to(root).parts)


def _open_image(path: str | Path) -> Image.Image:
    """PIL's lazy ``Image.open``, restricted to ``FORMATS``: reads the header, decodes no pixels."""
    return Image.open(path, formats=FORMATS)


def read_image(path: str | Path) -> Tensor:
    """The image at ``path`` as a ``(3, H, W)`` uint8 tensor, via PIL's ``convert("RGB")``."""
    with _open_image(path) as img:
        rgb = np.array(img.convert("RGB"))
    return torch.from_numpy(rgb).permute(2, 0, 1)


def check_header(path: str | Path) -> BadImage | None:
    """None if ``path`` is a regular file whose header ``_open_image`` reads, else why not, as a ``BadImage``.

    Only the header is read: a file cut short in its pixel data passes, and fails when it is decoded.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO named x.png would block open() forever
            return BadImage(str(path), "not a regular file")
        with _open_image(path):
            return None
    except Exception as err:  # whatever the decoder raises, this file is the one at fault
        return _bad(path, err)


def _bad(path: str | Path, err: Exception) -> BadImage:
    if isinstance(err, UnidentifiedImageError):  # Pillow's message names the file and not what was expected
        return BadImage(str(path), f"not a readable {', '.join(FORMATS[:-1])} or {FORMATS[-1]} image")
    return BadImage(str(path), " ".join(f"{type(err).__name__}: {err}".split()))


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
            return _bad(path, err)


def collate(items: list[Item]) -> list[Item]:
    """Keep a batch as a list: images may differ in size, and bad-file markers travel with them."""
    return items


def same_size_batches(images: Sequence[Tensor]) -> Iterator[Tensor]:
    """Runs of consecutive equal-size ``(3, H, W)`` uint8 images, stacked to ``(n, 3, H, W)``, in order."""
    for _, run in itertools.groupby(images, key=lambda img: img.shape):
        yield torch.stack(list(run))
