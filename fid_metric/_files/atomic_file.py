"""Atomic file writes: whoever reads the file, or comes back after a crash, finds the old file or the new one.

:func:`atomic_write` writes to a new temporary file in the target's folder (``.NAME.<random>.tmp``), flushes it
to disk (``fsync``), renames it over the target with ``os.replace`` (atomic within one filesystem, on POSIX and
Windows) and then flushes the folder so that the rename itself survives a power cut. A writer killed at any
moment leaves the old file, and at worst a hidden temporary file beside it; two concurrent writers leave the
complete file of the one that renamed last. :func:`check_writable` tells, before any work is done, whether
:func:`atomic_write` could write a path, with the same errors.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def check_writable(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` if :func:`atomic_write` could not write ``path``; change nothing.

    It creates and removes an empty temporary file in the folder: the one check that sees ACLs, read-only
    mounts and quotas as the write itself will.

    Raises:
        ValueError: one line, ``cannot write PATH: ...``: the folder does not exist, a parent is not a folder,
            ``path`` is a directory, the file is read-only, or the folder does not accept new files.
    """
    fd, temporary, _ = _create_temporary(path)
    os.close(fd)
    os.unlink(temporary)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary binary file, then move it to ``path`` in one step.

    A symbolic link at ``path`` keeps pointing where it did, and the file it names gets the new content, as
    with ``open(path, "wb")``; the new file gets ``open``'s permissions (0o666 less the umask).

    Raises:
        ValueError: as :func:`check_writable`, before ``write`` is called.
        Exception: whatever ``write`` or the disk raises (e.g. ``OSError``, disk full); ``path`` is then
            unchanged and the temporary file removed.
    """
    fd, temporary, target = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _sync_folder(target.parent)


def _create_temporary(path: str | os.PathLike) -> tuple[int, Path, Path]:
    """Open a new, empty temporary file beside the file ``path`` names (through a symbolic link).

    Returns its descriptor, its path and the target's path, symbolic links resolved.
    """
    target = Path(os.path.realpath(path))
    folder = target.parent if os.path.islink(path) else Path(path).parent
    if target.is_dir():
        raise ValueError(f"cannot write {path}: it is a directory")
    if target.exists() and not os.access(target, os.W_OK):
        raise ValueError(f"cannot write {path}: the file is read-only")
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        return os.open(temporary, flags, 0o666), temporary, target
    except FileNotFoundError:
        raise ValueError(f"cannot write {path}: folder {folder} does not exist") from None
    except NotADirectoryError:
        not_a_folder = next((p for p in reversed((folder, *folder.parents)) if p.exists() and not p.is_dir()), folder)
        raise ValueError(f"cannot write {path}: {not_a_folder} is not a folder") from None
    except PermissionError:
        raise ValueError(f"cannot write {path}: no permission to create files in {folder}") from None
    except OSError as err:
        raise ValueError(f"cannot write {path}: {err.strerror or err}") from err


def _sync_folder(folder: Path) -> None:
    """Flush the folder's entry list, so that a completed rename survives a power cut (POSIX only)."""
    if os.name != "posix":
        return  # Windows cannot open a folder; NTFS journals the rename itself
    # A folder that cannot be opened or flushed (no read permission, some network mounts) is left as it is:
    # the rename has happened all the same.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
