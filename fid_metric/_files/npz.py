"""Reading chosen arrays of an ``.npz`` statistics file, each array's header checked before its data is read.

``numpy.load`` on an ``.npz`` is lazy per key but trusts each header: an array whose header claims
``(10**9,)`` float64 allocates 8 GB before finding its data missing, a key that is touched is decompressed
whole (an ADM reference batch's ``arr_0`` holds gigabytes of images), and a ``.npy`` renamed ``.npz`` comes
back as an array, not an error. :class:`NpzArchive` opens the zip archive itself and reads a member in two
steps: :meth:`~NpzArchive.header` parses the ``.npy`` header (``numpy.lib.format``: shape, dtype, Fortran
order), which the caller checks against its limits; :meth:`~NpzArchive.read` then reads exactly the bytes that
header announces, after checking that the member holds that many. Every failure is a ``ValueError`` that names
the file (and the array).
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

# What a damaged or hostile archive can raise from zipfile, zlib and numpy.lib.format: BadZipFile (bad CRC,
# truncated directory), EOFError, zlib.error, ValueError / TypeError (bad header or descr), NotImplementedError
# (an unsupported compression method), RuntimeError (an encrypted member), OSError.
_READ_ERRORS = (
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    ValueError,
    TypeError,
    NotImplementedError,
    RuntimeError,
    OSError,
)
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
_CHUNK = 1 << 24  # bytes decompressed per read: bounds the transient copy BufferedIOBase.readinto makes


@dataclass(frozen=True)
class ArrayHeader:
    """What a ``.npy`` member's header announces, and where its data starts (bytes into the member)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int

    @property
    def nbytes(self) -> int:
        """The bytes of data the header announces."""
        return math.prod(self.shape) * self.dtype.itemsize


class NpzArchive:
    """An open ``.npz`` file (a context manager) whose arrays are read one at a time, header first.

    Args:
        path: the ``.npz`` file.

    Raises:
        ValueError: the file does not exist, cannot be read, is a directory, a ``.npy`` file, or not a zip
            archive (e.g. truncated).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except FileNotFoundError:
            raise ValueError(f"Statistics file {self.path} does not exist.") from None
        except IsADirectoryError:
            raise ValueError(f"Statistics file {self.path} is a directory, not an .npz file.") from None
        except PermissionError:
            raise ValueError(f"Statistics file {self.path} cannot be read: permission denied.") from None
        except _READ_ERRORS as err:
            if _starts_with_npy_magic(self.path):
                raise ValueError(
                    f"{self.path} is a .npy file (one array, numpy.save), not an .npz archive of named arrays "
                    "(numpy.savez) with at least 'mu' and 'sigma'."
                ) from None
            raise ValueError(f"{self.path} is not a readable statistics file (truncated or corrupt?): {err}") from err
        self.keys = frozenset(name[: -len(".npy")] for name in self._zip.namelist() if name.endswith(".npy"))

    def __enter__(self) -> NpzArchive:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._zip.close()

    def header(self, key: str) -> ArrayHeader:
        """The header of array ``key`` (one of :attr:`keys`); reads a few hundred bytes at most."""
        try:
            with self._zip.open(f"{key}.npy") as member:
                version = np.lib.format.read_magic(member)
                if version not in _HEADER_READERS:
                    raise ValueError(f".npy format version {version} (expected 1.0 or 2.0)")
                shape, fortran_order, dtype = _HEADER_READERS[version](member)
                return ArrayHeader(tuple(shape), dtype, fortran_order, member.tell())
        except _READ_ERRORS as err:
            raise ValueError(
                f"{self.path} is not a readable statistics file: '{key}' is not a .npy array ({err})."
            ) from err

    def check_size(self, key: str, header: ArrayHeader) -> zipfile.ZipInfo:
        """The member of array ``key``, after checking that it holds exactly the data ``header`` announces.

        Raises:
            ValueError: it holds more or fewer bytes (a truncated or corrupt file).
        """
        info = self._zip.getinfo(f"{key}.npy")
        if info.file_size != header.data_offset + header.nbytes:
            raise ValueError(
                f"{self.path} is truncated or corrupt: '{key}' announces {header.nbytes} bytes of {header.dtype} "
                f"data {header.shape}, but its member holds {info.file_size - header.data_offset}."
            )
        return info

    def read(self, key: str, header: ArrayHeader) -> np.ndarray:
        """Array ``key``, as ``header`` (from :meth:`header`, checked by the caller) describes it."""
        info = self.check_size(key, header)
        data = np.empty(header.nbytes, np.uint8)
        view = memoryview(data.data)
        try:
            with self._zip.open(info) as member:
                member.read(header.data_offset)
                filled = 0
                while filled < header.nbytes:
                    count = member.readinto(view[filled : filled + _CHUNK])  # type: ignore[attr-defined]
                    if not count:
                        raise EOFError(f"the data ends after {filled} of {header.nbytes} bytes")
                    filled += count
                member.read(1)  # reaches the member's end, where zipfile checks the CRC
        except _READ_ERRORS as err:
            raise ValueError(f"{self.path} is not a readable statistics file: '{key}' is corrupt ({err}).") from err
        array = data.view(header.dtype)
        return array.reshape(header.shape[::-1]).T if header.fortran_order else array.reshape(header.shape)


def _starts_with_npy_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(len(np.lib.format.MAGIC_PREFIX)) == np.lib.format.MAGIC_PREFIX
    except OSError:
        return False
