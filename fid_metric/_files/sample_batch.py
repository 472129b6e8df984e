"""ADM-style sample batches: an ``.npz`` whose ``arr_0`` holds ``(N, H, W, 3)`` uint8 images, streamed in batches.

guided-diffusion, DiT and EDM write their samples (and ADM its reference batches) with ``numpy.savez(path,
arr_0=images)``: 50,000 images of 256 x 256 are 9.8 GB. ``SampleBatch`` checks the array's header (through
``fid_metric._files.npz``) and the member's size before anything is processed, then reads the images
``batch_size`` at a time from the zip member: a stored (``savez``) member is read straight from the file, a
deflated one (``savez_compressed``) is decompressed as it is read; either way memory holds one batch, never
the array. (A memory map would save one copy per batch of a stored member, nothing next to the network.)
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fid_metric._files.npz import NpzArchive

IMAGES_KEY = "arr_0"


def holds_images(path: str | os.PathLike, also_statistics: bool = False) -> bool:
    """True if the ``.npz`` at ``path`` has an ``arr_0`` and no ``mu`` (a sample batch, not statistics); with
    ``also_statistics``, if it has an ``arr_0`` at all (an ADM reference batch holds both).

    Raises:
        ValueError: the file is not a readable ``.npz`` (see ``NpzArchive``).
    """
    with NpzArchive(path) as archive:
        return IMAGES_KEY in archive.keys and (also_statistics or "mu" not in archive.keys)


class SampleBatch:
    """The images of an ADM-style ``.npz``.

    Attributes:
        path: the file.
        n: the number of images.
        height, width: their size in pixels.

    Raises:
        ValueError: no ``arr_0``, or one that is not ``(N, H, W, 3)`` (or ``(N, H, W)`` / ``(N, H, W, 1)``
            grey) uint8 in C order with N >= 1, or a member shorter or longer than its header says; the
            message names the file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with NpzArchive(self.path) as archive:
            if IMAGES_KEY not in archive.keys:
                raise ValueError(
                    f"{self.path} holds no '{IMAGES_KEY}' array of images (it holds {sorted(archive.keys)})."
                )
            header = archive.header(IMAGES_KEY)
            archive.check_size(IMAGES_KEY, header)
        shape = header.shape
        grey = len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)
        if header.dtype != np.uint8 or len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)):
            raise ValueError(
                f"{self.path}: '{IMAGES_KEY}' must be (N, H, W, 3) uint8 images (as ADM, DiT and EDM write them), got "
                f"{header.dtype} {shape}."
            )
        if header.fortran_order or 0 in shape:
            raise ValueError(f"{self.path}: '{IMAGES_KEY}' must be a non-empty C-ordered array, got {shape}.")
        self.n, self.height, self.width = shape[:3]
        self._channels = 1 if grey else 3
        self._data_offset = header.data_offset

    def batches(self, batch_size: int, world: int = 1, rank: int = 0) -> Iterator[Tensor]:
        """The images in order, ``(B, C, H, W)`` uint8 tensors of ``batch_size`` (the last one smaller), C = 3
        or 1 (grey); with ``world`` > 1, only those at positions ``rank, rank + world, ...`` (the file is still
        read through, ``batch_size * world`` images at a time).

        Raises:
            ValueError: the member's data cannot be read (a damaged file; its CRC is checked at the end).
        """
        image_bytes = self.height * self.width * self._channels
        try:
            with zipfile.ZipFile(self.path) as archive, archive.open(f"{IMAGES_KEY}.npy") as member:
                member.read(self._data_offset)
                step = batch_size * world  # a multiple of world: position start + j is ours when j % world == rank
                for start in range(0, self.n, step):
                    count = min(step, self.n - start)
                    data = member.read(count * image_bytes)
                    if len(data) != count * image_bytes:
                        raise EOFError(f"the images end after {start + len(data) // image_bytes} of {self.n}")
                    images = np.frombuffer(data, np.uint8).reshape(count, self.height, self.width, self._channels)
                    if len(mine := images[rank::world]):
                        yield torch.from_numpy(mine.copy()).permute(0, 3, 1, 2).contiguous()
                member.read(1)  # the member's end, where zipfile checks the CRC
        except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as err:
            raise ValueError(f"{self.path}: '{IMAGES_KEY}' cannot be read ({err}).") from err
